//! `cargo xtask peers`: installs the official MCP peers the integration tests run, from the
//! lock files in `tests/peers/`, into `target/peers/` (never globally):
//!
//! - `target/peers/node`: `npm ci` of `tests/peers/package.json` + `package-lock.json`
//!   (@modelcontextprotocol/server-everything and its dependencies);
//! - `target/peers/venv`: a venv of Debian's `/usr/bin/python3` (readable by every uid, unlike a
//!   per-user pyenv) with `pip install -r tests/peers/requirements.txt` (the `mcp` SDK).
//!
//! Each half is redone only when its inputs changed: a stamp file beside it holds a hash of
//! its lock file(s), the interpreter's version and this recipe's version. Everything under
//! `target/peers` is made world-readable, since the tests run the peers as agent users.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Bump when the install steps change, so that existing installs are redone.
const RECIPE: u32 = 1;

/// Debian's interpreter: every uid can run it and the venv built from it.
const PYTHON: &str = "/usr/bin/python3";

/// Oldest Node.js major the locked packages run on (their `engines` say >= 18; the newest
/// need 20 and only warn below it).
const MIN_NODE_MAJOR: u32 = 18;

const RERUN: &str = "then run `cargo xtask peers` again";

/// Installs (or checks) the peers; fast when nothing changed.
pub fn install(root: &Path) -> Result<()> {
    let src = root.join("tests/peers");
    let dir = root.join("target/peers");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Two xtasks at once (say `cargo xtask test` in two terminals) take turns.
    let _lock = Lock::take(&dir.join(".lock"))?;

    let started = Instant::now();
    let mut did = Vec::new();
    if install_node(&src, &dir)? {
        did.push("node");
    }
    if install_venv(&src, &dir)? {
        did.push("venv");
    }
    make_world_readable(&dir)?;
    if did.is_empty() {
        eprintln!("xtask: MCP test peers up to date in {}", dir.display());
    } else {
        eprintln!(
            "xtask: installed MCP test peers ({}) in {} in {:.1} s",
            did.join(", "),
            dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// server-everything into `target/peers/node`; returns whether it (re)installed.
fn install_node(src: &Path, dir: &Path) -> Result<bool> {
    let node_version = tool_version("node", &["--version"]).with_context(|| {
        format!(
            "Node.js (`node`) is needed for the MCP test peers: install Node.js >= 20 with npm \
             (as root: `cargo xtask deps`, or `apt-get install nodejs npm`), {RERUN}"
        )
    })?;
    let major: u32 = node_version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the Node.js version {node_version:?}"))?;
    if major < MIN_NODE_MAJOR {
        bail!(
            "Node.js {node_version} is too old for @modelcontextprotocol/server-everything \
             (needs >= {MIN_NODE_MAJOR}, best 20): install a newer Node.js, {RERUN}"
        );
    }
    let npm_version = tool_version("npm", &["--version"]).with_context(|| {
        format!(
            "npm is needed for the MCP test peers: install it (as root: `cargo xtask deps`, or \
             `apt-get install npm`), {RERUN}"
        )
    })?;

    let inputs = ["package.json", "package-lock.json"];
    let mut stamp = format!("recipe {RECIPE}\nnode {node_version}\nnpm {npm_version}\n");
    stamp += &inputs_hash(src, &inputs)?;
    let node_dir = dir.join("node");
    let stamp_path = dir.join(".stamp-node");
    let entry = node_dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if up_to_date(&stamp_path, &stamp, &entry) {
        return Ok(false);
    }

    eprintln!(
        "xtask: installing tests/peers/package-lock.json into {} (npm ci)",
        node_dir.display()
    );
    let _ = fs::remove_file(&stamp_path);
    fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
    for name in inputs {
        fs::copy(src.join(name), node_dir.join(name))
            .with_context(|| format!("copying tests/peers/{name} to {}", node_dir.display()))?;
    }
    let status = Command::new("npm")
        .arg("ci")
        .arg("--prefix")
        .arg(&node_dir)
        .args([
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .status()
        .context("running npm")?;
    if !status.success() {
        bail!(
            "`npm ci --prefix {}` failed ({status}) installing tests/peers/package-lock.json \
             (npm's message is above; it needs the npm registry); {RERUN}",
            node_dir.display()
        );
    }
    if !entry.exists() {
        bail!(
            "`npm ci` succeeded but {} is missing: does tests/peers/package.json still depend \
             on @modelcontextprotocol/server-everything?",
            entry.display()
        );
    }
    fs::write(&stamp_path, stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(true)
}

/// The Python SDK into the venv `target/peers/venv`; returns whether it (re)installed.
fn install_venv(src: &Path, dir: &Path) -> Result<bool> {
    let python_version = tool_version(PYTHON, &["--version"]).with_context(|| {
        format!(
            "{PYTHON} is needed for the MCP test peers: install it (as root: `cargo xtask deps`, \
             or `apt-get install python3 python3-venv`), {RERUN}"
        )
    })?;
    let mut stamp = format!("recipe {RECIPE}\npython {python_version}\n");
    stamp += &inputs_hash(src, &["requirements.txt"])?;
    let venv = dir.join("venv");
    let stamp_path = dir.join(".stamp-venv");
    let python = venv.join("bin/python");
    if up_to_date(&stamp_path, &stamp, &python) {
        return Ok(false);
    }

    eprintln!(
        "xtask: creating {} with tests/peers/requirements.txt (pip)",
        venv.display()
    );
    let _ = fs::remove_file(&stamp_path);
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    let out = Command::new(PYTHON)
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .with_context(|| format!("running {PYTHON} -m venv"))?;
    if !out.status.success() {
        bail!(
            "`{PYTHON} -m venv {}` failed ({}): {}{}Debian needs the package python3-venv for \
             it (as root: `cargo xtask deps`, or `apt-get install python3-venv`); {RERUN}",
            venv.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-r",
        ])
        .arg(src.join("requirements.txt"))
        .status()
        .with_context(|| format!("running {} -m pip", python.display()))?;
    if !status.success() {
        bail!(
            "`pip install -r tests/peers/requirements.txt` into {} failed ({status}; pip's \
             message is above; it needs PyPI); {RERUN}",
            venv.display()
        );
    }
    let check = Command::new(&python)
        .args(["-c", "import mcp.client.streamable_http, mcp.client.sse"])
        .output()
        .context("checking the venv")?;
    if !check.status.success() {
        bail!(
            "the venv {} cannot import the MCP SDK: {}; {RERUN}",
            venv.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    fs::write(&stamp_path, stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(true)
}

/// What a tool prints for its version, or an error when it does not run.
fn tool_version(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("`{program}` not found"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed ({})", args.join(" "), out.status);
    }
    let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Ok(text)
}

/// One line per input file: its name and a 64-bit FNV-1a hash of its bytes.
fn inputs_hash(src: &Path, names: &[&str]) -> Result<String> {
    let mut s = String::new();
    for name in names {
        let path = src.join(name);
        let bytes = fs::read(&path).with_context(|| {
            format!(
                "reading {} (the peers' lock files are part of the repository)",
                path.display()
            )
        })?;
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        s += &format!("{name} {hash:016x}\n");
    }
    Ok(s)
}

fn up_to_date(stamp_path: &Path, stamp: &str, must_exist: &Path) -> bool {
    must_exist.exists() && fs::read_to_string(stamp_path).is_ok_and(|s| s == stamp)
}

/// `chmod -R a+rX`: the tests run the peers as other uids (agent users).
fn make_world_readable(dir: &Path) -> Result<()> {
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        let want = if meta.is_dir() || mode & 0o111 != 0 {
            mode | 0o555
        } else {
            mode | 0o444
        };
        if want != mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(want))
                .with_context(|| format!("making {} world-readable", path.display()))?;
        }
        if meta.is_dir() {
            for entry in
                fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))?
            {
                stack.push(entry?.path());
            }
        }
    }
    // And the way there: target/ (a umask of 077 makes it private).
    if let Some(target) = dir.parent() {
        let mode = fs::metadata(target)?.permissions().mode();
        if mode & 0o005 != 0o005 {
            fs::set_permissions(target, fs::Permissions::from_mode(mode | 0o005))
                .with_context(|| format!("making {} world-searchable", target.display()))?;
        }
    }
    Ok(())
}

/// An exclusive `flock` on a file, released when dropped.
struct Lock {
    _file: fs::File,
}

impl Lock {
    fn take(path: &Path) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; blocks until the lock is free.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Lock { _file: file })
    }
}
