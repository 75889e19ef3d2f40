//! A ledger line as a journald entry, in journald's native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>): the line's top-level strings, numbers
//! and booleans as `MCP_*` fields, the whole line as `MCP_AUDIT_RECORD`.
//!
//! The line is one the ledger sealed: a JSON object on one line. Its top-level members are
//! found in one pass over its bytes, each value taken as the text it was written as, and the
//! entry written straight into one buffer. Building a `serde_json::Value` of every record,
//! then a `String` per field, was most of what the journal cost a call (with
//! `journald = "auto"`, the default, on every host that runs systemd).

use std::borrow::Cow;

/// A field of the entry: its name and its value.
pub type Field<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The entry of one ledger line, borrowed from it.
pub struct Entry<'a> {
    line: &'a str,
    message: String,
    /// The top-level members whose values the journal shows: (name, value as text).
    members: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Entry<'a> {
    /// The entry of `line`, or None when it is not one JSON object (the ledger writes none
    /// such).
    pub fn of(line: &'a [u8]) -> Option<Self> {
        let line = std::str::from_utf8(line).ok()?.trim_end();
        let members: Vec<_> = top_level(line)?
            .into_iter()
            .filter_map(|(key, value)| Some((key, text(value)?)))
            .collect();
        let string = |key: &str| {
            members
                .iter()
                .find(|(k, _)| k == key)
                .map_or("", |(_, v)| v.as_ref())
        };
        let message = format!(
            "mcp-gateway audit {} {} {} {}",
            string("type"),
            string("method"),
            string("name"),
            string("outcome")
        );
        Some(Entry {
            line,
            message,
            members,
        })
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Appends the entry to `out`: `NAME=value` lines, or the name, the value's length (64
    /// bits, little-endian) and the value, for a value with a newline in it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.each(|name, value| put(out, name, value));
    }

    /// The entry as fields (for libsystemd, which passes an entry too large for a datagram
    /// in a memfd).
    pub fn fields(&self) -> Vec<Field<'_>> {
        let mut out: Vec<Field<'_>> = Vec::with_capacity(self.members.len() + 4);
        self.each(|name, value| {
            let name = String::from_utf8_lossy(name).into_owned();
            out.push((name.into(), value.to_owned().into()));
        });
        out
    }

    /// Calls `f` with each field's name and value, in the entry's order: the four of every
    /// entry, then the members journald takes a name of.
    fn each(&self, mut f: impl FnMut(&[u8], &str)) {
        f(b"PRIORITY", "6");
        f(b"MESSAGE", &self.message);
        f(b"SYSLOG_IDENTIFIER", "mcp-gateway-audit");
        f(b"MCP_AUDIT_RECORD", self.line);
        let mut name = Vec::with_capacity(MAX_NAME);
        for (key, value) in &self.members {
            if field_name(key, &mut name) {
                f(&name, value);
            }
        }
    }
}

fn put(out: &mut Vec<u8>, name: &[u8], value: &str) {
    out.extend_from_slice(name);
    if memchr::memchr(b'\n', value.as_bytes()).is_some() {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// journald refuses longer field names.
const MAX_NAME: usize = 64;

/// Makes `name` `MCP_` and the key, upper-cased, anything but an ASCII letter or digit made
/// `_` (one per character); false when journald would refuse the name (too long).
fn field_name(key: &str, name: &mut Vec<u8>) -> bool {
    name.clear();
    name.extend_from_slice(b"MCP_");
    for c in key.chars() {
        name.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase() as u8
        } else {
            b'_'
        });
    }
    name.len() <= MAX_NAME
}

/// A member's value as the journal shows it: a string unescaped, a number or a boolean as
/// written; None for null, arrays and objects (the whole record carries those).
fn text(raw: &str) -> Option<Cow<'_, str>> {
    match raw.as_bytes().first()? {
        b'"' => unquote(raw),
        b't' | b'f' | b'-' | b'0'..=b'9' => Some(Cow::Borrowed(raw)),
        _ => None,
    }
}

