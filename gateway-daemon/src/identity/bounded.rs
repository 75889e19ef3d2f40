//! Reads of a process's files, off the connection's thread and bounded in time.
//!
//! What procfs and the executable show is the agent's to shape: its program may sit on a
//! filesystem it serves (FUSE) that never answers a stat, or be a gigabyte to hash. Such a
//! read on a worker would stall every connection that worker carries. So a read runs on a
//! blocking thread, the connection waits at most `READ_FOR` for it, and a user has at most
//! `PER_USER` reads under way: a read that hangs holds its thread and its user's share
//! until the file answers, never anyone else's. A user's subordinate uids are one user
//! (`subids`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::subids::{self, Holder};

/// How long a connection waits for its process's identity to be read.
pub const READ_FOR: Duration = Duration::from_secs(3);

/// Reads of one user's processes under way at once.
pub const PER_USER: usize = 4;

/// Reads under way at once, all users: below the blocking pool's 512 threads, so reads that
/// hang (of one agent under many subordinate uids, say) never take every thread. Past it,
/// new reads wait their turn within `READ_FOR`.
pub const ALL_USERS: usize = 128;

/// Users remembered with their reads; past this, those with none under way are forgotten.
const USERS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unread {
    #[error("not read within {}s (a file of the process did not answer)", READ_FOR.as_secs())]
    TimedOut,
    #[error(
        "not read: {PER_USER} reads of uid {uid}'s processes were still under way after {}s",
        READ_FOR.as_secs()
    )]
    Busy { uid: u32 },
    #[error(
        "not read: {ALL_USERS} identity reads were still under way after {}s",
        READ_FOR.as_secs()
    )]
    Saturated,
    #[error("the read failed (a panic, logged)")]
    Failed,
}

static ALL: Semaphore = Semaphore::const_new(ALL_USERS);

static UNDER_WAY: LazyLock<Mutex<HashMap<Holder, Arc<Semaphore>>>> =
    LazyLock::new(Default::default);

fn share_of(holder: Holder) -> Arc<Semaphore> {
    let mut users = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
    if users.len() >= USERS && !users.contains_key(&holder) {
        // Only shares no one holds (a waiter or a read holds a clone): forgetting a held
        // one would give its user a second.
        users.retain(|_, s| Arc::strong_count(s) > 1);
    }
    users
        .entry(holder)
        .or_insert_with(|| Arc::new(Semaphore::new(PER_USER)))
        .clone()
}

/// Runs `read` for a process of `uid` on a blocking thread, and waits for it at most
/// `READ_FOR` (its turn among the user's reads included).
pub async fn read<T: Send + 'static>(
    uid: u32,
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Unread> {
    read_as(subids::holder(uid), uid, read).await
}

/// As `read`, counted against `holder`'s share.
async fn read_as<T: Send + 'static>(
    holder: Holder,
    uid: u32,
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Unread> {
    let deadline = tokio::time::Instant::now() + READ_FOR;
    let share = share_of(holder);
    let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, share.acquire_owned()).await else {
        return Err(Unread::Busy { uid });
    };
    let Ok(Ok(all)) = tokio::time::timeout_at(deadline, ALL.acquire()).await else {
        return Err(Unread::Saturated);
    };
    let task = tokio::task::spawn_blocking(move || {
        // Held until the read is done, however long after the connection stopped waiting.
        let _permits = (permit, all);
        read()
    });
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "identity read failed");
            Err(Unread::Failed)
        }
        Err(_) => Err(Unread::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_that_hangs_costs_its_user_alone() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let hung = 60_001;
        // The user's share, all held by reads that do not return.
        let mut waiting = Vec::new();
        for _ in 0..PER_USER {
            let rx = rx.clone();
            waiting.push(tokio::spawn(read(hung, move || {
                let _ = rx.lock().unwrap().recv();
            })));
        }
        for w in waiting {
            assert_eq!(w.await.unwrap(), Err(Unread::TimedOut));
        }
        // Another read of that user waits for a share, and gets none.
        assert_eq!(read(hung, || ()).await, Err(Unread::Busy { uid: hung }));
        // Another user's read is not held up.
        let t = std::time::Instant::now();
        assert_eq!(read(60_002, || 7).await, Ok(7));
        assert!(t.elapsed() < Duration::from_secs(1));
        drop(tx);
        // Once the hung reads return, the user reads again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(read(hung, || 8).await, Ok(8));
    }

    #[tokio::test]
    async fn the_uids_of_one_range_share_one_users_reads() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let range = Holder::Range(70_000);
        // Reads under four different uids of the range hang: the range's share is spent.
        let mut waiting = Vec::new();
        for uid in 70_000..70_000 + PER_USER as u32 {
            let rx = rx.clone();
            waiting.push(tokio::spawn(read_as(range, uid, move || {
                let _ = rx.lock().unwrap().recv();
            })));
        }
        for w in waiting {
            assert_eq!(w.await.unwrap(), Err(Unread::TimedOut));
        }
        // A fifth uid of the range gets no share of its own.
        assert_eq!(
            read_as(range, 70_100, || ()).await,
            Err(Unread::Busy { uid: 70_100 })
        );
        // A uid outside it is served.
        assert_eq!(read_as(Holder::Uid(70_200), 70_200, || 9).await, Ok(9));
        drop(tx);
    }
}
