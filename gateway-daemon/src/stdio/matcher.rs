//! Which configured stdio server an exec starts: `[[server]] command = [...]` globs, the
//! first over the executable, each further one over a later argument, in order.
//!
//! `command = ["*/mcp-server-git"]` is that program however it is started;
//! `command = ["*/npx", "*server-everything*"]` is npx given that package somewhere among
//! its arguments. The executable is matched by the path the exec resolved to (made
//! absolute, symbolic links followed) and by the path as the agent wrote it, so neither
//! a symlink nor a relative path hides a server.

use globset::{Glob, GlobMatcher};

use crate::config::Config;

pub struct Matcher {
    servers: Vec<(String, Vec<GlobMatcher>)>,
}

/// What an exec runs, as matched.
pub struct Exec<'a> {
    /// The path as the agent gave it, and as resolved.
    pub paths: [&'a str; 2],
    pub argv: &'a [String],
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
    let mut args = exec.argv.iter().skip(1);
    rest.iter().all(|g| args.any(|a| g.is_match(a)))
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

    fn exec<'a>(path: &'a str, argv: &'a [String]) -> Exec<'a> {
        Exec {
            paths: [path, path],
            argv,
        }
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
            &exec("/usr/bin/npx", &npx)
        ));
        assert!(matches(
            &m(&["*/npx", "-y", "*server-everything*", "stdio"]),
            &exec("/usr/bin/npx", &npx)
        ));
        // Out of order, or an argument that is not there: no match.
        assert!(!matches(
            &m(&["*/npx", "stdio", "*server-everything*"]),
            &exec("/usr/bin/npx", &npx)
        ));
        assert!(!matches(
            &m(&["*/npx", "*server-git*"]),
            &exec("/usr/bin/npx", &npx)
        ));
        // The executable is not an argument: a glob for it does not match an argument.
        let git = argv(&["python3", "-m", "mcp_server_git"]);
        assert!(!matches(
            &m(&["*mcp_server_git*"]),
            &exec("/usr/bin/python3", &git)
        ));
        assert!(matches(
            &m(&["*/python3*", "mcp_server_git"]),
            &exec("/usr/bin/python3", &git)
        ));
    }

    #[test]
    fn argv0_names_the_program_too() {
        let a = argv(&["mcp-server-everything", "stdio"]);
        assert!(matches(
            &m(&["mcp-server-everything"]),
            &exec("/opt/x/bin/node", &a)
        ));
    }
}
