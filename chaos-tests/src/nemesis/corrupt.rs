//! The `corrupt` nemesis's pure parts (issue 11): skiff's WAL on disk, which bytes to flip, how
//! a member says it refuses a damaged log, and the `corruption` check over the journal.
//!
//! The WAL of a member is `<data-dir>/member/wal/`: segment files `<20-digit first index>.wal`
//! of records `[len u32 LE][crc32 u32 LE][postcard entry]`, ending at a zero length (space ahead
//! is zero-prefilled), and the **sync mark** `sync-mark` (`first index u64 LE, size u64 LE,
//! crc32 u32 LE` of those 16 bytes): every segment before `first index` was synced whole, the
//! one starting there up to `size` bytes (`store/src/wal.rs`). A byte flipped inside a record
//! the mark covers is damage to data the member synced and acknowledged: the store must refuse
//! to start (`storage corrupt: wal segment <file> is damaged at offset N: ...`), never drop it as
//! a torn tail. Flips are chosen only there, so a member that starts anyway is a finding
//! (`started-on-corrupt-wal`), never the legitimate repair of a torn write.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::history::{History, Op, Process, Value};
use crate::results::{CheckResult, Validity};

/// The WAL directory inside a member's data directory.
pub const WAL_DIR: &str = "member/wal";
/// The sync mark's file name in the WAL directory.
pub const SYNC_MARK: &str = "sync-mark";
/// Record header: length and checksum.
const HEADER: u64 = 8;
/// The store's own limit on one record (a longer length is damage, ends the scan).
const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;
/// Most bytes one fault flips in one member's WAL.
pub const MAX_FLIPS: usize = 8;
/// Fewest synced records a segment needs to be damaged (fewer: a member just re-added).
pub const MIN_RECORDS: usize = 4;
/// Without a readable sync mark, only the first this-much of the records are taken as synced.
const UNMARKED_SYNCED_FRACTION: f64 = 0.9;
/// The history `f` of a corrupt fault's start event.
pub const START_EVENT: &str = "corrupt-wal";
/// The history `f` of a corrupt fault's end event.
pub const END_EVENT: &str = "recover-member";

/// Why a WAL could not be damaged.
#[derive(Debug, thiserror::Error)]
pub enum CorruptError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No segment holds enough synced records.
    #[error("no wal segment in {0} holds {MIN_RECORDS} synced records")]
    NothingSynced(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CorruptError + '_ {
    move |source| CorruptError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// CRC-32 (IEEE, as `crc32fast`), bitwise: only the 16 bytes of a sync mark are ever hashed.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// How far the member's last WAL sync reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMark {
    /// Segments before this first index were synced whole.
    pub first_index: u64,
    /// Bytes synced of the segment starting at `first_index`.
    pub size: u64,
}

impl SyncMark {
    /// The mark in `data`, `None` if short or its checksum fails.
    pub fn decode(data: &[u8]) -> Option<SyncMark> {
        let data = data.get(..20)?;
        let crc = u32::from_le_bytes(data[16..20].try_into().ok()?);
        if crc32(&data[..16]) != crc {
            return None;
        }
        Some(SyncMark {
            first_index: u64::from_le_bytes(data[..8].try_into().ok()?),
            size: u64::from_le_bytes(data[8..16].try_into().ok()?),
        })
    }

