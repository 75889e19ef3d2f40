//! Principals: who a process is, for the rules, from its kernel-attested identity.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

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
        Ok(p)
    }

    /// Whether `id` is this principal: every selector given matches.
    pub fn matches(&self, id: &Identity, hashes: &ExeHashes) -> bool {
        let set = |s: &Option<GlobSet>, v: Option<&str>| match s {
            None => true,
            Some(g) => v.is_some_and(|v| g.is_match(v)),
        };
        (self.uids.is_empty() || self.uids.contains(&id.uid))
            && (self.gids.is_empty() || self.gids.contains(&id.gid))
            && set(&self.exe, id.exe.as_ref().and_then(|p| p.to_str()))
            && set(&self.cgroup, id.cgroup.as_deref())
            && set(&self.unit, id.unit.as_deref())
            && set(&self.comm, Some(&id.comm))
            && (self.exe_sha256.is_empty()
                || hashes.of(id).is_some_and(|h| self.exe_sha256.contains(&h)))
    }
}

/// SHA-256 of executables, read through /proc/PID/exe (the very file the process runs,
/// even if its path was replaced since) and cached by inode and change time.
#[derive(Default)]
pub struct ExeHashes {
    cache: Mutex<HashMap<HashKey, String>>,
}

/// What a file's bytes are remembered by. The change time, not the modification time: a
/// file's owner can set its modification time back after changing it (utimensat), but
/// every write and every such setting moves the change time on, and only the kernel sets it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct HashKey {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
}

impl ExeHashes {
    pub fn of(&self, id: &Identity) -> Option<String> {
        id.exe.as_ref()?;
        let mut f = std::fs::File::open(format!("/proc/{}/exe", id.tgid)).ok()?;
        let m = f.metadata().ok()?;
        // The file it runs now must be the one it connected with (it may have exec'd).
        if id
            .exe_file
            .is_some_and(|e| (e.dev, e.ino) != (m.dev(), m.ino()))
        {
            return None;
        }
        let key = HashKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            ctime: (m.ctime(), m.ctime_nsec()),
        };
        if let Some(h) = self.cache.lock().ok()?.get(&key) {
            return Some(h.clone());
        }
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut hasher, &buf[..n]);
        }
        let h = hex::encode(sha2::Digest::finalize(hasher));
        self.cache.lock().ok()?.insert(key, h.clone());
        Some(h)
    }
}
