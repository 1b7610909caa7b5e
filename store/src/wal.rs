//! Where the Raft log's entries live, behind one trait ([`EntryLog`]) with two backends:
//!
//! - [`Wal`]: append-only segment files (`<member>/wal/<first index>.wal`) of framed
//!   records `[len u32 LE][crc32 u32 LE][postcard entry]`. An append is one positioned
//!   write; [`EntryLog::sync`] is one `fdatasync` per touched segment — the whole cost of
//!   making a batch of entries durable (etcd's WAL design). Used by `skiff store`.
//! - [`EngineEntries`]: entries as rows of the engine's `RaftLog` table (one engine
//!   commit per append, one durable engine commit per sync). Kept for engines without a
//!   directory (the in-memory engine of unit tests).
//!
//! Space ahead of the last record is kept written with zeros ([`PREFILL_AHEAD`], by
//! [`EntryLog::maintain`] off the write path): an fdatasync after overwriting allocated
//! blocks only flushes data, about half the cost of one that must also allocate (etcd
//! preallocates its WAL segments for the same reason). A zero length ends a segment's
//! records.
//!
//! Invariants: entries are contiguous inside a segment; a segment starts at an index
//! after every index before it (a gap between segments only ever lies at or below the
//! purge point, after a snapshot install). Opening a WAL drops a torn tail — a record cut
//! short or failing its checksum — which can only hold bytes never reported durable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::engine::{Durability, Engine, EngineError, Table, WriteBatch};
use crate::raft_log::{decode, encode};
use crate::types::{Entry, LogId};

/// A segment takes no more appends once it is this large (etcd: 64 MB).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record a segment may hold (a log entry is bounded by the request limit times
/// the batch size; anything larger is damage).
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;
const HEADER: usize = 8;
/// Zeroed bytes kept ahead of the last record of the active segment.
pub const PREFILL_AHEAD: u64 = 8 * 1024 * 1024;
const PREFILL_CHUNK: u64 = 1024 * 1024;

