//! Credential injection: requests to a configured server carry headers whose values live
//! in the gateway (files, systemd credentials), never in the agent. The agent's own header
//! of the same name is dropped first; a credential that cannot be read refuses the request
//! (502 naming the file) rather than sending it without. Every response from that server —
//! headers and body, JSON or SSE or anything else — is scrubbed of the injected values (and
//! their JSON- and URL-escaped forms) before the agent reads it, so a server that echoes
//! what it received (a debug tool, an error page) cannot hand the secret to the agent.
//!
//! Secrets are only sent to a destination the gateway has authenticated as the server: the
//! configured `address` (the daemon dials it itself), or a TLS connection the gateway
//! terminated, whose upstream certificate was verified for the server's `host`. Plain HTTP
//! matched by `Host` alone could be any address the agent chose: refused.
//!
//! Scrubbing keeps lengths: each occurrence becomes a marker of the same length
//! (`[REDACTED:injected-credential***]`), so `Content-Length` stays true and nothing is
//! re-framed. A body is never held back beyond the bytes that could still be the start of
//! a secret (an SSE event, which ends with a blank line, is forwarded at once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::recognise::Target;
use super::{reply, ConnCtx};
use crate::config::{Config, CredentialError, Secret};
use crate::http::body::{BoxError, GwBody};

/// What was done to a request's headers, kept in its extensions for the audit (header
/// names only, never values).
#[derive(Debug, Clone)]
pub struct Injected {
    /// The headers set to the gateway's own credentials.
    pub names: Arc<[Box<str>]>,
    /// How many headers of the agent's own were removed.
    pub stripped: usize,
}

/// The marker an echoed secret becomes (padded or shortened to the secret's length).
pub const MARKER: &str = "[REDACTED:injected-credential]";

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A credential of server `server` cannot be used; the inner error names the key and
    /// the file.
    #[error("server {server:?}: {source}")]
    Credential {
        server: String,
        #[source]
        source: CredentialError,
    },
}

/// One header set or removed toward a server.
struct Entry {
    name: HeaderName,
    /// None: the agent's header is only removed.
    value: Option<HeaderValue>,
    non_mcp: bool,
}

/// What the gateway does to requests of one server.
struct ServerCredentials {
    entries: Vec<Entry>,
    /// Destinations the secrets may go to.
    address: Option<SocketAddr>,
    host: Option<String>,
    scrubber: Option<Arc<Scrubber>>,
}

/// The credentials of every configured server, read once (at start, or again at reload).
pub struct Injector {
    /// By server name. Err: why its credentials cannot be used (the request is refused).
    servers: HashMap<String, Result<Arc<ServerCredentials>, Arc<str>>>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header names only: values are secrets.
        let mut m = f.debug_map();
        for (name, s) in &self.servers {
            match s {
                Ok(s) => m.entry(
                    name,
                    &s.entries
                        .iter()
                        .map(|e| (e.name.as_str(), e.value.is_some()))
                        .collect::<Vec<_>>(),
                ),
                Err(e) => m.entry(name, e),
            };
        }
        m.finish()
    }
}

/// `$CREDENTIALS_DIRECTORY`, where systemd puts a unit's `LoadCredential=` files.
pub fn credentials_dir() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
}

/// Reads every server's credentials; the first one that cannot be used is the error
/// (naming its key and file). The daemon calls this at start and refuses to run without.
pub fn load(config: &Config) -> Result<Injector, InjectError> {
    let (injector, mut errors) = Injector::build(config, credentials_dir().as_deref());
    match errors.is_empty() {
        true => Ok(injector),
        false => Err(errors.swap_remove(0)),
    }
}

