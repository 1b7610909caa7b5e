//! Unpacking one layer tar (plain or gzip) into its own directory, converting OCI whiteouts
//! into overlayfs whiteouts like containerd's overlay snapshotter: `.wh.NAME` becomes a 0:0
//! character device `NAME`, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
//! Paths escaping the directory (`..`, through symlinks) are refused; modes, owners, xattrs and
//! mtimes are kept; device and fifo entries are created with mknod.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

fn err(msg: impl Into<String>) -> ImageError {
    ImageError::Io(io::Error::new(io::ErrorKind::InvalidData, msg.into()))
}

/// An error with its sources (tar's errors hide the cause in `source()`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let m = cause.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = cause.source();
    }
    s
}

/// Opens a layer blob as a tar stream, decompressing by media type (and by magic bytes, for
/// mislabeled blobs).
fn open_layer(blob: &Path, media_type: &str) -> Result<Box<dyn Read>, ImageError> {
    if media_type.contains("zstd") {
        return Err(err(format!(
            "layer media type {media_type} (zstd) is not supported"
        )));
    }
    let mut reader = BufReader::with_capacity(1 << 16, File::open(blob)?);
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(err("zstd-compressed layers are not supported"));
    }
    let gzip_magic = head.starts_with(&[0x1f, 0x8b]);
    if !media_type.is_empty() && !media_type.contains("tar") {
        return Err(err(format!("unsupported layer media type {media_type}")));
    }
    if gzip_magic {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// A tar path made relative and checked: `None` for the root itself, an error for `..`.
fn clean_path(path: &Path) -> Result<Option<PathBuf>, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(err(format!(
                    "layer entry {} escapes the layer",
                    path.display()
                )));
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Creates (0755) the missing directories of `dest/rel`, refusing symlinks and non-directories
/// on the way; returns `dest/rel`.
fn prepare_dirs(dest: &Path, rel: &Path, include_last: bool) -> Result<PathBuf, ImageError> {
    let mut cur = dest.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    let n = if include_last {
        comps.len()
    } else {
        comps.len().saturating_sub(1)
    };
    for c in &comps[..n] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(err(format!(
                    "{} is not a directory in the layer",
                    cur.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(&cur)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(dest.join(rel))
}

fn cpath(p: &Path) -> Result<CString, ImageError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| err(format!("path {} contains NUL", p.display())))
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn mknod(
    path: &Path,
    mode: libc::mode_t,
    dev: libc::dev_t,
    uid: u32,
    gid: u32,
) -> Result<(), ImageError> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        let e = io::Error::last_os_error();
        return Err(ImageError::Io(io::Error::new(
            e.kind(),
            format!("mknod {}: {e}", path.display()),
        )));
    }
    // SAFETY: as above; lchown never follows a symlink.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    Ok(())
}

/// The overlayfs whiteout for `path`: a 0:0 character device, owned by 0:0.
fn make_whiteout(path: &Path) -> Result<(), ImageError> {
    remove_any(path)?;
    mknod(path, libc::S_IFCHR, libc::makedev(0, 0), 0, 0)
}

fn set_opaque(dir: &Path) -> Result<(), ImageError> {
    let c = cpath(dir)?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: valid C strings, a 1-byte value buffer.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(ImageError::Io(io::Error::new(
            e.kind(),
            format!("setxattr {}: {e}", dir.display()),
        )));
    }
    Ok(())
}

