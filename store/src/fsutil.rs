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
    }
}
