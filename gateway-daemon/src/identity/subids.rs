//! Whose share a process's identity read takes. A user may own ranges of subordinate uids
//! (`/etc/subuid`): `newuidmap` lets it run processes under any of them in a user namespace,
//! and the kernel shows those processes under the subordinate uid. Counted per uid, one
//! agent with a range of 65,536 uids would have as many shares of the identity reads and
//! could hold all of them (see `bounded`). So every uid of a listed range counts as one
//! holder. The file is root's to write; it is read again when it changes.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Where subordinate uid ranges are listed (`shadow-utils`' `newuidmap` reads it).
pub const SUBUID: &str = "/etc/subuid";

/// How often the file's modification time is looked at again.
const RECHECK: Duration = Duration::from_secs(2);

/// Who a uid's reads count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A uid in no listed range: itself.
    Uid(u32),
    /// A listed range, by its first uid.
    Range(u32),
}

/// The listed ranges: (first uid, count), by first uid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    ranges: Vec<(u32, u32)>,
}

impl Table {
    /// Parses `name:first:count` lines; a line that is not one is skipped (as `newuidmap`
    /// skips it), as is an empty range.
    pub fn parse(text: &str) -> Table {
        let mut ranges: Vec<(u32, u32)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.trim().split(':');
                let (_name, first, count) = (parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() {
                    return None;
                }
                let (first, count) = (first.parse().ok()?, count.parse().ok()?);
                (count > 0).then_some((first, count))
            })
            .collect();
        ranges.sort_unstable();
        Table { ranges }
    }

    /// The holder of `uid`: the first listed range holding it, else the uid.
    pub fn holder(&self, uid: u32) -> Holder {
        self.ranges
            .iter()
            .take_while(|(first, _)| *first <= uid)
            .find(|(first, count)| u64::from(uid) < u64::from(*first) + u64::from(*count))
            .map_or(Holder::Uid(uid), |(first, _)| Holder::Range(*first))
    }
}

struct Cached {
    modified: Option<SystemTime>,
    checked: Option<Instant>,
    table: Table,
}

static CACHE: LazyLock<Mutex<Cached>> = LazyLock::new(|| {
    Mutex::new(Cached {
        modified: None,
        checked: None,
        table: Table::default(),
    })
});

/// The holder of `uid` by `/etc/subuid` as it is now (looked at again every `RECHECK`; a
/// file that cannot be read lists no range).
pub fn holder(uid: u32) -> Holder {
    let mut c = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if c.checked.is_none_or(|t| t.elapsed() >= RECHECK) {
        c.checked = Some(Instant::now());
        let modified = std::fs::metadata(SUBUID).and_then(|m| m.modified()).ok();
        if modified != c.modified {
            c.modified = modified;
            c.table = std::fs::read_to_string(SUBUID)
                .map(|t| Table::parse(&t))
                .unwrap_or_default();
        }
    }
    c.table.holder(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_uid_of_a_range_is_one_holder() {
        let t = Table::parse(
            "alice:100000:65536\n# a comment\nbob:165536:65536\nbad line\ncarol:x:5\n\
             dave:300000:0\n1001:400000:10\n",
        );
        assert_eq!(t.holder(100000), Holder::Range(100000));
        assert_eq!(t.holder(165535), Holder::Range(100000));
        assert_eq!(t.holder(165536), Holder::Range(165536));
        assert_eq!(t.holder(231071), Holder::Range(165536));
        assert_eq!(t.holder(231072), Holder::Uid(231072));
        assert_eq!(t.holder(99999), Holder::Uid(99999));
        assert_eq!(
            t.holder(300000),
            Holder::Uid(300000),
            "an empty range holds none"
        );
        assert_eq!(t.holder(400009), Holder::Range(400000));
        assert_eq!(t.holder(1000), Holder::Uid(1000));
        // A range reaching past the last uid does not wrap.
        let edge = Table::parse("x:4294967290:100\n");
        assert_eq!(edge.holder(u32::MAX), Holder::Range(4294967290));
        assert_eq!(edge.holder(5), Holder::Uid(5));
    }
}
