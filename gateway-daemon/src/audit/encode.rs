//! A record's body, serialised once: the record's own `Serialize` straight to JSON bytes,
//! which is what the chain hashes and the file holds. Only a record that needs bounding
//! (`bound`: a long string, a long list) or names a field the chain owns takes the slow
//! way through a `Value` — and a scan of the bytes, cheaper than building that tree, tells
//! which records do. Its limits are on the escaped bytes, never shorter than the decoded
//! string, so a record it lets pass is one `bound` would have left alone.

use std::sync::LazyLock;

use memchr::memmem;
use serde::Serialize;
use serde_json::{Map, Value};

use super::bound::{self, MAX_ITEMS, MAX_LIST_BYTES, MAX_STRING};

/// Fields of the chain itself; a record's own fields of these names are dropped.
const RESERVED: [&[u8]; 3] = [b"seq", b"prev", b"hash"];

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the record could not be serialised: {0}")]
    Serialise(#[from] serde_json::Error),
    #[error("the record is not a JSON object")]
    NotAnObject,
}

/// The record as the JSON object its ledger line carries (before the chain's fields).
pub fn body<T: Serialize + ?Sized>(record: &T) -> Result<Vec<u8>, EncodeError> {
    body_with(|out| Ok(serde_json::to_writer(out, record)?))
}

/// As `body`, for a record that writes its own JSON object into the buffer given.
pub fn body_with(
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    // Room for a typical record at once: growing from serde_json's default is three
    // reallocations a record.
    let mut bytes = Vec::with_capacity(1024);
    write(&mut bytes)?;
    if bytes.first() != Some(&b'{') {
        return Err(EncodeError::NotAnObject);
    }
    if small_and_plain(&bytes) || passes_unchanged(&bytes) {
        return Ok(bytes);
    }
    let Value::Object(mut map) = serde_json::from_slice::<Value>(&bytes)? else {
        return Err(EncodeError::NotAnObject);
    };
    Ok(bounded(&mut map))
}

/// A map's body: bounded, without the chain's fields.
pub fn bounded(map: &mut Map<String, Value>) -> Vec<u8> {
    for k in RESERVED {
        map.remove(std::str::from_utf8(k).expect("ASCII"));
    }
    bound::record(map);
    serde_json::to_vec(map).expect("a JSON map always serialises")
}

/// Whether `json` is too short to hold anything `bound` cuts, with no chain field in it:
/// no string can be longer than the whole (`MAX_STRING`), no list can hold more items than
/// there are commas in all, and a field the chain owns would show as its quoted name. Most
/// records are; this is a few vector scans where `passes_unchanged` walks every byte.
fn small_and_plain(json: &[u8]) -> bool {
    // Searchers built once: building one costs more than searching a record.
    static QUOTED: LazyLock<[memmem::Finder<'static>; 3]> = LazyLock::new(|| {
        let quoted: [&'static [u8]; 3] = [b"\"seq\"", b"\"prev\"", b"\"hash\""];
        quoted.map(memmem::Finder::new)
    });
    debug_assert!(RESERVED.len() == QUOTED.len());
    json.len() <= MAX_STRING.min(MAX_LIST_BYTES)
        && memchr::memchr_iter(b',', json).count() < MAX_ITEMS
        && !QUOTED.iter().any(|f| f.find(json).is_some())
}

/// One open container while scanning.
struct Open {
    array: bool,
    /// Commas seen directly inside it (items are one more, when it is not empty).
    commas: usize,
    empty: bool,
    /// Escaped bytes of the strings directly inside an array.
    string_bytes: usize,
}

