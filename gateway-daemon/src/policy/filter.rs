//! Listings filtered to what the principal may use: a tool, prompt or resource no rule
//! would let it call is not shown. Tool annotations seen in listings are remembered per
//! server, for rules that select on them.

use std::collections::HashMap;
use std::sync::RwLock;

use serde_json::{Map, Value};

use super::Policy;

/// Tool annotations and mirrored arguments by (server, tool), from the listings the
/// gateway has seen.
#[derive(Default)]
pub struct Catalog {
    tools: RwLock<HashMap<(String, String), Map<String, Value>>>,
    mirrored: RwLock<HashMap<(String, String), crate::mcp::headers::Mirrored>>,
}

impl Catalog {
    pub fn annotations(&self, server: &str, tool: &str) -> Option<Map<String, Value>> {
        self.tools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(server.to_string(), tool.to_string()))
            .cloned()
    }

    /// The arguments `tool` mirrors into `Mcp-Param-*` headers, as last listed.
    pub fn mirrored(&self, server: &str, tool: &str) -> Option<crate::mcp::headers::Mirrored> {
        self.mirrored
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(server.to_string(), tool.to_string()))
            .cloned()
    }

    fn learn(&self, server: &str, tools: &[Value]) {
        {
            let mut m = self.mirrored.write().unwrap_or_else(|p| p.into_inner());
            for tool in tools {
                if let (Some(name), Ok(mirrored)) = (
                    tool["name"].as_str(),
                    crate::mcp::headers::mirrored(&tool["inputSchema"]),
                ) {
                    m.insert((server.to_string(), name.to_string()), mirrored);
                }
            }
        }
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

/// Hides the items of one listing `result` the principal may not use; returns how many.
pub fn filter_listing(method: &str, result: &mut Value, view: &View) -> usize {
    let Some((field, key, call)) = listing(method) else {
        return 0;
    };
    let Some(items) = result.get_mut(field).and_then(Value::as_array_mut) else {
        return 0;
    };
    if method == "tools/list" {
        view.catalog.learn(view.server, items);
    }
    let before = items.len();
    items.retain(|item| {
        let Some(name) = item[key].as_str() else {
            return false;
        };
        // A tool whose header declarations are invalid is dropped, as the 2026-07-28
        // revision asks of clients: its calls' headers could never be checked.
        if method == "tools/list" && !view.policy.observing() {
            if let Err(why) = crate::mcp::headers::mirrored(&item["inputSchema"]) {
                tracing::info!(server = view.server, tool = name, reason = %why,
                    "tool with invalid x-mcp-header declarations hidden");
                return false;
            }
        }
        view.policy.visible(
            view.principal,
            view.server,
            call,
            name,
            item["annotations"].as_object(),
        )
    });
    before - items.len()
}
