//! Whose share a process's identity read takes. A user may own ranges of subordinate uids
//! (`/etc/subuid`): `newuidmap` lets it run processes under any of them in a user namespace,
//! and the kernel shows those processes under the subordinate uid. Counted per uid, one
//! agent with a range of 65,536 uids would have as many shares of the identity reads and
//! could hold all of them (see `bounded`). So every uid of a listed range counts as one
//! holder, but for a local account's uid (`/etc/passwd`) that falls in one. The files are
//! root's to write; they are read again when they change.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Where subordinate uid ranges are listed (`shadow-utils`' `newuidmap` reads it).
pub const SUBUID: &str = "/etc/subuid";

/// Local accounts, whose uids keep their own share.
const PASSWD: &str = "/etc/passwd";

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

/// The listed ranges: (first uid, count), by first uid; and the uids of local accounts
/// (`/etc/passwd`), which keep their own share even inside a range (an overlap is a
/// misconfiguration, but the range's owner must not starve that account).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    ranges: Vec<(u64, u64)>,
    accounts: HashSet<u32>,
}

impl Table {
    /// Parses `name:first:count` lines as shadow's `newuidmap` does (numbers as `strtoul`
    /// reads them: leading blanks, `0x` hex, a leading `0` octal); a line that is not one
    /// is skipped, as is an empty range.
    pub fn parse(text: &str) -> Table {
        let mut ranges: Vec<(u64, u64)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split(':');
                let (_name, first, count) = (parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() {
                    return None;
                }
                let (first, count) = (number(first)?, number(count)?);
                (count > 0).then_some((first, count))
            })
            .collect();
        ranges.sort_unstable();
        Table {
            ranges,
            accounts: HashSet::new(),
        }
    }

    /// Notes the uids of the accounts in `passwd` (`name:x:uid:…` lines).
    pub fn with_accounts(mut self, passwd: &str) -> Table {
        self.accounts = passwd
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.trim().parse().ok())
            .collect();
        self
    }

    /// The holder of `uid`: itself when it is an account's, else the first listed range
    /// holding it, else itself.
    pub fn holder(&self, uid: u32) -> Holder {
        if self.accounts.contains(&uid) {
            return Holder::Uid(uid);
        }
        let at = u64::from(uid);
        self.ranges
            .iter()
            .take_while(|(first, _)| *first <= at)
            .find(|(first, count)| at < first.saturating_add(*count))
            .and_then(|(first, _)| u32::try_from(*first).ok())
            .map_or(Holder::Uid(uid), Holder::Range)
    }
}

/// A number as `strtoul(s, NULL, 0)` reads it, whole: leading blanks, then `0x` hex, `0`
/// octal or decimal.
fn number(s: &str) -> Option<u64> {
    let s = s.trim_start();
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if s.len() > 1 && s.starts_with('0') => (&s[1..], 8),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

struct Cached {
    stamps: Option<[Option<SystemTime>; 2]>,
    checked: Option<Instant>,
    table: Arc<Table>,
}

static CACHE: LazyLock<Mutex<Cached>> = LazyLock::new(|| {
    Mutex::new(Cached {
        stamps: None,
        checked: None,
        table: Arc::default(),
    })
});

/// The holder of `uid` by `/etc/subuid` and `/etc/passwd` as they are now (looked at again
/// every `RECHECK`; a file that cannot be read lists nothing). The lock is never held
/// across the files' I/O: this runs on a connection's worker.
pub fn holder(uid: u32) -> Holder {
    let lock = || CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let (table, due) = {
        let mut c = lock();
        let due = c.checked.is_none_or(|t| t.elapsed() >= RECHECK);
        if due {
            c.checked = Some(Instant::now());
        }
        (c.table.clone(), due)
    };
    if !due {
        return table.holder(uid);
    }
    let stamp = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stamps = Some([stamp(SUBUID), stamp(PASSWD)]);
    if stamps == lock().stamps {
        return table.holder(uid);
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let fresh = Arc::new(Table::parse(&read(SUBUID)).with_accounts(&read(PASSWD)));
    let mut c = lock();
    c.stamps = stamps;
    c.table = fresh.clone();
    drop(c);
    fresh.holder(uid)
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

    #[test]
    fn numbers_are_read_as_newuidmap_reads_them_and_accounts_keep_their_own() {
        let t = Table::parse("a: 0x186a0:0x10\nb:0303240:8\nc:500000:4294967296\n");
        assert_eq!(
            t.holder(100_005),
            Holder::Range(100_000),
            "hex, after a blank"
        );
        assert_eq!(t.holder(100_000 + 3), Holder::Range(100_000));
        assert_eq!(t.holder(0o303240 + 7), Holder::Range(0o303240), "octal");
        assert_eq!(t.holder(303_240), Holder::Uid(303_240), "not decimal");
        assert_eq!(
            t.holder(u32::MAX),
            Holder::Range(500_000),
            "a count past u32"
        );
        // An account whose uid falls in a range keeps its own share.
        let t = Table::parse("alice:100000:65536\n")
            .with_accounts("root:x:0:0::/root:/bin/sh\nbob:x:120000:120000::/home/bob:/bin/sh\n");
        assert_eq!(t.holder(120_000), Holder::Uid(120_000));
        assert_eq!(t.holder(120_001), Holder::Range(100_000));
    }
}
