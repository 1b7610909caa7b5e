//! A test-only [`Engine`] that makes SIGKILL behave like a power cut (feature `chaos-bugs`,
//! selected with `SKIFF_CHAOS_POWERLOSS=1`).
//!
//! Every table lives in memory (a [`MemEngine`], which readers use); the redb file receives
//! only what is durable. A [`Durability::Buffered`] write changes the memory and is queued;
//! a [`Durability::Durable`] write appends itself to the queue and commits the whole queue
//! to the file in one fsynced redb transaction, in order. The page cache therefore never
//! holds un-fsynced store data: a process killed with SIGKILL restarts from exactly what was
//! fsynced, as after a power loss (lazyfs' `clear-cache` without FUSE).
//!
//! With the `skip-fsync` bug switch on, durable writes are queued like buffered ones and the
//! file never changes after opening: everything since start is lost on a kill.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::{Durability, Engine, EngineError, MemEngine, ReadView, RedbEngine, Table, WriteBatch};
use crate::chaos_bugs::{Bug, enabled};

/// See the module documentation.
pub struct PowerLossEngine {
    memory: MemEngine,
    file: RedbEngine,
    /// Writes not yet in the file, oldest first; the lock also orders writers.
    pending: Mutex<Vec<WriteBatch>>,
}

impl PowerLossEngine {
    /// Open (or create) the redb file at `path` and load all of it into memory.
    pub fn open(path: &Path) -> Result<PowerLossEngine, EngineError> {
        let file = RedbEngine::open(path)?;
        let memory = MemEngine::new();
        let mut all = WriteBatch::new();
        {
            let view = file.read()?;
            for table in Table::ALL {
                view.scan(table, &[], None, &mut |k, v| {
                    all.put(table, k, v);
                    true
                })?;
            }
        }
        memory.write(all, Durability::Durable)?;
        Ok(PowerLossEngine {
            memory,
            file,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Batches written but not in the file yet.
    pub fn pending_batches(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Engine for PowerLossEngine {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        // Memory is only what readers see: its own durable copy does not matter.
        self.memory.write(batch.clone(), Durability::Durable)?;
        pending.push(batch);
        if durability == Durability::Durable && !enabled(Bug::SkipFsync) {
            let mut all = WriteBatch::new();
            for b in pending.drain(..) {
                all.ops.extend(b.ops);
            }
            self.file.write(all, Durability::Durable)?;
        }
        Ok(())
    }

    fn read(&self) -> Result<Box<dyn ReadView + '_>, EngineError> {
        self.memory.read()
    }

    fn size_bytes(&self) -> u64 {
        self.file.size_bytes().max(self.memory.size_bytes())
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.memory.size_in_use_bytes().min(self.size_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fsynced_writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let engine = PowerLossEngine::open(&path).unwrap();
            let mut durable = WriteBatch::new();
            durable.put(Table::Kv, b"a".to_vec(), b"1".to_vec());
            engine.write(durable, Durability::Durable).unwrap();
            let mut buffered = WriteBatch::new();
            buffered.put(Table::Kv, b"b".to_vec(), b"2".to_vec());
            engine.write(buffered, Durability::Buffered).unwrap();
            let view = engine.read().unwrap();
            assert_eq!(view.get(Table::Kv, b"b").unwrap(), Some(b"2".to_vec()));
            assert_eq!(engine.pending_batches(), 1);
            // Dropped without another durable write: the "power" goes.
        }
        let engine = PowerLossEngine::open(&path).unwrap();
        let view = engine.read().unwrap();
        assert_eq!(view.get(Table::Kv, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(view.get(Table::Kv, b"b").unwrap(), None);
    }

    #[test]
    fn a_durable_write_carries_earlier_buffered_ones_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let engine = PowerLossEngine::open(&path).unwrap();
            let mut b1 = WriteBatch::new();
            b1.put(Table::Meta, b"k".to_vec(), b"old".to_vec());
            engine.write(b1, Durability::Buffered).unwrap();
            let mut b2 = WriteBatch::new();
            b2.put(Table::Meta, b"k".to_vec(), b"new".to_vec());
            engine.write(b2, Durability::Buffered).unwrap();
            engine
                .write(WriteBatch::new(), Durability::Durable)
                .unwrap();
            assert_eq!(engine.pending_batches(), 0);
        }
        let engine = PowerLossEngine::open(&path).unwrap();
        let view = engine.read().unwrap();
        assert_eq!(view.get(Table::Meta, b"k").unwrap(), Some(b"new".to_vec()));
    }
}
