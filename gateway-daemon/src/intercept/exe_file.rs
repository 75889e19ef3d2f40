//! An executable file as the kernel's records name it, and the same name for a file the
//! daemon looks at itself.
//!
//! The records (connect4's, the exec notes) carry the device of the file's filesystem as
//! its superblock has it, the inode and the change time. `stat` shows the same device on
//! most filesystems, not on btrfs: there it is the subvolume's own (the top one's too),
//! so every program compared as another file and read as exec'd since connecting, and
//! `exe` and `exe_sha256` selectors never matched on a btrfs root. The superblock's device
//! is the one mountinfo lists for the file's mount. Files of two subvolumes of one btrfs
//! can share an inode number under that device; the change time, which the kernel sets
//! and no one can set back, tells them apart, and is part of the name.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// An executable file: its filesystem's device (the superblock's), inode and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ExeFile {
    pub dev: u64,
    pub ino: u64,
    /// Seconds and nanoseconds. Compared, not recorded (records carry `dev` and `ino`).
    #[serde(skip)]
    pub ctime: (i64, u32),
}

impl ExeFile {
    /// From a record: the kernel's encoding of a device (major << 20 | minor).
    pub fn from_kernel(kdev: u32, ino: u64, ctime: (i64, u32)) -> Option<Self> {
        (ino != 0).then(|| ExeFile {
            dev: libc::makedev(kdev >> 20, kdev & 0xf_ffff),
            ino,
            ctime,
        })
    }

    /// The file at `path` (following links, `/proc/PID/exe` too). `pid`: the process whose
    /// mount namespace `path` is resolved in, when not the daemon's (a `/proc/PID/…` path).
    pub fn of_path(path: &Path, pid: Option<u32>) -> Option<Self> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .ok()?;
        let m = f.metadata().ok()?;
        Self::of_file(f.as_fd(), &m, pid)
    }

    /// The open file `fd`, whose metadata is `m`.
    pub fn of_file(fd: BorrowedFd<'_>, m: &std::fs::Metadata, pid: Option<u32>) -> Option<Self> {
        Some(ExeFile {
            dev: superblock_dev(fd, m.dev(), pid)?,
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec() as u32),
        })
    }

    /// The same inode, whatever its change time.
    pub fn same_inode(&self, other: &ExeFile) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// The device the superblock of `fd`'s filesystem has, given the one `stat` showed.
fn superblock_dev(fd: BorrowedFd<'_>, st_dev: u64, pid: Option<u32>) -> Option<u64> {
    // A block device's number is the superblock's; only anonymous devices (major 0) may
    // differ, and only btrfs's do.
    if libc::major(st_dev) != 0 {
        return Some(st_dev);
    }
    let fs = nix::sys::statfs::fstatfs(fd).ok()?;
    if fs.filesystem_type() != nix::sys::statfs::BTRFS_SUPER_MAGIC {
        return Some(st_dev);
    }
    let mount = mount_id(fd)?;
    // Mount ids are the system's, not a namespace's; the mount is listed in the namespace
    // the path was resolved in. The daemon's own table first: the process's is the
    // agent's to fill (a user namespace may hold 100,000 mounts), so it is read only when
    // needed, a line at a time.
    let tables = std::iter::once("/proc/self/mountinfo".to_string())
        .chain(pid.map(|p| format!("/proc/{p}/mountinfo")));
    for table in tables {
        let Ok(f) = std::fs::File::open(table) else {
            continue;
        };
        if let Some(dev) = device_of_mount(std::io::BufReader::new(f), mount) {
            return Some(dev);
        }
    }
    // Not found (a namespace the process left): no name, rather than another file's.
    None
}

/// `statx`'s mount id of `fd`.
fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: `stx` is a plain C struct the kernel fills; the empty path with AT_EMPTY_PATH
    // names `fd` itself.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// The device (`major:minor`, the third field) of mount `id` in a mountinfo table.
fn device_of_mount(table: impl std::io::BufRead, id: u64) -> Option<u64> {
    table.split(b'\n').map_while(Result::ok).find_map(|line| {
        let line = std::str::from_utf8(&line).ok()?;
        let mut fields = line.split(' ');
        if fields.next()?.parse::<u64>().ok()? != id {
            return None;
        }
        let (major, minor) = fields.nth(1)?.split_once(':')?;
        Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_s_device_is_read_from_its_own_line_only() {
        let table = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                     48 27 0:41 / /mnt/b rw,relatime - btrfs /dev/loop0 rw,subvol=/\n\
                     481 27 0:410 / /mnt/c rw - btrfs /dev/loop1 rw\n";
        let of = |table: &str, id| device_of_mount(table.as_bytes(), id);
        assert_eq!(of(table, 48), Some(libc::makedev(0, 41)));
        assert_eq!(of(table, 481), Some(libc::makedev(0, 410)));
        assert_eq!(of(table, 4), None);
        assert_eq!(of("garbage\n\n48 x", 48), None);
    }

    #[test]
    fn a_file_on_an_ordinary_filesystem_is_named_as_stat_shows_it() {
        let exe = std::env::current_exe().unwrap();
        let m = std::fs::metadata(&exe).unwrap();
        let f = ExeFile::of_path(&exe, None).unwrap();
        assert_eq!((f.ino, f.ctime.0), (m.ino(), m.ctime()));
        if libc::major(m.dev()) != 0 {
            assert_eq!(f.dev, m.dev());
        }
    }
}