impl Injector {
    /// Reads every server's credentials. A server whose credentials cannot all be used is
    /// kept as an error (its requests are refused) and the error is returned beside.
    pub fn build(config: &Config, credentials_dir: Option<&Path>) -> (Injector, Vec<InjectError>) {
        let mut servers = HashMap::new();
        let mut errors = Vec::new();
        for (i, s) in config.servers.iter().enumerate() {
            if s.credentials.is_empty() {
                continue;
            }
            let built = (|| {
                let mut entries = Vec::new();
                let mut secrets = Vec::new();
                for (j, c) in s.credentials.iter().enumerate() {
                    let name = c.check(i, j)?;
                    let value = match c.read_secret(i, j, credentials_dir)? {
                        Some(secret) => {
                            let v = c.header_value(&secret);
                            secrets.push(secret);
                            Some(v)
                        }
                        None => None,
                    };
                    entries.push(Entry {
                        name,
                        value,
                        non_mcp: c.non_mcp,
                    });
                }
                Ok::<_, CredentialError>(ServerCredentials {
                    entries,
                    address: s.address,
                    host: s.host.clone(),
                    scrubber: Scrubber::new(&secrets).map(Arc::new),
                })
            })();
            let entry = match built {
                Ok(c) => Ok(Arc::new(c)),
                Err(source) => {
                    let e = InjectError::Credential {
                        server: s.name.clone(),
                        source,
                    };
                    let shown: Arc<str> = e.to_string().into();
                    errors.push(e);
                    Err(shown)
                }
            };
            servers.insert(s.name.clone(), entry);
        }
        (Injector { servers }, errors)
    }

    /// Sets and removes the headers of `req` for the server `target` names. `mcp`: whether
    /// the request is MCP (credentials marked `non_mcp` also go on the others). Ok holds
    /// what the response must be scrubbed with; Err is the refusal to answer instead.
    pub fn prepare<B>(
        &self,
        req: &mut Request<B>,
        target: &Target,
        upstream: SocketAddr,
        tls_sni: Option<&str>,
        mcp: bool,
    ) -> Result<Applied, Refused> {
        if !target.configured {
            return Ok(Applied(None));
        }
        let creds = match self.servers.get(&*target.label) {
            None => return Ok(Applied(None)),
            Some(Ok(c)) => c,
            Some(Err(why)) => {
                tracing::warn!(server = %target.label, error = %why, "request refused: its credential cannot be read");
                return Err(Refused(format!(
                    "the gateway cannot send this request without its credential: {why}"
                )));
            }
        };
        // A protocol switch becomes a byte pipe nobody scrubs: no secret goes on it.
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let headers = req.headers_mut();
        let mut stripped = 0usize;
        for e in &creds.entries {
            if let header::Entry::Occupied(o) = headers.entry(&e.name) {
                stripped += o.remove_entry_mult().1.count();
            }
        }
        let inject: Vec<&Entry> = creds
            .entries
            .iter()
            .filter(|e| e.value.is_some() && (mcp || e.non_mcp) && !upgrade)
            .collect();
        if !inject.is_empty() {
            let by_address = creds.address == Some(upstream);
            let by_tls = matches!((tls_sni, &creds.host), (Some(sni), Some(h)) if sni.eq_ignore_ascii_case(h));
            if !by_address && !by_tls {
                tracing::warn!(server = %target.label, %upstream,
                    "request refused: credentials only go to the server's address or over verified TLS");
                return Err(Refused(format!(
                    "the gateway does not send the credentials of server {:?} to {upstream} \
                         over plain HTTP: only its configured `address`, or TLS verified for \
                         its host, is known to be that server",
                    &*target.label
                )));
            }
            for e in &inject {
                let v = e.value.clone().expect("filtered: has a value");
                headers.insert(e.name.clone(), v);
            }
        }
        if stripped > 0 || !inject.is_empty() {
            let names = inject.iter().map(|e| e.name.as_str().into()).collect();
            req.extensions_mut().insert(Injected { names, stripped });
        }
        Ok(Applied(creds.scrubber.clone()))
    }
}

/// The installed injector (see `install`); None until the daemon installs one.
static ACTIVE: RwLock<Option<Arc<Injector>>> = RwLock::new(None);

