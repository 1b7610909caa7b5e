//! Named network namespaces (`/run/netns/<name>`), managed like `ip netns add/del` by
//! shelling out to iproute2.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::NetworkError;

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// Bound on one `ip` invocation.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the named netns `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether `name` is usable as a netns / file name: 1..=200 chars of `[A-Za-z0-9_.-]`, not
/// starting with `.` or `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether the named netns exists (its file under `/run/netns`).
pub fn exists(name: &str) -> bool {
    std::fs::symlink_metadata(path(name)).is_ok()
}

/// The iproute2 `ip` binary.
fn ip_binary() -> PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ip"))
}

/// Runs `ip <args>`; a non-zero exit becomes `NetworkError::Netns` with its stderr.
pub async fn ip(args: &[&str]) -> Result<String, NetworkError> {
    let what = format!("ip {}", args.join(" "));
    let child = Command::new(ip_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NetworkError::Netns(format!("{what}: cannot run ip: {e}")))?;
    let output = tokio::time::timeout(IP_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| NetworkError::Netns(format!("{what}: timed out")))?
        .map_err(|e| NetworkError::Netns(format!("{what}: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(NetworkError::Netns(format!(
            "{what}: {stderr} ({})",
            output.status
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip netns add <name>`, then `lo` up inside.
pub async fn add(name: &str) -> Result<PathBuf, NetworkError> {
    if !valid_name(name) {
        return Err(NetworkError::Netns(format!("invalid netns name {name:?}")));
    }
    ip(&["netns", "add", name]).await?;
    ip(&["-n", name, "link", "set", "lo", "up"]).await?;
    Ok(path(name))
}

/// `ip netns del <name>`; absent is fine.
pub async fn del(name: &str) -> Result<(), NetworkError> {
    if !valid_name(name) {
        return Err(NetworkError::Netns(format!("invalid netns name {name:?}")));
    }
    if !exists(name) {
        return Ok(());
    }
    match ip(&["netns", "del", name]).await {
        Ok(_) => Ok(()),
        Err(_) if !exists(name) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("skiff-abc_1.2"));
        for bad in ["", ".", "..", "-x", "a/b", "a b", "x\n", &"a".repeat(201)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(path("x"), PathBuf::from("/run/netns/x"));
    }
}