/// Unpacks the layer `blob` into the (empty, existing) directory `dest`.
pub(crate) fn unpack_layer(blob: &Path, media_type: &str, dest: &Path) -> Result<(), ImageError> {
    let reader = open_layer(blob, media_type)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut whiteouts = Vec::new();
    let mut opaques = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| err(format!("reading layer: {e}")))?
    {
        let mut entry = entry.map_err(|e| err(format!("reading layer: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| err(format!("bad layer entry path: {e}")))?
            .into_owned();
        let Some(rel) = clean_path(&raw)? else {
            continue;
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE_WHITEOUT {
            opaques.push(parent);
            continue;
        }
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            if target.is_empty() || target == "." || target == ".." {
                return Err(err(format!("bad whiteout {}", raw.display())));
            }
            whiteouts.push(parent.join(target));
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let header = entry.header();
            let mode = header.mode().map_err(|e| err(e.to_string()))? & 0o7777;
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            let uid = header.uid().map_err(|e| err(e.to_string()))?;
            let gid = header.gid().map_err(|e| err(e.to_string()))?;
            let fmt = if kind.is_character_special() {
                libc::S_IFCHR
            } else if kind.is_block_special() {
                libc::S_IFBLK
            } else {
                libc::S_IFIFO
            };
            let path = prepare_dirs(dest, &rel, false)?;
            remove_any(&path)?;
            mknod(
                &path,
                fmt | mode,
                libc::makedev(major, minor),
                u32::try_from(uid).unwrap_or(0),
                u32::try_from(gid).unwrap_or(0),
            )?;
            continue;
        }
        let unpacked = entry.unpack_in(dest).map_err(|e| {
            ImageError::Io(io::Error::new(
                e.kind(),
                format!("unpacking {}: {}", raw.display(), chain(&e)),
            ))
        })?;
        if !unpacked {
            return Err(err(format!(
                "layer entry {} escapes the layer",
                raw.display()
            )));
        }
    }
    for w in whiteouts {
        let path = prepare_dirs(dest, &w, false)?;
        make_whiteout(&path)?;
    }
    for dir in opaques {
        let path = prepare_dirs(dest, &dir, true)?;
        set_opaque(&path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(
            clean_path(Path::new("./a/b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(
            clean_path(Path::new("/a")).unwrap(),
            Some(PathBuf::from("a"))
        );
        assert_eq!(clean_path(Path::new("./")).unwrap(), None);
        assert!(clean_path(Path::new("a/../../b")).is_err());
    }

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn refuses_escape() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = tar_with(&[("x", b"ok")]);
        // Overwrite the first header's name with a `..` path (Builder refuses to write one).
        let name = b"../evil";
        data[..100].fill(0);
        data[..name.len()].copy_from_slice(name);
        let mut h = tar::Header::from_byte_slice(&data[..512]).clone();
        h.set_cksum();
        data[..512].copy_from_slice(h.as_bytes());
        let blob = dir.path().join("blob");
        fs::write(&blob, &data).unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        assert!(unpack_layer(&blob, "application/vnd.oci.image.layer.v1.tar", &dest).is_err());
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn converts_whiteouts_and_keeps_modes() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: mknod and trusted xattrs need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o1777);
        h.set_uid(12);
        h.set_gid(34);
        h.set_mtime(0);
        h.set_size(0);
        b.append_data(&mut h, "d/", &b""[..]).unwrap();
        for (name, data) in [
            ("d/.wh..wh..opq", &b""[..]),
            ("d/keep", b"k"),
            ("e/.wh.gone", b""),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o640);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        }
        let blob = dir.path().join("blob");
        fs::write(&blob, b.into_inner().unwrap()).unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        unpack_layer(&blob, "application/vnd.oci.image.layer.v1.tar", &dest).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let d = fs::metadata(dest.join("d")).unwrap();
        assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o1777, 12, 34));
        assert_eq!(
            fs::metadata(dest.join("d/keep")).unwrap().mode() & 0o7777,
            0o640
        );
        let wh = fs::symlink_metadata(dest.join("e/gone")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!((wh.rdev(), wh.uid(), wh.gid()), (0, 0, 0));
        assert!(!dest.join("d/.wh..wh..opq").exists() && !dest.join("e/.wh.gone").exists());
        let c = cpath(&dest.join("d")).unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, 1, "opaque xattr missing");
        assert_eq!(buf[0], b'y');
    }

    #[test]
    fn refuses_zstd() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
        let e = unpack_layer(
            &blob,
            "application/vnd.oci.image.layer.v1.tar+zstd",
            dir.path(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }
}
