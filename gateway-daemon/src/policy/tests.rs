//! The rule matcher, table-driven: principals, globs, precedence, annotations, schema
//! narrowing, lifecycle defaults, audit mode and listing visibility.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::Policy;
use crate::config::Config;
use crate::identity::Identity;

const CONFIG: &str = r#"
[agents]
cgroups = ["a"]

[[principal]]
name = "claude"
users = [1500]
exe = ["/usr/bin/node", "/opt/claude/*"]

[[principal]]
name = "ci"
cgroup = ["/mcp-agents.slice/ci-*.service"]
comm = ["python*"]

[[principal]]
name = "anyone-1500"
users = [1500]

[[rule]]
principal = "claude"
server = "github"
tools = ["delete_*"]
action = "deny"

[[rule]]
principal = "claude"
server = "git*"
tools = ["*"]
action = "allow"

[[rule]]
principal = "ci"
server = "files"
tools = ["read_file"]
action = "allow"
arguments = { type = "object", required = ["path"], properties = { path = { type = "string", pattern = "^/srv/data/" } } }

[[rule]]
principal = "ci"
server = "db"
tools = ["query"]
action = "allow"
arguments = { type = "object", properties = { sql = { type = "string", pattern = "^\\s*(?i:select)\\b" } } }

[[rule]]
principal = "ci"
server = "files"
tools = ["*"]
action = "allow"
annotations = { readOnlyHint = true }

[[rule]]
principal = "ci"
server = "files"
methods = ["resources/read"]
tools = ["file:///srv/*"]
action = "ask"

[[rule]]
principal = "*"
server = "public"
methods = ["tools/call", "prompts/get"]
action = "allow"
"#;

