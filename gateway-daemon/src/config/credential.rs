//! `[[server.credential]]`: request headers the gateway sets toward a configured server
//! with values the agent never holds (a file, or a systemd credential), and agent headers
//! it removes. Validation here checks the shape only; the secrets are read when the daemon
//! starts (`mcp::inject::load`), so that the admin CLIs, which load the same config without
//! the right to read them, keep working.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::Server;

/// Longest secret read (header values past a few KiB are refused by most servers anyway).
pub const MAX_SECRET_BYTES: usize = 16 * 1024;
/// Shortest secret accepted: a shorter value could not be told apart from ordinary text
/// when the gateway scrubs echoes of it from responses.
pub const MIN_SECRET_BYTES: usize = 8;
/// Where `format` puts the secret.
pub const PLACEHOLDER: &str = "{}";

/// One header toward one server. With `file` or `systemd` the gateway sets it (replacing
/// whatever the agent sent under that name); with neither it only removes the agent's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The request header, e.g. "Authorization" (any case).
    pub header: String,
    /// A file holding the secret; a trailing newline (and other trailing whitespace) is
    /// not part of it.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A systemd credential (`LoadCredential=NAME:/path` in the unit): the secret is read
    /// from `$CREDENTIALS_DIRECTORY/NAME`.
    #[serde(default)]
    pub systemd: Option<String>,
    /// The header value, `{}` standing for the secret, e.g. "Bearer {}". Default "{}".
    #[serde(default)]
    pub format: Option<String>,
    /// Also set it on requests to this server that are not MCP (REST calls, downloads):
    /// they are not decided by the policy, so this is off by default and such requests
    /// only lose the agent's header.
    #[serde(default)]
    pub non_mcp: bool,
}

/// A credential problem, naming the config key (`server[0].credential[1].file`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct CredentialError {
    pub key: String,
    pub message: String,
}

/// A secret value. Its `Debug` says how long it is, never what it is.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub(crate) fn for_tests(s: &str) -> Secret {
        Secret(s.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Headers that frame, route or identify the exchange: the gateway relies on them itself,
/// so a credential can neither set nor remove them.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-type",
    "accept",
    "last-event-id",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

fn key(server: usize, cred: usize, field: Option<&str>) -> String {
    match field {
        Some(f) => format!("server[{server}].credential[{cred}].{f}"),
        None => format!("server[{server}].credential[{cred}]"),
    }
}

fn err(key: String, message: impl Into<String>) -> CredentialError {
    CredentialError {
        key,
        message: message.into(),
    }
}

impl Credential {
    /// The header's name, checked: a valid HTTP token, not one the gateway relies on.
    pub fn header_name(&self, server: usize, cred: usize) -> Result<HeaderName, CredentialError> {
        let k = || key(server, cred, Some("header"));
        let name = HeaderName::from_bytes(self.header.as_bytes())
            .map_err(|_| err(k(), format!("{:?} is not an HTTP header name", self.header)))?;
        if RESERVED.contains(&name.as_str()) {
            return Err(err(
                k(),
                format!(
                    "{:?} is a header the gateway relies on (framing, routing, MCP); \
                     credentials go in others, e.g. Authorization",
                    self.header
                ),
            ));
        }
        Ok(name)
    }

    /// Whether the gateway sets this header (as opposed to only removing the agent's).
    pub fn injects(&self) -> bool {
        self.file.is_some() || self.systemd.is_some()
    }

    fn format(&self) -> &str {
        self.format.as_deref().unwrap_or(PLACEHOLDER)
    }

    /// Checks everything but the secret itself (which `read_secret` checks).
    pub fn check(&self, server: usize, cred: usize) -> Result<HeaderName, CredentialError> {
        let name = self.header_name(server, cred)?;
        match (&self.file, &self.systemd) {
            (Some(_), Some(_)) => {
                return Err(err(
                    key(server, cred, None),
                    "set `file` or `systemd`, not both",
                ))
            }
            (Some(f), None) if !f.is_absolute() => {
                return Err(err(
                    key(server, cred, Some("file")),
                    format!("{} must be an absolute path", f.display()),
                ))
            }
            (None, Some(n)) if !valid_systemd_name(n) => {
                return Err(err(
                    key(server, cred, Some("systemd")),
                    format!(
                        "{n:?} is not a systemd credential name (a file name: no '/', \
                         not empty, not \".\" or \"..\")"
                    ),
                ))
            }
            _ => {}
        }
        if let Some(f) = &self.format {
            let k = || key(server, cred, Some("format"));
            if !self.injects() {
                return Err(err(
                    k(),
                    "without `file` or `systemd` nothing is injected: remove `format`, or \
                     say where the secret is",
                ));
            }
            if f.matches(PLACEHOLDER).count() != 1 {
                return Err(err(
                    k(),
                    format!("{f:?} must contain `{{}}` exactly once (where the secret goes)"),
                ));
            }
            if f.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
                return Err(err(
                    k(),
                    "must be printable ASCII (no line breaks or control characters)",
                ));
            }
        }
        if self.non_mcp && !self.injects() {
            return Err(err(
                key(server, cred, Some("non_mcp")),
                "only meaningful with `file` or `systemd`: the agent's header is removed from \
                 every request anyway",
            ));
        }
        Ok(name)
    }

    /// Where the secret is read from, and the key that names it; None when nothing is
    /// injected.
    pub fn source(
        &self,
        server: usize,
        cred: usize,
        credentials_dir: Option<&Path>,
    ) -> Option<Result<(PathBuf, String), CredentialError>> {
        if let Some(f) = &self.file {
            return Some(Ok((f.clone(), key(server, cred, Some("file")))));
        }
        let name = self.systemd.as_ref()?;
        let k = key(server, cred, Some("systemd"));
        Some(match credentials_dir {
            Some(dir) => Ok((dir.join(name), k)),
            None => Err(err(
                k,
                format!(
                    "$CREDENTIALS_DIRECTORY is not set, so the systemd credential {name:?} \
                     cannot be found: run the daemon from its unit with \
                     `LoadCredential={name}:/path/to/secret` (by hand: set \
                     CREDENTIALS_DIRECTORY=/run/credentials/mcp-gateway.service)"
                ),
            )),
        })
    }

    /// Reads and checks the secret (None when this entry only removes the agent's header).
    /// `credentials_dir` is `$CREDENTIALS_DIRECTORY`.
    pub fn read_secret(
        &self,
        server: usize,
        cred: usize,
        credentials_dir: Option<&Path>,
    ) -> Result<Option<Secret>, CredentialError> {
        let Some(source) = self.source(server, cred, credentials_dir) else {
            return Ok(None);
        };
        let (path, k) = source?;
        read_secret_file(&path).map(Some).map_err(|m| err(k, m))
    }

    /// The header value for `secret`, marked sensitive (h2 never indexes it).
    pub fn header_value(&self, secret: &Secret) -> HeaderValue {
        let text = self.format().replacen(PLACEHOLDER, secret.expose(), 1);
        let mut v =
            HeaderValue::from_str(&text).expect("checked: format and secret are printable ASCII");
        v.set_sensitive(true);
        v
    }
}

