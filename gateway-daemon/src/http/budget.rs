//! The memory the gateway spends holding bodies to inspect them: request bodies and JSON
//! responses read whole, SSE events read to their end. Each exchange's own limits bound one
//! body; this bounds them all together, and per user, so that many stalled exchanges of one
//! agent (each holding its largest allowed body, never completing) cannot take the daemon's
//! memory. Past a bound the exchange that asked gets an error (and is audited); what other
//! users hold is untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error(
        "uid {uid} already holds {held} bytes of bodies under inspection, its limit \
         (http.max_buffered_bytes_per_user = {limit})"
    )]
    User { uid: u32, held: usize, limit: usize },
    #[error(
        "the gateway already holds {held} bytes of bodies under inspection, its limit \
         (http.max_buffered_bytes = {limit})"
    )]
    Total { held: usize, limit: usize },
}

#[derive(Default)]
struct Held {
    total: usize,
    /// foldhash, not SipHash: a body's every chunk looks its user up here, and a uid is
    /// no key anyone can choose to collide.
    per_uid: HashMap<u32, usize, foldhash::fast::RandomState>,
}

pub struct Budget {
    held: Mutex<Held>,
    max_total: usize,
    max_per_user: usize,
}

impl Budget {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Self {
            held: Mutex::new(Held::default()),
            max_total,
            max_per_user: max_per_user.min(max_total),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is held now, in all (for `status` and tests).
    pub fn held(&self) -> usize {
        self.lock().total
    }

    /// An empty reservation for `uid`, to grow as bytes arrive.
    pub fn reserve(self: &Arc<Self>, uid: u32) -> Reservation {
        Reservation {
            budget: self.clone(),
            uid,
            held: 0,
        }
    }
}

/// Bytes one exchange holds; given back when dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    uid: u32,
    held: usize,
}

impl Reservation {
    /// Takes `n` more bytes, or refuses them leaving the reservation as it was.
    pub fn grow(&mut self, n: usize) -> Result<(), OverBudget> {
        let b = &self.budget;
        let mut h = b.lock();
        let mine = h.per_uid.get(&self.uid).copied().unwrap_or(0);
        if mine + n > b.max_per_user {
            return Err(OverBudget::User {
                uid: self.uid,
                held: mine,
                limit: b.max_per_user,
            });
        }
        if h.total + n > b.max_total {
            return Err(OverBudget::Total {
                held: h.total,
                limit: b.max_total,
            });
        }
        h.total += n;
        *h.per_uid.entry(self.uid).or_default() += n;
        self.held += n;
        Ok(())
    }

    /// Holds exactly `n` bytes from now on (what a parser still buffers after an event).
    pub fn set(&mut self, n: usize) -> Result<(), OverBudget> {
        if n > self.held {
            self.grow(n - self.held)
        } else {
            self.release(self.held - n);
            Ok(())
        }
    }

    fn release(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let mut h = self.budget.lock();
        h.total = h.total.saturating_sub(n);
        if let Some(m) = h.per_uid.get_mut(&self.uid) {
            *m = m.saturating_sub(n);
            if *m == 0 {
                h.per_uid.remove(&self.uid);
            }
        }
        self.held -= n;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_is_bounded_and_others_keep_their_share() {
        let b = Arc::new(Budget::new(1000, 400));
        let mut a1 = b.reserve(1);
        let mut a2 = b.reserve(1);
        a1.grow(300).unwrap();
        assert_eq!(
            a2.grow(200),
            Err(OverBudget::User {
                uid: 1,
                held: 300,
                limit: 400
            })
        );
        a2.grow(100).unwrap();
        let mut other = b.reserve(2);
        other.grow(400).unwrap();
        assert_eq!(b.held(), 800);
        drop(a1);
        assert_eq!(b.held(), 500);
        a2.set(10).unwrap();
        assert_eq!(b.held(), 410);
        drop((a2, other));
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn all_users_together_are_bounded() {
        let b = Arc::new(Budget::new(500, 400));
        let mut r: Vec<Reservation> = (0..3).map(|u| b.reserve(u)).collect();
        r[0].grow(200).unwrap();
        r[1].grow(200).unwrap();
        assert!(matches!(r[2].grow(200), Err(OverBudget::Total { .. })));
        r[2].grow(100).unwrap();
    }
}
