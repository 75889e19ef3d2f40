//! Binding the admin socket: its directory, a stale file left by a crashed daemon, its
//! owner group and mode.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::unistd::{chown, Group};

use super::peer::Admins;
use super::AdminError;
use crate::config;

/// The bound admin socket, ready for [`super::serve`]. Binding needs no async runtime.
#[derive(Debug)]
pub struct AdminListener {
    pub(super) listener: UnixListener,
    pub(super) admins: Admins,
    pub(super) file: SocketFile,
}

impl AdminListener {
    /// Binds `cfg.socket`, creating its directory (0755) when missing and replacing a socket
    /// file nobody answers on. The socket gets mode 0660 and group `cfg.group`, or 0600 when
    /// that group does not exist.
    pub fn bind(cfg: &config::Admin) -> Result<AdminListener, AdminError> {
        Self::bind_inner(cfg, None)
    }

    /// Like [`AdminListener::bind`] with another file mode, so tests can let a non-member
    /// reach the socket and meet the peer-credential check behind it.
    #[cfg(test)]
    pub(crate) fn bind_with_mode(
        cfg: &config::Admin,
        mode: u32,
    ) -> Result<AdminListener, AdminError> {
        Self::bind_inner(cfg, Some(mode))
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    fn bind_inner(cfg: &config::Admin, mode: Option<u32>) -> Result<AdminListener, AdminError> {
        let path = &cfg.socket;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| AdminError::Io {
                    what: "creating the admin socket's directory",
                    path: dir.to_owned(),
                    source,
                })?;
        }
        remove_stale(path)?;
        // Until the mode and group below are set the file has the umask's mode; a client
        // that slips in meanwhile still meets the peer-credential check.
        let listener = UnixListener::bind(path).map_err(|source| AdminError::Io {
            what: "binding the admin socket",
            path: path.clone(),
            source,
        })?;
        let file = SocketFile::new(path)?;
        let admins = Admins {
            group: cfg.group.clone(),
            gid: resolve_group(&cfg.group, path),
        };
        if let Some(gid) = admins.gid {
            chown(path, None, Some(gid)).map_err(|e| AdminError::Io {
                what: "giving the admin socket to group",
                path: path.clone(),
                source: e.into(),
            })?;
        }
        let mode = mode.unwrap_or(if admins.gid.is_some() { 0o660 } else { 0o600 });
        fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|source| {
            AdminError::Io {
                what: "setting the mode of the admin socket",
                path: path.clone(),
                source,
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| AdminError::Io {
                what: "making the admin socket non-blocking",
                path: path.clone(),
                source,
            })?;
        Ok(AdminListener {
            listener,
            admins,
            file,
        })
    }
}

fn resolve_group(group: &str, socket: &Path) -> Option<nix::unistd::Gid> {
    match Group::from_name(group) {
        Ok(Some(g)) => Some(g.gid),
        Ok(None) => {
            tracing::warn!(
                group,
                socket = %socket.display(),
                "the admin group does not exist, so the admin socket is root-only (mode 0600); \
                 create the group or set admin.group"
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                group,
                socket = %socket.display(),
                error = %e,
                "cannot look up the admin group, so the admin socket is root-only (mode 0600)"
            );
            None
        }
    }
}

/// A socket file left behind by a daemon that died without unlinking it would make bind
/// fail; one that still answers belongs to a live daemon and must not be stolen.
fn remove_stale(path: &Path) -> Result<(), AdminError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(AdminError::Io {
                what: "inspecting",
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(AdminError::AnotherDaemon {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(AdminError::Io {
                    what: "removing the stale admin socket",
                    path: path.to_owned(),
                    source: e,
                }),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AdminError::Io {
            what: "checking whether another daemon answers on",
            path: path.to_owned(),
            source,
        }),
    }
}

/// The socket file this daemon created; removed when the listener goes away, unless another
/// daemon has since put its own socket at the same path.
#[derive(Debug)]
pub(super) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: &Path) -> Result<Self, AdminError> {
        let meta = fs::symlink_metadata(path).map_err(|source| AdminError::Io {
            what: "inspecting the new admin socket",
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}