/// Puts `injector` in force for every request from now on (at start, and after a reload
/// that read the credentials again).
pub fn install(injector: Injector) {
    *ACTIVE.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(injector));
}

/// The injector in force: the installed one, else one read from `config` on first use
/// (a credential that cannot be read then refuses its server's requests).
fn active(config: &Config) -> Arc<Injector> {
    if let Some(i) = &*ACTIVE.read().unwrap_or_else(PoisonError::into_inner) {
        return i.clone();
    }
    let mut slot = ACTIVE.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = &*slot {
        return i.clone();
    }
    let (injector, errors) = Injector::build(config, credentials_dir().as_deref());
    for e in &errors {
        tracing::error!(error = %e, "credential cannot be read: requests to its server are refused");
    }
    let injector = Arc::new(injector);
    *slot = Some(injector.clone());
    injector
}

/// Why a request is not sent: answered to the agent as 502 with this message.
#[derive(Debug)]
pub struct Refused(pub String);

impl Refused {
    pub fn response(&self) -> Response<GwBody> {
        reply::http_error(StatusCode::BAD_GATEWAY, &self.0)
    }
}

/// What was done to a request: the scrubber its response goes through, if any.
pub struct Applied(Option<Arc<Scrubber>>);

/// The call site in `mcp::route`: sets the credentials of the server `target` names on
/// `req` (see `Injector::prepare`).
pub fn apply<B>(
    req: &mut Request<B>,
    ctx: &ConnCtx,
    target: &Target,
    mcp: bool,
) -> Result<Applied, Refused> {
    if !target.configured {
        return Ok(Applied(None));
    }
    let applied = active(&ctx.daemon.config).prepare(
        req,
        target,
        ctx.upstream_addr,
        ctx.tls_sni.as_deref(),
        mcp,
    )?;
    if let Some(i) = req.extensions().get::<Injected>() {
        // Once per connection at info, so the default log shows injection happening
        // without a line per request.
        let first = !ctx
            .credentials_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        if first {
            tracing::info!(server = %target.label, injected = ?i.names, stripped = i.stripped,
                "credentials applied (logged once per connection; each mcp_call record names them)");
        } else {
            tracing::debug!(server = %target.label, injected = ?i.names, stripped = i.stripped,
                "credentials applied");
        }
    }
    Ok(applied)
}

impl Applied {
    /// The response with every injected secret replaced, in its headers and body.
    pub fn scrub(self, resp: Response<GwBody>) -> Response<GwBody> {
        let Some(s) = self.0 else { return resp };
        let (mut parts, body) = resp.into_parts();
        s.scrub_headers(&mut parts.headers);
        let body = if body.is_end_stream() {
            body
        } else {
            ScrubBody {
                inner: body,
                scrubber: s,
                held: BytesMut::new(),
                trailers: None,
                ended: false,
            }
            .boxed()
        };
        Response::from_parts(parts, body)
    }
}

/// Finds injected secrets in bytes and masks them in place.
pub struct Scrubber {
    finder: regex::bytes::Regex,
    /// Every form searched for, longest first.
    needles: Vec<Box<[u8]>>,
    /// Whether a byte starts some needle.
    starts: [bool; 256],
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} forms)", self.needles.len())
    }
}

/// The forms a secret takes in what a server may send back: as is, JSON-escaped (quote
/// and backslash; optionally `\/`; optionally `<>&'` as `\u00XX`, as Go and PHP write
/// them), and percent-encoded.
fn forms(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_string()];
    for slash in [false, true] {
        for html in [None, Some(false), Some(true)] {
            let mut s = String::with_capacity(secret.len() + 8);
            for c in secret.chars() {
                match c {
                    '"' => s.push_str("\\\""),
                    '\\' => s.push_str("\\\\"),
                    '/' if slash => s.push_str("\\/"),
                    '<' | '>' | '&' | '\'' if html == Some(false) => {
                        s.push_str(&format!("\\u{:04x}", c as u32))
                    }
                    '<' | '>' | '&' | '\'' if html == Some(true) => {
                        s.push_str(&format!("\\u{:04X}", c as u32))
                    }
                    c => s.push(c),
                }
            }
            out.push(s);
        }
    }
    for upper in [false, true] {
        let mut s = String::with_capacity(secret.len() * 3);
        for b in secret.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                s.push(b as char);
            } else if upper {
                s.push_str(&format!("%{b:02X}"));
            } else {
                s.push_str(&format!("%{b:02x}"));
            }
        }
        out.push(s);
    }
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// The markers a secret may become, longest first: the longest that fits the secret's
/// length is used, padded with `*` before its `]`.
const MARKERS: [&str; 4] = [
    MARKER,
    "[REDACTED:credential]",
    "[REDACTED:cred]",
    "[REDACTED]",
];

