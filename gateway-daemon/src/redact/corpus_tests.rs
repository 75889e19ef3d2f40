//! The detector corpus (`tests/fixtures/redaction/*.toml`): every positive sample must be
//! caught by its expected detector (and its secret gone from the output), and no negative
//! sample may be flagged by any detector. Prints recall and false positives per detector.

use std::collections::BTreeMap;
use std::path::PathBuf;

use regex::Regex;
use serde::Deserialize;

use super::detectors::BUILTINS;
use super::validate::Params;
use super::{RedactConfig, Redactor};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    sample: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sample {
    /// The detector that must fire, or "none".
    expect: String,
    /// For a positive: the text that must not survive redaction.
    secret: Option<String>,
    note: Option<String>,
    text: String,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/redaction")
}

/// (file stem, sample) for every sample of the corpus, checked for consistency.
fn load() -> Vec<(String, Sample)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("tests/fixtures/redaction exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut all = Vec::new();
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let corpus: Corpus =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for s in corpus.sample {
            if s.expect == "none" {
                assert!(
                    s.secret.is_none(),
                    "{stem}: a negative has no secret: {s:?}"
                );
            } else {
                assert_eq!(
                    s.expect, stem,
                    "{stem}.toml holds positives for {stem} only"
                );
                let secret = s.secret.as_deref().expect("a positive names its secret");
                assert!(s.text.contains(secret), "{stem}: secret not in text: {s:?}");
            }
            all.push((stem.clone(), s));
        }
    }
    all
}

#[derive(Default)]
struct Row {
    positives: u32,
    caught: u32,
    negatives: u32,
    /// Negatives (from any file) this detector fired on.
    false_positives: u32,
}

#[test]
fn corpus_recall_and_false_positives() {
    let r = Redactor::new(&RedactConfig::default()).unwrap();
    let samples = load();
    let mut rows: BTreeMap<String, Row> = BUILTINS
        .iter()
        .map(|b| (b.name.to_string(), Row::default()))
        .collect();
    let mut failures = Vec::new();
    for (file, s) in &samples {
        let out = r.redact_str(&s.text);
        if s.expect == "none" {
            if let Some(row) = rows.get_mut(file) {
                row.negatives += 1;
            }
            if let Some((redacted, counts)) = out {
                for (det, _) in counts.iter() {
                    rows.entry(det.to_string()).or_default().false_positives += 1;
                }
                failures.push(format!(
                    "{file}: negative flagged ({}) by {}: {:?} -> {:?}",
                    s.note.as_deref().unwrap_or(""),
                    serde_json::to_string(&counts).unwrap(),
                    s.text,
                    redacted
                ));
            }
        } else {
            let row = rows.entry(s.expect.clone()).or_default();
            row.positives += 1;
            let secret = s.secret.as_deref().unwrap();
            let marker = format!("[REDACTED:{}]", s.expect);
            match out {
                Some((redacted, counts))
                    if counts.get(&s.expect) > 0
                        && redacted.contains(&marker)
                        && !redacted.contains(secret) =>
                {
                    row.caught += 1
                }
                other => failures.push(format!(
                    "{file}: positive missed ({}): {:?} -> {:?}",
                    s.note.as_deref().unwrap_or(""),
                    s.text,
                    other
                )),
            }
        }
    }
    println!(
        "\n{:<20} {:>9} {:>7} {:>8} {:>10} {:>6}",
        "detector", "positives", "caught", "recall", "negatives", "FP"
    );
    for (name, row) in &rows {
        let recall = if row.positives == 0 {
            0.0
        } else {
            100.0 * f64::from(row.caught) / f64::from(row.positives)
        };
        println!(
            "{name:<20} {:>9} {:>7} {:>7.1}% {:>10} {:>6}",
            row.positives, row.caught, recall, row.negatives, row.false_positives
        );
    }
    let negatives_total = samples.iter().filter(|(_, s)| s.expect == "none").count();
    println!(
        "{} samples, {negatives_total} negatives (FP counts a negative from any file)",
        samples.len()
    );
    // The bar: every built-in detector has samples both ways, all caught, none flagged.
    for b in BUILTINS {
        let row = &rows[b.name];
        assert!(
            row.positives >= 2 && row.negatives >= 1,
            "corpus too thin for {}: {} positives, {} negatives",
            b.name,
            row.positives,
            row.negatives
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The one-pass set is built from triggers; a detector only runs when its trigger fired. So
/// wherever a detector's pattern finds a match its validator accepts, its trigger must match
/// too — checked here on every corpus text.
#[test]
fn triggers_cover_patterns() {
    let params = Params {
        entropy_threshold: RedactConfig::default().entropy_threshold,
        entropy_min_length: RedactConfig::default().entropy_min_length,
    };
    let samples = load();
    for b in BUILTINS {
        let pattern = Regex::new(b.pattern).unwrap();
        let trigger = Regex::new(b.trigger).unwrap();
        for (_, s) in &samples {
            let text = &s.text;
            let valid = pattern.captures_iter(text).any(|caps| {
                let whole = caps.get(0).unwrap().range();
                let part = caps.iter().skip(1).flatten().next();
                let span = part.map_or(whole.clone(), |m| m.range());
                b.check.run(text, whole, span, &params).is_some()
            });
            if valid {
                assert!(
                    trigger.is_match(text),
                    "{}: pattern matches but trigger does not: {text:?}",
                    b.name
                );
            }
        }
    }
}

/// `might_redact_json_text` says "no" only where `redact_json` changes nothing: every
/// sample of the corpus, as the text of a tool result (and as an error's message), is
/// either flagged from the JSON text or left alone by redaction.
#[test]
fn the_text_check_never_passes_what_redaction_would_change() {
    let r = Redactor::new(&RedactConfig::default()).unwrap();
    let (mut flagged, mut plain) = (0, 0);
    for (stem, s) in load() {
        for doc in [
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [
                {"type": "text", "text": s.text}], "isError": false}}),
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": s.text}}),
        ] {
            let text = serde_json::to_vec(&doc).unwrap();
            let mut redacted = doc.clone();
            let changed = !r.redact_json(&mut redacted).is_empty();
            if r.might_redact_json_text(&text) {
                flagged += 1;
            } else {
                plain += 1;
                assert!(
                    !changed,
                    "{stem}: {:?} passed the text check and redaction changed it",
                    s.text
                );
            }
        }
    }
    // Both answers are exercised: the check is not "always read".
    assert!(flagged > 0 && plain > 0, "{flagged} flagged, {plain} plain");
}
