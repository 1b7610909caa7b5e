//! openraft's log storage (storage-v2 `RaftLogStorage`) on a storage [`Engine`].
//!
//! Invariants:
//! - the vote is fsynced before `save_vote` returns; the committed log id is buffered
//!   (durable with the next flush, never after the state-machine writes it precedes), as
//!   etcd treats its HardState.Commit; a member that led reopens its log with an
//!   uncommitted vote, so it campaigns for a new term ([`LogStore::for_member`]) — only
//!   logs opened without a member ID can restore a leader (their reads use
//!   [`RestoredLeader`]);
//! - `append` writes the entries (readable at once). A follower's entries are made
//!   durable with one fsync on the calling task and only then reported flushed (its
//!   acknowledgement counts for the quorum; openraft 0.9's core waits for the report
//!   anyway, so a thread hop would only add switches). A leader's own entries are
//!   reported flushed at once and synced by the *flusher* thread in parallel with
//!   replication; [`crate::log_sync`] holds back applies and the commit index sent to
//!   followers until that sync is done. Group commit comes from the proposer: many
//!   proposals share one entry;
//! - `purge` records the purged id in the same batch that deletes the entries, so the log
//!   never has a hole.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError, Vote};

use crate::engine::{Durability, Engine, EngineError, Table, WriteBatch};
use crate::log_sync::LogSync;
use crate::types::{Entry, LogId, MemberId, StorageError, TypeConfig};
use crate::wal::{EngineEntries, EntryLog, Wal};

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
const FORMAT: u8 = 1;

/// The Raft log: entries in an [`EntryLog`] (the WAL for `skiff store`), vote, committed
/// index and purge marker in the engine's `RaftMeta` table.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    entries: Arc<dyn EntryLog>,
    /// The last purged log id (readers never return entries at or below it).
    purged: Arc<Mutex<Option<LogId>>>,
    /// Alive while any clone is: the checkpoint task stops when the last one is dropped.
    alive: Arc<()>,
    /// Syncs the log and publishes how far it is durable.
    syncer: Arc<Syncer>,
    /// Sync requests for the flusher thread (leader appends; see [`LogStore::for_member`]).
    flusher: Option<std::sync::mpsc::SyncSender<()>>,
    /// This member, once known: its own entries, appended while it leads, take the flusher.
    me: Option<MemberId>,
    /// The last vote saved.
    vote: Arc<Mutex<Option<Vote<MemberId>>>>,
}

/// Syncs the log and publishes the durable position to [`LogSync`].
struct Syncer {
    entries: Arc<dyn EntryLog>,
    purged: Arc<Mutex<Option<LogId>>>,
    syncs: Arc<AtomicU64>,
    log_sync: Arc<LogSync>,
    /// Held across "read the last id, sync, publish", so a truncation never interleaves.
    lock: Mutex<()>,
}

impl Syncer {
    fn last_log_id(&self) -> Result<Option<LogId>, EngineError> {
        let last = self.entries.last()?;
        let purged = *self.purged.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match (last, purged) {
            (Some(last), Some(purged)) if purged.index >= last.index => Some(purged),
            (Some(last), _) => Some(last),
            (None, purged) => purged,
        })
    }

    /// Make every entry written so far durable and say so.
    fn sync_and_publish(&self) -> Result<(), EngineError> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let upto = self.last_log_id()?;
        #[cfg(feature = "chaos-bugs")]
        crate::chaos_bugs::failpoint("raft-log-flush");
        let result = self.entries.sync();
        self.syncs.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.log_sync.publish(upto);
                Ok(())
            }
            Err(e) => {
                self.log_sync.fail();
                Err(e)
            }
        }
    }

    /// Drop entries from `from` on (they were synced by the truncation itself).
    fn truncate(&self, from: u64) -> Result<(), EngineError> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.entries.truncate(from)?;
        self.log_sync.publish(self.last_log_id()?);
        Ok(())
    }
}

/// The flusher thread: one log sync per wake-up, covering every append made before it
/// (leader appends only). Ends when every [`LogStore`] clone is gone.
fn flush_loop(syncer: Arc<Syncer>, requests: std::sync::mpsc::Receiver<()>) {
    while requests.recv().is_ok() {
        while requests.try_recv().is_ok() {}
        if let Err(e) = syncer.sync_and_publish() {
            tracing::error!("raft log sync failed: {e}; this member applies nothing more");
        }
    }
}

