//! One pass over the raw bytes of a JSON text before serde reads it: nesting (refused past
//! the gateway's limit), keys given twice in one object (refused: the gateway would check
//! one copy and a peer might read the other, whichever of them its parser keeps), and what
//! only a full parse can tell a `Value` holds. String contents are skipped to their closing
//! quote a word at a time. Malformed input is left for serde_json to reject.

use std::collections::HashSet;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;

use super::jsonrpc::JsonRpcError;

/// What one pass over the raw bytes found.
pub(crate) struct Scan {
    /// The first non-whitespace byte.
    pub first: Option<u8>,
    /// Something a serde_json Value may not hold: a `\uD...` escape (perhaps a lone
    /// surrogate), a number with an exponent or of 300 digits or more (perhaps beyond a
    /// double). (Nesting is not: the gateway's limit, 64, is below serde_json's 128.)
    pub suspect: bool,
    /// A key given twice in one object, as the error that says so.
    pub twice: Option<JsonRpcError>,
}

/// Keys of one object compared byte for byte; past this many, or once a key holds an
/// escape (`"\u0061"` is `"a"`), the whole text is read again by `unique_keys`.
const KEYS_COMPARED: usize = 32;

/// Containers, and keys of the objects open at once, tracked on the stack (the scan is on
/// every message's path: no allocation); past either, the text is read again.
const OPEN: usize = 64;
const KEYS: usize = 128;

/// An open container that is an array (an object's entry is where its keys start).
const ARRAY: u16 = u16::MAX;

/// Scans raw bytes for bracket nesting (an error past `max_depth`) and keys given twice,
/// skipping string contents, and notes what only a full parse can tell is readable.
pub(crate) fn scan(body: &[u8], max_depth: usize) -> Result<Scan, JsonRpcError> {
    let first = body
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let mut depth = 0usize;
    let mut digits = 0usize;
    let mut suspect = false;
    // Open containers (`opened` of them, the first `OPEN` tracked): for an object, where
    // its keys start in `keys`, which holds the open objects' keys.
    let mut open = [ARRAY; OPEN];
    let mut opened = 0usize;
    // Not an array: initialising 128 slices wrote 2 KiB on every message's path, 32 cache
    // lines that 16 busy connections have always evicted by the next message; a typical
    // message holds a dozen keys.
    let mut keys: SmallVec<[&[u8]; KEYS]> = SmallVec::new();
    let mut expect_key = false;
    let mut reread = false;
    let mut twice = None;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        i += 1;
        match b {
            b'0'..=b'9' => {
                digits += 1;
                suspect |= digits >= 300;
                continue;
            }
            b'e' | b'E' if digits > 0 => suspect = true,
            b'"' => {
                // Most of a message is strings: to the closing quote a word at a time.
                let start = i;
                let (end, odd, escaped) = string_end(body, i);
                suspect |= odd;
                i = end;
                let top = match opened {
                    1..=OPEN => open[opened - 1],
                    _ => ARRAY,
                };
                if expect_key && top != ARRAY {
                    let from = usize::from(top);
                    let key = &body[start..end.saturating_sub(1).max(start)];
                    if escaped || keys.len() - from >= KEYS_COMPARED || keys.len() == KEYS {
                        reread = true;
                    } else if keys[from..].contains(&key) {
                        twice.get_or_insert_with(|| given_twice(&String::from_utf8_lossy(key)));
                    } else {
                        keys.push(key);
                    }
                }
                expect_key = false;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(JsonRpcError::TooDeep(max_depth));
                }
                if opened < OPEN {
                    open[opened] = if b == b'{' { keys.len() as u16 } else { ARRAY };
                } else {
                    reread = true;
                }
                opened += 1;
                expect_key = b == b'{';
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if (1..=OPEN).contains(&opened) && open[opened - 1] != ARRAY {
                    keys.truncate(usize::from(open[opened - 1]));
                }
                opened = opened.saturating_sub(1);
                expect_key = false;
            }
            b',' => expect_key = matches!(opened, 1..=OPEN) && open[opened - 1] != ARRAY,
            b':' => expect_key = false,
            _ => {}
        }
        digits = 0;
    }
    if reread && twice.is_none() {
        if let Ok(text) = std::str::from_utf8(body) {
            twice = unique_keys(text).err();
        }
    }
    Ok(Scan {
        first,
        suspect,
        twice,
    })
}

fn given_twice(key: &str) -> JsonRpcError {
    let shown: String = key.chars().take(64).collect();
    JsonRpcError::NotJsonRpc(format!(
        "the key {shown:?} appears twice in one object: a reader of the first and a reader \
         of the last would disagree"
    ))
}