/// The key a config with principal `p` and `extra` is refused for.
fn bad(extra: &str) -> String {
    let text =
        format!("[agents]\ncgroups = [\"a\"]\n[[principal]]\nname = \"p\"\nusers = [1]\n{extra}");
    match Config::parse(Path::new("t.toml"), &text) {
        Err(crate::config::ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an error for {extra}: {other:?}"),
    }
}

fn policy(extra: &str) -> Policy {
    let text = format!("{CONFIG}\n{extra}");
    let r = Config::parse(Path::new("t.toml"), &text).unwrap();
    Policy::compile(&r.config).unwrap()
}

fn identity(uid: u32, exe: &str, cgroup: &str, comm: &str) -> Identity {
    Identity {
        pid: 1,
        tgid: 1,
        uid,
        user: None,
        gid: uid,
        group: None,
        comm: comm.into(),
        cgroup_id: 0,
        start_time: 0,
        exe: Some(PathBuf::from(exe)),
        exe_file: None,
        exe_unvouched: None,
        exe_ctime: None,
        exe_now: None,
        cmdline: None,
        cgroup: Some(cgroup.into()),
        unit: crate::identity::unit_of(cgroup),
        procfs_error: None,
        exe_sha256: None,
    }
}

#[test]
fn principals_first_match_wins() {
    let p = policy("");
    let name = |id: Identity| p.principal_of(&id).map(|p| p.name.clone());
    let cases = [
        (identity(1500, "/usr/bin/node", "/", "node"), Some("claude")),
        (
            identity(1500, "/opt/claude/bin/claude", "/", "x"),
            Some("claude"),
        ),
        // Same uid, other program: the next principal that matches.
        (
            identity(1500, "/usr/bin/python3", "/", "python3"),
            Some("anyone-1500"),
        ),
        (
            identity(
                0,
                "/usr/bin/python3",
                "/mcp-agents.slice/ci-7.service",
                "python3",
            ),
            Some("ci"),
        ),
        // Every selector must hold: right cgroup, wrong comm.
        (
            identity(
                0,
                "/usr/bin/python3",
                "/mcp-agents.slice/ci-7.service",
                "bash",
            ),
            None,
        ),
        (identity(0, "/usr/bin/curl", "/", "curl"), None),
    ];
    for (id, want) in cases {
        let exe = id.exe.clone();
        assert_eq!(name(id).as_deref(), want, "{exe:?}");
    }
}

/// A fact missing (the process exited, or its files did not answer in time) leaves a
/// principal that selects by it undecided: the process is none, never the next one down.
#[test]
fn a_missing_fact_never_moves_a_process_to_a_later_principal() {
    use std::os::unix::ffi::OsStrExt;
    // One more principal, last: root, whatever it runs and wherever.
    let p = policy("[[principal]]\nname = \"root-any\"\nusers = [0]\n");
    let name = |id: &Identity| p.principal_of(id).map(|p| p.name.clone());
    let unread = |uid: u32, comm: &str| Identity {
        exe: None,
        cgroup: None,
        unit: None,
        procfs_error: Some("process 1: not read within 3s".into()),
        ..identity(uid, "/", "/", comm)
    };
    // ci's cgroup cannot be told (its comm matches): not root-any, which it would be were
    // the cgroup known to differ.
    assert_eq!(name(&unread(0, "python3")), None);
    assert_eq!(
        name(&identity(0, "/usr/bin/python3", "/elsewhere", "python3")).as_deref(),
        Some("root-any")
    );
    // A fact that is known to differ still settles a principal: comm rules ci out.
    assert_eq!(name(&unread(0, "bash")).as_deref(), Some("root-any"));
    // The program a process can always shed (a copy elsewhere): a program not named is
    // not claude's, and the next principal takes it, as it would take the copy.
    assert_eq!(name(&unread(1500, "node")).as_deref(), Some("anyone-1500"));
    // A program at a path that is not UTF-8 is matched on the path with U+FFFD for the
    // bytes, as it is recorded.
    let mut odd = identity(1500, "/", "/", "x");
    odd.exe = Some(PathBuf::from(std::ffi::OsStr::from_bytes(
        b"/opt/claude/\xff",
    )));
    assert_eq!(name(&odd).as_deref(), Some("claude"));
}

fn ann(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn rules_decide_in_order_with_globs_schemas_and_annotations() {
    let p = policy("");
    let ro = ann(json!({"readOnlyHint": true}));
    let rw = ann(json!({"readOnlyHint": false}));
    // principal, server, method, name, arguments, annotations => action, deciding rule
    #[rustfmt::skip]
    #[allow(clippy::type_complexity)]
    let cases: &[(Option<&str>, &str, &str, Option<&str>, Value, Option<&Map<String, Value>>, &str, &str)] = &[
        (Some("claude"), "github", "tools/call", Some("delete_repo"), json!({}), None, "deny", "rule[0]"),
        (Some("claude"), "github", "tools/call", Some("search"), json!({}), None, "allow", "rule[1]"),
        (Some("claude"), "gitlab", "tools/call", Some("delete_repo"), json!({}), None, "allow", "rule[1]"),
        (Some("claude"), "files", "tools/call", Some("read_file"), json!({}), None, "deny", "default"),
        (Some("ci"), "files", "tools/call", Some("read_file"), json!({"path": "/srv/data/a.csv"}), None, "allow", "rule[2]"),
        (Some("ci"), "files", "tools/call", Some("read_file"), json!({"path": "/etc/shadow"}), None, "deny", "default"),
        (Some("ci"), "files", "tools/call", Some("read_file"), json!({}), None, "deny", "default"),
        (Some("ci"), "db", "tools/call", Some("query"), json!({"sql": "SELECT * FROM t"}), None, "allow", "rule[3]"),
        (Some("ci"), "db", "tools/call", Some("query"), json!({"sql": "  select 1"}), None, "allow", "rule[3]"),
        (Some("ci"), "db", "tools/call", Some("query"), json!({"sql": "DROP TABLE t"}), None, "deny", "default"),
        (Some("ci"), "files", "tools/call", Some("list_dir"), json!({}), Some(&ro), "allow", "rule[4]"),
        (Some("ci"), "files", "tools/call", Some("write_file"), json!({}), Some(&rw), "deny", "default"),
        (Some("ci"), "files", "tools/call", Some("write_file"), json!({}), None, "deny", "default"),
        (Some("ci"), "files", "resources/read", Some("file:///srv/x"), json!({}), None, "ask", "rule[5]"),
        (Some("ci"), "files", "resources/read", Some("file:///etc/x"), json!({}), None, "deny", "default"),
        (Some("ci"), "public", "prompts/get", Some("any"), json!({}), None, "allow", "rule[6]"),
        (Some("claude"), "public", "resources/read", Some("x"), json!({}), None, "deny", "default"),
        // Protocol plumbing is allowed where a principal has any allowing rule.
        (Some("ci"), "files", "tools/list", None, json!({}), None, "allow", "lifecycle"),
        (Some("ci"), "files", "initialize", None, json!({}), None, "allow", "lifecycle"),
        (Some("ci"), "files", "notifications/initialized", None, json!({}), None, "allow", "lifecycle"),
        (Some("ci"), "github", "tools/list", None, json!({}), None, "deny", "default"),
        (None, "public", "initialize", None, json!({}), None, "deny", "unknown principal"),
        (None, "public", "tools/call", Some("x"), json!({}), None, "deny", "unknown principal"),
    ];
    for (principal, server, method, name, args, annotations, action, rule) in cases {
        let d = p.decide(*principal, server, method, *name, Some(args), *annotations);
        assert_eq!(
            d.action.name(),
            *action,
            "{principal:?} {server} {method} {name:?} {args}: {d:?}"
        );
        assert!(
            d.rule.contains(rule),
            "{principal:?} {method} {name:?}: {d:?}"
        );
        assert!(d.enforced);
    }
}

#[test]
fn a_denial_explains_the_argument_constraint_it_missed() {
    let p = policy("");
    let d = p.decide(
        Some("ci"),
        "files",
        "tools/call",
        Some("read_file"),
        Some(&json!({"path": "/etc/shadow"})),
        None,
    );
    let why = d.reason.unwrap();
    assert!(
        why.contains("rule[2]") && why.contains("arguments/path") && why.contains("pattern"),
        "{why}"
    );
    // The ledger holds digests of arguments only: the value itself is never quoted.
    assert!(!why.contains("/etc/shadow"), "{why}");
}

#[test]
fn audit_mode_allows_but_keeps_the_verdict() {
    let p = policy("[policy]\nmode = \"audit\"\n");
    let d = p.decide(None, "x", "tools/call", Some("y"), None, None);
    assert_eq!(d.action.name(), "deny");
    assert!(!d.enforced);
    assert!(d.allows(), "audit mode lets it through");
    assert!(p.visible(Some("claude"), "files", "tools/call", "anything", None));
}

#[test]
fn listings_show_what_could_be_called() {
    let p = policy("");
    let ro = ann(json!({"readOnlyHint": true}));
    assert!(p.visible(Some("claude"), "github", "tools/call", "search", None));
    assert!(!p.visible(Some("claude"), "github", "tools/call", "delete_repo", None));
    // Visible whatever the arguments: the schema is checked at call time.
    assert!(p.visible(Some("ci"), "files", "tools/call", "read_file", None));
    assert!(p.visible(Some("ci"), "files", "tools/call", "stat", Some(&ro)));
    assert!(!p.visible(Some("ci"), "files", "tools/call", "write_file", None));
    assert!(
        p.visible(Some("ci"), "files", "resources/read", "file:///srv/a", None),
        "ask counts"
    );
    assert!(!p.visible(None, "public", "tools/call", "x", None));
}

#[test]
fn bad_rules_are_config_errors_naming_the_key() {
    // comm alone: any process may call itself anything.
    assert_eq!(
        bad("[[principal]]\nname = \"q\"\ncomm = [\"node\"]\n"),
        "principal[1].comm"
    );
    assert_eq!(
        bad("[[rule]]\nprincipal = \"nobody\"\naction = \"allow\"\n"),
        "rule[0].principal"
    );
    assert_eq!(
        bad("[[rule]]\nprincipal = \"p\"\ntools = [\"a[\"]\naction = \"allow\"\n"),
        "rule[0].tools[0]"
    );
    assert_eq!(
        bad("[[rule]]\nprincipal = \"p\"\naction = \"allow\"\narguments = { type = \"nonsense\" }\n"),
        "rule[0].arguments"
    );
    assert_eq!(bad("[[principal]]\nname = \"q\"\n"), "principal[1]");
    assert_eq!(
        bad("[[principal]]\nname = \"p\"\nusers = [2]\n"),
        "principal[1].name"
    );
    assert_eq!(
        bad("[[principal]]\nname = \"q\"\nexe = [\"a{\"]\n"),
        "principal[1].exe[0]"
    );
}

#[test]
fn server_requests_are_decided_by_rules_of_their_direction() {
    let p = policy(
        "[[rule]]\nprincipal = \"claude\"\nserver = \"github\"\ndirection = \"server_to_client\"\n\
         methods = [\"sampling/createMessage\"]\naction = \"deny\"\n",
    );
    let d = p.decide_server_request(Some("claude"), "github", "sampling/createMessage");
    assert_eq!(d.action.name(), "deny");
    assert!(
        d.rule
            .starts_with("rule[7] deny server_to_client claude sampling/createMessage on github"),
        "{}",
        d.rule
    );
    assert!(d.reason.unwrap().contains("sampling/createMessage"));
    // Another request of the same server, or the same request of another: the default,
    // which lets a server ask an agent that may use it, and no one else.
    let d = p.decide_server_request(Some("claude"), "github", "elicitation/create");
    assert_eq!(
        (d.action.name(), &*d.rule),
        ("allow", "default: server request")
    );
    let d = p.decide_server_request(Some("claude"), "files", "sampling/createMessage");
    assert_eq!(d.action.name(), "deny");
    assert_eq!(
        p.decide_server_request(None, "github", "roots/list")
            .action
            .name(),
        "deny"
    );
    // A server_to_client allow opens no call of the agent, and the deny above none either.
    assert_eq!(
        p.decide(
            Some("claude"),
            "github",
            "sampling/createMessage",
            None,
            None,
            None
        )
        .action
        .name(),
        "deny"
    );
    assert_eq!(
        p.decide(
            Some("claude"),
            "github",
            "tools/call",
            Some("x"),
            None,
            None
        )
        .action
        .name(),
        "allow"
    );
}

#[test]
fn a_rule_of_the_wrong_direction_is_a_config_error() {
    let s2c = "[[rule]]\nprincipal = \"p\"\ndirection = \"server_to_client\"\n";
    assert_eq!(
        bad("[[rule]]\nprincipal = \"p\"\nmethods = [\"elicitation/create\"]\naction = \"deny\"\n"),
        "rule[0].methods"
    );
    assert_eq!(bad(&format!("{s2c}action = \"deny\"\n")), "rule[0].methods");
    assert_eq!(
        bad(&format!(
            "{s2c}methods = [\"roots/list\"]\ntools = [\"x\"]\naction = \"deny\"\n"
        )),
        "rule[0].tools"
    );
}