    /// The encoding the store writes (for tests).
    pub fn encode(self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.first_index.to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        let crc = crc32(&out[..16]);
        out[16..].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

/// One record of a segment: where it starts and its length with the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Offset of its header.
    pub offset: u64,
    /// Header plus payload.
    pub len: u64,
}

impl Record {
    /// One past its last byte.
    pub fn end(self) -> u64 {
        self.offset + self.len
    }
}

/// Walks the record headers of a segment (no checksums): every record up to a zero length, a
/// length over the limit, or a record cut short by the end of the data.
pub fn scan_records(data: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0u64;
    let total = data.len() as u64;
    while at + HEADER <= total {
        let i = at as usize;
        let len = u64::from(u32::from_le_bytes([
            data[i],
            data[i + 1],
            data[i + 2],
            data[i + 3],
        ]));
        if len == 0 || len > MAX_RECORD_BYTES || at + HEADER + len > total {
            break;
        }
        out.push(Record {
            offset: at,
            len: HEADER + len,
        });
        at += HEADER + len;
    }
    out
}

/// The records of the segment starting at `first_index` that the sync `mark` covers whole.
/// Without a mark, the first 90 % of them.
pub fn synced_records(first_index: u64, records: &[Record], mark: Option<SyncMark>) -> &[Record] {
    let n = match mark {
        Some(m) if first_index < m.first_index => records.len(),
        Some(m) if first_index == m.first_index => {
            records.iter().take_while(|r| r.end() <= m.size).count()
        }
        Some(_) => 0,
        None => (records.len() as f64 * UNMARKED_SYNCED_FRACTION) as usize,
    };
    &records[..n]
}

/// Where in the synced records a fault flips bytes, as fractions of their count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    /// First record (fraction of the synced records).
    pub from: f64,
    /// One past the last record (fraction).
    pub to: f64,
}

/// The middle of the synced records (`corrupt-one`).
pub const MIDDLE: Span = Span { from: 0.1, to: 0.9 };
/// Near the end of the synced records (`corrupt-majority`): the last writes acknowledged
/// before the crash, still well inside what was synced.
pub const NEAR_END: Span = Span {
    from: 0.8,
    to: 0.95,
};

/// Record indices `[lo, hi)` of `span` over `n` records (at least one record when `n > 0`).
pub fn span_indices(n: usize, span: Span) -> (usize, usize) {
    if n == 0 {
        return (0, 0);
    }
    let lo = ((n as f64 * span.from).floor() as usize).min(n - 1);
    let hi = ((n as f64 * span.to).ceil() as usize).clamp(lo + 1, n);
    (lo, hi)
}

/// One byte to flip: `offset` in the segment, XORed with `mask` (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flip {
    /// Byte offset in the segment.
    pub offset: u64,
    /// XOR mask.
    pub mask: u8,
}

/// Chooses `count` (at most [`MAX_FLIPS`]) distinct bytes inside the records of `span`, sorted
/// by offset. Every chosen byte lies inside a record (header or payload), so each damages a
/// synced record when `records` are the synced ones.
pub fn choose_flips(records: &[Record], span: Span, count: usize, rng: &mut impl Rng) -> Vec<Flip> {
    let (lo, hi) = span_indices(records.len(), span);
    let mut out: Vec<Flip> = Vec::new();
    if lo >= hi {
        return out;
    }
    let bytes: u64 = records[lo..hi].iter().map(|r| r.len).sum();
    let want = (count.clamp(1, MAX_FLIPS) as u64).min(bytes) as usize;
    let mut tries = 0;
    while out.len() < want && tries < 16 * MAX_FLIPS {
        tries += 1;
        let r = records[rng.random_range(lo..hi)];
        let offset = rng.random_range(r.offset..r.end());
        if out.iter().any(|f| f.offset == offset) {
            continue;
        }
        out.push(Flip {
            offset,
            mask: rng.random_range(1..=255u8),
        });
    }
    out.sort_by_key(|f| f.offset);
    out
}

/// The damage done to one member's WAL (enough to undo it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// The flipped bytes.
    pub flips: Vec<Flip>,
    /// Synced records in the segment.
    pub synced_records: usize,
    /// Bytes of those records.
    pub synced_bytes: u64,
}

