//! The wire format, shared by the server and the client so the two cannot drift apart.

use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Request {
    pub op: String,
    #[serde(default)]
    pub args: Value,
}

/// One request line (without its newline), or the message for a human explaining what is
/// wrong with it.
pub(super) fn parse_request(line: &[u8]) -> Result<Request, String> {
    let mut request: Request = serde_json::from_slice(line).map_err(|e| {
        format!(
            "malformed request: {e}; expected one JSON object per line, like \
             {{\"op\": \"pins.list\", \"args\": {{}}}}"
        )
    })?;
    // An absent and a null `args` both mean "no arguments", so handlers see one shape.
    if request.args.is_null() {
        request.args = Value::Object(Map::new());
    }
    Ok(request)
}

pub(super) fn request_line(op: &str, args: Value) -> Vec<u8> {
    let mut line = json!({ "op": op, "args": args }).to_string().into_bytes();
    line.push(b'\n');
    line
}

pub(super) fn response_line(outcome: Result<Value, String>) -> Vec<u8> {
    let response = match outcome {
        Ok(result) => json!({ "ok": true, "result": result }),
        Err(error) => json!({ "ok": false, "error": error }),
    };
    let mut line = response.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// The inner `Err` is the daemon's refusal; the outer one says why the line is not a
/// response at all.
pub(super) fn parse_response(line: &[u8]) -> Result<Result<Value, String>, String> {
    let mut response: Map<String, Value> = serde_json::from_slice(line)
        .map_err(|e| format!("not a JSON object ({e}): {}", excerpt(line)))?;
    match response.get("ok") {
        Some(Value::Bool(true)) => Ok(Ok(response.remove("result").unwrap_or(Value::Null))),
        Some(Value::Bool(false)) => match response.remove("error") {
            Some(Value::String(message)) => Ok(Err(message)),
            _ => Err(format!(
                "ok is false but error is not a string: {}",
                excerpt(line)
            )),
        },
        _ => Err(format!("no boolean \"ok\": {}", excerpt(line))),
    }
}

/// Enough of a bad line to recognise it in an error message, without flooding the terminal.
fn excerpt(line: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(line);
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}
