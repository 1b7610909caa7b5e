//! Pod cgroup parents, laid out like kubelet's cgroupfs driver:
//! `<root>/kubepods/pod<uid>` (Guaranteed), `<root>/kubepods/burstable/pod<uid>`,
//! `<root>/kubepods/besteffort/pod<uid>`. runc creates them (as parents of a container's
//! `cgroupsPath`) in every hierarchy but removes only the container's leaf, so the agent removes
//! the pod parents, deepest first, in every v1 hierarchy (or the unified v2 tree).

use std::io;
use std::path::{Path, PathBuf};

/// Where the cgroup filesystems are mounted.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// A pod's QoS class (Kubernetes' rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// The node's cgroup layout: `<root>/kubepods[/burstable|/besteffort]/pod<uid>/<container>`.
#[derive(Clone, Debug)]
pub struct Cgroups {
    root: String,
}

impl Cgroups {
    /// `root` is kubelet's `--cgroup-root` (`/`).
    pub fn new(root: &str) -> Cgroups {
        Cgroups {
            root: root.to_string(),
        }
    }

    /// The root without leading/trailing slashes (`""` for `/`).
    fn root_rel(&self) -> String {
        self.root
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Path of the `kubepods` cgroup relative to a hierarchy's mount point.
    fn kubepods_rel(&self) -> String {
        match self.root_rel().as_str() {
            "" => "kubepods".to_string(),
            root => format!("{root}/kubepods"),
        }
    }

    /// Path of the QoS-level cgroup relative to a hierarchy's mount point.
    fn qos_rel(&self, qos: QosClass) -> String {
        let kubepods = self.kubepods_rel();
        match qos {
            QosClass::Guaranteed => kubepods,
            QosClass::Burstable => format!("{kubepods}/burstable"),
            QosClass::BestEffort => format!("{kubepods}/besteffort"),
        }
    }

    /// Absolute cgroupsPath of the QoS-level parent (`/kubepods/burstable`).
    pub fn qos_parent(&self, qos: QosClass) -> String {
        format!("/{}", self.qos_rel(qos))
    }

    /// Absolute cgroupsPath of the pod's parent.
    pub fn pod_parent(&self, qos: QosClass, pod_uid: &str) -> String {
        format!("{}/pod{pod_uid}", self.qos_parent(qos))
    }

    /// Absolute cgroupsPath of a container of the pod (runc's `linux.cgroupsPath`).
    pub fn container_path(&self, qos: QosClass, pod_uid: &str, container_id: &str) -> String {
        format!("{}/{container_id}", self.pod_parent(qos, pod_uid))
    }

    /// Removes the pod's parent directories in every hierarchy (v1) or the unified tree (v2),
    /// deepest first; absent is fine.
    pub fn remove_pod(&self, qos: QosClass, pod_uid: &str) -> std::io::Result<()> {
        if !valid_uid(pod_uid) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid pod uid {pod_uid:?}"),
            ));
        }
        let mut first_err = None;
        for dir in self.pod_dirs(qos, pod_uid) {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a pod cgroup (or a container cgroup below it)");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Directories of every hierarchy the pod parent lives in (for tests and cleanup).
    pub fn pod_dirs(&self, qos: QosClass, pod_uid: &str) -> Vec<PathBuf> {
        if !valid_uid(pod_uid) {
            return Vec::new();
        }
        let rel = format!("{}/pod{pod_uid}", self.qos_rel(qos));
        hierarchies().into_iter().map(|h| h.join(&rel)).collect()
    }

    /// rmdir the (empty) `<root>/kubepods/{burstable,besteffort}`, `<root>/kubepods` and, for a
    /// root other than `/`, the root itself, in every hierarchy. Absent is fine; a non-empty or
    /// busy directory is an error (after trying the rest).
    pub fn remove_root(&self) -> std::io::Result<()> {
        let mut rels = vec![
            self.qos_rel(QosClass::Burstable),
            self.qos_rel(QosClass::BestEffort),
            self.kubepods_rel(),
        ];
        // The root's own components, deepest first (`/a/b` → `a/b`, `a`).
        let root = self.root_rel();
        let parts: Vec<&str> = root.split('/').filter(|s| !s.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cgroup root {:?}", self.root),
            ));
        }
        for n in (1..=parts.len()).rev() {
            rels.push(parts[..n].join("/"));
        }
        let mut first_err = None;
        for h in hierarchies() {
            for rel in &rels {
                if let Err(e) = rmdir(&h.join(rel)) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A pod uid usable as one path component.
fn valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid != "." && uid != ".." && !uid.contains('/') && !uid.contains('\0')
}

/// Whether the host runs the unified (v2-only) hierarchy.
pub fn is_v2() -> bool {
    Path::new(CGROUP_MOUNT).join("cgroup.controllers").exists()
}

/// The mount points of every cgroup hierarchy: `/sys/fs/cgroup` on v2; on v1 (or hybrid) each
/// `cgroup`/`cgroup2` mount under `/sys/fs/cgroup` (`cpu`, `memory`, …, `systemd`, `unified`).
pub fn hierarchies() -> Vec<PathBuf> {
    if is_v2() {
        return vec![PathBuf::from(CGROUP_MOUNT)];
    }
    let mut out = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => parse_mountinfo(&text),
        Err(_) => Vec::new(),
    };
    if out.is_empty() {
        // Fallback: real directories (not the `cpu,cpuacct` symlinks) under /sys/fs/cgroup.
        if let Ok(entries) = std::fs::read_dir(CGROUP_MOUNT) {
            out = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The cgroup mount points under `/sys/fs/cgroup` listed in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        // `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
        if mount_point.starts_with(CGROUP_MOUNT) && !out.contains(&mount_point) {
            out.push(mount_point);
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// rmdir; absent is fine.
fn rmdir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// rmdir `dir` and every directory below it, deepest first (cgroup dirs hold only kernel
/// files, which go with the rmdir). Absent is fine; EBUSY (live tasks) is returned.
fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut first_err = None;
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && let Err(e) = remove_tree(&entry.path())
                {
                    first_err.get_or_insert(e);
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    // The raw OS error (EBUSY …) is kept for callers; the path goes to the log.
    rmdir(dir).inspect_err(|e| tracing::debug!(dir = %dir.display(), error = %e, "rmdir"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_qos_and_root() {
        let c = Cgroups::new("/");
        assert_eq!(c.pod_parent(QosClass::Guaranteed, "u1"), "/kubepods/podu1");
        assert_eq!(
            c.pod_parent(QosClass::Burstable, "u1"),
            "/kubepods/burstable/podu1"
        );
        assert_eq!(
            c.pod_parent(QosClass::BestEffort, "u1"),
            "/kubepods/besteffort/podu1"
        );
        assert_eq!(
            c.container_path(QosClass::BestEffort, "u1", "c"),
            "/kubepods/besteffort/podu1/c"
        );
        let t = Cgroups::new("/skiff-test-123/");
        assert_eq!(
            t.pod_parent(QosClass::Guaranteed, "u"),
            "/skiff-test-123/kubepods/podu"
        );
        assert_eq!(
            t.pod_parent(QosClass::Burstable, "u"),
            "/skiff-test-123/kubepods/burstable/podu"
        );
        assert_eq!(
            Cgroups::new("").pod_parent(QosClass::Guaranteed, "u"),
            "/kubepods/podu"
        );
        assert!(t.pod_dirs(QosClass::Guaranteed, "../x").is_empty());
        assert!(t.remove_pod(QosClass::Guaranteed, "a/b").is_err());
    }

    #[test]
    fn mountinfo_parsing() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
            40 31 0:37 / /sys/fs/cgroup/sys\\040temd rw,relatime - cgroup cgroup rw,name=systemd\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
            50 31 0:38 / /elsewhere rw,relatime - cgroup2 cgroup2 rw\n\
            garbage line\n";
        assert_eq!(
            parse_mountinfo(text),
            ["cpu", "memory", "sys temd", "unified"]
                .iter()
                .map(|h| Path::new(CGROUP_MOUNT).join(h))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn remove_tree_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("podx");
        std::fs::create_dir_all(pod.join("c1/sub")).unwrap();
        std::fs::create_dir_all(pod.join("c2")).unwrap();
        remove_tree(&pod).unwrap();
        assert!(!pod.exists());
        remove_tree(&pod).unwrap();
    }
}
