//! The audit log's destination: stdout, or a file rotated by size as kube-apiserver's
//! lumberjack does (`audit-<time>.log` backups next to it, `--audit-log-maxbackup` kept).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{AuditConfig, AuditError, micro_time};

/// The log's destination, with lumberjack's size-based rotation for files.
pub(super) enum Sink {
    Stdout(std::io::Stdout),
    File(RotatingFile),
}

pub(super) struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    /// Bytes before rotation; 0 = never.
    max_size: u64,
    /// Rotated files kept; 0 = all.
    max_backups: usize,
}

impl Sink {
    pub(super) fn open(config: &AuditConfig) -> Result<Sink, AuditError> {
        if config.log_path.as_os_str() == "-" {
            return Ok(Sink::Stdout(std::io::stdout()));
        }
        let path = config.log_path.clone();
        let (file, size) = open_log(&path).map_err(|message| AuditError::Log {
            path: path.display().to_string(),
            message,
        })?;
        Ok(Sink::File(RotatingFile {
            path,
            file: BufWriter::new(file),
            size,
            max_size: config.max_size_mb.saturating_mul(1 << 20),
            max_backups: config.max_backups,
        }))
    }

    pub(super) fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.lock().write_all(line),
            Sink::File(f) => {
                if f.max_size > 0 && f.size > 0 && f.size + line.len() as u64 > f.max_size {
                    f.rotate()?;
                }
                f.file.write_all(line)?;
                f.size += line.len() as u64;
                Ok(())
            }
        }
    }

    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.lock().flush(),
            Sink::File(f) => f.file.flush(),
        }
    }
}

/// Opens (appends to) the log, private to its owner as kube-apiserver's are; creates the
/// directory. Returns the file and its current size.
fn open_log(path: &Path) -> Result<(File, u64), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| e.to_string())?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

impl RotatingFile {
    /// Renames the log to `<name>-<UTC time>.<ext>`, starts a new one, and removes the oldest
    /// backups beyond `max_backups`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let (stem, ext) = self.name_parts();
        let now = micro_time(SystemTime::now());
        // 2006-01-02T15-04-05.000, as lumberjack names backups.
        let stamp = format!("{}{}", &now[..19].replace(':', "-"), &now[19..23]);
        let backup = self.dir().join(format!("{stem}-{stamp}{ext}"));
        std::fs::rename(&self.path, &backup)?;
        let (file, size) = open_log(&self.path).map_err(std::io::Error::other)?;
        self.file = BufWriter::new(file);
        self.size = size;
        if self.max_backups > 0 {
            let mut backups: Vec<PathBuf> = std::fs::read_dir(self.dir())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(&ext))
                })
                .collect();
            backups.sort();
            let excess = backups.len().saturating_sub(self.max_backups);
            for old in &backups[..excess] {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(())
    }

    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// (`audit`, `.log`) for `audit.log`.
    fn name_parts(&self) -> (String, String) {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        (stem, ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_and_keeps_max_backups() {
        let dir = tempfile_dir();
        let config = AuditConfig {
            log_path: dir.join("audit.log"),
            policy: None,
            max_size_mb: 1,
            max_backups: 2,
        };
        let mut sink = Sink::open(&config).unwrap();
        let line = vec![b'x'; 300 << 10];
        for _ in 0..12 {
            sink.write(&line).unwrap();
            // Distinct backup names (millisecond stamps).
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        sink.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().any(|n| n == "audit.log"));
        assert!(
            names
                .iter()
                .all(|n| n == "audit.log" || (n.starts_with("audit-") && n.ends_with(".log")))
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("audit.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-audit-test-{}", crate::ids::new_uid()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
