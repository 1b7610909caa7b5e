//! Point-in-time snapshots of a member's state machine: the Maintenance `Snapshot` stream,
//! the file format it produces, and the offline `snapshot status` and `snapshot restore`
//! tools (like `etcdutl`).
//!
//! # File format (version 1)
//!
//! ```text
//! "SKIFFSNP"                      8 bytes, magic
//! format version                  u32, big-endian (1)
//! header length, header           u32 + postcard(SnapshotHeader)
//! entries                         table tag u8 (1 = Kv, 2 = Meta), key length u32, key,
//!                                 value length u32, value — Kv records first, in key order
//! end tag                         u8 (0)
//! zero padding                    up to a multiple of 512 bytes
//! SHA-256 of everything above     32 bytes
//! ```
//!
//! Like an etcd snapshot, the file's size is `512·n + 32` and it ends with the SHA-256 of
//! what precedes it, so `etcdctl snapshot save` accepts the stream (it writes what the
//! server sends), and a restore verifies the trailer first. The entries are the `Kv` and
//! `Meta` tables of one engine view, taken under the state machine's lock, so the file is
//! one consistent state. The header carries the revision, the compact revision and the
//! HashKV hash at that revision ([`crate::maintenance::kv_hash`]), so `snapshot status`
//! shows the same hash `etcdctl endpoint hashkv --rev REV` shows on the source.
//!
//! A restore writes the `Kv` table and the key-value part of `Meta` into a new data dir,
//! drops what belongs to the old cluster (members, Raft position, alarms), and records a
//! fresh identity plus the new membership as applied at log index 0 with no Raft log (like
//! etcdutl, which writes a Raft snapshot holding the new membership): the members elect a
//! leader on first start and carry on from the restored revision.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skiff_proto::etcdserverpb::SnapshotResponse;
use tonic::Status;

use crate::config::{ClusterState, StoreConfig};
use crate::engine::{Durability, Engine, EngineError, ReadView, RedbEngine, Table, WriteBatch};
use crate::error::Error;
use crate::maintenance::{RecordHasher, is_cluster_meta, record_revision};
use crate::mvcc::Revision;
use crate::node::StoreNode;
use crate::raft_log::encode;
use crate::state_machine::{KEY_APPLIED, KEY_MEMBERSHIP};
use crate::types::{LogId, MemberId, StoredMembership};
use openraft::{CommittedLeaderId, Membership};
use std::collections::BTreeSet;

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"SKIFFSNP";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the chunks the Snapshot stream sends (etcd's).
pub const CHUNK_BYTES: usize = 32 * 1024;
/// The content is padded to a multiple of this (etcd checks `size % 512 == 32`).
const ALIGN: u64 = 512;
/// Length of the SHA-256 trailer.
const TRAILER_BYTES: u64 = 32;
/// Largest header accepted when reading.
const MAX_HEADER_BYTES: u32 = 1024 * 1024;

const TAG_END: u8 = 0;
const TAG_KV: u8 = 1;
const TAG_META: u8 = 2;

/// What a snapshot file says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The store revision the snapshot holds.
    pub revision: Revision,
    /// etcd's `compactMainRev` (-1: never compacted).
    pub compact_revision: Revision,
    /// HashKV at `revision`: a hash of every `Kv` record.
    pub kv_hash: u32,
    /// Number of `Kv` records (one per change in the retained history).
    pub kv_records: u64,
    /// Number of `Meta` entries.
    pub meta_entries: u64,
    /// The member and cluster that produced it.
    pub member_id: MemberId,
    pub cluster_id: u64,
    /// The Raft log index the state machine had applied.
    pub raft_applied_index: u64,
    /// Seconds since the Unix epoch when it was taken.
    pub created_unix_secs: u64,
    /// The skiff version that wrote it.
    pub skiff_version: String,
}

/// Why a snapshot could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Io(String),
    #[error("snapshot file {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "snapshot file {path}: SHA-256 mismatch (trailer {expected}, content {actual}): the file is corrupt or truncated"
    )]
    HashMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    /// etcdutl's wording.
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("{0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(#[from] EngineError),
}

impl From<SnapshotError> for Error {
    fn from(err: SnapshotError) -> Self {
        match err {
            SnapshotError::Storage(e) => Error::Storage(e.to_string()),
            SnapshotError::Config(msg) => Error::Config(msg),
            other => Error::Internal(other.to_string()),
        }
    }
}

fn io_err(what: &str, path: &Path, err: std::io::Error) -> SnapshotError {
    SnapshotError::Io(format!("{what} {}: {err}", path.display()))
}

// ---------------------------------------------------------------------------
// Writing

