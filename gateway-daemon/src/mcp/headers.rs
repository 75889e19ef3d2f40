//! What the 2026-07-28 revision lets a client say twice, in headers and in the body, must
//! say the same in both: the protocol version (`MCP-Protocol-Version` against
//! `_meta`), and each argument a tool mirrors into an `Mcp-Param-{Name}` header (declared
//! with `x-mcp-header` in its input schema). A header that lies could steer whatever reads
//! headers after the gateway (a router, the server's own dispatch) away from what the
//! gateway decided on the body. A version the gateway does not know is refused: it cannot
//! tell what such a request may carry.

use http::HeaderMap;
use serde_json::Value;

use super::jsonrpc::Message;
use super::recognise::H_PROTOCOL_VERSION;
use crate::redact::Redactor;

/// The protocol versions the gateway reads.
pub const KNOWN_VERSIONS: &[&str] = &[
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// The revision that has `Mcp-Param-*` headers.
const PARAM_HEADERS_SINCE: &str = "2026-07-28";
const PARAM_PREFIX: &str = "mcp-param-";

/// Why a request's headers cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Header and body disagree (-32020).
    #[error("{0}")]
    Mismatch(String),
    /// A protocol version the gateway does not know (-32022).
    #[error("protocol version {0:?} is not one the gateway supports ({known})", known = KNOWN_VERSIONS.join(", "))]
    Unsupported(String),
}

/// A mirrored argument of a tool: its path of `properties` keys, and its header token.
pub type Mirrored = Vec<(Vec<String>, String)>;

/// The arguments a tool's input schema mirrors into headers; Err names what makes the
/// declarations invalid (a conforming client drops such a tool, and so does the gateway).
pub fn mirrored(input_schema: &Value) -> Result<Mirrored, String> {
    let mut out: Mirrored = Vec::new();
    let mut path = Vec::new();
    walk(input_schema, &mut path, true, &mut out)?;
    let mut seen = std::collections::HashSet::new();
    for (p, token) in &out {
        if !seen.insert(token.to_ascii_lowercase()) {
            return Err(format!(
                "x-mcp-header {token:?} on property {:?} is declared twice",
                p.join(".")
            ));
        }
    }
    Ok(out)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Every schema position under `v`; `on_chain` while only `properties` keys led here.
fn walk(
    v: &Value,
    path: &mut Vec<String>,
    on_chain: bool,
    out: &mut Mirrored,
) -> Result<(), String> {
    let Some(obj) = v.as_object() else {
        if let Value::Array(items) = v {
            for i in items {
                walk(i, path, false, out)?;
            }
        }
        return Ok(());
    };
    if let Some(h) = obj.get("x-mcp-header") {
        let at = path.join(".");
        if !on_chain || path.is_empty() {
            return Err("x-mcp-header at a position not reached by properties alone".into());
        }
        let Some(token) = h.as_str().filter(|t| is_token(t)) else {
            return Err(format!(
                "property {at:?}: x-mcp-header is not an HTTP token"
            ));
        };
        if !matches!(
            obj.get("type").and_then(Value::as_str),
            Some("string" | "integer" | "boolean")
        ) {
            return Err(format!(
                "property {at:?}: x-mcp-header is allowed on string, integer and boolean \
                 properties only"
            ));
        }
        out.push((path.clone(), token.to_string()));
    }
    for (k, child) in obj {
        match k.as_str() {
            "properties" => {
                if let Some(props) = child.as_object() {
                    for (name, schema) in props {
                        path.push(name.clone());
                        walk(schema, path, on_chain, out)?;
                        path.pop();
                    }
                }
            }
            "x-mcp-header" | "const" | "enum" | "default" | "examples" => {}
            _ => walk(child, path, false, out)?,
        }
    }
    Ok(())
}

/// A header value as sent: verbatim, or Base64-unwrapped from `=?base64?...?=` (values
/// outside visible ASCII travel so); None when the wrapping holds no UTF-8 Base64.
pub fn decode(raw: &str) -> Option<String> {
    use base64::Engine as _;
    match raw
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|v| String::from_utf8(v).ok()),
        None => Some(raw.to_string()),
    }
}

