//! Where a call's answer stands while its records are made durable, shared between
//! `until_durable` (which waits for the sync) and the event stream the answer comes on.
//!
//! A stream that ends without answering a request normally keeps it in its session, for a
//! stream the agent resumes (Last-Event-ID). Kept before the call's record is durable, a
//! later answer could pair with it on a GET stream and reach the agent before the record
//! is durable, or after it failed to be. So until the sync has answered, such requests wait
//! here, and go to their session only once the records are durable.

use std::sync::{Arc, Mutex, MutexGuard};

use super::jsonrpc::Id;
use super::observe::Observer;
use super::record::{Direction, PendingRequest};
use super::session::Session;

/// Requests a stream ended without answering.
pub type Requests = Vec<(Id, PendingRequest)>;

#[derive(Clone, Default)]
pub struct Withholding(Arc<Mutex<Standing>>);

#[derive(Default)]
enum Standing {
    /// The sync has not answered: requests a stream ended without answering wait here.
    #[default]
    Waiting,
    Kept(Vec<Kept>),
    /// Durable: the answer went to the agent.
    Released,
    /// Not durable: the agent got the gateway's refusal for every request of the call, and
    /// the ledger says each was withheld.
    Withheld,
    /// The agent left before the sync answered.
    Abandoned,
}

struct Kept {
    session: Arc<Session>,
    requests: Requests,
    /// Why they got no answer on their stream, for the ledger if they cannot be kept.
    detail: &'static str,
}

impl Withholding {
    fn standing(&self) -> MutexGuard<'_, Standing> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the answer was withheld: the stream then ends without a word, since the
    /// ledger already has one for each of its requests.
    pub fn withheld(&self) -> bool {
        matches!(*self.standing(), Standing::Withheld)
    }

    /// Keeps `requests` for a resumed stream of `session`: at once if the call's records
    /// are durable, else once they are. Returns those that are not kept, to be recorded as
    /// unanswered with `detail`.
    pub fn keep(
        &self,
        session: &Arc<Session>,
        requests: Requests,
        detail: &'static str,
    ) -> Requests {
        let mut standing = self.standing();
        let kept = Kept {
            session: session.clone(),
            requests,
            detail,
        };
        match &mut *standing {
            Standing::Waiting => *standing = Standing::Kept(vec![kept]),
            Standing::Kept(all) => all.push(kept),
            Standing::Released => {
                drop(standing);
                return keep_for_resume(&kept.session, kept.requests);
            }
            Standing::Withheld => {}
            Standing::Abandoned => return kept.requests,
        }
        Vec::new()
    }

    /// The records are durable: requests waiting here go to their sessions.
    pub fn release(&self, recorder: &Observer) {
        for kept in self.settle(Standing::Released) {
            let lost = keep_for_resume(&kept.session, kept.requests);
            record(recorder, lost, kept.detail);
        }
    }

    /// The records are not durable: the ledger says why for every request of the call, so
    /// requests waiting here are let go.
    pub fn withhold(&self) {
        self.settle(Standing::Withheld);
    }

    /// The agent left before the sync answered: requests waiting here get no answer.
    pub fn abandon(&self, recorder: &Observer) {
        for kept in self.settle(Standing::Abandoned) {
            record(recorder, kept.requests, kept.detail);
        }
    }

    /// Moves to `to` (once: a settled standing stays), returning what was kept waiting.
    fn settle(&self, to: Standing) -> Vec<Kept> {
        let mut standing = self.standing();
        match std::mem::replace(&mut *standing, Standing::Waiting) {
            Standing::Waiting => {
                *standing = to;
                Vec::new()
            }
            Standing::Kept(all) => {
                *standing = to;
                all
            }
            settled => {
                *standing = settled;
                Vec::new()
            }
        }
    }
}

fn record(recorder: &Observer, requests: Requests, detail: &str) {
    if !requests.is_empty() {
        recorder.write_now(recorder.unanswered(
            Direction::ClientToServer,
            requests,
            "no_response",
            detail,
        ));
    }
}

/// Keeps `requests` in `session` for a stream the agent resumes; returns those that do not
/// fit (an id already waiting, or the session's limit).
pub fn keep_for_resume(session: &Session, requests: Requests) -> Requests {
    let mut st = session.state();
    let mut lost = Vec::new();
    for (id, req) in requests {
        if let Err(e) = st.client_pending.insert(id.clone(), req.clone()) {
            tracing::debug!(error = %e, "pending request not kept");
            lost.push((id, req));
        }
    }
    lost
}
