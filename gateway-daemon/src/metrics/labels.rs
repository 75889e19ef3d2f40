//! Counters keyed by label values that arrive as `&str`. A value becomes owned the first
//! time it is seen; each label keeps at most a fixed number of distinct values, and the
//! family a fixed number of series, past which values count under "other". So neither
//! memory nor the exported series grow with what agents or servers send, and the hot path
//! is a shared read lock, a hash lookup and an atomic add.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{PoisonError, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The value a label takes once its cap is reached.
pub const OTHER: &str = "other";

/// What prometheus-client stores per series: `(label name, value)` pairs.
pub type LabelSet<const N: usize> = [(&'static str, String); N];

pub struct CappedCounters<const N: usize> {
    names: [&'static str; N],
    /// Distinct values each label may take, "other" aside.
    caps: [usize; N],
    /// Series the family may hold; past it, new combinations count as all "other".
    max_series: usize,
    family: Family<LabelSet<N>, Counter>,
    inner: RwLock<Inner<N>>,
}

/// foldhash, not SipHash: every call looks up N + 1 keys here. Seeded per process, and what
/// may be inserted is capped (`caps`, `max_series`), so colliding keys cost little.
type Fast = foldhash::fast::RandomState;

struct Inner<const N: usize> {
    seen: [HashSet<Box<str>, Fast>; N],
    counters: HashMap<Key<N>, Counter, Fast>,
}

impl<const N: usize> CappedCounters<N> {
    pub fn new(names: [&'static str; N], caps: [usize; N], max_series: usize) -> Self {
        Self {
            names,
            caps,
            max_series: max_series.max(1),
            family: Family::default(),
            inner: RwLock::new(Inner {
                seen: std::array::from_fn(|_| {
                    let mut s = HashSet::default();
                    s.insert(Box::from(OTHER));
                    s
                }),
                counters: HashMap::default(),
            }),
        }
    }

    /// The family to register: it shares its counters with this index.
    pub fn family(&self) -> Family<LabelSet<N>, Counter> {
        self.family.clone()
    }

    pub fn inc(&self, values: [&str; N]) {
        self.inc_by(values, 1)
    }

    pub fn inc_by(&self, values: [&str; N], by: u64) {
        {
            let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(key) = self.known(&inner, values) {
                if let Some(c) = inner.counters.get(&key as &dyn Parts<N>) {
                    c.inc_by(by);
                    return;
                }
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let mut key = values;
        for (i, v) in values.iter().enumerate() {
            if !inner.seen[i].contains(*v) {
                if inner.seen[i].len() <= self.caps[i] {
                    inner.seen[i].insert(Box::from(*v));
                } else {
                    key[i] = OTHER;
                }
            }
        }
        if !inner.counters.contains_key(&key as &dyn Parts<N>)
            && inner.counters.len() >= self.max_series
        {
            key = [OTHER; N];
        }
        let counter = match inner.counters.get(&key as &dyn Parts<N>) {
            Some(c) => c.clone(),
            None => {
                let labels: LabelSet<N> = std::array::from_fn(|i| (self.names[i], key[i].into()));
                let c = self.family.get_or_create_owned(&labels);
                inner.counters.insert(Key(key.map(Box::from)), c.clone());
                c
            }
        };
        counter.inc_by(by);
    }

    /// The key `values` count under when every value is already known or capped, or
    /// `None` when one of them is new (which needs the write lock).
    fn known<'v>(&self, inner: &Inner<N>, values: [&'v str; N]) -> Option<[&'v str; N]> {
        let mut key = values;
        for (i, v) in values.iter().enumerate() {
            if !inner.seen[i].contains(*v) {
                if inner.seen[i].len() <= self.caps[i] {
                    return None;
                }
                key[i] = OTHER;
            }
        }
        Some(key)
    }

    /// Every series with its count.
    pub fn for_each(&self, mut f: impl FnMut([&str; N], u64)) {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        for (k, c) in &inner.counters {
            f(k.parts(), c.get());
        }
    }
}

/// A label-value combination as owned by the index.
struct Key<const N: usize>([Box<str>; N]);

/// The view of a key shared by the owned form and a borrowed `[&str; N]`, so a lookup
/// needs no allocation.
trait Parts<const N: usize> {
    fn parts(&self) -> [&str; N];
}

impl<const N: usize> Parts<N> for [&str; N] {
    fn parts(&self) -> [&str; N] {
        *self
    }
}

impl<const N: usize> Parts<N> for Key<N> {
    fn parts(&self) -> [&str; N] {
        std::array::from_fn(|i| &*self.0[i])
    }
}

impl<const N: usize> Hash for dyn Parts<N> + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

impl<const N: usize> PartialEq for dyn Parts<N> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl<const N: usize> Eq for dyn Parts<N> + '_ {}

// Hashes exactly as `dyn Parts` does, as `Borrow` requires.
impl<const N: usize> Hash for Key<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

impl<const N: usize> PartialEq for Key<N> {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl<const N: usize> Eq for Key<N> {}

impl<'a, const N: usize> Borrow<dyn Parts<N> + 'a> for Key<N> {
    fn borrow(&self) -> &(dyn Parts<N> + 'a) {
        self
    }
}