/// Where a snapshot is taken from: a consistent engine view and the state-machine facts
/// read under the same lock.
pub struct Source<'a> {
    pub view: &'a dyn ReadView,
    pub revision: Revision,
    pub compact_revision: Revision,
    pub member_id: MemberId,
    pub cluster_id: u64,
    pub raft_applied_index: u64,
}

/// The header and the exact content size (before the trailer), from a first pass over the
/// view.
struct Plan {
    header_bytes: Vec<u8>,
    content_bytes: u64,
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    1 + 4 + key.len() as u64 + 4 + value.len() as u64
}

fn plan(source: &Source<'_>) -> Result<Plan, SnapshotError> {
    let mut kv_records = 0u64;
    let mut meta_entries = 0u64;
    let mut entries = 0u64;
    let mut hasher = RecordHasher::new();
    source.view.scan(Table::Kv, &[], None, &mut |key, value| {
        kv_records += 1;
        entries += entry_bytes(key, value);
        hasher.add(key, value);
        true
    })?;
    source
        .view
        .scan(Table::Meta, &[], None, &mut |key, value| {
            meta_entries += 1;
            entries += entry_bytes(key, value);
            true
        })?;
    let header = SnapshotHeader {
        revision: source.revision,
        compact_revision: source.compact_revision,
        kv_hash: hasher.finish(),
        kv_records,
        meta_entries,
        member_id: source.member_id,
        cluster_id: source.cluster_id,
        raft_applied_index: source.raft_applied_index,
        created_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        skiff_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let header_bytes = postcard::to_stdvec(&header)
        .map_err(|e| SnapshotError::Io(format!("encode snapshot header: {e}")))?;
    let raw = MAGIC.len() as u64 + 4 + 4 + header_bytes.len() as u64 + entries + 1;
    Ok(Plan {
        header_bytes,
        content_bytes: raw.div_ceil(ALIGN) * ALIGN,
    })
}

/// Counts and hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Counts what is written through it.
struct Counted<'a> {
    out: &'a mut dyn Write,
    written: u64,
}

impl Counted<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn entry(&mut self, tag: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.put(&[tag])?;
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)
    }
}

/// Write the content (everything but the trailer) of a planned snapshot.
fn write_content(
    source: &Source<'_>,
    plan: &Plan,
    out: &mut dyn Write,
) -> Result<(), SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io(format!("write snapshot: {e}"));
    let mut out = Counted { out, written: 0 };
    out.put(MAGIC).map_err(io)?;
    out.put(&FORMAT_VERSION.to_be_bytes()).map_err(io)?;
    out.put(&(plan.header_bytes.len() as u32).to_be_bytes())
        .map_err(io)?;
    out.put(&plan.header_bytes).map_err(io)?;
    for (table, tag) in [(Table::Kv, TAG_KV), (Table::Meta, TAG_META)] {
        let mut failure = None;
        source.view.scan(
            table,
            &[],
            None,
            &mut |key, value| match out.entry(tag, key, value) {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(io(e));
        }
    }
    out.put(&[TAG_END]).map_err(io)?;
    let padding = plan.content_bytes.checked_sub(out.written).ok_or_else(|| {
        SnapshotError::Io(format!(
            "snapshot content grew while being written ({} > {} bytes)",
            out.written, plan.content_bytes
        ))
    })?;
    out.put(&vec![0u8; padding as usize]).map_err(io)?;
    Ok(())
}

/// Write a whole snapshot file (content and trailer) of `source` to `out`; returns the
/// header written.
pub fn write_snapshot(
    source: &Source<'_>,
    out: &mut dyn Write,
) -> Result<SnapshotHeader, SnapshotError> {
    let plan = plan(source)?;
    let mut hashing = HashingWriter::new(&mut *out);
    write_content(source, &plan, &mut hashing)?;
    let digest = hashing.hasher.finalize();
    out.write_all(&digest)
        .and_then(|()| out.flush())
        .map_err(|e| SnapshotError::Io(format!("write snapshot: {e}")))?;
    postcard::from_bytes(&plan.header_bytes)
        .map_err(|e| SnapshotError::Io(format!("snapshot header: {e}")))
}

/// Sends the content as `SnapshotResponse` chunks of [`CHUNK_BYTES`], each with the bytes
/// still to come (the trailer excluded, as etcd counts).
struct ChunkSender<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
    buf: Vec<u8>,
    sent: u64,
    total: u64,
    /// The first chunk carries the response header and the version.
    first: Option<(skiff_proto::etcdserverpb::ResponseHeader, String)>,
}

