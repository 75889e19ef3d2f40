//! A flow's record as JSON, written by hand like the call records (`mcp/record_json.rs`):
//! the bytes serde_json makes of `FlowRecord` (a test holds the two together), without
//! its per-character escaping, and with the executable's path written as it displays.
//! serde refuses a path that is not UTF-8, which lost the whole record: a process run
//! from such a path left no flow record.

use std::path::Path;

use super::{FlowRecord, TlsFlow};
use crate::identity::Identity;
use crate::mcp::record_json::{opt_str_field, serde_field, str_field, string};

impl FlowRecord<'_> {
    /// This record's JSON object, as `serde_json::to_writer` writes it (paths aside: see
    /// the module's comment).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        str_field(out, b"{\"type\":", self.kind);
        str_field(out, b",\"time\":", &self.time);
        str_field(out, b",\"connection\":", self.connection);
        str_field(out, b",\"start\":", &self.start);
        serde_field(out, b",\"duration_ms\":", &self.duration_ms);
        out.extend_from_slice(b",\"identity\":");
        identity(out, self.identity);
        display_field(out, b",\"orig_dst\":", &self.orig_dst);
        display_field(out, b",\"upstream\":", &self.upstream);
        display_field(out, b",\"client\":", &self.client);
        str_field(out, b",\"protocol\":", self.protocol);
        if let Some(tls) = &self.tls {
            out.extend_from_slice(b",\"tls\":");
            tls_flow(out, tls);
        }
        number_field(out, b",\"bytes_to_upstream\":", self.bytes_to_upstream);
        number_field(out, b",\"bytes_to_agent\":", self.bytes_to_agent);
        str_field(out, b",\"outcome\":", self.outcome);
        opt_str_field(out, b",\"error\":", self.error.as_deref());
        opt_str_field(out, b",\"detail\":", self.detail.as_deref());
        out.push(b'}');
    }
}

fn identity(out: &mut Vec<u8>, id: &Identity) {
    number_field(out, b"{\"pid\":", id.pid);
    number_field(out, b",\"tgid\":", id.tgid);
    number_field(out, b",\"uid\":", id.uid);
    nullable_str_field(out, b",\"user\":", id.user.as_deref());
    number_field(out, b",\"gid\":", id.gid);
    nullable_str_field(out, b",\"group\":", id.group.as_deref());
    str_field(out, b",\"comm\":", &id.comm);
    number_field(out, b",\"cgroup_id\":", id.cgroup_id);
    number_field(out, b",\"start_time\":", id.start_time);
    out.extend_from_slice(b",\"exe\":");
    match &id.exe {
        Some(p) => path(out, p),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(f) = &id.exe_file {
        number_field(out, b",\"exe_file\":{\"dev\":", f.dev);
        number_field(out, b",\"ino\":", f.ino);
        out.push(b'}');
    }
    if let Some(u) = id.exe_unvouched {
        str_field(out, b",\"exe_unvouched\":", u.as_str());
    }
    if let Some(p) = &id.exe_now {
        out.extend_from_slice(b",\"exe_now\":");
        path(out, p);
    }
    out.extend_from_slice(b",\"cmdline\":");
    match &id.cmdline {
        Some(args) => strings(out, args),
        None => out.extend_from_slice(b"null"),
    }
    nullable_str_field(out, b",\"cgroup\":", id.cgroup.as_deref());
    nullable_str_field(out, b",\"unit\":", id.unit.as_deref());
    opt_str_field(out, b",\"procfs_error\":", id.procfs_error.as_deref());
    out.push(b'}');
}

fn tls_flow(out: &mut Vec<u8>, t: &TlsFlow) {
    str_field(out, b"{\"mode\":", t.mode);
    opt_str_field(out, b",\"sni\":", t.sni.as_deref());
    out.extend_from_slice(b",\"alpn_offered\":");
    strings(out, &t.alpn_offered);
    nullable_str_field(out, b",\"alpn\":", t.alpn.as_deref());
    out.push(b'}');
}

fn strings(out: &mut Vec<u8>, all: &[String]) {
    out.push(b'[');
    for (i, s) in all.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, s);
    }
    out.push(b']');
}

/// A path as it displays: bytes that are not UTF-8 become U+FFFD.
fn path(out: &mut Vec<u8>, p: &Path) {
    string(out, &p.to_string_lossy());
}

fn nullable_str_field(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    match value {
        Some(v) => str_field(out, key, v),
        None => {
            out.extend_from_slice(key);
            out.extend_from_slice(b"null");
        }
    }
}

