//! Tasks (the io.modelcontextprotocol/tasks extension of 2026-07-28): a task id is the
//! handle to a call's result, so it is the principal's that made the call and no one
//! else's; a task's eventual result is redacted like a direct result; what a waiting task
//! asks of the agent is decided by the server_to_client rules; the ledger ties the task's
//! records to the call that created it. The server is rmcp's (3.11) `TaskManager`
//! (`rmcp-task-server`); no released client drives the extension yet, so the agent sends
//! exact 2026-07-28 requests (`tests/src/raw.rs`).

use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::config::{Principal, RedactMode, Rule, Server, TestConfig};
use gateway_tests::peers::{crate_bin, Peer};
use gateway_tests::{free_port, Gateway, GatewayOptions};
use serde_json::{json, Value};

const OTHER: &str = "mcp-agent";

/// One 2026-07-28 request from the agent (as `user`, or the test's own agent), declaring
/// the tasks extension: (status, JSON answer).
fn request(
    gw: &Gateway,
    srv: &Peer,
    user: Option<&str>,
    method: &str,
    name: &str,
    params: Value,
) -> (u16, Value) {
    let mut params = params;
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities":
                                 {"extensions": {"io.modelcontextprotocol/tasks": {}}}});
    let body = json!({"jsonrpc": "2.0", "id": 5, "method": method, "params": params});
    let headers =
        json!({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, "Mcp-Name": name});
    gateway_tests::raw::post(gw, user, srv.port, &headers, &body)
}

/// Polls a task until `done` says its answer is the one awaited.
fn poll(gw: &Gateway, srv: &Peer, task: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, got) = request(gw, srv, None, "tasks/get", task, json!({"taskId": task}));
        assert_eq!(status, 200, "{got}");
        if done(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "task {task} never got there: {got}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// rmcp's task server on a free port.
fn task_server() -> (u16, Peer) {
    let port = free_port();
    let mut cmd = Command::new(crate_bin("rmcp-task-server"));
    cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
    (port, Peer::spawn("rmcp-task-server", cmd, port, "/mcp"))
}

#[test]
fn a_task_is_its_creators_its_result_redacted_and_its_requests_decided() {
    gateway_tests::require_privileges();
    let (port, srv) = task_server();
    let gw = Gateway::start(
        "tasks",
        GatewayOptions {
            ports: vec![port],
            config: TestConfig {
                principals: vec![Principal::users("agent", &["root", OTHER])],
                ..TestConfig::allowing("agent", Server::at("tasks", port))
                    .redact(RedactMode::Redact, RedactMode::Redact)
                    .first(
                        Rule::deny("agent", "tasks")
                            .server_to_client()
                            .methods(&["sampling/createMessage"]),
                    )
            },
            ..Default::default()
        },
    );

    // The call hands out a task; the record says which.
    let (status, created) = request(
        &gw,
        &srv,
        None,
        "tools/call",
        "deploy",
        json!({"name": "deploy", "arguments": {}}),
    );
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["result"]["resultType"], "task", "{created}");
    let deploy = created["result"]["taskId"].as_str().unwrap().to_string();
    let creation = gw.wait_record("of the call that created the task", |r| {
        r["type"] == "mcp" && r["method"] == "tools/call" && r["name"] == "deploy"
    });
    assert_eq!(creation["task_id"], deploy.as_str(), "{creation}");

    // Its creator polls it: the final result comes redacted, the record names the task.
    let got = poll(&gw, &srv, &deploy, |g| g["result"]["status"] == "completed");
    let text = got["result"]["result"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(
        !text.contains("AKIAZ7QX3M2L5RT6PW4N") && text.contains("[REDACTED:"),
        "{got}"
    );
    let polled = gw.wait_record("of the poll that got the result", |r| {
        r["type"] == "mcp" && r["method"] == "tasks/get" && r["redactions"].is_object()
    });
    assert_eq!(polled["name"], deploy.as_str(), "{polled}");

    // Another principal (another user) holding the id gets nothing: refused before the server.
    let (status, theirs) = request(
        &gw,
        &srv,
        Some(OTHER),
        "tasks/get",
        &deploy,
        json!({"taskId": deploy}),
    );
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["error"]["code"], -32010, "{theirs}");
    assert!(
        theirs["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another principal"),
        "{theirs}"
    );
    // A made-up id: the gateway never saw the server hand it out.
    let (_, made_up) = request(
        &gw,
        &srv,
        None,
        "tasks/cancel",
        "t-0",
        json!({"taskId": "t-0"}),
    );
    assert_eq!(made_up["error"]["code"], -32010, "{made_up}");
    assert!(
        made_up["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never saw"),
        "{made_up}"
    );
    let refused = gw.wait_record("of the refused poll", |r| {
        r["type"] == "mcp" && r["method"] == "tasks/get" && r["outcome"] == "refused"
    });
    assert_eq!(refused["refusal"], "task", "{refused}");
    assert_eq!(refused["error_code"], -32010, "{refused}");

    // A task waiting for input asks what a rule denies: its poll is refused with the rule.
    assert_asking_task_refused(&gw, &srv);
}

/// The `ask` tool's task asks for sampling, which the test's rule denies: its poll is
/// refused (-32012, naming the method), never passed on unread, and recorded.
fn assert_asking_task_refused(gw: &Gateway, srv: &Peer) {
    let (status, asked) = request(
        gw,
        srv,
        None,
        "tools/call",
        "ask",
        json!({"name": "ask", "arguments": {}}),
    );
    assert_eq!(status, 200, "{asked}");
    let ask = asked["result"]["taskId"].as_str().unwrap().to_string();
    let waiting = poll(gw, srv, &ask, |g| {
        g.get("error").is_some() || g["result"]["status"] == "input_required"
    });
    assert_eq!(waiting["error"]["code"], -32012, "{waiting}");
    assert!(
        waiting["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sampling/createMessage"),
        "{waiting}"
    );
    let record = gw.wait_record("of the refused input request", |r| {
        r["type"] == "mcp"
            && r["method"] == "tasks/get"
            && r["name"] == ask.as_str()
            && r["outcome"] == "refused"
    });
    assert_eq!(
        record["input_requests"][0]["method"], "sampling/createMessage",
        "{record}"
    );
}

/// With response redaction off the gateway has no content to read, but what a waiting
/// task asks of the agent is still decided: a poll whose task asks for what a rule denies
/// is refused, never passed on unread.
#[test]
fn a_tasks_input_requests_are_decided_with_response_redaction_off() {
    gateway_tests::require_privileges();
    let (port, srv) = task_server();
    let gw = Gateway::start(
        "tasks-unredacted",
        GatewayOptions {
            ports: vec![port],
            config: TestConfig::allowing("agent", Server::at("tasks", port))
                .redact(RedactMode::Off, RedactMode::Off)
                .first(
                    Rule::deny("agent", "tasks")
                        .server_to_client()
                        .methods(&["sampling/createMessage"]),
                ),
            ..Default::default()
        },
    );
    assert_asking_task_refused(&gw, &srv);
}
