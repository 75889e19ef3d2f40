//! Paths as the exec'ing process sees them. The daemon walks the path itself, link by link,
//! reading `/proc/self` and `/proc/thread-self` as the process's (a link to `/proc/self/fd/3`
//! names the process's descriptor 3, not the daemon's), and stops at the kernel's magic
//! links (`/proc/PID/fd/N`, `/proc/PID/cwd`), which the daemon opens as the process's.
//!
//! A path that resolves nowhere runs nothing: its exec fails.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Links followed before a path counts as unresolvable (the kernel's limit).
const MAX_LINKS: usize = 40;

/// A file an exec names.
pub struct Target {
    /// Where the daemon opens it.
    pub open: PathBuf,
    /// Its name, for matching: the path it was reached by (a descriptor's target).
    pub shown: String,
}

fn is_proc_magic(p: &Path) -> bool {
    // /proc/N/{fd/M,cwd,root,exe,map_files/...}: their targets are not paths to walk.
    let mut c = p.components();
    matches!(
        (c.next(), c.next(), c.next(), c.next()),
        (Some(Component::RootDir), Some(Component::Normal(proc)), Some(Component::Normal(n)), Some(Component::Normal(what)))
            if proc == "proc"
                && n.as_bytes().iter().all(u8::is_ascii_digit)
                && matches!(what.as_bytes(), b"fd" | b"cwd" | b"root" | b"exe" | b"map_files" | b"task")
    )
}

/// `path` (absolute) resolved as process `pid` sees it.
pub fn as_seen_by(pid: u32, path: &Path) -> Option<Target> {
    let mut todo: VecDeque<OsString> = VecDeque::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => todo.push_back(n.to_owned()),
            Component::ParentDir => todo.push_back("..".into()),
            _ => {}
        }
    }
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    let mut magic = false;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            if !magic {
                cur.pop();
            } else {
                // Above a magic link: where it leads is not a path the daemon can walk.
                return None;
            }
            continue;
        }
        let mut next = cur.join(&c);
        if next == Path::new("/proc/self") {
            next = PathBuf::from(format!("/proc/{pid}"));
        } else if next == Path::new("/proc/thread-self") {
            next = PathBuf::from(format!("/proc/{pid}/task/{pid}"));
        }
        let meta = std::fs::symlink_metadata(&next).ok()?;
        if meta.file_type().is_symlink() && !magic && !is_proc_magic(&next) {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = std::fs::read_link(&next).ok()?;
            let mut front: Vec<OsString> = Vec::new();
            for c in target.components() {
                match c {
                    Component::Normal(n) => front.push(n.to_owned()),
                    Component::ParentDir => front.push("..".into()),
                    _ => {}
                }
            }
            for c in front.into_iter().rev() {
                todo.push_front(c);
            }
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            continue;
        }
        if is_proc_magic(&next) && meta.file_type().is_symlink() {
            magic = true;
        }
        cur = next;
    }
    let shown = if magic {
        // The descriptor's or directory's target as the kernel names it
        // (`/memfd:x (deleted)` for a memfd), then what follows it.
        magic_name(&cur)
    } else {
        cur.display().to_string()
    };
    Some(Target { open: cur, shown })
}

/// The name the kernel gives what a path through a magic link reaches.
fn magic_name(p: &Path) -> String {
    // Walk up to the magic link, read it, and put the rest back.
    let mut head = p.to_path_buf();
    let mut rest: Vec<OsString> = Vec::new();
    while !is_proc_magic_link(&head) {
        match head.file_name() {
            Some(n) => rest.push(n.to_owned()),
            None => return p.display().to_string(),
        }
        head.pop();
    }
    let mut name = std::fs::read_link(&head).unwrap_or(head);
    for r in rest.into_iter().rev() {
        name.push(r);
    }
    name.display().to_string()
}

fn is_proc_magic_link(p: &Path) -> bool {
    is_proc_magic(p)
        && std::fs::symlink_metadata(p)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
}

/// The interpreter line of a script (`#!INTERP [ARG]`), as the kernel splits it.
pub fn shebang(file: &Path) -> Option<(String, Option<String>)> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(file).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|b| *b == b'\n').unwrap_or(line.len())];
    let text = String::from_utf8_lossy(line);
    let text = text.trim_matches([' ', '\t']);
    let (interp, arg) = match text.find([' ', '\t']) {
        Some(i) => (
            &text[..i],
            Some(text[i..].trim_matches([' ', '\t']).to_string()),
        ),
        None => (text, None),
    };
    (!interp.is_empty()).then(|| (interp.to_string(), arg.filter(|a| !a.is_empty())))
}

/// Each argument that names an existing file relative to `cwd`, as an absolute path (an
/// interpreter's script is often given relative to where the agent runs it).
pub fn absolute_args(pid: u32, cwd: Option<&Path>, argv: &[String]) -> Vec<Option<String>> {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.starts_with('-') {
                return None;
            }
            let p = Path::new(OsStr::new(a));
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd?.join(p)
            };
            let t = as_seen_by(pid, &abs)?;
            std::fs::metadata(&t.open)
                .ok()
                .filter(|m| m.is_file())
                .map(|_| t.shown)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_is_the_process_not_the_daemon() {
        // Our own pid: /proc/self/exe as seen by us is our executable.
        let me = std::process::id();
        let t = as_seen_by(me, Path::new("/proc/self/exe")).unwrap();
        assert_eq!(t.open, PathBuf::from(format!("/proc/{me}/exe")));
        assert_eq!(
            t.shown,
            std::fs::read_link("/proc/self/exe")
                .unwrap()
                .display()
                .to_string()
        );
        // A link to /proc/self/... is followed as the process's too.
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("/proc/self/exe", &l).unwrap();
        let t = as_seen_by(me, &l).unwrap();
        assert_eq!(t.open, PathBuf::from(format!("/proc/{me}/exe")));
    }

    #[test]
    fn links_and_dots_resolve_and_missing_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), "#!/usr/bin/env python3 -u\n").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("via")).unwrap();
        let me = std::process::id();
        let t = as_seen_by(me, &dir.path().join("via/../via/./f")).unwrap();
        assert_eq!(t.shown, real.join("f").display().to_string());
        assert!(as_seen_by(me, &dir.path().join("nothing")).is_none());
        assert_eq!(
            shebang(&real.join("f")),
            Some(("/usr/bin/env".to_string(), Some("python3 -u".to_string())))
        );
        let args = ["-u".to_string(), "f".to_string(), "missing".to_string()];
        assert_eq!(
            absolute_args(me, Some(&real), &args),
            vec![None, Some(real.join("f").display().to_string()), None]
        );
    }
}