/// A run of `len` bytes that says a secret was here: the longest marker of `MARKERS` that
/// fits, padded with `*` before its `]` (`*` alone under 10 bytes).
pub fn mask(len: usize) -> Vec<u8> {
    let (head, tail) = match MARKERS.iter().find(|m| m.len() <= len) {
        Some(m) => (&m[..m.len() - 1], "]"),
        None => ("", ""),
    };
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(head.as_bytes());
    out.resize(len - tail.len(), b'*');
    out.extend_from_slice(tail.as_bytes());
    out
}

impl Scrubber {
    /// None when there is nothing to look for.
    pub fn new(secrets: &[Secret]) -> Option<Scrubber> {
        let mut all: Vec<String> = secrets.iter().flat_map(|s| forms(s.expose())).collect();
        if all.is_empty() {
            return None;
        }
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        // Longest first: at one position the longer form wins (leftmost-first).
        let pattern = all
            .iter()
            .map(|n| regex::escape(n))
            .collect::<Vec<_>>()
            .join("|");
        let finder = regex::bytes::RegexBuilder::new(&pattern)
            .unicode(false)
            .size_limit(64 << 20)
            .build()
            .expect("escaped ASCII literals always compile");
        let mut starts = [false; 256];
        for n in &all {
            starts[n.as_bytes()[0] as usize] = true;
        }
        Some(Scrubber {
            finder,
            needles: all.into_iter().map(|n| n.into_bytes().into()).collect(),
            starts,
        })
    }

    /// Masks every occurrence in `buf`; returns how many there were.
    pub fn scrub_in_place(&self, buf: &mut [u8]) -> usize {
        let found: Vec<std::ops::Range<usize>> =
            self.finder.find_iter(buf).map(|m| m.range()).collect();
        for r in &found {
            let m = mask(r.len());
            buf[r.clone()].copy_from_slice(&m);
        }
        found.len()
    }

    /// The bytes with every occurrence masked, or None when there is none.
    pub fn scrub(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        if !self.finder.is_match(bytes) {
            return None;
        }
        let mut out = bytes.to_vec();
        self.scrub_in_place(&mut out);
        Some(out)
    }

    /// How many bytes at the end of `buf` could be the start of a secret that the next
    /// bytes complete (the longest such suffix; 0 when none).
    fn pending(&self, buf: &[u8]) -> usize {
        let longest = self.needles.first().map_or(0, |n| n.len());
        let from = buf.len().saturating_sub(longest.saturating_sub(1));
        for start in from..buf.len() {
            if !self.starts[buf[start] as usize] {
                continue;
            }
            let tail = &buf[start..];
            if self
                .needles
                .iter()
                .any(|n| n.len() > tail.len() && n.starts_with(tail))
            {
                return tail.len();
            }
        }
        0
    }

    fn scrub_headers(&self, headers: &mut HeaderMap) {
        for v in headers.values_mut() {
            if let Some(clean) = self.scrub(v.as_bytes()) {
                *v = HeaderValue::from_bytes(&clean).expect("masks are visible ASCII");
            }
        }
    }
}

