//! The property of issue 16: whenever the gateway would forward a `tools/call`, the method,
//! name and arguments it decided the call on are what a last-wins JSON reader (serde_json
//! `Value`, like the servers' parsers) reads from the same bytes. Bodies are written as
//! text, so members repeat, strings are escaped and values have the wrong types.

use proptest::prelude::*;
use serde_json::Value;

use super::exchange::routing_name;
use super::jsonrpc::{self, Parsed};
use super::MAX_DEPTH;

fn one_of(items: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(items).prop_map(str::to_string).boxed()
}

fn method() -> BoxedStrategy<String> {
    prop_oneof![
        3 => one_of(&[r#""tools/call""#, r#""tools\/call""#, r#""tools\u002fcall""#]),
        1 => one_of(&[
        r#""tools/call""#,
        r#""tools\/call""#,
        r#""tools\u002fcall""#,
        r#""tools/list""#,
        r#""Tools/call""#,
        r#""prompts/get""#,
        r#"1"#,
        r#"null"#,
    ]),
    ]
    .boxed()
}

fn name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => one_of(&[r#""delete_all""#, r#""delete\u005fall""#, r#""\u0065cho""#]),
        1 => one_of(&[
        r#""delete_all""#,
        r#""delete\u005fall""#,
        r#""echo""#,
        r#""\u0065cho""#,
        r#""""#,
        r#"1"#,
        r#"null"#,
        r#"true"#,
        r#"["echo"]"#,
        r#"{"n":"echo"}"#,
    ]),
    ]
    .boxed()
}

fn arguments() -> BoxedStrategy<String> {
    one_of(&[
        r#"{}"#,
        r#"{"path":"/tmp"}"#,
        r#"{"path":"/etc/passwd","path":"/tmp"}"#,
        r#"{"p\u0061th":"/etc/passwd","path":"/tmp"}"#,
        r#"{"a":{"b":1,"b":[1,2]}}"#,
        r#"{"s":"x\u0000y\ud83d\ude00"}"#,
        r#"[]"#,
        r#"null"#,
        r#""text""#,
        r#"1e5"#,
    ])
}

fn meta() -> BoxedStrategy<String> {
    one_of(&[
        r#"{}"#,
        r#"{"progressToken":1}"#,
        r#"{"progressToken":1,"progressToken":"x"}"#,
        r#"{"progressToken":true}"#,
        r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#,
        r#"{"io.modelcontextprotocol/protocolVersion":5}"#,
        r#"[]"#,
        r#"null"#,
    ])
}

/// An object with every member of `base` and up to three of `extra` (so members repeat),
/// in a random order.
fn object(
    base: Vec<BoxedStrategy<String>>,
    extra: Vec<BoxedStrategy<String>>,
) -> BoxedStrategy<String> {
    let extras = prop::collection::vec(
        prop::sample::select((0..extra.len()).collect::<Vec<_>>()),
        0..4,
    )
    .prop_flat_map(move |picks| {
        picks
            .into_iter()
            .map(|i| extra[i].clone())
            .collect::<Vec<_>>()
    });
    (base, extras)
        .prop_flat_map(|(mut parts, more)| {
            parts.extend(more);
            Just(parts).prop_shuffle()
        })
        .prop_map(|parts| format!("{{{}}}", parts.join(",")))
        .boxed()
}

fn member(key: &'static str, value: BoxedStrategy<String>) -> BoxedStrategy<String> {
    value.prop_map(move |v| format!("{key}:{v}")).boxed()
}

fn params() -> BoxedStrategy<String> {
    prop_oneof![
        8 => object(
            vec![member(r#""name""#, name()), member(r#""arguments""#, arguments())],
            vec![
                member(r#""name""#, name()),
                member(r#""n\u0061me""#, name()),
                member(r#""arguments""#, arguments()),
                member(r#""_meta""#, meta()),
                member(r#""other""#, arguments()),
            ],
        ),
        1 => one_of(&["[]", "null", r#""p""#, "{}"]),
    ]
    .boxed()
}

fn envelope() -> BoxedStrategy<String> {
    object(
        vec![
            member(r#""jsonrpc""#, one_of(&[r#""2.0""#])),
            member(r#""id""#, one_of(&["1", "2", r#""a""#, "1.0"])),
            member(r#""method""#, method()),
            member(r#""params""#, params()),
        ],
        vec![
            member(r#""jsonrpc""#, one_of(&[r#""2.0""#, r#""1.0""#])),
            member(r#""id""#, one_of(&["1", "null"])),
            member(r#""method""#, method()),
            member(r#""m\u0065thod""#, method()),
            member(r#""params""#, params()),
        ],
    )
}

fn body() -> BoxedStrategy<String> {
    prop_oneof![
        3 => envelope(),
        1 => prop::collection::vec(envelope(), 1..4).prop_map(|es| format!("[{}]", es.join(","))),
    ]
    .boxed()
}

/// Checks the bytes the gateway would forward undenied against a last-wins reading; the
/// messages the gateway refuses (parse error, a call it cannot read unambiguously) are out
/// of the property.
/// Ok(true) when a call was checked.
fn check(text: &str) -> Result<bool, TestCaseError> {
    let Ok(parsed) = jsonrpc::parse(text.as_bytes(), MAX_DEPTH) else {
        return Ok(false);
    };
    let messages = match parsed {
        Parsed::Single(m) => vec![m],
        Parsed::Batch(ms) => ms,
    };
    if messages
        .iter()
        .filter(|m| m.method.is_some())
        .any(|m| m.params_info().is_err())
    {
        return Ok(false);
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| TestCaseError::fail(format!("forwarded, yet not JSON to a server: {e}")))?;
    let values: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        v => vec![v],
    };
    prop_assert_eq!(values.len(), messages.len());
    let mut checked = false;
    for (m, v) in messages.iter().zip(values) {
        prop_assert_eq!(
            m.method.as_deref(),
            v["method"].as_str(),
            "method of {}",
            text
        );
        if m.method.as_deref() != Some("tools/call") {
            continue;
        }
        let params = &v["params"];
        let name = routing_name(m);
        prop_assert_eq!(name.as_deref(), params["name"].as_str(), "name of {}", text);
        let arguments = m.arguments();
        prop_assert_eq!(arguments, params.get("arguments"), "arguments of {}", text);
        checked = true;
    }
    Ok(checked)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn prop_a_forwarded_call_is_decided_on_what_a_last_wins_reader_reads(text in body()) {
        check(&text)?;
    }
}

/// The property is not vacuous: many generated bodies hold a call the gateway forwards.
#[test]
fn generated_bodies_often_hold_a_forwarded_call() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = body();
    let checked = (0..2000)
        .filter(|_| {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            check(&text).unwrap()
        })
        .count();
    assert!(
        checked > 50,
        "only {checked} of 2000 bodies held a forwarded call"
    );
}

#[test]
fn the_issues_bodies_are_refused_or_agree() {
    for text in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all","name":"delete_all"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{},"_meta":{}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"},"params":{"name":"y"}}"#,
    ] {
        check(text).unwrap();
    }
}