impl ChunkSender<'_> {
    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.sent += blob.len() as u64;
        let (header, version) = self.first.take().unzip();
        let response = SnapshotResponse {
            header,
            remaining_bytes: self.total.saturating_sub(self.sent),
            blob,
            version: version.unwrap_or_default(),
        };
        self.tx.blocking_send(Ok(response)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl Write for ChunkSender<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Maintenance `Snapshot` stream of this member: a consistent point-in-time snapshot
/// produced by a blocking task, 32 KiB at a time (bounded by a small channel, so a slow
/// client slows the producer instead of buffering the file in memory), then the SHA-256.
pub fn stream(
    node: Arc<StoreNode>,
) -> Result<tokio_stream::wrappers::ReceiverStream<Result<SnapshotResponse, Status>>, Error> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match send_snapshot(&node, &tx) {
            Ok(header) => tracing::info!(
                revision = header.revision,
                kv_records = header.kv_records,
                took = ?started.elapsed(),
                "sent a snapshot"
            ),
            Err(err) => {
                tracing::warn!("snapshot stream: {err}");
                let _ = tx.blocking_send(Err(Error::from(err).into()));
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn send_snapshot(
    node: &StoreNode,
    tx: &tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<SnapshotHeader, SnapshotError> {
    let sm = &node.sm;
    let (view, revision, compact_revision, applied) = {
        let state = sm.read();
        (
            sm.engine().read()?,
            state.mvcc.current_revision(),
            state.mvcc.compact_main_revision(),
            state.last_applied.map(|id| id.index).unwrap_or(0),
        )
    };
    let source = Source {
        view: view.as_ref(),
        revision,
        compact_revision,
        member_id: node.id,
        cluster_id: node.cluster_id,
        raft_applied_index: applied,
    };
    let plan = plan(&source)?;
    let mut sender = ChunkSender {
        tx,
        buf: Vec::with_capacity(CHUNK_BYTES),
        sent: 0,
        total: plan.content_bytes,
        first: Some((
            node.header(revision),
            crate::grpc::ETCD_CLUSTER_VERSION.to_string(),
        )),
    };
    let mut hashing = HashingWriter::new(&mut sender);
    write_content(&source, &plan, &mut hashing)?;
    let HashingWriter {
        hasher, written, ..
    } = hashing;
    sender
        .send_buffered()
        .map_err(|e| SnapshotError::Io(format!("send snapshot: {e}")))?;
    if written != plan.content_bytes {
        return Err(SnapshotError::Io(format!(
            "snapshot size changed while being sent ({written} != {} bytes)",
            plan.content_bytes
        )));
    }
    tx.blocking_send(Ok(SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: hasher.finalize().to_vec(),
        version: String::new(),
    }))
    .map_err(|_| SnapshotError::Io("send snapshot: the client went away".into()))?;
    postcard::from_bytes(&plan.header_bytes)
        .map_err(|e| SnapshotError::Io(format!("snapshot header: {e}")))
}

// ---------------------------------------------------------------------------
// Reading

/// What reading a whole snapshot file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub header: SnapshotHeader,
    /// Bytes of content (the file without its 32-byte trailer).
    pub content_bytes: u64,
    /// Whether the SHA-256 trailer was checked (false only with `skip_hash_check`).
    pub hash_checked: bool,
}

/// Reports progress (bytes read so far, total) every MiB or so.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Receives every entry of a snapshot file: its table, key and value.
pub type EntrySink<'a> = &'a mut dyn FnMut(Table, &[u8], &[u8]) -> Result<(), SnapshotError>;

/// A reader that hashes and counts what it reads, and reports progress.
struct Tracked<'p, R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    /// Progress already made by an earlier pass over the file.
    base: u64,
    total: u64,
    reported: u64,
    progress: Progress<'p>,
}

impl<'p, R: Read> Tracked<'p, R> {
    fn new(inner: R, base: u64, total: u64, progress: Progress<'p>) -> Self {
        Tracked {
            inner,
            hasher: Sha256::new(),
            read: 0,
            base,
            total,
            reported: 0,
            progress,
        }
    }
}

impl<R: Read> Read for Tracked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read - self.reported >= 1 << 20 || n == 0 {
            self.reported = self.read;
            (self.progress)(self.base + self.read, self.total);
        }
        Ok(n)
    }
}

