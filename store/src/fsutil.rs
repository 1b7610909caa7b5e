//! Private files and directories: a member's data is readable by its owner only (etcd's
//! 0700 data directories and 0600 files), since the store holds every Secret.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the directories a member creates.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the files a member creates.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Create `dir` (and missing parents) as 0700; an existing `dir` is narrowed to 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != PRIVATE_DIR_MODE {
        std::fs::set_permissions(dir, Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// A data directory this member can write in, checked as etcd's `TouchDirAll` checks its
/// data dir: `dir` is created (or narrowed) as by [`create_private_dir`], then a `.touch`
/// file is created in it and removed, so a read-only directory, file system or mount is
/// refused before anything is opened. The error names the path and what failed on it
/// (`mkdir D: ...`, `open D/.touch: ...`).
pub fn touch_private_dir(dir: &Path) -> io::Result<()> {
    fn named<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
        move |e| io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
    }
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(named("mkdir", dir))?;
    let mode = std::fs::metadata(dir)
        .map_err(named("stat", dir))?
        .permissions()
        .mode()
        & 0o777;
    if mode != PRIVATE_DIR_MODE {
        std::fs::set_permissions(dir, Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(named("chmod", dir))?;
    }
    let probe = dir.join(".touch");
    drop(private_file(&probe).map_err(named("open", &probe))?);
    std::fs::remove_file(&probe).map_err(named("remove", &probe))
}

/// Open `path` for reading and writing, creating it as 0600 (never truncating it).
pub fn private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// Narrow an existing file to 0600 (files created by libraries with the default mode).
pub fn make_private(path: &Path) -> io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode != PRIVATE_FILE_MODE {
        std::fs::set_permissions(path, Permissions::from_mode(PRIVATE_FILE_MODE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_files_are_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        create_private_dir(&dir).expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&dir).expect("again");
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        private_file(&file).expect("file");
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).expect("chmod");
        make_private(&file).expect("narrow");
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).expect("chmod");
        touch_private_dir(&dir).expect("touch");
        assert_eq!(mode(&dir), 0o700);
        assert!(!dir.join(".touch").exists());
    }

    #[test]
    fn an_unusable_data_dir_is_refused_naming_the_path() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("file");
        std::fs::write(&file, b"").expect("file");
        let under_file = file.join("d");
        let err = touch_private_dir(&under_file).expect_err("a dir under a file");
        assert_eq!(
            err.to_string(),
            format!(
                "mkdir {}: Not a directory (os error 20)",
                under_file.display()
            )
        );
        // Even root cannot create directories in /proc.
        let in_proc = Path::new("/proc/skiff-no-such-dir/d");
        let err = touch_private_dir(in_proc).expect_err("/proc");
        assert!(
            err.to_string()
                .starts_with("mkdir /proc/skiff-no-such-dir/d: "),
            "{err}"
        );
    }
}
