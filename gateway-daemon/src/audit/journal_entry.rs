//! A ledger line as a journald entry, in journald's native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>): the line's top-level strings, numbers
//! and booleans as `MCP_*` fields, the whole line as `MCP_AUDIT_RECORD`.
//!
//! The members are read borrowed from the line, each value as the text it was written as.
//! Building a `serde_json::Value` of every record, then a `String` per field, was most of
//! what the journal cost a call (with `journald = "auto"`, the default, on every host that
//! runs systemd).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A field of the entry: its name and its value.
pub type Field<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Where an entry's `MESSAGE` is in the fields `fields` returns.
pub const MESSAGE_AT: usize = 1;

/// The fields of the journal entry of one ledger line, or None when the line is not a JSON
/// object (the ledger writes none such).
pub fn fields(line: &[u8]) -> Option<Vec<Field<'_>>> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let Members(members) = serde_json::from_str(line).ok()?;
    let string = |key: &str| {
        members
            .iter()
            .find(|(k, _)| k == key)
            .filter(|(_, v)| v.get().starts_with('"'))
            .and_then(|(_, v)| text(v))
            .unwrap_or_default()
    };
    let message = format!(
        "mcp-gateway audit {} {} {} {}",
        string("type"),
        string("method"),
        string("name"),
        string("outcome")
    );
    let mut out: Vec<Field<'_>> = Vec::with_capacity(members.len() + 4);
    out.push(("PRIORITY".into(), "6".into()));
    out.push(("MESSAGE".into(), message.into()));
    out.push(("SYSLOG_IDENTIFIER".into(), "mcp-gateway-audit".into()));
    out.push(("MCP_AUDIT_RECORD".into(), line.into()));
    for (key, value) in &members {
        if let (Some(name), Some(value)) = (field_name(key), text(value)) {
            out.push((name.into(), value));
        }
    }
    Some(out)
}

/// Appends the entry of `fields` to `out`: `NAME=value` lines, or the name, the value's
/// length (64 bits, little-endian) and the value, for a value with a newline in it.
pub fn encode(fields: &[Field<'_>], out: &mut Vec<u8>) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
}

/// `MCP_` and the key, upper-cased, anything but a letter or a digit made `_`; None when
/// journald would refuse the name (longer than 64 bytes).
fn field_name(key: &str) -> Option<String> {
    const MAX: usize = 64;
    if 4 + key.len() > MAX {
        return None;
    }
    let mut name = String::with_capacity(4 + key.len());
    name.push_str("MCP_");
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    // A non-ASCII character became one `_` of fewer bytes: the length is checked again.
    (name.len() <= MAX).then_some(name)
}

/// A member's value as the journal shows it: a string unescaped, a number or a boolean as
/// written; None for null, arrays and objects (the whole record carries those).
fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let s = raw.get();
    match s.as_bytes().first()? {
        b'"' => {
            let inner = &s[1..s.len() - 1];
            if inner.contains('\\') {
                serde_json::from_str::<String>(s).ok().map(Cow::Owned)
            } else {
                Some(Cow::Borrowed(inner))
            }
        }
        b't' | b'f' | b'-' | b'0'..=b'9' => Some(Cow::Borrowed(s)),
        _ => None,
    }
}

/// A JSON object's members in order, keys and values borrowed from the text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(24));
                while let Some(Key(key)) = map.next_key()? {
                    members.push((key, map.next_value::<&RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// A member's name: borrowed, unless an escape in it had to be undone.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_map(fields: &[Field<'_>]) -> std::collections::HashMap<String, String> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_record_becomes_its_members_as_fields_and_itself_whole() {
        let line = br#"{"hash":"ab","seq":42,"type":"mcp","method":"tools/call","name":"echo","outcome":"ok","latency_ms":0.25,"enforced":true,"detail":null,"principal":{"name":"a"},"hidden":["x"],"why":"a \"quoted\"\nline","caf\u00e9 key":"v"}
"#;
        let f = fields(line).unwrap();
        assert_eq!(f[MESSAGE_AT].1, "mcp-gateway audit mcp tools/call echo ok");
        let m = as_map(&f);
        assert_eq!(m["PRIORITY"], "6");
        assert_eq!(m["SYSLOG_IDENTIFIER"], "mcp-gateway-audit");
        assert_eq!(
            m["MCP_AUDIT_RECORD"],
            std::str::from_utf8(line).unwrap().trim_end()
        );
        assert_eq!(m["MCP_SEQ"], "42");
        assert_eq!(m["MCP_LATENCY_MS"], "0.25");
        assert_eq!(m["MCP_ENFORCED"], "true");
        assert_eq!(m["MCP_WHY"], "a \"quoted\"\nline");
        assert_eq!(m["MCP_CAF__KEY"], "v");
        // Null, objects and arrays are in the whole record only.
        for absent in ["MCP_DETAIL", "MCP_PRINCIPAL", "MCP_HIDDEN"] {
            assert!(!m.contains_key(absent), "{absent}: {m:?}");
        }
    }

    #[test]
    fn the_entry_is_journalds_native_protocol() {
        let f: Vec<Field<'_>> = vec![
            ("MESSAGE".into(), "one line".into()),
            ("MCP_WHY".into(), "two\nlines".into()),
        ];
        let mut out = Vec::new();
        encode(&f, &mut out);
        let mut want = b"MESSAGE=one line\nMCP_WHY\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(out, want);
    }

    #[test]
    fn what_is_not_a_json_object_has_no_entry_and_an_overlong_name_no_field() {
        assert!(fields(b"[1,2]\n").is_none());
        assert!(fields(b"{\"a\":\n").is_none());
        assert!(fields(b"\xff{}").is_none());
        let long = "k".repeat(61);
        let line = format!("{{\"{long}\":\"v\",\"ok\":1}}");
        let m = as_map(&fields(line.as_bytes()).unwrap());
        assert_eq!(m["MCP_OK"], "1");
        assert!(m.keys().all(|k| k.len() <= 64), "{m:?}");
    }
}