/// How often buffered engine writes (state-machine applies, the committed index) are made
/// durable when the log lives in a WAL (as etcd commits its backend every 100 ms; a restart
/// re-applies the log from the last checkpoint).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

impl LogStore {
    /// Open the log with its entries in the engine's `RaftLog` table.
    pub fn new(engine: Arc<dyn Engine>) -> Result<Self, StorageError> {
        let entries = Arc::new(EngineEntries::new(engine.clone()));
        Self::with_entries(engine, entries)
    }

    /// Open the log with its entries in the write-ahead log at `dir`; also starts the
    /// checkpoint task that makes buffered engine writes durable every
    /// [`CHECKPOINT_INTERVAL`].
    pub fn with_wal(engine: Arc<dyn Engine>, dir: &std::path::Path) -> Result<Self, StorageError> {
        Self::with_wal_every(engine, dir, CHECKPOINT_INTERVAL)
    }

    /// [`LogStore::with_wal`] with checkpoints every `interval` (`--backend-batch-interval`).
    pub fn with_wal_every(
        engine: Arc<dyn Engine>,
        dir: &std::path::Path,
        interval: Duration,
    ) -> Result<Self, StorageError> {
        let wal = Wal::open(dir).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let store = Self::with_entries(engine, Arc::new(wal))?;
        tokio::spawn(checkpoint_loop(
            store.engine.clone(),
            store.entries.clone(),
            Arc::downgrade(&store.alive),
            interval.max(Duration::from_millis(1)),
        ));
        Ok(store)
    }

    fn with_entries(
        engine: Arc<dyn Engine>,
        entries: Arc<dyn EntryLog>,
    ) -> Result<Self, StorageError> {
        let purged_at = Arc::new(Mutex::new(None));
        let syncer = Arc::new(Syncer {
            entries: entries.clone(),
            purged: purged_at.clone(),
            syncs: Arc::new(AtomicU64::new(0)),
            log_sync: Arc::new(LogSync::new(None)),
            lock: Mutex::new(()),
        });
        let store = LogStore {
            engine,
            entries,
            purged: purged_at,
            alive: Arc::new(()),
            syncer,
            flusher: None,
            me: None,
            vote: Arc::new(Mutex::new(None)),
        };
        let purged: Option<LogId> = store.read_meta(KEY_PURGED)?;
        *store.purged.lock().unwrap_or_else(|p| p.into_inner()) = purged;
        *store.vote.lock().unwrap_or_else(|p| p.into_inner()) = store.read_meta(KEY_VOTE)?;
        // What the log holds on open counts as durable (a torn tail was dropped).
        store.syncer.log_sync.publish(store.last_log_id()?);
        Ok(store)
    }

    /// This member's ID: from now on, entries it appends as leader are synced by a flusher
    /// thread in parallel with replication (see [`crate::log_sync`]).
    ///
    /// A saved vote that made this member leader is saved back as an uncommitted vote for
    /// itself in the same term: openraft would otherwise restore it as leader of that term
    /// without an election, and after a power cut that lost entries it had already sent
    /// (synced by followers, not yet by itself) it would write different entries under the
    /// same log ids — the logs would diverge. Campaigning afresh gives new entries a new term.
    pub fn for_member(mut self, me: MemberId) -> Result<Self, StorageError> {
        let saved = *self.vote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(vote) = saved
            && vote.is_committed()
            && vote.leader_id().node_id == me
        {
            let campaign = Vote::new(vote.leader_id().term, me);
            let mut batch = WriteBatch::new();
            batch.put(Table::RaftMeta, KEY_VOTE, encode(&campaign));
            self.entries
                .sync()
                .and_then(|()| self.engine.write(batch, Durability::Durable))
                .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
            *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(campaign);
        }
        let (flusher, requests) = std::sync::mpsc::sync_channel(1);
        let syncer = self.syncer.clone();
        std::thread::Builder::new()
            .name("skiff-log-flush".into())
            .spawn(move || flush_loop(syncer, requests))
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        self.flusher = Some(flusher);
        self.me = Some(me);
        Ok(self)
    }

