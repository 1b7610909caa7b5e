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
//! purge point, after a snapshot install).
//!
//! Damage on open (etcd's rule, made stricter): after every sync the WAL writes a small
//! **sync mark** ([`SYNC_MARK`]: segment and size the sync covered, with a checksum) into
//! the page cache, not fsynced — it never claims more than is durable. Opening a WAL may
//! drop only a *torn tail*: a record beyond the sync mark that is cut short by the end of
//! the file or holds a zeroed sector (a write that never fully landed, as etcd's
//! `isTornEntry` tells them). Any other damage — a checksum failure before the mark or
//! without the torn pattern, a bad length, a record out of order, data after the end of
//! the records — refuses to open with [`EngineError::Corrupt`] naming the file and offset:
//! a member never starts silently short of what it acknowledged. The operator then
//! replaces the member (remove it, wipe its data, add it back), as etcd's docs say.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::engine::{Durability, Engine, EngineError, Table, WriteBatch};
use crate::fsutil::{create_private_dir, private_file};
use crate::raft_log::{decode, encode};
use crate::types::{Entry, LogId};

/// A segment takes no more appends once it is this large (etcd: 64 MB).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record a segment may hold (a log entry is bounded by the request limit times
/// the batch size; anything larger is damage).
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;
const HEADER: usize = 8;
/// The sync mark's file name in the WAL directory.
pub const SYNC_MARK: &str = "sync-mark";
/// Disk sector size for torn-write detection (etcd's `minSectorSize`).
const SECTOR: u64 = 512;
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
    /// Where each sync writes its [`SyncMark`].
    mark_file: File,
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

/// How far the last completed sync reached: every segment before `first_index` whole,
/// and the segment starting at `first_index` up to `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SyncMark {
    first_index: u64,
    size: u64,
}

impl SyncMark {
    const BYTES: usize = 20;

