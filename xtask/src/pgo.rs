//! Profile-guided optimisation of the release build (docs/design.md, 7.7).
//!
//! `pgo/mcp-gateway.profdata` is a profile of the daemon, the relays and the bench's client
//! taken under `cargo xtask bench`'s relay and gateway scenarios, committed with the code.
//! Every release build xtask makes (`bench`, `deb`, `run --release`) passes it to rustc
//! (`-Cprofile-use`): LLVM then lays out the code a call runs together and inlines along
//! the paths taken, which goes to what a call through the daemon was losing to
//! instruction-cache misses. `cargo xtask pgo` takes
//! the profile again; a plain `cargo build --release` does not use it.
//!
//! A profile out of date with the code still builds: LLVM drops the counts of every
//! function whose shape changed and optimises those as without a profile.

use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The profile, relative to the workspace root.
pub const PROFILE: &str = "pgo/mcp-gateway.profdata";
/// What made it: the LLVM version of the rustc that took it (a rustc with an older LLVM
/// cannot read it), the rustc, the commit and the scenarios.
const ABOUT: &str = "pgo/profile.txt";
/// `MCP_GATEWAY_PGO=off` builds without the profile (to measure what it brings).
const SWITCH: &str = "MCP_GATEWAY_PGO";
/// The scenarios the profile is taken under: every path a call through the daemon takes
/// in the bench (plain, journald, enforced with redaction and pins under `sync = "always"`
/// and `"none"`, TLS, stdio), and the relays it is judged against (the direct baselines
/// run too).
const TRAINING: &str =
    "relay,http-relay,gateway,gateway-journald,full-always,full-none,gateway-tls,stdio-gateway";

/// Whether a release build uses the profile, and why not when it does not.
#[derive(Clone, Debug)]
pub enum Use {
    /// The profile, copied under a name holding its hash (so that cargo, which tracks the
    /// flags and not the file, rebuilds when the profile changes).
    Profile {
        path: PathBuf,
        hash: String,
    },
    Off(&'static str),
}

impl Use {
    /// For the bench's JSON: the profile's hash, or why there was none.
    pub fn label(&self) -> String {
        match self {
            Use::Profile { hash, .. } => hash.clone(),
            Use::Off(why) => format!("off ({why})"),
        }
    }
}

/// What a release build of this tree uses. Prints why when it is not the profile.
pub fn release(root: &Path) -> Result<Use> {
    if std::env::var_os(SWITCH).is_some_and(|v| v == "off") {
        return Ok(Use::Off("MCP_GATEWAY_PGO=off"));
    }
    let profile = root.join(PROFILE);
    let bytes = match std::fs::read(&profile) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("xtask: NOTE: no {PROFILE}: building without a profile (cargo xtask pgo)");
            return Ok(Use::Off("no profile"));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", profile.display())),
    };
    let (made_by, here) = match (about_llvm(root), llvm_major()) {
        (Ok(m), Ok(h)) => (m, h),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("xtask: NOTE: building without a profile: {e:#}");
            return Ok(Use::Off("its LLVM version unknown"));
        }
    };
    if here < made_by {
        eprintln!(
            "xtask: NOTE: {PROFILE} was taken with LLVM {made_by}, this rustc has LLVM {here}, \
             which cannot read it: building without a profile (update Rust, or take it again \
             with `cargo xtask pgo`)"
        );
        return Ok(Use::Off("profile from a newer LLVM"));
    }
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    let hash = format!("{:016x}", h.finish());
    let dir = root.join("target/pgo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("mcp-gateway-{hash}.profdata"));
    if !path.exists() {
        // Whole or not at all: a copy cut short would keep its name and fail every build.
        let part = dir.join(format!(
            "mcp-gateway-{hash}.profdata.{}",
            std::process::id()
        ));
        std::fs::write(&part, &bytes).with_context(|| format!("writing {}", part.display()))?;
        std::fs::rename(&part, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Use::Profile { path, hash })
}

/// Sets `cmd`'s flags for a release build with `using`: the caller's, and the profile.
pub fn apply(cmd: &mut Command, using: &Use) {
    if let Use::Profile { path, .. } = using {
        let mut flag = OsString::from("-Cprofile-use=");
        flag.push(path);
        add_flags(cmd, [flag]);
    }
}

/// Adds `flags` to the caller's rustc flags for `cmd`, in CARGO_ENCODED_RUSTFLAGS (which
/// cargo reads before RUSTFLAGS, and which keeps a path with a space whole). As RUSTFLAGS
/// does, it stands in for any `rustflags` of cargo's config files.
fn add_flags(cmd: &mut Command, flags: impl IntoIterator<Item = OsString>) {
    let mut all: Vec<OsString> = match std::env::var_os("CARGO_ENCODED_RUSTFLAGS") {
        Some(e) if !e.is_empty() => e
            .to_string_lossy()
            .split('\x1f')
            .map(OsString::from)
            .collect(),
        _ => std::env::var("RUSTFLAGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(OsString::from)
            .collect(),
    };
    all.extend(flags);
    cmd.env("CARGO_ENCODED_RUSTFLAGS", all.join(OsStr::new("\x1f")));
    cmd.env_remove("RUSTFLAGS");
}

/// `cargo xtask pgo`: builds the bench's binaries instrumented (in target/pgo-gen, apart
/// from the release build), runs the bench's scenarios on them (`--quick`), and merges what
/// they counted into `pgo/mcp-gateway.profdata`. The relays and the client are trained
/// too: the release build compiles them with the same profile, so that the columns the
/// gateway is judged against are optimised alike.
pub fn take(root: &Path) -> Result<()> {
    let profdata = llvm_profdata()?;
    super::ensure_deps()?;
    let gen = root.join("target/pgo-gen");
    let raw = gen.join("raw");
    let mut flag = OsString::from("-Cprofile-generate=");
    flag.push(&raw);
    let mut cmd = Command::new(super::cargo_bin());
    add_flags(&mut cmd, [flag]);
    let status = cmd
        .args(super::bench::BUILD)
        .env("CARGO_TARGET_DIR", &gen)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("the instrumented build failed ({status})");
    }
    // Only what the bench runs counts: the build's scripts, instrumented too, wrote here.
    if raw.exists() {
        std::fs::remove_dir_all(&raw).with_context(|| format!("removing {}", raw.display()))?;
    }
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let status = Command::new(exe)
        .args(["bench", "--quick", "--prebuilt", "--only", TRAINING])
        .arg("--bins")
        .arg(gen.join("release"))
        .arg("--out")
        .arg(gen.join("training.json"))
        .status()
        .context("running the bench")?;
    if !status.success() {
        bail!("the training run (cargo xtask bench --only {TRAINING}) failed ({status})");
    }
    let counted = std::fs::read_dir(&raw)
        .with_context(|| {
            format!(
                "the instrumented binaries wrote nothing in {}",
                raw.display()
            )
        })?
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x == "profraw"));
    if !counted {
        bail!(
            "the instrumented binaries wrote no .profraw in {}",
            raw.display()
        );
    }
    // Sparse: functions never run are left out (a third of the size) and optimised as
    // without a profile.
    let out = root.join(PROFILE);
    std::fs::create_dir_all(out.parent().expect("pgo/")).context("creating pgo/")?;
    let status = Command::new(&profdata)
        .args(["merge", "--sparse", "-o"])
        .arg(&out)
        .arg(&raw)
        .status()
        .with_context(|| format!("running {}", profdata.display()))?;
    if !status.success() {
        bail!("llvm-profdata merge failed ({status})");
    }
    let (sha, dirty) = super::bench::git_head(root);
    let about = format!(
        "# What took {PROFILE} (`cargo xtask pgo`); a rustc whose LLVM is older cannot read it.\n\
         llvm = {}\nrustc = {}\ncommit = {sha}{}\nscenarios = {TRAINING}\n",
        llvm_major()?,
        super::rustc_says("release")?,
        if dirty { " (dirty)" } else { "" },
    );
    std::fs::write(root.join(ABOUT), about).context("writing pgo/profile.txt")?;
    eprintln!("xtask: wrote {PROFILE} and {ABOUT}; commit both");
    Ok(())
}

