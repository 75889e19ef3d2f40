//! `mcp-gateway exec`: run a command inside an agent cgroup, for ad-hoc use and tests.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context};

use crate::intercept::cgroup;

pub fn exec(cgroup_rel: &str, argv: &[std::ffi::OsString]) -> anyhow::Result<()> {
    if argv.is_empty() {
        bail!("no command given: mcp-gateway exec [--cgroup NAME] -- CMD [ARGS...]");
    }
    let mount = cgroup::cgroup2_mount()?;
    cgroup::ensure(&mount, cgroup_rel)?;
    let path = cgroup::path_of(&mount, cgroup_rel);
    cgroup::join(&path, std::process::id())?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument contains a NUL byte")?;
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    bail!("cannot run {}: {err}", Path::new(&argv[0]).display())
}
