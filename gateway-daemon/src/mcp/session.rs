//! MCP sessions the gateway has seen, shared by every connection: a Streamable HTTP session
//! (`Mcp-Session-Id`) or a legacy HTTP+SSE session (its POST endpoint) outlives one HTTP
//! exchange, and responses may come back on another connection than their request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::pairing::Pending;
use super::record::PendingRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    StreamableHttp,
    LegacySse,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable_http",
            Transport::LegacySse => "sse",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session {id} belongs to another principal")]
    NotOwner { id: String },
}

pub struct Session {
    pub id: String,
    /// Its key in the registry: the id, or a legacy session's endpoint.
    pub key: String,
    pub transport: Transport,
    /// `Principal::session_owner` of the process that opened it.
    pub owner: String,
    state: Mutex<SessionState>,
}

pub struct SessionState {
    /// Agent requests awaiting the server's response.
    pub client_pending: Pending<PendingRequest>,
    /// Server requests (sampling, elicitation, roots) awaiting the agent's response.
    pub server_pending: Pending<PendingRequest>,
    pub protocol_version: Option<String>,
    last_used: Instant,
}

impl Session {
    fn new(
        id: String,
        key: String,
        transport: Transport,
        owner: String,
        max_pending: usize,
    ) -> Self {
        Self {
            id,
            key,
            transport,
            owner,
            state: Mutex::new(SessionState {
                client_pending: Pending::new(max_pending),
                server_pending: Pending::new(max_pending),
                protocol_version: None,
                last_used: Instant::now(),
            }),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.last_used = Instant::now();
        s
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    upstream: SocketAddr,
    id: String,
}

/// All sessions, bounded: past `max_sessions` the longest idle one is forgotten.
pub struct Sessions {
    streamable: Mutex<HashMap<Key, Arc<Session>>>,
    /// Legacy sessions by their POST endpoint (path and query).
    legacy: Mutex<HashMap<Key, Arc<Session>>>,
    max_sessions: usize,
    max_pending: usize,
}

impl Sessions {
    pub fn new(max_sessions: usize, max_pending: usize) -> Self {
        Self {
            streamable: Mutex::new(HashMap::new()),
            legacy: Mutex::new(HashMap::new()),
            max_sessions,
            max_pending,
        }
    }

    /// The Streamable HTTP session `id` at `upstream`, created on first sight (the gateway
    /// may have restarted since the server issued it). Another principal presenting the
    /// same id is refused: a session id is not a credential to be passed around.
    pub fn streamable(
        &self,
        upstream: SocketAddr,
        id: &str,
        owner: &str,
    ) -> Result<Arc<Session>, SessionError> {
        self.get_or_insert(
            &self.streamable,
            upstream,
            id,
            id,
            owner,
            Transport::StreamableHttp,
        )
    }

    /// Registers the legacy session whose `endpoint` event announced `endpoint`.
    pub fn open_legacy(
        &self,
        upstream: SocketAddr,
        endpoint: &str,
        owner: &str,
    ) -> Result<Arc<Session>, SessionError> {
        let id = legacy_session_id(endpoint);
        self.get_or_insert(
            &self.legacy,
            upstream,
            endpoint,
            &id,
            owner,
            Transport::LegacySse,
        )
    }

    /// The legacy session a POST to `path_and_query` belongs to, if any.
    pub fn legacy(&self, upstream: SocketAddr, path_and_query: &str) -> Option<Arc<Session>> {
        let key = Key {
            upstream,
            id: path_and_query.to_string(),
        };
        lock(&self.legacy).get(&key).cloned()
    }

    /// Forgets a session (DELETE, or its stream ended); returns it so pending requests
    /// can be accounted for.
    pub fn remove(
        &self,
        upstream: SocketAddr,
        id: &str,
        transport: Transport,
    ) -> Option<Arc<Session>> {
        let key = Key {
            upstream,
            id: id.to_string(),
        };
        match transport {
            Transport::StreamableHttp => lock(&self.streamable).remove(&key),
            Transport::LegacySse => lock(&self.legacy).remove(&key),
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
                *counts.entry(s.owner.clone()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_or_insert(
        &self,
        map: &Mutex<HashMap<Key, Arc<Session>>>,
        upstream: SocketAddr,
        key_id: &str,
        session_id: &str,
        owner: &str,
        transport: Transport,
    ) -> Result<Arc<Session>, SessionError> {
        let key = Key {
            upstream,
            id: key_id.to_string(),
        };
        let mut map = lock(map);
        if let Some(s) = map.get(&key) {
            if s.owner != owner {
                return Err(SessionError::NotOwner {
                    id: session_id.to_string(),
                });
            }
            return Ok(s.clone());
        }
        if map.len() >= self.max_sessions {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.state().last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let s = Arc::new(Session::new(
            session_id.to_string(),
            key_id.to_string(),
            transport,
            owner.to_string(),
            self.max_pending,
        ));
        map.insert(key, s.clone());
        Ok(s)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `sessionId` query parameter of a legacy endpoint, else the endpoint itself.
fn legacy_session_id(endpoint: &str) -> String {
    endpoint
        .split_once('?')
        .and_then(|(_, q)| {
            q.split('&').find_map(|kv| {
                kv.strip_prefix("sessionId=")
                    .or_else(|| kv.strip_prefix("session_id="))
            })
        })
        .unwrap_or(endpoint)
        .to_string()
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

    fn up() -> SocketAddr {
        "127.0.0.1:3001".parse().unwrap()
    }

    #[test]
    fn a_session_is_bound_to_its_owner() {
        let s = Sessions::new(10, 10);
        let a = s.streamable(up(), "abc", "1000:/usr/bin/node").unwrap();
        let again = s.streamable(up(), "abc", "1000:/usr/bin/node").unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(matches!(
            s.streamable(up(), "abc", "1001:/usr/bin/node"),
            Err(SessionError::NotOwner { .. })
        ));
        // The same id at another server is another session.
        s.streamable("127.0.0.1:3002".parse().unwrap(), "abc", "1001:/x")
            .unwrap();
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::new(3, 10);
        for i in 0..10 {
            s.streamable(up(), &i.to_string(), "o").unwrap();
        }
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn legacy_endpoints() {
        assert_eq!(
            endpoint_path("/messages?sessionId=42"),
            "/messages?sessionId=42"
        );
        assert_eq!(
            endpoint_path("http://127.0.0.1:3001/message?sessionId=7"),
            "/message?sessionId=7"
        );
        assert_eq!(endpoint_path("message?x=1"), "/message?x=1");
        assert_eq!(legacy_session_id("/m?a=1&sessionId=xyz"), "xyz");
        let s = Sessions::new(10, 10);
        let l = s.open_legacy(up(), "/message?sessionId=7", "o").unwrap();
        assert_eq!(l.id, "7");
        assert!(s.legacy(up(), "/message?sessionId=7").is_some());
        assert!(s.legacy(up(), "/message?sessionId=8").is_none());
    }
}