fn valid_systemd_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0']) && n.len() <= 255
}

/// The secret in `path`: a regular file other users cannot read, printable ASCII, trailing
/// whitespace trimmed. Errors name the file and say what to do, never show its content.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let mut f = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot read the credential file {shown}: {e} (it must exist and be readable by root)"
        )
    })?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read the credential file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(format!(
            "{shown} is readable by every user (mode {mode:04o}), agents included: \
             `chmod o-r {shown}` (0600 root-owned is best)"
        ));
    }
    let mut raw = Vec::new();
    (&mut f)
        .take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read the credential file {shown}: {e}"))?;
    if raw.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "{shown} is larger than {MAX_SECRET_BYTES} bytes: not a header value"
        ));
    }
    let end = raw
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let value = &raw[..end];
    if value.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    if let Some(i) = value.iter().position(|&b| b == b'\r' || b == b'\n') {
        return Err(format!(
            "{shown} has a line break inside the value (byte {i}): one header value per \
             file, else a second header could be injected"
        ));
    }
    if let Some(i) = value
        .iter()
        .position(|&b| !(b == b' ' || b.is_ascii_graphic()))
    {
        return Err(format!(
            "{shown} has byte 0x{:02x} at offset {i}: a credential must be printable ASCII \
             (encode it, e.g. base64)",
            value[i]
        ));
    }
    if value[0] == b' ' {
        return Err(format!(
            "{shown} starts with a space, which HTTP would drop: remove it"
        ));
    }
    if value.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{shown} holds fewer than {MIN_SECRET_BYTES} characters: too short to be a \
             credential, and to be told apart from ordinary text in responses"
        ));
    }
    let text = std::str::from_utf8(value).expect("checked: ASCII");
    Ok(Secret(text.into()))
}

/// The shape of every server's credentials (names, sources, formats, duplicates). The
/// secrets themselves are read at start, by `mcp::inject::load`.
pub fn validate(servers: &[Server]) -> Result<(), CredentialError> {
    for (i, s) in servers.iter().enumerate() {
        let mut seen: Vec<(HeaderName, usize)> = Vec::new();
        for (j, c) in s.credentials.iter().enumerate() {
            let name = c.check(i, j)?;
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                return Err(err(
                    key(i, j, Some("header")),
                    format!(
                        "{:?} is already listed by server[{i}].credential[{first}]",
                        c.header
                    ),
                ));
            }
            seen.push((name, j));
        }
    }
    Ok(())
}
