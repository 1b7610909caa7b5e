//! The per-container shim (conmon / containerd-shim's job): one small, detached supervisor per
//! container that creates and starts it with runc, pumps its stdout/stderr into a CRI log file,
//! reaps its init process as a child subreaper and records how it ended in an exit file.
//!
//! Usage: `skiff-shim <runc-binary> <runc-root> <id> <bundle> <log-file> <exit-file>`.
//!
//! 1. The shim `fork()`s. The parent waits on a sync pipe and prints `started <pid>` (exit 0) or
//!    `error <message>` (exit 1) on stdout, so the agent gets a synchronous answer from a
//!    short-lived process and never has to reap the daemon.
//! 2. The daemon child calls `setsid()` and `prctl(PR_SET_CHILD_SUBREAPER)`, points its stdio at
//!    `/dev/null`, and runs `runc create` with the container's stdout/stderr set to pipes it owns,
//!    then `runc start`. Only then does it answer on the sync pipe.
//! 3. Two threads turn the pipes into CRI log lines (`<RFC 3339 UTC> stdout F <line>`; `P` marks a
//!    partial line: longer than 16 KiB, or a last line without a newline).
//! 4. A `waitpid(-1)` loop reaps everything re-parented to the shim and records the init's status
//!    (its exit code, or 128 + the signal). After the pumps drain (bounded), the shim compares the
//!    memory cgroup's `oom_kill` counter with its value at start and writes the
//!    [`ExitRecord`](crate::runtime::ExitRecord) as JSON to `<exit-file>.tmp`, then renames it
//!    into place.
//!
//! std + libc only (no tokio): it runs once per container and must stay tiny. It never panics on
//! bad input: it prints `error …` and exits 1.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::runtime::ExitRecord;

/// The longest log line content written as one CRI line; longer lines are split into `P` parts.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// How long the shim waits, after the init died, for the log pipes to reach EOF.
const PUMP_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The shim's parsed command line.
struct Args {
    runc: PathBuf,
    root: PathBuf,
    id: OsString,
    bundle: PathBuf,
    log_file: PathBuf,
    exit_file: PathBuf,
}

/// Runs the shim with its arguments (after the program name); returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            println!("error {}", one_line(&e));
            return 1;
        }
    };
    let _ = std::io::stdout().flush();

    let (sync_read, sync_write) = match pipe_cloexec() {
        Ok(p) => p,
        Err(e) => {
            println!("error shim: sync pipe: {e}");
            return 1;
        }
    };

    // SAFETY: the shim is single-threaded here (no thread has been spawned yet), so the child
    // may keep running arbitrary Rust code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        println!("error shim: fork: {}", std::io::Error::last_os_error());
        return 1;
    }
    if pid > 0 {
        drop(sync_write);
        return parent(sync_read);
    }
    // The daemon child.
    drop(sync_read);
    let code = daemon(&args, sync_write);
    // Do not run anything the parent process might have registered; just leave.
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// The short-lived parent: relays the daemon's single answer line.
fn parent(sync_read: OwnedFd) -> i32 {
    let mut answer = Vec::new();
    let mut file = File::from(sync_read);
    let _ = file.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or("").trim();
    let mut out = std::io::stdout();
    if line.starts_with("started ") {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        0
    } else if line.starts_with("error ") {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        1
    } else {
        let _ = writeln!(out, "error shim daemon exited without reporting");
        let _ = out.flush();
        1
    }
}

fn parse_args(args: Vec<OsString>) -> Result<Args, String> {
    const USAGE: &str =
        "usage: skiff-shim <runc-binary> <runc-root> <id> <bundle> <log-file> <exit-file>";
    if args.len() != 6 {
        return Err(format!("{USAGE} (got {} arguments)", args.len()));
    }
    if args.iter().any(|a| a.is_empty()) {
        return Err(format!("{USAGE} (empty argument)"));
    }
    let mut it = args.into_iter();
    let mut next = || it.next().unwrap_or_default();
    let runc = PathBuf::from(next());
    let root = absolute(PathBuf::from(next()))?;
    let id = next();
    let bundle = absolute(PathBuf::from(next()))?;
    let log_file = absolute(PathBuf::from(next()))?;
    let exit_file = absolute(PathBuf::from(next()))?;
    let id_str = id.to_str().ok_or("container id is not UTF-8")?;
    if !valid_id(id_str) {
        return Err(format!("invalid container id {id_str:?}"));
    }
    if !bundle.join("config.json").is_file() {
        return Err(format!("no config.json in bundle {}", bundle.display()));
    }
    if exit_file.file_name().is_none() {
        return Err(format!("bad exit file path {}", exit_file.display()));
    }
    Ok(Args {
        runc,
        root,
        id,
        bundle,
        log_file,
        exit_file,
    })
}

