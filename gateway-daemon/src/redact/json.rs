//! Redaction over a JSON value: every string leaf, walked without recursion (a value built
//! in memory can be deeper than any parser would allow).

use serde_json::Value;

use super::{Counts, Redactor};

/// The string leaves (and, for a scan, keys) joined by `\n\0\n`: one trigger pass over the
/// whole document instead of one per leaf. Sound as a pre-check: every trigger that matches
/// in a leaf matches in the joined text (the separator is a non-word character, like the
/// start and end of a string, and multi-line `^`/`$` match beside it); one that matches only
/// across a separator just sends the document down the per-leaf path. With a trigger
/// anchored to the whole text, which no joined text shows at every leaf, there is no
/// pre-check: each leaf is checked alone.
pub(super) fn any_trigger(r: &Redactor, v: &Value, keys: bool) -> bool {
    let Some(triggers) = r.joined_triggers() else {
        return true;
    };
    let mut joined = String::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                joined.push_str(s);
                joined.push_str("\n\0\n");
            }
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                for (k, v) in map {
                    if keys {
                        joined.push_str(k);
                        joined.push_str("\n\0\n");
                    }
                    if let (Value::String(s), true) = (v, r.names_a_secret(k)) {
                        joined.push_str(k);
                        joined.push_str(": ");
                        joined.push_str(s);
                        joined.push_str("\n\0\n");
                    }
                    stack.push(v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    triggers.is_match(&joined)
}

pub(super) fn redact(r: &Redactor, v: &mut Value) -> Counts {
    let mut counts = Counts::default();
    if !any_trigger(r, v, false) {
        return counts;
    }
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                if let Some(new) = r.redact_into(s, &mut counts) {
                    *s = new;
                }
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match v {
                        Value::String(s) if r.names_a_secret(k) => {
                            if let Some(new) = r.redact_pair(k, s, &mut counts) {
                                *s = new;
                            }
                        }
                        v => stack.push(v),
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    counts
}

pub(super) fn scan(r: &Redactor, v: &Value) -> Counts {
    let mut counts = Counts::default();
    if !any_trigger(r, v, true) {
        return counts;
    }
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => r.scan_into(s, &mut counts),
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                for (k, v) in map {
                    r.scan_into(k, &mut counts);
                    match v {
                        Value::String(s) if r.names_a_secret(k) => r.scan_pair(k, s, &mut counts),
                        v => stack.push(v),
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    counts
}

pub(super) fn scan_keys(r: &Redactor, v: &Value) -> Counts {
    let mut counts = Counts::default();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                for (k, v) in map {
                    r.scan_into(k, &mut counts);
                    stack.push(v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
    }
    counts
}
