//! Principals: who a process is, for the rules, from its kernel-attested identity.

use globset::{Glob, GlobSet, GlobSetBuilder};
use nix::unistd::{Group, User};

use super::Invalid;
use crate::config::{PrincipalConfig, UserRef};
use crate::identity::Identity;

pub struct Principal {
    pub name: String,
    uids: Vec<u32>,
    gids: Vec<u32>,
    exe: Option<GlobSet>,
    exe_sha256: Vec<String>,
    cgroup: Option<GlobSet>,
    unit: Option<GlobSet>,
    comm: Option<GlobSet>,
    pub rate_calls: u32,
    pub rate_window_s: u64,
    pub max_concurrent: u32,
    pub redact_requests: Option<crate::redact::RequestMode>,
}

pub fn globs(key: &str, patterns: &[String]) -> Result<Option<GlobSet>, Invalid> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        let g = Glob::new(p).map_err(|e| {
            (
                format!("{key}[{i}]"),
                format!("{p:?} is not a valid glob: {e}"),
            )
        })?;
        b.add(g);
    }
    b.build()
        .map(Some)
        .map_err(|e| (key.to_string(), e.to_string()))
}

fn ids(
    key: &str,
    refs: &[UserRef],
    lookup: impl Fn(&str) -> Result<Option<u32>, nix::Error>,
) -> Result<Vec<u32>, Invalid> {
    refs.iter()
        .enumerate()
        .map(|(i, r)| match r {
            UserRef::Id(id) => Ok(*id),
            UserRef::Name(n) => match lookup(n) {
                Ok(Some(id)) => Ok(id),
                Ok(None) => Err((format!("{key}[{i}]"), format!("no such name {n:?}"))),
                Err(e) => Err((format!("{key}[{i}]"), format!("looking up {n:?}: {e}"))),
            },
        })
        .collect()
}

impl Principal {
    pub fn compile(i: usize, c: &PrincipalConfig) -> Result<Self, Invalid> {
        let key = |k: &str| format!("principal[{i}].{k}");
        if c.name.is_empty() || c.name == "*" || c.name == "unknown" {
            return Err((key("name"), format!("{:?} is reserved or empty", c.name)));
        }
        let p = Principal {
            name: c.name.clone(),
            uids: ids(&key("users"), &c.users, |n| {
                User::from_name(n).map(|u| u.map(|u| u.uid.as_raw()))
            })?,
            gids: ids(&key("groups"), &c.groups, |n| {
                Group::from_name(n).map(|g| g.map(|g| g.gid.as_raw()))
            })?,
            exe: globs(&key("exe"), &c.exe)?,
            exe_sha256: c
                .exe_sha256
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            cgroup: globs(&key("cgroup"), &c.cgroup)?,
            unit: globs(&key("unit"), &c.unit)?,
            comm: globs(&key("comm"), &c.comm)?,
            rate_calls: c.rate_calls,
            rate_window_s: c.rate_window_s.max(1),
            max_concurrent: c.max_concurrent,
            redact_requests: c.redact_requests,
        };
        if let Some(bad) = p
            .exe_sha256
            .iter()
            .find(|h| h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err((
                key("exe_sha256"),
                format!("{bad:?} is not a SHA-256 in hex"),
            ));
        }
        let selects = !(p.uids.is_empty()
            && p.gids.is_empty()
            && p.exe.is_none()
            && p.exe_sha256.is_empty()
            && p.cgroup.is_none()
            && p.unit.is_none()
            && p.comm.is_none());
        if !selects {
            return Err((
                format!("principal[{i}]"),
                format!("principal {:?} has no selector (users, groups, exe, exe_sha256, cgroup, unit, comm)", c.name),
            ));
        }
        let beside_comm = !(p.uids.is_empty()
            && p.gids.is_empty()
            && p.exe.is_none()
            && p.exe_sha256.is_empty()
            && p.cgroup.is_none()
            && p.unit.is_none());
        if !beside_comm {
            // Any process may name itself anything (prctl PR_SET_NAME): alone, comm would
            // make every process that wants to this principal.
            return Err((
                key("comm"),
                format!(
                    "principal {:?} selects by comm alone, which every process sets for \
                     itself; add users, groups, exe, exe_sha256, cgroup or unit",
                    c.name
                ),
            ));
        }
        Ok(p)
    }

    /// Whether `id` is this principal: every selector given matches. A selector on a fact
    /// `id` lacks (procfs not read, the program not named or hashed) is `Unknown`.
    ///
    /// Only facts a process cannot shed are ever `Unknown`: its cgroup and unit. Its program
    /// it can (a copy elsewhere, one changed byte), so a principal chosen by `exe` or
    /// `exe_sha256` confines nothing a later one would widen, and a program not named or
    /// not hashed (replaced by an upgrade while running, in a container, on btrfs, too large)
    /// is simply not that principal's: `No`, as it always was.
    pub fn matches(&self, id: &Identity) -> Match {
        // The cgroup and unit are missing without error only where there is no cgroup v2.
        let cgroup_missing = match id.procfs_error {
            Some(_) => Match::Unknown,
            None => Match::No,
        };
        let glob = |s: &Option<GlobSet>, v: Option<&str>, missing: Match| match (s, v) {
            (None, _) => Match::Yes,
            (Some(g), Some(v)) => Match::of(g.is_match(v)),
            (Some(_), None) => missing,
        };
        let exe = id.exe.as_ref().map(|p| p.to_string_lossy());
        [
            Match::of(self.uids.is_empty() || self.uids.contains(&id.uid)),
            Match::of(self.gids.is_empty() || self.gids.contains(&id.gid)),
            glob(&self.comm, Some(&id.comm), Match::No),
            glob(&self.exe, exe.as_deref(), Match::No),
            glob(&self.cgroup, id.cgroup.as_deref(), cgroup_missing),
            glob(&self.unit, id.unit.as_deref(), cgroup_missing),
            match (&self.exe_sha256[..], &id.exe_sha256) {
                ([], _) => Match::Yes,
                (pinned, Some(h)) => Match::of(pinned.contains(h)),
                (_, None) => Match::No,
            },
        ]
        .into_iter()
        .fold(Match::Yes, Match::and)
    }

    pub fn selects_by_hash(&self) -> bool {
        !self.exe_sha256.is_empty()
    }
}

/// Whether a process is a principal, when a fact that would tell may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Yes,
    No,
    Unknown,
}

impl Match {
    fn of(yes: bool) -> Self {
        if yes {
            Match::Yes
        } else {
            Match::No
        }
    }

    /// Both hold: any No is No (a fact known to differ settles it), else any Unknown.
    fn and(self, other: Match) -> Match {
        match (self, other) {
            (Match::No, _) | (_, Match::No) => Match::No,
            (Match::Unknown, _) | (_, Match::Unknown) => Match::Unknown,
            _ => Match::Yes,
        }
    }
}