/// runc's own id rule: `^[\w+\-.]+$`, and not `.`/`..`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
}

fn absolute(p: PathBuf) -> Result<PathBuf, String> {
    std::path::absolute(&p).map_err(|e| format!("path {}: {e}", p.display()))
}

/// Replaces newlines so a message fits the one-line sync protocol.
fn one_line(s: &str) -> String {
    s.trim().replace(['\n', '\r'], " ")
}

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned two fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The daemon: everything after the fork. Returns its exit code.
fn daemon(args: &Args, sync: OwnedFd) -> i32 {
    let mut sync = Some(File::from(sync));
    let report = |sync: &mut Option<File>, msg: &str| {
        if let Some(mut f) = sync.take() {
            let _ = f.write_all(format!("{}\n", one_line(msg)).as_bytes());
        }
    };
    if let Err(e) = detach(sync.as_ref().map(|f| f.as_raw_fd())) {
        report(&mut sync, &format!("error shim: {e}"));
        return 1;
    }
    match supervise(args, &mut sync) {
        Ok(()) => 0,
        Err(e) => {
            report(&mut sync, &format!("error {e}"));
            1
        }
    }
}

/// setsid, subreaper, stdio to /dev/null, cwd to `/`, and no inherited descriptors but `keep`.
fn detach(keep: Option<libc::c_int>) -> Result<(), String> {
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, both valid.
        if unsafe { libc::dup2(devnull.as_raw_fd(), fd) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: plain syscalls without pointers.
    unsafe {
        if libc::setsid() < 0 {
            return Err(format!("setsid: {}", std::io::Error::last_os_error()));
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(format!(
                "prctl(PR_SET_CHILD_SUBREAPER): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    drop(devnull);
    close_inherited_fds(keep);
    let _ = std::env::set_current_dir("/");
    Ok(())
}

/// Closes every descriptor above stderr except `keep`, so the daemon (and through it the
/// container) holds nothing of whoever started the shim.
fn close_inherited_fds(keep: Option<libc::c_int>) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<libc::c_int> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // The directory's own descriptor is in the list but already closed once `entries` is gone.
    for fd in fds {
        if fd > 2 && Some(fd) != keep {
            // SAFETY: closing a descriptor no Rust object of this process owns (the only owned
            // one, the sync pipe, is `keep`); a stale number just fails with EBADF.
            unsafe { libc::close(fd) };
        }
    }
}

fn runc_command(args: &Args) -> Command {
    let mut cmd = Command::new(&args.runc);
    cmd.arg("--root").arg(&args.root);
    cmd
}

/// Creates, starts and supervises the container. `Err` only before the sync answer was sent.
fn supervise(args: &Args, sync: &mut Option<File>) -> Result<(), String> {
    let runc_log = args.bundle.join("runc.log");
    let pid_file = args.bundle.join("container.pid");
    let _ = std::fs::remove_file(&runc_log);
    let _ = std::fs::remove_file(&pid_file);

    let (out_read, out_write) = pipe_cloexec().map_err(|e| format!("shim: pipe: {e}"))?;
    let (err_read, err_write) = pipe_cloexec().map_err(|e| format!("shim: pipe: {e}"))?;

    // `runc create`: the container inherits the pipes' write ends as its stdout/stderr. The
    // Command owns our copies, so once it is dropped only the container holds them.
    let status = {
        let mut cmd = runc_command(args);
        cmd.arg("--log")
            .arg(&runc_log)
            .arg("--log-format")
            .arg("json")
            .arg("create")
            .arg("--bundle")
            .arg(&args.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&args.id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write));
        cmd.status()
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return Err(format!("runc create: {}: {e}", args.runc.display())),
    };
    if !status.success() {
        let msg = runc_log_error(&runc_log)
            .or_else(|| last_line(&read_available(&err_read)))
            .unwrap_or_else(|| format!("runc create failed ({status})"));
        force_delete(args);
        return Err(msg);
    }

    let pid = match read_pid(&pid_file) {
        Ok(p) => p,
        Err(e) => {
            force_delete(args);
            return Err(format!("runc create: {e}"));
        }
    };
    let oom_file = oom_counter_file(pid);
    let oom_before = oom_file.as_deref().and_then(read_oom_kills).unwrap_or(0);

    // Log pumps.
    let log = match open_log(&args.log_file) {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            force_delete(args);
            return Err(format!("shim: log file {}: {e}", args.log_file.display()));
        }
    };
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut pumps = 0;
    for (fd, stream) in [(out_read, "stdout"), (err_read, "stderr")] {
        let log = Arc::clone(&log);
        let done = done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("pump-{stream}"))
            .stack_size(128 * 1024)
            .spawn(move || {
                pump(File::from(fd), stream, &log);
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => pumps += 1,
            Err(e) => {
                force_delete(args);
                return Err(format!("shim: thread: {e}"));
            }
        }
    }
    drop(done_tx);

    // `runc start`: it does not hold the container's stdio, so its output can be captured.
    let started = runc_command(args)
        .arg("--log")
        .arg(&runc_log)
        .arg("--log-format")
        .arg("json")
        .arg("start")
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let started_at = rfc3339_now();
    match started {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let msg = runc_log_error(&runc_log)
                .or_else(|| last_line(&out.stderr))
                .unwrap_or_else(|| format!("runc start failed ({})", out.status));
            force_delete(args);
            return Err(msg);
        }
        Err(e) => {
            force_delete(args);
            return Err(format!("runc start: {e}"));
        }
    }

    if let Some(mut f) = sync.take() {
        let _ = f.write_all(format!("started {pid}\n").as_bytes());
    }

    // Reap until the init is gone.
    let (exit_code, signal) = match reap_init(pid) {
        Some(s) => s,
        // The init was never our child (should not happen): no exit record, the agent reports
        // the container as Unknown.
        None => return Ok(()),
    };
    let finished_at = rfc3339_now();

    // Let the pumps drain (bounded: processes outside a pid namespace may hold the pipes).
    let deadline = Instant::now() + PUMP_DRAIN_TIMEOUT;
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }

    let oom_after = oom_file.as_deref().and_then(read_oom_kills).unwrap_or(0);
    let record = ExitRecord {
        exit_code,
        signal,
        oom_killed: oom_after > oom_before,
        started_at: Some(started_at),
        finished_at,
    };
    write_exit_file(&args.exit_file, &record);
    Ok(())
}

