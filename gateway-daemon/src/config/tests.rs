use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{Config, ConfigError};

fn parse(text: &str) -> Result<super::Resolved, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

fn invalid_key(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let r = parse("[agents]\ncgroups = [\"mcp-agents.slice\"]\n").unwrap();
    assert_eq!(r.config.listener.ipv4.to_string(), "127.0.0.1:15001");
    assert_eq!(r.config.scope.ports, vec![80, 443, 8080]);
    assert!(r.agent_uids.is_empty());
    // Closed by default: every TCP port of agents, and no window on stop or restart.
    assert!(r.config.scope.all_tcp);
    assert!(!r.config.intercept.detach_on_stop);
}

#[test]
fn doors_left_open_are_warned_about() {
    let r = parse("[agents]\ncgroups = [\"a\"]\n").unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("selected by cgroup only"),
        "{:?}",
        r.warnings
    );
    let r = parse(
        "[agents]\ncgroups = [\"a\"]\nusers = [4242]\n[scope]\nall_tcp = false\n\
         [intercept]\ndetach_on_stop = true\n",
    )
    .unwrap();
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("detach_on_stop = true"));
    assert!(r.warnings[1].contains("all_tcp = false"));
    let r =
        parse("[agents]\ncgroups = [\"a\"]\nusers = [4242]\n[intercept]\nattach_cgroup = \"a\"\n")
            .unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("attach_cgroup"), "{:?}", r.warnings);
    let r = parse("[agents]\ncgroups = [\"a\"]\nusers = [4242]\n").unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn users_by_id_and_name_resolve() {
    let r = parse("[agents]\nusers = [4242, \"nobody\"]\n").unwrap();
    assert_eq!(r.agent_uids[0], 4242);
    assert_eq!(r.agent_uids.len(), 2);
}

#[test]
fn unknown_key_is_named() {
    let e = parse("[agents]\ncgroups = [\"a\"]\nbogus = 1\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bogus"), "{msg}");
}

#[test]
fn wrong_type_is_named() {
    let e = parse("[scope]\nports = [\"http\"]\n[agents]\ncgroups=[\"a\"]\n").unwrap_err();
    assert!(e.to_string().contains("ports"), "{e}");
}

#[test]
fn validation_names_the_key() {
    assert_eq!(invalid_key("[agents]\n"), "agents");
    assert_eq!(
        invalid_key("[agents]\nusers = [\"no-such-user-xyz\"]\n"),
        "agents.users[0]"
    );
    assert_eq!(invalid_key("[agents]\nusers = [0]\n"), "agents.users");
    assert_eq!(
        invalid_key("[agents]\ncgroups = [\"../etc\"]\n"),
        "agents.cgroups[0]"
    );
    assert_eq!(
        invalid_key("[agents]\ncgroups=[\"a\"]\n[listener]\nipv4 = \"[::1]:1\"\n"),
        "listener.ipv4"
    );
    assert_eq!(
        invalid_key("[agents]\ncgroups=[\"a\"]\n[listener]\nipv4 = \"10.1.2.3:1\"\n"),
        "listener"
    );
    assert_eq!(
        invalid_key("[agents]\ncgroups=[\"a\"]\n[scope]\nall_tcp = false\nports = []\n"),
        "scope.ports"
    );
    assert_eq!(
        invalid_key("[agents]\ncgroups=[\"a\"]\n[intercept]\ninstance = \"a/b\"\n"),
        "intercept.instance"
    );
    assert_eq!(
        invalid_key("[agents]\ncgroups=[\"a\"]\n[intercept]\nmark = 0\n"),
        "intercept.mark"
    );
}

#[test]
fn example_config_is_valid_and_leaves_no_door_open() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/mcp-gateway.toml");
    let r = Config::load(&path).unwrap_or_else(|e| {
        panic!("{e} (the example selects the user mcp-agent: `cargo xtask test` creates it)")
    });
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn servers_are_validated_by_key() {
    let base = "[agents]\ncgroups=[\"a\"]\n";
    let r = parse(&format!(
        "{base}[[server]]\nname = \"e\"\naddress = \"127.0.0.1:3001\"\npath = \"/mcp\"\n"
    ))
    .unwrap();
    assert_eq!(r.config.servers[0].name, "e");
    assert_eq!(
        invalid_key(&format!("{base}[[server]]\nname = \"e\"\n")),
        "server[0]"
    );
    assert_eq!(
        invalid_key(&format!(
            "{base}[[server]]\nname = \"e\"\nhost = \"a\"\n[[server]]\nname = \"e\"\nhost = \"b\"\n"
        )),
        "server[1].name"
    );
    assert_eq!(
        invalid_key(&format!(
            "{base}[[server]]\nname = \"e\"\nhost = \"a:80\"\n"
        )),
        "server[0].host"
    );
    assert_eq!(
        invalid_key(&format!(
            "{base}[[server]]\nname = \"e\"\nhost = \"a\"\npath = \"mcp\"\n"
        )),
        "server[0].path"
    );
    assert_eq!(
        invalid_key(&format!("{base}[http]\nmax_request_bytes = 10\n")),
        "http.max_request_bytes"
    );
}

