//! `mcp-gateway exec`: run a command inside an agent cgroup, for ad-hoc use and tests.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context};

use crate::intercept::cgroup;

pub fn exec(
    cgroup_rel: &str,
    user: Option<&str>,
    argv: &[std::ffi::OsString],
) -> anyhow::Result<()> {
    if argv.is_empty() {
        bail!("no command given: mcp-gateway exec [--cgroup NAME] [--user USER] -- CMD [ARGS...]");
    }
    // Resolve the user before anything changes, so a typo fails cleanly.
    let user = user.map(resolve_user).transpose()?;
    let mount = cgroup::cgroup2_mount()?;
    cgroup::ensure(&mount, cgroup_rel)?;
    let path = cgroup::path_of(&mount, cgroup_rel);
    cgroup::join(&path, std::process::id())?;
    // Joining the cgroup needs root; the command itself then runs as the agent user.
    if let Some(u) = user {
        let name = CString::new(u.name.clone()).context("user name contains a NUL byte")?;
        nix::unistd::initgroups(&name, u.gid).context("initgroups")?;
        nix::unistd::setgid(u.gid).context("setgid")?;
        nix::unistd::setuid(u.uid).context("setuid")?;
    }
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument contains a NUL byte")?;
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    bail!("cannot run {}: {err}", Path::new(&argv[0]).display())
}

/// A user by name or uid (a uid without a passwd entry runs with gid = uid).
fn resolve_user(spec: &str) -> anyhow::Result<nix::unistd::User> {
    use nix::unistd::{Gid, Uid, User};
    if let Ok(uid) = spec.parse::<u32>() {
        return Ok(User::from_uid(Uid::from_raw(uid))?.unwrap_or_else(|| User {
            name: spec.to_string(),
            passwd: CString::default(),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(uid),
            gecos: CString::default(),
            dir: "/".into(),
            shell: "/bin/sh".into(),
        }));
    }
    User::from_name(spec)?.with_context(|| format!("no such user {spec:?}"))
}