/// Read and check a snapshot file: first its SHA-256 trailer (unless `skip_hash_check`),
/// then, handing every entry to `on_entry` in file order, the
/// magic, the format version, the header, every entry, the padding, the record count and
/// KV hash the header announces, and (unless `skip_hash_check`) the SHA-256 trailer.
/// Entries are handed over before the trailer is checked: a caller that writes them must
/// discard what it wrote when this returns an error.
pub fn read_snapshot(
    path: &Path,
    skip_hash_check: bool,
    progress: Progress<'_>,
    on_entry: EntrySink<'_>,
) -> Result<SnapshotInfo, SnapshotError> {
    let shown = path.display().to_string();
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: shown.clone(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| io_err("open snapshot", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| io_err("stat snapshot", path, e))?
        .len();
    let has_hash = size % ALIGN == TRAILER_BYTES;
    if !has_hash && !skip_hash_check {
        return Err(SnapshotError::MissingHash);
    }
    let content_bytes = if has_hash { size - TRAILER_BYTES } else { size };
    let check_hash = has_hash && !skip_hash_check;
    let total = if check_hash {
        2 * content_bytes
    } else {
        content_bytes
    };
    if check_hash {
        // Pass 1: the trailer, before anything else is believed.
        let mut reader = Tracked::new(
            BufReader::with_capacity(1 << 20, (&mut file).take(content_bytes)),
            0,
            total,
            &mut *progress,
        );
        std::io::copy(&mut reader, &mut std::io::sink())
            .map_err(|e| io_err("read snapshot", path, e))?;
        if reader.read != content_bytes {
            return Err(corrupt("truncated".into()));
        }
        let actual = reader.hasher.finalize();
        let mut expected = [0u8; TRAILER_BYTES as usize];
        file.read_exact(&mut expected)
            .map_err(|e| io_err("read snapshot trailer of", path, e))?;
        if expected[..] != actual[..] {
            return Err(SnapshotError::HashMismatch {
                path: shown.clone(),
                expected: hex(&expected),
                actual: hex(&actual),
            });
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_err("read snapshot", path, e))?;
    }
    // Pass 2: the content.
    let base = total - content_bytes;
    let mut reader = Tracked::new(
        BufReader::with_capacity(1 << 20, (&mut file).take(content_bytes)),
        base,
        total,
        progress,
    );
    let eof = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt("truncated".into())
        } else {
            SnapshotError::Io(format!("read snapshot {shown}: {e}"))
        }
    };
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(eof)?;
    if &magic != MAGIC {
        return Err(corrupt("not a skiff snapshot (bad magic)".into()));
    }
    let version = read_u32(&mut reader).map_err(eof)?;
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "snapshot format version {version} is not supported by this build (it reads version {FORMAT_VERSION})"
        )));
    }
    let header_len = read_u32(&mut reader).map_err(eof)?;
    if header_len > MAX_HEADER_BYTES {
        return Err(corrupt(format!("header of {header_len} bytes")));
    }
    let mut header_bytes = vec![0u8; header_len as usize];
    reader.read_exact(&mut header_bytes).map_err(eof)?;
    let header: SnapshotHeader =
        postcard::from_bytes(&header_bytes).map_err(|e| corrupt(format!("bad header: {e}")))?;

    let mut kv_records = 0u64;
    let mut meta_entries = 0u64;
    let mut hasher = RecordHasher::new();
    let mut key = Vec::new();
    let mut value = Vec::new();
    loop {
        let mut tag = [0u8; 1];
        reader.read_exact(&mut tag).map_err(eof)?;
        let table = match tag[0] {
            TAG_END => break,
            TAG_KV => Table::Kv,
            TAG_META => Table::Meta,
            other => return Err(corrupt(format!("unknown entry tag {other}"))),
        };
        for buf in [&mut key, &mut value] {
            let len = u64::from(read_u32(&mut reader).map_err(eof)?);
            if len > content_bytes {
                return Err(corrupt(format!("entry of {len} bytes")));
            }
            buf.resize(len as usize, 0);
            reader.read_exact(buf).map_err(eof)?;
        }
        if table == Table::Kv {
            if meta_entries > 0 {
                return Err(corrupt("KV record after the metadata".into()));
            }
            if record_revision(&key).is_none_or(|rev| rev > header.revision) {
                return Err(corrupt("KV record beyond the snapshot's revision".into()));
            }
            kv_records += 1;
            hasher.add(&key, &value);
        } else {
            meta_entries += 1;
        }
        on_entry(table, &key, &value)?;
    }
    // The rest is padding.
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .map_err(|e| SnapshotError::Io(format!("read snapshot {shown}: {e}")))?;
    if rest.iter().any(|b| *b != 0) {
        return Err(corrupt("data after the end of the entries".into()));
    }
    if reader.read != content_bytes {
        return Err(corrupt("truncated".into()));
    }
    if kv_records != header.kv_records || meta_entries != header.meta_entries {
        return Err(corrupt(format!(
            "{kv_records} KV records and {meta_entries} metadata entries, the header announces {} and {}",
            header.kv_records, header.meta_entries
        )));
    }
    if hasher.finish() != header.kv_hash {
        return Err(corrupt("KV hash differs from the header's".into()));
    }
    Ok(SnapshotInfo {
        header,
        content_bytes,
        hash_checked: check_hash,
    })
}

