//! Could these bytes be a JSON-RPC message? Judged by content, as leniently as the most
//! lenient peer parses JSON, because headers are the sender's to choose: a request body or
//! a server event that some MCP peer would read as a message is treated as one (decided,
//! observed, refused if unreadable), whatever its Content-Type, Accept or method says.

use bytes::Bytes;
use http::Request;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::http::body::{boxed, collect_after, BodyError, GwBody, Replay};

/// What a body or event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// Not a JSON-RPC message for any peer: passes as plain HTTP.
    Plain,
    /// A JSON-RPC message, or JSON-looking bytes no strict parser reads (a lenient peer
    /// might): the MCP stage decides it, which refuses what it cannot read.
    JsonRpc,
}

/// Where the first significant byte is, or None while only padding has been seen. Padding
/// is what some JSON reader skips before a value: ASCII whitespace (Python's and
/// JavaScript's four, plus VT and FF), NUL and the UTF-8/16/32 byte order marks (Python
/// detects UTF-16 and UTF-32 bodies by their zero bytes).
pub fn first_significant(b: &[u8]) -> Option<u8> {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    b.iter().copied().find(|c| {
        !matches!(
            c,
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0 | 0xfe | 0xff
        )
    })
}

/// Whether bytes that start this way may hold a JSON-RPC message (an object or a batch).
pub fn may_be_json(first: u8) -> bool {
    matches!(first, b'{' | b'[')
}

/// The verdict on a whole body or event's data.
pub fn classify(b: &[u8]) -> Sniffed {
    if !first_significant(b).is_some_and(may_be_json) {
        return Sniffed::Plain;
    }
    let text = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(v) if is_message_like(&v) => Sniffed::JsonRpc,
        Ok(serde_json::Value::Array(items)) if items.iter().any(is_message_like) => {
            Sniffed::JsonRpc
        }
        Ok(_) => Sniffed::Plain,
        // JSON-looking but not JSON to serde (NaN, a trailing comma, UTF-16, too deep):
        // some peer may read it, the gateway cannot, so the MCP stage refuses it.
        Err(_) => Sniffed::JsonRpc,
    }
}

/// An object any JSON-RPC peer would take for a message: it names a method, or carries a
/// result or an error, or says it is JSON-RPC. `id` alone is too common in plain JSON.
fn is_message_like(v: &serde_json::Value) -> bool {
    v.as_object().is_some_and(|o| {
        ["jsonrpc", "method", "result", "error"]
            .iter()
            .any(|k| o.contains_key(*k))
    })
}

/// Looks at a request body the headers did not mark as MCP: reads it until its first
/// significant byte, and all of it (up to `limit`) when that byte opens JSON. The request
/// comes back whole, to be decided or forwarded.
pub async fn request(
    req: Request<Incoming>,
    limit: usize,
    held: &mut crate::http::budget::Reservation,
) -> Result<(Sniffed, Request<GwBody>), BodyError> {
    let (parts, mut body) = req.into_parts();
    let mut seen = Vec::new();
    let mut trailers = None;
    let first = loop {
        if let Some(b) = first_significant(&seen) {
            break Some(b);
        }
        if body.is_end_stream() {
            break None;
        }
        match body.frame().await {
            None => break None,
            Some(Err(e)) => return Err(BodyError::Read(e.to_string())),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    if seen.len() + d.len() > limit {
                        return Err(BodyError::TooLarge { limit });
                    }
                    held.set(seen.len() + d.len())?;
                    seen.extend_from_slice(&d);
                }
                Err(t) => trailers = Some(t),
            },
        }
    };
    if !first.is_some_and(may_be_json) {
        let head = (!seen.is_empty())
            .then(|| Frame::data(Bytes::from(seen)))
            .into_iter()
            .chain(trailers);
        let req = Request::from_parts(parts, boxed(Replay::new(head, body)));
        return Ok((Sniffed::Plain, req));
    }
    let whole = collect_after(seen, &mut body, limit, held).await?;
    let verdict = classify(&whole);
    Ok((
        verdict,
        Request::from_parts(parts, crate::http::body::full(whole)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rpc_is_found_whatever_the_padding_and_spelling() {
        for b in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#[..],
            br#"  {"method":"tools/call"}"#,
            b"\xEF\xBB\xBF{\"method\":\"x\"}",
            br#"[{"jsonrpc":"2.0","method":"x"}]"#,
            br#"{"m\u0065thod":"tools/call"}"#,
            br#"{"method":"a","method":"b"}"#,
            br#"{"result":{},"id":1}"#,
            // Unreadable to serde, readable to a lenient peer.
            br#"{"jsonrpc":"2.0","method":"x","params":{"a":NaN}}"#,
            br#"{"method":"x",}"#,
            b"\xff\xfe{\x00\"\x00",
            b"\x00{",
        ] {
            assert_eq!(
                classify(b),
                Sniffed::JsonRpc,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn plain_json_and_other_bodies_pass() {
        for b in [
            &br#"{"model":"m","messages":[],"stream":true}"#[..],
            br#"{"id":3,"name":"x"}"#,
            br#"[1,2,3]"#,
            br#""method""#,
            b"a=1&method=tools/call",
            b"--boundary\r\n",
            b"",
            b"   ",
        ] {
            assert_eq!(
                classify(b),
                Sniffed::Plain,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }
}
