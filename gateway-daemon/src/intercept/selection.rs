//! Which cgroups are agents', as the eBPF programs read it from `gw_cgroups`.
//!
//! A cgroup id names one incarnation of a directory: systemd removes a slice and creates it
//! again (a new id) when it is stopped and started, and starts the service's process in it at
//! once. So the map holds more than the agent cgroups: every ancestor of an agent cgroup is
//! `WATCHED`, and every child of a watched cgroup that exists when the daemon looks is
//! `AGENT` or `KNOWN`. A child the programs find in none of these was created since: it is
//! treated as an agent until the daemon has resolved it (fail closed), which the watcher
//! does as soon as cgroupfs reports the new directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::cgroup;
use super::InterceptError;

pub use gateway_ebpf::{CGROUP_AGENT as AGENT, CGROUP_KNOWN as KNOWN, CGROUP_WATCHED as WATCHED};

/// What the map should hold now, and the directories to watch for new children.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub classes: HashMap<u64, u8>,
    /// Ancestors of agent cgroups that exist now (the cgroup2 root first).
    pub watched: Vec<PathBuf>,
    /// Configured agent cgroups that exist now, with their ids.
    pub agents: Vec<(String, u64)>,
    /// Agent cgroups inside a subtree delegated to a user, and that subtree's top with its
    /// owner: mediated whole, since a process of that user moves itself anywhere in it.
    pub widened: Vec<Widened>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Widened {
    pub cgroup: String,
    pub to: PathBuf,
    pub owner: u32,
}

/// Reads the configured agent cgroups (relative to `mount`), their ancestors and the
/// ancestors' children from cgroupfs. A missing agent cgroup is left out (its parent is
/// watched, so it is an agent from the moment it appears); a directory that vanishes while
/// it is read is skipped the same way.
pub fn resolve(mount: &Path, agent_cgroups: &[String]) -> Result<Selection, InterceptError> {
    let mut sel = Selection::default();
    let agent_paths: Vec<PathBuf> = agent_cgroups
        .iter()
        .map(|rel| cgroup::path_of(mount, rel))
        .collect();
    let mut delegated = Vec::new();
    for (rel, path) in agent_cgroups.iter().zip(&agent_paths) {
        let mut dir = mount.to_path_buf();
        let relative = path.strip_prefix(mount).unwrap_or(path);
        let mut ancestors = vec![dir.clone()];
        for part in relative.parent().into_iter().flat_map(Path::components) {
            dir.push(part);
            ancestors.push(dir.clone());
        }
        // Moving a process needs write access to the cgroup.procs of the common ancestor
        // of where it is and where it goes: below an ancestor whose cgroup.procs a user
        // may write (systemd delegates user@UID.service so), an agent of that user can
        // leave its cgroup for one of its own making. That ancestor is the agents' real
        // boundary: it and everything below it are agents.
        let top = ancestors
            .iter()
            .skip(1)
            .find_map(|a| delegated_to(a).map(|owner| (a.clone(), owner)));
        if let Some((to, owner)) = &top {
            ancestors.retain(|a| !a.starts_with(to));
            sel.widened.push(Widened {
                cgroup: rel.clone(),
                to: to.clone(),
                owner: *owner,
            });
            delegated.push(to.clone());
        }
        for a in ancestors {
            if !sel.watched.contains(&a) && a.is_dir() {
                sel.watched.push(a);
            }
        }
        if let Some(id) = existing_id(path)? {
            sel.agents.push((rel.clone(), id));
        }
    }
    for dir in &sel.watched {
        if let Some(id) = existing_id(dir)? {
            sel.classes.insert(id, WATCHED);
        }
    }
    for dir in &sel.watched {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // A directory at an agent's path is never a known non-agent: recreated since
            // its id was read above, its new id must stay unknown (an agent's, to the
            // programs) until the next resolution reads it as the agent it is.
            let at = entry.path();
            if agent_paths.contains(&at) || delegated.contains(&at) {
                continue;
            }
            if let Some(id) = existing_id(&at)? {
                sel.classes.entry(id).or_insert(KNOWN);
            }
        }
    }
    // Agents last: an agent cgroup that is also an ancestor of another agent cgroup is an
    // agent, and so is everything below it.
    for (_, id) in &sel.agents {
        sel.classes.insert(*id, AGENT);
    }
    for dir in &delegated {
        if let Some(id) = existing_id(dir)? {
            sel.classes.insert(id, AGENT);
        }
    }
    Ok(sel)
}

