//! `RuncRuntime`: runc driven through `skiff-shim`.
//!
//! Layout under the state dir: runc's `--root` is `<state_dir>/runc`, the shims' exit files are
//! `<state_dir>/exits/<id>.json`. Every runc invocation passes `--root`. The runtime keeps no
//! state in memory, so a new `RuncRuntime` on the same state dir re-adopts every container (the
//! shims live on independently of the agent).
//!
//! Never reads a detached runc's stdout to EOF: `start` reads the single answer line of the
//! shim's short-lived parent process; only runc commands that do not hold a container's stdio
//! (`state`, `list`, `kill`, `delete`, `exec`) have their output captured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::{ContainerState, ExecOutput, ExitRecord, ListedContainer, RuntimeError};

/// Bound for short runc commands (state, list, kill, delete, version).
const RUNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for the shim's answer (runc create + start).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long "runc says stopped, no exit file yet" counts as transient (the shim is about to
/// write the exit file; runc sees a zombie init as stopped before the shim reaped it).
const EXIT_FILE_GRACE: Duration = Duration::from_secs(2);
/// How long `stop` waits after SIGKILL for the exit record.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Poll interval of `stop`.
const POLL: Duration = Duration::from_millis(100);

/// runc with a private `--root`, containers supervised by the shim.
#[derive(Clone, Debug)]
pub struct RuncRuntime {
    runc: PathBuf,
    state_dir: PathBuf,
    shim: PathBuf,
}

/// One entry of `runc state` / `runc list --format json`.
#[derive(Debug, Deserialize)]
struct RuncState {
    id: String,
    #[serde(default)]
    pid: u32,
    status: String,
    #[serde(default)]
    bundle: PathBuf,
}

impl RuncRuntime {
    /// `state_dir` holds runc's `--root` (`state_dir/runc`) and the exit files
    /// (`state_dir/exits/<id>.json`); `shim` is the `skiff-shim` binary; `runc` the runc binary.
    pub fn new(runc: PathBuf, state_dir: PathBuf, shim: PathBuf) -> RuncRuntime {
        RuncRuntime {
            runc,
            state_dir,
            shim,
        }
    }

    /// runc's `--root` directory.
    pub fn runc_root(&self) -> PathBuf {
        self.state_dir.join("runc")
    }

    /// Where the shim of container `id` writes its [`ExitRecord`].
    pub fn exit_file(&self, id: &str) -> PathBuf {
        self.state_dir.join("exits").join(format!("{id}.json"))
    }

    /// The exit record of `id`, if its shim wrote one.
    pub async fn exit_record(&self, id: &str) -> Result<Option<ExitRecord>, RuntimeError> {
        check_id(id, "state")?;
        read_exit_file(&self.exit_file(id)).await
    }