#[test]
fn stdio_servers_are_validated_by_key() {
    let base = "[agents]\ncgroups=[\"a\"]\n";
    let r = parse(&format!(
        "{base}[[server]]\nname = \"fs\"\ncommand = [\"*/npx\", \"*server-filesystem*\"]\n"
    ))
    .unwrap();
    assert_eq!(r.config.servers[0].command.as_ref().unwrap().len(), 2);
    assert!(crate::stdio::Stage::configured(&r.config));
    // A stdio server has no address; no command at all is no server.
    assert_eq!(
        invalid_key(&format!(
            "{base}[[server]]\nname = \"fs\"\ncommand = [\"*/npx\"]\naddress = \"127.0.0.1:1\"\n"
        )),
        "server[0].command"
    );
    assert_eq!(
        invalid_key(&format!("{base}[[server]]\nname = \"fs\"\ncommand = []\n")),
        "server[0].command"
    );
    assert_eq!(
        invalid_key(&format!(
            "{base}[[server]]\nname = \"fs\"\ncommand = [\"*/npx\", \"a[\"]\n"
        )),
        "server[0].command[1]"
    );
    assert_eq!(
        invalid_key(&format!(
            "{base}[[server]]\nname = \"fs\"\ncommand = [\"*/npx\"]\n\
             credential = [{{ header = \"X-Key\", file = \"/k\" }}]\n"
        )),
        "server[0].credential"
    );
}

#[test]
fn listener_ports_the_kernel_may_hand_out_are_refused() {
    use super::validate::ephemeral_clash;
    assert!(ephemeral_clash(&[15001, 15001], "32768\t60999\n", "\n").is_none());
    let m = ephemeral_clash(&[15001, 40001], "32768\t60999\n", "\n").unwrap();
    assert!(m.contains("port 40001"), "{m}");
    assert!(m.contains("32768-60999"), "{m}");
    // Reserved ports are never handed out.
    assert!(ephemeral_clash(&[40001], "32768 60999", "40000-40010,50000\n").is_none());
    assert!(ephemeral_clash(&[50000], "32768 60999", "40000-40010,50000\n").is_none());
    assert!(ephemeral_clash(&[50001], "32768 60999", "40000-40010,50000\n").is_some());
    // Unreadable sysctls (no procfs): nothing to say.
    assert!(ephemeral_clash(&[40001], "", "").is_none());
}

/// The example config with every commented-out key and table put in, so that it is read as
/// a complete config (a key its table already sets stays as set).
fn example_uncommented() -> String {
    let text = include_str!("../../../systemd/mcp-gateway.toml");
    let is_header = |s: &str| s.starts_with('[') && s.trim_end().ends_with(']');
    // A line that is one TOML key and value (not prose that happens to hold " = ").
    let key_of = |s: &str| -> Option<String> {
        let t: toml::Table = toml::from_str(s).ok()?;
        let (k, _) = s.split_once(" = ")?;
        (t.len() == 1 && t.contains_key(k)).then(|| k.to_string())
    };
    let mut out = String::new();
    let mut keys = std::collections::HashSet::new();
    for line in text.lines() {
        let (body, commented) = match line.strip_prefix("# ") {
            Some(b) => (b, true),
            None => (line, false),
        };
        if is_header(body) {
            if commented || !body.starts_with('#') {
                keys.clear();
                out.push_str(body);
            }
        } else if let Some(k) = key_of(body) {
            if keys.insert(k) {
                out.push_str(body);
            } else if !commented {
                panic!("the example config sets a key twice: {line}");
            }
        }
        out.push('\n');
    }
    out
}