impl Damage {
    /// The segment's file name.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The journal form: `{segment, offsets, synced-records, synced-bytes}`.
    pub fn value(&self) -> Value {
        Value::Map(BTreeMap::from([
            ("segment".to_owned(), Value::Str(self.file_name())),
            (
                "offsets".to_owned(),
                Value::List(
                    self.flips
                        .iter()
                        .map(|f| Value::Int(f.offset as i64))
                        .collect(),
                ),
            ),
            (
                "synced-records".to_owned(),
                Value::Int(self.synced_records as i64),
            ),
            (
                "synced-bytes".to_owned(),
                Value::Int(self.synced_bytes as i64),
            ),
        ]))
    }
}

/// Segment files of a WAL directory, newest first: `(first index, path)`.
fn segments(wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>, CorruptError> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(wal_dir).map_err(io_err(wal_dir))? {
        let item = item.map_err(io_err(wal_dir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if let Some(first) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((first, item.path()));
        }
    }
    out.sort();
    out.reverse();
    Ok(out)
}

/// Flips bytes in the newest segment of a stopped member's WAL that holds at least
/// [`MIN_RECORDS`] synced records, inside `span` of them; fsyncs the file.
pub fn damage(
    wal_dir: &Path,
    span: Span,
    count: usize,
    rng: &mut impl Rng,
) -> Result<Damage, CorruptError> {
    let mark = std::fs::read(wal_dir.join(SYNC_MARK))
        .ok()
        .and_then(|d| SyncMark::decode(&d));
    for (first, path) in segments(wal_dir)? {
        let data = std::fs::read(&path).map_err(io_err(&path))?;
        let records = scan_records(&data);
        let synced = synced_records(first, &records, mark);
        if synced.len() < MIN_RECORDS {
            continue;
        }
        let flips = choose_flips(synced, span, count, rng);
        let d = Damage {
            path: path.clone(),
            flips,
            synced_records: synced.len(),
            synced_bytes: synced.last().map_or(0, |r| r.end()),
        };
        xor(&d.path, &d.flips)?;
        return Ok(d);
    }
    Err(CorruptError::NothingSynced(wal_dir.to_path_buf()))
}

/// Applies (or, applied again, undoes) the flips of `damage`.
pub fn undo(damage: &Damage) -> Result<(), CorruptError> {
    xor(&damage.path, &damage.flips)
}

fn xor(path: &Path, flips: &[Flip]) -> Result<(), CorruptError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    for f in flips {
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, f.offset).map_err(io_err(path))?;
        b[0] ^= f.mask;
        file.write_all_at(&b, f.offset).map_err(io_err(path))?;
    }
    file.sync_all().map_err(io_err(path))
}

/// What a member said when it refused to open its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The file it named (`wal segment <file>`).
    pub file: Option<String>,
    /// The offset it named (`damaged at offset N`).
    pub offset: Option<u64>,
    /// The message from `storage corrupt:` on (one line, at most 400 characters).
    pub message: String,
}

impl Refusal {
    /// Whether it names the segment file `name`.
    pub fn names(&self, name: &str) -> bool {
        self.file
            .as_deref()
            .is_some_and(|f| Path::new(f).file_name().is_some_and(|n| n == name))
    }
}

/// The store's refusal in a member's output (the last `storage corrupt:` line), if any.
pub fn parse_refusal(log: &str) -> Option<Refusal> {
    const MARK: &str = "storage corrupt: ";
    let at = log.rfind(MARK)?;
    let line = log[at..].lines().next().unwrap_or_default();
    let message: String = line.chars().take(400).collect();
    let file = line
        .find("wal segment ")
        .map(|i| &line[i + "wal segment ".len()..])
        .and_then(|rest| rest.split_whitespace().next())
        .map(|s| s.trim_end_matches([':', ';', ',']).to_owned());
    let offset = line
        .find("damaged at offset ")
        .map(|i| &line[i + "damaged at offset ".len()..])
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        });
    Some(Refusal {
        file,
        offset,
        message,
    })
}