    /// runc's version number, e.g. `1.1.5` (for `containerRuntimeVersion: runc://1.1.5`).
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let out = self.run_runc("--version", &["--version"]).await?;
        let text = String::from_utf8_lossy(&out);
        let first = text.lines().next().unwrap_or("").trim();
        first
            .strip_prefix("runc version ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| RuntimeError::Runc {
                command: "--version".into(),
                message: format!("unexpected output {first:?}"),
            })
    }

    /// Creates and starts container `id` from `bundle` (config.json + rootfs) under a new shim
    /// that writes CRI log lines to `log_path`; returns the init's host PID.
    pub async fn start(
        &self,
        id: &str,
        bundle: &Path,
        log_path: &Path,
    ) -> Result<u32, RuntimeError> {
        if !crate::shim::valid_id(id) {
            return Err(RuntimeError::Start(format!("invalid container id {id:?}")));
        }
        let bundle = std::path::absolute(bundle)?;
        let log_path = std::path::absolute(log_path)?;
        let exit_file = std::path::absolute(self.exit_file(id))?;
        let root = std::path::absolute(self.runc_root())?;

        // Stale leftovers of an earlier container with the same id.
        remove_if_exists(&exit_file).await?;
        let _ = self.run_runc("delete", &["delete", "--force", id]).await;
        if let Some(dir) = exit_file.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::create_dir_all(&root).await?;

        let mut cmd = Command::new(&self.shim);
        cmd.arg(&self.runc)
            .arg(&root)
            .arg(id)
            .arg(&bundle)
            .arg(&log_path)
            .arg(&exit_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            RuntimeError::Start(format!("spawning shim {}: {e}", self.shim.display()))
        })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(RuntimeError::Start("shim stdout not captured".into()));
        };
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        match tokio::time::timeout(START_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => return Err(RuntimeError::Timeout(START_TIMEOUT)),
            Ok(Err(e)) => return Err(RuntimeError::Start(format!("reading shim answer: {e}"))),
            Ok(Ok(_)) => {}
        }
        // The shim's parent exits right after answering.
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("started ") {
            return pid
                .trim()
                .parse::<u32>()
                .map_err(|_| RuntimeError::Start(format!("shim answered {line:?}")));
        }
        if let Some(msg) = line.strip_prefix("error ") {
            return Err(RuntimeError::Start(msg.to_string()));
        }
        let how = match status {
            Ok(Ok(s)) => s.to_string(),
            _ => "still running".to_string(),
        };
        Err(RuntimeError::Start(format!(
            "shim gave no answer ({how}): {line:?}"
        )))
    }

    /// The container's state: the exit record first, then `runc state`.
    pub async fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        check_id(id, "state")?;
        let exit_file = self.exit_file(id);
        if let Some(rec) = read_exit_file(&exit_file).await? {
            return Ok(ContainerState::Exited(rec));
        }
        let out = match self.run_runc("state", &["state", id]).await {
            Ok(out) => out,
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => {
                // It may have been deleted right after its shim recorded the exit.
                if let Some(rec) = read_exit_file(&exit_file).await? {
                    return Ok(ContainerState::Exited(rec));
                }
                return Ok(ContainerState::NotFound);
            }
            Err(e) => return Err(e),
        };
        let st: RuncState = serde_json::from_slice(&out).map_err(|e| RuntimeError::Runc {
            command: "state".into(),
            message: format!("bad JSON: {e}"),
        })?;
        match st.status.as_str() {
            "running" | "paused" => Ok(ContainerState::Running { pid: st.pid }),
            "created" | "creating" => Ok(ContainerState::Created),
            _ => {
                // Stopped: the shim is about to write the exit file, or it died.
                let deadline = tokio::time::Instant::now() + EXIT_FILE_GRACE;
                loop {
                    if let Some(rec) = read_exit_file(&exit_file).await? {
                        return Ok(ContainerState::Exited(rec));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(ContainerState::Unknown);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Every container under this runtime's `--root` (for re-adoption).
    pub async fn list(&self) -> Result<Vec<ListedContainer>, RuntimeError> {
        let out = self.run_runc("list", &["list", "--format", "json"]).await?;
        let entries: Option<Vec<RuncState>> =
            serde_json::from_slice(&out).map_err(|e| RuntimeError::Runc {
                command: "list".into(),
                message: format!("bad JSON: {e}"),
            })?;
        Ok(entries
            .unwrap_or_default()
            .into_iter()
            .map(|s| ListedContainer {
                id: s.id,
                pid: s.pid,
                status: s.status,
                bundle: s.bundle,
            })
            .collect())
    }

    /// `runc kill ID SIGNAL` (runc takes the signal's number).
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        check_id(id, "kill")?;
        let sig = signal.to_string();
        self.run_runc("kill", &["kill", id, &sig]).await.map(|_| ())
    }

    /// TERM, wait up to `grace`, KILL, wait for the exit record.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<ContainerState, RuntimeError> {
        let st = self.state(id).await?;
        if !is_alive(&st) {
            return Ok(st);
        }
        if let Err(e) = self.kill(id, libc::SIGTERM).await {
            let st = self.state(id).await?;
            if !is_alive(&st) {
                return Ok(st);
            }
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let st = self.state(id).await?;
            if !is_alive(&st) {
                return Ok(st);
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
        }
        if let Err(e) = self.kill(id, libc::SIGKILL).await {
            let st = self.state(id).await?;
            if !is_alive(&st) {
                return Ok(st);
            }
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        loop {
            let st = self.state(id).await?;
            if !is_alive(&st) {
                return Ok(st);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Timeout(grace + KILL_WAIT));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `runc delete --force` and the exit file; NotFound is fine.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        check_id(id, "delete")?;
        let exit_file = self.exit_file(id);
        let was_alive = match self.run_runc("state", &["state", id]).await {
            Ok(out) => serde_json::from_slice::<RuncState>(&out)
                .map(|s| matches!(s.status.as_str(), "running" | "paused" | "created"))
                .unwrap_or(false),
            Err(_) => false,
        };
        match self.run_runc("delete", &["delete", "--force", id]).await {
            Ok(_) => {}
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => {}
            Err(e) => return Err(e),
        }
        if was_alive {
            // The shim of a container killed by the delete writes its exit file shortly after;
            // wait for it (bounded) so it does not outlive the container.
            let deadline = tokio::time::Instant::now() + EXIT_FILE_GRACE;
            while tokio::time::Instant::now() < deadline
                && !tokio::fs::try_exists(&exit_file).await.unwrap_or(false)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        remove_if_exists(&exit_file).await?;
        Ok(())
    }

    /// Runs `argv` in the container, output captured, killed after `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        check_id(id, "exec")?;
        if argv.is_empty() {
            return Err(RuntimeError::Runc {
                command: "exec".into(),
                message: "empty command".into(),
            });
        }
        let mut cmd = self.exec_command(id, argv, false);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| RuntimeError::Runc {
            command: "exec".into(),
            message: format!("spawning {}: {e}", self.runc.display()),
        })?;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => return Err(RuntimeError::Timeout(timeout)),
            Ok(out) => out?,
        };
        Ok(ExecOutput {
            exit_code: exit_code(&out.status),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// A `runc exec` command for streaming callers (kubectl exec): stdio left to the caller.
    pub fn exec_command(&self, id: &str, argv: &[String], tty: bool) -> tokio::process::Command {
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root").arg(self.runc_root()).arg("exec");
        if tty {
            cmd.arg("-t");
        }
        cmd.arg(id).args(argv);
        cmd
    }

    /// Runs `runc --root R <args>` with output captured (only for commands that do not hand
    /// container stdio to runc); returns stdout or runc's error message.
    async fn run_runc(&self, command: &str, args: &[&str]) -> Result<Vec<u8>, RuntimeError> {
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root")
            .arg(self.runc_root())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| RuntimeError::Runc {
            command: command.into(),
            message: format!("spawning {}: {e}", self.runc.display()),
        })?;
        let out = match tokio::time::timeout(RUNC_TIMEOUT, child.wait_with_output()).await {
            Err(_) => return Err(RuntimeError::Timeout(RUNC_TIMEOUT)),
            Ok(out) => out?,
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        let message =
            runc_error_message(&out.stderr).unwrap_or_else(|| format!("failed ({})", out.status));
        Err(RuntimeError::Runc {
            command: command.into(),
            message,
        })
    }
}

fn is_alive(st: &ContainerState) -> bool {
    matches!(st, ContainerState::Running { .. } | ContainerState::Created)
}

fn check_id(id: &str, command: &str) -> Result<(), RuntimeError> {
    if crate::shim::valid_id(id) {
        Ok(())
    } else {
        Err(RuntimeError::Runc {
            command: command.into(),
            message: format!("invalid container id {id:?}"),
        })
    }
}

fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

async fn remove_if_exists(path: &Path) -> Result<(), RuntimeError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// The shim's exit record, `None` if there is none (yet). The shim renames it into place, so a
/// file that exists is complete.
async fn read_exit_file(path: &Path) -> Result<Option<ExitRecord>, RuntimeError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            RuntimeError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("exit file {}: {e}", path.display()),
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// runc's error from its stderr: the last line, its `msg="…"` if it is a logrus text line.
fn runc_error_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    if let Some(start) = line.find("msg=\"") {
        let rest = &line[start + 5..];
        let mut msg = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        msg.push(n);
                    }
                }
                '"' => return Some(msg),
                c => msg.push(c),
            }
        }
        return Some(msg);
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
        && let Some(msg) = v.get("msg").and_then(|m| m.as_str())
    {
        return Some(msg.to_string());
    }
    Some(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runc_errors() {
        let err = b"time=\"2026-12-07T13:35:44Z\" level=error msg=\"container does not exist\"\n";
        assert_eq!(
            runc_error_message(err).as_deref(),
            Some("container does not exist")
        );
        let err = b"time=\"x\" level=error msg=\"exec: \\\"nosuch\\\": not found\"\n";
        assert_eq!(
            runc_error_message(err).as_deref(),
            Some("exec: \"nosuch\": not found")
        );
        assert_eq!(runc_error_message(b"plain\n\n").as_deref(), Some("plain"));
        assert_eq!(runc_error_message(b""), None);
    }
}
