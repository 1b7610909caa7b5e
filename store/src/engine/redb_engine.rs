//! [`Engine`] backed by a single [redb] database file.
//!
//! Each [`Table`] is a redb table of `&[u8] -> &[u8]`, all created when the
//! file is opened so that reads never meet a missing table. A [`WriteBatch`]
//! is one redb write transaction committed with
//! [`redb::Durability::Immediate`] (fsync) for [`Durability::Durable`] or
//! [`redb::Durability::None`] for [`Durability::Buffered`]; redb makes a
//! non-durable commit durable with the next immediate one. A [`ReadView`] is a
//! redb read transaction, which is a snapshot by construction.
//!
//! The file is opened with redb's integrity check (every page's checksum verified), so a
//! file damaged on disk refuses to open, naming it, rather than serving what it holds.
//!
//! The number of bytes held by live keys and values is kept in a private
//! bookkeeping table, updated in the same transaction as the data, so
//! [`Engine::size_in_use_bytes`] costs nothing, even right after opening.
//!
//! The [`Database`] sits behind a `RwLock`: writes and the start of a read take it
//! shared, [`Engine::defragment`] (redb's `compact`, which needs `&mut Database`) takes
//! it exclusively. A [`ReadView`] does not hold the lock once it is open; compaction
//! waits (bounded) for open views to be dropped.

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::{
    BatchOp, Durability, Engine, EngineError, KeyValue, ReadView, Table, WriteBatch, range_is_empty,
};

type BytesTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;
type ReadOnlyBytesTable = ReadOnlyTable<&'static [u8], &'static [u8]>;
type BytesGuard<'a> = redb::AccessGuard<'a, &'static [u8]>;

/// Private bookkeeping of the engine, invisible through [`Table`].
const ENGINE_META: TableDefinition<&str, u64> = TableDefinition::new("__skiff_engine");
/// Key in [`ENGINE_META`] of the byte count of every live key and value.
const LIVE_BYTES_KEY: &str = "live_bytes";

/// Reported by [`Engine::size_bytes`] if the file length cannot be read.
const FALLBACK_SIZE_BYTES: u64 = 4096;