/// A header value for `text`: verbatim when visible ASCII, else Base64-wrapped (as
/// `decode` reads it).
fn encode(text: &str) -> String {
    use base64::Engine as _;
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text.to_string();
    }
    format!(
        "=?base64?{}?=",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

/// After the exfiltration guard redacted a call's arguments: each `Mcp-Param-*` header is
/// redacted as the argument it mirrors was (the same redactor on the same text), so what
/// was taken out of the body does not leave in a header. The caller checks the headers
/// against the redacted body again: one that still disagrees is refused, not forwarded.
pub fn redact_params(h: &mut HeaderMap, redactor: &Redactor) -> Result<(), HeaderError> {
    let carried: Vec<http::HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with(PARAM_PREFIX))
        .cloned()
        .collect();
    for name in carried {
        let text = h
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(decode)
            .ok_or_else(|| HeaderError::Mismatch(format!("the {name} header cannot be decoded")))?;
        if let Some(redacted) = redactor.redact_str(&text).map(|(t, _)| t) {
            let value = http::HeaderValue::from_str(&encode(&redacted))
                .expect("visible ASCII or Base64 is a header value");
            h.insert(name, value);
        }
    }
    Ok(())
}

fn rendered(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The protocol version a request speaks: header and `_meta` must agree, and be known.
pub fn version(h: &HeaderMap, messages: &[Message<'_>]) -> Result<Option<String>, HeaderError> {
    if h.get_all(&H_PROTOCOL_VERSION).iter().count() > 1 {
        return Err(HeaderError::Mismatch(
            "the MCP-Protocol-Version header appears more than once".into(),
        ));
    }
    let header = match h.get(&H_PROTOCOL_VERSION) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    HeaderError::Mismatch(
                        "the MCP-Protocol-Version header is not visible ASCII".into(),
                    )
                })?
                .to_string(),
        ),
    };
    let mut meta: Option<String> = None;
    for m in messages {
        if let Some(v) = m.meta_protocol_version() {
            if let Some(earlier) = &meta {
                if earlier != v.as_ref() {
                    return Err(HeaderError::Mismatch(format!(
                        "the messages of one request say protocol versions {earlier:?} and {v:?}"
                    )));
                }
            }
            if let Some(hv) = &header {
                if hv != v.as_ref() {
                    return Err(HeaderError::Mismatch(format!(
                        "the MCP-Protocol-Version header says {hv:?} but the body's _meta says {v:?}"
                    )));
                }
            }
            meta = Some(v.into_owned());
        }
    }
    let v = meta.or(header);
    match &v {
        Some(v) if !KNOWN_VERSIONS.contains(&v.as_str()) => {
            Err(HeaderError::Unsupported(v.clone()))
        }
        _ => Ok(v),
    }
}