/// A response body with secrets masked as it streams.
struct ScrubBody {
    inner: GwBody,
    scrubber: Arc<Scrubber>,
    /// Bytes read, not yet passed on: a possible start of a secret.
    held: BytesMut,
    /// Trailers that arrived while bytes were held.
    trailers: Option<HeaderMap>,
    ended: bool,
}

impl Body for ScrubBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(mut t) = this.trailers.take() {
                this.scrubber.scrub_headers(&mut t);
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.held.extend_from_slice(&data);
                        this.scrubber.scrub_in_place(&mut this.held);
                        let keep = this.scrubber.pending(&this.held);
                        let out = this.held.split_to(this.held.len() - keep);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the data: what is held is no secret's start.
                        this.trailers = frame.into_trailers().ok();
                        if !this.held.is_empty() {
                            let out = this.held.split().freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.ended = true;
                    if !this.held.is_empty() {
                        let out = this.held.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        (self.ended || self.inner.is_end_stream())
            && self.held.is_empty()
            && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Masks keep lengths: what is left is what the server has left plus what is held.
        let held = self.held.len() as u64;
        if self.ended {
            return SizeHint::with_exact(held);
        }
        let inner = self.inner.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + held);
        if let Some(u) = inner.upper() {
            h.set_upper(u + held);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::full;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &str = "gw-secret-0123456789abcdef";

    fn secret_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn config(extra: &str) -> Config {
        let text = format!(
            "[agents]\ncgroups = [\"agents.slice\"]\n\
             [[server]]\nname = \"other\"\naddress = \"127.0.0.1:4000\"\n\
             [[server]]\nname = \"api\"\naddress = \"127.0.0.1:3001\"\nhost = \"api.example.com\"\n{extra}"
        );
        Config::parse(Path::new("t.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    fn parse_err(extra: &str) -> String {
        let text = format!(
            "[agents]\ncgroups = [\"agents.slice\"]\n\
             [[server]]\nname = \"api\"\naddress = \"127.0.0.1:3001\"\n{extra}"
        );
        Config::parse(Path::new("t.toml"), &text)
            .map(|_| ())
            .expect_err("the config must be refused")
            .to_string()
    }

    fn target(label: &str) -> Target {
        Target {
            label: label.into(),
            configured: true,
        }
    }

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method("POST").uri("/mcp");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const UP: &str = "127.0.0.1:3001";

    fn injector(extra: &str) -> (tempfile::TempDir, Injector) {
        let dir = tempfile::tempdir().unwrap();
        let token = secret_file(dir.path(), "token", format!("{TOKEN}\n").as_bytes(), 0o600);
        let extra = extra.replace("TOKEN_FILE", &token.display().to_string());
        let (i, errors) = Injector::build(&config(&extra), Some(dir.path()));
        assert!(errors.is_empty(), "{errors:?}");
        (dir, i)
    }

    const BEARER: &str = "[[server.credential]]\nheader = \"Authorization\"\nfile = \"TOKEN_FILE\"\nformat = \"Bearer {}\"\n";

    #[test]
    fn the_agents_header_is_replaced_with_the_formatted_secret() {
        let (_d, inj) = injector(BEARER);
        let mut req = request(&[("authorization", "Bearer agent-token"), ("x-other", "kept")]);
        let applied = inj
            .prepare(&mut req, &target("api"), UP.parse().unwrap(), None, true)
            .unwrap();
        let values: Vec<&HeaderValue> = req.headers().get_all("authorization").iter().collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0], &format!("Bearer {TOKEN}"));
        assert!(values[0].is_sensitive());
        assert_eq!(req.headers()["x-other"], "kept");
        assert!(applied.0.is_some());

        // No header from the agent: set all the same.
        let mut req = request(&[]);
        inj.prepare(&mut req, &target("api"), UP.parse().unwrap(), None, true)
            .unwrap();
        assert_eq!(req.headers()["authorization"], &format!("Bearer {TOKEN}"));

        // Another server's requests are untouched.
        let mut req = request(&[("authorization", "Bearer agent-token")]);
        let applied = inj
            .prepare(
                &mut req,
                &target("other"),
                "127.0.0.1:4000".parse().unwrap(),
                None,
                true,
            )
            .unwrap();
        assert_eq!(req.headers()["authorization"], "Bearer agent-token");
        assert!(applied.0.is_none());
    }

    #[test]
    fn a_header_without_a_source_is_only_stripped_everywhere() {
        let (_d, inj) = injector(&format!(
            "{BEARER}[[server.credential]]\nheader = \"X-Api-Key\"\n[[server.credential]]\nheader = \"Cookie\"\n"
        ));
        let mut req = request(&[
            ("x-api-key", "agent-key"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("authorization", "Basic YWdlbnQ="),
        ]);
        // Not MCP: the agent's headers go, the secret (not marked non_mcp) is not set.
        inj.prepare(&mut req, &target("api"), UP.parse().unwrap(), None, false)
            .unwrap();
        for h in ["x-api-key", "cookie", "authorization"] {
            assert!(
                !req.headers().contains_key(h),
                "{h} left: {:?}",
                req.headers()
            );
        }
    }

    #[test]
    fn non_mcp_credentials_go_on_every_request_but_not_on_upgrades() {
        let (_d, inj) = injector(&format!("{BEARER}non_mcp = true\n"));
        let mut req = request(&[]);
        inj.prepare(&mut req, &target("api"), UP.parse().unwrap(), None, false)
            .unwrap();
        assert_eq!(req.headers()["authorization"], &format!("Bearer {TOKEN}"));
        let mut req = request(&[("upgrade", "websocket"), ("authorization", "x")]);
        inj.prepare(&mut req, &target("api"), UP.parse().unwrap(), None, false)
            .unwrap();
        assert!(!req.headers().contains_key("authorization"));
    }

    #[test]
    fn secrets_only_go_to_an_authenticated_destination() {
        let (_d, inj) = injector(BEARER);
        // Matched by Host over plain HTTP to an address the agent chose: refused.
        let mut req = request(&[("authorization", "x")]);
        let refused = inj
            .prepare(
                &mut req,
                &target("api"),
                "203.0.113.9:80".parse().unwrap(),
                None,
                true,
            )
            .err()
            .expect("refused");
        assert_eq!(refused.response().status(), StatusCode::BAD_GATEWAY);
        assert!(!req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes().ends_with(TOKEN.as_bytes())));
        // The same over TLS verified for the server's host: sent.
        let mut req = request(&[]);
        inj.prepare(
            &mut req,
            &target("api"),
            "203.0.113.9:443".parse().unwrap(),
            Some("API.example.com"),
            true,
        )
        .unwrap();
        assert_eq!(req.headers()["authorization"], &format!("Bearer {TOKEN}"));
    }

    #[test]
    fn format_defaults_to_the_bare_secret_and_systemd_credentials_are_found() {
        let dir = tempfile::tempdir().unwrap();
        secret_file(
            dir.path(),
            "api-key",
            format!("{TOKEN}\r\n").as_bytes(),
            0o400,
        );
        let cfg = config("[[server.credential]]\nheader = \"X-Api-Key\"\nsystemd = \"api-key\"\n");
        let (inj, errors) = Injector::build(&cfg, Some(dir.path()));
        assert!(errors.is_empty(), "{errors:?}");
        let mut req = request(&[]);
        inj.prepare(&mut req, &target("api"), UP.parse().unwrap(), None, true)
            .unwrap();
        assert_eq!(req.headers()["x-api-key"], TOKEN);

        // Outside a unit: the error says what to do, naming the key.
        let (_, errors) = Injector::build(&cfg, None);
        let e = errors[0].to_string();
        assert!(
            e.contains("server[1].credential[0].systemd") && e.contains("LoadCredential=api-key"),
            "{e}"
        );
    }

    #[test]
    fn unreadable_credentials_name_the_key_and_file_and_refuse_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-token");
        let cfg = config(&format!(
            "[[server.credential]]\nheader = \"Authorization\"\nfile = \"{}\"\n",
            missing.display()
        ));
        let e = load(&cfg)
            .expect_err("a missing file is an error")
            .to_string();
        assert!(
            e.contains("server[1].credential[0].file") && e.contains(&*missing.to_string_lossy()),
            "{e}"
        );
        // Built anyway (the lazy path): the server's requests are refused, never sent bare.
        let (inj, _) = Injector::build(&cfg, None);
        let mut req = request(&[]);
        let refused = inj
            .prepare(&mut req, &target("api"), UP.parse().unwrap(), None, true)
            .err()
            .expect("refused");
        assert_eq!(refused.response().status(), StatusCode::BAD_GATEWAY);
        assert!(refused.0.contains("missing-token"), "{}", refused.0);
        // Other servers are not affected.
        let mut req = request(&[]);
        assert!(inj
            .prepare(
                &mut req,
                &target("other"),
                "127.0.0.1:4000".parse().unwrap(),
                None,
                true
            )
            .is_ok());
    }

    fn read_error(content: &[u8], mode: u32) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = secret_file(dir.path(), "s", content, mode);
        crate::config::read_secret_file(&p).expect_err("refused")
    }

