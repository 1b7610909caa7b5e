//! How far the Raft log is durable on this member, for the leader's parallel fsync.
//!
//! openraft 0.9 replicates a leader's new entries only after the leader's own append is
//! reported flushed, which puts the leader's fsync and a follower's fsync in series on
//! every write. The log store therefore reports a *leader's own* entries flushed as soon
//! as they are written and syncs them on a flusher thread, in parallel with replication
//! (as etcd's leader writes its WAL in parallel with sending). Two rules keep "a write is
//! acknowledged only once a quorum has it on disk" and "no member applies an entry the
//! cluster could still lose":
//!
//! - the state machine applies an entry only once [`LogSync::wait_synced`] says this
//!   member's log is durable up to it, and a client is answered only after the apply;
//!   openraft counts the leader in the commit quorum early, but the leader's answer waits
//!   for its own fsync, so an answered write is on the leader's disk and a follower's;
//! - the commit index the leader sends to followers is clamped to its own durable log
//!   ([`LogSync::clamp_commit`]), so a follower never applies an entry that only it has on
//!   disk; once the flusher catches up after a clamp, [`LogSync::caught_up`] fires and
//!   the server sends a heartbeat that carries the full commit index.
//!
//! Followers' appends are synced before openraft hears of them (their acknowledgement
//! counts for the quorum), so on a follower everything appended is always durable.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, watch};

use crate::types::LogId;

/// This member's durable log position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Every entry of the log up to this id is on disk.
    pub synced: Option<LogId>,
    /// A log sync failed: nothing more may be applied (the member must stop).
    pub failed: bool,
}

/// Shared between the log store (which syncs), the state machine (which waits) and the
/// network (which clamps the commit index it sends).
#[derive(Debug)]
pub struct LogSync {
    state: watch::Sender<SyncState>,
    clamped: AtomicBool,
    caught_up: Notify,
}

/// A log sync failed; the state machine refuses to apply past it.
#[derive(Debug, thiserror::Error)]
#[error("the raft log could not be made durable")]
pub struct SyncFailed;

impl LogSync {
    /// Durable up to `synced` (the log as found on open).
    pub fn new(synced: Option<LogId>) -> LogSync {
        LogSync {
            state: watch::channel(SyncState {
                synced,
                failed: false,
            })
            .0,
            clamped: AtomicBool::new(false),
            caught_up: Notify::new(),
        }
    }

    pub fn state(&self) -> SyncState {
        *self.state.borrow()
    }

    /// Record that the log is durable up to `synced` (which may go down after a truncation).
    pub fn publish(&self, synced: Option<LogId>) {
        self.state.send_modify(|state| state.synced = synced);
        if self.clamped.swap(false, Ordering::AcqRel) {
            self.caught_up.notify_one();
        }
    }

    /// Record a failed sync: every waiter gets [`SyncFailed`].
    pub fn fail(&self) {
        self.state.send_modify(|state| state.failed = true);
    }

    /// Wait until the log is durable at least up to `index`.
    pub async fn wait_synced(&self, index: u64) -> Result<(), SyncFailed> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| s.failed || s.synced.is_some_and(|id| id.index >= index))
            .await
            .map_err(|_| SyncFailed)?;
        if state.failed {
            return Err(SyncFailed);
        }
        Ok(())
    }

    /// The commit index to send to a follower: `commit`, or this member's durable log
    /// position when that is lower (then [`LogSync::caught_up`] fires after the next sync).
    pub fn clamp_commit(&self, commit: Option<LogId>) -> Option<LogId> {
        let synced = self.state().synced;
        let commit_index = commit.map(|id| id.index);
        let synced_index = synced.map(|id| id.index);
        if commit_index <= synced_index {
            return commit;
        }
        self.clamped.store(true, Ordering::Release);
        // The sync may have finished between the read and the flag: look again.
        let synced = self.state().synced;
        if commit_index <= synced.map(|id| id.index) {
            return commit;
        }
        synced
    }

    /// Resolves after a sync that followed a clamped commit index.
    pub async fn caught_up(&self) {
        self.caught_up.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MemberId;
    use openraft::CommittedLeaderId;

    fn id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, MemberId::default()), index)
    }

    #[tokio::test]
    async fn waiters_wake_once_the_log_is_durable_far_enough() {
        let sync = std::sync::Arc::new(LogSync::new(Some(id(3))));
        assert!(sync.wait_synced(3).await.is_ok());
        let waiter = tokio::spawn({
            let sync = sync.clone();
            async move { sync.wait_synced(5).await }
        });
        sync.publish(Some(id(4)));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        sync.publish(Some(id(5)));
        assert!(waiter.await.expect("join").is_ok());
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_waiter() {
        let sync = LogSync::new(None);
        sync.fail();
        assert!(sync.wait_synced(1).await.is_err());
    }

    #[tokio::test]
    async fn the_commit_sent_never_passes_the_durable_log() {
        let sync = LogSync::new(Some(id(4)));
        assert_eq!(sync.clamp_commit(Some(id(3))), Some(id(3)));
        assert_eq!(sync.clamp_commit(Some(id(4))), Some(id(4)));
        assert_eq!(sync.clamp_commit(Some(id(6))), Some(id(4)));
        // The clamp asks for a heartbeat once the sync catches up.
        sync.publish(Some(id(6)));
        tokio::time::timeout(std::time::Duration::from_secs(1), sync.caught_up())
            .await
            .expect("caught up after a clamp");
        assert_eq!(sync.clamp_commit(Some(id(6))), Some(id(6)));
        assert_eq!(LogSync::new(None).clamp_commit(Some(id(1))), None);
    }
}
