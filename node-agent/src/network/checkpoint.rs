//! Per-sandbox network checkpoints: `<state_dir>/sandboxes/<sandbox_id>.json`, written
//! tmp+rename, holding the sandbox's network and the final CNI ADD result (DEL's `prevResult`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SandboxNetwork;

/// One checkpoint file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub network: SandboxNetwork,
    /// The final result of the ADD chain.
    #[serde(rename = "cniResult", default)]
    pub cni_result: Value,
}

/// The checkpoint directory under the state dir.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sandboxes")
}

/// The checkpoint file of a sandbox.
pub fn path(state_dir: &Path, sandbox_id: &str) -> PathBuf {
    dir(state_dir).join(format!("{sandbox_id}.json"))
}

/// Reads a checkpoint: `Ok(None)` if absent.
pub async fn read(state_dir: &Path, sandbox_id: &str) -> std::io::Result<Option<Checkpoint>> {
    match tokio::fs::read(path(state_dir, sandbox_id)).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a checkpoint atomically (tmp file, fsync, rename).
pub async fn write(state_dir: &Path, ck: &Checkpoint) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let dir = dir(state_dir);
    tokio::fs::create_dir_all(&dir).await?;
    let final_path = path(state_dir, &ck.network.sandbox_id);
    let tmp = dir.join(format!(".{}.json.tmp", ck.network.sandbox_id));
    let bytes = serde_json::to_vec_pretty(ck).map_err(std::io::Error::other)?;
    let mut f = tokio::fs::File::create(&tmp).await?;
    f.write_all(&bytes).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, &final_path).await
}

/// Removes a checkpoint; absent is fine.
pub async fn remove(state_dir: &Path, sandbox_id: &str) -> std::io::Result<()> {
    match tokio::fs::remove_file(path(state_dir, sandbox_id)).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every readable checkpoint, sorted by sandbox id; unreadable ones are logged and skipped.
pub fn read_all(state_dir: &Path) -> Vec<Checkpoint> {
    let dir = dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the network checkpoints");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(ck) => out.push(ck),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable network checkpoint")
            }
        }
    }
    out.sort_by(|a, b| a.network.sandbox_id.cmp(&b.network.sandbox_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn roundtrip_and_skip_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_all(dir.path()).is_empty());
        assert_eq!(read(dir.path(), "a").await.unwrap(), None);
        let ck = Checkpoint {
            network: SandboxNetwork {
                sandbox_id: "a".into(),
                netns_path: "/run/netns/x-a".into(),
                ip: Ipv4Addr::new(10, 1, 0, 2),
                port_mappings: vec![],
            },
            cni_result: serde_json::json!({"cniVersion": "0.4.0"}),
        };
        write(dir.path(), &ck).await.unwrap();
        assert_eq!(read(dir.path(), "a").await.unwrap(), Some(ck.clone()));
        std::fs::write(path(dir.path(), "bad"), b"{not json").unwrap();
        assert!(read(dir.path(), "bad").await.is_err());
        assert_eq!(read_all(dir.path()), vec![ck]);
        remove(dir.path(), "a").await.unwrap();
        remove(dir.path(), "a").await.unwrap();
        assert_eq!(read(dir.path(), "a").await.unwrap(), None);
    }
}
