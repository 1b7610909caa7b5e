//! Storage-engine layer: a tiny ordered key-value abstraction the rest of the
//! store is written against.
//!
//! The store keeps its state in a fixed set of [`Table`]s. Every mutation goes
//! through a [`WriteBatch`] that an [`Engine`] applies atomically (all of it or
//! none of it), either fsynced before returning ([`Durability::Durable`]) or
//! merely made visible ([`Durability::Buffered`]), to be made durable by the
//! next durable write. Reads go through a [`ReadView`], a consistent
//! point-in-time snapshot unaffected by later writes.
//!
//! Two backends implement [`Engine`]:
//! - [`RedbEngine`], backed by a single [redb](https://docs.rs/redb) file;
//! - [`MemEngine`], an in-memory engine for tests that can simulate a power
//!   loss with [`MemEngine::crash`].
//!
//! Wrappers: [`CountingEngine`] counts writes by durability; [`CoalescingEngine`]
//! gathers buffered writes into fewer engine commits.
//!
//! [`conformance`] holds the behavioural test suite every backend must pass.

mod coalesce;
pub mod conformance;
mod counting;
mod mem;
#[cfg(feature = "chaos-bugs")]
pub mod powerloss;
mod redb_engine;

pub use coalesce::{
    COALESCE_HARD_MAX_OPS, COALESCE_MAX_OPS, COALESCE_MAX_WRITES, CoalescingEngine,
};
pub use counting::{CountingEngine, WriteCounts};
pub use mem::MemEngine;
pub use redb_engine::RedbEngine;

/// The fixed set of tables the store uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Raft log entries.
    RaftLog,
    /// Raft metadata (vote, purge state, ...).
    RaftMeta,
    /// The key-value data.
    Kv,
    /// Store metadata.
    Meta,
}

impl Table {
    /// Every table, in declaration order.
    pub const ALL: [Table; 4] = [Table::RaftLog, Table::RaftMeta, Table::Kv, Table::Meta];

    /// The stable on-disk name of the table.
    pub fn name(self) -> &'static str {
        match self {
            Table::RaftLog => "raft_log",
            Table::RaftMeta => "raft_meta",
            Table::Kv => "kv",
            Table::Meta => "meta",
        }
    }

    /// Position of the table in [`Table::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Table::RaftLog => 0,
            Table::RaftMeta => 1,
            Table::Kv => 2,
            Table::Meta => 3,
        }
    }
}

/// How durable a [`Engine::write`] must be when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync before `write` returns.
    Durable,
    /// visible to readers at once; made durable by the next Durable write (or lost on power loss).
    Buffered,
}

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BatchOp {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
    DeleteRange {
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    Clear {
        table: Table,
    },
}

/// An ordered list of mutations applied atomically by [`Engine::write`].
///
/// Operations take effect in the order they were added: a `put` followed by a
/// `delete` of the same key leaves the key absent, and so on.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key` to `value` in `table`, replacing any previous value.
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put {
            table,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Remove `key` from `table`; a no-op if it is absent.
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete {
            table,
            key: key.into(),
        });
    }

    /// delete keys in [start, end); end None = to the end of the table
    ///
    /// An empty range (`end <= start`) deletes nothing.
    pub fn delete_range(&mut self, table: Table, start: impl Into<Vec<u8>>, end: Option<Vec<u8>>) {
        self.ops.push(BatchOp::DeleteRange {
            table,
            start: start.into(),
            end,
        });
    }

    /// remove every key of the table
    pub fn clear(&mut self, table: Table) {
        self.ops.push(BatchOp::Clear { table });
    }

    /// Append every operation of `other`, after this batch's own.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn ops(&self) -> &[BatchOp] {
        &self.ops
    }
}

/// Errors reported by an [`Engine`] or a [`ReadView`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backend failed to read or write its storage.
    #[error("storage io: {0}")]
    Io(String),
    /// The stored data is damaged or not in a format this build understands.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
}

/// An owned `(key, value)` pair, as returned by [`ReadView::first`] and [`ReadView::last`].
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A consistent point-in-time view; later writes are not visible through it.
pub trait ReadView: Send {
    /// The value stored under `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// Visit keys in [start, end) in ascending order (end None = unbounded) until `f` returns false.
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError>;
    /// Same, descending order.
    fn scan_rev(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError>;
    /// The entry with the smallest key, if the table is not empty.
    fn first(&self, table: Table) -> Result<Option<KeyValue>, EngineError>;
    /// The entry with the largest key, if the table is not empty.
    fn last(&self, table: Table) -> Result<Option<KeyValue>, EngineError>;
}

/// Atomic batches + durable flag + point-in-time reads. Implemented by RedbEngine and MemEngine.
pub trait Engine: Send + Sync + 'static {
    /// Apply the whole batch atomically (all or nothing).
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError>;
    /// A point-in-time view of every table as of the last completed write.
    fn read(&self) -> Result<Box<dyn ReadView + '_>, EngineError>;
    /// Bytes the backend occupies (file size for redb; approximate sum of key+value lengths for memory). Never 0 for an open engine (report at least 1 page, e.g. 4096, for an empty in-memory one).
    fn size_bytes(&self) -> u64;
    /// Bytes in use by live data (<= size_bytes).
    fn size_in_use_bytes(&self) -> u64;

    /// Writes done so far by durability, for engines that count them (see [`CountingEngine`]).
    fn write_counts(&self) -> WriteCounts {
        WriteCounts::default()
    }

    /// Give the space freed by deletions back to the file system (etcd's defragment).
    /// Contents are unchanged and `size_bytes` does not grow; writers and new readers wait
    /// while it runs. Backends with nothing to compact keep this default no-op.
    fn defragment(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// Whether `[start, end)` contains no key at all.
pub(crate) fn range_is_empty(start: &[u8], end: Option<&[u8]>) -> bool {
    matches!(end, Some(end) if end <= start)
}
