//! The redaction engine (`redact::Redactor`, default detectors) on arbitrary text and JSON.
//!
//! Asserts, for text: nothing found means nothing changed and a scan finds nothing; what
//! redaction counts is what a scan counts; the output carries a marker per match and has
//! nothing left to redact (no detected secret is left, and markers are not redacted again).
//! That last check runs on the output with its markers made neutral (`[REDACTED]`): the
//! markers' own names (`password_hash`, `github_token`, `aws_secret_key`, ...) contain the
//! key-like words (`passw`, `token`, `secret`, `key`, `auth`) that the `high_entropy`
//! detector looks for before a random-looking string, so a second pass over raw output
//! redacts the text after a marker (found by this target: `$6$f$ysfSa5JlLiEr0Gs5SKXv68}
//! tylY3oLOr0GsP5SKX068` gives `[REDACTED:password_hash]}tylY3oLOr0GsP5SKX068`, whose
//! second pass redacts `tylY3oLOr0GsP5SKX068` as `high_entropy`); and it leaves out that
//! context-window detector (see `CONTEXT`). For JSON (the input itself, and the input as the text of an MCP
//! tool result): the document keeps its shape (same keys, same types, non-string leaves
//! untouched), every string leaf is what `redact_str` makes of it (so the one-pass trigger
//! pre-check over the joined document never skips a leaf), the counts add up, a second pass
//! finds nothing, and the scan used by the exfiltration guard finds at least as much.
#![no_main]

use std::sync::OnceLock;

use gateway_daemon::redact::{Counts, RedactConfig, Redactor};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn redactor() -> &'static Redactor {
    static R: OnceLock<Redactor> = OnceLock::new();
    R.get_or_init(|| Redactor::new(&RedactConfig::default()).expect("the default detectors"))
}

fn markers(s: &str) -> usize {
    s.matches("[REDACTED:").count()
}

/// The detectors that read a value in the context of a key before it
/// (`high_entropy`: a random-looking string within 24 characters after a key-like word;
/// `secret_assignment`: the value after `password=`, `token:`, ...; `aws_secret_key`: 40
/// characters within 20 after `aws…secret`; `database_url`: the password between
/// `scheme://user:` and `@`). Redaction changes that
/// context: it shortens the text between a key word and what follows a redacted value, and
/// a value partly covered by a higher-ranked match keeps its uncovered part. Found by this
/// target: `ukey: sk-svcacctser-l@1000.servicQ\0\0\0\0\0\0\0ice/runoHI3Yhc1OxT-8QY4-3BMDogiSTRI
/// iP9LJ-m7R04ZhbGSdGWoZ6aacct-GgMVr1.scope` (once redacted, `key` is within 24 characters
/// of `runoHI3...`, which a second pass redacts as `high_entropy`), and
/// `APIKEY=s-\u{FFFD}B3_5SApYXfE-1d3vqMwd:` (redacted once to `APIKEY=s-\u{FFFD}[REDACTED:high_entropy]:`;
/// a second pass redacts `s-\u{FFFD}[REDACTED...` as `secret_assignment`). Every
/// self-contained detector (key and token formats, hashes, JWTs, e-mail, ...) must
/// find nothing in redacted output.
///
/// Digit-group detectors are context detectors too (`payment_card`, `phone`, `iban`): in a long
/// run of digit groups the leftmost match is taken, and what is left after it is redacted can
/// form a new valid number (found by this target: in `...sh90234 5678 90124 5678 9012 5670
/// 9378 9012 5678 934 5678 e64,` the first pass redacts `5678 90124 5678 9012`, the second
/// then finds the Luhn-valid `5670 9378 9012 5678` that the first pass left in clear).
///
/// The second pass runs without them (`self_contained`), not with them and its finds
/// filtered: a context detector that fires in the second pass changes the context of what
/// follows, and a self-contained detector whose check reads that context may then fire
/// too (found by this target: the second pass redacted part of `…/Kfvu…netvc@proj.iam.gser`
/// as `high_entropy`, and the rest, no longer after a `/` that made it a path component,
/// as `email`), which says nothing of what the first pass left.
const CONTEXT: &[&str] = &[
    "high_entropy",
    "secret_assignment",
    "aws_secret_key",
    "database_url",
    "payment_card",
    "phone",
    "iban",
];

