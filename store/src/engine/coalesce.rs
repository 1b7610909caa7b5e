//! An [`Engine`] wrapper that gathers consecutive `Buffered` writes into one batch and
//! hands them to the wrapped engine together: before any read, with the next `Durable`
//! write, or once the gathered batch reaches a limit. State-machine applies are buffered
//! writes read back only by snapshots, hashes and old-revision watch catch-up, so most
//! applies cost no engine commit at all (etcd's backend batches its commits the same way).
//!
//! Semantics are the wrapped engine's: writes are applied in order and atomically; a
//! read sees every write that returned before it; a durable write makes everything
//! before it durable. While a durable write (an fsync) is running, buffered writes keep
//! gathering instead of waiting for it, up to [`COALESCE_HARD_MAX_OPS`].

use std::sync::{Mutex, TryLockError};

use super::{Durability, Engine, EngineError, ReadView, WriteBatch, WriteCounts};

/// Most buffered writes gathered before they are handed to the engine.
pub const COALESCE_MAX_WRITES: usize = 1024;
/// Most operations gathered before they are handed to the engine.
pub const COALESCE_MAX_OPS: usize = 16 * 1024;
/// Most operations gathered while a durable write holds the engine; past this, buffered
/// writes wait for it.
pub const COALESCE_HARD_MAX_OPS: usize = 8 * COALESCE_MAX_OPS;

/// Gathers buffered writes for the wrapped engine (see the module docs).
pub struct CoalescingEngine<E> {
    inner: E,
    pending: Mutex<Pending>,
    /// Held while writing to `inner`, so writes reach the engine in the order they were
    /// made. Lock order: `order` before `pending` (with `pending` held, only `try_lock`).
    order: Mutex<()>,
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
            order: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand the gathered writes to the engine (called with both locks held).
    fn flush(&self, pending: &mut Pending) -> Result<(), EngineError> {
        if pending.writes == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut pending.batch);
        pending.writes = 0;
        self.inner.write(batch, Durability::Buffered)
    }

    /// Flush now, waiting for a running durable write if need be.
    fn flush_all(&self) -> Result<(), EngineError> {
        let _order = self.lock_order();
        let mut pending = self.lock();
        self.flush(&mut pending)
    }
}

impl<E: Engine> Engine for CoalescingEngine<E> {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        match durability {
            Durability::Buffered => {
                if batch.is_empty() {
                    return Ok(());
                }
                let mut pending = self.lock();
                pending.batch.extend(batch);
                pending.writes += 1;
                if pending.writes < COALESCE_MAX_WRITES && pending.batch.len() < COALESCE_MAX_OPS {
                    return Ok(());
                }
                match self.order.try_lock() {
                    Ok(_order) => self.flush(&mut pending),
                    Err(TryLockError::Poisoned(order)) => {
                        let _order = order.into_inner();
                        self.flush(&mut pending)
                    }
                    // A durable write is running: keep gathering, up to the hard limit.
                    Err(TryLockError::WouldBlock) => {
                        if pending.batch.len() < COALESCE_HARD_MAX_OPS {
                            return Ok(());
                        }
                        drop(pending);
                        self.flush_all()
                    }
                }
            }
            Durability::Durable => {
                let _order = self.lock_order();
                let mut all = {
                    let mut pending = self.lock();
                    pending.writes = 0;
                    std::mem::take(&mut pending.batch)
                };
                all.extend(batch);
                // Buffered writes made meanwhile gather and reach the engine after this.
                self.inner.write(all, Durability::Durable)
            }
        }
    }

    fn read(&self) -> Result<Box<dyn ReadView + '_>, EngineError> {
        self.flush_all()?;
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
        self.flush_all()?;
        self.inner.defragment()
    }
}
