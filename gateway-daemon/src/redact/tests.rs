use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

/// The default redactor, built once (compiling the detectors is slow in debug builds).
fn default() -> &'static Redactor {
    static R: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
    R.get_or_init(|| Redactor::new(&RedactConfig::default()).unwrap())
}

fn with(toml_table: &str) -> Result<Redactor, RedactError> {
    let cfg: RedactConfig = toml::from_str(toml_table).expect("test config parses");
    Redactor::new(&cfg)
}

fn config_error(toml_table: &str) -> String {
    with(toml_table)
        .expect_err("config must be refused")
        .to_string()
}

const AWS_KEY: &str = "AKIAQX3TZLMB7NRWK2EH";
const GH_TOKEN: &str = "ghp_R8kQ2vLx7NpT4mWc9ZbYh3JdFs6GaE1oUi5K";
const BCRYPT: &str = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
const CARD: &str = "4111 1111 1111 1111";

#[test]
fn redactor_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Redactor>();
}

// --- validators

#[test]
fn luhn_accepts_valid_and_rejects_one_digit_off() {
    let d = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
    for ok in [
        "4111111111111111",
        "378282246310005",
        "6011111111111117",
        "79927398713",
    ] {
        assert!(luhn(&d(ok)), "{ok}");
    }
    for bad in [
        "4111111111111112",
        "378282246310006",
        "79927398710",
        "0",
        "",
    ] {
        assert!(!luhn(&d(bad)), "{bad}");
    }
}

#[test]
fn mod97_matches_the_iban_check() {
    // DE89 3704 0044 0532 0130 00, rearranged: BBAN then country and check digits.
    assert_eq!(mod97("370400440532013000DE89".chars()), Some(1));
    assert_eq!(mod97("370400440532013000DE88".chars()), Some(0));
    assert_eq!(mod97("".chars()), None);
    assert_eq!(mod97("12-34".chars()), None, "only alphanumerics");
    assert_eq!(mod97("98".chars()), Some(1));
}

#[test]
fn shannon_entropy_in_bits_per_character() {
    assert_eq!(shannon_entropy(""), 0.0);
    assert_eq!(shannon_entropy("aaaaaaaa"), 0.0);
    assert!((shannon_entropy("abab") - 1.0).abs() < 1e-9);
    assert!((shannon_entropy("abcdefgh") - 3.0).abs() < 1e-9);
    assert!(
        (shannon_entropy("äöüß") - 2.0).abs() < 1e-9,
        "counts characters, not bytes"
    );
}

// --- redact_str

#[test]
fn nothing_to_redact_is_none() {
    let r = default();
    for s in [
        "",
        "hello world",
        "version 1.2.3 on 2024-03-11 from 10.0.0.1",
        "日本語のテキスト",
    ] {
        assert!(r.redact_str(s).is_none(), "{s:?}");
        assert!(r.scan_str(s).is_empty());
    }
}

#[test]
fn markers_name_the_detector_and_count_each_match() {
    let r = default();
    let s = format!("a {AWS_KEY} b {GH_TOKEN} c {AWS_KEY} d bob@corp.io");
    let (out, counts) = r.redact_str(&s).unwrap();
    assert_eq!(
        out,
        "a [REDACTED:aws_access_key_id] b [REDACTED:github_token] c [REDACTED:aws_access_key_id] d [REDACTED:email]"
    );
    assert_eq!(counts.get("aws_access_key_id"), 2);
    assert_eq!(counts.get("github_token"), 1);
    assert_eq!(counts.get("email"), 1);
    assert_eq!(counts.total(), 4);
    assert_eq!(
        serde_json::to_value(&counts).unwrap(),
        json!({"aws_access_key_id": 2, "email": 1, "github_token": 1})
    );
    assert_eq!(r.scan_str(&s), counts, "scan finds what redaction replaces");
}

