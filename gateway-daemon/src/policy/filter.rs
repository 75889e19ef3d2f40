//! Listings filtered to what the principal may use: a tool, prompt or resource no rule
//! would let it call is not shown. Tool annotations seen in listings are remembered per
//! server, for rules that select on them.

use std::collections::HashMap;
use std::sync::RwLock;

use serde_json::{Map, Value};

use super::Policy;
use crate::mcp::jsonrpc::Id;

/// Tool annotations by (server, tool), from the listings the gateway has seen.
#[derive(Default)]
pub struct Catalog {
    tools: RwLock<HashMap<(String, String), Map<String, Value>>>,
}

impl Catalog {
    pub fn annotations(&self, server: &str, tool: &str) -> Option<Map<String, Value>> {
        self.tools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(server.to_string(), tool.to_string()))
            .cloned()
    }

    fn learn(&self, server: &str, tools: &[Value]) {
        let mut t = self.tools.write().unwrap_or_else(|p| p.into_inner());
        for tool in tools {
            if let (Some(name), Some(ann)) =
                (tool["name"].as_str(), tool["annotations"].as_object())
            {
                t.insert((server.to_string(), name.to_string()), ann.clone());
            }
        }
    }
}

/// Who is looking at the listing.
pub struct View<'a> {
    pub policy: &'a Policy,
    pub principal: Option<&'a str>,
    pub server: &'a str,
    pub catalog: &'a Catalog,
}

/// For a listing method: the result's array, each item's name field, and the method that
/// uses an item.
pub fn listing(method: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match method {
        "tools/list" => ("tools", "name", "tools/call"),
        "prompts/list" => ("prompts", "name", "prompts/get"),
        "resources/list" => ("resources", "uri", "resources/read"),
        "resources/templates/list" => ("resourceTemplates", "uriTemplate", "resources/read"),
        _ => return None,
    })
}

fn id_of(v: &Value) -> Option<Id> {
    match v {
        Value::Number(n) => n.as_i64().map(Id::Num),
        Value::String(s) => Some(Id::Str(s.clone())),
        _ => None,
    }
}

/// Filters the listing results in `body` (one message or a batch) that answer `lists`
/// (request id, listing method). Returns the new body and how many items were hidden, or
/// None when nothing changed (the original bytes are then forwarded).
pub fn rewrite(body: &[u8], lists: &[(Id, String)], view: &View) -> Option<(Vec<u8>, usize)> {
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    let mut hidden = 0;
    {
        let messages: Vec<&mut Value> = match &mut doc {
            Value::Array(a) => a.iter_mut().collect(),
            v => vec![v],
        };
        for m in messages {
            let Some(id) = id_of(&m["id"]) else { continue };
            let Some((_, method)) = lists.iter().find(|(i, _)| *i == id) else {
                continue;
            };
            let Some((field, key, call)) = listing(method) else {
                continue;
            };
            let Some(items) = m
                .get_mut("result")
                .and_then(|r| r.get_mut(field))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            if method == "tools/list" {
                view.catalog.learn(view.server, items);
            }
            let before = items.len();
            items.retain(|item| {
                let Some(name) = item[key].as_str() else {
                    return false;
                };
                view.policy.visible(
                    view.principal,
                    view.server,
                    call,
                    name,
                    item["annotations"].as_object(),
                )
            });
            hidden += before - items.len();
        }
    }
    (hidden > 0).then(|| {
        (
            serde_json::to_vec(&doc).expect("a JSON value always serialises"),
            hidden,
        )
    })
}
