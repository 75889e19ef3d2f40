//! Errors the gateway answers with itself, as JSON-RPC error objects (rmcp's model types),
//! in an HTTP response or as an SSE event.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use rmcp::model::{ErrorCode, ErrorData, JsonRpcError, JsonRpcVersion2_0, NumberOrString};

use super::jsonrpc::Id;
use crate::http::body::{full, GwBody};

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
/// The MCP code for an `Mcp-Method`/`Mcp-Name` header that disagrees with the body.
pub const HEADER_MISMATCH: i32 = ErrorCode::HEADER_MISMATCH.0;
/// A protocol version the gateway does not read.
pub const UNSUPPORTED_VERSION: i32 = ErrorCode::UNSUPPORTED_PROTOCOL_VERSION.0;
/// The gateway refused the message (limits, session ownership, policy).
pub const GATEWAY_REFUSED: i32 = -32010;
/// The policy denied the request (the message names the rule).
pub const GATEWAY_DENIED: i32 = -32012;
/// A rate or concurrency limit of the principal refused the request.
pub const GATEWAY_LIMITED: i32 = -32013;
/// Secrets in a call's arguments: refused so they do not leave the host.
pub const GATEWAY_EXFILTRATION: i32 = -32014;
/// The tool or prompt's definition is not approved (new, changed, poisoned: see pins).
pub const GATEWAY_UNPINNED: i32 = -32015;
/// The upstream server failed (unreachable, died mid-stream, sent garbage).
pub const UPSTREAM_FAILED: i32 = -32011;

fn rpc_id(id: &Id) -> Option<NumberOrString> {
    match id {
        Id::Num(n) => Some(NumberOrString::Number(*n)),
        Id::Str(s) => Some(NumberOrString::String(s.as_str().into())),
        Id::Null => None,
    }
}

/// One JSON-RPC error object, serialised.
pub fn error_json(id: Option<&Id>, code: i32, message: impl Into<String>) -> Vec<u8> {
    let err = JsonRpcError {
        jsonrpc: JsonRpcVersion2_0,
        id: id.and_then(rpc_id),
        error: ErrorData::new(ErrorCode(code), message.into(), None),
    };
    serde_json::to_vec(&err).expect("a JSON-RPC error always serialises")
}

/// An HTTP response carrying JSON-RPC errors: one object for one id, an array for several.
pub fn error_response(
    status: StatusCode,
    ids: &[Option<Id>],
    code: i32,
    message: &str,
) -> Response<GwBody> {
    let body = if ids.len() == 1 {
        error_json(ids[0].as_ref(), code, message)
    } else {
        let mut out = b"[".to_vec();
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend(error_json(id.as_ref(), code, message));
        }
        out.push(b']');
        out
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static response parts are valid")
}

/// How an agent reads the answer to its POST, by what its `Accept` admits: JSON when it
/// takes JSON (or says nothing), else an event stream when it takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Json,
    Sse,
}

impl Form {
    pub fn of(headers: &http::HeaderMap) -> Form {
        if !super::media::accepts_json(headers) && super::media::accepts_sse(headers) {
            Form::Sse
        } else {
            Form::Json
        }
    }
}

/// JSON-RPC errors answering requests the gateway refused, delivered as a server delivers
/// its own errors: in a 200 response, so that clients surface them as the call's error and
/// not as a failed transport.
pub fn rpc_errors(form: Form, ids: &[Id], code: i32, message: &str) -> Response<GwBody> {
    match form {
        Form::Json => {
            let ids: Vec<Option<Id>> = ids.iter().cloned().map(Some).collect();
            error_response(StatusCode::OK, &ids, code, message)
        }
        Form::Sse => {
            let mut body = Vec::new();
            for id in ids {
                body.extend_from_slice(&error_event(id, code, message));
            }
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(full(body))
                .expect("static response parts are valid")
        }
    }
}

/// What a legacy HTTP+SSE server answers a POST it took: the answer comes on the stream.
pub fn accepted() -> Response<GwBody> {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full("Accepted"))
        .expect("static response parts are valid")
}

/// The error as an SSE `message` event, for a stream whose headers are already sent.
pub fn error_event(id: &Id, code: i32, message: &str) -> Bytes {
    let mut ev = b"event: message\ndata: ".to_vec();
    ev.extend(error_json(Some(id), code, message));
    ev.extend_from_slice(b"\n\n");
    ev.into()
}

/// A plain-text HTTP error for traffic that is not MCP.
pub fn http_error(status: StatusCode, message: &str) -> Response<GwBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(format!("mcp-gateway: {message}\n")))
        .expect("static response parts are valid")
}
