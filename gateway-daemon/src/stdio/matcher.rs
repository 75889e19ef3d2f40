//! Which configured stdio server an exec starts: `[[server]] command = [...]` globs, the
//! first over the executable, the second over its first argument that is not an option
//! (what the program runs: `npx -y PACKAGE`, `python3 -u SCRIPT`), each further one over a
//! later argument, in order.
//!
//! `command = ["*/mcp-server-git"]` is that program however it is started;
//! `command = ["*/npx", "*server-everything*"]` is npx running that package, not a program
//! that merely mentions it among its arguments. The executable is matched by the path the
//! exec resolved to (made absolute, symbolic links followed) and by the path as the agent
//! wrote it, so neither a symlink nor a relative path hides a server; an argument naming a
//! file matches by its absolute path too.

use globset::{Glob, GlobMatcher};

use crate::config::Config;

pub struct Matcher {
    servers: Vec<(String, Vec<GlobMatcher>)>,
}

/// What an exec runs, as matched.
pub struct Exec<'a> {
    /// The path as the agent gave it, and as resolved.
    pub paths: &'a [String],
    pub argv: &'a [String],
    /// Each argument that names a file, as an absolute path (else None).
    pub argv_abs: &'a [Option<String>],
}

impl Matcher {
    /// The matcher of every server with a `command` (validated at load: globs compile).
    pub fn of(config: &Config) -> Self {
        let servers = config
            .servers
            .iter()
            .filter_map(|s| {
                let globs = s.command.as_ref()?;
                let compiled = globs
                    .iter()
                    .filter_map(|g| Glob::new(g).ok().map(|g| g.compile_matcher()))
                    .collect::<Vec<_>>();
                (compiled.len() == globs.len() && !compiled.is_empty())
                    .then(|| (s.name.clone(), compiled))
            })
            .collect();
        Self { servers }
    }

    /// The first server `exec` starts, by config order.
    pub fn server_of(&self, exec: &Exec<'_>) -> Option<&str> {
        self.servers
            .iter()
            .find(|(_, globs)| matches(globs, exec))
            .map(|(name, _)| name.as_str())
    }
}

fn matches(globs: &[GlobMatcher], exec: &Exec<'_>) -> bool {
    let (first, rest) = globs.split_first().expect("at least one glob");
    let exe = exec.paths.iter().any(|p| first.is_match(p))
        || exec.argv.first().is_some_and(|a0| first.is_match(a0));
    if !exe {
        return false;
    }
    let abs = |i: usize| exec.argv_abs.get(i).and_then(Option::as_deref);
    let is =
        |g: &GlobMatcher, i: usize, a: &str| g.is_match(a) || abs(i).is_some_and(|p| g.is_match(p));
    let Some((second, further)) = rest.split_first() else {
        return true;
    };
    // What the program runs: its first argument that is not an option (`npx -y PACKAGE`,
    // `python3 -u SCRIPT`, `uvx NAME`), not whatever a later argument mentions.
    // (A second glob that is itself an option matches from the first argument.)
    let options = !second.glob().glob().starts_with('-');
    let mut args = exec
        .argv
        .iter()
        .enumerate()
        .skip(1)
        .skip_while(|(_, a)| options && a.starts_with('-'));
    match args.next() {
        Some((i, a)) if is(second, i, a) => {}
        _ => return false,
    }
    further.iter().all(|g| args.any(|(i, a)| is(g, i, a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(globs: &[&str]) -> Vec<GlobMatcher> {
        globs
            .iter()
            .map(|g| Glob::new(g).unwrap().compile_matcher())
            .collect()
    }

    fn exec<'a>(path: &'a [String], argv: &'a [String]) -> Exec<'a> {
        Exec {
            paths: path,
            argv,
            argv_abs: &[],
        }
    }

    fn s(a: &str) -> String {
        a.to_string()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_executable_then_arguments_in_order() {
        let npx = argv(&[
            "npx",
            "-y",
            "@modelcontextprotocol/server-everything",
            "stdio",
        ]);
        assert!(matches(
            &m(&["*/npx", "*server-everything*"]),
            &exec(&[s("/usr/bin/npx")], &npx)
        ));
        assert!(matches(
            &m(&["*/npx", "-y", "*server-everything*", "stdio"]),
            &exec(&[s("/usr/bin/npx")], &npx)
        ));
        // Out of order, or an argument that is not there: no match.
        assert!(!matches(
            &m(&["*/npx", "stdio", "*server-everything*"]),
            &exec(&[s("/usr/bin/npx")], &npx)
        ));
        assert!(!matches(
            &m(&["*/npx", "*server-git*"]),
            &exec(&[s("/usr/bin/npx")], &npx)
        ));
        // A program that only mentions the package later is not npx running it.
        let other = argv(&["npx", "-y", "prettier", "server-everything.md"]);
        assert!(!matches(
            &m(&["*/npx", "*server-everything*"]),
            &exec(&[s("/usr/bin/npx")], &other)
        ));
        let agent = argv(&["python3", "agent.py", "--server", "server.py"]);
        assert!(!matches(
            &m(&["*/python3*", "server.py"]),
            &exec(&[s("/usr/bin/python3")], &agent)
        ));
        // The executable is not an argument: a glob for it does not match an argument.
        let git = argv(&["python3", "-m", "mcp_server_git"]);
        assert!(!matches(
            &m(&["*mcp_server_git*"]),
            &exec(&[s("/usr/bin/python3")], &git)
        ));
        assert!(matches(
            &m(&["*/python3*", "mcp_server_git"]),
            &exec(&[s("/usr/bin/python3")], &git)
        ));
    }

    #[test]
    fn an_argument_matches_by_its_absolute_path_too() {
        let a = argv(&["python3", "server.py"]);
        let abs = vec![None, Some(s("/srv/mcp/server.py"))];
        let e = Exec {
            paths: &[s("/usr/bin/python3")],
            argv: &a,
            argv_abs: &abs,
        };
        assert!(matches(&m(&["*/python3*", "/srv/mcp/server.py"]), &e));
        assert!(matches(&m(&["*/python3*", "server.py"]), &e));
        assert!(!matches(&m(&["*/python3*", "/srv/other.py"]), &e));
    }

    #[test]
    fn argv0_names_the_program_too() {
        let a = argv(&["mcp-server-everything", "stdio"]);
        assert!(matches(
            &m(&["mcp-server-everything"]),
            &exec(&[s("/opt/x/bin/node")], &a)
        ));
    }
}
