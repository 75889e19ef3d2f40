//! What the hot path promises beyond correctness, seen from the agent's socket.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use gateway_tests::frozen::Frozen;
use gateway_tests::peers::{python_server, run_json};
use gateway_tests::{free_port, Gateway, GatewayOptions, PYTHON};

/// The raw-socket fixtures, each after the HTTP framing they share.
macro_rules! fixture {
    ($name:literal) => {
        concat!(
            include_str!("../fixtures/http_framing.py"),
            include_str!(concat!("../fixtures/", $name))
        )
    };
}

const SERVER: &str = fixture!("one_write_server.py");
const AGENT: &str = fixture!("segments_agent.py");
const HELD_AGENT: &str = fixture!("held_agent.py");

/// A server that sends an answer whole (its head and an event stream of two events, in one
/// write) has it reach the agent in one TCP segment, not one per event: hyper hands the
/// upstream body over a chunk at a time, and the gateway drives the upstream connection
/// itself rather than flushing what it has between chunks. Each write is a segment the
/// agent's socket and its reader wake for.
#[test]
fn an_answer_that_arrived_whole_leaves_in_one_segment() {
    gateway_tests::require_privileges();
    let port = free_port();
    let port_arg = port.to_string();
    let _srv = python_server(
        "one-write-server",
        SERVER,
        &[port_arg.as_ref()],
        port,
        "/mcp",
    );
    let gw = Gateway::start(
        "one-segment",
        GatewayOptions {
            ports: vec![port],
            ..Default::default()
        },
    );
    let out = run_json(gw.agent(
        PYTHON,
        &[
            "-c".into(),
            AGENT.into(),
            "127.0.0.1".into(),
            port.to_string(),
        ],
    ));
    for step in ["initialize", "call"] {
        let answer = &out[step];
        assert_eq!(answer["status"], "200", "{step}: {out}");
        let events = answer["events"].as_array().expect("events");
        assert_eq!(events.len(), 2, "{step}: both events pass: {out}");
        assert!(
            events[1].as_str().unwrap().contains("\"result\""),
            "{step}: {out}"
        );
        assert_eq!(answer["segments"], 1, "{step}: {out}");
    }
    assert!(
        out["call"]["events"][1].as_str().unwrap().contains("whole"),
        "{out}"
    );
    gw.wait_record("of the call", |r| {
        r["type"] == "mcp" && r["method"] == "tools/call" && r["outcome"] == "ok"
    });
}

/// An agent's call through a daemon with `sync = "always"` whose ledger syncer is held
/// still (ptrace) from before the call: the call's record cannot become durable until the
/// syncer runs again. Made once the call is recorded (and, in `Whole`, the server has
/// answered and the gateway has recorded the answer); nothing of the answer has reached
/// the agent.
struct HeldCall {
    gw: Gateway,
    _server: gateway_tests::peers::Peer,
    agent: std::process::Child,
    says: mpsc::Receiver<String>,
    /// In `Early`, what the stream the agent resumed at once carried.
    early: Option<serde_json::Value>,
}

/// How the server answers the call, and what the agent does besides.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The call's stream carries the response at once.
    Whole,
    /// The call's stream carries a priming event and stays open without the response; the
    /// agent resumes the session's stream (GET, Last-Event-ID) after its answer, and the
    /// server sends the response there.
    Late,
    /// The call's stream carries a priming event and ends; the agent resumes the stream at
    /// once, while its call waits, and again after its answer, and the server sends the
    /// response on each.
    Early,
}

