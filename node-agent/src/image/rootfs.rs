//! Per-container root filesystems: an overlay of the image's layer dirs with a private
//! upper/work dir, mounted with `mount(2)` and lazily unmounted with `umount2(MNT_DETACH)`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Overlay option values can't carry `:` or `,` (separators) and the whole string must fit a page.
fn check_path(p: &Path) -> io::Result<()> {
    let b = p.as_os_str().as_bytes();
    if b.contains(&b':') || b.contains(&b',') || b.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} can't be used in overlay options", p.display()),
        ));
    }
    Ok(())
}

/// The overlay mount options for `lowers` (top first), `upper` and `work`.
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> io::Result<String> {
    if lowers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "overlay needs at least one lower dir",
        ));
    }
    for p in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        check_path(p)?;
    }
    let lower = lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if opts.len() >= 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "overlay options longer than a page",
        ));
    }
    Ok(opts)
}

/// Mounts an overlay of `lowers` (top first) with `upper`/`work` on `target`.
pub fn mount_rootfs(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    let opts = overlay_options(lowers, upper, work)?;
    for d in [upper, work, target] {
        fs::create_dir_all(d)?;
    }
    let src = cstring(b"overlay")?;
    let tgt = cstring(target.as_os_str().as_bytes())?;
    let fstype = cstring(b"overlay")?;
    let data = cstring(opts.as_bytes())?;
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mount overlay on {} ({opts}): {e}", target.display()),
        ));
    }
    Ok(())
}

/// Unmounts a container rootfs (lazy); not mounted is fine.
pub fn unmount_rootfs(target: &Path) -> io::Result<()> {
    let tgt = cstring(target.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(()),
            _ => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("umount {}: {e}", target.display()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = overlay_options(
            &[PathBuf::from("/a"), PathBuf::from("/b")],
            Path::new("/u"),
            Path::new("/w"),
        )
        .unwrap();
        assert_eq!(o, "lowerdir=/a:/b,upperdir=/u,workdir=/w");
        assert!(overlay_options(&[], Path::new("/u"), Path::new("/w")).is_err());
        assert!(
            overlay_options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err()
        );
    }

    #[test]
    fn unmount_not_mounted_is_ok() {
        let d = tempfile::tempdir().unwrap();
        unmount_rootfs(d.path()).unwrap();
        unmount_rootfs(&d.path().join("missing")).unwrap();
    }
}