/// `waitpid(-1)` until `init` is reaped; returns (exit code, signal).
fn reap_init(init: u32) -> Option<(i32, Option<i32>)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: the init is not (or no longer) our child. Wait for it to vanish.
            // SAFETY: kill with signal 0 only checks existence.
            while unsafe { libc::kill(init as libc::pid_t, 0) } == 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            return None;
        }
        if r as u32 != init {
            continue;
        }
        if libc::WIFEXITED(status) {
            return Some((libc::WEXITSTATUS(status), None));
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            return Some((128 + sig, Some(sig)));
        }
    }
}

fn force_delete(args: &Args) {
    let _ = runc_command(args)
        .arg("delete")
        .arg("--force")
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn read_pid(path: &Path) -> Result<u32, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("pid file {}: {e}", path.display()))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("bad pid file {}: {:?}", path.display(), text.trim()))
}

/// The `msg` of the last error-level line of runc's JSON log.
fn runc_log_error(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fallback = None;
    for line in text.lines().rev() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(msg) = v.get("msg").and_then(|m| m.as_str()) else {
            continue;
        };
        let level = v.get("level").and_then(|l| l.as_str()).unwrap_or("");
        if matches!(level, "error" | "fatal" | "panic") {
            return Some(msg.to_string());
        }
        if fallback.is_none() {
            fallback = Some(msg.to_string());
        }
    }
    fallback
}

/// Last non-empty line of some output.
fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Whatever a pipe holds right now, without blocking.
fn read_available(fd: &OwnedFd) -> Vec<u8> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < 64 * 1024 {
        // SAFETY: reading into a valid buffer of the given length.
        let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    out
}

fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Copies one pipe into the log as CRI lines until EOF.
fn pump(mut pipe: File, stream: &str, log: &Mutex<File>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                let out = drain_lines(&mut pending, stream, false);
                if !out.is_empty() {
                    write_log(log, &out);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let out = drain_lines(&mut pending, stream, true);
    if !out.is_empty() {
        write_log(log, &out);
    }
}

fn write_log(log: &Mutex<File>, bytes: &[u8]) {
    let mut file = match log.lock() {
        Ok(f) => f,
        Err(poisoned) => poisoned.into_inner(),
    };
    let _ = file.write_all(bytes);
}

/// Turns the complete lines of `pending` into CRI log lines (and removes them). Content longer
/// than [`MAX_LOG_LINE`] becomes `P` parts; with `eof`, a rest without newline becomes a `P` line.
fn drain_lines(pending: &mut Vec<u8>, stream: &str, eof: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut ts: Option<String> = None;
    let mut emit = |out: &mut Vec<u8>, content: &[u8], tag: &str| {
        let t = ts.get_or_insert_with(rfc3339_now);
        out.extend_from_slice(t.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(content);
        out.push(b'\n');
    };
    loop {
        let rest = &pending[start..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) if i <= MAX_LOG_LINE => {
                emit(&mut out, &rest[..i], "F");
                start += i + 1;
            }
            _ if rest.len() >= MAX_LOG_LINE => {
                emit(&mut out, &rest[..MAX_LOG_LINE], "P");
                start += MAX_LOG_LINE;
            }
            _ => break,
        }
    }
    if eof && start < pending.len() {
        let rest = pending[start..].to_vec();
        emit(&mut out, &rest, "P");
        start = pending.len();
    }
    pending.drain(..start);
    out
}

/// The file holding the memory cgroup's OOM-kill counter of process `pid`: cgroup v1
/// `memory.oom_control`, or v2 `memory.events`.
fn oom_counter_file(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(
                Path::new("/sys/fs/cgroup/memory")
                    .join(rel)
                    .join("memory.oom_control"),
            );
        }
        if hier == "0" && controllers.is_empty() {
            v2 = Some(Path::new("/sys/fs/cgroup").join(rel).join("memory.events"));
        }
    }
    v2.filter(|p| p.exists())
}

/// The `oom_kill N` counter from either file format.
fn read_oom_kills(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some("oom_kill")).then(|| it.next()?.parse().ok())?
    })
}

fn write_exit_file(path: &Path, record: &ExitRecord) {
    let Ok(json) = serde_json::to_vec(record) else {
        return;
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut tmp_name = path
        .file_name()
        .unwrap_or(OsStr::new("exit.json"))
        .to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    if std::fs::write(&tmp, &json).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Now as RFC 3339 UTC with nanoseconds: `2026-11-22T02:20:30.351310489Z`.
fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats seconds + nanoseconds since the Unix epoch as RFC 3339 UTC with 9 fraction digits.
fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            rfc3339(1_795_314_030, 351_310_489),
            "2026-11-22T02:20:30.351310489Z"
        );
        for secs in [0i64, 86_399, 1_000_000_000, 4_102_444_800, 1_795_314_030] {
            let ts = jiff::Timestamp::from_second(secs).expect("in range");
            assert_eq!(rfc3339(secs, 0)[..19], ts.to_string()[..19]);
        }
    }

    #[test]
    fn splits_cri_lines() {
        let mut p = b"one\ntwo\nthr".to_vec();
        let out = String::from_utf8(drain_lines(&mut p, "stdout", false)).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" stdout F one"));
        assert!(lines[1].ends_with(" stdout F two"));
        assert_eq!(p, b"thr");
        let out = String::from_utf8(drain_lines(&mut p, "stdout", true)).expect("utf8");
        assert!(out.ends_with(" stdout P thr\n"));
        assert!(p.is_empty());

        let mut long = vec![b'a'; MAX_LOG_LINE + 10];
        long.push(b'\n');
        let out = String::from_utf8(drain_lines(&mut long, "stderr", false)).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(" stderr P ") && lines[0].ends_with(&"a".repeat(MAX_LOG_LINE)));
        assert!(lines[1].ends_with(" stderr F aaaaaaaaaa"));
    }

    #[test]
    fn bad_args_are_errors() {
        assert_eq!(main(vec![]), 1);
        assert_eq!(main(vec!["a".into(); 6]), 1);
        assert!(valid_id("skiff-abc_1.2+x"));
        assert!(!valid_id("../x") && !valid_id("") && !valid_id(".."));
    }
}
