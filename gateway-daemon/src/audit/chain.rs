//! The hash chain: every record carries its sequence number, the previous record's hash and
//! its own. The hash is a SHA-256 over the exact bytes of the record's JSON without `hash`;
//! a line is `{"hash":"<hex>",` followed by those bytes after their `{`, so verification
//! hashes what is on disk instead of re-serialising parsed values (a float would not
//! survive that byte for byte).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the very first record.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("missing or invalid `{0}`")]
    Field(&'static str),
    #[error("content does not match its hash")]
    HashMismatch,
}

/// Lower-case hex of the SHA-256 of `bytes`. Two per call on the hot path (the record's hash
/// and the arguments'), so encoded into a buffer rather than `hex::encode`'s char iterator.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut out = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(bytes), &mut out).expect("64 digits for 32 bytes");
    String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
}

const PREFIX: &[u8] = b"{\"hash\":\"";
/// `{"hash":"` + 64 hex digits + `",`
const HEAD_LEN: usize = PREFIX.len() + 64 + 2;

/// Seals `body` as record `seq` after `prev`: returns the line (with its newline) and its
/// hash. Fields of `body` named like the chain's own are dropped.
pub fn seal(seq: u64, prev: &str, mut body: Map<String, Value>) -> (Vec<u8>, String) {
    for k in ["seq", "prev", "hash"] {
        body.remove(k);
    }
    let body = serde_json::to_vec(&body).expect("a JSON map always serialises");
    seal_body(seq, prev, &body)
}

/// Seals the JSON object `body` (which holds none of the chain's fields) as record `seq`
/// after `prev`: the hashed bytes are `{"seq":…,"prev":"…",` and then the body's fields.
/// The line is built once, with room for the hash, which is filled in last: the hashed
/// bytes are the line's own after its head.
pub fn seal_body(seq: u64, prev: &str, body: &[u8]) -> (Vec<u8>, String) {
    debug_assert!(body.first() == Some(&b'{') && body.last() == Some(&b'}'));
    let fields = &body[1..body.len() - 1];
    let mut line = Vec::with_capacity(HEAD_LEN + body.len() + prev.len() + 40);
    line.extend_from_slice(PREFIX);
    line.extend_from_slice(&[b'0'; 64]);
    line.extend_from_slice(b"\",\"seq\":");
    line.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    line.extend_from_slice(b",\"prev\":\"");
    line.extend_from_slice(prev.as_bytes());
    line.push(b'"');
    if !fields.is_empty() {
        line.push(b',');
        line.extend_from_slice(fields);
    }
    line.push(b'}');
    let digest = Sha256::new()
        .chain_update(b"{")
        .chain_update(&line[HEAD_LEN..])
        .finalize();
    let at = PREFIX.len()..PREFIX.len() + 64;
    hex::encode_to_slice(digest, &mut line[at.clone()]).expect("64 digits for 32 bytes");
    let hash = String::from_utf8(line[at].to_vec()).expect("hex digits are ASCII");
    line.push(b'\n');
    (line, hash)
}

/// A record read back from a ledger line.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    pub body: Map<String, Value>,
}

/// Parses a line (without its newline) and checks it against its own hash.
pub fn open(line: &[u8]) -> Result<Sealed, ChainError> {
    let well_formed = line.len() > HEAD_LEN
        && line.starts_with(PREFIX)
        && &line[HEAD_LEN - 2..HEAD_LEN] == b"\","
        && line[PREFIX.len()..HEAD_LEN - 2]
            .iter()
            .all(u8::is_ascii_hexdigit);
    if !well_formed {
        return match serde_json::from_slice::<Value>(line) {
            Err(e) => Err(ChainError::NotJson(e.to_string())),
            Ok(_) => Err(ChainError::Field("hash")),
        };
    }
    let hash = String::from_utf8_lossy(&line[PREFIX.len()..HEAD_LEN - 2]).into_owned();
    let mut body = Vec::with_capacity(line.len() - HEAD_LEN + 1);
    body.push(b'{');
    body.extend_from_slice(&line[HEAD_LEN..]);
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ChainError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ChainError::NotJson(
            "a JSON value that is not an object".into(),
        ));
    };
    let seq = map
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or(ChainError::Field("seq"))?;
    let prev = map
        .get("prev")
        .and_then(Value::as_str)
        .ok_or(ChainError::Field("prev"))?
        .to_string();
    if sha256_hex(&body) != hash {
        return Err(ChainError::HashMismatch);
    }
    Ok(Sealed {
        seq,
        prev,
        hash,
        body: map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn sealed_records_open_and_chain() {
        let (l1, h1) = seal(
            1,
            GENESIS_PREV,
            body(json!({"type": "genesis", "latency_ms": 3.83})),
        );
        let (l2, h2) = seal(
            2,
            &h1,
            body(json!({"type": "mcp", "seq": 99, "hash": "forged"})),
        );
        let r1 = open(&l1[..l1.len() - 1]).unwrap();
        let r2 = open(&l2[..l2.len() - 1]).unwrap();
        assert_eq!((r1.seq, r1.hash.as_str()), (1, h1.as_str()));
        assert_eq!(
            (r2.seq, r2.prev.as_str(), r2.hash.as_str()),
            (2, h1.as_str(), h2.as_str())
        );
        assert_eq!(r2.body["type"], "mcp");
    }

    #[test]
    fn any_edit_breaks_the_hash() {
        let (l, _) = seal(
            7,
            GENESIS_PREV,
            body(json!({"type": "mcp", "outcome": "refused"})),
        );
        let text = String::from_utf8(l[..l.len() - 1].to_vec()).unwrap();
        let edited = text.replace("refused", "ok");
        assert_eq!(
            open(edited.as_bytes()).unwrap_err(),
            ChainError::HashMismatch
        );
        let reseq = text.replace("\"seq\":7", "\"seq\":8");
        assert_eq!(
            open(reseq.as_bytes()).unwrap_err(),
            ChainError::HashMismatch
        );
        assert!(matches!(open(b"{\"seq\":1"), Err(ChainError::NotJson(_))));
        assert_eq!(
            open(b"{\"seq\":1,\"prev\":\"x\"}").unwrap_err(),
            ChainError::Field("hash")
        );
        // Reformatting is an edit too: the hash covers the bytes.
        let spaced = text.replacen(",\"outcome\"", ", \"outcome\"", 1);
        assert_eq!(
            open(spaced.as_bytes()).unwrap_err(),
            ChainError::HashMismatch
        );
    }

    #[test]
    fn floats_that_do_not_round_trip_still_verify() {
        let (l, _) = seal(
            3,
            GENESIS_PREV,
            body(json!({"latency_ms": 42.537988999999996_f64, "d": 1e-7})),
        );
        open(&l[..l.len() - 1]).unwrap();
    }
}
