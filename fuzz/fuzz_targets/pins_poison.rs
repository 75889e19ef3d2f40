//! Tool-poisoning checks (`pins::poison`) and the canonical form pins hash
//! (`pins::canonical`) on arbitrary JSON definitions.
//!
//! Asserts: `inspect` is bounded (at most `MAX_FINDINGS`, short fields and details) and
//! deterministic; every finding names a known check, points into the definition (a JSON
//! pointer), and is safe to log (its field and detail carry no invisible, bidi, terminal or
//! control character, which `inspect` itself would flag); a definition nested in an object
//! keeps its findings; the canonical form is JSON, a fixed point, and does not depend on
//! the order or spacing the server used; `shadowing` is symmetric, never fires within one
//! server, and always fires on equal names across servers.
#![no_main]

use gateway_daemon::pins::canonical::{canonical, digest};
use gateway_daemon::pins::poison::{self, Finding, MAX_FINDINGS};
use gateway_daemon::pins::Kind;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CHECKS: &[&str] = &[
    poison::INVISIBLE_CHARACTER,
    poison::BIDI_CONTROL,
    poison::TERMINAL_ESCAPE,
    poison::CONTROL_CHARACTER,
    poison::INSTRUCTION_TO_MODEL,
    poison::CREDENTIAL_REFERENCE,
    poison::SHADOWED_NAME,
];
const CHARACTER_CHECKS: &[&str] = &[
    poison::INVISIBLE_CHARACTER,
    poison::BIDI_CONTROL,
    poison::TERMINAL_ESCAPE,
    poison::CONTROL_CHARACTER,
];

/// Whether `inspect` would flag a character of `s`.
fn has_hidden_characters(s: &str) -> bool {
    poison::inspect(&Value::String(s.to_string()))
        .iter()
        .any(|f| CHARACTER_CHECKS.contains(&f.check.as_str()))
}

fn check_findings(def: &Value, findings: &[Finding]) {
    assert!(findings.len() <= MAX_FINDINGS);
    for f in findings {
        assert!(CHECKS.contains(&f.check.as_str()), "unknown check {f:?}");
        assert_ne!(
            f.check,
            poison::SHADOWED_NAME,
            "inspect does not know other servers"
        );
        assert!(
            f.field.is_empty() || f.field.starts_with('/'),
            "not a JSON pointer: {f:?}"
        );
        if !def.is_string() {
            assert!(
                !f.field.is_empty(),
                "a finding in a container points nowhere: {f:?}"
            );
        }
        assert!(
            f.field.chars().count() <= 513,
            "field too long: {}",
            f.field.len()
        );
        assert!(!f.detail.is_empty());
        assert!(
            f.detail.chars().count() <= 1024,
            "detail too long: {}",
            f.detail.len()
        );
        assert!(
            !has_hidden_characters(&f.field),
            "field unsafe to log: {f:?}"
        );
        assert!(
            !has_hidden_characters(&f.detail),
            "detail unsafe to log: {f:?}"
        );
    }
}

fn check_canonical(def: &Value) {
    for kind in [Kind::Tool, Kind::Prompt, Kind::ResourceTemplate] {
        let c = canonical(kind, def);
        let v: Value = serde_json::from_str(&c)
            .unwrap_or_else(|e| panic!("canonical form is not JSON ({e}): {c}"));
        assert_eq!(
            canonical(kind, &v),
            c,
            "canonical form is not a fixed point"
        );
        // The same definition as another server may write it: keys reversed, spaced out.
        let pretty = serde_json::to_string_pretty(def).expect("serialises");
        let respaced: Value = serde_json::from_str(&pretty).expect("parses");
        assert_eq!(digest(kind, &respaced), digest(kind, def));
        assert_eq!(digest(kind, &reversed(def)), digest(kind, def));
    }
}

/// `v` with every object's keys inserted in reverse order.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m.iter().rev() {
                out.insert(k.clone(), reversed(x));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

fn check_shadowing(a: &str, b: &str) {
    let ab = poison::shadowing("one", a, [("two", b)]).is_some();
    let ba = poison::shadowing("two", b, [("one", a)]).is_some();
    assert_eq!(ab, ba, "shadowing is not symmetric for {a:?} and {b:?}");
    assert!(poison::shadowing("one", a, [("one", b)]).is_none());
    let same = poison::shadowing("one", a, [("two", a)])
        .unwrap_or_else(|| panic!("{a:?} does not shadow itself on another server"));
    assert_eq!(same.check, poison::SHADOWED_NAME);
    assert_eq!(same.field, "/name");
    assert!(
        !has_hidden_characters(&same.detail),
        "detail unsafe to log: {same:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut names = text.splitn(3, '\n');
    let a = names.next().unwrap_or("");
    let b = names.next().unwrap_or("");
    check_shadowing(a, b);

    let as_text = Value::String(text.to_string());
    check_findings(&as_text, &poison::inspect(&as_text));

    let Ok(def) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let findings = poison::inspect(&def);
    assert_eq!(findings, poison::inspect(&def), "not deterministic");
    check_findings(&def, &findings);
    // Nested one level down, the same findings (up to the limit), under the new pointer.
    let nested = serde_json::json!({ "d": def });
    let deeper = poison::inspect(&nested);
    assert_eq!(deeper.len(), findings.len(), "nesting changed the findings");
    for (f, g) in findings.iter().zip(&deeper) {
        assert_eq!((&f.check, &f.detail), (&g.check, &g.detail));
        assert!(g.field.starts_with("/d"), "{g:?}");
    }
    check_canonical(&def);
});