    /// How far this member's log is durable (for the state machine and the network).
    pub fn log_sync(&self) -> Arc<LogSync> {
        self.syncer.log_sync.clone()
    }

    /// Whether entries of `leader` are this member's own, appended while it leads.
    fn own_leader_entries(&self, leader: &openraft::LeaderId<MemberId>) -> bool {
        let Some(me) = self.me else {
            return false;
        };
        let vote = self.vote.lock().unwrap_or_else(|p| p.into_inner());
        vote.is_some_and(|vote| {
            vote.is_committed() && vote.leader_id().node_id == me && vote.leader_id() == leader
        })
    }

    /// Log syncs done so far (each made every entry appended before it durable).
    pub fn sync_counter(&self) -> Arc<AtomicU64> {
        self.syncer.syncs.clone()
    }

    fn last_purged(&self) -> Option<LogId> {
        *self.purged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last entry's id, or the purge point when every entry is purged.
    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        self.syncer
            .last_log_id()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }

    /// Sync the log, then write `batch` durably: the engine's durable state (which
    /// includes every buffered state-machine write) never runs ahead of the log.
    async fn write_durable(
        &self,
        batch: WriteBatch,
        subject: ErrorSubject<MemberId>,
    ) -> Result<(), StorageError> {
        let entries = self.entries.clone();
        run_blocking(move || entries.sync())
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        self.write(batch, Durability::Durable, subject).await
    }

    /// The vote and the last log index on disk, before openraft starts: a member whose
    /// saved vote is a committed vote for itself restarts as leader in the same term.
    pub fn restored_leader_floor(
        &self,
        me: MemberId,
    ) -> Result<Option<RestoredLeader>, StorageError> {
        let Some(vote) = self.read_meta::<Vote<MemberId>>(KEY_VOTE)? else {
            return Ok(None);
        };
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(me) {
            return Ok(None);
        }
        let Some(last_index) = self.last_log_id()?.map(|id| id.index) else {
            return Ok(None);
        };
        Ok(Some(RestoredLeader {
            term: vote.leader_id().term,
            last_log_index: last_index,
        }))
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let view = self
            .engine
            .read()
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        match view
            .get(Table::RaftMeta, key)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))?
        {
            Some(raw) => decode(&raw)
                .map(Some)
                .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e)),
            None => Ok(None),
        }
    }

    async fn write(
        &self,
        batch: WriteBatch,
        durability: Durability,
        subject: ErrorSubject<MemberId>,
    ) -> Result<(), StorageError> {
        write_async(&self.engine, batch, durability)
            .await
            .map_err(|e| io_error(subject, ErrorVerb::Write, &e))
    }
}

/// A member restarting as leader in the term it led before the restart (openraft restores
/// such a leader without an election, so no new entry of a new term orders reads after
/// the writes it acknowledged): reads wait until the log it restarted with is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoredLeader {
    pub term: u64,
    pub last_log_index: u64,
}

/// Every `interval` (`--backend-batch-interval`): log upkeep (prefilling), sync the log, then make
/// buffered engine writes durable (so the engine's free pages get reused and a restart
/// re-applies little).
async fn checkpoint_loop(
    engine: Arc<dyn Engine>,
    entries: Arc<dyn EntryLog>,
    alive: Weak<()>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            return;
        }
        let log = entries.clone();
        let engine = engine.clone();
        let result = run_blocking(move || {
            log.maintain()?;
            log.sync()?;
            engine.write(WriteBatch::new(), Durability::Durable)
        })
        .await;
        if let Err(e) = result {
            tracing::error!("checkpoint failed: {e}");
        }
    }
}

/// Run storage work off the async executor (fsync blocks).
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(EngineError::Io(format!(
            "storage writer task failed: {join}"
        ))),
    }
}

/// Run an engine write off the async executor (fsync blocks).
pub(crate) async fn write_async(
    engine: &Arc<dyn Engine>,
    batch: WriteBatch,
    durability: Durability,
) -> Result<(), EngineError> {
    let engine = engine.clone();
    run_blocking(move || engine.write(batch, durability)).await
}

