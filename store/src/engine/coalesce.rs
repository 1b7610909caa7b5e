//! An [`Engine`] wrapper that gathers consecutive `Buffered` writes into one batch and
//! hands them to the wrapped engine together: before any read, with the next `Durable`
//! write, or once the gathered batch reaches a limit. State-machine applies are buffered
//! writes read back only by snapshots, hashes and old-revision watch catch-up, so most
//! applies cost no engine commit at all (etcd's backend batches its commits the same way).
//!
//! Semantics are the wrapped engine's: writes are applied in order and atomically; a
//! read sees every write that returned before it; a durable write makes everything
//! before it durable.

use std::sync::Mutex;

use super::{Durability, Engine, EngineError, ReadView, WriteBatch, WriteCounts};

/// Most buffered writes gathered before they are handed to the engine.
pub const COALESCE_MAX_WRITES: usize = 1024;
/// Most operations gathered before they are handed to the engine.
pub const COALESCE_MAX_OPS: usize = 16 * 1024;

/// Gathers buffered writes for the wrapped engine (see the module docs).
pub struct CoalescingEngine<E> {
    inner: E,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    batch: WriteBatch,
    writes: usize,
}

impl<E: Engine> CoalescingEngine<E> {
    pub fn new(inner: E) -> Self {
        CoalescingEngine {
            inner,
            pending: Mutex::new(Pending::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand the gathered writes to the engine (called with the lock held, so writes
    /// reach it in order).
    fn flush(&self, pending: &mut Pending) -> Result<(), EngineError> {
        if pending.writes == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut pending.batch);
        pending.writes = 0;
        self.inner.write(batch, Durability::Buffered)
    }
}

impl<E: Engine> Engine for CoalescingEngine<E> {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        let mut pending = self.lock();
        match durability {
            Durability::Buffered => {
                if batch.is_empty() {
                    return Ok(());
                }
                pending.batch.extend(batch);
                pending.writes += 1;
                if pending.writes >= COALESCE_MAX_WRITES || pending.batch.len() >= COALESCE_MAX_OPS
                {
                    self.flush(&mut pending)?;
                }
                Ok(())
            }
            Durability::Durable => {
                let mut all = std::mem::take(&mut pending.batch);
                pending.writes = 0;
                all.extend(batch);
                self.inner.write(all, Durability::Durable)
            }
        }
    }

    fn read(&self) -> Result<Box<dyn ReadView + '_>, EngineError> {
        {
            let mut pending = self.lock();
            self.flush(&mut pending)?;
        }
        self.inner.read()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.inner.size_in_use_bytes()
    }

    fn write_counts(&self) -> WriteCounts {
        self.inner.write_counts()
    }

    fn defragment(&self) -> Result<(), EngineError> {
        {
            let mut pending = self.lock();
            self.flush(&mut pending)?;
        }
        self.inner.defragment()
    }
}