#[test]
fn unicode_around_matches_is_kept_intact() {
    let r = default();
    let s = format!("Schlüssel→{AWS_KEY}←ß 🙂 Jörg <jörg.x@firma.de> ok");
    let (out, _) = r.redact_str(&s).unwrap();
    assert_eq!(
        out,
        "Schlüssel→[REDACTED:aws_access_key_id]←ß 🙂 Jörg <[REDACTED:email]> ok"
    );
}

#[test]
fn only_the_value_of_an_assignment_or_url_password_is_replaced() {
    let r = default();
    let (out, _) = r.redact_str("DB_PASSWORD=hunter22 and host=db1").unwrap();
    assert_eq!(out, "DB_PASSWORD=[REDACTED:secret_assignment] and host=db1");
    let (out, _) = r
        .redact_str("postgres://app:s3cr3t@db.internal:5432/app")
        .unwrap();
    assert_eq!(
        out,
        "postgres://app:[REDACTED:database_url]@db.internal:5432/app"
    );
}

#[test]
fn overlapping_matches_are_replaced_once_by_the_most_specific() {
    let r = default();
    // secret_assignment, high_entropy and github_token all cover the token.
    let (out, counts) = r.redact_str(&format!("token: {GH_TOKEN}")).unwrap();
    assert_eq!(out, "token: [REDACTED:github_token]");
    assert_eq!(counts.total(), 1);
    // anthropic_key and openai_key both match an sk-ant- key.
    let key = format!("sk-ant-api03-{}AA", "Ab3".repeat(31));
    let (out, _) = r.redact_str(&format!("key {key}")).unwrap();
    assert_eq!(out, "key [REDACTED:anthropic_key]");
    // The e-mail-looking part of a URL with a password is not an e-mail.
    let (out, counts) = r
        .redact_str("mysql://root:pw42x@mail.example.org/db")
        .unwrap();
    assert_eq!(
        out,
        "mysql://root:[REDACTED:database_url]@mail.example.org/db"
    );
    assert_eq!(counts.total(), 1);
}

#[test]
fn a_private_key_is_one_match_whatever_it_contains() {
    let r = default();
    let body = format!("{AWS_KEY}\nMIIEowIBAAKCAQEA7bq+abc/def==\n");
    let s = format!("x\n-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\ny");
    let (out, counts) = r.redact_str(&s).unwrap();
    assert_eq!(out, "x\n[REDACTED:private_key]\ny");
    assert_eq!(counts.total(), 1);
}