/// The uid a cgroup is delegated to: who may move processes below it. None for root's.
fn delegated_to(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir.join("cgroup.procs")).ok()?;
    if meta.uid() != 0 {
        Some(meta.uid())
    } else if meta.mode() & 0o022 != 0 {
        // Writable by a group or by everyone: as good as delegated, to no one in particular.
        Some(meta.gid())
    } else {
        None
    }
}

/// The cgroup's id, or None when it does not exist (now).
fn existing_id(path: &Path) -> Result<Option<u64>, InterceptError> {
    match cgroup::id_of(path) {
        Ok(id) => Ok(Some(id)),
        Err(InterceptError::Cgroup { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn ancestors_are_watched_their_children_known_and_agents_agents() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in [
            "mcp.slice/mcp-agents.slice/a.service",
            "mcp.slice/other",
            "system.slice",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("cgroup.procs"), "").unwrap();
        let sel = resolve(
            r,
            &["mcp.slice/mcp-agents.slice".into(), "gone/agent".into()],
        )
        .unwrap();
        assert_eq!(sel.watched, vec![r.to_path_buf(), r.join("mcp.slice")]);
        let agents = r.join("mcp.slice/mcp-agents.slice");
        assert_eq!(
            sel.agents,
            vec![("mcp.slice/mcp-agents.slice".to_string(), ino(&agents))]
        );
        assert_eq!(sel.classes[&ino(r)], WATCHED);
        assert_eq!(sel.classes[&ino(&r.join("mcp.slice"))], WATCHED);
        assert_eq!(sel.classes[&ino(&agents)], AGENT);
        assert_eq!(sel.classes[&ino(&r.join("mcp.slice/other"))], KNOWN);
        assert_eq!(sel.classes[&ino(&r.join("system.slice"))], KNOWN);
        // Below an agent cgroup nothing needs an entry: the programs stop at the agent.
        assert!(!sel.classes.contains_key(&ino(&agents.join("a.service"))));
        // "gone" does not exist: its parent (the root) is watched, so it will be an agent
        // from its creation; it has no entry of its own.
        assert_eq!(sel.classes.len(), 5);
    }

    #[test]
    fn an_agent_cgroup_inside_a_delegated_subtree_widens_to_its_top() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in [
            "user.slice/user@1000.service/app.slice/agent.scope",
            "system.slice",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for d in [
            "",
            "user.slice",
            "user.slice/user@1000.service",
            "user.slice/user@1000.service/app.slice",
        ] {
            std::fs::write(r.join(d).join("cgroup.procs"), "").unwrap();
            std::fs::set_permissions(
                r.join(d).join("cgroup.procs"),
                PermissionsExt::from_mode(0o644),
            )
            .unwrap();
        }
        // What systemd's delegation does (chown to the user); here: writable by everyone,
        // since a test cannot chown without root.
        let service = r.join("user.slice/user@1000.service");
        std::fs::set_permissions(
            service.join("cgroup.procs"),
            PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        let sel = resolve(
            r,
            &["user.slice/user@1000.service/app.slice/agent.scope".into()],
        )
        .unwrap();
        assert_eq!(sel.widened.len(), 1, "{sel:?}");
        assert_eq!(sel.widened[0].to, service);
        assert_eq!(sel.classes[&ino(&service)], AGENT);
        assert_eq!(sel.watched, vec![r.to_path_buf(), r.join("user.slice")]);
        assert_eq!(sel.classes[&ino(&r.join("user.slice"))], WATCHED);
        assert_eq!(sel.classes[&ino(&r.join("system.slice"))], KNOWN);
    }
}