fn read_u32(reader: &mut impl Read) -> std::io::Result<u32> {
    let mut bytes = [0u8; 4];
    reader.read_exact(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// snapshot status

/// `snapshot status`, with etcdutl's fields and JSON names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotStatus {
    /// The HashKV hash at `revision`.
    pub hash: u32,
    pub revision: Revision,
    /// Every entry stored (MVCC records plus metadata), as etcd counts every bucket key.
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    /// Bytes of the snapshot without its SHA-256 trailer.
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Read and verify a snapshot file and summarise it.
pub fn status(path: &Path, progress: Progress<'_>) -> Result<SnapshotStatus, SnapshotError> {
    let info = read_snapshot(path, false, progress, &mut |_, _, _| Ok(()))?;
    Ok(SnapshotStatus {
        hash: info.header.kv_hash,
        revision: info.header.revision,
        total_key: info.header.kv_records + info.header.meta_entries,
        total_size: info.content_bytes,
    })
}

/// `-w` of `snapshot status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    Simple,
    Table,
    Json,
}

impl std::str::FromStr for StatusFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "simple" => Ok(StatusFormat::Simple),
            "table" => Ok(StatusFormat::Table),
            "json" => Ok(StatusFormat::Json),
            other => Err(format!(
                "unsupported output format {other:?} (simple, table or json)"
            )),
        }
    }
}

/// Render like etcdutl: `simple` is one comma-separated line, `table` a box, `json` one
/// object. Ends with a newline.
pub fn render_status(status: &SnapshotStatus, format: StatusFormat) -> String {
    let cells = [
        format!("{:x}", status.hash),
        status.revision.to_string(),
        status.total_key.to_string(),
        human_bytes(status.total_size),
    ];
    match format {
        StatusFormat::Simple => format!("{}\n", cells.join(", ")),
        StatusFormat::Json => format!(
            "{}\n",
            serde_json::to_string(status).unwrap_or_else(|_| "{}".into())
        ),
        StatusFormat::Table => {
            let titles = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = titles
                .iter()
                .zip(&cells)
                .map(|(t, c)| t.len().max(c.len()))
                .collect();
            let rule = format!(
                "+{}+\n",
                widths
                    .iter()
                    .map(|w| "-".repeat(w + 2))
                    .collect::<Vec<_>>()
                    .join("+")
            );
            let titles: Vec<String> = titles
                .iter()
                .zip(&widths)
                .map(|(t, w)| format!(" {t:^w$} "))
                .collect();
            let cells: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!(" {c:>w$} "))
                .collect();
            format!(
                "{rule}|{}|\n{rule}|{}|\n{rule}",
                titles.join("|"),
                cells.join("|")
            )
        }
    }
}

/// go-humanize's `Bytes` (SI units), as etcdutl prints sizes: "307 kB", "2.1 MB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exp = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exp = exp.min(UNITS.len() - 1);
    let value = (bytes as f64 / 1000f64.powi(exp as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exp])
    } else {
        format!("{value:.0} {}", UNITS[exp])
    }
}

// ---------------------------------------------------------------------------
// snapshot restore

/// `snapshot restore` options, with etcdutl's flag meanings.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The new member's name (`--name`).
    pub name: String,
    /// Where to create the member's data dir (`--data-dir`); must not exist or be empty.
    pub data_dir: PathBuf,
    /// The NEW cluster, name → peer URLs (`--initial-cluster`).
    pub initial_cluster: std::collections::BTreeMap<String, Vec<String>>,
    pub initial_cluster_token: String,
    /// This member's peer URLs (`--initial-advertise-peer-urls`).
    pub initial_advertise_peer_urls: Vec<String>,
    /// Accept a file without (or with a wrong) SHA-256 trailer (`--skip-hash-check`).
    pub skip_hash_check: bool,
}

/// What a restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub member_id: MemberId,
    pub cluster_id: u64,
    pub revision: Revision,
    pub kv_records: u64,
    pub data_dir: PathBuf,
}

/// Entries written per engine batch while restoring.
const RESTORE_BATCH_BYTES: usize = 8 << 20;

