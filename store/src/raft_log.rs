//! openraft's log storage (storage-v2 `RaftLogStorage`) on a storage [`Engine`].
//!
//! Invariants:
//! - the vote is fsynced before `save_vote` returns, the committed log id before
//!   `save_committed` returns (openraft applies up to it right after);
//! - `append` writes the entries as a buffered batch (readable at once) and hands the
//!   flush callback to the *flusher* task, which waits for whatever appends queue up
//!   meanwhile, makes them all durable with ONE fsync, and only then reports them flushed
//!   to openraft (group commit: many proposals share one fsync);
//! - `purge` records the purged id in the same batch that deletes the entries, so the log
//!   never has a hole.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError, Vote};

use crate::engine::{Durability, Engine, EngineError, Table, WriteBatch};
use crate::types::{Entry, LogId, MemberId, StorageError, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
const FORMAT: u8 = 1;

/// Appends waiting for the flusher's next fsync; a full queue makes `append` wait.
pub const LOG_FLUSH_QUEUE: usize = 4096;

/// The Raft log, vote and purge marker, kept in the engine's `RaftLog`/`RaftMeta` tables.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    flusher: tokio::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// Open the log on `engine` and start its flusher task (needs a tokio runtime).
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        let (flusher, queue) = tokio::sync::mpsc::channel(LOG_FLUSH_QUEUE);
        tokio::spawn(flush_loop(engine.clone(), queue));
        LogStore { engine, flusher }
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

/// Group commit: one fsync for every append queued since the previous one.
async fn flush_loop(
    engine: Arc<dyn Engine>,
    mut queue: tokio::sync::mpsc::Receiver<LogFlushed<TypeConfig>>,
) {
    let mut pending = Vec::new();
    while let Some(first) = queue.recv().await {
        pending.push(first);
        while let Ok(next) = queue.try_recv() {
            pending.push(next);
        }
        #[cfg(feature = "chaos-bugs")]
        crate::chaos_bugs::failpoint("raft-log-flush");
        // An empty durable batch commits every buffered write before it.
        let result = write_async(&engine, WriteBatch::new(), Durability::Durable).await;
        for callback in pending.drain(..) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(outcome);
        }
    }
}

/// Run an engine write off the async executor (fsync blocks).
pub(crate) async fn write_async(
    engine: &Arc<dyn Engine>,
    batch: WriteBatch,
    durability: Durability,
) -> Result<(), EngineError> {
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || engine.write(batch, durability)).await {
        Ok(result) => result,
        Err(join) => Err(EngineError::Io(format!(
            "storage writer task failed: {join}"
        ))),
    }
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

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
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
        let view = self
            .engine
            .read()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let end_key = end.map(index_key);
        let mut entries = Vec::new();
        let mut failure = None;
        view.scan(
            Table::RaftLog,
            &index_key(start),
            end_key.as_ref().map(|k| k.as_slice()),
            &mut |_, value| match decode::<Entry>(value) {
                Ok(entry) => {
                    entries.push(entry);
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
        )
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        if let Some(e) = failure {
            return Err(io_error(ErrorSubject::Logs, ErrorVerb::Read, &e));
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(KEY_PURGED)?;
        let view = self
            .engine
            .read()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let last = match view
            .last(Table::RaftLog)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?
        {
            Some((_, raw)) => Some(
                decode::<Entry>(&raw)
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?
                    .log_id,
            ),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MemberId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::RaftMeta, KEY_VOTE, encode(vote));
        self.write(batch, Durability::Durable, ErrorSubject::Vote)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<MemberId>>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::RaftMeta, KEY_COMMITTED, encode(&committed));
        // Durable before openraft applies up to it: on restart the state machine is
        // re-applied up to this index, and a leader restored from its vote serves
        // linearizable reads at max(its first log of the term, this index). A lost
        // (buffered) value made both go back to before writes already acknowledged.
        self.write(batch, Durability::Durable, ErrorSubject::Store)
            .await
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
        #[cfg(feature = "chaos-bugs")]
        let entries: Vec<Entry> = entries.into_iter().collect();
        #[cfg(feature = "chaos-bugs")]
        {
            crate::chaos_bugs::failpoint("raft-log-append");
            crate::chaos_bugs::appended(&entries);
        }
        let mut batch = WriteBatch::new();
        for entry in entries {
            batch.put(
                Table::RaftLog,
                index_key(entry.log_id.index),
                encode(&entry),
            );
        }
        // Readable now; durable (and reported so) once the flusher's next fsync is done.
        self.write(batch, Durability::Buffered, ErrorSubject::Logs)
            .await?;
        if let Err(returned) = self.flusher.send(callback).await {
            // The flusher is gone (shutting down): flush inline instead.
            let result = self
                .write(WriteBatch::new(), Durability::Durable, ErrorSubject::Logs)
                .await;
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            returned.0.log_io_completed(outcome);
            return result;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.delete_range(Table::RaftLog, index_key(log_id.index), None);
        self.write(batch, Durability::Durable, ErrorSubject::Logs)
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::RaftMeta, KEY_PURGED, encode(&log_id));
        batch.delete_range(
            Table::RaftLog,
            index_key(0),
            Some(index_key(log_id.index.saturating_add(1)).to_vec()),
        );
        // Durable: this also makes every buffered state-machine write before it durable,
        // so the applied state on disk is never behind the purged log (see state_machine).
        self.write(batch, Durability::Durable, ErrorSubject::Logs)
            .await
    }
}