#[test]
fn redacted_output_has_nothing_left_to_redact() {
    let r = default();
    let s = format!(
        "password=\"Tr0ub4dor&3\" {AWS_KEY} {BCRYPT} {CARD} alice@corp.io +44 20 7946 0958 \
         aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    );
    let (out, counts) = r.redact_str(&s).unwrap();
    assert_eq!(counts.total(), 7, "{out}");
    assert!(
        r.redact_str(&out).is_none(),
        "markers are not redacted again: {out}"
    );
}

// --- JSON

#[test]
fn redact_json_keeps_every_type_and_leaves_keys_alone() {
    let r = default();
    let mut v = json!({
        "content": [{"type": "text", "text": format!("key {AWS_KEY}")}],
        "structuredContent": {
            "user": {"email": "carol@corp.io", "age": 41, "admin": false, "note": null},
            "hashes": [BCRYPT, 7, 1.5, true],
            AWS_KEY: "key stays a key",
            "card_as_number": 4111111111111111u64,
            "card_as_string": CARD,
        }
    });
    let counts = r.redact_json(&mut v);
    assert_eq!(
        v,
        json!({
            "content": [{"type": "text", "text": "key [REDACTED:aws_access_key_id]"}],
            "structuredContent": {
                "user": {"email": "[REDACTED:email]", "age": 41, "admin": false, "note": null},
                "hashes": ["[REDACTED:password_hash]", 7, 1.5, true],
                AWS_KEY: "key stays a key",
                "card_as_number": 4111111111111111u64,
                "card_as_string": "[REDACTED:payment_card]",
            }
        })
    );
    assert_eq!(
        serde_json::to_value(&counts).unwrap(),
        json!({"aws_access_key_id": 1, "email": 1, "password_hash": 1, "payment_card": 1})
    );
}

#[test]
fn scan_json_changes_nothing_and_also_looks_at_keys() {
    let r = default();
    let v =
        json!({"arguments": {"note": format!("{GH_TOKEN}"), AWS_KEY: 1, "n": 4111111111111111u64}});
    let before = v.clone();
    let counts = r.scan_json(&v);
    assert_eq!(v, before);
    assert_eq!(
        serde_json::to_value(&counts).unwrap(),
        json!({"aws_access_key_id": 1, "github_token": 1})
    );
    assert!(r
        .scan_json(&json!({"a": ["plain", 1, {"b": "text"}]}))
        .is_empty());
}

#[test]
fn redact_json_without_secrets_changes_nothing() {
    let r = default();
    let mut v = json!({"a": ["plain text", 1, {"b": "2024-03-11 v1.2.3"}], "c": "ok"});
    let before = v.clone();
    assert!(r.redact_json(&mut v).is_empty());
    assert_eq!(v, before);
}

#[test]
fn deep_json_does_not_overflow_the_stack() {
    let r = default();
    let mut v = json!(format!("{AWS_KEY}"));
    for _ in 0..100_000 {
        v = Value::Array(vec![v]);
    }
    assert_eq!(r.scan_json(&v).get("aws_access_key_id"), 1);
    assert_eq!(r.redact_json(&mut v).get("aws_access_key_id"), 1);
    // Dropping a deep Value recurses in serde_json; unwind it by hand.
    while let Value::Array(mut a) = v {
        v = a.pop().unwrap_or(Value::Null);
    }
}

// --- configuration

#[test]
fn allow_list_values_and_patterns_are_never_redacted() {
    let r = with(
        r#"
        allow = ["AKIAIOSFODNN7EXAMPLE"]
        allow_patterns = ['[a-z.]+@corp\.io']
        "#,
    )
    .unwrap();
    assert!(r
        .redact_str("aws_access_key_id = AKIAIOSFODNN7EXAMPLE")
        .is_none());
    assert!(
        r.redact_str("password=AKIAIOSFODNN7EXAMPLE").is_none(),
        "any detector"
    );
    assert!(r.redact_str("ask support@corp.io").is_none());
    // Patterns must match the whole value.
    let (out, _) = r.redact_str("ask support@corp.io.evil.net").unwrap();
    assert_eq!(out, "ask [REDACTED:email]");
    let (out, _) = r
        .redact_str(&format!("{AWS_KEY} AKIAIOSFODNN7EXAMPLE"))
        .unwrap();
    assert_eq!(out, "[REDACTED:aws_access_key_id] AKIAIOSFODNN7EXAMPLE");
}

#[test]
fn disabled_detectors_do_not_run() {
    let r = with(r#"disable = ["phone", "email"]"#).unwrap();
    assert!(!r.detector_names().contains(&"phone"));
    assert!(!r.detector_names().contains(&"email"));
    assert!(r.detector_names().contains(&"iban"));
    assert!(r
        .redact_str("call +44 20 7946 0958 or alice@corp.io")
        .is_none());
    assert!(default().redact_str("call +44 20 7946 0958").is_some());
}

#[test]
fn custom_detectors_with_groups_and_validators() {
    let r = with(
        r#"
        [[custom]]
        name = "us_ssn"
        pattern = '\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b'

        [[custom]]
        name = "ca_sin"
        pattern = '\bSIN:? ?([0-9]{3} [0-9]{3} [0-9]{3})\b'
        validator = "luhn"

        [[custom]]
        name = "internal_token"
        pattern = 'itk_[a-z0-9]{16}'
        "#,
    )
    .unwrap();
    let names = r.detector_names();
    assert_eq!(
        &names[names.len() - 3..],
        &["us_ssn", "ca_sin", "internal_token"]
    );
    let (out, counts) = r
        .redact_str("ssn 123-45-6789, SIN 046 454 286, SIN 046 454 287, itk_0123456789abcdef")
        .unwrap();
    assert_eq!(
        out,
        "ssn [REDACTED:us_ssn], SIN [REDACTED:ca_sin], SIN 046 454 287, [REDACTED:internal_token]"
    );
    assert_eq!(counts.total(), 3);
}

#[test]
fn config_errors_name_the_key() {
    let e = config_error(
        r#"
        [[custom]]
        name = "a"
        pattern = "a+"
        [[custom]]
        name = "b"
        pattern = "b+"
        [[custom]]
        name = "c"
        pattern = "(unclosed"
        "#,
    );
    assert!(
        e.starts_with("redact.custom[2].pattern: invalid regex: "),
        "{e}"
    );
    let e = config_error(r#"disable = ["email", "phon"]"#);
    assert!(
        e.starts_with("redact.disable[1]: no built-in detector \"phon\""),
        "{e}"
    );
    assert!(e.contains("phone"), "lists the names: {e}");
    let e = config_error("[[custom]]\nname = \"Bad Name\"\npattern = \"x\"");
    assert!(e.starts_with("redact.custom[0].name: "), "{e}");
    let e = config_error("[[custom]]\nname = \"email\"\npattern = \"x\"");
    assert!(
        e.starts_with("redact.custom[0].name: \"email\" is a built-in"),
        "{e}"
    );
    let e = config_error(
        "[[custom]]\nname = \"x\"\npattern = \"x\"\n[[custom]]\nname = \"x\"\npattern = \"y\"",
    );
    assert!(e.starts_with("redact.custom[1].name: "), "{e}");
    let e = config_error("[[custom]]\nname = \"x\"\npattern = \"a*\"");
    assert!(
        e.starts_with("redact.custom[0].pattern: ") && e.contains("empty string"),
        "{e}"
    );
    let e = config_error(r#"allow_patterns = ["ok", "[z-a]"]"#);
    assert!(
        e.starts_with("redact.allow_patterns[1]: invalid regex"),
        "{e}"
    );
    let e = config_error("entropy_threshold = 9.5");
    assert!(e.starts_with("redact.entropy_threshold: "), "{e}");
    let e = config_error("entropy_min_length = 4");
    assert!(e.starts_with("redact.entropy_min_length: "), "{e}");
}

#[test]
fn config_parses_modes_and_refuses_unknown_keys() {
    let cfg: RedactConfig =
        toml::from_str("mode_requests = \"refuse\"\nmode_responses = \"off\"").unwrap();
    assert_eq!(cfg.mode_requests, RequestMode::Refuse);
    assert_eq!(cfg.mode_responses, ResponseMode::Off);
    assert_eq!(RedactConfig::default().mode_requests, RequestMode::Redact);
    let e = toml::from_str::<RedactConfig>("disabled = [\"phone\"]").unwrap_err();
    assert!(e.to_string().contains("disabled"), "{e}");
    let e = toml::from_str::<RedactConfig>("mode_requests = \"block\"").unwrap_err();
    assert!(e.to_string().contains("block"), "{e}");
    let e = toml::from_str::<RedactConfig>(
        "[[custom]]\nname = \"x\"\npattern = \"x\"\nvalidator = \"crc\"",
    )
    .unwrap_err();
    assert!(e.to_string().contains("crc"), "{e}");
}

#[test]
fn counts_merge_and_total() {
    let r = default();
    let (_, a) = r.redact_str(&format!("{AWS_KEY} x@corp.io")).unwrap();
    let (_, b) = r.redact_str("y@corp.io z@corp.io").unwrap();
    let mut m = Counts::default();
    assert!(m.is_empty());
    m.merge(&a);
    m.merge(&b);
    assert_eq!(m.get("email"), 3);
    assert_eq!(m.get("aws_access_key_id"), 1);
    assert_eq!(m.total(), 4);
    assert_eq!(
        m.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        ["aws_access_key_id", "email"]
    );
}

// --- properties

/// Secrets of several detectors, planted into random JSON.
const PLANTED: &[&str] = &[
    AWS_KEY,
    GH_TOKEN,
    BCRYPT,
    CARD,
    "DE89 3704 0044 0532 0130 00",
    "dana.w@corp.io",
    "+44 20 7946 0958",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----",
];

/// Filler that cannot glue onto a secret (the secret is set off by spaces), with unicode.
fn filler() -> impl Strategy<Value = String> {
    "[a-zA-Z ,.:;!?()\\[\\]{}\"'<>/\\\\éß漢🙂\n\t-]{0,24}"
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        filler().prop_map(Value::String),
        (filler(), 0..PLANTED.len(), filler())
            .prop_map(|(a, i, b)| Value::String(format!("{a} {} {b}", PLANTED[i]))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Same shape and same non-string leaves.
fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(_), Value::String(_)) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_shape(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && same_shape(v1, v2))
        }
        _ => a == b,
    }
}

fn string_leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| string_leaves(x, out)),
        Value::Object(m) => m.values().for_each(|x| string_leaves(x, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn redact_json_stays_valid_and_removes_planted_secrets(v in json_value()) {
        let r = default();
        let mut red = v.clone();
        let counts = r.redact_json(&mut red);
        let text = serde_json::to_string(&red).unwrap();
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&reparsed, &red);
        prop_assert!(same_shape(&v, &red));
        let mut leaves = Vec::new();
        string_leaves(&red, &mut leaves);
        for leaf in &leaves {
            for secret in PLANTED {
                prop_assert!(!leaf.contains(secret), "{:?} left in {:?}", secret, leaf);
            }
        }
        let mut planted = 0;
        let mut before = Vec::new();
        string_leaves(&v, &mut before);
        for leaf in &before {
            planted += PLANTED.iter().filter(|s| leaf.contains(*s)).count() as u64;
        }
        prop_assert!(counts.total() >= planted, "counts {:?} for {} planted", counts, planted);
        prop_assert_eq!(r.scan_json(&v).total() >= counts.total(), true);
    }

    #[test]
    fn redact_str_never_panics_and_none_means_unchanged(s in "\\PC{0,200}") {
        let r = default();
        match r.redact_str(&s) {
            None => prop_assert!(r.scan_str(&s).is_empty()),
            Some((out, counts)) => {
                prop_assert!(!counts.is_empty());
                prop_assert!(out.contains("[REDACTED:"));
            }
        }
    }
}

// --- findings of the redact fuzz target

#[test]
fn assignment_after_a_multibyte_character_does_not_panic() {
    let r = default();
    let (out, _) = r
        .redact_str("\u{FFFD}TOKEN=v8Kq2LxTzP9w")
        .expect("redacted");
    assert_eq!(out, "\u{FFFD}TOKEN=[REDACTED:secret_assignment]");
    let (out, _) = r.redact_str("“password=hunter2xyz”").expect("redacted");
    assert!(!out.contains("hunter2xyz"), "{out}");
}

#[test]
fn a_match_reaching_past_a_better_one_is_merged_not_left_in_clear() {
    let r = default();
    let s = "DATABASE_URL=postgres://app:Sup3r-S3cret@db.ret@db.internalpp";
    let (out, _) = r.redact_str(s).expect("redacted");
    assert!(!out.contains("Sup3r-S3cret"), "{out}");
    assert!(!out.contains("db.ret@db"), "{out}");
    // What is left has nothing more to redact.
    assert!(r.redact_str(&out).is_none(), "{out} redacted again");
}

const GOOGLE_KEY: &str = "AIzaSkpmKog5Qwp-vaQcT7xm2cwC6dT0ctPVnaa";

#[test]
fn keys_glued_together_are_each_redacted_not_left_for_a_second_pass() {
    // Found by the `redact` fuzz target: `\b` fails between the two keys, so one pass
    // found the first only, and the second stood in clear after its marker.
    let r = default();
    for n in 2..=3 {
        let s = format!("x&key={}", GOOGLE_KEY.repeat(n));
        let (out, counts) = r.redact_str(&s).expect("redacted");
        assert_eq!(
            out,
            format!("x&key={}", "[REDACTED:google_api_key]".repeat(n))
        );
        assert_eq!(counts.get("google_api_key"), n as u64, "{out}");
        assert_eq!(r.scan_str(&s), counts);
        assert!(r.redact_str(&out).is_none(), "{out} redacted again");
    }
}

#[test]
fn a_chain_of_glued_keys_is_redacted_key_by_key_up_to_the_rounds_then_to_the_end() {
    // Each key of the chain is found only once the one before is masked: a search each,
    // and one more to see that nothing follows.
    let r = default();
    let marker = "[REDACTED:google_api_key]";
    let s = format!("ids: {} tail", GOOGLE_KEY.repeat(ROUNDS));
    let (out, counts) = r.redact_str(&s).expect("redacted");
    assert_eq!(out, format!("ids: {} tail", marker.repeat(ROUNDS)));
    assert_eq!(counts.get("google_api_key"), ROUNDS as u64);
    // Longer: past `ROUNDS` searches again, the rest of the text is one redaction, not a
    // search per key.
    let s = format!("ids: {} tail", GOOGLE_KEY.repeat(ROUNDS + 4));
    let (out, counts) = r.redact_str(&s).expect("redacted");
    assert_eq!(out, format!("ids: {}", marker.repeat(ROUNDS + 1)));
    assert_eq!(counts.get("google_api_key"), ROUNDS as u64 + 1);
    assert_eq!(r.scan_str(&s), counts);
    assert!(r.redact_str(&out).is_none(), "{out} redacted again");
}

#[test]
fn a_find_of_a_later_search_that_reaches_into_an_earlier_one_is_merged_not_dropped() {
    // Found in review: the second search finds the assignment `token="…"` (its key word
    // no longer glued to the key before it) whose value, merged with the key glued after
    // the first one, overlaps that first one. Dropping it left the last key in clear.
    let key = format!("AIza{}", "b".repeat(35));
    let s = format!("{key}token=\"{key}{key}\"");
    let r = default();
    let (out, counts) = r.redact_str(&s).expect("redacted");
    assert!(!out.contains("AIza"), "{out}");
    assert_eq!(r.scan_str(&s), counts);
    let again = r.redact_str(&out).map(|(_, c)| c).unwrap_or_default();
    assert_eq!(
        again.get("google_api_key"),
        0,
        "{out} redacted again: {again:?}"
    );
}

#[test]
fn an_anchored_custom_detector_fires_on_a_leaf_anywhere_in_a_document() {
    // `^…$` names a whole string value; the one-pass pre-check over the joined leaves
    // must not hide one that is not first or last.
    let r = with(
        r#"
        [[custom]]
        name = "whole_token"
        pattern = '^tok_[a-z]{8}$'
        "#,
    )
    .unwrap();
    assert!(r.redact_str("tok_abcdefgh").is_some());
    let mut doc = serde_json::json!({"content": [
        {"type": "text", "text": "before"},
        {"type": "text", "text": "tok_abcdefgh"},
        {"type": "text", "text": "after"}
    ]});
    let counts = r.redact_json(&mut doc);
    assert_eq!(counts.get("whole_token"), 1, "{doc}");
    assert_eq!(doc["content"][1]["text"], "[REDACTED:whole_token]");
    let scan = serde_json::json!({"a": "x", "tok_abcdefgh": "y", "b": ["z", "tok_abcdefgh"]});
    assert_eq!(r.scan_json(&scan).get("whole_token"), 2);
    // Anchors to the whole text, which no joined text shows at every leaf.
    for pattern in [r"\Atok_[a-z]{8}\z", "(?-m)^tok_[a-z]{8}$"] {
        let r = with(&format!(
            "[[custom]]\nname = \"whole_token\"\npattern = '{pattern}'\n"
        ))
        .unwrap();
        let mut doc = serde_json::json!(["before", "tok_abcdefgh", "after"]);
        assert_eq!(r.redact_json(&mut doc).get("whole_token"), 1, "{pattern}");
        assert_eq!(
            r.scan_json(&doc).get("whole_token"),
            0,
            "{pattern}: redacted"
        );
    }
    // A CRLF line anchor does not match between a string's last `\r` and the separator.
    let crlf = with("[[custom]]\nname = \"cr\"\npattern = '(?Rm)tok\\r$'\n").unwrap();
    assert!(crlf.redact_str("tok\r").is_some());
    let mut doc = serde_json::json!(["before", "tok\r", "after"]);
    assert_eq!(crlf.redact_json(&mut doc).get("cr"), 1);
    // The built-ins need no such fallback: a document is still one pass.
    assert!(default().joined_triggers().is_some());
}

#[test]
fn the_text_check_reads_escapes_and_anchored_triggers_as_unknown() {
    let r = default();
    assert!(!r.might_redact_json_text(br#"{"id":1,"result":{"text":"hello"}}"#));
    // A string whose bytes are not its text: the key may be spelled with escapes.
    assert!(r.might_redact_json_text(br#"{"text":"\u0041KIAZ7QX3M2L5RT6PW4N"}"#));
    assert!(r.might_redact_json_text(br#"{"text":"a\nb"}"#));
    assert!(r.might_redact_json_text(br#"{"text":"AKIAZ7QX3M2L5RT6PW4N"}"#));
    // An anchored trigger cannot be told from the text: every text is read.
    let anchored = with("[[custom]]\nname = \"whole\"\npattern = '^tok_[a-z]{8}$'\n").unwrap();
    assert!(anchored.might_redact_json_text(br#"{"text":"hello"}"#));
}

#[test]
fn a_value_is_read_with_the_key_that_names_it_a_secret() {
    let r = default();
    let mut doc = serde_json::json!({
        "password": "Tr0ub4dor&3x",
        "api_key": "Xk29fjQ83hdk2LmZp0qR7sTu",
        "nested": [{"client_secret": "q8Vn3LzT0pW6yR2mK9sD4fH1"}],
        "description": "plain words",
        "token_count": 5,
        "bypass": "ordinary",
    });
    let counts = r.redact_json(&mut doc);
    assert_eq!(doc["password"], "[REDACTED:secret_assignment]", "{doc}");
    assert!(
        doc["api_key"].as_str().unwrap().starts_with("[REDACTED:"),
        "{doc}"
    );
    assert!(
        doc["nested"][0]["client_secret"]
            .as_str()
            .unwrap()
            .starts_with("[REDACTED:"),
        "{doc}"
    );
    assert_eq!(doc["description"], "plain words");
    assert_eq!(doc["bypass"], "ordinary");
    assert_eq!(counts.total(), 3, "{doc}");
    // Scanned alike (refuse), and the JSON text says it must be read.
    let sent = serde_json::json!({"arguments": {"password": "Tr0ub4dor&3x"}});
    assert_eq!(r.scan_json(&sent).get("secret_assignment"), 1);
    assert!(r.might_redact_json_text(sent.to_string().as_bytes()));
    // MCP's progress token is an id the client picks, not a secret.
    let meta = serde_json::json!({"_meta": {"progressToken": "Xk29fjQ83hdk2LmZp0qR7sTu"}});
    assert!(r.scan_json(&meta).is_empty(), "{:?}", r.scan_json(&meta));
    // A value that holds a secret of its own is redacted once.
    let mut doc = serde_json::json!({"token": "AKIAZ7QX3M2L5RT6PW4N"});
    assert_eq!(r.redact_json(&mut doc).total(), 1, "{doc}");
    assert!(
        doc["token"].as_str().unwrap().starts_with("[REDACTED:"),
        "{doc}"
    );
}