/// Build a new member's data dir from a snapshot file: the key-value state of the
/// snapshot, a fresh identity in the NEW cluster (the IDs `skiff store` derives for a new
/// cluster from the same flags) and that cluster's membership, for Raft to be initialised
/// with when the member first starts. No Raft log and no applied index are written: Raft
/// starts empty and the restored revisions carry on.
pub fn restore(
    snapshot: &Path,
    options: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<Restored, SnapshotError> {
    let mut config = StoreConfig::single(&options.name);
    config.data_dir = options.data_dir.clone();
    config.initial_cluster = options.initial_cluster.clone();
    config.initial_cluster_token = options.initial_cluster_token.clone();
    config.initial_advertise_peer_urls = options.initial_advertise_peer_urls.clone();
    config.listen_peer_urls = options.initial_advertise_peer_urls.clone();
    config.initial_cluster_state = ClusterState::New;
    config.validate().map_err(|e| SnapshotError::Config(e.0))?;
    let data_dir = &options.data_dir;
    let existed = data_dir.exists();
    if existed {
        let empty = std::fs::read_dir(data_dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(SnapshotError::Config(format!(
                "data-dir {:?} exists",
                data_dir.display().to_string()
            )));
        }
    }
    let engine_path = crate::server::engine_path(data_dir);
    let member_dir = engine_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.clone());
    for dir in [data_dir.as_path(), member_dir.as_path()] {
        crate::fsutil::create_private_dir(dir).map_err(|e| io_err("create data dir", dir, e))?;
    }
    let result = restore_into(snapshot, options, &config, &engine_path, progress);
    if result.is_err() {
        // Leave nothing half-restored behind.
        let _ = if existed {
            std::fs::remove_dir_all(&member_dir)
        } else {
            std::fs::remove_dir_all(data_dir)
        };
    }
    result
}