/// Whether `json` (compact, as serde_json writes it) holds no string longer than
/// `MAX_STRING`, no list `bound` would cut, and no top-level field the chain owns.
fn passes_unchanged(json: &[u8]) -> bool {
    let mut open: Vec<Open> = Vec::with_capacity(8);
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                // To the closing quote, a word at a time past plain bytes: most of a
                // record is strings.
                while let Some(at) = memchr::memchr2(b'"', b'\\', &json[i.min(json.len())..]) {
                    i += at;
                    if json[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
                if i >= json.len() || json[i] != b'"' {
                    i = json.len();
                }
                let s = &json[start..i.min(json.len())];
                if s.len() > MAX_STRING {
                    return false;
                }
                let is_key = json.get(i + 1) == Some(&b':');
                let top_level = open.len() == 1;
                match open.last_mut() {
                    Some(o) if o.array => {
                        o.string_bytes += s.len();
                        if o.string_bytes > MAX_LIST_BYTES {
                            return false;
                        }
                    }
                    _ if is_key && top_level && RESERVED.contains(&s) => return false,
                    _ => {}
                }
            }
            c @ (b'[' | b'{') => open.push(Open {
                array: c == b'[',
                commas: 0,
                empty: matches!(json.get(i + 1), Some(b']' | b'}')),
                string_bytes: 0,
            }),
            b']' | b'}' => {
                if let Some(o) = open.pop() {
                    let items = if o.empty { 0 } else { o.commas + 1 };
                    if o.array && items > MAX_ITEMS {
                        return false;
                    }
                }
            }
            b',' => {
                if let Some(o) = open.last_mut() {
                    o.commas += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the slow way makes of a record: the reference the fast way must match.
    fn reference(v: &Value) -> Value {
        let mut m = v.as_object().unwrap().clone();
        serde_json::from_slice(&bounded(&mut m)).unwrap()
    }

    fn fast(v: &Value) -> Value {
        serde_json::from_slice(&body(v).unwrap()).unwrap()
    }

    #[test]
    fn small_records_pass_as_serialised() {
        let v =
            json!({"type": "mcp", "n": 1.5, "list": ["a", "b"], "o": {"seq": 3, "k": [[], {}]}});
        assert!(passes_unchanged(&serde_json::to_vec(&v).unwrap()));
        assert_eq!(fast(&v), v);
    }

    #[test]
    fn records_that_need_bounding_match_the_slow_way() {
        let cases = [
            json!({"s": "x".repeat(MAX_STRING + 1)}),
            json!({"s": "\"".repeat(MAX_STRING / 2 + 1)}),
            json!({"deep": {"list": (0..MAX_ITEMS + 1).collect::<Vec<_>>()}}),
            json!({"list": vec!["y".repeat(1000); 9]}),
            json!({"seq": 1, "prev": "p", "hash": "h", "type": "x"}),
            json!({"nested": [{"s": "z".repeat(5000)}]}),
        ];
        for v in cases {
            let bytes = serde_json::to_vec(&v).unwrap();
            let unchanged = passes_unchanged(&bytes);
            let r = reference(&v);
            assert_eq!(
                fast(&v),
                r,
                "{}",
                &v.to_string()[..60.min(v.to_string().len())]
            );
            assert!(
                !unchanged || r == v,
                "the scan let a record pass that bounding changes"
            );
        }
    }

    #[test]
    fn a_list_of_exactly_the_limit_passes_and_one_more_does_not() {
        let at = json!({"l": vec![0; MAX_ITEMS], "e": []});
        assert!(passes_unchanged(&serde_json::to_vec(&at).unwrap()));
        let over = json!({"l": vec![0; MAX_ITEMS + 1]});
        assert!(!passes_unchanged(&serde_json::to_vec(&over).unwrap()));
    }

    /// The quick check never lets through what the full scan would not: records at each of
    /// its edges (length, commas, a chain field's name) and a little past them.
    #[test]
    fn the_quick_check_passes_only_what_the_scan_passes() {
        let mut cases = vec![
            json!({"l": vec![0; MAX_ITEMS - 1]}),
            json!({"l": vec![0; MAX_ITEMS]}),
            json!({"l": vec![0; MAX_ITEMS + 1]}),
            json!({"a": vec![0; 40], "b": vec![0; 40]}),
            json!({"seq": 1}),
            json!({"o": {"prev": "x"}}),
            json!({"s": "a \"hash\" in a string"}),
            json!({"type": "mcp", "id": "7"}),
        ];
        for n in [
            MAX_STRING - 20,
            MAX_STRING - 9,
            MAX_STRING - 8,
            MAX_STRING,
            MAX_STRING + 1,
        ] {
            cases.push(json!({"s": "x".repeat(n)}));
            cases.push(json!({"l": ["y".repeat(n)]}));
        }
        let mut quick = 0;
        for v in cases {
            let bytes = serde_json::to_vec(&v).unwrap();
            if small_and_plain(&bytes) {
                quick += 1;
                assert!(passes_unchanged(&bytes), "{v}");
                assert_eq!(reference(&v), v);
            }
        }
        // The check does take the common case.
        assert!(quick >= 5, "{quick}");
        let record = json!({"type": "mcp", "time": "2026-12-03T15:00:18.005406Z",
            "connection": "b61dcf21-29", "principal": {"tgid": 1, "uid": 0, "exe": "/x"},
            "server": "bench", "method": "tools/call", "outcome": "ok"});
        assert!(small_and_plain(&serde_json::to_vec(&record).unwrap()));
    }

    #[test]
    fn reserved_names_only_matter_at_the_top() {
        let inner = json!({"o": {"seq": 1, "hash": "x"}, "l": ["seq"]});
        assert!(passes_unchanged(&serde_json::to_vec(&inner).unwrap()));
        assert!(body(&json!([1])).is_err());
    }
}