/// How a damaged member's restart went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited naming the damaged segment (the expected outcome).
    Refused(Refusal),
    /// It exited without naming the damaged segment.
    Exited {
        /// Its exit status.
        status: String,
        /// The last lines of its output.
        tail: String,
    },
    /// It served requests (or was still running at the deadline) on the damaged log.
    Started {
        /// Milliseconds after the restart.
        after_ms: u64,
        /// It answered a Status request (otherwise it merely kept running).
        answered: bool,
    },
}

impl Outcome {
    /// `refused`, `exited` or `started`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Refused(_) => "refused",
            Outcome::Exited { .. } => "exited",
            Outcome::Started { .. } => "started",
        }
    }

    /// What the member said, for the journal.
    pub fn detail(&self) -> String {
        match self {
            Outcome::Refused(r) => r.message.clone(),
            Outcome::Exited { status, tail } => format!("{status}: {tail}"),
            Outcome::Started { after_ms, answered } => {
                if *answered {
                    format!("served a Status request {after_ms} ms after its restart")
                } else {
                    format!("still running {after_ms} ms after its restart")
                }
            }
        }
    }
}

/// The last `n` non-empty lines of `text`, joined with ` | ` (at most 400 characters).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("===== skiff-chaos"))
        .collect();
    let s = lines[lines.len().saturating_sub(n)..].join(" | ");
    s.chars().take(400).collect()
}