/// Reads `text` whole, keys decoded, and fails on an object that holds one key twice.
/// Syntax errors are left to the parse that follows.
fn unique_keys(text: &str) -> Result<(), JsonRpcError> {
    let mut de = serde_json::Deserializer::from_str(text);
    match Unique.deserialize(&mut de) {
        Err(e) if e.is_data() => Err(JsonRpcError::NotJsonRpc(e.to_string())),
        _ => Ok(()),
    }
}

/// Walks any JSON value, keeping nothing but each object's keys while it is read.
#[derive(Clone, Copy)]
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.clone()) {
                let JsonRpcError::NotJsonRpc(why) = given_twice(&key) else {
                    unreachable!("twice is NotJsonRpc")
                };
                return Err(de::Error::custom(why));
            }
            map.next_value_seed(Unique)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Where the string whose contents start at `from` ends (past its closing quote, or the
/// end of `body` when it has none), whether it holds a `\uD…` escape (perhaps a lone
/// surrogate), and whether it holds any escape.
fn string_end(body: &[u8], mut from: usize) -> (usize, bool, bool) {
    let mut suspect = false;
    let mut escaped = false;
    while let Some(at) = memchr::memchr2(b'"', b'\\', &body[from..]) {
        let at = from + at;
        if body[at] == b'"' {
            return (at + 1, suspect, escaped);
        }
        escaped = true;
        // An escape: the byte after the backslash is never the string's end, nor, after
        // `\u`, the one after that (the first of its hex digits, or whatever stands there:
        // serde_json refuses a malformed escape, and the depth count is as it always was).
        let skip = if body.get(at + 1) == Some(&b'u') {
            suspect |= matches!(body.get(at + 2), Some(b'd' | b'D'));
            3
        } else {
            2
        };
        from = (at + skip).min(body.len());
    }
    (body.len(), suspect, escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twice_in(text: &str) -> bool {
        matches!(scan(text.as_bytes(), 64).unwrap().twice, Some(JsonRpcError::NotJsonRpc(m)) if m.contains("appears twice"))
    }

    #[test]
    fn a_key_given_twice_anywhere_is_refused() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"p":{"arguments":{"q":"AKIA","q":"x"}}}"#,
            r#"[{"x":1},{"y":{"z":[{"k":1,"k":1}]}}]"#,
            r#"{"a":{"x":1},"b":[1,{"c":2}],"a":2}"#,
            r#"{"a" : 1 , "a" : 2}"#,
            // Spelled with an escape: the same key once decoded.
            r#"{"a":1,"\u0061":2}"#,
            r#"{"tools":[],"t\u006fols":[]}"#,
        ] {
            assert!(twice_in(text), "{text}");
        }
        // Past the keys compared byte for byte, the whole text is read again.
        let mut many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        many.push("\"k7\":0".into());
        assert!(twice_in(&format!("{{{}}}", many.join(","))));
        // Past the containers and keys tracked on the stack, too.
        let deep = format!(
            "{}{{\"a\":1,\"a\":2}}{}",
            "{\"x\":".repeat(70),
            "}".repeat(70)
        );
        assert!(scan(deep.as_bytes(), 100).unwrap().twice.is_some());
        let held: String = (0..5)
            .map(|d| {
                let keys: Vec<String> = (0..30).map(|i| format!("\"k{d}_{i}\":0")).collect();
                format!("{{{},\"n\":", keys.join(","))
            })
            .collect();
        let held = format!("{held}{{\"z\":1,\"z\":1}}{}", "}".repeat(5));
        assert!(twice_in(&held), "{held}");
    }

    #[test]
    fn the_same_key_in_other_objects_or_as_a_value_is_not_twice() {
        for text in [
            r#"{"a":"a","b":{"a":1},"c":[{"a":1},{"a":2}]}"#,
            r#"{"a":{"a":{"a":1}}}"#,
            r#"{"a":["a","a"],"b":"a"}"#,
            r#"{"a":1,"\u0062":2}"#,
            r#"{"x":"\",\"x\":1"}"#,
        ] {
            assert!(scan(text.as_bytes(), 64).unwrap().twice.is_none(), "{text}");
        }
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        assert!(scan(format!("{{{}}}", many.join(",")).as_bytes(), 64)
            .unwrap()
            .twice
            .is_none());
        // Malformed text is serde's to refuse; the scan neither panics nor reads past it.
        for text in [
            "}}]]",
            r#"{"a":1,"a"#,
            r#"{"a""#,
            r#"{,"a":1,"a":2"#,
            "[\"a\",\"a\"]",
        ] {
            let _ = scan(text.as_bytes(), 64);
        }
    }
}