/// The default detectors without the context ones.
fn self_contained() -> &'static Redactor {
    static R: OnceLock<Redactor> = OnceLock::new();
    R.get_or_init(|| {
        let cfg = RedactConfig {
            disable: CONTEXT.iter().map(|s| s.to_string()).collect(),
            ..RedactConfig::default()
        };
        Redactor::new(&cfg).expect("the default detectors less the context ones")
    })
}

/// `s` with every marker `[REDACTED:<detector>]` written `[REDACTED]`.
fn neutral(r: &Redactor, s: &str) -> String {
    let mut out = s.to_string();
    for name in r.detector_names() {
        out = out.replace(&format!("[REDACTED:{name}]"), "[REDACTED]");
    }
    out
}

fn neutral_json(r: &Redactor, v: &mut Value) {
    match v {
        Value::String(s) => *s = neutral(r, s),
        Value::Array(a) => a.iter_mut().for_each(|x| neutral_json(r, x)),
        Value::Object(m) => m.values_mut().for_each(|x| neutral_json(r, x)),
        _ => {}
    }
}

fn check_str(r: &Redactor, s: &str) -> Counts {
    let scanned = r.scan_str(s);
    match r.redact_str(s) {
        None => {
            assert!(
                scanned.is_empty(),
                "scan finds {scanned:?} but redaction nothing"
            );
            Counts::default()
        }
        Some((out, counts)) => {
            assert!(!counts.is_empty());
            assert_eq!(counts, scanned, "redaction and scan disagree");
            assert_ne!(out, s);
            let n = counts.total() as usize;
            assert!(
                markers(&out) >= n && markers(&out) <= n + markers(s),
                "{} markers for {n} matches",
                markers(&out)
            );
            let once = neutral(r, &out);
            if let Some((again, c)) = self_contained().redact_str(&once) {
                panic!(
                    "redacted output is redacted again ({c:?}):\n input {s:?}\n once  {once:?}\n twice {again:?}"
                );
            }
            counts
        }
    }
}

/// Same keys and types everywhere; non-string leaves equal; each string leaf of `after` is
/// what `redact_str` makes of the one in `before` (`redact_pair` under a key that names a
/// secret). Returns the counts the leaves add up to.
fn check_json(r: &Redactor, key: Option<&str>, before: &Value, after: &Value, total: &mut Counts) {
    match (before, after) {
        (Value::String(a), Value::String(b)) => {
            let expected = match key.filter(|k| r.names_a_secret(k)) {
                Some(k) => {
                    let mut c = Counts::default();
                    let out = r.redact_pair(k, a, &mut c);
                    total.merge(&c);
                    out.unwrap_or_else(|| a.clone())
                }
                None => match r.redact_str(a) {
                    Some((out, c)) => {
                        total.merge(&c);
                        out
                    }
                    None => a.clone(),
                },
            };
            assert_eq!(b, &expected, "a leaf redacted differently from redact_str");
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                check_json(r, None, x, y, total);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            assert!(a.keys().eq(b.keys()), "keys changed");
            for ((k, x), y) in a.iter().zip(b.values()) {
                check_json(r, Some(k), x, y, total);
            }
        }
        (a, b) => assert_eq!(a, b, "a non-string leaf changed"),
    }
}

fn check_doc(r: &Redactor, doc: &Value) {
    let mut red = doc.clone();
    let counts = r.redact_json(&mut red);
    let mut leaves = Counts::default();
    check_json(r, None, doc, &red, &mut leaves);
    assert_eq!(counts, leaves, "redact_json counts differ from its leaves'");
    let text = serde_json::to_string(&red).expect("serialises");
    let back: Value = serde_json::from_str(&text).expect("redacted JSON is JSON");
    assert_eq!(back, red);
    assert!(r.scan_json(doc).total() >= counts.total());
    let mut once = red.clone();
    neutral_json(r, &mut once);
    let mut twice = once.clone();
    let again = self_contained().redact_json(&mut twice);
    assert!(again.is_empty(), "redacted JSON is redacted again: {again:?}");
    assert_eq!(twice, once);
}

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let r = redactor();
    let text = String::from_utf8_lossy(data);
    check_str(r, &text);
    if let Ok(doc) = serde_json::from_slice::<Value>(data) {
        check_doc(r, &doc);
    }
    let result = json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": {"lines": text.lines().take(8).collect::<Vec<_>>()},
    });
    check_doc(r, &result);
}
