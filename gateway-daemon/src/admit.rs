//! Admission: how many connections the daemon holds, how many of them one user's, and how
//! fast one user may open new ones.
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
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Seconds of its rate a user may open at once (a burst), after being quiet.
const BURST_SECONDS: f64 = 5.0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The user holds its share.
    User { uid: u32, limit: usize },
    /// The daemon holds all the connections its descriptors allow.
    Total { limit: usize },
    /// The user opens connections faster than its rate: each one is a flow record, and a
    /// flood of them would bury the rest of the ledger.
    Rate { uid: u32, per_second: u32 },
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
            Refused::Rate { uid, per_second } => write!(
                f,
                "uid {uid} opens connections faster than {per_second} a second \
                 (listener.connections_per_second_per_user)"
            ),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
    /// Per uid: refusals since they were last audited.
    reported: HashMap<u32, Unreported>,
    /// Per uid: connections it may still open now (a token bucket), as of when.
    tokens: HashMap<u32, (f64, Instant)>,
}

struct Unreported {
    /// When this uid's refusals were last audited.
    since: Instant,
    /// How many since then.
    count: u64,
    /// Why the last one was refused.
    last: Option<Refused>,
}

/// Refusals of one uid the audit has not heard of yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    pub uid: u32,
    pub reason: Refused,
    pub refused: u64,
}

pub struct Admission {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_user: usize,
    per_second: u32,
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
    /// `per_second`: new connections one user may open a second, on average.
    pub fn new(nofile: u64, per_user: usize, per_second: u32) -> Self {
        let max_total = (nofile.saturating_sub(RESERVED_FDS) / 2).max(16) as usize;
        Self {
            counts: Mutex::new(Counts::default()),
            max_total,
            max_per_user: per_user.min(max_total / 2).max(1),
            per_second: per_second.max(1),
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
        let now = Instant::now();
        let rate = f64::from(self.per_second);
        let burst = rate * BURST_SECONDS;
        let (tokens, since) = c.tokens.get(&uid).copied().unwrap_or((burst, now));
        let tokens = (tokens + now.duration_since(since).as_secs_f64() * rate).min(burst);
        let refused = if tokens < 1.0 {
            c.tokens.insert(uid, (tokens, now));
            Some(Refused::Rate {
                uid,
                per_second: self.per_second,
            })
        } else if held >= self.max_per_user {
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
            let entry = c.reported.entry(uid).or_insert(Unreported {
                since: now - REPORT_EVERY,
                count: 0,
                last: None,
            });
            entry.count += 1;
            let report = (now.duration_since(entry.since) >= REPORT_EVERY).then(|| {
                let n = entry.count;
                entry.since = now;
                entry.count = 0;
                n
            });
            entry.last = report.is_none().then(|| why.clone());
            return Err((why, report));
        }
        c.tokens.insert(uid, (tokens - 1.0, now));
        c.total += 1;
        *c.per_uid.entry(uid).or_default() += 1;
        Ok(Permit {
            admission: self.clone(),
            uid,
        })
    }
}

impl Admission {
    /// Refusals the audit has not heard of whose interval has passed (all of them when
    /// `all`, at a stop): the accept loop records these, so the tail of a burst is counted
    /// even when the same user is never refused again.
    pub fn overdue(&self, all: bool) -> Vec<Overdue> {
        self.overdue_at(Instant::now(), all)
    }

    fn overdue_at(&self, now: Instant, all: bool) -> Vec<Overdue> {
        let mut c = self.lock();
        let mut out = Vec::new();
        c.reported.retain(|&uid, u| {
            let due = all || now.duration_since(u.since) >= REPORT_EVERY;
            if !due {
                return true;
            }
            if let (n @ 1.., Some(reason)) = (u.count, u.last.take()) {
                out.push(Overdue {
                    uid,
                    reason,
                    refused: n,
                });
                u.count = 0;
                u.since = now;
                return true;
            }
            // Nothing refused for a whole interval: forgotten (the next refusal is
            // audited at once, as the first was).
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_the_others_places() {
        let a = Arc::new(Admission::new(512 + 2 * 100, 30, 1000));
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
        let a = Arc::new(Admission::new(512 + 2 * 20, 1000, 1000));
        assert_eq!(a.limits(), (20, 10));
        let held: Vec<Permit> = (0..20).map(|u| a.admit(u).ok().unwrap()).collect();
        assert_eq!(a.admit(99).err().unwrap().0, Refused::Total { limit: 20 });
        drop(held);
    }

    #[test]
    fn one_user_opening_connections_too_fast_is_slowed_alone() {
        let a = Arc::new(Admission::new(1 << 20, 1 << 20, 10));
        // A burst of five seconds' worth, then nothing until tokens come back.
        let opened: Vec<Permit> = (0..50).map(|_| a.admit(7).ok().unwrap()).collect();
        let (why, report) = a.admit(7).err().unwrap();
        assert_eq!(
            why,
            Refused::Rate {
                uid: 7,
                per_second: 10
            }
        );
        assert_eq!(report, Some(1));
        assert!(a.admit(8).is_ok(), "another user is not slowed");
        drop(opened);
        assert!(a.admit(7).is_err(), "closing does not give rate back");
        std::thread::sleep(Duration::from_millis(250));
        assert!(a.admit(7).is_ok(), "time does");
    }
}

#[cfg(test)]
mod overdue_tests {
    use super::*;

    #[test]
    fn the_tail_of_a_burst_is_reported_when_its_interval_ends() {
        let a = Arc::new(Admission::new(1 << 20, 1 << 20, 1));
        let mut audited = 0;
        let mut refused = 0;
        for _ in 0..50 {
            if let Err((_, report)) = a.admit(7) {
                refused += 1;
                audited += report.unwrap_or(0);
            }
        }
        // The first refusal was audited at once; the rest wait for the interval.
        assert_eq!(audited, 1);
        assert!(refused > 10);
        assert!(a.overdue(false).is_empty(), "not due yet");
        let late = a.overdue_at(Instant::now() + REPORT_EVERY, false);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].uid, 7);
        assert!(matches!(late[0].reason, Refused::Rate { uid: 7, .. }));
        assert_eq!(
            audited + late[0].refused,
            refused,
            "every refusal counted once"
        );
        // Reported once; a quiet interval later the uid is forgotten.
        assert!(a
            .overdue_at(Instant::now() + REPORT_EVERY, false)
            .is_empty());
        assert!(a
            .overdue_at(Instant::now() + 3 * REPORT_EVERY, true)
            .is_empty());
        assert!(a.lock().reported.is_empty());
    }

    #[test]
    fn at_a_stop_everything_unreported_is_reported() {
        let a = Arc::new(Admission::new(1 << 20, 1 << 20, 1));
        let refused = (0..20).filter(|_| a.admit(3).is_err()).count() as u64;
        let stop = a.overdue(true);
        assert_eq!(stop.len(), 1);
        assert_eq!(stop[0].refused + 1, refused);
    }
}
