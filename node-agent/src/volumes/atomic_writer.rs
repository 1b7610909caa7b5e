//! kubelet's AtomicWriter (`pkg/volume/util/atomic_writer.go`): a projected volume's files live in
//! a timestamped directory `..<timestamp>` inside the volume directory, the `..data` symlink points
//! at it, and every user-visible top-level path is a symlink `name -> ..data/name`. An update
//! writes a new timestamped directory, switches `..data` atomically (a `..data_tmp` symlink renamed
//! over it), then removes stale user-visible symlinks and the old timestamped directory, so a
//! container that bind-mounted the volume directory sees either the old or the new contents, never
//! a mix. Nothing is rewritten when the contents are unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::VolumeError;

/// The symlink naming the current timestamped directory.
pub const DATA_DIR_NAME: &str = "..data";
/// The temporary symlink renamed over `..data`.
pub const DATA_TMP_NAME: &str = "..data_tmp";

const MAX_PATH_LENGTH: usize = 4096;
const MAX_FILE_NAME_LENGTH: usize = 255;

/// One file of a projected volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (`0..=0o777`).
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// kubelet's `validatePath` for a payload path.
pub fn validate_path(target: &str) -> Result<(), VolumeError> {
    let invalid = |m: String| Err(VolumeError::Invalid(m));
    if target.is_empty() {
        return invalid(format!("invalid path: must not be empty: {target:?}"));
    }
    if target.starts_with('/') {
        return invalid(format!("invalid path: must be relative path: {target}"));
    }
    if target.len() > MAX_PATH_LENGTH {
        return invalid(format!(
            "invalid path: must be less than or equal to {MAX_PATH_LENGTH} characters"
        ));
    }
    if target.contains('\0') {
        return invalid(format!("invalid path: must not contain NUL: {target:?}"));
    }
    let items: Vec<&str> = target.split('/').collect();
    for item in &items {
        if *item == ".." {
            return invalid(format!("invalid path: must not contain '..': {target}"));
        }
        if item.len() > MAX_FILE_NAME_LENGTH {
            return invalid(format!(
                "invalid path: filenames must be less than or equal to {MAX_FILE_NAME_LENGTH} characters"
            ));
        }
    }
    if items[0].starts_with("..") && items[0].len() > 2 {
        return invalid(format!("invalid path: must not start with '..': {target}"));
    }
    Ok(())
}

/// Go's `path.Clean` for relative paths without `..` (validated first): drops empty and `.`
/// segments.
fn clean(target: &str) -> String {
    target
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Validates and cleans a payload's paths; rejects a path that is both a file and a directory.
fn clean_payload(payload: &Payload) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    for (path, file) in payload {
        validate_path(path)?;
        let cleaned = clean(path);
        if cleaned.is_empty() {
            return Err(VolumeError::Invalid(format!(
                "invalid path: must not be empty: {path:?}"
            )));
        }
        if file.mode > 0o777 {
            return Err(VolumeError::Invalid(format!(
                "invalid mode {:#o} for {path}: must be between 0 and 0777",
                file.mode
            )));
        }
        out.insert(cleaned, file.clone());
    }
    for path in out.keys() {
        let mut prefix = String::new();
        for seg in path.split('/') {
            if !prefix.is_empty() {
                if out.contains_key(&prefix) {
                    return Err(VolumeError::Invalid(format!(
                        "invalid payload: {prefix} is both a file and the directory of {path}"
                    )));
                }
                prefix.push('/');
            }
            prefix.push_str(seg);
        }
    }
    Ok(out)
}

fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// The timestamped directory `..data` points at, if it is a sane basename.
fn current_ts_dir(target: &Path) -> Result<Option<String>, VolumeError> {
    match fs::read_link(target.join(DATA_DIR_NAME)) {
        Ok(link) => {
            let name = link.to_string_lossy().into_owned();
            let sane = name.starts_with("..")
                && !name.contains('/')
                && name != ".."
                && name != DATA_DIR_NAME
                && name != DATA_TMP_NAME;
            Ok(sane.then_some(name))
        }
        Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::InvalidInput => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Regular files under `dir`, as relative paths (symlinks are never followed).
fn files_under(dir: &Path) -> Result<BTreeSet<String>, VolumeError> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry.file_type()?;
            if ft.is_dir() {
                walk(&entry.path(), &rel, out)?;
            } else {
                out.insert(rel);
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    match walk(dir, "", &mut out) {
        Ok(()) => Ok(out),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(out),
        Err(e) => Err(e.into()),
    }
}

/// Whether the payload differs from what `ts_dir` holds (contents, modes or the set of paths).
fn should_write(payload: &Payload, ts_dir: &Path) -> Result<bool, VolumeError> {
    let existing = files_under(ts_dir)?;
    if existing.len() != payload.len() || !payload.keys().all(|k| existing.contains(k)) {
        return Ok(true);
    }
    for (path, file) in payload {
        let p = ts_dir.join(path);
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        if !md.is_file() || md.permissions().mode() & 0o7777 != file.mode {
            return Ok(true);
        }
        if fs::read(&p)? != file.data {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Creates a fresh `..YYYY_MM_DD_HH_MM_SS.<nanos>` directory (0755) in `target`.
fn new_ts_dir(target: &Path) -> Result<String, VolumeError> {
    let now = jiff::Timestamp::now();
    let base = format!(
        "..{}.{:09}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond()
    );
    for n in 0..1000u32 {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}{n}")
        };
        match fs::DirBuilder::new().mode(0o755).create(target.join(&name)) {
            Ok(()) => {
                fs::set_permissions(target.join(&name), fs::Permissions::from_mode(0o755))?;
                return Ok(name);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(VolumeError::Invalid(format!(
        "could not create a timestamped directory in {}",
        target.display()
    )))
}

fn write_payload(payload: &Payload, dir: &Path) -> Result<(), VolumeError> {
    for (path, file) in payload {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)?;
        f.write_all(&file.data)?;
        drop(f);
        fs::set_permissions(&p, fs::Permissions::from_mode(file.mode))?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), VolumeError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Ok(fs::remove_dir_all(path)?),
        Ok(_) => Ok(fs::remove_file(path)?),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Atomically makes `target` (an existing directory) hold exactly `payload`. Returns whether a
/// new timestamped directory was written.
pub fn write(target: &Path, payload: &Payload) -> Result<bool, VolumeError> {
    let payload = clean_payload(payload)?;
    let old = current_ts_dir(target)?;
    let needs_write = match &old {
        None => true,
        Some(old) => should_write(&payload, &target.join(old))?,
    };
    let current = if needs_write {
        let ts = new_ts_dir(target)?;
        let ts_path = target.join(&ts);
        if let Err(e) = write_payload(&payload, &ts_path) {
            let _ = fs::remove_dir_all(&ts_path);
            return Err(e);
        }
        let tmp = target.join(DATA_TMP_NAME);
        remove_if_exists(&tmp)?;
        std::os::unix::fs::symlink(&ts, &tmp)?;
        fs::rename(&tmp, target.join(DATA_DIR_NAME))?;
        ts
    } else {
        old.clone().unwrap_or_default()
    };

    // User-visible symlinks for the new top-level names.
    let tops: BTreeSet<&str> = payload.keys().map(|k| top_level(k)).collect();
    for top in &tops {
        let visible = target.join(top);
        let want = format!("{DATA_DIR_NAME}/{top}");
        match fs::read_link(&visible) {
            Ok(link) if link.as_os_str() == want.as_str() => {}
            Ok(_) => {
                fs::remove_file(&visible)?;
                std::os::unix::fs::symlink(&want, &visible)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::os::unix::fs::symlink(&want, &visible)?;
            }
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                return Err(VolumeError::Invalid(format!(
                    "{} exists and is not a symlink",
                    visible.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }

    // Stale user-visible symlinks, stale timestamped directories and a leftover `..data_tmp`.
    for entry in fs::read_dir(target)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry.file_type()?;
        if name.starts_with("..") {
            if name == DATA_DIR_NAME || name == current {
                continue;
            }
            if name == DATA_TMP_NAME || ft.is_dir() {
                remove_if_exists(&entry.path())?;
            }
        } else if !tops.contains(name.as_str()) && ft.is_symlink() {
            let link = fs::read_link(entry.path())?;
            if link
                .to_string_lossy()
                .starts_with(&format!("{DATA_DIR_NAME}/"))
            {
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(needs_write)
}
