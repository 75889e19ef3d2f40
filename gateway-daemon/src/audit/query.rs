//! `mcp-gateway audit show|tail`: records from every ledger file, filtered.

use std::path::PathBuf;

use serde_json::Value;

/// What a record must match; every given filter must hold.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Substring of the principal's user, uid, executable or unit.
    pub principal: Option<String>,
    pub server: Option<String>,
    /// Tool (or prompt, resource) name.
    pub tool: Option<String>,
    /// The outcome (ok, error, refused, ...).
    pub decision: Option<String>,
    /// Record type (mcp, mcp_call, flow, checkpoint, ...).
    pub kind: Option<String>,
    /// A connection's id: its flow, the exchanges that came or were answered on it, the
    /// approvals of its calls.
    pub connection: Option<String>,
    /// RFC 3339 bounds, inclusive.
    pub since: Option<String>,
    pub until: Option<String>,
}

fn principal_of(r: &Value) -> &Value {
    if r["principal"].is_object() {
        &r["principal"]
    } else {
        &r["identity"]
    }
}

impl Filter {
    pub fn matches(&self, r: &Value) -> bool {
        let s = |k: &str| r[k].as_str().unwrap_or("");
        if let Some(p) = &self.principal {
            let pr = principal_of(r);
            let hit = ["user", "exe", "unit", "cgroup"]
                .iter()
                .any(|k| pr[*k].as_str().is_some_and(|v| v.contains(p.as_str())))
                || pr["uid"].as_u64().is_some_and(|u| u.to_string() == *p);
            if !hit {
                return false;
            }
        }
        let exact = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        if let Some(c) = &self.connection {
            let on = [
                &r["connection"],
                &r["answered_on"],
                &r["call"]["connection"],
            ];
            if !on.iter().any(|v| v.as_str() == Some(c.as_str())) {
                return false;
            }
        }
        // Times are RFC 3339 UTC with a fixed width, so they compare as text.
        exact(&self.server, s("server"))
            && exact(&self.tool, s("name"))
            && exact(&self.decision, s("outcome"))
            && exact(&self.kind, s("type"))
            && self.since.as_deref().is_none_or(|t| s("time") >= t)
            && self.until.as_deref().is_none_or(|t| s("time") <= t)
    }
}

/// Matching records of `files`, in order; lines that are not JSON are skipped (verify is
/// the tool that reports them).
pub fn select(files: &[PathBuf], filter: &Filter) -> std::io::Result<Vec<Value>> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)?;
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if filter.matches(&v) {
                    out.push(v);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_connection_is_followed_through_every_record_that_names_it() {
        let by = |c: &str| Filter {
            connection: Some(c.into()),
            ..Default::default()
        };
        let flow = json!({"type":"flow","connection":"ab12cd34-7"});
        let answered = json!({"type":"mcp","connection":"ab12cd34-6","answered_on":"ab12cd34-7"});
        let approval = json!({"type":"approval","call":{"connection":"ab12cd34-7"}});
        let other = json!({"type":"mcp","connection":"ab12cd34-70"});
        for r in [&flow, &answered, &approval] {
            assert!(by("ab12cd34-7").matches(r), "{r}");
        }
        assert!(!by("ab12cd34-7").matches(&other));
        assert!(!by("ab12cd34-7").matches(&json!({"type":"checkpoint"})));
        assert!(by("ab12cd34-6").matches(&answered));
    }

    #[test]
    fn filters_combine() {
        let r = json!({"type":"mcp","time":"2026-11-24T10:00:00.000000Z","server":"gh",
            "name":"search","outcome":"refused",
            "principal":{"uid":1500,"user":"agent","exe":"/usr/bin/node"}});
        let f = |f: Filter| f.matches(&r);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            principal: Some("node".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            principal: Some("1500".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            principal: Some("python".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            server: Some("gh".into()),
            tool: Some("search".into()),
            decision: Some("refused".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            decision: Some("ok".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            since: Some("2026-11-24T09:00:00Z".into()),
            until: Some("2026-11-24T11:00:00Z".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            since: Some("2026-11-24T10:00:01Z".into()),
            ..Default::default()
        }));
        let flow = json!({"type":"flow","identity":{"uid":7,"exe":"/usr/bin/curl"}});
        assert!(Filter {
            principal: Some("curl".into()),
            ..Default::default()
        }
        .matches(&flow));
    }
}