/// How long [`Engine::defragment`] waits for open read views (e.g. a snapshot being
/// streamed) to finish before giving up.
const DEFRAGMENT_WAIT: Duration = Duration::from_secs(10);

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// Converts any redb error into an [`EngineError`].
fn map_err(err: impl Into<redb::Error>) -> EngineError {
    match err.into() {
        redb::Error::Corrupted(msg) => EngineError::Corrupt(msg),
        redb::Error::UpgradeRequired(version) => EngineError::Corrupt(format!(
            "file format version {version} is not supported by this build"
        )),
        other => EngineError::Io(other.to_string()),
    }
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// `[start, end)` as redb range bounds.
fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// [`Engine`] storing every table in one redb file; see the module documentation.
pub struct RedbEngine {
    /// Exclusive only while compacting (see the module documentation).
    db: RwLock<Database>,
    path: PathBuf,
    /// Serializes writers so `live_bytes` follows commits in order.
    write_lock: Mutex<()>,
    /// Bytes of live keys and values as of the last committed write.
    live_bytes: AtomicU64,
}

impl RedbEngine {
    /// Opens the database file at `path`, creating it (and every table) if needed.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let named = |e: EngineError| match e {
            EngineError::Io(m) => EngineError::Io(format!("{}: {m}", path.display())),
            EngineError::Corrupt(m) => EngineError::Corrupt(format!("{}: {m}", path.display())),
        };
        // Every page's checksum is verified on every open, not only after a crash: a file
        // damaged on disk refuses to open (naming it) instead of being trusted.
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(map_err)
            .map_err(named)?;
        crate::fsutil::make_private(path)
            .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(map_err)?;
        let live_bytes = {
            for table in Table::ALL {
                txn.open_table(definition(table)).map_err(map_err)?;
            }
            let mut meta = txn.open_table(ENGINE_META).map_err(map_err)?;
            let stored = meta
                .get(LIVE_BYTES_KEY)
                .map_err(map_err)?
                .map(|guard| guard.value());
            match stored {
                Some(bytes) => bytes,
                None => {
                    let bytes = count_live_bytes(&txn)?;
                    meta.insert(LIVE_BYTES_KEY, bytes).map_err(map_err)?;
                    bytes
                }
            }
        };
        txn.commit().map_err(map_err)?;
        Ok(Self {
            db: RwLock::new(db),
            path: path.to_path_buf(),
            write_lock: Mutex::new(()),
            live_bytes: AtomicU64::new(live_bytes),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shared access to the database. Nothing panics while the lock is held exclusively
    /// (compaction errors are returned), so a poisoned lock still guards a usable database.
    fn db(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sums the key and value lengths of every table, for a file that predates
/// the bookkeeping table.
fn count_live_bytes(txn: &WriteTransaction) -> Result<u64, EngineError> {
    let mut total = 0u64;
    for table in Table::ALL {
        let table = txn.open_table(definition(table)).map_err(map_err)?;
        for entry in table.iter().map_err(map_err)? {
            let (key, value) = entry.map_err(map_err)?;
            total = total.saturating_add(entry_bytes(key.value(), value.value()));
        }
    }
    Ok(total)
}

impl fmt::Debug for RedbEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbEngine")
            .field("path", &self.path)
            .field("live_bytes", &self.live_bytes.load(Ordering::Relaxed))
            .finish()
    }
}

/// Applies `batch` inside `txn`, returning the new live byte count.
fn apply_batch(
    txn: &WriteTransaction,
    batch: &WriteBatch,
    live_before: u64,
) -> Result<u64, EngineError> {
    let mut added = 0u64;
    let mut removed = 0u64;
    // redb refuses to open a table twice at once, so keep each one open.
    let mut open: [Option<BytesTable<'_>>; 4] = [None, None, None, None];
    for op in batch.ops() {
        let table = match op {
            BatchOp::Put { table, .. }
            | BatchOp::Delete { table, .. }
            | BatchOp::DeleteRange { table, .. }
            | BatchOp::Clear { table } => *table,
        };
        let slot = &mut open[table.index()];
        if slot.is_none() {
            *slot = Some(txn.open_table(definition(table)).map_err(map_err)?);
        }
        let Some(handle) = slot.as_mut() else {
            return Err(EngineError::Io(format!(
                "table {} could not be opened",
                table.name()
            )));
        };
        match op {
            BatchOp::Put { key, value, .. } => {
                let old = handle
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(map_err)?;
                if let Some(old) = old {
                    removed += entry_bytes(key, old.value());
                }
                added += entry_bytes(key, value);
            }
            BatchOp::Delete { key, .. } => {
                if let Some(old) = handle.remove(key.as_slice()).map_err(map_err)? {
                    removed += entry_bytes(key, old.value());
                }
            }
            BatchOp::DeleteRange { start, end, .. } => {
                let end = end.as_deref();
                if range_is_empty(start, end) {
                    continue;
                }
                handle
                    .retain_in::<&[u8], _>(bounds(start, end), |k, v| {
                        removed += entry_bytes(k, v);
                        false
                    })
                    .map_err(map_err)?;
            }
            BatchOp::Clear { .. } => {
                handle
                    .retain(|k, v| {
                        removed += entry_bytes(k, v);
                        false
                    })
                    .map_err(map_err)?;
            }
        }
    }
    drop(open);
    let live_after = live_before.saturating_add(added).saturating_sub(removed);
    if live_after != live_before {
        let mut meta = txn.open_table(ENGINE_META).map_err(map_err)?;
        meta.insert(LIVE_BYTES_KEY, live_after).map_err(map_err)?;
    }
    Ok(live_after)
}

impl Engine for RedbEngine {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        // An empty durable batch still commits: it makes earlier buffered ones durable.
        if batch.is_empty() && durability == Durability::Buffered {
            return Ok(());
        }
        // Nothing below panics while holding the lock, and `live_bytes` only
        // changes after a successful commit, so a poisoned lock is harmless.
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let db = self.db();
        let mut txn = db.begin_write().map_err(map_err)?;
        txn.set_durability(match durability {
            Durability::Durable => redb::Durability::Immediate,
            Durability::Buffered => redb::Durability::None,
        })
        .map_err(map_err)?;
        let live_after = apply_batch(&txn, &batch, self.live_bytes.load(Ordering::Acquire))?;
        let started = Instant::now();
        txn.commit().map_err(map_err)?;
        if durability == Durability::Durable {
            crate::metrics::BACKEND_COMMIT.observe(started.elapsed());
        }
        self.live_bytes.store(live_after, Ordering::Release);
        Ok(())
    }

    fn read(&self) -> Result<Box<dyn ReadView + '_>, EngineError> {
        let txn = self.db().begin_read().map_err(map_err)?;
        let [a, b, c, d] = Table::ALL.map(|table| txn.open_table(definition(table)));
        let tables = [
            a.map_err(map_err)?,
            b.map_err(map_err)?,
            c.map_err(map_err)?,
            d.map_err(map_err)?,
        ];
        Ok(Box::new(RedbView { _txn: txn, tables }))
    }

    fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(FALLBACK_SIZE_BYTES, |meta| meta.len().max(1))
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.live_bytes
            .load(Ordering::Acquire)
            .min(self.size_bytes())
    }

    fn defragment(&self) -> Result<(), EngineError> {
        let deadline = Instant::now() + DEFRAGMENT_WAIT;
        loop {
            let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
            match db.compact() {
                Ok(_) => return Ok(()),
                // An open read view: let it finish (releasing the lock so that a reader
                // that needs it to finish can), then try again.
                Err(redb::CompactionError::TransactionInProgress) if Instant::now() < deadline => {
                    drop(db);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(redb::CompactionError::TransactionInProgress) => {
                    return Err(EngineError::Io(
                        "defragment: a read (e.g. a snapshot being sent) is still in progress"
                            .into(),
                    ));
                }
                Err(err) => return Err(map_err(err)),
            }
        }
    }
}

/// A redb read transaction with every table open.
struct RedbView {
    /// Keeps the snapshot alive for as long as the view.
    _txn: ReadTransaction,
    /// Indexed by [`Table::index`].
    tables: [ReadOnlyBytesTable; 4],
}

impl RedbView {
    fn table(&self, table: Table) -> &ReadOnlyBytesTable {
        &self.tables[table.index()]
    }

    fn visit<'a>(
        iter: impl Iterator<Item = Result<(BytesGuard<'a>, BytesGuard<'a>), redb::StorageError>>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        for entry in iter {
            let (key, value) = entry.map_err(map_err)?;
            if !f(key.value(), value.value()) {
                break;
            }
        }
        Ok(())
    }
}

