//! The two records every call writes (`mcp_call` before it is forwarded, `mcp` when it is
//! answered), written as JSON by hand: the same bytes serde_json makes of them (a test
//! holds the two together), without its per-key and per-character escaping, which was the
//! largest single cost of a call's records. So is the policy's decision. Other nested parts (redaction counts,
//! pin events) still go through serde_json.

use serde::Serialize;

use super::record::{CallRecord, ExchangeRecord, Subject};

/// Appends `s` as a JSON string: as it is when nothing in it needs escaping (the common
/// case, checked without branching per byte), else as serde_json escapes it.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("a string always serialises");
        return;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Whether `s` holds a byte JSON escapes: a control character, a quote or a backslash.
/// Eight bytes at a time (the byte-wise test was the larger part of writing a record): a
/// word has a byte below 0x20 when `(x - 0x20…) & !x & 0x80…` is not zero, and one equal
/// to `c` when the same test for zero holds for `x ^ c…`. Either test may flag more than
/// is there only in which byte it flags, never in whether there is one.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("eight bytes"));
        if below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            != 0
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `,"key":` then `value` by serde_json.
pub(crate) fn serde_field<T: Serialize + ?Sized>(out: &mut Vec<u8>, key: &[u8], value: &T) {
    out.extend_from_slice(key);
    serde_json::to_writer(&mut *out, value).expect("a record's parts always serialise");
}

pub(crate) fn str_field(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    string(out, value);
}

pub(crate) fn opt_str_field(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    if let Some(v) = value {
        str_field(out, key, v);
    }
}

pub(crate) fn opt_serde_field<T: Serialize>(out: &mut Vec<u8>, key: &[u8], value: &Option<T>) {
    if let Some(v) = value {
        serde_field(out, key, v);
    }
}

/// `{"type":KIND,` and the subject's fields, in the order the derived `Serialize` has them.
fn open(out: &mut Vec<u8>, kind: &str, s: &Subject) {
    str_field(out, b"{\"type\":", kind);
    str_field(out, b",\"time\":", &s.time);
    str_field(out, b",\"connection\":", &s.via.connection);
    opt_serde_field(out, b",\"tls\":", &s.via.tls);
    serde_field(
        out,
        b",\"principal\":",
        &super::record::PrincipalJson(&s.principal),
    );
    str_field(out, b",\"server\":", &s.server);
    opt_str_field(out, b",\"session\":", s.session.as_deref());
    str_field(out, b",\"transport\":", s.transport);
    opt_str_field(
        out,
        b",\"protocol_version\":",
        s.protocol_version.as_deref(),
    );
    str_field(out, b",\"method\":", &s.method);
    opt_str_field(out, b",\"name\":", s.name.as_deref());
    opt_str_field(out, b",\"id\":", s.id.as_deref());
}

/// `,"decision":` and the decision, as its derived `Serialize` writes it.
fn decision(out: &mut Vec<u8>, d: &crate::policy::Decision) {
    str_field(out, b",\"decision\":{\"action\":", d.action.name());
    str_field(out, b",\"rule\":", &d.rule);
    opt_str_field(out, b",\"reason\":", d.reason.as_deref());
    out.extend_from_slice(if d.enforced {
        b",\"enforced\":true}"
    } else {
        b",\"enforced\":false}"
    });
}

impl ExchangeRecord {
    /// This record's JSON object, as `serde_json::to_writer` writes it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        open(out, self.kind, &self.about);
        serde_field(out, b",\"direction\":", &self.direction);
        str_field(out, b",\"outcome\":", self.outcome);
        opt_str_field(out, b",\"answered_on\":", self.answered_on.as_deref());
        opt_serde_field(out, b",\"refusal\":", &self.refusal);
        opt_serde_field(out, b",\"error_code\":", &self.error_code);
        opt_str_field(out, b",\"detail\":", self.detail.as_deref());
        opt_serde_field(out, b",\"latency_ms\":", &self.latency_ms);
        opt_str_field(out, b",\"result_sha256\":", self.result_sha256.as_deref());
        if let Some(d) = &self.decision {
            decision(out, d);
        }
        opt_serde_field(out, b",\"redactions\":", &self.redactions);
        opt_serde_field(out, b",\"hidden\":", &self.hidden);
        opt_serde_field(out, b",\"pins\":", &self.pins);
        opt_serde_field(out, b",\"input_requests\":", &self.input_requests);
        opt_str_field(
            out,
            b",\"request_state_sha256\":",
            self.request_state_sha256.as_deref(),
        );
        opt_str_field(out, b",\"task_id\":", self.task_id.as_deref());
        out.push(b'}');
    }
}