pub(crate) fn io_error<E: std::error::Error + 'static>(
    subject: ErrorSubject<MemberId>,
    verb: ErrorVerb,
    err: &E,
) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(err)),
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    match postcard::to_stdvec(value) {
        Ok(bytes) => out.extend(bytes),
        // Our persisted types are plain data; serialising them cannot fail.
        Err(_) => out.clear(),
    }
    out
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, EngineError> {
    match raw.split_first() {
        Some((&FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| EngineError::Corrupt(e.to_string()))
        }
        _ => Err(EngineError::Corrupt("unknown record format".into())),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let start = match self.last_purged() {
            Some(purged) => start.max(purged.index.saturating_add(1)),
            None => start,
        };
        // Reads of recent entries come from the page cache: done inline, no thread hop.
        self.entries
            .read(start, end)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.last_purged(),
            last_log_id: self.last_log_id()?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MemberId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::RaftMeta, KEY_VOTE, encode(vote));
        self.write_durable(batch, ErrorSubject::Vote).await?;
        *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<MemberId>>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::RaftMeta, KEY_COMMITTED, encode(&committed));
        // Buffered, as etcd saves its HardState.Commit: it becomes durable with the next
        // log flush, and always before the state-machine writes that follow it (the engine
        // makes buffered writes durable in order). A committed index lost in a crash only
        // makes a restarted member re-learn it from the leader; the one reader that
        // relied on it, a leader restored in its old term, reads at the restored log's
        // end instead (see `StoreNode::read_floor`).
        // Inline: a buffered write only joins the engine's pending batch (no fsync), and
        // this runs on every commit, where a hop to the blocking pool costs two thread
        // switches.
        self.engine
            .write(batch, Durability::Buffered)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        #[cfg(feature = "chaos-bugs")]
        {
            crate::chaos_bugs::failpoint("raft-log-append");
            crate::chaos_bugs::appended(&entries);
        }
        let leader = entries.last().map(|entry| entry.log_id.leader_id);
        self.entries
            .append(entries)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        // A leader's own entries: reported flushed now, synced by the flusher while they
        // replicate (applies and the commit index sent wait for it; see `log_sync`). A
        // full queue means a sync is requested that will cover these entries too.
        if let (Some(leader), Some(flusher)) = (leader, &self.flusher)
            && self.own_leader_entries(&leader)
            && !matches!(
                flusher.try_send(()),
                Err(std::sync::mpsc::TrySendError::Disconnected(()))
            )
        {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // A follower's entries: one fdatasync inline before openraft hears of them (the
        // core waits for the callback anyway; a thread hop would only add switches).
        let result = self
            .syncer
            .sync_and_publish()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e));
        let outcome = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        callback.log_io_completed(outcome);
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let syncer = self.syncer.clone();
        run_blocking(move || syncer.truncate(log_id.index))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::RaftMeta, KEY_PURGED, encode(&log_id));
        // Durable: this also makes every buffered state-machine write before it durable,
        // so the applied state on disk is never behind the purged log (see state_machine).
        // The marker first: readers skip entries at or below it from now on, and a crash
        // before the entries go only leaves dead entries behind.
        self.write_durable(batch, ErrorSubject::Logs).await?;
        *self.purged.lock().unwrap_or_else(|p| p.into_inner()) = Some(log_id);
        let entries = self.entries.clone();
        run_blocking(move || entries.purge(log_id.index))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemEngine;

    #[tokio::test]
    async fn a_member_that_led_restarts_campaigning_in_its_old_term() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let me: MemberId = 7;
        let mut log = LogStore::new(engine.clone()).expect("open");
        log.save_vote(&Vote::new_committed(3, me))
            .await
            .expect("save");
        drop(log);
        let mut log = LogStore::new(engine.clone())
            .and_then(|log| log.for_member(me))
            .expect("reopen");
        let vote = log.read_vote().await.expect("read").expect("a vote");
        assert_eq!(vote, Vote::new(3, me));
        assert!(!vote.is_committed());
        assert_eq!(log.restored_leader_floor(me).expect("floor"), None);
        // Another member's committed vote is left alone.
        log.save_vote(&Vote::new_committed(4, 9))
            .await
            .expect("save");
        drop(log);
        let mut log = LogStore::new(engine)
            .and_then(|log| log.for_member(me))
            .expect("reopen");
        let vote = log.read_vote().await.expect("read").expect("a vote");
        assert_eq!(vote, Vote::new_committed(4, 9));
    }
}
