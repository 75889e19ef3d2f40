//! Borrowed JSON-RPC 2.0 envelope parser for MCP traffic.
//!
//! The gateway forwards the original bytes untouched; this module only learns what a
//! policy decision needs: the message kind, its id, its method, and (on demand) the
//! tool name / resource uri, the progress token and the protocol version carried in
//! `params._meta`. `params` and `result` are kept as borrowed [`RawValue`]s: they are
//! scanned once for validity but never decoded into a tree, so a multi-megabyte result
//! costs no allocation per field.
//!
//! Work done by [`parse`], in order:
//! 1. one byte scan that enforces the nesting limit (`max_depth`) before serde_json sees
//!    the input, so hostile nesting can neither overflow a stack nor cost a parse;
//! 2. UTF-8 validation of the whole body (JSON text must be UTF-8, RFC 8259 §8.1);
//! 3. one serde_json pass over the envelope, with every member borrowed as a `RawValue`
//!    (which also rejects syntax errors and trailing garbage);
//! 4. strict checks of the envelope members.
//!
//! Duplicate envelope members (`"method"` twice, say) are rejected: the gateway and the
//! peer could otherwise disagree about which one counts.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};
use serde_json::value::RawValue;

/// Nesting limit the gateway uses unless configured otherwise.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// JSON-RPC id: number or string (null only appears in error responses to unparseable
/// requests).
///
/// Equality follows the JSON value: two ids are equal iff they are both strings with the
/// same content, both `null`, or both numbers with the same mathematical value. A string
/// id never equals a number id, even when `"1"` and `1` look alike.
///
/// Numbers: MCP requires ids to be strings or integers, and the gateway (like rmcp's
/// `NumberOrString`) holds integers as `i64`. A number is accepted in any JSON notation
/// whose value is an integer within `i64` (`1`, `1.0`, `10e-1`, `-0` all give the same
/// `Num`), computed exactly from the text, never through `f64`. Any other number (a
/// fraction such as `1.5`, or an integer beyond `i64` such as `18446744073709551615`) is
/// rejected by [`parse`] as `NotJsonRpc`: keeping its text as `Str` would make it equal
/// to the string id with the same text, and a fourth variant would break exhaustive
/// matches on `Id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// A number whose value is an integer within `i64`.
    Num(i64),
    /// A string, unescaped.
    Str(String),
    /// `null` (only in error responses).
    Null,
}

impl fmt::Display for Id {
    /// For logs and audit: a number as digits, a string as the string (unquoted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Num(n) => write!(f, "{n}"),
            Id::Str(s) => f.write_str(s),
            Id::Null => f.write_str("null"),
        }
    }
}

impl Serialize for Id {
    /// Serialises as the JSON value (for building a response that echoes the id).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::Num(n) => serializer.serialize_i64(*n),
            Id::Str(s) => serializer.serialize_str(s),
            Id::Null => serializer.serialize_unit(),
        }
    }
}

impl Id {
    /// The id as JSON text, e.g. `42`, `"abc"` (escaped), `null`.
    pub fn to_json(&self) -> String {
        match self {
            Id::Num(n) => n.to_string(),
            Id::Str(s) => serde_json::Value::String(s.clone()).to_string(),
            Id::Null => "null".to_owned(),
        }
    }
}

impl From<i64> for Id {
    fn from(n: i64) -> Self {
        Id::Num(n)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::Str(s.to_owned())
    }
}

impl From<String> for Id {
    fn from(s: String) -> Self {
        Id::Str(s)
    }
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `result`.
    Response,
    /// Has `error`.
    Error,
}

/// One message, borrowing from the input buffer.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub kind: Kind,
    /// Some for Request/Response/Error (Error may have `Id::Null`).
    pub id: Option<Id>,
    /// Request/Notification.
    pub method: Option<Cow<'a, str>>,
    /// Request/Notification; `"params": null` is treated as absent. Always an object or
    /// an array when present.
    pub params: Option<&'a RawValue>,
    /// Response (may be the JSON `null`).
    pub result: Option<&'a RawValue>,
    /// Error.
    pub error_code: Option<i64>,
    /// Error.
    pub error_message: Option<Cow<'a, str>>,
    /// What [`Message::params_info`] found, read on first use: a call's checks, routing,
    /// record and span each ask, and `params` is read once instead of once for each. Only
    /// [`parse`] sets `method` and `params`, and the gateway changes a message as bytes
    /// (redaction, narrowing), never through these fields, so this never describes other
    /// params than the message's.
    info: OnceLock<Result<ParamsInfo<'a>, JsonRpcError>>,
    /// `params.arguments` as a JSON value, read on first use: the policy's argument
    /// checks and the exfiltration guard both read it, once.
    args: OnceLock<Option<serde_json::Value>>,
}

/// Everything the gateway reads from `params`, found in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamsInfo<'a> {
    /// See [`Message::target_name`].
    pub target_name: Option<Cow<'a, str>>,
    /// See [`Message::progress_token`].
    pub progress_token: Option<Id>,
    /// See [`Message::meta_protocol_version`].
    pub protocol_version: Option<Cow<'a, str>>,
    /// The raw text of `params.arguments`, where the message holds it.
    pub arguments: Option<&'a str>,
    /// The raw text of `params.inputResponses` (a retry's answers, 2026-07-28).
    pub input_responses: Option<&'a str>,
}

/// Key of the protocol version in `params._meta` (2026-07-28 revision).
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// Which member of `params` names the target of `method`, if any.
fn target_member(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        _ => None,
    }
}

impl<'a> Message<'a> {
    /// `params.name` for tools/call and prompts/get; `params.uri` for resources/read,
    /// resources/subscribe, resources/unsubscribe; None otherwise. (This is what the
    /// `Mcp-Name` HTTP header must equal in the 2026-07-28 MCP revision.)
    ///
    /// Lenient: also None when `params` is malformed. A policy that must fail closed
    /// uses [`Message::params_info`], which reports why.
    pub fn target_name(&self) -> Option<Cow<'a, str>> {
        target_member(self.method.as_deref()?)?;
        self.info().as_ref().ok()?.target_name.clone()
    }

    /// `params._meta.progressToken` (string or number) if present.
    ///
    /// Lenient: None also when `params` is malformed; see [`Message::params_info`].
    pub fn progress_token(&self) -> Option<Id> {
        self.info().as_ref().ok()?.progress_token.clone()
    }

    /// `params._meta["io.modelcontextprotocol/protocolVersion"]` (2026-07-28 revision
    /// carries the protocol version there) if present.
    ///
    /// Lenient: None also when `params` is malformed; see [`Message::params_info`].
    pub fn meta_protocol_version(&self) -> Option<Cow<'a, str>> {
        self.info().as_ref().ok()?.protocol_version.clone()
    }

    /// Strict, single-pass extraction of the target name, progress token and protocol
    /// version. Only `name`, `uri` and `_meta` are looked at; `arguments` and
    /// `inputResponses` are located; everything else in `params` is skipped. Nothing is
    /// decoded but what is looked at.
    ///
    /// Errors (all [`JsonRpcError::NotJsonRpc`]): for tools/call and prompts/get a
    /// missing or non-string `params.name`, for resources/read|subscribe|unsubscribe a
    /// missing or non-string `params.uri` (and for those methods params that are not an
    /// object); `_meta` that is not an object; a `progressToken` that is not a string or
    /// number; a protocol version that is not a string; a duplicated `name`, `uri` or
    /// `_meta`, `arguments` or `inputResponses` member (the gateway would check one copy
    /// and a server might use the other), or a duplicated key inside `_meta` that the
    /// gateway reads.
    /// Responses and errors have no params and give an empty `ParamsInfo`.
    pub fn params_info(&self) -> Result<ParamsInfo<'a>, JsonRpcError> {
        self.info().clone()
    }

    /// Why `params_info` fails, when it does.
    pub fn params_error(&self) -> Option<JsonRpcError> {
        self.info().as_ref().err().cloned()
    }

    /// `params.arguments` as a JSON value reads it; None when absent or when `params` is
    /// malformed (which `params_error` reports).
    pub fn arguments(&self) -> Option<&serde_json::Value> {
        self.args
            .get_or_init(|| {
                let raw = self.info().as_ref().ok()?.arguments?;
                serde_json::from_str(raw).ok()
            })
            .as_ref()
    }

    /// What `params_info` returns, without copying it; None when `params` is malformed.
    pub fn info_if_read(&self) -> Option<&ParamsInfo<'a>> {
        self.info().as_ref().ok()
    }

    /// What `params_info` returns, without copying it (the accessors take one field).
    fn info(&self) -> &Result<ParamsInfo<'a>, JsonRpcError> {
        self.info.get_or_init(|| self.read_params_info())
    }

    fn read_params_info(&self) -> Result<ParamsInfo<'a>, JsonRpcError> {
        let method = self.method.as_deref().unwrap_or("");
        let target = target_member(method);
        let missing =
            |what: &str| JsonRpcError::NotJsonRpc(format!("{method}: params.{what} is missing"));
        let params = match self.params {
            Some(p) if p.get().starts_with('{') => p,
            Some(p) => {
                return match target {
                    Some(_) => Err(JsonRpcError::NotJsonRpc(format!(
                        "{method}: params must be an object, found {}",
                        json_type(p)
                    ))),
                    None => Ok(ParamsInfo::default()),
                };
            }
            None => {
                return match target {
                    Some(what) => Err(missing(what)),
                    None => Ok(ParamsInfo::default()),
                };
            }
        };
        // `params` starts with '{', so serde cannot read it positionally as a sequence.
        let view: ParamsView<'a> = serde_json::from_str(params.get())
            .map_err(|e| JsonRpcError::NotJsonRpc(format!("params: {e}")))?;
        let mut info = ParamsInfo {
            arguments: view.arguments.map(RawValue::get),
            input_responses: view.input_responses.map(RawValue::get),
            ..ParamsInfo::default()
        };
        if let Some(what) = target {
            let raw = if what == "name" { view.name } else { view.uri };
            let raw = raw.ok_or_else(|| missing(what))?;
            info.target_name = Some(raw_str(raw, &format_args!("params.{what}"))?);
        }
        let meta = match view.meta {
            Some(m) if m.get().starts_with('{') => m,
            Some(m) if m.get() == "null" => return Ok(info),
            Some(m) => {
                return Err(JsonRpcError::NotJsonRpc(format!(
                    "params._meta must be an object, found {}",
                    json_type(m)
                )))
            }
            None => return Ok(info),
        };
        let meta: MetaView<'a> = serde_json::from_str(meta.get())
            .map_err(|e| JsonRpcError::NotJsonRpc(format!("params._meta: {e}")))?;
        if let Some(raw) = meta.progress_token {
            info.progress_token = Some(id_from_raw(raw, false, "params._meta.progressToken")?);
        }
        if let Some(raw) = meta.protocol_version {
            info.protocol_version = Some(raw_str(
                raw,
                &format_args!("params._meta[\"{META_PROTOCOL_VERSION}\"]"),
            )?);
        }
        Ok(info)
    }
}

