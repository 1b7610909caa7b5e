//! Where a pod's containers are on disk: the pod's log directory (`<ns>_<pod>_<uid>`, the most
//! recently modified when a name was reused) and the attempts of a container (`<n>.log`).

use std::path::{Path, PathBuf};

use axum::http::StatusCode;

use super::ServerConfig;

/// A container of a pod found on disk.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub(crate) uid: String,
    pub(crate) dir: PathBuf,
    /// Attempt numbers with a log file, ascending.
    pub(crate) attempts: Vec<u32>,
}

impl Located {
    /// runc's id of attempt `n`.
    pub(crate) fn container_id(&self, container: &str, n: u32) -> String {
        crate::pod::worker::PodEnv::container_id(&self.uid, container, n)
    }

    pub(crate) fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{n}.log"))
    }
}

/// Finds the container's log directory and attempts, or the kubelet-worded error.
pub(crate) fn locate(
    config: &ServerConfig,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Located, (StatusCode, String)> {
    let not_found = || (StatusCode::NOT_FOUND, format!("pods {pod:?} not found"));
    let waiting = || {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"
            ),
        )
    };
    let not_available = || {
        (
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} is not available"),
        )
    };
    if !valid_name(namespace) || !valid_name(pod) || !valid_name(container) {
        return Err(not_found());
    }
    let known = config
        .container_names
        .as_ref()
        .and_then(|names| names(namespace, pod));
    if let Some(names) = &known
        && !names.iter().any(|n| n == container)
    {
        return Err(not_available());
    }
    let Some((uid, pod_dir)) = pod_dir(&config.logs_dir, namespace, pod) else {
        return Err(if known.is_some() {
            waiting()
        } else {
            not_found()
        });
    };
    let dir = pod_dir.join(container);
    let attempts = attempts(&dir);
    if attempts.is_empty() {
        if known.is_some() || dir.is_dir() || config.container_names.is_none() {
            return Err(waiting());
        }
        return Err(not_available());
    }
    Ok(Located { uid, dir, attempts })
}

/// DNS-1123-ish: no path separators, no `..`, no `_` (the directory-name separator).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && name != "."
        && name != ".."
}

/// `(uid, dir)` of the newest `<ns>_<pod>_<uid>` directory.
pub(crate) fn pod_dir(logs_dir: &Path, namespace: &str, pod: &str) -> Option<(String, PathBuf)> {
    let prefix = format!("{namespace}_{pod}_");
    let mut best: Option<(std::time::SystemTime, String, PathBuf)> = None;
    for entry in std::fs::read_dir(logs_dir).ok()?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(uid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if uid.is_empty() || uid.contains('_') {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_dir() {
            continue;
        }
        let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _, _)| modified > *t) {
            best = Some((modified, uid.to_string(), entry.path()));
        }
    }
    best.map(|(_, uid, dir)| (uid, dir))
}

/// The attempt numbers of `<n>.log` files in `dir`, ascending.
pub(crate) fn attempts(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u32>()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out
}
