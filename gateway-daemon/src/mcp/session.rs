//! MCP sessions the gateway has seen, shared by every connection: a Streamable HTTP session
//! (`Mcp-Session-Id`) or a legacy HTTP+SSE session (its POST endpoint) outlives one HTTP
//! exchange, and responses may come back on another connection than their request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::pairing::Pending;
use super::record::PendingRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    StreamableHttp,
    LegacySse,
    /// A server the agent started, over its stdin and stdout (see `stdio`).
    Stdio,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable_http",
            Transport::LegacySse => "sse",
            Transport::Stdio => "stdio",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("session {id} belongs to another principal")]
    NotOwner { id: String },
    #[error(
        "session {id} was not opened with this server through the gateway (or was forgotten \
         since): start a new session"
    )]
    Unknown { id: String },
    #[error("the request names its session more than once ({query}): refused as ambiguous")]
    Ambiguous { query: String },
}

/// Which server a session belongs to: the destination the kernel recorded for the
/// connection, and the TLS name the gateway verified on it (one address may serve several
/// names). Never a header: an agent names another server by dialling it, not by saying so.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub addr: SocketAddr,
    pub sni: Option<Arc<str>>,
}

/// Who may use a session: the same user running the same program (another process of the
/// same agent may share it). Sessions are bounded per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    /// `uid:exe`, as `status` shows it.
    pub label: String,
}

pub struct Session {
    pub id: Arc<str>,
    /// Its key in the registry: the id, or a legacy session's endpoint.
    pub key: String,
    pub transport: Transport,
    pub owner: Owner,
    state: Mutex<SessionState>,
    /// When it was last used, readable without touching it (eviction compares these).
    last_used: Mutex<Instant>,
    /// A legacy session's event stream to the agent, for answers the gateway gives itself:
    /// a legacy client reads every response from its stream, never from a POST's body.
    stream: Mutex<Option<mpsc::Sender<Bytes>>>,
}

/// Events the gateway may queue on a legacy stream before its agent reads them; past this
/// the agent is not reading, and the refusal is answered on the POST instead. Each is an
/// error of at most about 1 KiB (see `exchange::MAX_WHY`).
const STREAM_QUEUE: usize = 8;

pub struct SessionState {
    /// Agent requests awaiting the server's response.
    pub client_pending: Pending<PendingRequest>,
    /// Server requests (sampling, elicitation, roots) awaiting the agent's response.
    pub server_pending: Pending<PendingRequest>,
    pub protocol_version: Option<Arc<str>>,
}

impl Session {
    fn new(
        id: String,
        key: String,
        transport: Transport,
        owner: Owner,
        max_pending: usize,
    ) -> Self {
        Self {
            id: id.into(),
            key,
            transport,
            owner,
            state: Mutex::new(SessionState {
                client_pending: Pending::new(max_pending),
                server_pending: Pending::new(max_pending),
                protocol_version: None,
            }),
            last_used: Mutex::new(Instant::now()),
            stream: Mutex::new(None),
        }
    }

    /// The one session of a stdio relay (not in the registry: it lives as long as the
    /// relay's pipes).
    pub fn stdio(id: String, owner: Owner, max_pending: usize) -> Self {
        Self::new(id.clone(), id, Transport::Stdio, owner, max_pending)
    }

    /// Attaches the agent's event stream of this (legacy) session: what `answer` queues
    /// comes out of the returned receiver, which the stream's task sends between the
    /// server's events.
    pub fn attach_stream(&self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        *lock(&self.stream) = Some(tx);
        rx
    }