    #[test]
    fn bad_secret_files_are_refused_without_showing_them() {
        let e = read_error(b"abcdefgh\r\nX-Injected: 1\n", 0o600);
        assert!(e.contains("line break"), "{e}");
        assert!(!e.contains("abcdefgh"), "{e}");
        assert!(read_error(b"\n\n", 0o600).contains("is empty"));
        assert!(read_error(b"abc\n", 0o600).contains("fewer than 8"));
        assert!(read_error(b"abcdefgh\x00ij", 0o600).contains("0x00"));
        assert!(read_error(b"abcdefghij", 0o644).contains("readable by every user"));
        assert!(read_error(b" abcdefghij", 0o600).contains("starts with a space"));
    }

    #[test]
    fn config_shape_errors_name_the_key() {
        let cases = [
            (
                "[[server.credential]]\nheader = \"Bad Header\"\nfile = \"/x\"\n",
                "server[0].credential[0].header",
            ),
            (
                "[[server.credential]]\nheader = \"Host\"\nfile = \"/x\"\n",
                "server[0].credential[0].header",
            ),
            (
                "[[server.credential]]\nheader = \"A\"\nfile = \"rel/x\"\n",
                "server[0].credential[0].file",
            ),
            (
                "[[server.credential]]\nheader = \"A\"\nfile = \"/x\"\nsystemd = \"x\"\n",
                "server[0].credential[0]`",
            ),
            (
                "[[server.credential]]\nheader = \"A\"\nsystemd = \"../x\"\n",
                "server[0].credential[0].systemd",
            ),
            (
                "[[server.credential]]\nheader = \"A\"\nfile = \"/x\"\nformat = \"Bearer\"\n",
                "server[0].credential[0].format",
            ),
            (
                "[[server.credential]]\nheader = \"A\"\nfile = \"/x\"\nformat = \"Bearer {}\\r\\nX: 1\"\n",
                "server[0].credential[0].format",
            ),
            (
                "[[server.credential]]\nheader = \"A\"\nformat = \"Bearer {}\"\n",
                "server[0].credential[0].format",
            ),
            (
                "[[server.credential]]\nheader = \"A\"\nfile = \"/x\"\n[[server.credential]]\nheader = \"a\"\n",
                "server[0].credential[1].header",
            ),
        ];
        for (toml, key) in cases {
            let e = parse_err(toml);
            assert!(e.contains(key), "{toml:?}: {e}");
        }
    }

