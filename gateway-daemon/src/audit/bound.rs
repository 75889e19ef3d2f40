//! Bounds on what one record may hold. Much of a record is the agent's to choose (its
//! command line, its comm, the names and headers it sends, a server's tool names): left
//! whole, a few processes with megabytes of argv would write gigabytes and push the
//! ledger's history out through retention. Every string and every list is bounded where
//! the record is sealed, whatever the record's type: a long one keeps a prefix and says how
//! long the whole was and its SHA-256, so the record still identifies what it cut.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Longest string kept whole, in bytes.
pub const MAX_STRING: usize = 1024;
/// What a longer string keeps, in bytes (less, to end on a character boundary).
pub const KEEP_STRING: usize = 256;
/// Most items a list keeps whole.
pub const MAX_ITEMS: usize = 64;
/// What a longer list keeps (the last item then says what was cut).
pub const KEEP_ITEMS: usize = 32;
/// Most bytes of strings one list keeps (a command line of many long arguments).
pub const MAX_LIST_BYTES: usize = 8 * 1024;

/// Bounds every string and list in `record`, at any depth.
pub fn record(record: &mut Map<String, Value>) {
    for v in record.values_mut() {
        value(v);
    }
}

fn value(v: &mut Value) {
    match v {
        Value::String(s) if s.len() > MAX_STRING => *s = cut_string(s),
        Value::Array(items) => list(items),
        Value::Object(m) => record(m),
        _ => {}
    }
}

fn cut_string(s: &str) -> String {
    let mut end = KEEP_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [{} bytes, sha256 {}]",
        &s[..end],
        s.len(),
        hex::encode(Sha256::digest(s.as_bytes()))
    )
}

fn list(items: &mut Vec<Value>) {
    let whole = (items.len() > MAX_ITEMS || string_bytes(items) > MAX_LIST_BYTES)
        .then(|| serde_json::to_vec(items).unwrap_or_default());
    for v in items.iter_mut() {
        value(v);
    }
    let Some(whole) = whole else { return };
    let total = items.len();
    let mut kept = 0;
    let mut bytes = 0;
    for v in items.iter() {
        let n = v.as_str().map_or(0, str::len);
        if kept == KEEP_ITEMS || bytes + n > MAX_LIST_BYTES {
            break;
        }
        bytes += n;
        kept += 1;
    }
    items.truncate(kept);
    items.push(Value::String(format!(
        "… [{} more of {total} items cut; the whole list is {} bytes of JSON, sha256 {}]",
        total - kept,
        whole.len(),
        hex::encode(Sha256::digest(&whole))
    )));
}

fn string_bytes(items: &[Value]) -> usize {
    items.iter().map(|v| v.as_str().map_or(0, str::len)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bounded(v: Value) -> Value {
        let Value::Object(mut m) = v else { panic!() };
        record(&mut m);
        Value::Object(m)
    }

    #[test]
    fn short_records_are_untouched() {
        let v = json!({"type": "flow", "identity": {"cmdline": ["python3", "agent.py"], "comm": "python3"}});
        assert_eq!(bounded(v.clone()), v);
    }

    #[test]
    fn long_strings_keep_a_prefix_their_length_and_digest() {
        let long = "é".repeat(2000);
        let v = bounded(json!({"detail": long}));
        let s = v["detail"].as_str().unwrap();
        assert!(s.len() < 512, "{}", s.len());
        assert!(s.starts_with("éé"));
        assert!(s.contains("[4000 bytes, sha256 "));
        assert!(s.contains(&hex::encode(Sha256::digest(long.as_bytes()))));
    }

    #[test]
    fn a_huge_command_line_is_cut_to_a_bounded_list() {
        let argv: Vec<String> = (0..5000)
            .map(|i| format!("{i}-{}", "x".repeat(400)))
            .collect();
        let v = bounded(json!({"identity": {"cmdline": argv}}));
        let cut = v["identity"]["cmdline"].as_array().unwrap();
        assert!(cut.len() <= KEEP_ITEMS + 1);
        assert!(serde_json::to_vec(&v).unwrap().len() < 2 * MAX_LIST_BYTES);
        assert!(cut[0].as_str().unwrap().starts_with("0-"));
        let last = cut.last().unwrap().as_str().unwrap();
        assert!(last.contains("of 5000 items cut"), "{last}");
        // Few arguments of a megabyte each: bounded as well.
        let argv = vec!["y".repeat(1 << 20); 3];
        let v = bounded(json!({"cmdline": argv}));
        assert!(serde_json::to_vec(&v).unwrap().len() < 2 * MAX_LIST_BYTES);
    }
}