/// The `corruption` check: `None` when the run damaged no WAL. Every damaged member must have
/// refused to start naming the damaged segment: one that started is `started-on-corrupt-wal`,
/// one that exited without saying why is `unexplained-exit-on-corrupt-wal`.
pub fn check(history: &History) -> Option<CheckResult> {
    let mut res = CheckResult::new(Validity::True);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut faults = 0;
    let starts: Vec<&Op> = history
        .ops()
        .iter()
        .filter(|o| o.process == Process::nemesis() && o.f.as_str() == START_EVENT)
        .collect();
    for op in starts {
        let Value::Map(m) = &op.value else { continue };
        let Some(Value::Map(outcomes)) = m.get("outcomes") else {
            continue;
        };
        faults += 1;
        let details = match m.get("details") {
            Some(Value::Map(d)) => d.clone(),
            _ => BTreeMap::new(),
        };
        for (node, outcome) in outcomes {
            let Value::Str(outcome) = outcome else {
                continue;
            };
            *counts.entry(outcome.clone()).or_default() += 1;
            let said = match details.get(node) {
                Some(Value::Str(s)) => s.clone(),
                _ => String::new(),
            };
            let damage = match m.get("damage") {
                Some(Value::Map(d)) => d.get(node).map(|v| v.to_string()).unwrap_or_default(),
                _ => String::new(),
            };
            match outcome.as_str() {
                "started" => res.anomaly(
                    "corruption",
                    "started-on-corrupt-wal",
                    format!(
                        "{node} started on a WAL damaged inside records it had synced ({damage}) instead of refusing: {said}"
                    ),
                    vec![op.clone()],
                ),
                "exited" => res.anomaly(
                    "corruption",
                    "unexplained-exit-on-corrupt-wal",
                    format!(
                        "{node} exited on a damaged WAL ({damage}) without naming the damaged segment: {said}"
                    ),
                    vec![op.clone()],
                ),
                _ => {}
            }
        }
    }
    if faults == 0 {
        return None;
    }
    res.set("faults", faults);
    res.set("outcomes", counts);
    Some(res)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::history::{F, OpType};

    fn segment(payloads: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &n) in payloads.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|j| (i + j) as u8 | 1).collect();
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend_from_slice(&crc32(&payload).to_le_bytes());
            out.extend_from_slice(&payload);
        }
        out
    }

    #[test]
    fn crc_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let m = SyncMark {
            first_index: 1,
            size: 4242,
        };
        assert_eq!(SyncMark::decode(&m.encode()), Some(m));
        let mut bad = m.encode();
        bad[3] ^= 1;
        assert_eq!(SyncMark::decode(&bad), None);
        assert_eq!(SyncMark::decode(&[0; 7]), None);
    }

    #[test]
    fn records_are_walked_to_the_zero_prefill() {
        let mut data = segment(&[10, 3, 200]);
        data.extend_from_slice(&[0; 64]);
        let r = scan_records(&data);
        assert_eq!(
            r,
            vec![
                Record { offset: 0, len: 18 },
                Record {
                    offset: 18,
                    len: 11
                },
                Record {
                    offset: 29,
                    len: 208
                },
            ]
        );
        // A record cut short by the end of the file is not a record.
        assert_eq!(scan_records(&data[..100]).len(), 2);
        assert!(scan_records(&[]).is_empty());
    }

    #[test]
    fn only_records_the_mark_covers_are_synced() {
        let data = segment(&[10, 10, 10, 10]);
        let r = scan_records(&data);
        let mark = |first_index, size| Some(SyncMark { first_index, size });
        // The mark's segment: records ending at or before its size.
        assert_eq!(synced_records(5, &r, mark(5, 54)).len(), 3);
        assert_eq!(synced_records(5, &r, mark(5, 53)).len(), 2);
        // An older segment is synced whole, a newer one not at all.
        assert_eq!(synced_records(1, &r, mark(5, 0)).len(), 4);
        assert_eq!(synced_records(9, &r, mark(5, 1000)).len(), 0);
        // No mark: the first 90 %.
        assert_eq!(synced_records(1, &r, None).len(), 3);
    }

    #[test]
    fn flips_land_inside_the_chosen_records() {
        let data = segment(&vec![40; 100]);
        let records = scan_records(&data);
        assert_eq!(span_indices(100, MIDDLE), (10, 90));
        assert_eq!(span_indices(100, NEAR_END), (80, 95));
        assert_eq!(span_indices(1, NEAR_END), (0, 1));
        assert_eq!(span_indices(4, MIDDLE), (0, 4));
        assert_eq!(span_indices(0, MIDDLE), (0, 0));
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            for span in [MIDDLE, NEAR_END] {
                let flips = choose_flips(&records, span, 3, &mut rng);
                assert_eq!(flips.len(), 3);
                let (lo, hi) = span_indices(records.len(), span);
                let (start, end) = (records[lo].offset, records[hi - 1].end());
                for w in flips.windows(2) {
                    assert!(w[0].offset < w[1].offset);
                }
                for f in &flips {
                    assert!(f.mask != 0);
                    assert!(f.offset >= start && f.offset < end, "{f:?} {start}..{end}");
                }
            }
        }
        let mut rng = StdRng::seed_from_u64(1);
        assert!(choose_flips(&[], MIDDLE, 3, &mut rng).is_empty());
        assert_eq!(
            choose_flips(&records, MIDDLE, 100, &mut rng).len(),
            MAX_FLIPS
        );
    }

    #[test]
    fn damage_flips_synced_bytes_and_undo_restores_them() {
        let dir = std::env::temp_dir().join(format!("skiff-chaos-corrupt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // An old segment synced whole, and the newest with 3 of its records synced (too few).
        let old = segment(&[30; 20]);
        let mut new = segment(&[30; 6]);
        new.extend_from_slice(&[0; 128]);
        std::fs::write(dir.join(format!("{:020}.wal", 1)), &old).unwrap();
        std::fs::write(dir.join(format!("{:020}.wal", 21)), &new).unwrap();
        let mark = SyncMark {
            first_index: 21,
            size: 3 * 38,
        };
        std::fs::write(dir.join(SYNC_MARK), mark.encode()).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let d = damage(&dir, MIDDLE, 3, &mut rng).unwrap();
        assert_eq!(d.file_name(), format!("{:020}.wal", 1));
        assert_eq!(d.synced_records, 20);
        let changed = std::fs::read(&d.path).unwrap();
        let diff: Vec<usize> = (0..old.len()).filter(|&i| old[i] != changed[i]).collect();
        assert_eq!(
            diff,
            d.flips
                .iter()
                .map(|f| f.offset as usize)
                .collect::<Vec<_>>()
        );
        undo(&d).unwrap();
        assert_eq!(std::fs::read(&d.path).unwrap(), old);
        assert_eq!(
            std::fs::read(dir.join(format!("{:020}.wal", 21))).unwrap(),
            new
        );
        // Nothing synced anywhere: refused.
        std::fs::remove_file(dir.join(format!("{:020}.wal", 1))).unwrap();
        assert!(matches!(
            damage(&dir, MIDDLE, 3, &mut rng),
            Err(CorruptError::NothingSynced(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refusals_are_read_from_the_member_output() {
        let log = "===== skiff-chaos: start #2 of n1 =====\n\
            2024 INFO starting\n\
            skiff: internal error: open the raft log: storage corrupt: wal segment \
            /var/tmp/x/n1/member/wal/00000000000000000001.wal is damaged at offset 81234: \
            checksum mismatch (crc mismatch); this member's log cannot be trusted: remove the \
            member from the cluster, delete its data directory and add it back (etcdctl member \
            remove / member add)\n";
        let r = parse_refusal(log).unwrap();
        assert_eq!(
            r.file.as_deref(),
            Some("/var/tmp/x/n1/member/wal/00000000000000000001.wal")
        );
        assert_eq!(r.offset, Some(81_234));
        assert!(r.names("00000000000000000001.wal"));
        assert!(!r.names("00000000000000000002.wal"));
        assert!(r.message.starts_with("storage corrupt: wal segment"));
        assert!(r.message.chars().count() <= 400);
        // Other refusals name the file but no offset.
        let r = parse_refusal(
            "storage corrupt: wal segment /d/00000000000000000009.wal follows a torn record but was synced",
        )
        .unwrap();
        assert_eq!(r.offset, None);
        assert!(r.names("00000000000000000009.wal"));
        assert_eq!(parse_refusal("INFO ready to serve client requests"), None);
        assert_eq!(
            tail("===== skiff-chaos: start #1 =====\na\n\nb\nc\n", 2),
            "b | c"
        );
    }

    fn start_event(outcomes: &[(&str, &str)]) -> Op {
        let map = |f: &dyn Fn(&str) -> Value| {
            Value::Map(
                outcomes
                    .iter()
                    .map(|(n, o)| (n.to_string(), f(o)))
                    .collect(),
            )
        };
        Op::new(
            Process::nemesis(),
            OpType::Info,
            F::from(START_EVENT),
            Value::Map(BTreeMap::from([
                ("mode".to_owned(), Value::Str("corrupt-majority".into())),
                ("outcomes".to_owned(), map(&|o| Value::Str(o.into()))),
                (
                    "details".to_owned(),
                    map(&|o| Value::Str(format!("said {o}"))),
                ),
            ])),
        )
    }

    #[test]
    fn the_check_flags_members_that_did_not_refuse() {
        assert!(check(&History::new()).is_none());
        let ok = check(&History::from_ops(vec![start_event(&[
            ("n1", "refused"),
            ("n2", "refused"),
        ])]))
        .unwrap();
        assert_eq!(ok.valid, Validity::True);
        assert_eq!(ok.details["outcomes"]["refused"], serde_json::json!(2));
        let bad = check(&History::from_ops(vec![start_event(&[
            ("n1", "started"),
            ("n2", "exited"),
            ("n3", "refused"),
        ])]))
        .unwrap();
        assert_eq!(bad.valid, Validity::False);
        let kinds: Vec<&str> = bad.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec!["started-on-corrupt-wal", "unexplained-exit-on-corrupt-wal"]
        );
    }
}
