//! An [`Engine`] wrapper that counts writes by durability, so `/metrics` can show how
//! many fsyncs the member did and tests can check that proposals share them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Durability, Engine, EngineError, ReadView, WriteBatch};

/// Counts `Durable` (fsynced) and `Buffered` writes of the wrapped engine.
pub struct CountingEngine<E> {
    inner: E,
    durable_writes: AtomicU64,
    buffered_writes: AtomicU64,
}

impl<E: Engine> CountingEngine<E> {
    pub fn new(inner: E) -> Self {
        CountingEngine {
            inner,
            durable_writes: AtomicU64::new(0),
            buffered_writes: AtomicU64::new(0),
        }
    }
}

/// Write counters of an engine (zero for engines that don't count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    pub durable: u64,
    pub buffered: u64,
}

impl<E: Engine> Engine for CountingEngine<E> {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        let result = self.inner.write(batch, durability);
        if result.is_ok() {
            let counter = match durability {
                Durability::Durable => &self.durable_writes,
                Durability::Buffered => &self.buffered_writes,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn read(&self) -> Result<Box<dyn ReadView + '_>, EngineError> {
        self.inner.read()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.inner.size_in_use_bytes()
    }

    fn defragment(&self) -> Result<(), EngineError> {
        self.inner.defragment()
    }

    fn write_counts(&self) -> WriteCounts {
        WriteCounts {
            durable: self.durable_writes.load(Ordering::Relaxed),
            buffered: self.buffered_writes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{MemEngine, Table};

    #[test]
    fn counts_writes_by_durability() {
        let engine = CountingEngine::new(MemEngine::new());
        let mut batch = WriteBatch::new();
        batch.put(Table::Kv, b"a".to_vec(), b"1".to_vec());
        engine.write(batch.clone(), Durability::Buffered).unwrap();
        engine.write(batch, Durability::Durable).unwrap();
        assert_eq!(
            engine.write_counts(),
            WriteCounts {
                durable: 1,
                buffered: 1
            }
        );
    }
}
