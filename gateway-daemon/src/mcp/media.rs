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
    let mut text = String::new();
    for v in headers.get_all(header::CONTENT_TYPE) {
        text.push_str(&String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
        text.push(',');
    }
    match (text.contains(SSE), text.contains(JSON)) {
        (true, true) => Media::Ambiguous,
        (true, false) => Media::Sse,
        (false, true) => Media::Json,
        (false, false) => Media::Other,
    }
}

/// Whether an `Accept` header list admits an event stream, in any case.
pub fn accepts_sse(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .to_ascii_lowercase()
            .contains(SSE)
    })
}

/// Whether an `Accept` header list admits a JSON body (named, by a wildcard, or by no
/// `Accept` at all).
pub fn accepts_json(headers: &HeaderMap) -> bool {
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        any = true;
        let v = String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
        if v.split(',').any(|range| {
            let range = range.split(';').next().unwrap_or("").trim();
            range == "*/*" || range == "application/*" || range.contains(JSON)
        }) {
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
    }
}