fn number_field(out: &mut Vec<u8>, key: &[u8], n: impl itoa::Integer) {
    out.extend_from_slice(key);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An address as serde_json writes it: its `Display`, quoted (nothing in it is escaped).
fn display_field(out: &mut Vec<u8>, key: &[u8], value: &std::net::SocketAddr) {
    out.extend_from_slice(key);
    out.push(b'"');
    super::addr_text::write(out, value);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    use super::*;
    use crate::intercept::record::{ExeFile, Unvouched};

    const TEXTS: [&str; 4] = [
        "/usr/bin/agent",
        "a \"quoted\" \\ arg\twith\ncontrols\u{1}",
        "café 🦀 \u{2028}",
        "",
    ];

    fn identity_of(n: usize, full: bool) -> Identity {
        let text = |k: usize| TEXTS[(n + k) % TEXTS.len()].to_string();
        Identity {
            pid: 41 + n as u32,
            tgid: 40,
            uid: 1000,
            user: full.then(|| text(1)),
            gid: 1000,
            group: full.then(|| text(2)),
            comm: text(3),
            cgroup_id: u64::MAX - n as u64,
            start_time: 123_456,
            exe: full.then(|| PathBuf::from(text(0))),
            exe_file: full.then_some(ExeFile { dev: 2049, ino: 77 }),
            exe_unvouched: [
                None,
                Some(Unvouched::Replaced),
                Some(Unvouched::Changed),
                Some(Unvouched::Unknown),
            ][n % 4],
            exe_ctime: None,
            exe_now: full.then(|| PathBuf::from(text(2))),
            cmdline: full.then(|| (0..n).map(text).collect()),
            cgroup: full.then(|| text(1)),
            unit: full.then(|| text(2)),
            procfs_error: (!full).then(|| text(n)),
            exe_sha256: full.then(|| text(1)),
        }
    }

    fn record<'a>(n: usize, full: bool, id: &'a Identity) -> FlowRecord<'a> {
        let text = |k: usize| TEXTS[(n + k) % TEXTS.len()].to_string();
        let v4: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let v6: SocketAddr = "[fe80::1%3]:443".parse().unwrap();
        FlowRecord {
            kind: "flow",
            time: text(0),
            connection: TEXTS[(n + 1) % TEXTS.len()],
            start: text(2),
            duration_ms: 0.1 + n as f64 * 1e3 / 7.0,
            identity: id,
            orig_dst: if full { v6 } else { v4 },
            upstream: v4,
            client: "[::1]:50000".parse().unwrap(),
            protocol: "http1",
            tls: full.then(|| TlsFlow {
                mode: "terminated",
                sni: n.is_multiple_of(2).then(|| text(1)),
                alpn_offered: (0..n).map(text).collect(),
                alpn: n.is_multiple_of(3).then(|| text(2)),
            }),
            bytes_to_upstream: n as u64 * 1000,
            bytes_to_agent: u64::MAX,
            outcome: "closed",
            error: full.then(|| text(3)),
            detail: (!full).then(|| text(1)),
        }
    }

    /// Every field set and every field left out, over strings that need escaping and
    /// strings that do not: the hand-written JSON is serde_json's, byte for byte.
    #[test]
    fn flow_records_are_written_as_serde_json_writes_them() {
        for n in 0..TEXTS.len() * 3 {
            let full = n % 2 == 0;
            let id = identity_of(n, full);
            let rec = record(n, full, &id);
            let mut mine = Vec::new();
            rec.write_json(&mut mine);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::to_string(&rec).unwrap()
            );
        }
    }

    /// A process run from a path that is not UTF-8 still has its flow recorded (serde
    /// refuses such a path): the path is written as it displays.
    #[test]
    fn a_path_that_is_not_utf8_is_recorded_as_it_displays() {
        let mut id = identity_of(0, true);
        let raw = std::ffi::OsStr::from_bytes(b"/tmp/ag\xffent");
        id.exe = Some(PathBuf::from(raw));
        id.exe_now = Some(PathBuf::from(raw));
        let rec = record(0, true, &id);
        assert!(
            serde_json::to_string(&rec).is_err(),
            "serde refuses the path"
        );
        let mut mine = Vec::new();
        rec.write_json(&mut mine);
        let v: serde_json::Value = serde_json::from_slice(&mine).unwrap();
        assert_eq!(v["identity"]["exe"], "/tmp/ag\u{fffd}ent");
        assert_eq!(v["identity"]["exe_now"], "/tmp/ag\u{fffd}ent");
    }
}