/// The `llvm-profdata` of this rustc's LLVM (rustup's `llvm-tools`, added when missing):
/// another version may write a format this rustc cannot read.
fn llvm_profdata() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let tool = sysroot
        .join("lib/rustlib")
        .join(super::host_triple()?)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        eprintln!("xtask: adding rustup's llvm-tools (llvm-profdata)");
        let ok = Command::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok || !tool.exists() {
            bail!(
                "{} is missing and `rustup component add llvm-tools` did not add it: \
                 install that component",
                tool.display()
            );
        }
    }
    Ok(tool)
}

/// The major version of this rustc's LLVM.
fn llvm_major() -> Result<u32> {
    let line = super::rustc_says("LLVM version")?;
    major(&line).with_context(|| format!("rustc -vV: LLVM version {line:?}"))
}

/// The LLVM major version `pgo/profile.txt` records.
fn about_llvm(root: &Path) -> Result<u32> {
    let path = root.join(ABOUT);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("llvm = "))
        .with_context(|| format!("{}: no `llvm = ` line", path.display()))?;
    major(value).with_context(|| format!("{}: llvm = {value:?}", path.display()))
}

fn major(version: &str) -> Result<u32> {
    let first = version.trim().split('.').next().unwrap_or_default();
    first
        .parse()
        .with_context(|| format!("{first:?} is not a version number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_versions_are_read_and_nonsense_is_refused() {
        assert_eq!(major("22.1.2").unwrap(), 22);
        assert_eq!(major(" 14 ").unwrap(), 14);
        let e = major("twenty-two").unwrap_err().to_string();
        assert!(e.contains("\"twenty-two\" is not a version number"), "{e}");
    }

    #[test]
    fn a_profile_is_added_to_the_callers_flags_not_put_in_their_place() {
        let using = Use::Profile {
            path: PathBuf::from("/p/mcp-gateway-00.profdata"),
            hash: "00".into(),
        };
        let mut cmd = Command::new("true");
        apply(&mut cmd, &using);
        let flags = cmd
            .get_envs()
            .find(|(k, _)| *k == "CARGO_ENCODED_RUSTFLAGS")
            .and_then(|(_, v)| v)
            .expect("CARGO_ENCODED_RUSTFLAGS set")
            .to_string_lossy()
            .into_owned();
        assert!(
            flags.ends_with("-Cprofile-use=/p/mcp-gateway-00.profdata"),
            "{flags}"
        );
        let mut cmd = Command::new("true");
        apply(&mut cmd, &Use::Off("test"));
        assert!(cmd
            .get_envs()
            .all(|(k, _)| k != "RUSTFLAGS" && k != "CARGO_ENCODED_RUSTFLAGS"));
    }
}