impl HeldCall {
    fn start(name: &str, mode: Mode) -> (HeldCall, Frozen) {
        gateway_tests::require_privileges();
        let port = free_port();
        let port_arg = port.to_string();
        let mut server_args = vec![port_arg.as_ref()];
        let mut agent_args = vec![
            "-c".into(),
            HELD_AGENT.into(),
            "127.0.0.1".into(),
            port.to_string(),
        ];
        let (server_mode, agent_mode) = match mode {
            Mode::Whole => (None, None),
            Mode::Late => (Some("late"), Some("resume")),
            Mode::Early => (Some("early"), Some("early")),
        };
        server_args.extend(server_mode.map(std::ffi::OsStr::new));
        agent_args.extend(agent_mode.map(Into::into));
        let server = python_server("one-write-server", SERVER, &server_args, port, "/mcp");
        let gw = Gateway::start(
            name,
            GatewayOptions {
                ports: vec![port],
                audit: "sync = \"always\"\n".into(),
                ..Default::default()
            },
        );
        let mut agent = gw
            .agent(PYTHON, &agent_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the agent");
        let mut stdin = agent.stdin.take().expect("stdin");
        let out = BufReader::new(agent.stdout.take().expect("stdout"));
        let (tx, says) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut held = HeldCall {
            gw,
            _server: server,
            agent,
            says,
            early: None,
        };
        assert_eq!(held.next("ready"), "ready");

        let syncer = Frozen::thread(held.gw.pid().expect("daemon running"), "audit-sync");
        writeln!(stdin, "go").expect("telling the agent to call");
        assert_eq!(held.next("sent"), "sent");
        held.gw.wait_record("of the call", |r| {
            r["type"] == "mcp_call" && r["method"] == "tools/call"
        });
        match mode {
            Mode::Whole => {
                held.gw.wait_record(
                    "of the call's answer, read while its record waits for a sync",
                    |r| r["type"] == "mcp" && r["method"] == "tools/call" && r["outcome"] == "ok",
                );
            }
            Mode::Late => {}
            Mode::Early => {
                let line = held.next("what the stream resumed at once carried");
                let early = line.strip_prefix("early ").expect("the early stream");
                held.early = Some(serde_json::from_str(early).expect("the early stream as JSON"));
            }
        }
        assert_eq!(
            held.says.recv_timeout(Duration::from_millis(500)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "the agent got the answer before the call's record was durable"
        );
        (held, syncer)
    }

    fn next(&self, what: &str) -> String {
        self.says
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the agent did not say {what} ({e}): {}", self.gw.log()))
    }

    /// The answer the agent got, once it got one.
    fn answer(&self) -> serde_json::Value {
        assert_eq!(self.next("answered"), "answered");
        serde_json::from_str(&self.next("the answer")).expect("the answer as JSON")
    }
}

impl Drop for HeldCall {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// The gateway's refusal of request 2 for want of a durable record (HTTP 503, JSON-RPC
/// -32010), with nothing of the server's result.
#[cfg(target_arch = "x86_64")]
fn assert_withheld(answer: &serde_json::Value) {
    assert_eq!(answer["status"], "503", "{answer}");
    let events = answer["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{answer}");
    let refusal: serde_json::Value =
        serde_json::from_str(events[0].as_str().expect("a body")).expect("JSON-RPC");
    assert_eq!(refusal["id"], 2, "{refusal}");
    assert_eq!(refusal["error"]["code"], -32010, "{refusal}");
    assert!(refusal.get("result").is_none(), "{refusal}");
    assert!(!events[0].as_str().unwrap().contains("whole"), "{answer}");
}

/// With `sync = "always"`, the sync of a call's `mcp_call` record runs while the call is
/// on its way: the server gets the call and the gateway reads, checks and records its
/// answer meanwhile. Only the answer's delivery waits for the sync (`HeldCall`), and once
/// the syncer runs again the agent gets it.
#[test]
fn a_calls_answer_is_read_while_its_record_syncs_and_reaches_the_agent_only_after() {
    let (held, syncer) = HeldCall::start("held-until-durable", Mode::Whole);
    drop(syncer);
    let answer = held.answer();
    assert_eq!(answer["status"], "200", "{answer}");
    assert!(
        answer["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("whole"))),
        "{answer}"
    );
}

/// If that sync fails (here the syncer's `fdatasync` returns EIO), the answer the gateway
/// read ahead is withheld: the agent gets the gateway's refusal for its request (HTTP 503,
/// JSON-RPC -32010), never the server's result, and the ledger says after the answer's
/// record that the request got no response.
#[test]
#[cfg(target_arch = "x86_64")]
fn an_answer_read_ahead_is_withheld_when_its_record_cannot_be_made_durable() {
    let (held, syncer) = HeldCall::start("withheld-not-durable", Mode::Whole);
    syncer.fail_next_fdatasync(libc::EIO);
    assert_withheld(&held.answer());
    let withheld = held.gw.wait_record("that the answer was withheld", |r| {
        r["type"] == "mcp" && r["method"] == "tools/call" && r["outcome"] == "no_response"
    });
    assert_eq!(withheld["id"], "2", "{withheld}");
    let records = held.gw.audit_records();
    let at = |outcome: &str| {
        records
            .iter()
            .position(|r| r["method"] == "tools/call" && r["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} record: {records:#?}"))
    };
    assert!(at("ok") < at("no_response"), "{records:#?}");
}

/// The same when the sync fails before the server has answered (its stream stays open
/// without the response): the agent gets the refusal, and the request is not kept for a
/// resumed stream. The server's response, sent again on the stream the agent then
/// resumes, answers no request the gateway knows of: it is dropped and recorded as such,
/// never delivered past the ledger.
#[test]
#[cfg(target_arch = "x86_64")]
fn a_request_withheld_before_its_answer_came_is_not_answered_on_a_resumed_stream() {
    let (held, syncer) = HeldCall::start("withheld-then-resumed", Mode::Late);
    syncer.fail_next_fdatasync(libc::EIO);
    assert_withheld(&held.answer());
    let resumed: serde_json::Value =
        serde_json::from_str(&held.next("the resumed stream")).expect("the stream as JSON");
    assert_eq!(resumed["status"], "200", "{resumed}");
    assert!(
        !resumed.to_string().contains("whole"),
        "the withheld request was answered on the resumed stream: {resumed}"
    );
    held.gw
        .wait_record("of the response dropped on the resumed stream", |r| {
            r["outcome"] == "unpaired_response" && r["id"] == "2"
        });
    let records = held.gw.audit_records();
    let of_call: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "mcp" && r["method"] == "tools/call")
        .map(|r| r["outcome"].as_str().unwrap_or_default())
        .collect();
    assert!(of_call.contains(&"no_response"), "{records:#?}");
    assert!(!of_call.contains(&"ok"), "{records:#?}");
}

/// A stream that ends without the response keeps the request for a resumed stream, but
/// only once the call's record is durable. An agent that resumes at once, while its call's
/// record still waits for the sync, would otherwise get the answer there before it: the
/// response on that stream answers no request yet, and is dropped and recorded as such.
/// Resumed again after its (empty) answer, the agent gets the response.
#[test]
fn a_stream_resumed_before_the_calls_record_is_durable_carries_no_answer() {
    let (held, syncer) = HeldCall::start("resumed-early", Mode::Early);
    let early = held.early.clone().expect("the early stream");
    assert_eq!(early["status"], "200", "{early}");
    assert!(
        !early.to_string().contains("whole"),
        "the answer reached the agent before the call's record was durable: {early}"
    );
    held.gw
        .wait_record("of the response dropped on the early stream", |r| {
            r["outcome"] == "unpaired_response" && r["id"] == "2"
        });

    drop(syncer);
    let answer = held.answer();
    assert_eq!(answer["status"], "200", "{answer}");
    assert!(!answer.to_string().contains("whole"), "{answer}");
    let resumed: serde_json::Value =
        serde_json::from_str(&held.next("the stream resumed after")).expect("JSON");
    assert_eq!(resumed["status"], "200", "{resumed}");
    assert!(
        resumed.to_string().contains("whole"),
        "the request was not kept for a resumed stream once durable: {resumed}"
    );
    held.gw
        .wait_record("of the answer on the stream resumed after", |r| {
            r["type"] == "mcp" && r["method"] == "tools/call" && r["outcome"] == "ok"
        });
}