    /// Queues whole SSE events on the agent's stream; false when there is no stream to
    /// carry them (it ended, or the agent does not read it), and nothing was queued.
    pub fn answer(&self, events: Vec<Bytes>) -> bool {
        let guard = lock(&self.stream);
        let Some(tx) = guard.as_ref() else {
            return false;
        };
        // All or nothing: a batch's answers are not split between the stream and the POST.
        let Ok(permits) = tx.try_reserve_many(events.len()) else {
            return false;
        };
        for (permit, ev) in permits.zip(events) {
            permit.send(ev);
        }
        true
    }

    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        self.touch();
        lock(&self.state)
    }

    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    fn idle_since(&self) -> Instant {
        *lock(&self.last_used)
    }

    /// Refuses a principal other than the one that opened the session.
    pub fn check_owner(&self, owner: &Owner) -> Result<(), SessionError> {
        if &self.owner == owner {
            Ok(())
        } else {
            Err(SessionError::NotOwner {
                id: self.id.to_string(),
            })
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    server: ServerKey,
    id: String,
}

/// foldhash, not SipHash: every request that names a session looks it up. Seeded per
/// process, and what is inserted is capped (`max_sessions`), so colliding keys cost little,
/// as for the metrics' labels.
type Map = Mutex<HashMap<Key, Arc<Session>, foldhash::fast::RandomState>>;

/// All sessions, bounded twice: one user holds at most `max_per_user` (past it, its own
/// longest idle session is forgotten), and all together at most `max_sessions` (past it,
/// the longest idle session of whichever user holds the most). So no user can make the
/// gateway forget another's session by opening many of its own.
pub struct Sessions {
    streamable: Map,
    /// Legacy sessions by their session id (the endpoint's `sessionId`), else endpoint path.
    legacy: Map,
    max_sessions: usize,
    max_per_user: usize,
    max_pending: usize,
}

impl Sessions {
    pub fn new(max_sessions: usize, max_per_user: usize, max_pending: usize) -> Self {
        Self {
            streamable: Mutex::default(),
            legacy: Mutex::default(),
            max_sessions,
            max_per_user: max_per_user.min(max_sessions),
            max_pending,
        }
    }

    /// Registers the Streamable HTTP session `id` that `server` issued in answer to
    /// `owner`'s request.
    pub fn open_streamable(
        &self,
        server: &ServerKey,
        id: &str,
        owner: &Owner,
    ) -> Result<Arc<Session>, SessionError> {
        self.open(
            &self.streamable,
            server,
            id,
            id,
            owner,
            Transport::StreamableHttp,
        )
    }

    /// The Streamable HTTP session `id` at `server`. Only sessions the gateway saw the
    /// server open are known: an id from anywhere else (another address of the same
    /// server, another principal, before a restart) is refused, never adopted, and the
    /// client starts a new session as it does when a server forgets one.
    pub fn streamable(
        &self,
        server: &ServerKey,
        id: &str,
        owner: &Owner,
    ) -> Result<Arc<Session>, SessionError> {
        let key = Key {
            server: server.clone(),
            id: id.to_string(),
        };
        let s = lock(&self.streamable)
            .get(&key)
            .cloned()
            .ok_or_else(|| SessionError::Unknown { id: id.to_string() })?;
        s.check_owner(owner)?;
        s.touch();
        Ok(s)
    }

    /// Registers the legacy session whose `endpoint` event announced `endpoint`.
    pub fn open_legacy(
        &self,
        server: &ServerKey,
        endpoint: &str,
        owner: &Owner,
    ) -> Result<Arc<Session>, SessionError> {
        let id = match legacy_session_id(endpoint) {
            Ok(Some(id)) => id,
            Ok(None) => path_of(endpoint).to_string(),
            Err(e) => return Err(e),
        };
        self.open(&self.legacy, server, &id, &id, owner, Transport::LegacySse)
    }

    /// The legacy session a POST to `path_and_query` belongs to, if any, matched as
    /// servers route it: by the session parameter (decoded, whatever else the query
    /// holds), else by the path. The caller checks the owner.
    pub fn legacy(
        &self,
        server: &ServerKey,
        path_and_query: &str,
    ) -> Result<Option<Arc<Session>>, SessionError> {
        let id = match legacy_session_id(path_and_query)? {
            Some(id) => id,
            None => path_of(path_and_query).to_string(),
        };
        let key = Key {
            server: server.clone(),
            id,
        };
        let found = lock(&self.legacy).get(&key).cloned();
        if let Some(s) = &found {
            s.touch();
        }
        Ok(found)
    }

    /// Forgets a session (DELETE, or its stream ended); returns it so pending requests
    /// can be accounted for.
    pub fn remove(
        &self,
        server: &ServerKey,
        key: &str,
        transport: Transport,
    ) -> Option<Arc<Session>> {
        let key = Key {
            server: server.clone(),
            id: key.to_string(),
        };
        match transport {
            Transport::StreamableHttp => lock(&self.streamable).remove(&key),
            Transport::LegacySse => lock(&self.legacy).remove(&key),
            // A stdio relay's session is its own, never in the registry.
            Transport::Stdio => None,
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.streamable).len() + lock(&self.legacy).len()
    }

    /// Open sessions per owner (uid:exe), for `status`.
    pub fn per_owner(&self) -> Vec<(String, u64)> {
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for map in [&self.streamable, &self.legacy] {
            for s in lock(map).values() {
                *counts.entry(s.owner.label.clone()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn open(
        &self,
        map: &Map,
        server: &ServerKey,
        key_id: &str,
        session_id: &str,
        owner: &Owner,
        transport: Transport,
    ) -> Result<Arc<Session>, SessionError> {
        let key = Key {
            server: server.clone(),
            id: key_id.to_string(),
        };
        let mut map = lock(map);
        if let Some(s) = map.get(&key) {
            s.check_owner(owner)?;
            return Ok(s.clone());
        }
        let mut per_user: HashMap<u32, usize> = HashMap::new();
        for s in map.values() {
            *per_user.entry(s.owner.uid).or_default() += 1;
        }
        let evict_from = if per_user.get(&owner.uid).copied().unwrap_or(0) >= self.max_per_user {
            Some(owner.uid)
        } else if map.len() >= self.max_sessions {
            per_user
                .iter()
                .max_by_key(|(uid, n)| (**n, **uid == owner.uid))
                .map(|(uid, _)| *uid)
        } else {
            None
        };
        if let Some(uid) = evict_from {
            let oldest = map
                .iter()
                .filter(|(_, s)| s.owner.uid == uid)
                .min_by_key(|(_, s)| s.idle_since())
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                tracing::debug!(uid, session = %k.id, "session forgotten (bound reached)");
                map.remove(&k);
            }
        }
        let s = Arc::new(Session::new(
            session_id.to_string(),
            key_id.to_string(),
            transport,
            owner.clone(),
            self.max_pending,
        ));
        map.insert(key, s.clone());
        Ok(s)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The session a legacy endpoint (path and query) names in its `sessionId` or `session_id`
/// parameter, percent-decoded as servers read it; None when it names none. Named twice
/// (even the same), servers disagree about which counts: refused.
fn legacy_session_id(endpoint: &str) -> Result<Option<String>, SessionError> {
    let Some((_, query)) = endpoint.split_once('?') else {
        return Ok(None);
    };
    let query = query.split('#').next().unwrap_or(query);
    let mut found = None;
    for pair in query.split(['&', ';']) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !matches!(decode(k).as_str(), "sessionId" | "session_id") {
            continue;
        }
        if found.is_some() {
            return Err(SessionError::Ambiguous {
                query: query.to_string(),
            });
        }
        found = Some(decode(v));
    }
    Ok(found)
}

/// Form-style percent-decoding (`+` is a space), lossy on bytes that are not UTF-8.
fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An endpoint's path, without its query.
fn path_of(endpoint: &str) -> &str {
    endpoint.split(['?', '#']).next().unwrap_or(endpoint)
}

/// The path and query of a legacy `endpoint` event's data, which may be a relative or an
/// absolute URL.
pub fn endpoint_path(data: &str) -> String {
    let data = data.trim();
    for scheme in ["http://", "https://"] {
        if let Some(rest) = data.strip_prefix(scheme) {
            return match rest.find('/') {
                Some(i) => rest[i..].to_string(),
                None => "/".to_string(),
            };
        }
    }
    if data.starts_with('/') {
        data.to_string()
    } else {
        format!("/{data}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> ServerKey {
        ServerKey {
            addr: "127.0.0.1:3001".parse().unwrap(),
            sni: None,
        }
    }

    fn owner(uid: u32, exe: &str) -> Owner {
        Owner {
            uid,
            label: format!("{uid}:{exe}"),
        }
    }

    #[test]
    fn a_session_is_bound_to_its_owner_and_its_server() {
        let s = Sessions::new(10, 10, 10);
        let me = owner(1000, "/usr/bin/node");
        let a = s.open_streamable(&up(), "abc", &me).unwrap();
        let again = s.streamable(&up(), "abc", &me).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(matches!(
            s.streamable(&up(), "abc", &owner(1001, "/usr/bin/node")),
            Err(SessionError::NotOwner { .. })
        ));
        // The same id at another address (of the same server, perhaps) is unknown there.
        let other = ServerKey {
            addr: "127.0.0.2:3001".parse().unwrap(),
            sni: None,
        };
        assert!(matches!(
            s.streamable(&other, "abc", &me),
            Err(SessionError::Unknown { .. })
        ));
        // An id no server issued is refused, not adopted.
        assert!(matches!(
            s.streamable(&up(), "made-up", &me),
            Err(SessionError::Unknown { .. })
        ));
    }

    #[test]
    fn sessions_are_bounded_and_one_user_cannot_evict_another() {
        let s = Sessions::new(10, 4, 10);
        let victim = owner(1000, "/x");
        s.open_streamable(&up(), "victim", &victim).unwrap();
        let attacker = owner(65534, "/y");
        for i in 0..15_000 {
            s.open_streamable(&up(), &i.to_string(), &attacker).unwrap();
        }
        assert_eq!(s.len(), 5);
        s.streamable(&up(), "victim", &victim).unwrap();
        // Its own sessions go longest idle first.
        assert!(s.streamable(&up(), "14999", &attacker).is_ok());
        assert!(s.streamable(&up(), "14995", &attacker).is_err());

        // Full overall: the biggest holder loses its longest idle session.
        let s = Sessions::new(4, 4, 10);
        for i in 0..3 {
            s.open_streamable(&up(), &format!("a{i}"), &owner(1, "/a"))
                .unwrap();
        }
        s.open_streamable(&up(), "b0", &owner(2, "/b")).unwrap();
        s.streamable(&up(), "a0", &owner(1, "/a")).unwrap();
        s.open_streamable(&up(), "c0", &owner(3, "/c")).unwrap();
        assert_eq!(s.len(), 4);
        assert!(s.streamable(&up(), "b0", &owner(2, "/b")).is_ok());
        assert!(s.streamable(&up(), "a0", &owner(1, "/a")).is_ok());
        assert!(s.streamable(&up(), "a1", &owner(1, "/a")).is_err());
    }

    #[test]
    fn legacy_endpoints_match_as_servers_route_them() {
        assert_eq!(
            endpoint_path("/messages?sessionId=42"),
            "/messages?sessionId=42"
        );
        assert_eq!(
            endpoint_path("http://127.0.0.1:3001/message?sessionId=7"),
            "/message?sessionId=7"
        );
        assert_eq!(endpoint_path("message?x=1"), "/message?x=1");
        assert_eq!(
            legacy_session_id("/m?a=1&sessionId=xyz")
                .unwrap()
                .as_deref(),
            Some("xyz")
        );
        let s = Sessions::new(10, 10, 10);
        let me = owner(0, "/p");
        let l = s.open_legacy(&up(), "/message?sessionId=7", &me).unwrap();
        assert_eq!(&*l.id, "7");
        for same in [
            "/message?sessionId=7",
            "/message?sessionId=7&x=1",
            "/message?x=1&session%49d=%37",
            "/elsewhere?sessionId=7",
        ] {
            assert!(s.legacy(&up(), same).unwrap().is_some(), "{same}");
        }
        assert!(s.legacy(&up(), "/message?sessionId=8").unwrap().is_none());
        assert!(matches!(
            s.legacy(&up(), "/message?sessionId=7&sessionId=8"),
            Err(SessionError::Ambiguous { .. })
        ));
        assert!(matches!(
            s.legacy(&up(), "/message?sessionId=7&session_id=7"),
            Err(SessionError::Ambiguous { .. })
        ));
        // An endpoint without a session parameter is matched by its path.
        s.open_legacy(&up(), "/stream/abc", &me).unwrap();
        assert!(s.legacy(&up(), "/stream/abc?x=1").unwrap().is_some());
    }
}
