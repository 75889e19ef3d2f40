//! Admission: how many connections the daemon holds, and how many of them one user's.
//!
//! Every mediated connection costs the daemon two descriptors (the agent's and the
//! upstream's). Unbounded, one agent holding thousands of silent connections exhausts the
//! daemon's descriptors, and every other agent's next connection fails with it. So each
//! user (uid) holds at most a share well below the descriptor limit, and the excess is
//! refused (reset, as a refused connect would be) with an audit record — one per user per
//! interval, counting what it refused, so refusing cannot flood the ledger either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Descriptors kept for everything that is not a flow (listeners, maps, files, admin).
const RESERVED_FDS: u64 = 512;
/// How often one user's refusals are audited (the record counts those in between).
const REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The user holds its share.
    User { uid: u32, limit: usize },
    /// The daemon holds all the connections its descriptors allow.
    Total { limit: usize },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::User { uid, limit } => write!(
                f,
                "uid {uid} holds {limit} connections, its limit (listener.max_connections_per_user)"
            ),
            Refused::Total { limit } => write!(
                f,
                "the daemon holds {limit} connections, all its open-files limit allows"
            ),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
    /// Per uid: when its refusals were last audited, and how many since.
    reported: HashMap<u32, (Instant, u64)>,
}

pub struct Admission {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_user: usize,
}

/// A held connection: gives its place back when dropped.
pub struct Permit {
    admission: Arc<Admission>,
    uid: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

impl Admission {
    /// Limits from the open-files limit `nofile`: all flows together leave
    /// `RESERVED_FDS` free, one user at most `per_user` (and at most half of all).
    pub fn new(nofile: u64, per_user: usize) -> Self {
        let max_total = (nofile.saturating_sub(RESERVED_FDS) / 2).max(16) as usize;
        Self {
            counts: Mutex::new(Counts::default()),
            max_total,
            max_per_user: per_user.min(max_total / 2).max(1),
        }
    }

    pub fn limits(&self) -> (usize, usize) {
        (self.max_total, self.max_per_user)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection of `uid`. Refused: why, and whether (with how many
    /// refusals it covers) this refusal is the one to audit now.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Permit, (Refused, Option<u64>)> {
        let mut c = self.lock();
        let held = c.per_uid.get(&uid).copied().unwrap_or(0);
        let refused = if held >= self.max_per_user {
            Some(Refused::User {
                uid,
                limit: self.max_per_user,
            })
        } else if c.total >= self.max_total {
            Some(Refused::Total {
                limit: self.max_total,
            })
        } else {
            None
        };
        if let Some(why) = refused {
            let now = Instant::now();
            let entry = c.reported.entry(uid).or_insert((now - REPORT_EVERY, 0));
            entry.1 += 1;
            let report = (now.duration_since(entry.0) >= REPORT_EVERY).then(|| {
                let n = entry.1;
                *entry = (now, 0);
                n
            });
            return Err((why, report));
        }
        c.total += 1;
        *c.per_uid.entry(uid).or_default() += 1;
        Ok(Permit {
            admission: self.clone(),
            uid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_the_others_places() {
        let a = Arc::new(Admission::new(512 + 2 * 100, 30));
        assert_eq!(a.limits(), (100, 30));
        let mine: Vec<Permit> = (0..30).map(|_| a.admit(1000).ok().unwrap()).collect();
        let (why, report) = a.admit(1000).err().unwrap();
        assert_eq!(
            why,
            Refused::User {
                uid: 1000,
                limit: 30
            }
        );
        assert_eq!(report, Some(1), "the first refusal is audited");
        assert_eq!(
            a.admit(1000).err().unwrap().1,
            None,
            "the next ones are counted"
        );
        let theirs = a.admit(65534);
        assert!(theirs.is_ok());
        drop(mine);
        assert!(a.admit(1000).is_ok(), "places come back");
    }

    #[test]
    fn all_together_stay_under_the_descriptor_limit() {
        let a = Arc::new(Admission::new(512 + 2 * 20, 1000));
        assert_eq!(a.limits(), (20, 10));
        let held: Vec<Permit> = (0..20).map(|u| a.admit(u).ok().unwrap()).collect();
        assert_eq!(a.admit(99).err().unwrap().0, Refused::Total { limit: 20 });
        drop(held);
    }
}
