//! The JSON-RPC envelope parser (`mcp::jsonrpc::parse`) and request pairing
//! (`mcp::pairing::Pending`) on arbitrary bodies.
//!
//! Asserts:
//! - a body that parses is JSON, nested no deeper than the limit, and agrees with a
//!   generic JSON reading (serde_json `Value`) on the kind, id, method, params, result and
//!   error of every message, and on what `params_info` extracts;
//! - a message that parses re-serialises (from its fields alone) to JSON that parses to the
//!   same message, the same `params_info` and the same batch shape;
//! - a body deeper than the limit is refused as too deep;
//! - pairing the batch's requests and responses in a `Pending` table of fuzzer-chosen
//!   capacity behaves as a plain model of the documented rules (duplicate ids refused, a
//!   full table refused, a response takes its request; `1` and `1.0` are one id, `1` and
//!   `"1"` are two).
#![no_main]

use std::collections::HashMap;

use gateway_daemon::mcp::jsonrpc::{self, Id, JsonRpcError, Kind, Message, ParamsInfo, Parsed};
use gateway_daemon::mcp::pairing::{PairingError, Pending};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Nesting of a JSON value (a scalar is 0, `{}` is 1).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The message written back from its fields only.
fn reserialise(m: &Message<'_>) -> String {
    let mut out = String::from(r#"{"jsonrpc":"2.0""#);
    if let Some(id) = &m.id {
        out.push_str(r#","id":"#);
        out.push_str(&id.to_json());
    }
    if let Some(method) = &m.method {
        out.push_str(r#","method":"#);
        out.push_str(&serde_json::to_string(method.as_ref()).unwrap());
    }
    if let Some(p) = m.params {
        out.push_str(r#","params":"#);
        out.push_str(p.get());
    }
    if let Some(r) = m.result {
        out.push_str(r#","result":"#);
        out.push_str(r.get());
    }
    if m.kind == Kind::Error {
        out.push_str(&format!(
            r#","error":{{"code":{},"message":{}}}"#,
            m.error_code.expect("an error has a code"),
            serde_json::to_string(m.error_message.as_deref().expect("an error has a message"))
                .unwrap()
        ));
    }
    out.push('}');
    out
}

/// The fields of a message, owned, for comparing.
#[derive(Debug, PartialEq)]
struct Fields {
    kind: Kind,
    id: Option<Id>,
    method: Option<String>,
    params: Option<Value>,
    result: Option<Value>,
    code: Option<i64>,
    message: Option<String>,
    info: Result<ParamsInfoOwned, String>,
}

#[derive(Debug, PartialEq)]
struct ParamsInfoOwned {
    target_name: Option<String>,
    progress_token: Option<Id>,
    protocol_version: Option<String>,
}

fn owned_info(i: ParamsInfo<'_>) -> ParamsInfoOwned {
    ParamsInfoOwned {
        target_name: i.target_name.map(|s| s.into_owned()),
        progress_token: i.progress_token,
        protocol_version: i.protocol_version.map(|s| s.into_owned()),
    }
}

fn fields(m: &Message<'_>) -> Fields {
    // Params and result as values: re-serialisation may not keep insignificant whitespace.
    let value = |r: Option<&serde_json::value::RawValue>| {
        r.map(|r| serde_json::from_str::<Value>(r.get()).expect("a raw member is JSON"))
    };
    Fields {
        kind: m.kind,
        id: m.id.clone(),
        method: m.method.as_ref().map(|s| s.to_string()),
        params: value(m.params),
        result: value(m.result),
        code: m.error_code,
        message: m.error_message.as_ref().map(|s| s.to_string()),
        info: m.params_info().map(owned_info).map_err(|e| e.to_string()),
    }
}

/// The id as a generic JSON reading has it.
fn id_matches(id: &Id, v: &Value) -> bool {
    match (id, v) {
        (Id::Str(s), Value::String(t)) => s == t,
        (Id::Null, Value::Null) => true,
        (Id::Num(n), Value::Number(x)) => match (x.as_i64(), x.as_f64()) {
            (Some(i), _) => i == *n,
            // Written as a fraction or with an exponent: f64 is the nearest it can say.
            (None, Some(f)) => f == *n as f64,
            _ => false,
        },
        _ => false,
    }
}

/// Checks one parsed message against the generic reading of the same object.
fn agrees(m: &Message<'_>, v: &Value) {
    let obj = v.as_object().expect("a message is an object");
    assert_eq!(obj.get("jsonrpc"), Some(&Value::String("2.0".into())));
    match m.kind {
        Kind::Request | Kind::Notification => {
            let method = obj["method"].as_str().expect("method is a string");
            assert_eq!(m.method.as_deref(), Some(method));
            assert!(!obj.contains_key("result") && !obj.contains_key("error"));
            assert_eq!(m.kind == Kind::Request, obj.contains_key("id"));
            match obj.get("params") {
                None | Some(Value::Null) => assert!(m.params.is_none()),
                Some(p) => {
                    assert!(p.is_object() || p.is_array(), "params {p}");
                    let raw: Value = serde_json::from_str(m.params.unwrap().get()).unwrap();
                    assert_eq!(&raw, p);
                }
            }
        }
        Kind::Response => {
            assert!(m.method.is_none() && !obj.contains_key("method"));
            assert!(!obj.contains_key("error"));
            let raw: Value = serde_json::from_str(m.result.unwrap().get()).unwrap();
            assert_eq!(Some(&raw), obj.get("result"));
        }
        Kind::Error => {
            assert!(!obj.contains_key("method") && !obj.contains_key("result"));
            let e = &obj["error"];
            assert_eq!(e["code"].as_i64(), m.error_code, "error code {}", e["code"]);
            assert_eq!(e["message"].as_str(), m.error_message.as_deref());
        }
    }
    match &m.id {
        Some(id) => assert!(id_matches(id, &obj["id"]), "id {id:?} vs {}", obj["id"]),
        None => assert!(m.kind == Kind::Notification),
    }
    if let Ok(info) = m.params_info() {
        let params = &obj.get("params").cloned().unwrap_or(Value::Null);
        if let Some(name) = &info.target_name {
            let member = match m.method.as_deref() {
                Some("tools/call" | "prompts/get") => "name",
                Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => "uri",
                other => panic!("a target name for method {other:?}"),
            };
            assert_eq!(params[member].as_str(), Some(name.as_ref()));
        }
        if let Some(token) = &info.progress_token {
            assert!(id_matches(token, &params["_meta"]["progressToken"]));
        }
        if let Some(version) = &info.protocol_version {
            assert_eq!(
                params["_meta"][jsonrpc::META_PROTOCOL_VERSION].as_str(),
                Some(version.as_ref())
            );
        }
        assert_eq!(
            m.target_name().map(|s| s.into_owned()),
            info.target_name.map(|s| s.into_owned())
        );
    }
}

/// A model of `Pending`: the documented rules, over a plain map.
fn pairing(messages: &[Message<'_>], capacity: usize) {
    let mut table = Pending::new(capacity);
    let mut model: HashMap<Id, usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(id) = m.id.clone() else { continue };
        match m.kind {
            Kind::Request => {
                let expected = if model.contains_key(&id) {
                    Err(PairingError::DuplicateId(id.to_string()))
                } else if model.len() >= capacity {
                    Err(PairingError::Full(capacity))
                } else {
                    model.insert(id.clone(), i);
                    Ok(())
                };
                assert_eq!(table.insert(id.clone(), i), expected);
            }
            Kind::Response | Kind::Error => {
                assert_eq!(table.get(&id), model.get(&id));
                assert_eq!(table.take(&id), model.remove(&id));
                assert!(!table.contains(&id));
            }
            Kind::Notification => {}
        }
        assert_eq!(table.len(), model.len());
        assert!(table.len() <= capacity);
    }
    // Expire the requests at odd positions.
    let mut expired = table.drain_expired(|i| i % 2 == 1);
    expired.sort_by_key(|(_, i)| *i);
    let mut want: Vec<(Id, usize)> = model
        .iter()
        .filter(|(_, i)| *i % 2 == 1)
        .map(|(id, i)| (id.clone(), *i))
        .collect();
    want.sort_by_key(|(_, i)| *i);
    assert_eq!(expired, want);
    model.retain(|_, i| *i % 2 == 0);
    assert_eq!(table.len(), model.len());
    for id in model.keys() {
        assert!(table.contains(id));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, body)) = data.split_first() else {
        return;
    };
    // Limits around the gateway's (64), and small ones.
    let max_depth = match knobs % 4 {
        0 => usize::from(knobs >> 2) % 8,
        _ => jsonrpc::DEFAULT_MAX_DEPTH,
    };
    let capacity = usize::from(knobs >> 4);
    let parsed = match jsonrpc::parse(body, max_depth) {
        Ok(p) => p,
        Err(JsonRpcError::TooDeep(n)) => {
            assert_eq!(n, max_depth);
            // Deeper than the limit, if it is JSON at all.
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                assert!(
                    depth(&v) > max_depth,
                    "refused as too deep at {}",
                    depth(&v)
                );
            }
            return;
        }
        Err(JsonRpcError::Unreadable(why)) => {
            // Only JSON whose values serde_json's Value cannot hold, and well-formed JSON.
            assert!(serde_json::from_slice::<Value>(body).is_err(), "{why}");
            let text = std::str::from_utf8(body).expect("refused as unreadable, not as bad UTF-8");
            assert!(
                serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok(),
                "{why}"
            );
            return;
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let doc: Value = match serde_json::from_slice(body) {
        Ok(doc) => doc,
        // The stages after parsing (argument schemas, the exfiltration guard, response
        // rewriting) read messages as Values: what parses must be one (found by this
        // target: `1e999` and `"\ud800"` once passed, unread by those stages).
        Err(e) => panic!("a body that parses is not JSON to serde_json::Value: {e}"),
    };
    assert!(
        depth(&doc) <= max_depth,
        "depth {} accepted with limit {max_depth}",
        depth(&doc)
    );
    match (&parsed, &doc) {
        (Parsed::Single(m), v) => agrees(m, v),
        (Parsed::Batch(ms), Value::Array(vs)) => {
            assert_eq!(ms.len(), vs.len());
            assert!(!ms.is_empty());
            for (m, v) in ms.iter().zip(vs) {
                agrees(m, v);
            }
        }
        (Parsed::Batch(_), other) => panic!("a batch from {other}"),
    }

    // Written back from the fields, it parses the same.
    let messages = parsed.messages();
    let text = if parsed.is_batch() {
        let parts: Vec<String> = messages.iter().map(reserialise).collect();
        format!("[{}]", parts.join(","))
    } else {
        reserialise(&messages[0])
    };
    let again = jsonrpc::parse(text.as_bytes(), max_depth)
        .unwrap_or_else(|e| panic!("re-serialised {text} does not parse: {e}"));
    assert_eq!(again.is_batch(), parsed.is_batch());
    let before: Vec<Fields> = messages.iter().map(fields).collect();
    let after: Vec<Fields> = again.messages().iter().map(fields).collect();
    assert_eq!(before, after, "re-serialised as {text}");

    pairing(messages, capacity);
});
