//! The on-disk store: content-addressed blobs, shared unpacked layers, the JSON index (atomic
//! replace under an `flock`), and garbage collection of content no image uses.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::reference::{is_sha256_digest, parse};
use super::{ImageConfig, ImageError, ImageRecord, ImageStore, unpack};

const INDEX_FILE: &str = "index.json";
const LOCK_FILE: &str = ".lock";
const TMP_PREFIX: &str = ".tmp-";
/// Temp entries of a live pid are still removed after this long (pid reuse, pid 1 agents).
const STALE_TMP_AGE: Duration = Duration::from_secs(24 * 3600);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `index.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub images: Vec<IndexEntry>,
}

/// One image: its public record plus what the store needs for garbage collection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    #[serde(flatten)]
    pub record: ImageRecord,
    pub config_digest: String,
}

impl IndexEntry {
    fn blobs(&self) -> impl Iterator<Item = &String> {
        [&self.record.digest, &self.config_digest]
            .into_iter()
            .chain(self.record.layers.iter())
    }
}

/// An image whose blobs are in the store, ready to be unpacked and recorded.
pub(crate) struct NewImage {
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: ImageConfig,
    /// (digest, media type), base first.
    pub layers: Vec<(String, String)>,
    /// Normalized names.
    pub names: Vec<String>,
}

/// Removes a temp file or directory on drop unless kept.
pub(crate) struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl TempPath {
    pub fn new(path: PathBuf) -> TempPath {
        TempPath { path, keep: false }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Renames it to `dest` and stops cleaning it up.
    pub fn persist(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = match fs::symlink_metadata(&self.path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&self.path),
                Ok(_) => fs::remove_file(&self.path),
                Err(_) => Ok(()),
            };
        }
    }
}

/// Holds the store's `flock` until dropped.
struct Lock(#[allow(dead_code)] File);

pub(crate) fn hex_digest(hasher: Sha256) -> String {
    let bytes = hasher.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in bytes.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    hex_digest(h)
}

/// Digest of a file's contents.
pub(crate) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex_digest(h))
}

fn du(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    let mut total = meta.blocks() * 512;
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            total += du(&e.path());
        }
    }
    total
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The mount table's super options (where overlay lists its `lowerdir=`).
fn mounted_overlay_options() -> String {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return String::new();
    };
    mi.lines()
        .filter_map(|l| l.split_once(" - ").map(|(_, rest)| rest))
        .filter(|rest| rest.starts_with("overlay "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_mounted_lower(options: &str, dir: &Path) -> bool {
    let d = dir.to_string_lossy();
    options.match_indices(d.as_ref()).any(|(i, _)| {
        let end = i + d.len();
        let before_ok = i > 0 && matches!(options.as_bytes()[i - 1], b'=' | b':');
        let after_ok =
            end == options.len() || matches!(options.as_bytes()[end], b':' | b',' | b' ' | b'\n');
        before_ok && after_ok
    })
}

/// The index position `reference` names: a manifest digest, `repo@digest`, or a name.
pub(crate) fn find(index: &Index, reference: &str) -> Result<Option<usize>, ImageError> {
    if is_sha256_digest(reference) {
        return Ok(index
            .images
            .iter()
            .position(|e| e.record.digest == reference));
    }
    let parsed = parse(reference)?;
    let whole = parsed.whole();
    if let Some(i) = index
        .images
        .iter()
        .position(|e| e.record.references.contains(&whole))
    {
        return Ok(Some(i));
    }
    if let Some(d) = parsed.digest() {
        return Ok(index.images.iter().position(|e| e.record.digest == d));
    }
    Ok(None)
}

impl ImageStore {
    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn init(&self) -> Result<(), ImageError> {
        for d in [self.blobs_dir(), self.layers_dir(), self.tmp_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)?;
            self.clean_stale_tmp(&d);
        }
        self.clean_stale_tmp(&self.root);
        Ok(())
    }

    fn clean_stale_tmp(&self, dir: &Path) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        let now = SystemTime::now();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            let dead = pid.is_none_or(|p| p != std::process::id() && !pid_alive(p));
            if dead || old {
                drop(TempPath::new(e.path()));
            }
        }
    }

    /// A fresh temp path inside `dir` (same filesystem as its final place).
    pub(crate) fn tmp_path(&self, dir: &Path, hint: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let hint: String = hint
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        dir.join(format!("{TMP_PREFIX}{}-{n}-{hint}", std::process::id()))
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        match digest.strip_prefix("sha256:") {
            Some(hex) if is_sha256_digest(digest) => Ok(self.blobs_dir().join(hex)),
            _ => Err(ImageError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unsupported digest {digest:?} (only sha256)"),
            ))),
        }
    }

    pub(crate) fn layer_path(&self, digest: &str) -> PathBuf {
        self.layers_dir()
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        Ok(fs::read(self.blob_path(digest)?)?)
    }

    /// Copies `reader` into the blob `expected`, verifying its digest (and size, if given).
    /// An existing blob is kept (the reader is not read).
    pub(crate) fn write_blob(
        &self,
        expected: &str,
        size: Option<u64>,
        mut reader: impl Read,
    ) -> Result<(), ImageError> {
        let dest = self.blob_path(expected)?;
        if dest.is_file() {
            return Ok(());
        }
        let tmp = TempPath::new(self.tmp_path(&self.blobs_dir(), "blob"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp.path())?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n])?;
            total += n as u64;
        }
        f.sync_all()?;
        drop(f);
        let got = hex_digest(h);
        if got != expected {
            return Err(ImageError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("digest mismatch: expected {expected}, got {got}"),
            )));
        }
        if let Some(size) = size
            && size != total
        {
            return Err(ImageError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("size mismatch for {expected}: expected {size}, got {total}"),
            )));
        }
        tmp.persist(&dest)?;
        Ok(())
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub(crate) fn write_blob_bytes(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = sha256_bytes(bytes);
        self.write_blob(&digest, Some(bytes.len() as u64), bytes)?;
        Ok(digest)
    }

    /// Moves a downloaded temp file into place after checking its digest.
    pub(crate) fn persist_blob_file(
        &self,
        tmp: TempPath,
        expected: &str,
    ) -> Result<(), ImageError> {
        let dest = self.blob_path(expected)?;
        let got = sha256_file(tmp.path())?;
        if got != expected {
            return Err(ImageError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("digest mismatch: expected {expected}, got {got}"),
            )));
        }
        File::open(tmp.path())?.sync_all()?;
        tmp.persist(&dest)?;
        Ok(())
    }

    /// Unpacks the layer blob `digest` into `layers/<hex>` unless it already is.
    pub(crate) fn ensure_layer(
        &self,
        digest: &str,
        media_type: &str,
    ) -> Result<PathBuf, ImageError> {
        let dir = self.layer_path(digest);
        if dir.is_dir() {
            return Ok(dir);
        }
        let blob = self.blob_path(digest)?;
        if !blob.is_file() {
            return Err(ImageError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {digest} missing"),
            )));
        }
        let tmp = TempPath::new(self.tmp_path(&self.layers_dir(), "layer"));
        fs::DirBuilder::new().mode(0o755).create(tmp.path())?;
        unpack::unpack_layer(&blob, media_type, tmp.path()).map_err(|e| {
            ImageError::Io(io::Error::other(format!("unpacking layer {digest}: {e}")))
        })?;
        match tmp.persist(&dir) {
            Ok(()) => Ok(dir),
            // Someone else unpacked it meanwhile (the temp dir is dropped with its guard).
            Err(_) if dir.is_dir() => Ok(dir),
            Err(e) => Err(e.into()),
        }
    }

    fn lock(&self) -> Result<Lock, ImageError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(LOCK_FILE))?;
        loop {
            // SAFETY: a valid open fd.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Lock(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
    }

    pub(crate) fn load_index(&self) -> Result<Index, ImageError> {
        match fs::read(self.root.join(INDEX_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("image index is corrupt: {e}"),
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e.into()),
        }
    }

    fn save_index(&self, index: &Index) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(index).map_err(io::Error::other)?;
        let tmp = TempPath::new(self.tmp_path(&self.root, "index"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp.path())?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        tmp.persist(&self.root.join(INDEX_FILE))?;
        Ok(())
    }

    /// After a failed pull: removes the blobs and unpacked layers of `digests` that no image in
    /// the index refers to (what that pull wrote), so a pull that ran out of disk or was cut
    /// short leaves nothing behind. Best effort: a failure to remove is only logged.
    pub(crate) fn discard_unreferenced(&self, digests: &[String]) {
        let Ok(_lock) = self.lock() else { return };
        let Ok(index) = self.load_index() else { return };
        let used: std::collections::HashSet<&String> =
            index.images.iter().flat_map(IndexEntry::blobs).collect();
        for digest in digests {
            if used.contains(digest) {
                continue;
            }
            if let Ok(blob) = self.blob_path(digest)
                && let Err(e) = fs::remove_file(&blob)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(%digest, error = %e, "removing a blob of a failed pull");
            }
            let layer = self.layer_path(digest);
            if layer.exists()
                && let Err(e) = fs::remove_dir_all(&layer)
            {
                tracing::warn!(%digest, error = %e, "removing a layer of a failed pull");
            }
        }
    }

    /// Unpacks the layers of `new` and records it (merging with an image of the same digest,
    /// moving its names away from other images, which may become dangling: no names).
    pub(crate) fn commit(&self, new: NewImage) -> Result<ImageRecord, ImageError> {
        for (digest, media_type) in &new.layers {
            self.ensure_layer(digest, media_type)?;
        }
        let _lock = self.lock()?;
        // A concurrent remove may have collected content between the unpack and the lock.
        for d in [&new.manifest_digest, &new.config_digest] {
            if !self.has_blob(d) {
                return Err(ImageError::Io(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("blob {d} was removed meanwhile"),
                )));
            }
        }
        for (d, _) in &new.layers {
            if !self.layer_path(d).is_dir() {
                return Err(ImageError::Io(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("layer {d} was removed meanwhile"),
                )));
            }
        }
        let mut size = 0;
        for d in [&new.manifest_digest, &new.config_digest] {
            size += du(&self.blob_path(d)?);
        }
        for (d, _) in &new.layers {
            size += du(&self.blob_path(d)?) + du(&self.layer_path(d));
        }
        let mut names: Vec<String> = Vec::new();
        for n in new.names {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let mut index = self.load_index()?;
        // A name moves to the new image; an image left without names stays as a dangling
        // record (its containers may still need the layers) until removed by digest.
        for e in index.images.iter_mut() {
            if e.record.digest != new.manifest_digest {
                e.record.references.retain(|r| !names.contains(r));
            }
        }
        let record = ImageRecord {
            references: Vec::new(),
            digest: new.manifest_digest.clone(),
            config: new.config,
            layers: new.layers.iter().map(|(d, _)| d.clone()).collect(),
            size,
        };
        let record = match index
            .images
            .iter_mut()
            .find(|e| e.record.digest == new.manifest_digest)
        {
            Some(e) => {
                for n in names {
                    if !e.record.references.contains(&n) {
                        e.record.references.push(n);
                    }
                }
                e.record.config = record.config;
                e.record.layers = record.layers;
                e.record.size = record.size;
                e.config_digest = new.config_digest;
                e.record.clone()
            }
            None => {
                let mut record = record;
                record.references = names;
                index.images.push(IndexEntry {
                    record: record.clone(),
                    config_digest: new.config_digest,
                });
                record
            }
        };
        self.save_index(&index)?;
        Ok(record)
    }

    /// Deletes the blobs and layer dirs of `gone` that no image of `index` uses.
    fn delete_unshared(&self, index: &Index, gone: &IndexEntry) {
        let used: BTreeSet<&String> = index.images.iter().flat_map(IndexEntry::blobs).collect();
        for d in gone.record.layers.iter() {
            if used.contains(d) {
                continue;
            }
            let dir = self.layer_path(d);
            if dir.is_dir() {
                // Renamed first so a half-deleted layer never looks unpacked.
                let tmp = TempPath::new(self.tmp_path(&self.layers_dir(), "gc"));
                if fs::rename(&dir, tmp.path()).is_err() {
                    std::mem::forget(tmp);
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
        for d in gone.blobs() {
            if !used.contains(d)
                && let Ok(p) = self.blob_path(d)
            {
                let _ = fs::remove_file(p);
            }
        }
    }

    pub(crate) fn remove_reference(&self, reference: &str) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let mut index = self.load_index()?;
        let i =
            find(&index, reference)?.ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let whole = if is_sha256_digest(reference) {
            None
        } else {
            Some(parse(reference)?.whole())
        };
        let by_name = whole
            .as_ref()
            .is_some_and(|w| index.images[i].record.references.contains(w));
        let mut remaining = index.images[i].record.references.clone();
        if let Some(w) = whole.as_ref().filter(|_| by_name) {
            remaining.retain(|r| r != w);
        } else {
            remaining.clear();
        }
        if !remaining.is_empty() {
            index.images[i].record.references = remaining;
            return self.save_index(&index);
        }
        let options = mounted_overlay_options();
        let in_use = index.images[i].record.layers.iter().any(|d| {
            let used_elsewhere = index
                .images
                .iter()
                .enumerate()
                .any(|(j, e)| j != i && e.record.layers.contains(d));
            !used_elsewhere && is_mounted_lower(&options, &self.layer_path(d))
        });
        if in_use {
            return Err(ImageError::InUse(reference.to_string()));
        }
        let gone = index.images.remove(i);
        self.save_index(&index)?;
        self.delete_unshared(&index, &gone);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_lower_matching() {
        let opts = "overlay overlay rw,lowerdir=/s/layers/aa:/s/layers/bb,upperdir=/u,workdir=/w";
        assert!(is_mounted_lower(opts, Path::new("/s/layers/aa")));
        assert!(is_mounted_lower(opts, Path::new("/s/layers/bb")));
        assert!(!is_mounted_lower(opts, Path::new("/s/layers/a")));
        assert!(!is_mounted_lower(opts, Path::new("/s/layers")));
    }

    #[test]
    fn blob_write_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), Default::default()).unwrap();
        let d = store.write_blob_bytes(b"hello").unwrap();
        assert_eq!(
            d,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(store.has_blob(&d));
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(store.write_blob(&wrong, None, &b"x"[..]).is_err());
        assert!(!store.has_blob(&wrong));
        let leftovers: Vec<_> = fs::read_dir(store.blobs_dir()).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
        assert!(store.blob_path("sha256:../../x").is_err());
    }
}