impl CallRecord {
    /// This record's JSON object, as `serde_json::to_writer` writes it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        open(out, self.kind, &self.about);
        opt_str_field(out, b",\"params_sha256\":", self.params_sha256.as_deref());
        decision(out, &self.decision);
        opt_serde_field(out, b",\"argument_redactions\":", &self.argument_redactions);
        opt_str_field(
            out,
            b",\"request_state_sha256\":",
            self.request_state_sha256.as_deref(),
        );
        opt_serde_field(out, b",\"credentials\":", &self.credentials);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::link::{TlsFacts, Via};
    use crate::mcp::record::{Direction, JsonOnce, Principal};
    use crate::mcp::refusal::Kind;
    use crate::policy::Decision;

    /// Strings as an agent may send them: plain, with what JSON escapes, with non-ASCII.
    const TEXTS: [&str; 5] = [
        "tools/call",
        "a \"quoted\" \\ back\\slash",
        "tab\tnew\nline\u{1}\u{1f}",
        "café ünïcode / 🦀 \u{2028}",
        "",
    ];

    fn subject(n: usize, full: bool) -> Subject {
        let text = |k: usize| TEXTS[(n + k) % TEXTS.len()].to_string();
        Subject {
            time: text(0),
            via: Arc::new(Via {
                connection: text(1).into(),
                tls: full.then(|| TlsFacts {
                    mode: "terminated",
                    sni: n.is_multiple_of(2).then(|| text(2)),
                    alpn: None,
                }),
            }),
            principal: Arc::new(Principal {
                name: full.then(|| text(3)),
                undecided: (!full).then(|| text(2)),
                tgid: 7,
                start_time: 0,
                uid: 1000,
                user: Some(text(4)),
                exe: full.then(|| text(0)),
                exe_unvouched: None,
                unit: None,
                cgroup: Some(text(1)),
                json: JsonOnce::default(),
            }),
            server: text(2).into(),
            session: full.then(|| text(3).into()),
            transport: "streamable_http",
            protocol_version: full.then(|| text(4).into()),
            method: text(0),
            name: full.then(|| text(1)),
            id: full.then(|| text(2)),
        }
    }

    fn decision(n: usize) -> Decision {
        Decision {
            action: [
                crate::config::Action::Deny,
                crate::config::Action::Allow,
                crate::config::Action::Ask,
            ][n % 3],
            rule: TEXTS[n % TEXTS.len()].into(),
            reason: (n % 2 == 1).then(|| TEXTS[(n + 1) % TEXTS.len()].to_string()),
            enforced: n.is_multiple_of(3),
        }
    }

    /// Every byte that needs escaping, at every place in a word and past the last whole
    /// word, is found; no other byte is.
    #[test]
    fn escapes_are_found_wherever_they_are() {
        for len in 0..24 {
            for at in 0..len {
                for b in 0u8..=255 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    let expected = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&s), expected, "{b:#x} at {at} of {len}");
                    // Beside bytes past ASCII, which borrow differently.
                    s.iter_mut().filter(|c| **c == b'a').for_each(|c| *c = 0xC3);
                    assert_eq!(needs_escape(&s), expected, "{b:#x} at {at} of {len}, high");
                }
            }
        }
    }

    /// Every field set and every field left out, over strings that need escaping and
    /// strings that do not: the hand-written JSON is serde_json's, byte for byte.
    #[test]
    fn records_are_written_as_serde_json_writes_them() {
        for n in 0..TEXTS.len() * 2 {
            let full = n % 2 == 0;
            let text = |k: usize| TEXTS[(n + k) % TEXTS.len()].to_string();
            let mut counts = crate::redact::Counts::default();
            counts.add(&text(1), 3);
            let exchange = ExchangeRecord {
                kind: "mcp",
                about: subject(n, full),
                direction: if full {
                    Direction::ClientToServer
                } else {
                    Direction::ServerToClient
                },
                outcome: "refused",
                answered_on: full.then(|| text(2).into()),
                refusal: full.then_some(Kind::Malformed),
                error_code: full.then_some(-32602),
                detail: full.then(|| text(3)),
                latency_ms: full.then_some(1.25 + n as f64 / 7.0),
                result_sha256: full.then(|| "ab".repeat(32)),
                decision: full.then(|| decision(n)),
                redactions: full.then(|| counts.clone()),
                hidden: full.then_some(n),
                pins: full.then(Vec::new),
                input_requests: full.then(Vec::new),
                request_state_sha256: full.then(|| text(4)),
                task_id: full.then(|| text(0)),
            };
            let mut mine = Vec::new();
            exchange.write_json(&mut mine);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::to_string(&exchange).unwrap()
            );

            let call = CallRecord {
                kind: "mcp_call",
                about: subject(n + 1, full),
                params_sha256: full.then(|| "cd".repeat(32)),
                decision: decision(n),
                argument_redactions: full.then_some(counts),
                request_state_sha256: full.then(|| text(2)),
                credentials: full.then(|| Arc::from(vec![Box::from(text(3).as_str())])),
            };
            let mut mine = Vec::new();
            call.write_json(&mut mine);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::to_string(&call).unwrap()
            );
        }
    }
}
