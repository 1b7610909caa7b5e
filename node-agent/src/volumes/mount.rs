//! Mount helpers: tmpfs for memory-backed volumes, `/proc/self/mountinfo` lookups, unmounting,
//! and a recursive removal that never crosses into another filesystem.

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::VolumeError;

fn cstring(path: &Path) -> Result<CString, VolumeError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| VolumeError::Invalid(format!("path {} contains NUL", path.display())))
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Parses mountinfo text into mount points.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// All mount points of this mount namespace.
pub fn mount_points() -> Result<Vec<PathBuf>, VolumeError> {
    Ok(parse_mountinfo(&fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Mount points at or below `dir` (canonical), deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    let mut out: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out.dedup();
    Ok(out)
}

/// Whether `path` (canonicalized here) is a mount point.
pub fn is_mount_point(path: &Path) -> Result<bool, VolumeError> {
    let real = fs::canonicalize(path)?;
    Ok(mount_points()?.contains(&real))
}

/// Mounts a tmpfs on `dir` (kubelet's memory-medium emptyDir), `size=` bytes when given.
pub fn mount_tmpfs(dir: &Path, size: Option<i64>) -> Result<(), VolumeError> {
    let target = cstring(dir)?;
    let data = size.filter(|s| *s > 0).map(|s| format!("size={s}"));
    let data = match data {
        Some(d) => Some(CString::new(d).map_err(|_| VolumeError::Invalid("bad size".into()))?),
        None => None,
    };
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: all pointers are valid NUL-terminated strings (or null data) for the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            data_ptr,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Lazily unmounts `dir` (`umount2(MNT_DETACH)`); a path that is not mounted is fine.
pub fn unmount(dir: &Path) -> Result<(), VolumeError> {
    let target = cstring(dir)?;
    // SAFETY: `target` is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Ok(());
        }
        return Err(err.into());
    }
    Ok(())
}

/// Removes `path` recursively without following symlinks and refusing to enter a directory on
/// another device than `dev`.
pub fn remove_tree(path: &Path, dev: u64) -> Result<(), VolumeError> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !md.is_dir() {
        return Ok(fs::remove_file(path)?);
    }
    if md.dev() != dev {
        return Err(VolumeError::Invalid(format!(
            "refusing to remove {}: it is on another filesystem (a mount point?)",
            path.display()
        )));
    }
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path(), dev)?;
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}
