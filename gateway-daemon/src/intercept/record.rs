//! Conversions between socket addresses and the kernel's interception records.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use gateway_ebpf::{GwRecord, GwTuple};

const AF_INET6: u16 = libc::AF_INET6 as u16;

/// IPv4 as v4-mapped IPv6, network byte order: the form both sides key by.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The `gw_conns` key of an accepted connection.
pub fn tuple_key(client: SocketAddr, listener: SocketAddr) -> GwTuple {
    GwTuple {
        client: addr_bytes(client.ip()),
        listener: addr_bytes(listener.ip()),
        client_port: client.port(),
        listener_port: listener.port(),
    }
}

/// The kernel's view of a redirected connect(), decoded.
#[derive(Debug, Clone)]
pub struct Redirected {
    /// The destination the agent dialed, as the agent wrote it (v4-mapped stays v4-mapped
    /// for an AF_INET6 socket).
    pub orig_dst: SocketAddr,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// Thread-group leader's start, ns since boot.
    pub start_boottime_ns: u64,
    pub comm: String,
    /// The executable the caller ran at connect(), as the kernel saw it.
    pub exe_file: Option<ExeFile>,
    /// Why `exe_file` names no program, when it does not (`Unvouched`, from the record's
    /// `exe_flags`).
    pub exe_unvouched: Option<Unvouched>,
    /// `exe_file`'s change time at connect() (seconds, nanoseconds): bytes read from it
    /// later are the program's only while it is the same.
    pub exe_ctime: Option<(i64, u32)>,
}

/// Why the file the kernel reports for a process names no program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unvouched {
    /// The process set its executable itself since its exec (prctl PR_SET_MM, open to any
    /// process in a user namespace of its own): a file of its choice.
    Replaced,
    /// The very file its exec loaded, changed since: let go of (prctl PR_SET_MM), written
    /// and taken back, or its inode number another file's now.
    Changed,
    /// On a filesystem mounted in a user namespace (FUSE, overlayfs, tmpfs an unprivileged
    /// user mounted there): its owner says what the file holds.
    UserMount,
    /// Nothing can tell: no note of its exec was kept while notes were lost
    /// (`intercept.max_processes` processes were noted at once, or an upgrade dropped the
    /// notes), or the note could not be read.
    Unknown,
}

impl Unvouched {
    /// From a record's `exe_flags`.
    pub fn of_flags(flags: u32) -> Option<Self> {
        if flags & gateway_ebpf::EXE_REPLACED != 0 {
            Some(Unvouched::Replaced)
        } else if flags & gateway_ebpf::EXE_CHANGED != 0 {
            Some(Unvouched::Changed)
        } else if flags & gateway_ebpf::EXE_USER_MOUNT != 0 {
            Some(Unvouched::UserMount)
        } else if flags & gateway_ebpf::EXE_UNKNOWN != 0 {
            Some(Unvouched::Unknown)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unvouched::Replaced => "replaced",
            Unvouched::Changed => "changed",
            Unvouched::UserMount => "user_mount",
            Unvouched::Unknown => "unknown",
        }
    }
}

/// An executable file by identity: its device (as `stat` reports `st_dev`) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ExeFile {
    pub dev: u64,
    pub ino: u64,
}

impl ExeFile {
    /// From the kernel's encoding of a device (major << 20 | minor).
    pub fn from_kernel(kdev: u32, ino: u64) -> Option<Self> {
        (ino != 0).then(|| ExeFile {
            dev: libc::makedev(kdev >> 20, kdev & 0xf_ffff),
            ino,
        })
    }

    /// The file at `path` (following links), as `stat` sees it.
    pub fn of_path(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(ExeFile {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

impl Redirected {
    pub fn from_record(r: &GwRecord) -> Self {
        let v6 = Ipv6Addr::from(r.orig_addr);
        let ip = if r.orig_family == AF_INET6 {
            IpAddr::V6(v6)
        } else {
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
        };
        let comm_len = r.comm.iter().position(|&b| b == 0).unwrap_or(r.comm.len());
        Self {
            orig_dst: SocketAddr::new(ip, r.orig_port),
            pid: r.pid,
            tgid: r.tgid,
            uid: r.uid,
            gid: r.gid,
            cgroup_id: r.cgroup_id,
            start_boottime_ns: r.start_boottime,
            comm: String::from_utf8_lossy(&r.comm[..comm_len]).into_owned(),
            exe_file: ExeFile::from_kernel(r.exe_dev, r.exe_ino),
            exe_unvouched: Unvouched::of_flags(r.exe_flags),
            exe_ctime: (r.exe_ino != 0).then_some((r.exe_ctime_sec, r.exe_ctime_nsec)),
        }
    }

    /// Where the daemon connects upstream: a v4-mapped destination is dialed as IPv4.
    pub fn upstream_addr(&self) -> SocketAddr {
        match self.orig_dst.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), self.orig_dst.port()),
                None => self.orig_dst,
            },
            IpAddr::V4(_) => self.orig_dst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v4_mapped_peers_share_a_key() {
        let l: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let a = tuple_key("127.0.0.1:40000".parse().unwrap(), l);
        let b = tuple_key(
            "[::ffff:127.0.0.1]:40000".parse().unwrap(),
            "[::ffff:127.0.0.1]:15001".parse().unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(&a.client[10..], &[0xff, 0xff, 127, 0, 0, 1]);
    }

    #[test]
    fn record_decodes_family_and_comm() {
        let mut r = GwRecord {
            orig_addr: addr_bytes("10.0.0.7".parse().unwrap()),
            orig_port: 8080,
            orig_family: libc::AF_INET as u16,
            ..Default::default()
        };
        r.comm[..4].copy_from_slice(b"curl");
        let d = Redirected::from_record(&r);
        assert_eq!(d.orig_dst.to_string(), "10.0.0.7:8080");
        assert_eq!(d.comm, "curl");

        r.orig_family = AF_INET6;
        let d = Redirected::from_record(&r);
        assert_eq!(d.orig_dst.to_string(), "[::ffff:10.0.0.7]:8080");
        assert_eq!(d.upstream_addr().to_string(), "10.0.0.7:8080");
    }
}