    fn encode(self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..8].copy_from_slice(&self.first_index.to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        let crc = crc32fast::hash(&out[..16]);
        out[16..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` for a missing, short or damaged mark (then nothing is known to be synced
    /// and only etcd's torn-write rule applies).
    fn decode(data: &[u8]) -> Option<SyncMark> {
        let data = data.get(..Self::BYTES)?;
        let crc = u32::from_le_bytes(data[16..].try_into().ok()?);
        if crc32fast::hash(&data[..16]) != crc {
            return None;
        }
        Some(SyncMark {
            first_index: u64::from_le_bytes(data[..8].try_into().ok()?),
            size: u64::from_le_bytes(data[8..16].try_into().ok()?),
        })
    }

    /// Whether byte `offset` of the segment starting at `first_index` was synced.
    fn covers(self, first_index: u64, offset: u64) -> bool {
        first_index < self.first_index || (first_index == self.first_index && offset < self.size)
    }
}

/// Why the scan of a segment stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ScanEnd {
    /// The end of the records: end of file or a zero length, with only zeros after it.
    Clean,
    /// A write that never fully landed: the record is cut short by the end of the file, a
    /// sector of it is zeros, or bytes follow the zero length that ends the records.
    Torn(String),
    /// Damage a crash cannot cause.
    Damaged(String),
}

/// The `wal-truncate-silently` bug switch (test builds): damage is dropped, never refused.
fn truncate_silently() -> bool {
    #[cfg(feature = "chaos-bugs")]
    return crate::chaos_bugs::enabled(crate::chaos_bugs::Bug::WalTruncateSilently);
    #[cfg(not(feature = "chaos-bugs"))]
    false
}

/// Whether a record that fails its checksum looks like a torn write: one of the sectors
/// it spans (clipped to the record) is all zeros.
fn has_zero_sector(data: &[u8], start: u64) -> bool {
    let mut at = start as usize;
    let end = start as usize + data.len();
    while at < end {
        let next = ((at as u64 / SECTOR + 1) * SECTOR) as usize;
        let chunk = &data[at - start as usize..next.min(end) - start as usize];
        if chunk.iter().all(|b| *b == 0) {
            return true;
        }
        at = next;
    }
    false
}

/// Parse the records of one segment: them, the length of the valid prefix, and why the
/// scan stopped there.
fn scan_segment(first_index: u64, data: &[u8]) -> (Vec<(LogId, u64, u32)>, u64, ScanEnd) {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let end = loop {
        let rest = &data[offset..];
        if rest.len() < HEADER {
            break if rest.iter().all(|b| *b == 0) {
                ScanEnd::Clean
            } else {
                ScanEnd::Torn("record header cut short by the end of the file".into())
            };
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 {
            break if rest.iter().all(|b| *b == 0) {
                ScanEnd::Clean
            } else {
                ScanEnd::Torn("bytes after the zero length that ends the records".into())
            };
        }
        if len > MAX_RECORD_BYTES {
            break ScanEnd::Damaged(format!("record length {len} is over the limit"));
        }
        if HEADER + len as usize > rest.len() {
            break ScanEnd::Torn(format!(
                "record of {len} bytes cut short by the end of the file"
            ));
        }
        let record = &rest[..HEADER + len as usize];
        let payload = &record[HEADER..];
        if crc32fast::hash(payload) != crc {
            break if has_zero_sector(record, offset as u64) {
                ScanEnd::Torn("record with a zeroed sector (a write that never landed)".into())
            } else {
                ScanEnd::Damaged("checksum mismatch (crc mismatch)".into())
            };
        }
        let entry = match decode::<Entry>(payload) {
            Ok(entry) => entry,
            Err(e) => break ScanEnd::Damaged(format!("record does not decode: {e}")),
        };
        let expected = first_index + records.len() as u64;
        if entry.log_id.index != expected {
            break ScanEnd::Damaged(format!(
                "record holds entry {} where entry {expected} belongs",
                entry.log_id.index
            ));
        }
        records.push((entry.log_id, offset as u64, HEADER as u32 + len));
        offset += HEADER + len as usize;
    };
    (records, offset as u64, end)
}

impl Wal {
    /// Open (or create) the WAL in `dir`, dropping a torn tail beyond the sync mark and
    /// refusing any other damage (see the module docs).
    pub fn open(dir: &Path) -> Result<Wal, EngineError> {
        create_private_dir(dir)
            .map_err(|e| io(&format!("create wal directory {}", dir.display()), e))?;
        #[cfg(feature = "chaos-bugs")]
        let power_loss = crate::chaos_bugs::power_loss_engine();
        #[cfg(feature = "chaos-bugs")]
        if power_loss {
            Self::drop_unsynced(dir)?;
        }
        let mark_path = dir.join(SYNC_MARK);
        let mark = std::fs::read(&mark_path)
            .ok()
            .and_then(|data| SyncMark::decode(&data));
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
        let mut torn = false;
        for (first_index, path) in names {
            if torn {
                // Everything after a torn tail was written after it, so never synced.
                if mark.is_some_and(|m| m.covers(first_index, 0)) {
                    return Err(EngineError::Corrupt(format!(
                        "wal segment {} follows a torn record but was synced",
                        path.display()
                    )));
                }
                tracing::warn!(path = %path.display(), "wal: dropping a segment written after a torn tail");
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
            let (records, valid, end) = scan_segment(first_index, &data);
            let refuse = |why: &str| {
                EngineError::Corrupt(format!(
                    "wal segment {} is damaged at offset {valid}: {why}; this member's log \
                     cannot be trusted: remove the member from the cluster, delete its data \
                     directory and add it back (etcdctl member remove / member add)",
                    path.display()
                ))
            };
            let mut prefilled = valid;
            match end {
                ScanEnd::Clean => prefilled = data.len() as u64,
                ScanEnd::Damaged(why) => {
                    if !truncate_silently() {
                        return Err(refuse(&why));
                    }
                    torn = true;
                }
                ScanEnd::Torn(why) => {
                    if mark.is_some_and(|m| m.covers(first_index, valid)) && !truncate_silently() {
                        return Err(refuse(&format!("{why}, before the synced position")));
                    }
                    torn = true;
                }
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io("open wal segment", e))?;
            if torn {
                tracing::warn!(
                    path = %path.display(),
                    kept = valid,
                    dropped = data.len() as u64 - valid,
                    "wal: dropping a torn tail (a write that never completed, never reported durable)"
                );
                file.set_len(valid)
                    .map_err(|e| io("truncate wal segment", e))?;
                file.sync_all().map_err(|e| io("sync wal segment", e))?;
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
        let mark_file = private_file(&mark_path)
            .map_err(|e| io(&format!("open {}", mark_path.display()), e))?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            state: Mutex::new(WalState {
                segments,
                dirty: Vec::new(),
            }),
            mark_file,
            sync_lock: Mutex::new(()),
            #[cfg(feature = "chaos-bugs")]
            power_loss,
        };
        // What is on disk now was read back whole: mark it synced (a dropped tail lowers
        // the mark, so a later torn write beyond it is told apart again).
        for segment in &wal.lock().segments {
            segment
                .file
                .sync_data()
                .map_err(|e| io("sync wal segment", e))?;
        }
        wal.write_mark(wal.current_mark())?;
        Ok(wal)
    }

    /// What every segment holds now.
    fn current_mark(&self) -> SyncMark {
        let state = self.lock();
        state
            .segments
            .last()
            .map(|s| SyncMark {
                first_index: s.first_index,
                size: s.size,
            })
            .unwrap_or(SyncMark {
                first_index: 0,
                size: 0,
            })
    }

    /// Record what the last sync covered (page cache only: never more than is durable).
    fn write_mark(&self, mark: SyncMark) -> Result<(), EngineError> {
        self.mark_file
            .write_all_at(&mark.encode(), 0)
            .map_err(|e| io("write wal sync mark", e))
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
        let mark = state.segments.last().map(|s| SyncMark {
            first_index: s.first_index,
            size: s.size,
        });
        let dirty = std::mem::take(&mut state.dirty);
        drop(state);
        #[cfg(feature = "chaos-bugs")]
        if crate::chaos_bugs::enabled(crate::chaos_bugs::Bug::SkipFsync) {
            return Ok(());
        }
        let synced_any = !dirty.is_empty();
        let started = std::time::Instant::now();
        for file in dirty {
            file.sync_data().map_err(|e| io("sync wal", e))?;
        }
        if synced_any {
            crate::metrics::WAL_FSYNC.observe(started.elapsed());
        }
        #[cfg(feature = "chaos-bugs")]
        if self.power_loss {
            self.write_synced_marker(&sizes)?;
        }
        if synced_any && let Some(mark) = mark {
            self.write_mark(mark)?;
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
            .mode(0o600)
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
        // Lower the sync mark to the cut first, durably: a crash mid-truncate must not leave
        // a mark that claims bytes the truncate removed (they would read as damage).
        let lowered = {
            let state = self.lock();
            state
                .segments
                .iter()
                .rev()
                .find(|s| s.first_index < from)
                .map(|s| {
                    let keep = (from - s.first_index) as usize;
                    SyncMark {
                        first_index: s.first_index,
                        size: s.records.get(keep).map_or(s.size, |r| r.1),
                    }
                })
                .unwrap_or(SyncMark {
                    first_index: 0,
                    size: 0,
                })
        };
        self.write_mark(lowered)?;
        self.mark_file
            .sync_data()
            .map_err(|e| io("sync wal sync mark", e))?;
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

    fn big_entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, MemberId::default()), index),
            payload: EntryPayload::Normal(Proposal::One(crate::types::Command::Put(vec![
                7u8;
                3000
            ]))),
        }
    }

    /// Records' (offset, length) of the first segment (read without opening the WAL, which
    /// would mark what it read as synced).
    fn records(dir: &Path) -> Vec<(u64, u32)> {
        let data = std::fs::read(dir.join(segment_name(1))).expect("read segment");
        let (records, _, end) = scan_segment(1, &data);
        assert_eq!(end, ScanEnd::Clean);
        records.iter().map(|r| (r.1, r.2)).collect()
    }

    fn damage(dir: &Path, at: u64, bytes: &[u8]) {
        let file = OpenOptions::new()
            .write(true)
            .open(dir.join(segment_name(1)))
            .expect("open segment");
        file.write_all_at(bytes, at).expect("damage");
    }

    fn refusal(dir: &Path) -> String {
        match Wal::open(dir) {
            Ok(_) => panic!("a damaged wal opened"),
            Err(e) => e.to_string(),
        }
    }

    /// Five synced entries and a sixth appended after the sync (never reported durable).
    fn five_synced_one_not(dir: &Path) {
        let wal = Wal::open(dir).expect("open");
        wal.append((1..=5).map(|i| big_entry(1, i)).collect())
            .expect("append");
        wal.sync().expect("sync");
        wal.append(vec![big_entry(1, 6)]).expect("append unsynced");
    }

    #[test]
    fn a_torn_record_beyond_the_sync_mark_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        five_synced_one_not(dir.path());
        let (offset, len) = records(dir.path())[5];
        // A sector of record 6 never reached the disk.
        let sector = (offset / SECTOR + 2) * SECTOR;
        assert!(sector + SECTOR <= offset + len as u64);
        damage(dir.path(), sector, &[0u8; SECTOR as usize]);
        let wal = Wal::open(dir.path()).expect("open with a torn tail");
        assert_eq!(indexes(&wal, 0, None), vec![1, 2, 3, 4, 5]);
        wal.append(vec![big_entry(2, 6)]).expect("append again");
        wal.sync().expect("sync");
        drop(wal);
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&wal, 0, None), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn damage_in_synced_records_refuses_to_open_naming_the_file() {
        for (what, record, at, bytes) in [
            ("payload of the middle record", 2usize, 100u64, vec![0xffu8]),
            ("payload of the last synced record", 4, 50, vec![0x01]),
            ("length of the last synced record", 4, 1, vec![0x40]),
            ("checksum of the first record", 0, 5, vec![0x10]),
            (
                "a zeroed sector of a synced record",
                3,
                1024,
                vec![0u8; 1024],
            ),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            five_synced_one_not(dir.path());
            let (offset, _) = records(dir.path())[record];
            damage(dir.path(), offset + at, &bytes);
            let error = refusal(dir.path());
            assert!(error.contains(&segment_name(1)), "{what}: {error}");
            assert!(error.contains("damaged at offset"), "{what}: {error}");
        }
    }

    #[test]
    fn damage_beyond_the_mark_that_is_not_a_torn_write_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        five_synced_one_not(dir.path());
        let (offset, _) = records(dir.path())[5];
        damage(dir.path(), offset + 200, &[0x55]);
        assert!(refusal(dir.path()).contains("crc mismatch"));
    }

    #[test]
    fn without_a_mark_a_record_cut_short_is_a_torn_tail() {
        // A WAL written before sync marks existed: only etcd's torn-write rule applies.
        let dir = tempfile::tempdir().expect("tempdir");
        five_synced_one_not(dir.path());
        std::fs::remove_file(dir.path().join(SYNC_MARK)).expect("remove mark");
        let path = dir.path().join(segment_name(1));
        let (offset, len) = records(dir.path())[5];
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(offset + len as u64 - 3).expect("cut");
        drop(file);
        let wal = Wal::open(dir.path()).expect("open");
        assert_eq!(indexes(&wal, 0, None), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_truncated_log_reopens_and_drops_a_torn_append_after_the_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let wal = Wal::open(dir.path()).expect("open");
            wal.append((1..=5).map(|i| big_entry(1, i)).collect())
                .expect("append");
            wal.sync().expect("sync");
            wal.truncate(3).expect("truncate");
            wal.append(vec![big_entry(2, 3)]).expect("append after cut");
        }
        let (offset, _) = records(dir.path())[2];
        let sector = (offset / SECTOR + 2) * SECTOR;
        damage(dir.path(), sector, &[0u8; SECTOR as usize]);
        let wal = Wal::open(dir.path()).expect("open");
        assert_eq!(indexes(&wal, 0, None), vec![1, 2]);
    }

    #[test]
    fn the_sync_mark_round_trips_and_rejects_damage() {
        let mark = SyncMark {
            first_index: 42,
            size: 4096,
        };
        let mut bytes = mark.encode();
        assert_eq!(SyncMark::decode(&bytes), Some(mark));
        bytes[3] ^= 1;
        assert_eq!(SyncMark::decode(&bytes), None);
        assert!(mark.covers(41, 1 << 40));
        assert!(mark.covers(42, 4095));
        assert!(!mark.covers(42, 4096));
        assert!(!mark.covers(43, 0));
    }

    #[test]
    fn wal_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let wal_dir = dir.path().join("wal");
        let wal = Wal::open(&wal_dir).expect("open");
        wal.append(vec![entry(1, 1)]).expect("append");
        wal.sync().expect("sync");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&wal_dir), 0o700);
        assert_eq!(mode(&wal_dir.join(segment_name(1))), 0o600);
        assert_eq!(mode(&wal_dir.join(SYNC_MARK)), 0o600);
    }
}