    #[test]
    fn scrub_finds_the_raw_and_escaped_forms() {
        let secret: Secret = Secret::for_tests("tok/en\"with<odd>&chars+=");
        let s = Scrubber::new(std::slice::from_ref(&secret)).unwrap();
        let raw = secret.expose();
        let json = serde_json::to_string(raw).unwrap(); // "tok/en\"with<odd>&chars+="
        let go = r#"tok\/en\"with\u003codd\u003e\u0026chars+="#;
        let pct = "tok%2Fen%22with%3Codd%3E%26chars%2B%3D";
        for text in [
            format!("Authorization: Bearer {raw}!"),
            format!("{{\"echo\":{json}}}"),
            format!("x {go} y"),
            format!("?t={pct}&u=1"),
        ] {
            let out = s.scrub(text.as_bytes()).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(out.len(), text.len(), "lengths are kept");
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains("tok"), "{out}");
            assert!(out.contains("[REDACTED"), "{out}");
        }
        assert!(s.scrub(b"nothing here").is_none());
        // The JSON stays valid.
        let doc = format!("{{\"echo\":{json}}}");
        let out = s.scrub(doc.as_bytes()).unwrap();
        serde_json::from_slice::<serde_json::Value>(&out).unwrap();
    }

    #[test]
    fn masks_keep_length_and_say_what_happened() {
        assert_eq!(mask(MARKER.len()), MARKER.as_bytes());
        assert_eq!(mask(34), b"[REDACTED:injected-credential****]");
        assert_eq!(mask(12), b"[REDACTED**]");
        assert_eq!(mask(16), b"[REDACTED:cred*]");
        assert_eq!(mask(24), b"[REDACTED:credential***]");
        assert_eq!(mask(8), b"********");
        for n in 1..80 {
            assert_eq!(mask(n).len(), n);
        }
    }

    async fn collect(body: GwBody) -> (Vec<Vec<u8>>, Option<HeaderMap>) {
        let mut body = body;
        let mut chunks = Vec::new();
        let mut trailers = None;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            match f.into_data() {
                Ok(d) => chunks.push(d.to_vec()),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (chunks, trailers)
    }

    fn chunked(pieces: Vec<&'static [u8]>) -> GwBody {
        let (tx, body) = crate::http::body::ChannelBody::new(16);
        for p in pieces {
            tx.try_send(Ok(Frame::data(Bytes::from_static(p)))).unwrap();
        }
        drop(tx);
        crate::http::body::boxed(body)
    }

    #[tokio::test]
    async fn a_secret_split_across_chunks_is_masked_and_events_are_not_held() {
        let secret = Secret::for_tests(TOKEN);
        let applied = Applied(Scrubber::new(&[secret]).map(Arc::new));
        let body = chunked(vec![
            b"event: message\ndata: {\"t\":\"Bearer gw-sec",
            b"ret-0123456789",
            b"abcdef\"}\n\n",
            b"event: message\ndata: {}\n\n",
        ]);
        let resp = Response::builder()
            .header("x-echo", format!("Bearer {TOKEN}"))
            .body(body)
            .unwrap();
        let resp = applied.scrub(resp);
        assert!(!resp.headers()["x-echo"].to_str().unwrap().contains(TOKEN));
        let (chunks, _) = collect(resp.into_body()).await;
        let all: Vec<u8> = chunks.concat();
        let text = String::from_utf8(all).unwrap();
        assert!(
            !text.contains("gw-sec") && !text.contains("abcdef"),
            "{text}"
        );
        assert!(text.contains("[REDACTED"), "{text}");
        // Each event went out whole as soon as it was complete: nothing after its end was
        // needed to release it.
        assert!(chunks.iter().any(|c| c.ends_with(b"\"}\n\n")), "{chunks:?}");
        assert_eq!(chunks.last().unwrap(), b"event: message\ndata: {}\n\n");
    }

    #[tokio::test]
    async fn bodies_without_secrets_pass_unchanged() {
        let secret = Secret::for_tests(TOKEN);
        let applied = Applied(Scrubber::new(&[secret]).map(Arc::new));
        let resp = applied.scrub(Response::new(full("{\"ok\":\"gw-se\"}")));
        let (chunks, _) = collect(resp.into_body()).await;
        assert_eq!(chunks.concat(), b"{\"ok\":\"gw-se\"}");
    }
}