fn restore_into(
    snapshot: &Path,
    options: &RestoreOptions,
    config: &StoreConfig,
    engine_path: &Path,
    progress: Progress<'_>,
) -> Result<Restored, SnapshotError> {
    let engine = RedbEngine::open(engine_path)?;
    let mut batch = WriteBatch::new();
    let mut batch_bytes = 0usize;
    let info = read_snapshot(
        snapshot,
        options.skip_hash_check,
        progress,
        &mut |table, key, value| {
            if table == Table::Meta && is_cluster_meta(key) {
                return Ok(());
            }
            batch.put(table, key, value);
            batch_bytes += key.len() + value.len() + 16;
            if batch_bytes >= RESTORE_BATCH_BYTES {
                engine.write(std::mem::take(&mut batch), Durability::Buffered)?;
                batch_bytes = 0;
            }
            Ok(())
        },
    )?;
    // The new cluster's membership, as if Raft had been initialised with it and had
    // applied that first entry (index 0, the log id `Raft::initialize` gives it) and then
    // purged it into a snapshot. Raft starts with an empty log at that point: openraft
    // takes the applied index as purged, so a member added later gets the restored state
    // as a Raft snapshot rather than a log replay that would miss it.
    let (identity, members) = crate::server::new_cluster_identity(config);
    let applied = LogId::new(CommittedLeaderId::new(0, 0), 0);
    let voters: BTreeSet<MemberId> = members.keys().copied().collect();
    let membership = StoredMembership::new(Some(applied), Membership::new(vec![voters], members));
    batch.put(Table::Meta, KEY_APPLIED, encode(&Some(applied)));
    batch.put(Table::Meta, KEY_MEMBERSHIP, encode(&membership));
    engine.write(batch, Durability::Buffered)?;
    // Durable: makes every buffered batch above durable too.
    crate::server::write_identity(&engine, &identity, None)
        .map_err(|e| SnapshotError::Io(format!("write identity: {e}")))?;
    Ok(Restored {
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
        revision: info.header.revision,
        kv_records: info.header.kv_records,
        data_dir: options.data_dir.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemEngine;
    use crate::maintenance::kv_hash;
    use crate::mvcc::Mvcc;
    use skiff_proto::etcdserverpb::{PutRequest, RangeRequest};

    /// A MemEngine holding `n` puts (plus an overwrite and a delete) applied through Mvcc.
    fn store(n: usize) -> (MemEngine, Mvcc) {
        let engine = MemEngine::new();
        let mut mvcc = Mvcc::default();
        for i in 0..n {
            let mut batch = WriteBatch::new();
            let req = PutRequest {
                key: format!("key/{i:05}").into_bytes(),
                value: format!("value {i}").into_bytes(),
                ..Default::default()
            };
            mvcc.put(&req, &mut batch).unwrap();
            engine.write(batch, Durability::Buffered).unwrap();
        }
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Meta,
            b"mvcc/current_revision".to_vec(),
            mvcc.current_revision().to_be_bytes().to_vec(),
        );
        batch.put(
            Table::Meta,
            crate::state_machine::KEY_APPLIED.to_vec(),
            b"old cluster".to_vec(),
        );
        batch.put(
            Table::Meta,
            crate::maintenance::KEY_ALARMS.to_vec(),
            b"old alarms".to_vec(),
        );
        engine.write(batch, Durability::Durable).unwrap();
        (engine, mvcc)
    }

    fn snapshot_bytes(engine: &MemEngine, mvcc: &Mvcc) -> (Vec<u8>, SnapshotHeader) {
        let view = engine.read().unwrap();
        let source = Source {
            view: view.as_ref(),
            revision: mvcc.current_revision(),
            compact_revision: mvcc.compact_main_revision(),
            member_id: 1,
            cluster_id: 2,
            raft_applied_index: 3,
        };
        let mut out = Vec::new();
        let header = write_snapshot(&source, &mut out).unwrap();
        (out, header)
    }

    fn no_progress() -> impl FnMut(u64, u64) {
        |_, _| {}
    }

    #[test]
    fn file_is_aligned_like_etcd_and_reads_back() {
        let (engine, mvcc) = store(300);
        let (bytes, header) = snapshot_bytes(&engine, &mvcc);
        assert_eq!(bytes.len() as u64 % 512, 32);
        assert_eq!(&bytes[..8], MAGIC);
        let digest = Sha256::digest(&bytes[..bytes.len() - 32]);
        assert_eq!(&bytes[bytes.len() - 32..], &digest[..]);
        assert_eq!(header.revision, 301);
        assert_eq!(header.kv_records, 300);
        assert_eq!(
            header.kv_hash,
            kv_hash(engine.read().unwrap().as_ref(), 301).unwrap()
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.db");
        std::fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        let info = read_snapshot(&path, false, &mut no_progress(), &mut |t, k, v| {
            seen.push((t, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(info.header, header);
        assert!(info.hash_checked);
        assert_eq!(seen.iter().filter(|(t, _, _)| *t == Table::Kv).count(), 300);
        assert_eq!(seen.len(), 303);

        let status = status(&path, &mut no_progress()).unwrap();
        assert_eq!(status.revision, 301);
        assert_eq!(status.total_key, 303);
        assert_eq!(status.total_size, bytes.len() as u64 - 32);
        assert_eq!(status.hash, header.kv_hash);
    }

    #[test]
    fn damaged_files_are_refused() {
        let (engine, mvcc) = store(50);
        let (bytes, _) = snapshot_bytes(&engine, &mvcc);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.db");

        // One flipped bit in the content: the trailer no longer matches.
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let err = status(&path, &mut no_progress()).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::HashMismatch { .. } | SnapshotError::Corrupt { .. }
            ),
            "{err}"
        );
        // The same flip with --skip-hash-check is still caught by the KV hash or parsing.
        assert!(read_snapshot(&path, true, &mut no_progress(), &mut |_, _, _| Ok(())).is_err());

        // A flipped bit in the trailer itself.
        let mut trailer = bytes.clone();
        let last = trailer.len() - 1;
        trailer[last] ^= 1;
        std::fs::write(&path, &trailer).unwrap();
        assert!(matches!(
            status(&path, &mut no_progress()).unwrap_err(),
            SnapshotError::HashMismatch { .. }
        ));

        // Truncated: no hash at the expected place.
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(
            status(&path, &mut no_progress()).unwrap_err(),
            SnapshotError::MissingHash
        ));

        // Junk with a wrong trailer: the trailer is checked first.
        std::fs::write(&path, vec![7u8; 512 + 32]).unwrap();
        let err = status(&path, &mut no_progress()).unwrap_err();
        assert!(matches!(err, SnapshotError::HashMismatch { .. }), "{err}");
        // Junk with a right trailer: not a snapshot at all.
        let mut junk = vec![7u8; 512];
        junk.extend_from_slice(&Sha256::digest(&junk));
        std::fs::write(&path, &junk).unwrap();
        let err = status(&path, &mut no_progress()).unwrap_err();
        assert!(err.to_string().contains("not a skiff snapshot"), "{err}");
    }

    fn restore_options(dir: &Path, name: &str) -> RestoreOptions {
        let cluster: std::collections::BTreeMap<String, Vec<String>> =
            [("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:2")]
                .into_iter()
                .map(|(n, u)| (n.to_string(), vec![u.to_string()]))
                .collect();
        RestoreOptions {
            name: name.into(),
            data_dir: dir.join(format!("{name}.skiff")),
            initial_advertise_peer_urls: cluster[name].clone(),
            initial_cluster: cluster,
            initial_cluster_token: "restored".into(),
            skip_hash_check: false,
        }
    }

    #[test]
    fn restore_writes_the_state_and_a_new_identity() {
        let (engine, mvcc) = store(120);
        let (bytes, header) = snapshot_bytes(&engine, &mvcc);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.db");
        std::fs::write(&path, &bytes).unwrap();

        let a = restore(&path, &restore_options(dir.path(), "a"), &mut no_progress()).unwrap();
        let b = restore(&path, &restore_options(dir.path(), "b"), &mut no_progress()).unwrap();
        assert_ne!(a.member_id, b.member_id);
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.revision, header.revision);

        // The same IDs `skiff store` derives for a new cluster from the same flags.
        let mut config = StoreConfig::single("a");
        let options = restore_options(dir.path(), "a");
        config.initial_cluster = options.initial_cluster.clone();
        config.initial_cluster_token = options.initial_cluster_token.clone();
        config.initial_advertise_peer_urls = options.initial_advertise_peer_urls.clone();
        let (identity, members) = crate::server::new_cluster_identity(&config);
        assert_eq!(identity.member_id, a.member_id);
        assert_eq!(identity.cluster_id, a.cluster_id);
        assert_eq!(members.len(), 2);

        let restored = RedbEngine::open(&crate::server::engine_path(&a.data_dir)).unwrap();
        let view = restored.read().unwrap();
        assert_eq!(
            kv_hash(view.as_ref(), header.revision).unwrap(),
            header.kv_hash
        );
        // Cluster metadata of the old cluster is gone, the key-value state is there.
        assert_ne!(
            view.get(Table::Meta, KEY_APPLIED).unwrap().as_deref(),
            Some(&b"old cluster"[..])
        );
        assert_eq!(
            view.get(Table::Meta, crate::maintenance::KEY_ALARMS)
                .unwrap(),
            None
        );
        assert!(
            view.get(Table::RaftMeta, b"bootstrap_members")
                .unwrap()
                .is_none()
        );
        let applied: Option<LogId> =
            crate::raft_log::decode(&view.get(Table::Meta, KEY_APPLIED).unwrap().unwrap()).unwrap();
        assert_eq!(applied.map(|id| id.index), Some(0));
        let membership: StoredMembership =
            crate::raft_log::decode(&view.get(Table::Meta, KEY_MEMBERSHIP).unwrap().unwrap())
                .unwrap();
        assert_eq!(membership.membership().voter_ids().count(), 2);
        assert!(membership.membership().get_node(&a.member_id).is_some());
        assert_eq!(view.first(Table::RaftLog).unwrap(), None);
        let loaded = Mvcc::load(view.as_ref()).unwrap();
        assert_eq!(loaded.current_revision(), header.revision);
        let all = loaded
            .range(&RangeRequest {
                key: b"key/".to_vec(),
                range_end: b"key0".to_vec(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.count, 120);
        drop(view);
        drop(restored);

        // A data dir that exists is refused, and left alone.
        let err =
            restore(&path, &restore_options(dir.path(), "a"), &mut no_progress()).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        assert!(crate::server::engine_path(&a.data_dir).exists());
    }

    #[test]
    fn a_corrupt_snapshot_leaves_no_data_dir() {
        let (engine, mvcc) = store(40);
        let (mut bytes, _) = snapshot_bytes(&engine, &mvcc);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.db");
        let len = bytes.len();
        bytes[len - 40] ^= 0xff; // in the padding: only the trailer catches it
        std::fs::write(&path, &bytes).unwrap();
        let options = restore_options(dir.path(), "a");
        let err = restore(&path, &options, &mut no_progress()).unwrap_err();
        assert!(
            err.to_string().contains("SHA-256 mismatch")
                || err.to_string().contains("after the end"),
            "{err}"
        );
        assert!(!options.data_dir.exists());
        // A name not in the initial cluster is refused before anything is written.
        let mut bad = restore_options(dir.path(), "a");
        bad.name = "zzz".into();
        assert!(restore(&path, &bad, &mut no_progress()).is_err());
        assert!(!bad.data_dir.exists());
    }

    #[test]
    fn status_renders_like_etcdutl() {
        let status = SnapshotStatus {
            hash: 0x12813b0a,
            revision: 67,
            total_key: 70,
            total_size: 307200,
        };
        assert_eq!(
            render_status(&status, StatusFormat::Simple),
            "12813b0a, 67, 70, 307 kB\n"
        );
        assert_eq!(
            render_status(&status, StatusFormat::Json),
            "{\"hash\":310459146,\"revision\":67,\"totalKey\":70,\"totalSize\":307200}\n"
        );
        assert_eq!(
            render_status(&status, StatusFormat::Table),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | 12813b0a |       67 |         70 |     307 kB |\n\
             +----------+----------+------------+------------+\n"
        );
        assert_eq!(human_bytes(2101248), "2.1 MB");
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
    }
}