/// A single message or a batch. Lives on the stack of one exchange, once: boxing the single
/// message would cost every call an allocation to save a few hundred bytes of stack.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Parsed<'a> {
    Single(Message<'a>),
    Batch(Vec<Message<'a>>),
}

impl<'a> Parsed<'a> {
    /// The message(s) in order: one for `Single`, all of a batch.
    pub fn messages(&self) -> &[Message<'a>] {
        match self {
            Parsed::Single(m) => std::slice::from_ref(m),
            Parsed::Batch(v) => v,
        }
    }

    /// Whether the body was a batch (even of one message).
    pub fn is_batch(&self) -> bool {
        matches!(self, Parsed::Batch(_))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum JsonRpcError {
    /// Not UTF-8, or not well-formed JSON (with serde_json's line and column).
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// Well-formed JSON but not a valid JSON-RPC 2.0 message; says what is wrong.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(String),
    /// Nesting deeper than the configured limit.
    #[error("JSON nesting deeper than {0}")]
    TooDeep(usize),
    /// JSON that other parsers read (Python's as `inf` or a lone surrogate) but whose
    /// values the gateway cannot hold: a number beyond a double, a lone UTF-16 surrogate.
    /// Forwarding it would let a value pass the policy and redaction stages unread.
    #[error("body holds JSON the gateway cannot check ({0}); numbers beyond the range of a double and lone UTF-16 surrogates are refused")]
    Unreadable(String),
}

/// Parses a JSON-RPC message or batch.
///
/// Validates the envelope strictly: `"jsonrpc": "2.0"`; a request or notification has
/// a string `method`, and `params`, when present, is an object or array (`null` is
/// taken as absent); a response has exactly one of `result`/`error` and no `method`; an
/// error has an integer `code` (within `i64`) and a string `message`; a request or
/// response id is a string or number, and an error's id may also be `null`; a batch is
/// a non-empty array of such messages (one bad element rejects the whole batch, the
/// error naming its index). Unknown members are ignored everywhere.
///
/// Nesting is counted in the raw bytes before serde_json runs: the top-level object
/// (or batch array) is depth 1, so a batch of messages needs `max_depth >= 2` and a
/// `params` object inside a message is depth 2. Deeper input gives
/// [`JsonRpcError::TooDeep`].
///
/// Allocation: none per member of `params`/`result` (kept as [`RawValue`]); only
/// strings containing escapes (`Cow::Owned`), string ids and the batch vector allocate.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Parsed<'_>, JsonRpcError> {
    let (parsed, twice) = parse_noting(body, max_depth)?;
    match twice {
        Some(e) => Err(e),
        None => Ok(parsed),
    }
}

/// As [`parse`], for what an agent sends: a key given twice in one object makes every
/// message of the body unreadable (`params_error` says why), so each is refused with its
/// own id, as a client library expects, instead of the body as a whole.
pub fn parse_agent(body: &[u8], max_depth: usize) -> Result<Parsed<'_>, JsonRpcError> {
    let (parsed, twice) = parse_noting(body, max_depth)?;
    if let Some(e) = twice {
        for m in parsed.messages() {
            let _ = m.info.set(Err(e.clone()));
        }
    }
    Ok(parsed)
}

fn parse_noting(
    body: &[u8],
    max_depth: usize,
) -> Result<(Parsed<'_>, Option<JsonRpcError>), JsonRpcError> {
    let seen = super::json_scan::scan(body, max_depth)?;
    let first = seen.first;
    let text = std::str::from_utf8(body).map_err(|e| {
        JsonRpcError::NotJson(format!("invalid UTF-8 at byte offset {}", e.valid_up_to()))
    })?;
    let parsed = parse_envelopes(text, first)?;
    // Every later stage reads params, arguments and results as serde_json Values: a message
    // they cannot read must not pass unread. Checked after the envelopes, so a message that
    // is wrong anyway keeps its more precise error.
    if seen.suspect {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
            return Err(JsonRpcError::Unreadable(e.to_string()));
        }
    }
    Ok((parsed, seen.twice))
}

fn parse_envelopes(text: &str, first: Option<u8>) -> Result<Parsed<'_>, JsonRpcError> {
    match first {
        Some(b'{') => {
            let env: Envelope<'_> = serde_json::from_str(text).map_err(serde_error)?;
            Ok(Parsed::Single(
                message(env).map_err(JsonRpcError::NotJsonRpc)?,
            ))
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(serde_error)?;
            if items.is_empty() {
                return Err(JsonRpcError::NotJsonRpc("empty batch".to_owned()));
            }
            let mut messages = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let at =
                    |msg: String| JsonRpcError::NotJsonRpc(format!("batch element {i}: {msg}"));
                if !item.get().starts_with('{') {
                    return Err(at(format!("expected an object, found {}", json_type(item))));
                }
                let env: Envelope<'_> =
                    serde_json::from_str(item.get()).map_err(|e| at(e.to_string()))?;
                messages.push(message(env).map_err(at)?);
            }
            Ok(Parsed::Batch(messages))
        }
        _ => {
            // Say "not JSON" when it is not, and "not JSON-RPC" for a bare scalar.
            let raw: &RawValue = serde_json::from_str(text).map_err(serde_error)?;
            Err(JsonRpcError::NotJsonRpc(format!(
                "expected an object or a batch array, found {}",
                json_type(raw)
            )))
        }
    }
}

/// Syntax errors are "not JSON"; data errors (a duplicated member) are "not JSON-RPC".
fn serde_error(e: serde_json::Error) -> JsonRpcError {
    match e.classify() {
        serde_json::error::Category::Data => JsonRpcError::NotJsonRpc(e.to_string()),
        _ => JsonRpcError::NotJson(e.to_string()),
    }
}

/// Deserialises a present member as `Some(raw)`, even when it is JSON `null` (a plain
/// `Option` would turn `null` into `None`, losing e.g. `"id": null`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct ErrorObject<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    code: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    message: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct ParamsView<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    name: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    uri: Option<&'a RawValue>,
    #[serde(rename = "_meta", default, borrow, deserialize_with = "present")]
    meta: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    arguments: Option<&'a RawValue>,
    #[serde(
        rename = "inputResponses",
        default,
        borrow,
        deserialize_with = "present"
    )]
    input_responses: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct MetaView<'a> {
    #[serde(
        rename = "progressToken",
        default,
        borrow,
        deserialize_with = "present"
    )]
    progress_token: Option<&'a RawValue>,
    #[serde(
        rename = "io.modelcontextprotocol/protocolVersion",
        default,
        borrow,
        deserialize_with = "present"
    )]
    protocol_version: Option<&'a RawValue>,
}