impl ReadView for RedbView {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self
            .table(table)
            .get(key)
            .map_err(map_err)?
            .map(|guard| guard.value().to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        if range_is_empty(start, end) {
            return Ok(());
        }
        let range = self
            .table(table)
            .range::<&[u8]>(bounds(start, end))
            .map_err(map_err)?;
        Self::visit(range, f)
    }

    fn scan_rev(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        if range_is_empty(start, end) {
            return Ok(());
        }
        let range = self
            .table(table)
            .range::<&[u8]>(bounds(start, end))
            .map_err(map_err)?;
        Self::visit(range.rev(), f)
    }

    fn first(&self, table: Table) -> Result<Option<KeyValue>, EngineError> {
        Ok(self
            .table(table)
            .first()
            .map_err(map_err)?
            .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
    }

    fn last(&self, table: Table) -> Result<Option<KeyValue>, EngineError> {
        Ok(self
            .table(table)
            .last()
            .map_err(map_err)?
            .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_file_refuses_to_open_or_keeps_every_committed_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let expected: Vec<(Vec<u8>, Vec<u8>)> = (0..2000u32)
            .map(|i| {
                (
                    format!("key{i:05}").into_bytes(),
                    vec![(i % 251) as u8; 100],
                )
            })
            .collect();
        {
            let engine = RedbEngine::open(&path).expect("open");
            let mut batch = WriteBatch::new();
            for (k, v) in &expected {
                batch.put(Table::Kv, k.clone(), v.clone());
            }
            engine.write(batch, Durability::Durable).expect("write");
        }
        let pristine = std::fs::read(&path).expect("read");
        let (mut refused, mut intact) = (0, 0);
        for step in 1..40u64 {
            let at = (pristine.len() as u64 * step / 40) as usize;
            let mut damaged = pristine.clone();
            damaged[at] ^= 0x5a;
            std::fs::write(&path, &damaged).expect("damage");
            match RedbEngine::open(&path) {
                Err(e) => {
                    assert!(e.to_string().contains("store.redb"), "{e}");
                    refused += 1;
                }
                Ok(engine) => {
                    let view = engine.read().expect("view");
                    let mut seen = Vec::new();
                    view.scan(Table::Kv, &[], None, &mut |k, v| {
                        seen.push((k.to_vec(), v.to_vec()));
                        true
                    })
                    .expect("scan");
                    assert_eq!(seen, expected, "opened short after a flip at {at}");
                    intact += 1;
                }
            }
        }
        assert!(refused > 0, "no flip was detected ({intact} intact)");
    }
}