/// Storage of Raft log entries; every method may block (call from a blocking thread).
pub trait EntryLog: Send + Sync + 'static {
    /// Entries with index in `[start, end)` (end None = to the last), in order.
    fn read(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, EngineError>;
    /// The last entry's id, if any entry is stored.
    fn last(&self) -> Result<Option<LogId>, EngineError>;
    /// Append entries (readable at once; durable after the next [`EntryLog::sync`]).
    fn append(&self, entries: Vec<Entry>) -> Result<(), EngineError>;
    /// Make every appended entry durable.
    fn sync(&self) -> Result<(), EngineError>;
    /// Remove every entry with index >= `from`, durably.
    fn truncate(&self, from: u64) -> Result<(), EngineError>;
    /// Drop entries with index <= `upto` where cheap (may keep some; readers skip them).
    fn purge(&self, upto: u64) -> Result<(), EngineError>;
    /// Background upkeep, called periodically off the write path.
    fn maintain(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

fn io(context: &str, err: std::io::Error) -> EngineError {
    EngineError::Io(format!("{context}: {err}"))
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Entries as rows of the engine's `RaftLog` table.
pub struct EngineEntries {
    engine: Arc<dyn Engine>,
}

impl EngineEntries {
    pub fn new(engine: Arc<dyn Engine>) -> EngineEntries {
        EngineEntries { engine }
    }
}

impl EntryLog for EngineEntries {
    fn read(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, EngineError> {
        let view = self.engine.read()?;
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
        )?;
        match failure {
            Some(e) => Err(e),
            None => Ok(entries),
        }
    }

    fn last(&self) -> Result<Option<LogId>, EngineError> {
        match self.engine.read()?.last(Table::RaftLog)? {
            Some((_, raw)) => Ok(Some(decode::<Entry>(&raw)?.log_id)),
            None => Ok(None),
        }
    }

    fn append(&self, entries: Vec<Entry>) -> Result<(), EngineError> {
        let mut batch = WriteBatch::new();
        for entry in entries {
            batch.put(
                Table::RaftLog,
                index_key(entry.log_id.index),
                encode(&entry),
            );
        }
        self.engine.write(batch, Durability::Buffered)
    }

    fn sync(&self) -> Result<(), EngineError> {
        // An empty durable batch commits every buffered write before it.
        self.engine.write(WriteBatch::new(), Durability::Durable)
    }

    fn truncate(&self, from: u64) -> Result<(), EngineError> {
        let mut batch = WriteBatch::new();
        batch.delete_range(Table::RaftLog, index_key(from), None);
        self.engine.write(batch, Durability::Durable)
    }

    fn purge(&self, upto: u64) -> Result<(), EngineError> {
        let mut batch = WriteBatch::new();
        batch.delete_range(
            Table::RaftLog,
            index_key(0),
            Some(index_key(upto.saturating_add(1)).to_vec()),
        );
        self.engine.write(batch, Durability::Buffered)
    }
}

/// One segment file: its entries' ids and where their records start.
struct Segment {
    first_index: u64,
    path: PathBuf,
    file: Arc<File>,
    /// (log id, record offset, record length incl. header) per entry, in index order.
    records: Vec<(LogId, u64, u32)>,
    size: u64,
    /// The file holds zeros from `size` up to here (allocated, synced).
    prefilled: u64,
}

impl Segment {
    fn last_index(&self) -> Option<u64> {
        self.records.last().map(|(id, _, _)| id.index)
    }

    fn next_index(&self) -> u64 {
        self.first_index + self.records.len() as u64
    }
}

struct WalState {
    segments: Vec<Segment>,
    /// Files written since the last sync.
    dirty: Vec<Arc<File>>,
}

/// The Raft log as append-only segment files.
pub struct Wal {
    dir: PathBuf,
    state: Mutex<WalState>,
    /// Serialises syncs so a sync never returns before an earlier one's writes are durable.
    sync_lock: Mutex<()>,
    /// Simulated power loss (test builds): what the last sync covered is recorded in
    /// [`SYNCED_MARKER`], and opening cuts every segment back to it.
    #[cfg(feature = "chaos-bugs")]
    power_loss: bool,
}

/// Power-loss simulation: segment sizes covered by the last sync (`first_index size` lines).
#[cfg(feature = "chaos-bugs")]
pub const SYNCED_MARKER: &str = "synced";

#[cfg(feature = "chaos-bugs")]
impl Wal {
    fn write_synced_marker(&self, sizes: &[(u64, u64)]) -> Result<(), EngineError> {
        let text: String = sizes
            .iter()
            .map(|(first, size)| format!("{first} {size}\n"))
            .collect();
        let tmp = self.dir.join(format!("{SYNCED_MARKER}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| io("write synced marker", e))?;
        std::fs::rename(&tmp, self.dir.join(SYNCED_MARKER))
            .map_err(|e| io("write synced marker", e))
    }

    /// Cut the segments back to what the last sync covered: bytes written but never
    /// synced are lost, as in a power cut.
    fn drop_unsynced(dir: &Path) -> Result<(), EngineError> {
        // No marker: no sync ever completed, so every segment is lost.
        let text = std::fs::read_to_string(dir.join(SYNCED_MARKER)).unwrap_or_default();
        let synced: std::collections::BTreeMap<u64, u64> = text
            .lines()
            .filter_map(|line| {
                let (first, size) = line.split_once(' ')?;
                Some((first.parse().ok()?, size.parse().ok()?))
            })
            .collect();
        for item in std::fs::read_dir(dir).map_err(|e| io("list wal directory", e))? {
            let item = item.map_err(|e| io("list wal directory", e))?;
            let name = item.file_name().to_string_lossy().to_string();
            let Some(first) = name
                .strip_suffix(".wal")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            match synced.get(&first) {
                None => std::fs::remove_file(item.path()).map_err(|e| io("power loss", e))?,
                Some(size) => {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(item.path())
                        .map_err(|e| io("power loss", e))?;
                    let len = file.metadata().map_err(|e| io("power loss", e))?.len();
                    if len > *size {
                        file.set_len(*size).map_err(|e| io("power loss", e))?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.wal")
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync wal directory", e))
}

/// Parse the records of one segment; returns them and the length of the valid prefix.
fn scan_segment(first_index: u64, data: &[u8]) -> (Vec<(LogId, u64, u32)>, u64) {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset + HEADER <= data.len() {
        let len = u32::from_le_bytes([
            data[offset],
            data[offset + 1],
            data[offset + 2],
            data[offset + 3],
        ]);
        let crc = u32::from_le_bytes([
            data[offset + 4],
            data[offset + 5],
            data[offset + 6],
            data[offset + 7],
        ]);
        if len == 0 || len > MAX_RECORD_BYTES || offset + HEADER + len as usize > data.len() {
            break;
        }
        let payload = &data[offset + HEADER..offset + HEADER + len as usize];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(entry) = decode::<Entry>(payload) else {
            break;
        };
        if entry.log_id.index != first_index + records.len() as u64 {
            break;
        }
        records.push((entry.log_id, offset as u64, HEADER as u32 + len));
        offset += HEADER + len as usize;
    }
    (records, offset as u64)
}

impl Wal {
    /// Open (or create) the WAL in `dir`, dropping a torn tail.
    pub fn open(dir: &Path) -> Result<Wal, EngineError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create wal directory", e))?;
        #[cfg(feature = "chaos-bugs")]
        let power_loss = crate::chaos_bugs::power_loss_engine();
        #[cfg(feature = "chaos-bugs")]
        if power_loss {
            Self::drop_unsynced(dir)?;
        }
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io("list wal directory", e))? {
            let item = item.map_err(|e| io("list wal directory", e))?;
            let name = item.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".wal")
                && let Ok(first) = stem.parse::<u64>()
            {
                names.push((first, item.path()));
            }
        }
        names.sort();
        let mut segments: Vec<Segment> = Vec::new();
        let mut damaged = false;
        for (first_index, path) in names {
            if damaged {
                // Everything after a damaged segment was never durable in order: drop it.
                tracing::warn!(path = %path.display(), "dropping wal segment after a torn tail");
                std::fs::remove_file(&path).map_err(|e| io("remove wal segment", e))?;
                continue;
            }
            if let Some(prev) = segments.last()
                && first_index < prev.next_index()
            {
                return Err(EngineError::Corrupt(format!(
                    "wal segment {} overlaps the one before it",
                    path.display()
                )));
            }
            let data = std::fs::read(&path).map_err(|e| io("read wal segment", e))?;
            let (records, valid) = scan_segment(first_index, &data);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io("open wal segment", e))?;
            let tail_is_zero = data[valid as usize..].iter().all(|b| *b == 0);
            let mut prefilled = valid;
            if tail_is_zero {
                prefilled = data.len() as u64;
            } else {
                tracing::warn!(
                    path = %path.display(),
                    kept = valid,
                    dropped = data.len() as u64 - valid,
                    "wal: dropping a torn tail (bytes never reported durable)"
                );
                file.set_len(valid)
                    .map_err(|e| io("truncate wal segment", e))?;
                file.sync_all().map_err(|e| io("sync wal segment", e))?;
                damaged = true;
            }
            segments.push(Segment {
                first_index,
                path,
                file: Arc::new(file),
                records,
                size: valid,
                prefilled,
            });
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            state: Mutex::new(WalState {
                segments,
                dirty: Vec::new(),
            }),
            sync_lock: Mutex::new(()),
            #[cfg(feature = "chaos-bugs")]
            power_loss,
        })
    }

    /// Sync every file written since the last sync (the caller holds `sync_lock`).
    fn sync_held(&self) -> Result<(), EngineError> {
        let mut state = self.lock();
        // What this sync covers, for the power-loss marker (test builds only).
        #[cfg(feature = "chaos-bugs")]
        let sizes: Vec<(u64, u64)> = state
            .segments
            .iter()
            .map(|s| (s.first_index, s.size))
            .collect();
        let dirty = std::mem::take(&mut state.dirty);
        drop(state);
        #[cfg(feature = "chaos-bugs")]
        if crate::chaos_bugs::enabled(crate::chaos_bugs::Bug::SkipFsync) {
            return Ok(());
        }
        for file in dirty {
            file.sync_data().map_err(|e| io("sync wal", e))?;
        }
        #[cfg(feature = "chaos-bugs")]
        if self.power_loss {
            self.write_synced_marker(&sizes)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_segment(&self, first_index: u64) -> Result<Segment, EngineError> {
        let path = self.dir.join(segment_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io("create wal segment", e))?;
        sync_dir(&self.dir)?;
        Ok(Segment {
            first_index,
            path,
            file: Arc::new(file),
            records: Vec::new(),
            size: 0,
            prefilled: 0,
        })
    }
}

fn mark_dirty(dirty: &mut Vec<Arc<File>>, file: &Arc<File>) {
    if !dirty.iter().any(|f| Arc::ptr_eq(f, file)) {
        dirty.push(file.clone());
    }
}

impl EntryLog for Wal {
    fn read(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, EngineError> {
        let state = self.lock();
        let mut entries = Vec::new();
        for segment in &state.segments {
            let Some(last) = segment.last_index() else {
                continue;
            };
            if last < start || end.is_some_and(|end| segment.first_index >= end) {
                continue;
            }
            let from = start.saturating_sub(segment.first_index) as usize;
            let to = match end {
                Some(end) => (end.min(last + 1) - segment.first_index) as usize,
                None => segment.records.len(),
            };
            if from >= to {
                continue;
            }
            let begin = segment.records[from].1;
            let (_, last_offset, last_len) = segment.records[to - 1];
            let mut buf = vec![0u8; (last_offset + last_len as u64 - begin) as usize];
            segment
                .file
                .read_exact_at(&mut buf, begin)
                .map_err(|e| io("read wal", e))?;
            for &(id, offset, len) in &segment.records[from..to] {
                let at = (offset - begin) as usize;
                let payload = &buf[at + HEADER..at + len as usize];
                let entry: Entry = decode(payload)?;
                if entry.log_id != id {
                    return Err(EngineError::Corrupt(format!(
                        "wal record at {} holds {} instead of {}",
                        offset, entry.log_id, id
                    )));
                }
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    fn last(&self) -> Result<Option<LogId>, EngineError> {
        let state = self.lock();
        Ok(state
            .segments
            .iter()
            .rev()
            .find_map(|s| s.records.last().map(|(id, _, _)| *id)))
    }

    fn append(&self, entries: Vec<Entry>) -> Result<(), EngineError> {
        let mut state = self.lock();
        let mut pending = entries.into_iter().peekable();
        while let Some(first) = pending.peek() {
            let index = first.log_id.index;
            let needs_new = match state.segments.last() {
                None => true,
                Some(seg) => seg.size >= SEGMENT_BYTES || seg.next_index() != index,
            };
            if needs_new {
                if let Some(seg) = state.segments.last()
                    && index < seg.next_index()
                {
                    return Err(EngineError::Io(format!(
                        "wal append at {index} overlaps the log (next is {})",
                        seg.next_index()
                    )));
                }
                let segment = self.new_segment(index)?;
                state.segments.push(segment);
            }
            let WalState { segments, dirty } = &mut *state;
            let Some(segment) = segments.last_mut() else {
                return Err(EngineError::Io("wal has no segment".into()));
            };
            let mut buf = Vec::new();
            let mut added = Vec::new();
            while let Some(entry) = pending.peek() {
                if entry.log_id.index != segment.next_index() + added.len() as u64
                    || segment.size + buf.len() as u64 >= SEGMENT_BYTES
                {
                    break;
                }
                let payload = encode(entry);
                let len = u32::try_from(payload.len())
                    .ok()
                    .filter(|len| *len <= MAX_RECORD_BYTES)
                    .ok_or_else(|| EngineError::Io("log entry too large for the wal".into()))?;
                let offset = segment.size + buf.len() as u64;
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
                buf.extend_from_slice(&payload);
                added.push((entry.log_id, offset, HEADER as u32 + len));
                pending.next();
            }
            segment
                .file
                .write_all_at(&buf, segment.size)
                .map_err(|e| io("write wal", e))?;
            segment.size += buf.len() as u64;
            segment.records.extend(added);
            mark_dirty(dirty, &segment.file);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), EngineError> {
        let _serial = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_held()
    }

    fn truncate(&self, from: u64) -> Result<(), EngineError> {
        let _serial = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.lock();
        while let Some(segment) = state.segments.last_mut() {
            if segment.first_index >= from {
                let segment = state.segments.pop().ok_or_else(|| {
                    EngineError::Io("wal segment vanished during truncate".into())
                })?;
                std::fs::remove_file(&segment.path).map_err(|e| io("remove wal segment", e))?;
                sync_dir(&self.dir)?;
                continue;
            }
            let keep = (from - segment.first_index) as usize;
            if keep < segment.records.len() {
                let cut = segment.records[keep].1;
                segment.records.truncate(keep);
                segment.size = cut;
                segment.prefilled = cut;
                segment
                    .file
                    .set_len(cut)
                    .map_err(|e| io("truncate wal", e))?;
                segment.file.sync_all().map_err(|e| io("sync wal", e))?;
            }
            break;
        }
        state.dirty.retain(|f| Arc::strong_count(f) > 1);
        drop(state);
        self.sync_held()
    }

    fn purge(&self, upto: u64) -> Result<(), EngineError> {
        let mut state = self.lock();
        // Whole segments at or below `upto`, but never the last one (appends go there).
        while state.segments.len() > 1
            && state.segments[0]
                .last_index()
                .is_none_or(|last| last <= upto)
        {
            let segment = state.segments.remove(0);
            std::fs::remove_file(&segment.path).map_err(|e| io("remove wal segment", e))?;
        }
        Ok(())
    }

    /// Keep [`PREFILL_AHEAD`] zeroed bytes ahead of the active segment's last record,
    /// one chunk at a time (appends wait at most one chunk's write).
    fn maintain(&self) -> Result<(), EngineError> {
        let zeros = vec![0u8; PREFILL_CHUNK as usize];
        let mut written = None;
        loop {
            let mut state = self.lock();
            let Some(segment) = state.segments.last_mut() else {
                break;
            };
            if written
                .as_ref()
                .is_some_and(|file| !Arc::ptr_eq(file, &segment.file))
            {
                break;
            }
            let start = segment.prefilled.max(segment.size);
            if start >= segment.size + PREFILL_AHEAD || segment.size >= SEGMENT_BYTES {
                break;
            }
            segment
                .file
                .write_all_at(&zeros, start)
                .map_err(|e| io("prefill wal", e))?;
            segment.prefilled = start + PREFILL_CHUNK;
            written = Some(segment.file.clone());
        }
        if let Some(file) = written {
            file.sync_data().map_err(|e| io("sync wal prefill", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{MemberId, Proposal};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, MemberId::default()), index),
            payload: EntryPayload::Normal(Proposal::Batch(Vec::new())),
        }
    }

    fn indexes(log: &dyn EntryLog, start: u64, end: Option<u64>) -> Vec<u64> {
        log.read(start, end)
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[test]
    fn append_read_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path()).expect("open");
        assert_eq!(wal.last().expect("last"), None);
        wal.append((1..=10).map(|i| entry(1, i)).collect())
            .expect("append");
        wal.sync().expect("sync");
        assert_eq!(indexes(&wal, 3, Some(6)), vec![3, 4, 5]);
        assert_eq!(indexes(&wal, 0, None), (1..=10).collect::<Vec<_>>());
        wal.truncate(8).expect("truncate");
        assert_eq!(wal.last().expect("last").map(|id| id.index), Some(7));
        wal.append(vec![entry(2, 8)])
            .expect("append after truncate");
        // A snapshot install leaves a gap: appends continue in a new segment.
        wal.append(vec![entry(2, 100), entry(2, 101)])
            .expect("append after gap");
        wal.purge(99).expect("purge");
        wal.sync().expect("sync");
        drop(wal);
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&wal, 0, None), vec![100, 101]);
        assert_eq!(
            wal.last()
                .expect("last")
                .map(|id| (id.leader_id.term, id.index)),
            Some((2, 101))
        );
    }

    #[test]
    fn prefilled_space_is_reused_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path()).expect("open");
        wal.append(vec![entry(1, 1)]).expect("append");
        wal.maintain().expect("prefill");
        let path = dir.path().join(segment_name(1));
        let len = std::fs::metadata(&path).expect("stat").len();
        assert!(len >= PREFILL_AHEAD, "prefilled to {len}");
        wal.append((2..=50).map(|i| entry(1, i)).collect())
            .expect("append into prefilled space");
        wal.sync().expect("sync");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), len);
        drop(wal);
        // Zeros after the last record are free space, not a torn tail.
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&wal, 0, None), (1..=50).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), len);
        wal.append(vec![entry(1, 51)]).expect("append after reopen");
        assert_eq!(wal.last().expect("last").map(|id| id.index), Some(51));
    }

    #[test]
    fn a_torn_tail_is_dropped_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path()).expect("open");
        wal.append((1..=5).map(|i| entry(1, i)).collect())
            .expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let path = dir.path().join(segment_name(1));
        let len = std::fs::metadata(&path).expect("stat").len();
        // Cut the last record short, as a crash mid-write would.
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(len - 3).expect("cut");
        drop(file);
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&wal, 0, None), vec![1, 2, 3, 4]);
        wal.append(vec![entry(1, 5)]).expect("append again");
        // Flip a payload byte of record 3: records 3.. are dropped.
        drop(wal);
        let mut data = std::fs::read(&path).expect("read");
        let wal = Wal::open(dir.path()).expect("reopen");
        let offset = {
            let state = wal.lock();
            state.segments[0].records[2].1 as usize
        };
        drop(wal);
        data[offset + HEADER + 1] ^= 0xff;
        std::fs::write(&path, &data).expect("write");
        let wal = Wal::open(dir.path()).expect("reopen damaged");
        assert_eq!(indexes(&wal, 0, None), vec![1, 2]);
    }
}