/// Builds and validates a message from its envelope; the error names the problem.
fn message(env: Envelope<'_>) -> Result<Message<'_>, String> {
    let version = env
        .jsonrpc
        .ok_or_else(|| "missing \"jsonrpc\": \"2.0\"".to_owned())?;
    let version = raw_str(version, "\"jsonrpc\"").map_err(strip)?;
    if version != "2.0" {
        return Err(format!(
            "\"jsonrpc\" must be \"2.0\", found {:?}",
            truncate(&version)
        ));
    }
    let mut msg = Message {
        kind: Kind::Request,
        id: None,
        method: None,
        params: None,
        result: None,
        error_code: None,
        error_message: None,
        info: OnceLock::new(),
        args: OnceLock::new(),
    };
    if let Some(method) = env.method {
        if env.result.is_some() || env.error.is_some() {
            return Err("message has both \"method\" and \"result\"/\"error\"".to_owned());
        }
        msg.method = Some(raw_str(method, "\"method\"").map_err(strip)?);
        msg.params = match env.params {
            None => None,
            Some(p) if p.get() == "null" => None,
            Some(p) if matches!(json_type(p), "object" | "array") => Some(p),
            Some(p) => {
                return Err(format!(
                    "\"params\" must be an object or array, found {}",
                    json_type(p)
                ))
            }
        };
        match env.id {
            None => msg.kind = Kind::Notification,
            Some(id) => {
                msg.kind = Kind::Request;
                msg.id = Some(id_from_raw(id, false, "request \"id\"").map_err(strip)?);
            }
        }
        return Ok(msg);
    }
    match (env.result, env.error) {
        (Some(_), Some(_)) => Err("response has both \"result\" and \"error\"".to_owned()),
        (None, None) => Err("message has none of \"method\", \"result\", \"error\"".to_owned()),
        (Some(result), None) => {
            let id = env
                .id
                .ok_or_else(|| "response is missing \"id\"".to_owned())?;
            msg.kind = Kind::Response;
            msg.id = Some(id_from_raw(id, false, "response \"id\"").map_err(strip)?);
            msg.result = Some(result);
            Ok(msg)
        }
        (None, Some(error)) => {
            let id = env
                .id
                .ok_or_else(|| "error response is missing \"id\"".to_owned())?;
            msg.kind = Kind::Error;
            msg.id = Some(id_from_raw(id, true, "error response \"id\"").map_err(strip)?);
            if !error.get().starts_with('{') {
                return Err(format!(
                    "\"error\" must be an object, found {}",
                    json_type(error)
                ));
            }
            let obj: ErrorObject<'_> =
                serde_json::from_str(error.get()).map_err(|e| format!("\"error\": {e}"))?;
            let code = obj
                .code
                .ok_or_else(|| "\"error\" is missing \"code\"".to_owned())?;
            if json_type(code) != "number" {
                return Err(format!(
                    "\"error.code\" must be an integer, found {}",
                    json_type(code)
                ));
            }
            let code = serde_json::from_str::<i64>(code.get()).map_err(|_| {
                format!(
                    "\"error.code\" must be an integer within i64, found {}",
                    truncate(code.get())
                )
            })?;
            let message = obj
                .message
                .ok_or_else(|| "\"error\" is missing \"message\"".to_owned())?;
            msg.error_code = Some(code);
            msg.error_message = Some(raw_str(message, "\"error.message\"").map_err(strip)?);
            Ok(msg)
        }
    }
}

/// Unwraps the text of a `NotJsonRpc` built by the helpers below.
fn strip(e: JsonRpcError) -> String {
    match e {
        JsonRpcError::NotJsonRpc(s) | JsonRpcError::NotJson(s) => s,
        JsonRpcError::TooDeep(n) => format!("nesting deeper than {n}"),
        JsonRpcError::Unreadable(s) => s,
    }
}

/// The JSON type of a raw value (serde_json strips leading whitespace from raw values).
fn json_type(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// A raw JSON string as text: borrowed when it has no escapes, owned otherwise. `what`
/// names it in an error, and is formatted only then.
fn raw_str<'a>(
    raw: &'a RawValue,
    what: &(impl std::fmt::Display + ?Sized),
) -> Result<Cow<'a, str>, JsonRpcError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(JsonRpcError::NotJsonRpc(format!(
            "{what} must be a string, found {}",
            json_type(raw)
        )));
    }
    if !text.contains('\\') {
        // serde_json validated the string and it has no escapes: its content is exactly
        // the text between the quotes.
        return Ok(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|e| JsonRpcError::NotJsonRpc(format!("{what} is not a valid string: {e}")))
}

/// An id (or progress token) from its raw value. `null` is accepted only if `allow_null`.
fn id_from_raw(
    raw: &RawValue,
    allow_null: bool,
    what: &(impl std::fmt::Display + ?Sized),
) -> Result<Id, JsonRpcError> {
    match json_type(raw) {
        "string" => Ok(Id::Str(raw_str(raw, what)?.into_owned())),
        "number" => integer_value(raw.get()).map(Id::Num).ok_or_else(|| {
            JsonRpcError::NotJsonRpc(format!(
                "{what} must be a string or an integer within i64, found {}",
                truncate(raw.get())
            ))
        }),
        "null" if allow_null => Ok(Id::Null),
        other => Err(JsonRpcError::NotJsonRpc(format!(
            "{what} must be a string or number, found {other}"
        ))),
    }
}

/// The exact value of a JSON number text (already validated by serde_json) if it is an
/// integer within `i64`, whatever the notation (`-0`, `1.0`, `250e-1`, `2.5E1`).
pub fn integer_value(text: &str) -> Option<i64> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], &unsigned[i + 1..]),
        None => (unsigned, "0"),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = int.chars().chain(frac.chars()).collect();
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return Some(0); // zero, whatever its exponent
    }
    // value = (-1)^negative * significant * 10^exponent
    let exponent = exponent.parse::<i64>().ok()?;
    let exponent = exponent
        .checked_sub(i64::try_from(frac.len()).ok()?)?
        .checked_add(i64::try_from(digits.len() - significant.len()).ok()?)?;
    // A fraction, or at least 20 digits (i64 has 19): not an i64.
    if !(0..=19).contains(&exponent) || significant.len() > 19 {
        return None;
    }
    let zeros = "0".repeat(usize::try_from(exponent).ok()?);
    let sign = if negative { "-" } else { "" };
    format!("{sign}{significant}{zeros}").parse::<i64>().ok()
}

