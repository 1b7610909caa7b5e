//! openraft's log storage (storage-v2 `RaftLogStorage`) on a storage [`Engine`].
//!
//! Invariants:
//! - the vote is fsynced before `save_vote` returns; the committed log id is buffered
//!   (durable with the next flush, never after the state-machine writes it precedes), as
//!   etcd treats its HardState.Commit — a restored leader's reads use [`RestoredLeader`];
//! - `append` writes the entries (readable at once), makes them durable with one fsync
//!   and only then reports them flushed to openraft, all on the calling task: openraft
//!   0.9's core waits for that report before it does anything else, so a separate
//!   flusher thread could never gather two appends and only cost two thread switches
//!   per append. Group commit comes from the proposer: many proposals share one entry;
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
    /// Log syncs done (fsyncs that made appended entries durable).
    syncs: Arc<AtomicU64>,
    /// Alive while any clone is: the checkpoint task stops when the last one is dropped.
    alive: Arc<()>,
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
        let syncs = Arc::new(AtomicU64::new(0));
        let mut store = LogStore {
            engine,
            entries,
            purged: Arc::new(Mutex::new(None)),
            syncs,
            alive: Arc::new(()),
        };
        let purged: Option<LogId> = store.read_meta(KEY_PURGED)?;
        store.purged = Arc::new(Mutex::new(purged));
        Ok(store)
    }

    /// Log syncs done so far (each made every entry appended before it durable).
    pub fn sync_counter(&self) -> Arc<AtomicU64> {
        self.syncs.clone()
    }

    fn last_purged(&self) -> Option<LogId> {
        *self.purged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last entry's id, or the purge point when every entry is purged.
    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let last = self
            .entries
            .last()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        Ok(match (last, self.last_purged()) {
            (Some(last), Some(purged)) if purged.index >= last.index => Some(purged),
            (Some(last), _) => Some(last),
            (None, purged) => purged,
        })
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
        self.write_durable(batch, ErrorSubject::Vote).await
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
        // A positioned write into the page cache, then one fdatasync, both inline: the
        // core waits for the callback anyway, and a hop to another thread and back would
        // cost more than it saves (see the module docs).
        let result = self
            .entries
            .append(entries)
            .and_then(|()| {
                #[cfg(feature = "chaos-bugs")]
                crate::chaos_bugs::failpoint("raft-log-flush");
                self.entries.sync()
            })
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e));
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let outcome = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        callback.log_io_completed(outcome);
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let entries = self.entries.clone();
        run_blocking(move || entries.truncate(log_id.index))
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
