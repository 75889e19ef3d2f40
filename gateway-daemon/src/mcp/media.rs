//! How a client will read a server's response body, judged from its `Content-Type` as
//! leniently as the most lenient client: the TypeScript SDK looks for the type anywhere in
//! the header, the Python SDK compares case-insensitively. A body a client would read as
//! MCP is read by the gateway first; one it cannot tell is not passed on as if checked.

use http::{header, HeaderMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// An event stream.
    Sse,
    /// A JSON body.
    Json,
    /// Both names appear: one client reads it as an event stream, another as JSON.
    Ambiguous,
    /// Neither: no client reads it as MCP.
    Other,
}

const SSE: &str = "text/event-stream";
const JSON: &str = "application/json";

pub fn of(headers: &HeaderMap) -> Media {
    // Each value on its own: a name never spans two (they were joined with a comma).
    let (mut sse, mut json) = (false, false);
    for v in headers.get_all(header::CONTENT_TYPE) {
        sse |= contains_ignoring_case(v.as_bytes(), SSE);
        json |= contains_ignoring_case(v.as_bytes(), JSON);
    }
    match (sse, json) {
        (true, true) => Media::Ambiguous,
        (true, false) => Media::Sse,
        (false, true) => Media::Json,
        (false, false) => Media::Other,
    }
}

/// Whether `needle` (ASCII) is in `hay`, ASCII letters in any case. Bytes that are not
/// ASCII never match one that is, so this is what a search of the lossy, lowercased text
/// finds, without making it on every request.
fn contains_ignoring_case(hay: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether an `Accept` header list admits an event stream, in any case.
pub fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| contains_ignoring_case(v.as_bytes(), SSE))
}

/// Whether an `Accept` header list admits a JSON body (named, by a wildcard, or by no
/// `Accept` at all).
pub fn accepts_json(headers: &HeaderMap) -> bool {
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        any = true;
        let admits = |range: &str| {
            let range = range.split(';').next().unwrap_or("").trim();
            range == "*/*"
                || range.eq_ignore_ascii_case("application/*")
                || contains_ignoring_case(range.as_bytes(), JSON)
        };
        let found = match v.to_str() {
            // Visible ASCII (nearly every value): read in place.
            Ok(text) => text.split(',').any(admits),
            // Beyond it: as the lossy text, so `trim` sees the same whitespace it did.
            Err(_) => String::from_utf8_lossy(v.as_bytes()).split(',').any(admits),
        };
        if found {
            return true;
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(values: &[&str]) -> Media {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONTENT_TYPE, v.parse().unwrap());
        }
        of(&h)
    }

    #[test]
    fn any_case_any_place_as_clients_read_it() {
        assert_eq!(ct(&["text/event-stream"]), Media::Sse);
        assert_eq!(ct(&["Text/Event-Stream; charset=UTF-8"]), Media::Sse);
        assert_eq!(ct(&["x-text/event-stream"]), Media::Sse);
        assert_eq!(ct(&["Application/JSON"]), Media::Json);
        assert_eq!(ct(&["application/json-rpc"]), Media::Json);
        assert_eq!(
            ct(&["application/json; x=text/event-stream"]),
            Media::Ambiguous
        );
        assert_eq!(
            ct(&["application/json", "text/event-stream"]),
            Media::Ambiguous
        );
        assert_eq!(ct(&["text/plain"]), Media::Other);
        assert_eq!(ct(&[]), Media::Other);
        assert_eq!(ct(&["text/event-", "stream"]), Media::Other);
    }

    fn accept(value: &[u8]) -> (bool, bool) {
        let mut h = HeaderMap::new();
        h.append(
            header::ACCEPT,
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        (accepts_json(&h), accepts_sse(&h))
    }

    #[test]
    fn accept_lists_in_any_case_and_bytes() {
        assert_eq!(accept(b"Application/JSON, TEXT/EVENT-STREAM"), (true, true));
        assert_eq!(accept(b"text/html, APPLICATION/*;q=0.5"), (true, false));
        assert_eq!(accept(b" */* ; q=0.1"), (true, false));
        assert_eq!(accept(b"text/event-stream"), (false, true));
        // Bytes past ASCII: read as their lossy text, whitespace and all.
        assert_eq!(accept(b"\xc2\xa0*/*"), (true, false));
        assert_eq!(accept(b"x\xff, text/Event-Stream"), (false, true));
        let none = HeaderMap::new();
        assert!(accepts_json(&none) && !accepts_sse(&none));
    }
}