/// At most 40 characters of `s`, for error messages.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::json_scan::scan;
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const D: usize = DEFAULT_MAX_DEPTH;

    fn parse_str(s: &str) -> Result<Parsed<'_>, JsonRpcError> {
        parse(s.as_bytes(), D)
    }

    fn single(s: &str) -> Message<'_> {
        match parse_str(s) {
            Ok(Parsed::Single(m)) => m,
            other => panic!("{s}: expected a single message, got {other:?}"),
        }
    }

    fn batch(s: &str) -> Vec<Message<'_>> {
        match parse_str(s) {
            Ok(Parsed::Batch(v)) => v,
            other => panic!("{s}: expected a batch, got {other:?}"),
        }
    }

    fn not_rpc(s: &str) -> String {
        match parse_str(s) {
            Err(JsonRpcError::NotJsonRpc(m)) => m,
            other => panic!("{s}: expected NotJsonRpc, got {other:?}"),
        }
    }

    fn not_json(body: &[u8]) -> String {
        match parse(body, D) {
            Err(JsonRpcError::NotJson(m)) => m,
            other => panic!("{body:?}: expected NotJson, got {other:?}"),
        }
    }

    fn response_id(id_text: &str) -> Id {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id_text},"result":{{}}}}"#);
        match parse(body.as_bytes(), D) {
            Ok(Parsed::Single(m)) => m.id.expect("response has an id"),
            other => panic!("{body}: {other:?}"),
        }
    }

    macro_rules! is_borrowed {
        ($c:expr) => {
            matches!($c, Cow::Borrowed(_))
        };
    }

    // ---- kinds --------------------------------------------------------------------

    #[test]
    fn request() {
        let m =
            single(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"cursor":"c1"}}"#);
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.id, Some(Id::Num(7)));
        assert_eq!(m.method.as_deref(), Some("tools/list"));
        assert!(is_borrowed!(m.method.as_ref().unwrap()));
        assert_eq!(m.params.map(RawValue::get), Some(r#"{"cursor":"c1"}"#));
        assert!(m.result.is_none() && m.error_code.is_none() && m.error_message.is_none());
    }

    #[test]
    fn request_params_absent_null_or_array() {
        let m = single(r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#);
        assert_eq!((m.kind, m.params.is_none()), (Kind::Request, true));
        let m = single(r#"{"jsonrpc":"2.0","id":"a","method":"ping","params":null}"#);
        assert!(m.params.is_none());
        let m = single(r#"{"jsonrpc":"2.0","id":"a","method":"sum","params":[1,2,3]}"#);
        assert_eq!(m.params.map(RawValue::get), Some("[1,2,3]"));
        assert_eq!(m.params_info().unwrap(), ParamsInfo::default());
    }

    #[test]
    fn notification() {
        let m = single(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(m.kind, Kind::Notification);
        assert_eq!(m.id, None);
        assert_eq!(m.method.as_deref(), Some("notifications/initialized"));
    }

    #[test]
    fn response() {
        let m = single(r#"{"jsonrpc":"2.0","id":"r-1","result":{"tools":[]}}"#);
        assert_eq!(m.kind, Kind::Response);
        assert_eq!(m.id, Some(Id::Str("r-1".into())));
        assert_eq!(m.result.map(RawValue::get), Some(r#"{"tools":[]}"#));
        assert!(m.method.is_none() && m.params.is_none());
        // A null result is still a result.
        let m = single(r#"{"jsonrpc":"2.0","id":1,"result":null}"#);
        assert_eq!(
            (m.kind, m.result.map(RawValue::get)),
            (Kind::Response, Some("null"))
        );
    }

    #[test]
    fn error_response() {
        let m = single(
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"Method not found","data":{"method":"x"}}}"#,
        );
        assert_eq!(m.kind, Kind::Error);
        assert_eq!(m.id, Some(Id::Num(3)));
        assert_eq!(m.error_code, Some(-32601));
        assert_eq!(m.error_message.as_deref(), Some("Method not found"));
        assert!(is_borrowed!(m.error_message.as_ref().unwrap()));
        assert!(m.result.is_none());
    }

    #[test]
    fn error_response_with_null_id() {
        let m = single(
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#,
        );
        assert_eq!(m.kind, Kind::Error);
        assert_eq!(m.id, Some(Id::Null));
        assert_eq!(m.error_code, Some(-32700));
    }

    #[test]
    fn batch_of_mixed() {
        let v = batch(
            r#"[
              {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},
              {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":5}},
              {"jsonrpc":"2.0","id":"x","result":{}},
              {"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request"}}
            ]"#,
        );
        let kinds: Vec<Kind> = v.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Request,
                Kind::Notification,
                Kind::Response,
                Kind::Error
            ]
        );
        let ids: Vec<Option<Id>> = v.iter().map(|m| m.id.clone()).collect();
        assert_eq!(
            ids,
            [
                Some(Id::Num(1)),
                None,
                Some(Id::Str("x".into())),
                Some(Id::Null)
            ]
        );
        assert_eq!(v[0].target_name().as_deref(), Some("a"));
    }

    #[test]
    fn parsed_messages_view() {
        let p = parse_str(r#"{"jsonrpc":"2.0","method":"a"}"#).unwrap();
        assert!(!p.is_batch());
        assert_eq!(p.messages().len(), 1);
        assert_eq!(p.messages()[0].method.as_deref(), Some("a"));
        let p = parse_str(r#"[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b"}]"#)
            .unwrap();
        assert!(p.is_batch());
        let methods: Vec<_> = p.messages().iter().map(|m| m.method.as_deref()).collect();
        assert_eq!(methods, [Some("a"), Some("b")]);
        let p = parse_str(r#"[{"jsonrpc":"2.0","method":"a"}]"#).unwrap();
        assert!(p.is_batch());
    }

    #[test]
    fn empty_batch_rejected() {
        assert_eq!(not_rpc("[]"), "empty batch");
        assert_eq!(not_rpc(" [ \n ] "), "empty batch");
    }

    #[test]
    fn bad_batch_element_names_its_index() {
        let m = not_rpc(r#"[{"jsonrpc":"2.0","method":"a"},1]"#);
        assert_eq!(m, "batch element 1: expected an object, found number");
        let m = not_rpc(
            r#"[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b"},{"jsonrpc":"2.0"}]"#,
        );
        assert!(m.starts_with("batch element 2: message has none of"), "{m}");
        let m = not_rpc(r#"[{"method":"a","id":1}]"#);
        assert!(m.starts_with("batch element 0: missing \"jsonrpc\""), "{m}");
        // A nested batch is not a message.
        let m = not_rpc(r#"[[{"jsonrpc":"2.0","method":"a"}]]"#);
        assert_eq!(m, "batch element 0: expected an object, found array");
    }

    // ---- invalid envelopes --------------------------------------------------------

    #[test]
    fn invalid_envelopes_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            (r#"{"id":1,"method":"x"}"#, "missing \"jsonrpc\": \"2.0\""),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
                "\"jsonrpc\" must be \"2.0\", found \"1.0\"",
            ),
            (
                r#"{"jsonrpc":"2.00","id":1,"method":"x"}"#,
                "\"jsonrpc\" must be \"2.0\", found \"2.00\"",
            ),
            (
                r#"{"jsonrpc":2.0,"id":1,"method":"x"}"#,
                "\"jsonrpc\" must be a string, found number",
            ),
            (
                r#"{"jsonrpc":null,"id":1,"method":"x"}"#,
                "\"jsonrpc\" must be a string, found null",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}"#,
                "response has both \"result\" and \"error\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":null}"#,
                "response has both \"result\" and \"error\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#,
                "message has both \"method\" and \"result\"/\"error\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","error":{"code":1,"message":"m"}}"#,
                "message has both \"method\" and \"result\"/\"error\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1}"#,
                "message has none of \"method\", \"result\", \"error\"",
            ),
            (
                r#"{"jsonrpc":"2.0"}"#,
                "message has none of \"method\", \"result\", \"error\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":42}"#,
                "\"method\" must be a string, found number",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
                "\"method\" must be a string, found null",
            ),
            (
                r#"{"jsonrpc":"2.0","method":["a"]}"#,
                "\"method\" must be a string, found array",
            ),
            (
                r#"{"jsonrpc":"2.0","id":true,"method":"x"}"#,
                "request \"id\" must be a string or number, found boolean",
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                "request \"id\" must be a string or number, found object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":[1],"method":"x"}"#,
                "request \"id\" must be a string or number, found array",
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
                "request \"id\" must be a string or number, found null",
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
                "response \"id\" must be a string or number, found null",
            ),
            (
                r#"{"jsonrpc":"2.0","id":false,"result":{}}"#,
                "response \"id\" must be a string or number, found boolean",
            ),
            (
                r#"{"jsonrpc":"2.0","result":{}}"#,
                "response is missing \"id\"",
            ),
            (
                r#"{"jsonrpc":"2.0","error":{"code":1,"message":"m"}}"#,
                "error response is missing \"id\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":{"a":1},"error":{"code":1,"message":"m"}}"#,
                "error response \"id\" must be a string or number, found object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#,
                "\"error\" must be an object, found string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":null}"#,
                "\"error\" must be an object, found null",
            ),
            // An array must not be read positionally as {code, message}.
            (
                r#"{"jsonrpc":"2.0","id":1,"error":[-32600,"m"]}"#,
                "\"error\" must be an object, found array",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"message":"m"}}"#,
                "\"error\" is missing \"code\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":1}}"#,
                "\"error\" is missing \"message\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":"1","message":"m"}}"#,
                "\"error.code\" must be an integer, found string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"m"}}"#,
                "\"error.code\" must be an integer within i64, found 1.5",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":99999999999999999999,"message":"m"}}"#,
                "\"error.code\" must be an integer within i64, found 99999999999999999999",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":7}}"#,
                "\"error.message\" must be a string, found number",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"p"}"#,
                "\"params\" must be an object or array, found string",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"x","params":5}"#,
                "\"params\" must be an object or array, found number",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"x","params":true}"#,
                "\"params\" must be an object or array, found boolean",
            ),
            ("42", "expected an object or a batch array, found number"),
            (
                "\"hello\"",
                "expected an object or a batch array, found string",
            ),
            (" null ", "expected an object or a batch array, found null"),
            ("true", "expected an object or a batch array, found boolean"),
        ];
        for (input, want) in cases {
            assert_eq!(&not_rpc(input), want, "input: {input}");
        }
    }

    #[test]
    fn duplicate_envelope_members_rejected() {
        for (input, field) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#,
                "method",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}"#, "id"),
            (
                r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"result":{}}"#,
                "jsonrpc",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"code":2,"message":"m"}}"#,
                "code",
            ),
        ] {
            let m = not_rpc(input);
            assert!(
                m.contains(&format!("duplicate field `{field}`")),
                "{input}: {m}"
            );
        }
    }

    #[test]
    fn escaped_member_names_are_matched() {
        // The peer's JSON parser unescapes keys, so the gateway must too.
        let m = single(r#"{"jsonrpc":"2.0","id":1,"met\u0068od":"tools/list"}"#);
        assert_eq!(
            (m.kind, m.method.as_deref()),
            (Kind::Request, Some("tools/list"))
        );
    }

    // ---- ids ----------------------------------------------------------------------

    fn id_error(id_text: &str) -> String {
        not_rpc(&format!(
            r#"{{"jsonrpc":"2.0","id":{id_text},"result":{{}}}}"#
        ))
    }

    #[test]
    fn ids_int_string_large_negative() {
        assert_eq!(response_id("0"), Id::Num(0));
        assert_eq!(response_id("-0"), Id::Num(0));
        assert_eq!(response_id("-5"), Id::Num(-5));
        assert_eq!(response_id("9223372036854775807"), Id::Num(i64::MAX));
        assert_eq!(response_id("-9223372036854775808"), Id::Num(i64::MIN));
        assert_eq!(response_id(r#""abc""#), Id::Str("abc".into()));
        assert_eq!(response_id(r#""""#), Id::Str(String::new()));
        assert_eq!(response_id(r#""a\"b""#), Id::Str("a\"b".into()));
        assert_eq!(
            response_id(r#""18446744073709551615""#),
            Id::Str("18446744073709551615".into())
        );
        assert_ne!(response_id(r#""1""#), response_id("1"));
    }

    #[test]
    fn ids_beyond_i64_or_fractional_rejected() {
        for t in [
            "9223372036854775808",
            "18446744073709551615",
            "-9223372036854775809",
            "100000000000000000000000000000",
            "1.5",
            "-0.0125",
            "1e19",
            "1e100",
            "12e-100",
            "1e99999999999999999999",
            "1.00000000000000000000001",
        ] {
            assert_eq!(
                id_error(t),
                format!("response \"id\" must be a string or an integer within i64, found {t}"),
            );
        }
        let m = not_rpc(r#"{"jsonrpc":"2.0","id":0.5,"method":"x"}"#);
        assert_eq!(
            m,
            "request \"id\" must be a string or an integer within i64, found 0.5"
        );
        let m = not_rpc(r#"{"jsonrpc":"2.0","id":2.5,"error":{"code":1,"message":"m"}}"#);
        assert_eq!(
            m,
            "error response \"id\" must be a string or an integer within i64, found 2.5"
        );
    }

    #[test]
    fn integer_ids_in_any_notation_are_equal() {
        assert_eq!(response_id("1.0"), Id::Num(1));
        assert_eq!(response_id("1e0"), Id::Num(1));
        assert_eq!(response_id("10E-1"), Id::Num(1));
        assert_eq!(response_id("-2.50e1"), Id::Num(-25));
        assert_eq!(response_id("0.000e5"), Id::Num(0));
        assert_eq!(response_id("-0.0"), Id::Num(0));
        assert_eq!(response_id("0e99999999999999999999"), Id::Num(0));
        assert_eq!(response_id("0.000000000000000000000001e24"), Id::Num(1));
        assert_eq!(response_id("1e18"), Id::Num(1_000_000_000_000_000_000));
        assert_eq!(response_id("9.223372036854775807e18"), Id::Num(i64::MAX));
        assert_eq!(response_id("-92233720368547758080e-1"), Id::Num(i64::MIN));
        // Exact, not via f64 (where these two would be equal).
        assert_eq!(
            response_id("9007199254740993.0"),
            Id::Num(9_007_199_254_740_993)
        );
        assert_ne!(
            response_id("9007199254740993.0"),
            response_id("9007199254740992")
        );
    }

    #[test]
    fn id_display_and_json() {
        assert_eq!(Id::Num(-3).to_string(), "-3");
        assert_eq!(Id::Str("req \"7\"".into()).to_string(), "req \"7\"");
        assert_eq!(Id::Null.to_string(), "null");
        assert_eq!(Id::Str("a\"b".into()).to_json(), r#""a\"b""#);
        assert_eq!(Id::Num(5).to_json(), "5");
        assert_eq!(Id::Null.to_json(), "null");
        let v = serde_json::to_string(&[Id::Num(1), Id::Str("x".into()), Id::Null]).unwrap();
        assert_eq!(v, r#"[1,"x",null]"#);
        for id in [Id::Num(i64::MIN), Id::Str("é\n\"".into())] {
            assert_eq!(response_id(&id.to_json()), id);
        }
    }

    // ---- strings ------------------------------------------------------------------

    #[test]
    fn escaped_strings_are_owned_plain_ones_borrowed() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"get_\u0077eather\n"}}"#;
        let m = single(body);
        let method = m.method.as_ref().unwrap();
        assert_eq!(method, "tools/call");
        assert!(!is_borrowed!(method));
        let name = m.target_name().unwrap();
        assert_eq!(name, "get_weather\n");
        assert!(!is_borrowed!(&name));

        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#,
        );
        assert!(is_borrowed!(m.method.as_ref().unwrap()));
        assert!(is_borrowed!(&m.target_name().unwrap()));

        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"bad \"thing\" \u00e9"}}"#,
        );
        assert_eq!(m.error_message.as_deref(), Some("bad \"thing\" é"));
        // Non-ASCII without escapes still borrows.
        let m = single(r#"{"jsonrpc":"2.0","method":"café/ünïcode"}"#);
        assert_eq!(m.method.as_deref(), Some("café/ünïcode"));
        assert!(is_borrowed!(m.method.as_ref().unwrap()));
    }

    #[test]
    fn lone_surrogate_in_method_rejected() {
        let m = not_rpc(r#"{"jsonrpc":"2.0","id":1,"method":"\udc00"}"#);
        assert!(m.starts_with("\"method\" is not a valid string"), "{m}");
    }

    /// The nesting count skips string contents however they are escaped: brackets and
    /// escaped quotes inside strings do not count, an escaped backslash ends its escape.
    #[test]
    fn brackets_and_escapes_inside_strings_are_not_nesting() {
        let deep = "[[[[[[[[".repeat(4);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"a":"\" {deep} \\","b":"\\\" {deep}"}}}}"#
        );
        assert_eq!(single(&body).kind, Kind::Request);
        assert!(scan(format!(r#"{{"a":"\\"}}{deep}"#).as_bytes(), 8).is_err());
        // The scan never reads past the end, escaped or not.
        for tail in [r#""\"#, r#""\u"#, r#""abc"#, r#"""#] {
            let body = format!(r#"{{"a":{tail}"#);
            assert!(scan(body.as_bytes(), 8).is_ok(), "{body}");
        }
        // A surrogate escape is noticed after an escaped backslash, and only when it is one.
        assert!(scan(br#"{"a":"\\\ud800"}"#, 8).unwrap().suspect);
        assert!(!scan(br#"{"a":"\\ud800"}"#, 8).unwrap().suspect);
        assert!(scan(br#"{"a":"x\uD834\uDD1E"}"#, 8).unwrap().suspect);
        assert!(!scan(br#"{"a":"x\u00e9"}"#, 8).unwrap().suspect);
        // After `\u` the next byte is skipped whatever it is: a quote there does not end
        // the string, a backslash there does not escape the quote after it.
        let body = format!(r#"{{"a":"\u"}}{deep}"#);
        assert!(scan(body.as_bytes(), 8).is_ok());
        let body = format!(r#"{{"a":"\u\"}}{deep}"#);
        assert!(matches!(
            scan(body.as_bytes(), 8),
            Err(JsonRpcError::TooDeep(8))
        ));
    }

    #[test]
    fn escaped_jsonrpc_version_accepted() {
        let m = single(r#"{"jsonrpc":"2\u002e0","method":"x"}"#);
        assert_eq!(m.kind, Kind::Notification);
    }

    // ---- unknown fields and methods -----------------------------------------------

    #[test]
    fn unknown_fields_everywhere_ignored() {
        let m = single(
            r#"{"x-trace":{"deep":[1,{"a":null}]},"jsonrpc":"2.0","Method":5,"id":9,
                "method":"tools/call","ID":[],
                "params":{"arguments":{"q":[1,2,{"name":3}]},"name":"search","other":true,
                          "_meta":{"progressToken":"t","vendor/x":{"y":1},
                                   "io.modelcontextprotocol/protocolVersion":"2026-07-28"}},
                "extra":"ignored"}"#,
        );
        assert_eq!((m.kind, m.id.clone()), (Kind::Request, Some(Id::Num(9))));
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.target_name().as_deref(), Some("search"));
        assert_eq!(m.progress_token(), Some(Id::Str("t".into())));
        assert_eq!(m.meta_protocol_version().as_deref(), Some("2026-07-28"));

        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":5,"message":"m","data":[1],"extra":{}},"x":1}"#,
        );
        assert_eq!((m.kind, m.error_code), (Kind::Error, Some(5)));
        let m =
            single(r#"{"jsonrpc":"2.0","id":1,"result":{"a":1},"params":"ignored on responses"}"#);
        assert_eq!((m.kind, m.params.is_none()), (Kind::Response, true));
    }

    #[test]
    fn unknown_methods_parse() {
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"vendor/frobnicate","params":{"name":1,"uri":[]}}"#,
        );
        assert_eq!(m.method.as_deref(), Some("vendor/frobnicate"));
        assert_eq!(m.target_name(), None);
        assert_eq!(m.params_info().unwrap(), ParamsInfo::default());
    }

    // ---- params extraction --------------------------------------------------------

    #[test]
    fn target_name_per_method() {
        let req = |method: &str, params: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#)
        };
        let cases = [
            (
                "tools/call",
                r#"{"name":"echo","arguments":{"uri":"no"}}"#,
                Some("echo"),
            ),
            (
                "prompts/get",
                r#"{"name":"summarise","arguments":{}}"#,
                Some("summarise"),
            ),
            (
                "resources/read",
                r#"{"uri":"file:///etc/hosts","name":"no"}"#,
                Some("file:///etc/hosts"),
            ),
            (
                "resources/subscribe",
                r#"{"uri":"db://t/1"}"#,
                Some("db://t/1"),
            ),
            (
                "resources/unsubscribe",
                r#"{"uri":"db://t/2"}"#,
                Some("db://t/2"),
            ),
            ("tools/list", r#"{"name":"x","uri":"y"}"#, None),
            ("initialize", r#"{"name":"x"}"#, None),
            (
                "completion/complete",
                r#"{"ref":{"type":"ref/prompt","name":"p"}}"#,
                None,
            ),
            ("resources/read", r#"{"name":"only a name"}"#, None),
            ("tools/call", r#"{"uri":"only a uri"}"#, None),
        ];
        for (method, params, want) in cases {
            let body = req(method, params);
            assert_eq!(single(&body).target_name().as_deref(), want, "{body}");
        }
        // Notifications have no target.
        let m = single(
            r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"x"}}"#,
        );
        assert_eq!(m.target_name(), None);
    }

    #[test]
    fn params_info_is_strict() {
        let err = |body: &str| match single(body).params_info() {
            Err(JsonRpcError::NotJsonRpc(m)) => m,
            other => panic!("{body}: {other:?}"),
        };
        let cases = [
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#, "tools/call: params.name is missing"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#, "tools/call: params.name is missing"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}"#, "resources/read: params.uri is missing"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}"#,
                "tools/call: params must be an object, found array",
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#, "params.name must be a string, found number"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":null}}"#, "params.name must be a string, found null"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":{}}}"#, "params.uri must be a string, found object"),
            (r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":[]}}"#, "params._meta must be an object, found array"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"progressToken":true}}}"#,
                "params._meta.progressToken must be a string or number, found boolean",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"progressToken":null}}}"#,
                "params._meta.progressToken must be a string or number, found null",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":20260728}}}"#,
                "params._meta[\"io.modelcontextprotocol/protocolVersion\"] must be a string, found number",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(err(body), want, "{body}");
        }
        // Duplicated keys would let the gateway and the server see different names: the
        // message is not read at all.
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"rm_rf"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"progressToken":1,"progressToken":2}}}"#,
        ] {
            let m = not_rpc(body);
            assert!(m.contains("appears twice in one object"), "{m}");
        }
    }

    #[test]
    fn params_info_of_responses_is_empty() {
        let m =
            single(r#"{"jsonrpc":"2.0","id":1,"result":{"name":"x","_meta":{"progressToken":1}}}"#);
        assert_eq!(m.params_info().unwrap(), ParamsInfo::default());
        assert_eq!(m.progress_token(), None);
    }

    #[test]
    fn progress_token_int_and_string() {
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"progressToken":42}}}"#,
        );
        assert_eq!(m.progress_token(), Some(Id::Num(42)));
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":"tok-\u00e9"}}}"#,
        );
        assert_eq!(m.progress_token(), Some(Id::Str("tok-é".into())));
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":2.50e1}}}"#,
        );
        assert_eq!(m.progress_token(), Some(Id::Num(25)));
        let m = single(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{}}}"#);
        assert_eq!(m.progress_token(), None);
        let m = single(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":null}}"#);
        assert_eq!(m.progress_token(), None);
        // Not in _meta: not a request's progress token.
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"progressToken":5}}"#,
        );
        assert_eq!(m.progress_token(), None);
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":false}}}"#,
        );
        assert_eq!(m.progress_token(), None);
    }

    #[test]
    fn meta_protocol_version() {
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(m.meta_protocol_version().as_deref(), Some("2026-07-28"));
        assert!(is_borrowed!(&m.meta_protocol_version().unwrap()));
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(m.meta_protocol_version(), None);
        let m = single(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"protocolVersion":"2025-06-18"}}"#,
        );
        assert_eq!(m.meta_protocol_version(), None);
    }

    // ---- depth, encoding, framing -------------------------------------------------

    #[test]
    fn values_a_json_value_cannot_hold_are_refused_not_passed_unread() {
        let call = |args: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{args}}}}}"#
            )
        };
        for bad in [
            r#"{"a":1000,"pad":1e999}"#,
            r#"{"a":-1E+400}"#,
            r#"{"s":"\ud800"}"#,
            r#"{"s":"x\uDC00y"}"#,
            &format!(r#"{{"n":{}}}"#, "9".repeat(400)),
        ] {
            let body = call(bad);
            match parse(body.as_bytes(), D) {
                Err(JsonRpcError::Unreadable(why)) => assert!(!why.is_empty(), "{bad}"),
                other => panic!("{bad}: {:?}", other.map(|_| ())),
            }
        }
        // What a Value holds still parses: exponents in range, surrogate pairs, long
        // strings of digits.
        for good in [
            r#"{"a":1e300,"b":2.5E-3}"#,
            r#"{"s":"\ud83d\ude00 \u00e9 \uD7FF"}"#,
            &format!(r#"{{"s":"{}"}}"#, "9".repeat(400)),
        ] {
            let body = call(good);
            assert!(parse(body.as_bytes(), D).is_ok(), "{good}");
        }
        // Malformed JSON is still "not JSON", even when it has an exponent in it.
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":1e5,"method":}"#, D),
            Err(JsonRpcError::NotJson(_))
        ));
        let e = parse(call(r#"{"a":1e999}"#).as_bytes(), D)
            .map(|_| ())
            .unwrap_err();
        assert!(
            e.to_string().contains("beyond the range of a double"),
            "{e}"
        );
    }

    #[test]
    fn deep_nesting_rejected_without_stack_overflow() {
        let body = "[".repeat(10_000);
        assert!(matches!(
            parse(body.as_bytes(), D),
            Err(JsonRpcError::TooDeep(64))
        ));
        let body = format!(
            r#"{{"jsonrpc":"2.0","method":"x","params":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(matches!(
            parse(body.as_bytes(), D),
            Err(JsonRpcError::TooDeep(64))
        ));
        let body = "{\"a\":".repeat(100_000);
        assert!(matches!(
            parse(body.as_bytes(), 100),
            Err(JsonRpcError::TooDeep(100))
        ));
    }

    #[test]
    fn depth_limit_is_exact() {
        // Envelope = depth 1, params = 2, then n more arrays.
        let body = |n: usize| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"x","params":{{"a":{}0{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(parse(body(8).as_bytes(), 10).is_ok());
        assert!(matches!(
            parse(body(9).as_bytes(), 10),
            Err(JsonRpcError::TooDeep(10))
        ));
        // Beyond serde_json's own 128: the limit is ours alone.
        assert!(parse(body(298).as_bytes(), 300).is_ok());
        assert!(matches!(
            parse(body(299).as_bytes(), 300),
            Err(JsonRpcError::TooDeep(300))
        ));
        // A batch adds one level.
        let one = r#"{"jsonrpc":"2.0","method":"x"}"#;
        assert!(parse(one.as_bytes(), 1).is_ok());
        assert!(matches!(
            parse(format!("[{one}]").as_bytes(), 1),
            Err(JsonRpcError::TooDeep(1))
        ));
        assert!(parse(format!("[{one}]").as_bytes(), 2).is_ok());
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","method":"x","params":{{"s":"{}\"{}\\","t":"[[{{"}}}}"#,
            "[".repeat(1000),
            "{".repeat(1000)
        );
        let m = single(&body);
        assert_eq!(m.kind, Kind::Notification);
        assert!(parse(body.as_bytes(), 2).is_ok());
    }

    #[test]
    fn invalid_utf8_rejected() {
        let mut body = br#"{"jsonrpc":"2.0","method":"x","params":{"s":"ab"}}"#.to_vec();
        body[45] = 0xff;
        assert_eq!(not_json(&body), "invalid UTF-8 at byte offset 45");
        assert_eq!(not_json(b"\xef\xbb"), "invalid UTF-8 at byte offset 0");
        // A byte-order mark is not JSON-RPC either.
        let bom = "\u{feff}{\"jsonrpc\":\"2.0\",\"method\":\"x\"}";
        assert!(not_json(bom.as_bytes()).contains("line 1 column 1"));
    }

    #[test]
    fn trailing_garbage_rejected() {
        let m = not_json(br#"{"jsonrpc":"2.0","method":"x"} x"#);
        assert!(m.contains("trailing characters"), "{m}");
        let m = not_json(br#"{"jsonrpc":"2.0","method":"x"}{"jsonrpc":"2.0","method":"y"}"#);
        assert!(m.contains("trailing characters"), "{m}");
        let m = not_json(br#"[{"jsonrpc":"2.0","method":"x"}],"#);
        assert!(m.contains("trailing characters"), "{m}");
        let m = not_json(b"42 43");
        assert!(m.contains("trailing characters"), "{m}");
    }

    #[test]
    fn whitespace_around_accepted() {
        let m =
            single(" \r\n\t{ \"jsonrpc\" : \"2.0\" , \"id\" : 1 , \"method\" : \"ping\" }\n\r\t ");
        assert_eq!((m.kind, m.id), (Kind::Request, Some(Id::Num(1))));
        assert_eq!(
            batch("\n[ {\"jsonrpc\":\"2.0\",\"method\":\"a\"} ]\n").len(),
            1
        );
    }

    #[test]
    fn syntax_errors_carry_position() {
        let m = not_json(b"{\"jsonrpc\":\"2.0\",\n\"method\":}");
        assert!(m.contains("line 2 column 10"), "{m}");
        assert!(not_json(b"").contains("EOF"));
        assert!(not_json(b"   ").contains("EOF"));
        assert!(not_json(b"{'a':1}").contains("line 1"));
        assert!(
            not_json(br#"{"jsonrpc":"2.0","method":"x","params":{"a":01}}"#).contains("line 1")
        );
    }

    #[test]
    fn error_display() {
        assert_eq!(
            JsonRpcError::TooDeep(64).to_string(),
            "JSON nesting deeper than 64"
        );
        let e = parse(b"[]", D).unwrap_err();
        assert_eq!(e.to_string(), "not a JSON-RPC 2.0 message: empty batch");
        let e = parse(b"{", D).unwrap_err();
        assert!(e.to_string().starts_with("body is not JSON: EOF"), "{e}");
    }

    // ---- real MCP messages --------------------------------------------------------

    const INITIALIZE_REQUEST: &str = r#"{
      "jsonrpc": "2.0",
      "id": 0,
      "method": "initialize",
      "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {
          "roots": { "listChanged": true },
          "sampling": {},
          "elicitation": {}
        },
        "clientInfo": { "name": "ExampleClient", "title": "Example Client Display Name", "version": "1.0.0" }
      }
    }"#;

    const INITIALIZE_RESPONSE: &str = r#"{
      "jsonrpc": "2.0",
      "id": 0,
      "result": {
        "protocolVersion": "2025-06-18",
        "capabilities": {
          "logging": {},
          "prompts": { "listChanged": true },
          "resources": { "subscribe": true, "listChanged": true },
          "tools": { "listChanged": true },
          "completions": {}
        },
        "serverInfo": { "name": "ExampleServer", "title": "Example Server Display Name", "version": "1.0.0" },
        "instructions": "Optional instructions for the client"
      }
    }"#;

    const TOOLS_LIST_RESPONSE: &str = r#"{
      "jsonrpc": "2.0",
      "id": 1,
      "result": {
        "tools": [
          {
            "name": "get_weather",
            "title": "Weather Information Provider",
            "description": "Get current weather information for a location",
            "inputSchema": {
              "type": "object",
              "properties": {
                "location": { "type": "string", "description": "City name or zip code" },
                "units": { "type": "string", "enum": ["metric", "imperial"] }
              },
              "required": ["location"]
            },
            "outputSchema": {
              "type": "object",
              "properties": {
                "temperature": { "type": "number" },
                "conditions": { "type": "string" }
              },
              "required": ["temperature", "conditions"]
            },
            "annotations": { "readOnlyHint": true, "openWorldHint": true }
          }
        ],
        "nextCursor": "next-page-cursor"
      }
    }"#;

    const TOOLS_CALL_REQUEST: &str = r#"{
      "jsonrpc": "2.0",
      "id": 2,
      "method": "tools/call",
      "params": {
        "name": "get_weather",
        "arguments": { "location": "New York", "units": "metric", "nested": { "name": "decoy" } },
        "_meta": { "progressToken": "abc123" }
      }
    }"#;

    const TOOLS_CALL_RESPONSE: &str = r#"{
      "jsonrpc": "2.0",
      "id": 2,
      "result": {
        "content": [ { "type": "text", "text": "Current weather in New York:\nTemperature: 72°F" } ],
        "structuredContent": { "temperature": 22.5, "conditions": "Partly cloudy" },
        "isError": false
      }
    }"#;

    const PROGRESS_NOTIFICATION: &str = r#"{
      "jsonrpc": "2.0",
      "method": "notifications/progress",
      "params": { "progressToken": "abc123", "progress": 50, "total": 100, "message": "Reticulating splines..." }
    }"#;

    const SAMPLING_REQUEST: &str = r#"{
      "jsonrpc": "2.0",
      "id": 1,
      "method": "sampling/createMessage",
      "params": {
        "messages": [ { "role": "user", "content": { "type": "text", "text": "What is the capital of France?" } } ],
        "modelPreferences": { "hints": [ { "name": "claude-3-sonnet" } ], "intelligencePriority": 0.8, "speedPriority": 0.5 },
        "systemPrompt": "You are a helpful assistant.",
        "maxTokens": 100
      }
    }"#;

    const ELICITATION_REQUEST: &str = r#"{
      "jsonrpc": "2.0",
      "id": "srv-7",
      "method": "elicitation/create",
      "params": {
        "message": "Please provide your GitHub username",
        "requestedSchema": { "type": "object", "properties": { "name": { "type": "string" } }, "required": ["name"] }
      }
    }"#;

    const RESOURCES_READ_REQUEST: &str = r#"{
      "jsonrpc": "2.0",
      "id": 5,
      "method": "resources/read",
      "params": { "uri": "file:///project/src/main.rs" }
    }"#;

    const CANCELLED_NOTIFICATION: &str = r#"{
      "jsonrpc": "2.0",
      "method": "notifications/cancelled",
      "params": { "requestId": "123", "reason": "User requested cancellation" }
    }"#;

    const TOOL_ERROR_RESPONSE: &str = r#"{
      "jsonrpc": "2.0",
      "id": 3,
      "error": { "code": -32602, "message": "Unknown tool: invalid_tool_name" }
    }"#;

    const MODERN_TOOLS_CALL: &str = r#"{
      "jsonrpc": "2.0",
      "id": 1,
      "method": "tools/call",
      "params": {
        "name": "confirm_operation",
        "arguments": { "operation": "generate the report" },
        "_meta": {
          "io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientInfo": { "name": "test-client", "version": "0.0.1" },
          "io.modelcontextprotocol/clientCapabilities": { "elicitation": { "form": {} } },
          "progressToken": 17
        }
      }
    }"#;

    #[test]
    fn fixture_initialize() {
        let m = single(INITIALIZE_REQUEST);
        assert_eq!((m.kind, m.id.clone()), (Kind::Request, Some(Id::Num(0))));
        assert_eq!(m.method.as_deref(), Some("initialize"));
        assert_eq!(m.target_name(), None);
        assert_eq!(m.meta_protocol_version(), None);
        let params: Value = serde_json::from_str(m.params.unwrap().get()).unwrap();
        assert_eq!(params["capabilities"]["roots"]["listChanged"], json!(true));

        let m = single(INITIALIZE_RESPONSE);
        assert_eq!((m.kind, m.id.clone()), (Kind::Response, Some(Id::Num(0))));
        let result: Value = serde_json::from_str(m.result.unwrap().get()).unwrap();
        assert_eq!(result["serverInfo"]["name"], json!("ExampleServer"));
    }

    #[test]
    fn fixture_tools() {
        let m = single(TOOLS_LIST_RESPONSE);
        assert_eq!((m.kind, m.id.clone()), (Kind::Response, Some(Id::Num(1))));
        let result: Value = serde_json::from_str(m.result.unwrap().get()).unwrap();
        assert_eq!(
            result["tools"][0]["inputSchema"]["required"],
            json!(["location"])
        );

        let m = single(TOOLS_CALL_REQUEST);
        assert_eq!((m.kind, m.id.clone()), (Kind::Request, Some(Id::Num(2))));
        assert_eq!(m.target_name().as_deref(), Some("get_weather"));
        assert_eq!(m.progress_token(), Some(Id::Str("abc123".into())));
        assert_eq!(m.meta_protocol_version(), None);

        let m = single(TOOLS_CALL_RESPONSE);
        assert_eq!((m.kind, m.id.clone()), (Kind::Response, Some(Id::Num(2))));

        let m = single(TOOL_ERROR_RESPONSE);
        assert_eq!((m.kind, m.error_code), (Kind::Error, Some(-32602)));
        assert_eq!(
            m.error_message.as_deref(),
            Some("Unknown tool: invalid_tool_name")
        );
    }

    #[test]
    fn fixture_notifications() {
        let m = single(PROGRESS_NOTIFICATION);
        assert_eq!((m.kind, m.id.clone()), (Kind::Notification, None));
        assert_eq!(m.method.as_deref(), Some("notifications/progress"));
        assert_eq!(
            m.progress_token(),
            None,
            "the token of a progress notification is not in _meta"
        );

        let m = single(CANCELLED_NOTIFICATION);
        assert_eq!(m.kind, Kind::Notification);
        assert_eq!(m.method.as_deref(), Some("notifications/cancelled"));
    }

    #[test]
    fn fixture_server_to_client_requests() {
        let m = single(SAMPLING_REQUEST);
        assert_eq!((m.kind, m.id.clone()), (Kind::Request, Some(Id::Num(1))));
        assert_eq!(m.method.as_deref(), Some("sampling/createMessage"));
        assert_eq!(m.target_name(), None);

        let m = single(ELICITATION_REQUEST);
        assert_eq!(
            (m.kind, m.id.clone()),
            (Kind::Request, Some(Id::Str("srv-7".into())))
        );
        assert_eq!(m.target_name(), None);
    }

    #[test]
    fn fixture_resources_read() {
        let m = single(RESOURCES_READ_REQUEST);
        assert_eq!(
            m.target_name().as_deref(),
            Some("file:///project/src/main.rs")
        );
    }

    #[test]
    fn fixture_2026_07_28_request() {
        let m = single(MODERN_TOOLS_CALL);
        assert_eq!(m.kind, Kind::Request);
        let info = m.params_info().unwrap();
        assert_eq!(info.target_name.as_deref(), Some("confirm_operation"));
        assert_eq!(info.protocol_version.as_deref(), Some("2026-07-28"));
        assert_eq!(info.progress_token, Some(Id::Num(17)));
        assert_eq!(m.meta_protocol_version().as_deref(), Some("2026-07-28"));
    }

    #[test]
    fn fixtures_as_one_batch() {
        let all = [
            INITIALIZE_REQUEST,
            INITIALIZE_RESPONSE,
            TOOLS_LIST_RESPONSE,
            TOOLS_CALL_REQUEST,
            TOOLS_CALL_RESPONSE,
            PROGRESS_NOTIFICATION,
            SAMPLING_REQUEST,
            ELICITATION_REQUEST,
            RESOURCES_READ_REQUEST,
            CANCELLED_NOTIFICATION,
            TOOL_ERROR_RESPONSE,
            MODERN_TOOLS_CALL,
        ];
        let body = format!("[{}]", all.join(","));
        let v = batch(&body);
        assert_eq!(v.len(), all.len());
        for (m, text) in v.iter().zip(all) {
            let alone = single(text);
            assert_eq!(
                (m.kind, &m.id, &m.method),
                (alone.kind, &alone.id, &alone.method)
            );
        }
    }

    // ---- property tests -----------------------------------------------------------

    /// Arbitrary JSON without floats (which may not round-trip exactly through text).
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_id() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ]
    }

    fn expected_id(v: &Value) -> Id {
        match v {
            Value::Null => Id::Null,
            Value::String(s) => Id::Str(s.clone()),
            Value::Number(n) => Id::Num(n.as_i64().expect("generated ids are i64")),
            other => panic!("not an id: {other}"),
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum GenKind {
        Request,
        Notification,
        Response,
        Error,
    }

    prop_compose! {
        fn arb_message()(
            kind in prop_oneof![
                Just(GenKind::Request), Just(GenKind::Notification),
                Just(GenKind::Response), Just(GenKind::Error),
            ],
            id in arb_id(),
            null_error_id in any::<bool>(),
            method in prop_oneof![
                Just("tools/call".to_owned()), Just("resources/read".to_owned()),
                Just("prompts/get".to_owned()), any::<String>(),
            ],
            target in any::<String>(),
            token in prop::option::of(arb_id()),
            version in prop::option::of(any::<String>()),
            params_extra in prop::collection::btree_map("[a-z]{1,8}", arb_json(), 0..4),
            array_params in prop::option::of(prop::collection::vec(arb_json(), 0..4)),
            result in arb_json(),
            code in any::<i64>(),
            message in any::<String>(),
            data in prop::option::of(arb_json()),
            extra in prop::collection::btree_map("x-[a-z]{1,8}", arb_json(), 0..3),
        ) -> Value {
            let mut obj = serde_json::Map::new();
            for (k, v) in extra {
                obj.insert(k, v);
            }
            obj.insert("jsonrpc".into(), json!("2.0"));
            match kind {
                GenKind::Request | GenKind::Notification => {
                    if matches!(kind, GenKind::Request) {
                        obj.insert("id".into(), id);
                    }
                    let params = match array_params {
                        Some(a) => Value::Array(a),
                        None => {
                            let mut p: serde_json::Map<String, Value> = params_extra.into_iter().collect();
                            p.insert("name".into(), json!(target.clone()));
                            p.insert("uri".into(), json!(target));
                            let mut meta = serde_json::Map::new();
                            if let Some(t) = token {
                                meta.insert("progressToken".into(), t);
                            }
                            if let Some(v) = version {
                                meta.insert(META_PROTOCOL_VERSION.into(), json!(v));
                            }
                            p.insert("_meta".into(), Value::Object(meta));
                            Value::Object(p)
                        }
                    };
                    obj.insert("method".into(), json!(method));
                    obj.insert("params".into(), params);
                }
                GenKind::Response => {
                    obj.insert("id".into(), id);
                    obj.insert("result".into(), result);
                }
                GenKind::Error => {
                    obj.insert("id".into(), if null_error_id { Value::Null } else { id });
                    let mut e = json!({"code": code, "message": message});
                    if let Some(d) = data {
                        e["data"] = d;
                    }
                    obj.insert("error".into(), e);
                }
            }
            Value::Object(obj)
        }
    }

    fn check_against_value(m: &Message<'_>, v: &Value) {
        let kind = if v.get("method").is_some() {
            if v.get("id").is_some() {
                Kind::Request
            } else {
                Kind::Notification
            }
        } else if v.get("result").is_some() {
            Kind::Response
        } else {
            Kind::Error
        };
        assert_eq!(m.kind, kind);
        assert_eq!(m.id, v.get("id").map(expected_id));
        assert_eq!(m.method.as_deref(), v.get("method").and_then(Value::as_str));
        let reparse =
            |raw: Option<&RawValue>| raw.map(|r| serde_json::from_str::<Value>(r.get()).unwrap());
        assert_eq!(reparse(m.params).as_ref(), v.get("params"));
        assert_eq!(reparse(m.result).as_ref(), v.get("result"));
        assert_eq!(
            m.error_code,
            v.pointer("/error/code").and_then(Value::as_i64)
        );
        assert_eq!(
            m.error_message.as_deref(),
            v.pointer("/error/message").and_then(Value::as_str)
        );
        let target = match m.method.as_deref() {
            Some("tools/call" | "prompts/get") => v.pointer("/params/name"),
            Some("resources/read") => v.pointer("/params/uri"),
            _ => None,
        };
        assert_eq!(m.target_name().as_deref(), target.and_then(Value::as_str));
        assert_eq!(
            m.progress_token(),
            v.pointer("/params/_meta/progressToken").map(expected_id)
        );
        let version = v
            .pointer("/params/_meta")
            .and_then(|meta| meta.get(META_PROTOCOL_VERSION));
        assert_eq!(
            m.meta_protocol_version().as_deref(),
            version.and_then(Value::as_str)
        );
    }

    fn depth_of(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Several JSON texts of the number `m * 10^e`.
    fn number_texts(m: i64, e: i32, zeros: usize) -> Vec<String> {
        let sign = if m < 0 { "-" } else { "" };
        let digits = m.unsigned_abs().to_string();
        let zeros = if m == 0 { 0 } else { zeros }; // no leading zeros in JSON
        let padded = format!("{digits}{}", "0".repeat(zeros));
        let pe = e - zeros as i32; // padded * 10^pe == |m| * 10^e
        let mut out = vec![
            format!("{sign}{digits}e{e}"),
            format!("{sign}{padded}E{pe:+}"),
        ];
        // Decimal-point form of padded * 10^pe when pe <= 0.
        if pe <= 0 {
            let point = padded.len() as i32 + pe;
            if point > 0 {
                let (i, f) = padded.split_at(point as usize);
                out.push(if f.is_empty() {
                    format!("{sign}{i}")
                } else {
                    format!("{sign}{i}.{f}")
                });
            } else {
                out.push(format!("{sign}0.{}{padded}", "0".repeat((-point) as usize)));
            }
        } else {
            let tail = if m == 0 {
                String::new()
            } else {
                "0".repeat(pe as usize)
            };
            out.push(format!("{sign}{padded}{tail}"));
        }
        out
    }

    /// `m * 10^e` if that is an integer within i64, computed exactly.
    fn exact_integer(m: i64, e: i32) -> Option<i64> {
        if m == 0 {
            return Some(0);
        }
        if e >= 0 {
            return m.checked_mul(10i64.checked_pow(e as u32)?);
        }
        // If 10^-e overflows i64 it exceeds |m|, which it then cannot divide.
        let p = 10i64.checked_pow(e.unsigned_abs())?;
        (m % p == 0).then(|| m / p)
    }

    proptest! {
        #[test]
        fn prop_generated_messages_parse_as_their_value(v in arb_message(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
            match parse(text.as_bytes(), 64) {
                Ok(Parsed::Single(m)) => check_against_value(&m, &v),
                other => panic!("{text}: {other:?}"),
            }
        }

        #[test]
        fn prop_generated_batches_parse_in_order(vs in prop::collection::vec(arb_message(), 1..5)) {
            let text = serde_json::to_string(&vs).unwrap();
            match parse(text.as_bytes(), 64) {
                Ok(Parsed::Batch(ms)) => {
                    prop_assert_eq!(ms.len(), vs.len());
                    for (m, v) in ms.iter().zip(&vs) {
                        check_against_value(m, v);
                    }
                }
                other => panic!("{text}: {other:?}"),
            }
        }

        #[test]
        fn prop_depth_limit_matches_real_depth(params in arb_json(), limit in 1usize..9) {
            let v = json!({"jsonrpc": "2.0", "method": "m", "params": [params]});
            let depth = depth_of(&v);
            let text = serde_json::to_string(&v).unwrap();
            let r = parse(text.as_bytes(), limit);
            if depth > limit {
                prop_assert!(matches!(r, Err(JsonRpcError::TooDeep(l)) if l == limit), "depth {} limit {}: {:?}", depth, limit, r);
            } else {
                prop_assert!(r.is_ok(), "depth {} limit {}: {:?}", depth, limit, r);
            }
        }

        #[test]
        fn prop_number_ids_are_exact_integers(
            m in prop_oneof![-1000i64..1000, any::<i64>()],
            e in prop_oneof![-30i32..30, -400i32..400],
            z in 0usize..4,
        ) {
            let want = exact_integer(m, e);
            for t in number_texts(m, e, z) {
                let body = format!(r#"{{"jsonrpc":"2.0","id":{t},"result":{{}}}}"#);
                match (parse(body.as_bytes(), 64), want) {
                    (Ok(Parsed::Single(msg)), Some(v)) => prop_assert_eq!(msg.id, Some(Id::Num(v)), "{}", t),
                    (Err(JsonRpcError::NotJsonRpc(msg)), None) => {
                        prop_assert!(msg.contains("must be a string or an integer within i64"), "{}: {}", t, msg)
                    }
                    (got, want) => panic!("{t}: want {want:?}, got {got:?}"),
                }
            }
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), limit in 0usize..80) {
            exercise(&body, limit);
        }

        #[test]
        fn prop_mutated_messages_never_panic(
            v in arb_message(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut body = serde_json::to_vec(&v).unwrap();
            for (at, byte, op) in edits {
                if body.is_empty() {
                    break;
                }
                let i = at.index(body.len());
                match op {
                    0 => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ => {
                        body.remove(i);
                    }
                }
            }
            exercise(&body, 64);
        }
    }

    /// Parses and, on success, runs every accessor (none may panic).
    fn exercise(body: &[u8], limit: usize) {
        let messages = match parse(body, limit) {
            Ok(Parsed::Single(m)) => vec![m],
            Ok(Parsed::Batch(ms)) => ms,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        };
        for m in &messages {
            let _ = (
                m.target_name(),
                m.progress_token(),
                m.meta_protocol_version(),
            );
            let _ = m.params_info();
            if let Some(id) = &m.id {
                let _ = (id.to_string(), id.to_json());
            }
        }
    }
}
