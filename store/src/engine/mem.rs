//! In-memory [`Engine`] for tests, with simulated power loss.
//!
//! Each table is an ordered map behind an [`Arc`], so taking a [`ReadView`]
//! only clones four pointers; a write after that copies the tables it touches
//! (copy-on-write), leaving the view unchanged.
//!
//! Besides the *current* state that readers see, the engine keeps the
//! *durable* state: what would survive a power loss. A
//! [`Durability::Buffered`] write changes only the current state and is queued;
//! a [`Durability::Durable`] write replays the queue and itself onto the durable
//! state. [`MemEngine::crash`] throws the current state away and restarts from
//! the durable one.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{
    BatchOp, Durability, Engine, EngineError, KeyValue, ReadView, Table, WriteBatch, range_is_empty,
};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Size reported for an engine holding (almost) nothing: one page.
const MIN_SIZE_BYTES: u64 = 4096;

/// The tables plus the byte count of their keys and values.
#[derive(Clone, Default)]
struct Tables {
    maps: [Arc<Map>; 4],
    live_bytes: u64,
}

impl Tables {
    fn apply(&mut self, batch: &WriteBatch) {
        for op in batch.ops() {
            match op {
                BatchOp::Put { table, key, value } => {
                    let map = Arc::make_mut(&mut self.maps[table.index()]);
                    let added = entry_bytes(key, value);
                    if let Some(old) = map.insert(key.clone(), value.clone()) {
                        self.live_bytes = self.live_bytes.saturating_sub(entry_bytes(key, &old));
                    }
                    self.live_bytes = self.live_bytes.saturating_add(added);
                }
                BatchOp::Delete { table, key } => {
                    if !self.maps[table.index()].contains_key(key) {
                        continue;
                    }
                    let map = Arc::make_mut(&mut self.maps[table.index()]);
                    if let Some(old) = map.remove(key) {
                        self.live_bytes = self.live_bytes.saturating_sub(entry_bytes(key, &old));
                    }
                }
                BatchOp::DeleteRange { table, start, end } => {
                    let end = end.as_deref();
                    if range_is_empty(start, end) {
                        continue;
                    }
                    let doomed: Vec<Vec<u8>> = self.maps[table.index()]
                        .range::<[u8], _>(bounds(start, end))
                        .map(|(k, _)| k.clone())
                        .collect();
                    if doomed.is_empty() {
                        continue;
                    }
                    let map = Arc::make_mut(&mut self.maps[table.index()]);
                    for key in doomed {
                        if let Some(old) = map.remove(&key) {
                            self.live_bytes =
                                self.live_bytes.saturating_sub(entry_bytes(&key, &old));
                        }
                    }
                }
                BatchOp::Clear { table } => {
                    let freed: u64 = self.maps[table.index()]
                        .iter()
                        .map(|(k, v)| entry_bytes(k, v))
                        .sum();
                    self.live_bytes = self.live_bytes.saturating_sub(freed);
                    self.maps[table.index()] = Arc::new(Map::new());
                }
            }
        }
    }
}

struct State {
    /// What readers see.
    current: Tables,
    /// What survives [`MemEngine::crash`].
    durable: Tables,
    /// Buffered batches applied to `current` but not yet to `durable`.
    pending: Vec<WriteBatch>,
}

/// In-memory [`Engine`]; see the module documentation.
pub struct MemEngine {
    state: Mutex<State>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                current: Tables::default(),
                durable: Tables::default(),
                pending: Vec::new(),
            }),
        }
    }

    /// Simulates a power loss: drops every Buffered write not yet followed by a Durable one.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.pending.clear();
        state.current = state.durable.clone();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Applying a batch cannot fail part-way, so a poisoned lock still
        // guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemEngine")
            .field("live_bytes", &state.current.live_bytes)
            .field("pending_batches", &state.pending.len())
            .finish()
    }
}

impl Engine for MemEngine {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        let mut state = self.lock();
        state.current.apply(&batch);
        match durability {
            Durability::Buffered => state.pending.push(batch),
            Durability::Durable => {
                let State {
                    durable, pending, ..
                } = &mut *state;
                for queued in pending.drain(..) {
                    durable.apply(&queued);
                }
                durable.apply(&batch);
            }
        }
        Ok(())
    }

    fn read(&self) -> Result<Box<dyn ReadView + '_>, EngineError> {
        let maps = self.lock().current.maps.clone();
        Ok(Box::new(MemView { maps }))
    }

    fn size_bytes(&self) -> u64 {
        self.lock().current.live_bytes.max(MIN_SIZE_BYTES)
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.lock().current.live_bytes
    }
}

/// A snapshot of a [`MemEngine`]'s tables.
struct MemView {
    maps: [Arc<Map>; 4],
}

impl MemView {
    fn map(&self, table: Table) -> &Map {
        &self.maps[table.index()]
    }
}

impl ReadView for MemView {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.map(table).get(key).cloned())
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
        for (k, v) in self.map(table).range::<[u8], _>(bounds(start, end)) {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
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
        for (k, v) in self.map(table).range::<[u8], _>(bounds(start, end)).rev() {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn first(&self, table: Table) -> Result<Option<KeyValue>, EngineError> {
        Ok(self
            .map(table)
            .first_key_value()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn last(&self, table: Table) -> Result<Option<KeyValue>, EngineError> {
        Ok(self
            .map(table)
            .last_key_value()
            .map(|(k, v)| (k.clone(), v.clone())))
    }
}

/// `[start, end)` as map bounds; the caller has checked the range is not empty.
fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}
