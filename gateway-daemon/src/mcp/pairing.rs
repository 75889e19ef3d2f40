//! Request/response pairing: which requests of one direction of one session still wait
//! for their response.

use std::collections::HashMap;

use super::jsonrpc::Id;

/// Requests awaiting their response, for one direction of one session (client→server
/// requests are answered by the server, and server→client requests such as
/// sampling/createMessage, elicitation/create, roots/list are answered by the client).
/// Bounded: a peer that never answers must not grow memory without limit.
///
/// Ids are compared as [`Id`] values (so `1` and `1.0` are the same id, `1` and `"1"`
/// are not). The map uses std's randomly keyed SipHash, since ids are chosen by the
/// peer. Memory is allocated as entries arrive, not up front for `capacity`.
#[derive(Debug)]
pub struct Pending<T> {
    entries: HashMap<Id, T>,
    capacity: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairingError {
    #[error("request id {0} is already in flight")]
    DuplicateId(String),
    #[error("too many requests in flight (limit {0})")]
    Full(usize),
}

impl<T> Pending<T> {
    /// A table holding at most `capacity` requests (0 refuses every request).
    pub fn new(capacity: usize) -> Self {
        Pending {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// Records a request. Returns Err(DuplicateId) if that id is already pending
    /// (JSON-RPC ids must be unique among in-flight requests; the caller will report
    /// it), Err(Full) when at capacity (caller refuses the request rather than evicting
    /// silently). A duplicate is reported as such even when the table is also full. On
    /// error the table is unchanged (the earlier request with that id stays pending).
    pub fn insert(&mut self, id: Id, value: T) -> Result<(), PairingError> {
        if self.entries.contains_key(&id) {
            return Err(PairingError::DuplicateId(id.to_string()));
        }
        if self.entries.len() >= self.capacity {
            return Err(PairingError::Full(self.capacity));
        }
        self.entries.insert(id, value);
        Ok(())
    }

    /// Takes the request a response answers; None if no such request is pending
    /// (unsolicited/duplicate response).
    pub fn take(&mut self, id: &Id) -> Option<T> {
        self.entries.remove(id)
    }

    /// The pending request with this id, left in place.
    pub fn get(&self, id: &Id) -> Option<&T> {
        self.entries.get(id)
    }

    /// Whether a request with this id is pending.
    pub fn contains(&self, id: &Id) -> bool {
        self.entries.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The ids of every pending request.
    pub fn ids(&self) -> Vec<Id> {
        self.entries.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A copy of every pending request, the table left as it is.
    pub fn snapshot(&self) -> Vec<(Id, T)>
    where
        T: Clone,
    {
        self.entries
            .iter()
            .map(|(id, value)| (id.clone(), value.clone()))
            .collect()
    }

    /// The limit given to [`Pending::new`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Removes and returns entries for which `expired(&T)` is true (used for timeouts;
    /// the caller passes a closure that looks at a start Instant inside T). The order
    /// of the returned entries is unspecified.
    pub fn drain_expired(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<(Id, T)> {
        let ids: Vec<Id> = self
            .entries
            .iter()
            .filter(|(_, value)| expired(value))
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| self.entries.remove_entry(&id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    fn s(x: &str) -> Id {
        Id::Str(x.to_owned())
    }

    #[test]
    fn insert_then_take() {
        let mut p = Pending::new(4);
        assert!(p.is_empty());
        p.insert(Id::Num(1), "tools/call").unwrap();
        p.insert(s("a"), "sampling/createMessage").unwrap();
        assert_eq!((p.len(), p.is_empty()), (2, false));
        assert!(p.contains(&Id::Num(1)));
        assert_eq!(p.get(&s("a")), Some(&"sampling/createMessage"));
        assert_eq!(p.take(&Id::Num(1)), Some("tools/call"));
        assert_eq!(
            p.take(&Id::Num(1)),
            None,
            "a second response to the same id is unsolicited"
        );
        assert_eq!(p.take(&Id::Num(2)), None);
        assert_eq!(p.take(&s("a")), Some("sampling/createMessage"));
        assert!(p.is_empty());
    }

    #[test]
    fn string_and_number_ids_are_distinct() {
        let mut p = Pending::new(4);
        p.insert(Id::Num(1), 'n').unwrap();
        p.insert(s("1"), 's').unwrap();
        assert_eq!(p.take(&s("1")), Some('s'));
        assert_eq!(p.take(&Id::Num(1)), Some('n'));
    }

    #[test]
    fn duplicate_id_rejected_and_original_kept() {
        let mut p = Pending::new(4);
        p.insert(Id::Num(7), "first").unwrap();
        assert_eq!(
            p.insert(Id::Num(7), "second"),
            Err(PairingError::DuplicateId("7".into()))
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p.take(&Id::Num(7)), Some("first"));
        // Once answered, the id may be reused.
        p.insert(Id::Num(7), "third").unwrap();
        assert_eq!(p.take(&Id::Num(7)), Some("third"));
    }

    #[test]
    fn full_rejected_until_something_is_answered() {
        let mut p = Pending::new(2);
        p.insert(Id::Num(1), ()).unwrap();
        p.insert(Id::Num(2), ()).unwrap();
        assert_eq!(p.insert(Id::Num(3), ()), Err(PairingError::Full(2)));
        assert_eq!(p.len(), 2);
        assert!(!p.contains(&Id::Num(3)));
        // A duplicate is reported as a duplicate even when full.
        assert_eq!(
            p.insert(Id::Num(2), ()),
            Err(PairingError::DuplicateId("2".into()))
        );
        p.take(&Id::Num(1)).unwrap();
        p.insert(Id::Num(3), ()).unwrap();
        assert_eq!(p.capacity(), 2);
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let mut p = Pending::new(0);
        assert_eq!(p.insert(s("x"), 1), Err(PairingError::Full(0)));
        assert!(p.is_empty());
    }

    #[test]
    fn drain_expired_removes_only_expired() {
        let now = Instant::now();
        let mut p = Pending::new(10);
        for (i, age) in [(1, 30), (2, 5), (3, 60), (4, 0)] {
            p.insert(Id::Num(i), now - Duration::from_secs(age))
                .unwrap();
        }
        let timeout = Duration::from_secs(10);
        let mut expired = p.drain_expired(|start| now.duration_since(*start) > timeout);
        expired.sort_by_key(|(id, _)| id.to_string());
        let ids: Vec<Id> = expired.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, [Id::Num(1), Id::Num(3)]);
        assert_eq!(expired[0].1, now - Duration::from_secs(30));
        assert_eq!(p.len(), 2);
        assert!(p.contains(&Id::Num(2)) && p.contains(&Id::Num(4)));
        assert!(p.drain_expired(|_| false).is_empty());
        assert_eq!(p.drain_expired(|_| true).len(), 2);
        assert!(p.is_empty());
    }

    #[test]
    fn error_display() {
        assert_eq!(
            PairingError::DuplicateId("abc".into()).to_string(),
            "request id abc is already in flight"
        );
        assert_eq!(
            PairingError::Full(64).to_string(),
            "too many requests in flight (limit 64)"
        );
    }

    #[test]
    fn pairs_parsed_request_with_parsed_response() {
        use super::super::jsonrpc::{parse, Kind, Message, Parsed};
        fn one(body: &str) -> Message<'_> {
            match parse(body.as_bytes(), 64) {
                Ok(Parsed::Single(m)) => m,
                other => panic!("{body}: {other:?}"),
            }
        }
        let mut p = Pending::new(8);
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
            r#"{"jsonrpc":"2.0","id":"s-1","method":"roots/list"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ] {
            let m = one(body);
            if m.kind == Kind::Request {
                let method = m.method.as_deref().unwrap_or_default().to_owned();
                p.insert(m.id.clone().unwrap(), method).unwrap();
            }
        }
        assert_eq!(p.len(), 2);
        // A peer may echo the number 1 as 1.0: it is the same JSON number.
        let r = one(r#"{"jsonrpc":"2.0","id":1.0,"result":{"content":[]}}"#);
        assert_eq!(
            p.take(r.id.as_ref().unwrap()).as_deref(),
            Some("tools/call")
        );
        let r = one(r#"{"jsonrpc":"2.0","id":"s-1","result":{"roots":[]}}"#);
        assert_eq!(
            p.take(r.id.as_ref().unwrap()).as_deref(),
            Some("roots/list")
        );
        let r = one(r#"{"jsonrpc":"2.0","id":"1","result":{}}"#);
        assert_eq!(p.take(r.id.as_ref().unwrap()), None);
        assert!(p.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Id, u32),
        Take(Id),
        DrainBelow(u32),
    }

    fn arb_small_id() -> impl Strategy<Value = Id> {
        prop_oneof![
            (0i64..6).prop_map(Id::Num),
            "[ab1]".prop_map(Id::Str),
            Just(Id::Null),
            Just(Id::Num(i64::MIN)),
        ]
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (arb_small_id(), any::<u32>()).prop_map(|(id, v)| Op::Insert(id, v)),
            3 => arb_small_id().prop_map(Op::Take),
            1 => any::<u32>().prop_map(Op::DrainBelow),
        ]
    }

    proptest! {
        #[test]
        fn prop_behaves_like_a_bounded_hashmap(capacity in 0usize..6, ops in prop::collection::vec(arb_op(), 0..64)) {
            let mut p = Pending::new(capacity);
            let mut model: std::collections::HashMap<Id, u32> = std::collections::HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(id, v) => {
                        let want = if model.contains_key(&id) {
                            Err(PairingError::DuplicateId(id.to_string()))
                        } else if model.len() >= capacity {
                            Err(PairingError::Full(capacity))
                        } else {
                            model.insert(id.clone(), v);
                            Ok(())
                        };
                        prop_assert_eq!(p.insert(id, v), want);
                    }
                    Op::Take(id) => prop_assert_eq!(p.take(&id), model.remove(&id)),
                    Op::DrainBelow(limit) => {
                        let mut got = p.drain_expired(|v| *v < limit);
                        let mut want: Vec<(Id, u32)> = model.iter().filter(|(_, v)| **v < limit).map(|(k, v)| (k.clone(), *v)).collect();
                        model.retain(|_, v| *v >= limit);
                        got.sort_by_key(|(id, _)| format!("{id:?}"));
                        want.sort_by_key(|(id, _)| format!("{id:?}"));
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(p.len(), model.len());
                prop_assert_eq!(p.is_empty(), model.is_empty());
                prop_assert!(p.len() <= capacity);
                for (id, v) in &model {
                    prop_assert_eq!(p.get(id), Some(v));
                }
            }
        }
    }
}
