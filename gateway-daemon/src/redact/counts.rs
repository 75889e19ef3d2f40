//! Per-detector redaction counts: what the audit records. Names and numbers only — never the
//! matched text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many matches each detector replaced (or, from a scan, found). Serialises as a JSON
/// object `{"aws_access_key_id": 1, "email": 2}`, detectors in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Counts {
    by_detector: BTreeMap<String, u64>,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        self.by_detector.is_empty()
    }

    /// All matches, over all detectors.
    pub fn total(&self) -> u64 {
        self.by_detector.values().sum()
    }

    /// Matches of one detector (0 when none).
    pub fn get(&self, detector: &str) -> u64 {
        self.by_detector.get(detector).copied().unwrap_or(0)
    }

    /// Adds another count into this one (e.g. one JSON-RPC message's over its SSE events).
    pub fn merge(&mut self, other: &Counts) {
        for (name, n) in &other.by_detector {
            self.add(name, *n);
        }
    }

    /// Detectors that fired, with their counts, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.by_detector.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub(crate) fn add(&mut self, detector: &str, n: u64) {
        match self.by_detector.get_mut(detector) {
            Some(c) => *c += n,
            None => {
                self.by_detector.insert(detector.to_string(), n);
            }
        }
    }
}