/// Every table of `v` (in arrays and inline tables too), by its path from the root.
fn tables(v: &toml::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        toml::Value::Table(t) => {
            out.push(path.clone());
            for (k, v) in t {
                path.push(k.clone());
                tables(v, path, out);
                path.pop();
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                tables(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn table_at<'a>(v: &'a mut toml::Value, path: &[String]) -> &'a mut toml::Table {
    let mut v = v;
    for p in path {
        v = match v {
            toml::Value::Table(t) => t.get_mut(p).unwrap(),
            toml::Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    v.as_table_mut().unwrap()
}

/// The example config documents every key the daemon reads: each table of it, given a key
/// no struct has, makes serde list the keys that table may hold, and each must be there.
#[test]
fn the_example_config_holds_every_key() {
    let text = example_uncommented();
    if let Err(e) = toml::from_str::<Config>(&text) {
        panic!("the example config, uncommented, does not read: {e}\n{text}");
    }
    let root: toml::Value = toml::from_str(&text).unwrap();
    let mut paths = Vec::new();
    tables(&root, &mut Vec::new(), &mut paths);
    // By table, entries of an array together (`[[rule]]`: a key any rule shows is shown).
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut present: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in paths {
        let name = path
            .iter()
            .map(|p| if p.parse::<usize>().is_ok() { "*" } else { p })
            .collect::<Vec<_>>()
            .join(".");
        let mut probe = root.clone();
        table_at(&mut probe, &path).insert("zz_not_a_key".into(), toml::Value::Integer(1));
        let err = match toml::from_str::<Config>(&toml::to_string(&probe).unwrap()) {
            // A free-form table (a JSON schema, annotations): any key is its content. Only
            // those may take a key no struct has (every other table denies unknown keys).
            Ok(_) => {
                assert!(
                    ["rule.*.arguments", "rule.*.annotations"]
                        .iter()
                        .any(|free| name.starts_with(free)),
                    "[{name}] takes any key: a config table without deny_unknown_fields?"
                );
                continue;
            }
            Err(e) => e.to_string(),
        };
        let Some((_, err_keys)) = err.split_once("expected ") else {
            panic!("no key list for [{}]: {err}", path.join("."));
        };
        let keys = err_keys.split('`').skip(1).step_by(2).map(str::to_string);
        expected.entry(name.clone()).or_default().extend(keys);
        let shown = table_at(&mut root.clone(), &path)
            .keys()
            .cloned()
            .collect::<Vec<_>>();
        present.entry(name).or_default().extend(shown);
    }
    let mut missing = Vec::new();
    for (table, keys) in &expected {
        for key in keys.difference(&present[table]) {
            missing.push(format!("[{table}] {key}"));
        }
    }
    assert!(
        missing.is_empty(),
        "keys the daemon reads that systemd/mcp-gateway.toml does not show (set or \
         commented out, with a comment): {missing:#?}"
    );
}

#[test]
fn an_admin_group_named_on_purpose_must_exist() {
    let base = "[agents]\ncgroups = [\"a\"]\n[admin]\n";
    let key = invalid_key(&format!("{base}group = \"mcp-gw-no-such-group\"\n"));
    assert_eq!(key, "admin.group");
    let err = parse(&format!("{base}group = \"mcp-gw-no-such-group\"\n")).unwrap_err();
    assert!(err.to_string().contains("no such group"), "{err}");
    assert!(parse(&format!("{base}group = \"root\"\n")).is_ok());
    // The package's group may be missing where the package is not installed: the daemon
    // warns at start then.
    assert!(parse(&format!("{base}group = \"mcp-gateway\"\n")).is_ok());
}

/// The example config spells out every section's defaults: each value it gives must be the
/// code's (`config::defaults`), except the keys it sets on purpose for its agents.
#[test]
fn the_example_config_gives_the_codes_defaults() {
    let example: toml::Table =
        toml::from_str(include_str!("../../../systemd/mcp-gateway.toml")).unwrap();
    let base = format!("{:?}", toml::from_str::<Config>("").unwrap());
    let mut departures = Vec::new();
    let mut checked = 0;
    for (section, body) in &example {
        let toml::Value::Table(keys) = body else {
            continue; // [[server]], [[principal]], [[rule]]: no defaults to hold to
        };
        for (key, value) in keys {
            let mut one = toml::Table::new();
            let mut inner = toml::Table::new();
            inner.insert(key.clone(), value.clone());
            one.insert(section.clone(), toml::Value::Table(inner));
            let parsed: Config = toml::from_str(&toml::to_string(&one).unwrap())
                .unwrap_or_else(|e| panic!("{section}.{key}: {e}"));
            if format!("{parsed:?}") != base {
                departures.push(format!("{section}.{key}"));
            }
            checked += 1;
        }
    }
    assert!(
        checked > 60,
        "the example spells out its sections ({checked} keys)"
    );
    assert_eq!(
        departures,
        ["agents.cgroups", "agents.users"],
        "the example config gives values other than the code's defaults"
    );
}