/// The contents of a JSON string (quotes included in `raw`): borrowed unless an escape had
/// to be undone.
fn unquote(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// The top-level members of a JSON object, in order: (name, the value's raw text).
fn top_level(text: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let b = text.as_bytes();
    let mut at = skip_ws(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(b, at + 1);
    let mut out = Vec::with_capacity(24);
    if b.get(at) == Some(&b'}') {
        return (skip_ws(b, at + 1) == b.len()).then_some(out);
    }
    loop {
        let key_end = string_end(b, at)?;
        let key = unquote(&text[at..key_end])?;
        at = skip_ws(b, key_end);
        if b.get(at) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, at + 1);
        let end = value_end(b, start)?;
        out.push((key, &text[start..end]));
        at = skip_ws(b, end);
        match b.get(at) {
            Some(b',') => at = skip_ws(b, at + 1),
            Some(b'}') if skip_ws(b, at + 1) == b.len() => return Some(out),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// Where the string that opens at `at` ends (past its closing quote).
fn string_end(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        match b[i] {
            b'"' => return Some(i + 1),
            _ => i += 2,
        }
    }
}

/// Where the value that starts at `at` ends: a string, an object or array (nested ones and
/// the strings in them skipped whole), or a number, `true`, `false` or `null`.
fn value_end(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => string_end(b, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let len = b[at..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(b.len() - at);
            let word = &b[at..at + len];
            let number = word
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'));
            (len > 0 && (number || matches!(word, b"true" | b"false" | b"null")))
                .then_some(at + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry's fields as journald reads them.
    fn read(entry: &Entry<'_>) -> std::collections::HashMap<String, String> {
        let mut out = Vec::new();
        entry.encode(&mut out);
        let mut fields = std::collections::HashMap::new();
        let mut d = &out[..];
        while !d.is_empty() {
            let nl = d.iter().position(|&b| b == b'\n').unwrap();
            let line = std::str::from_utf8(&d[..nl]).unwrap();
            if let Some((k, v)) = line.split_once('=') {
                fields.insert(k.to_string(), v.to_string());
                d = &d[nl + 1..];
            } else {
                let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
                let v = std::str::from_utf8(&d[nl + 9..nl + 9 + len]).unwrap();
                assert_eq!(d[nl + 9 + len], b'\n');
                fields.insert(line.to_string(), v.to_string());
                d = &d[nl + 9 + len + 1..];
            }
        }
        // What libsystemd is given for an entry too large for a datagram says the same.
        let given: std::collections::HashMap<String, String> = entry
            .fields()
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(given, fields);
        fields
    }

    #[test]
    fn a_record_becomes_its_members_as_fields_and_itself_whole() {
        let line = br#"{"hash":"ab","seq":42,"type":"mcp","method":"tools/call","name":"echo","outcome":"ok","latency_ms":0.25,"enforced":true,"detail":null,"principal":{"name":"a}","n":[1,{"x":"]"}]},"hidden":["x\"]"],"why":"a \"quoted\"\nline","caf\u00e9 key":"v","neg":-1.5e-3}
"#;
        let entry = Entry::of(line).unwrap();
        assert_eq!(entry.message(), "mcp-gateway audit mcp tools/call echo ok");
        let m = read(&entry);
        assert_eq!(m["PRIORITY"], "6");
        assert_eq!(m["MESSAGE"], entry.message());
        assert_eq!(m["SYSLOG_IDENTIFIER"], "mcp-gateway-audit");
        assert_eq!(
            m["MCP_AUDIT_RECORD"],
            std::str::from_utf8(line).unwrap().trim_end()
        );
        assert_eq!(m["MCP_HASH"], "ab");
        assert_eq!(m["MCP_SEQ"], "42");
        assert_eq!(m["MCP_LATENCY_MS"], "0.25");
        assert_eq!(m["MCP_ENFORCED"], "true");
        assert_eq!(m["MCP_NEG"], "-1.5e-3");
        assert_eq!(m["MCP_WHY"], "a \"quoted\"\nline");
        assert_eq!(m["MCP_CAF__KEY"], "v");
        // Null, objects and arrays are in the whole record only.
        for absent in ["MCP_DETAIL", "MCP_PRINCIPAL", "MCP_HIDDEN"] {
            assert!(!m.contains_key(absent), "{absent}: {m:?}");
        }
        // Each member is read: the nested brackets and quotes did not end any early.
        assert_eq!(m.len(), 4 + 11, "{m:?}");
    }

    /// What the journal showed of a line when it read it into a `serde_json::Value` (before
    /// 41178ae): every top-level string, number and boolean, and the whole line.
    fn as_a_value_reads_it(line: &str) -> std::collections::HashMap<String, String> {
        let serde_json::Value::Object(map) = serde_json::from_str(line).unwrap() else {
            panic!("an object");
        };
        let mut out: std::collections::HashMap<String, String> = map
            .iter()
            .filter_map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                let mut name = Vec::new();
                field_name(k, &mut name).then(|| (String::from_utf8(name).unwrap(), v))
            })
            .collect();
        out.insert("MCP_AUDIT_RECORD".into(), line.into());
        out
    }

    #[test]
    fn ledger_records_show_in_the_journal_as_a_json_value_reads_them() {
        for line in [
            r#"{"hash":"c5cfb0853447895e576a2e2b51e370323adb8913292f7b21e5cd69eadb9295e4","seq":49968,"prev":"9995a75f0e60bd24002347efde0e2217ab1a3bf50b3d3eb14cf76092168a42ae","type":"flow","time":"2026-12-05T12:09:49.814630Z","connection":"d9ab18cd-1","start":"2026-12-05T12:09:43.795046Z","duration_ms":6019.584055,"identity":{"pid":25843,"tgid":25843,"uid":0,"user":"root","gid":0,"group":"root","comm":"mcp-bench-clien","cgroup_id":140207,"start_time":7251039,"exe":"/work/main/target/release/mcp-bench-client","exe_file":{"dev":65024,"ino":5344567},"cmdline":["/work/main/target/release/mcp-bench-client","--addr","127.0.0.1:29426","--text-bytes","128","--watch","25830","--watch","25829","load","--connections","1","--seconds","6","--warmup","50"],"cgroup":"/mcp-gateway-bench/bench-10192","unit":null},"orig_dst":"127.0.0.1:29426","upstream":"127.0.0.1:29426","client":"127.0.0.1:44714","protocol":"http1","bytes_to_upstream":11430790,"bytes_to_agent":11333692,"outcome":"closed"}"#,
            r#"{"hash":"bb767add09ca24e2805f8c3c04d881189dda2eef72d5f7d8f63b2f1dc7b0e61e","seq":4,"prev":"c6079220b5b1a073f7cb6ed7062f9ff0fd96ebf3c9b247716081e435edfb0f0c","type":"mcp","time":"2026-12-05T12:09:43.797174Z","connection":"d9ab18cd-1","principal":{"tgid":25843,"uid":0,"user":"root","exe":"/work/main/target/release/mcp-bench-client","cgroup":"/mcp-gateway-bench/bench-10192"},"server":"bench","session":"2ab85f26-9667-40be-bfb1-6c170dd4adcb","transport":"streamable_http","method":"initialize","id":"1","direction":"client_to_server","outcome":"ok","latency_ms":0.776687,"result_sha256":"653cd59d90aeb378802649caa3388beb07d8db46038685624a9ac0a20dc3b8bc"}"#,
            // Numbers are shown as written: a Value prints some again otherwise (`-0` as
            // `-0.0`), forms the ledger's serialiser never writes.
            r#"{"type":"mcp","n":-7,"big":18446744073709551615,"f":1.5,"e":"\u00e9\t\\","o":{},"a":[],"z":null,"t":false}"#,
        ] {
            let mut shown = read(&Entry::of(line.as_bytes()).unwrap());
            for k in ["PRIORITY", "MESSAGE", "SYSLOG_IDENTIFIER"] {
                shown.remove(k).unwrap();
            }
            assert_eq!(shown, as_a_value_reads_it(line), "{line}");
        }
    }

    #[test]
    fn the_entry_is_journalds_native_protocol() {
        let entry = Entry::of(br#"{"a":"one line","b":"two\nlines"}"#).unwrap();
        let mut out = Vec::new();
        entry.encode(&mut out);
        let mut want = format!(
            "PRIORITY=6\nMESSAGE=mcp-gateway audit    \nSYSLOG_IDENTIFIER=mcp-gateway-audit\n\
             MCP_AUDIT_RECORD={}\nMCP_A=one line\nMCP_B\n",
            r#"{"a":"one line","b":"two\nlines"}"#
        )
        .into_bytes();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
    }

    #[test]
    fn what_is_not_one_json_object_has_no_entry_and_an_overlong_name_no_field() {
        for bad in [
            &b"[1,2]"[..],
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":1}{}",
            b"{\"a\" 1}",
            b"{\"a\":\"open}",
            b"{\"a\":[1,2}",
            b"{\"a\":tru}",
            b"{\"a\":1,}",
            b"{a:1}",
            b"\xff{}",
            b"",
        ] {
            assert!(
                Entry::of(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(Entry::of(b"{}").is_some());
        let long = "k".repeat(61);
        let line = format!("{{\"{long}\":\"v\",\"ok\":1}}");
        let m = read(&Entry::of(line.as_bytes()).unwrap());
        assert_eq!(m["MCP_OK"], "1");
        assert!(m.keys().all(|k| k.len() <= MAX_NAME), "{m:?}");
    }
}