/// Checks `Mcp-Param-*` headers: only in the revision that has them, and for each
/// argument the tool mirrors, the header says what the body does (both absent, or equal).
/// `declared` looks up a tool's mirrored arguments (None: the gateway never saw it).
pub fn params(
    h: &HeaderMap,
    version: Option<&str>,
    messages: &[Message<'_>],
    declared: impl Fn(&str) -> Option<Mirrored>,
) -> Result<(), HeaderError> {
    let carried: Vec<&str> = h
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with(PARAM_PREFIX))
        .collect();
    // Two copies of one header: a reader of the first and a reader of the last disagree.
    if let Some(k) = carried.iter().find(|k| h.get_all(**k).iter().count() > 1) {
        return Err(HeaderError::Mismatch(format!(
            "the {k} header appears more than once"
        )));
    }
    if version != Some(PARAM_HEADERS_SINCE) {
        if let Some(k) = carried.first() {
            return Err(HeaderError::Mismatch(format!(
                "the {k} header belongs to protocol version {PARAM_HEADERS_SINCE}, not {}: \
                 the gateway does not pass on what it cannot check",
                version.unwrap_or("(none given)")
            )));
        }
        return Ok(());
    }
    for m in messages
        .iter()
        .filter(|m| m.method.as_deref() == Some("tools/call"))
    {
        let Some(tool) = m.target_name() else {
            continue;
        };
        let Some(mirrored) = declared(&tool) else {
            if let Some(k) = carried.first() {
                return Err(HeaderError::Mismatch(format!(
                    "the {k} header mirrors an argument of tool {tool:?}, whose definition the \
                     gateway has not seen, so it cannot check it: list the server's tools again"
                )));
            }
            continue;
        };
        if mirrored.is_empty() {
            continue;
        }
        let args = m.arguments().unwrap_or(&Value::Null);
        for (path, token) in &mirrored {
            let name = format!("{PARAM_PREFIX}{}", token.to_ascii_lowercase());
            let mut values = h.get_all(name.as_str()).iter();
            let raw = values.next();
            if values.next().is_some() {
                return Err(HeaderError::Mismatch(format!(
                    "Mcp-Param-{token} appears more than once"
                )));
            }
            let mut at = args;
            for k in path {
                at = at.get(k).unwrap_or(&Value::Null);
            }
            let arg = path.join(".");
            let body = rendered(at);
            let header = match raw {
                None => None,
                Some(r) => Some(r.to_str().ok().and_then(decode).ok_or_else(|| {
                    HeaderError::Mismatch(format!("Mcp-Param-{token} cannot be decoded"))
                })?),
            };
            match (header, body) {
                (None, None) => {}
                (Some(_), None) => {
                    return Err(HeaderError::Mismatch(format!(
                        "Mcp-Param-{token} is present but the body's {arg:?} argument is not"
                    )))
                }
                (None, Some(_)) => {
                    return Err(HeaderError::Mismatch(format!(
                        "Mcp-Param-{token} is missing but the body's {arg:?} argument is present"
                    )))
                }
                (Some(hv), Some(bv)) if hv != bv => {
                    return Err(HeaderError::Mismatch(format!(
                        "Mcp-Param-{token} does not match the body's {arg:?} argument"
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn one_request_speaks_one_known_version() {
        let meta = |v: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"{v}"}}}}}}"#
            )
        };
        let batch = format!("[{},{}]", meta("1999-01-01"), meta("2026-07-28"));
        let parsed = crate::mcp::jsonrpc::parse(batch.as_bytes(), 64).unwrap();
        assert!(matches!(
            version(&HeaderMap::new(), parsed.messages()),
            Err(HeaderError::Mismatch(_))
        ));
        let one = meta("2026-07-28");
        let parsed = crate::mcp::jsonrpc::parse(one.as_bytes(), 64).unwrap();
        let twice = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-protocol-version", "2099-01-01"),
        ]);
        assert!(matches!(
            version(&twice, parsed.messages()),
            Err(HeaderError::Mismatch(_))
        ));
        assert_eq!(
            version(
                &headers(&[("mcp-protocol-version", "2026-07-28")]),
                parsed.messages()
            ),
            Ok(Some("2026-07-28".into()))
        );
        let unknown = meta("2099-01-01");
        let parsed = crate::mcp::jsonrpc::parse(unknown.as_bytes(), 64).unwrap();
        assert!(matches!(
            version(&HeaderMap::new(), parsed.messages()),
            Err(HeaderError::Unsupported(_))
        ));
    }

    #[test]
    fn a_param_header_twice_is_refused_declared_or_not() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{}}}"#;
        let parsed = crate::mcp::jsonrpc::parse(call.as_bytes(), 64).unwrap();
        let twice = headers(&[("mcp-param-tenant", "a"), ("mcp-param-tenant", "b")]);
        let declared = |_: &str| Some(Mirrored::new());
        assert!(params(&twice, Some("2026-07-28"), parsed.messages(), declared).is_err());
        let once = headers(&[("mcp-param-tenant", "a")]);
        assert!(params(&once, Some("2026-07-28"), parsed.messages(), declared).is_ok());
    }

    #[test]
    fn declarations_are_read_and_invalid_ones_named() {
        let ok = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {"n": {"type": "integer", "x-mcp-header": "N"}}}}});
        let mut m = mirrored(&ok).unwrap();
        m.sort();
        assert_eq!(
            m,
            vec![
                (vec!["opts".to_string(), "n".to_string()], "N".to_string()),
                (vec!["region".to_string()], "Region".to_string())
            ]
        );
        for bad in [
            json!({"properties": {"a": {"type": "number", "x-mcp-header": "A"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A B"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A"},
                                   "b": {"type": "string", "x-mcp-header": "a"}}}),
            json!({"anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]}),
            json!({"type": "string", "x-mcp-header": "Root"}),
        ] {
            assert!(mirrored(&bad).is_err(), "{bad}");
        }
    }
}
