//! Real-runc tests of the runtime layer: `RuncRuntime` + `skiff-shim` with busybox bundles built
//! at test time from the host's static busybox.
//!
//! They need root, runc, `/usr/bin/busybox` (busybox-static) and cgroupfs; otherwise each test
//! prints `skipping …` and passes. `SKIFF_SKIP_RUNC=1` skips them on purpose. Every test uses its
//! own state dir, container ids and cgroup parent (`/skiff-test-<pid>-<test>`), and cleans up
//! (runc delete --force, then the cgroup dirs in every hierarchy, deepest first) even on failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_node_agent::runtime::{ContainerState, ExitRecord, RuncRuntime, RuntimeError};

const RUNC: &str = "/usr/sbin/runc";
const BUSYBOX: &str = "/usr/bin/busybox";

fn runc_path() -> PathBuf {
    if Path::new(RUNC).exists() {
        return PathBuf::from(RUNC);
    }
    PathBuf::from("runc")
}

/// Why real-runc tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if std::env::var_os("SKIFF_SKIP_RUNC").is_some() {
        return Some("SKIFF_SKIP_RUNC set".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match std::process::Command::new(runc_path())
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => {}
        _ => return Some("runc --version failed".into()),
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("{BUSYBOX} missing (busybox-static)"));
    }
    if !Path::new("/sys/fs/cgroup/memory").exists()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        return Some("no cgroupfs".into());
    }
    None
}

macro_rules! require_runc {
    ($name:expr) => {
        if let Some(why) = skip_reason() {
            eprintln!("skipping {}: {why}", $name);
            return;
        }
    };
}

/// One test's world: a state dir, a runtime, bundles, and cleanup on drop.
struct Env {
    dir: tempfile::TempDir,
    rt: RuncRuntime,
    prefix: String,
    cgroup_parent: String,
    ids: Vec<String>,
}

impl Env {
    fn new(test: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("skiff-rt-test")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let pid = std::process::id();
        let rt = RuncRuntime::new(
            runc_path(),
            dir.path().join("state"),
            PathBuf::from(env!("CARGO_BIN_EXE_skiff-shim")),
        );
        build_rootfs(&dir.path().join("rootfs"));
        Env {
            rt,
            prefix: format!("skt{pid}-{test}"),
            cgroup_parent: format!("skiff-test-{pid}-{test}"),
            dir,
            ids: Vec::new(),
        }
    }

    /// A bundle for container `name` running `args`; returns (id, bundle, log path).
    fn bundle(
        &mut self,
        name: &str,
        args: &[&str],
        memory: Option<i64>,
    ) -> (String, PathBuf, PathBuf) {
        self.bundle_for(name, name, args, memory)
    }

    /// Like [`Env::bundle`], with a bundle dir of its own for container `name`.
    fn bundle_for(
        &mut self,
        name: &str,
        dir_name: &str,
        args: &[&str],
        memory: Option<i64>,
    ) -> (String, PathBuf, PathBuf) {
        let id = format!("{}-{name}", self.prefix);
        let bundle = self.dir.path().join("bundles").join(dir_name);
        std::fs::create_dir_all(&bundle).expect("bundle dir");
        let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
        if let Some(limit) = memory {
            resources["memory"] = json!({"limit": limit, "swap": limit});
        }
        let config = json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "noNewPrivileges": true,
                "capabilities": {
                    "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                }
            },
            "root": {"path": self.dir.path().join("rootfs"), "readonly": true},
            "hostname": name,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev", "mode=1777"]}
            ],
            "linux": {
                "cgroupsPath": format!("/{}/{id}", self.cgroup_parent),
                "resources": resources,
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}
                ],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        });
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("write config.json");
        if !self.ids.contains(&id) {
            self.ids.push(id.clone());
        }
        let log = self.dir.path().join("logs").join(name).join("0.log");
        (id, bundle, log)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let root = self.dir.path().join("state").join("runc");
        for id in &self.ids {
            let _ = std::process::Command::new(runc_path())
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .stderr(std::process::Stdio::null())
                .status();
        }
        // The shims exit right after the containers; give them a moment, then remove the
        // cgroup dirs (leaves first) in every hierarchy.
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..20 {
            if remove_cgroups(&self.cgroup_parent) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// rmdir `<hierarchy>/<parent>` and everything below it, deepest first; true when all are gone.
fn remove_cgroups(parent: &str) -> bool {
    fn rm_tree(dir: &Path) -> bool {
        let mut ok = true;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    ok &= rm_tree(&e.path());
                }
            }
        }
        ok && std::fs::remove_dir(dir).is_ok()
    }
    let mut all = true;
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    for h in roots {
        let d = h.join(parent);
        if d.is_dir() {
            all &= rm_tree(&d);
        }
    }
    all
}

/// rootfs with busybox and a symlink per applet.
fn build_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
}

/// Polls `state` until the container exited (bounded).
async fn wait_exited(rt: &RuncRuntime, id: &str, within: Duration) -> ExitRecord {
    let deadline = Instant::now() + within;
    loop {
        match rt.state(id).await.expect("state") {
            ContainerState::Exited(rec) => return rec,
            other if Instant::now() >= deadline => panic!("{id} did not exit: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn is_rfc3339(s: &str) -> bool {
    s.parse::<jiff::Timestamp>().is_ok()
}

#[tokio::test]
async fn version_is_parsed() {
    require_runc!("version_is_parsed");
    let env = Env::new("ver");
    let v = env.rt.version().await.expect("version");
    assert!(v.starts_with(|c: char| c.is_ascii_digit()), "version {v:?}");
    assert!(!v.contains(' '));
}

#[tokio::test]
async fn exit_code_and_cri_logs() {
    require_runc!("exit_code_and_cri_logs");
    let mut env = Env::new("exit");
    let script = "echo hello; echo oops >&2; head -c 20000 /dev/zero | tr '\\0' a; echo; printf tail; exit 3";
    let (id, bundle, log) = env.bundle("three", &["sh", "-c", script], None);
    let pid = env.rt.start(&id, &bundle, &log).await.expect("start");
    assert!(pid > 1);
    let rec = wait_exited(&env.rt, &id, Duration::from_secs(10)).await;
    assert_eq!(rec.exit_code, 3, "{rec:?}");
    assert_eq!(rec.signal, None);
    assert!(!rec.oom_killed);
    assert!(
        is_rfc3339(rec.started_at.as_deref().expect("started_at")),
        "{rec:?}"
    );
    assert!(is_rfc3339(&rec.finished_at), "{rec:?}");
    // The exit file has the documented name and JSON shape.
    let raw = std::fs::read_to_string(
        env.dir
            .path()
            .join("state/exits")
            .join(format!("{id}.json")),
    )
    .expect("exit file");
    let parsed: ExitRecord = serde_json::from_str(&raw).expect("exit json");
    assert_eq!(parsed, rec);

    let text = std::fs::read_to_string(&log).expect("log file");
    let lines: Vec<(&str, &str, &str, &str)> = text
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let ts = p.next().unwrap_or("");
            assert!(is_rfc3339(ts), "bad timestamp in {l:?}");
            (
                ts,
                p.next().unwrap_or(""),
                p.next().unwrap_or(""),
                p.next().unwrap_or(""),
            )
        })
        .collect();
    let find = |stream: &str, tag: &str, content: &str| {
        lines
            .iter()
            .any(|(_, s, t, c)| *s == stream && *t == tag && *c == content)
    };
    assert!(find("stdout", "F", "hello"), "{text}");
    assert!(find("stderr", "F", "oops"), "{text}");
    assert!(
        find("stdout", "P", &"a".repeat(16 * 1024)),
        "long line not split"
    );
    assert!(
        find("stdout", "F", &"a".repeat(20000 - 16 * 1024)),
        "long line rest"
    );
    assert!(find("stdout", "P", "tail"), "{text}");

    // Removal clears both runc's state and the exit file.
    env.rt.remove(&id).await.expect("remove");
    assert_eq!(
        env.rt.state(&id).await.expect("state"),
        ContainerState::NotFound
    );
    env.rt.remove(&id).await.expect("remove twice");
}

#[tokio::test]
async fn stop_escalates_to_kill_after_grace() {
    require_runc!("stop_escalates_to_kill_after_grace");
    let mut env = Env::new("stopkill");
    let (id, bundle, log) = env.bundle("forever", &["sh", "-c", "sleep 1000"], None);
    let pid = env.rt.start(&id, &bundle, &log).await.expect("start");
    assert_eq!(
        env.rt.state(&id).await.expect("state"),
        ContainerState::Running { pid }
    );
    let t = Instant::now();
    let st = env
        .rt
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop");
    let took = t.elapsed();
    match st {
        ContainerState::Exited(rec) => {
            assert_eq!(rec.exit_code, 137, "{rec:?}");
            assert_eq!(rec.signal, Some(9));
            assert!(!rec.oom_killed);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        took >= Duration::from_secs(1),
        "stopped before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    // Stopping again returns the record.
    assert!(matches!(
        env.rt
            .stop(&id, Duration::from_secs(1))
            .await
            .expect("stop again"),
        ContainerState::Exited(ExitRecord { exit_code: 137, .. })
    ));
    env.rt.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn stop_honours_term_handler() {
    require_runc!("stop_honours_term_handler");
    let mut env = Env::new("stopterm");
    let script = "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let (id, bundle, log) = env.bundle("graceful", &["sh", "-c", script], None);
    env.rt.start(&id, &bundle, &log).await.expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let st = env
        .rt
        .stop(&id, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    match st {
        ContainerState::Exited(rec) => assert_eq!((rec.exit_code, rec.signal), (0, None)),
        other => panic!("unexpected {other:?}"),
    }
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains(" stdout F got TERM"), "{text}");
    env.rt.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn oom_kill_is_recorded() {
    require_runc!("oom_kill_is_recorded");
    let mut env = Env::new("oom");
    let args = ["dd", "if=/dev/zero", "of=/dev/shm/x", "bs=1M", "count=64"];
    let (id, bundle, log) = env.bundle("hog", &args, Some(16 * 1024 * 1024));
    env.rt.start(&id, &bundle, &log).await.expect("start");
    let rec = wait_exited(&env.rt, &id, Duration::from_secs(20)).await;
    assert_eq!(rec.exit_code, 137, "{rec:?}");
    assert_eq!(rec.signal, Some(9));
    assert!(rec.oom_killed, "{rec:?}");
    env.rt.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn exec_returns_code_and_output() {
    require_runc!("exec_returns_code_and_output");
    let mut env = Env::new("exec");
    let (id, bundle, log) = env.bundle("target", &["sleep", "1000"], None);
    env.rt.start(&id, &bundle, &log).await.expect("start");
    let argv: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = env
        .rt
        .exec(&id, &argv, Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 4);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let ok = env
        .rt
        .exec(&id, &["true".to_string()], Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(ok.exit_code, 0);

    let slow = ["sleep".to_string(), "30".to_string()];
    let t = Instant::now();
    match env.rt.exec(&id, &slow, Duration::from_millis(500)).await {
        Err(RuntimeError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5));

    // exec_command only builds the command.
    let cmd = env.rt.exec_command(&id, &["true".to_string()], false);
    let status = cmd.into_std().status().expect("exec_command");
    assert!(status.success());

    let st = env
        .rt
        .stop(&id, Duration::from_millis(200))
        .await
        .expect("stop");
    assert!(
        matches!(
            st,
            ContainerState::Exited(ExitRecord { exit_code: 137, .. })
        ),
        "{st:?}"
    );
    env.rt.remove(&id).await.expect("remove");
}

#[tokio::test]
async fn missing_command_fails_start() {
    require_runc!("missing_command_fails_start");
    let mut env = Env::new("missing");
    let (id, bundle, log) = env.bundle("nosuch", &["nosuch-command"], None);
    match env.rt.start(&id, &bundle, &log).await {
        Err(RuntimeError::Start(msg)) => {
            eprintln!("start error: {msg}");
            assert!(msg.contains("executable file not found"), "{msg}");
        }
        other => panic!("expected a start error, got {other:?}"),
    }
    // Nothing is left behind.
    assert_eq!(
        env.rt.state(&id).await.expect("state"),
        ContainerState::NotFound
    );
    assert!(env.rt.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn bad_shim_input_is_an_error() {
    require_runc!("bad_shim_input_is_an_error");
    let env = Env::new("badinput");
    let shim = env!("CARGO_BIN_EXE_skiff-shim");
    let out = std::process::Command::new(shim)
        .arg("x")
        .output()
        .expect("run shim");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("error usage"));
    let missing = env.dir.path().join("no-bundle");
    match env
        .rt
        .start("skt-bad", &missing, &env.dir.path().join("x.log"))
        .await
    {
        Err(RuntimeError::Start(msg)) => assert!(msg.contains("config.json"), "{msg}"),
        other => panic!("{other:?}"),
    }
    match env
        .rt
        .start("../evil", &missing, &env.dir.path().join("x.log"))
        .await
    {
        Err(RuntimeError::Start(msg)) => assert!(msg.contains("invalid container id"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn containers_are_readopted_by_a_new_runtime() {
    require_runc!("containers_are_readopted_by_a_new_runtime");
    let mut env = Env::new("adopt");
    let (web, web_bundle, web_log) = env.bundle(
        "web",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo beat $i; i=$((i+1)); sleep 0.2; done",
        ],
        None,
    );
    let (short, short_bundle, short_log) =
        env.bundle("short", &["sh", "-c", "sleep 0.5; exit 7"], None);
    let web_pid = env
        .rt
        .start(&web, &web_bundle, &web_log)
        .await
        .expect("start web");
    env.rt
        .start(&short, &short_bundle, &short_log)
        .await
        .expect("start short");

    // The "agent" goes away; nobody watches while `short` exits.
    let state_dir = env.dir.path().join("state");
    let runtime = std::mem::replace(
        &mut env.rt,
        RuncRuntime::new(
            runc_path(),
            state_dir.clone(),
            PathBuf::from("/nonexistent"),
        ),
    );
    drop(runtime);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        state_dir
            .join("exits")
            .join(format!("{short}.json"))
            .exists()
    );

    let rt = RuncRuntime::new(
        runc_path(),
        state_dir,
        PathBuf::from(env!("CARGO_BIN_EXE_skiff-shim")),
    );
    let mut listed = rt.list().await.expect("list");
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(listed.len(), 2, "{listed:?}");
    let w = listed.iter().find(|c| c.id == web).expect("web listed");
    assert_eq!((w.status.as_str(), w.pid), ("running", web_pid));
    assert_eq!(w.bundle, web_bundle);
    let s = listed.iter().find(|c| c.id == short).expect("short listed");
    assert_eq!(s.status, "stopped");
    assert_eq!(
        rt.state(&web).await.expect("state"),
        ContainerState::Running { pid: web_pid }
    );
    match rt.state(&short).await.expect("state") {
        ContainerState::Exited(rec) => assert_eq!(rec.exit_code, 7),
        other => panic!("{other:?}"),
    }
    let beats = std::fs::read_to_string(&web_log).expect("web log");
    assert!(
        beats
            .lines()
            .filter(|l| l.contains(" stdout F beat "))
            .count()
            >= 3,
        "{beats}"
    );

    let st = rt
        .stop(&web, Duration::from_millis(300))
        .await
        .expect("stop");
    assert!(
        matches!(
            st,
            ContainerState::Exited(ExitRecord { exit_code: 137, .. })
        ),
        "{st:?}"
    );
    rt.remove(&web).await.expect("remove web");
    rt.remove(&short).await.expect("remove short");
    assert!(rt.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn shim_death_reports_unknown() {
    require_runc!("shim_death_reports_unknown");
    let mut env = Env::new("shimdeath");
    let (id, bundle, log) = env.bundle("orphan", &["sleep", "1000"], None);
    let pid = env.rt.start(&id, &bundle, &log).await.expect("start");
    // The shim is the container init's parent; kill exactly that process.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let ppid: i32 = after_comm
        .split_whitespace()
        .nth(1)
        .expect("ppid")
        .parse()
        .expect("ppid");
    let shim_cmd = std::fs::read_to_string(format!("/proc/{ppid}/cmdline")).expect("cmdline");
    assert!(
        shim_cmd.contains("skiff-shim"),
        "parent is not the shim: {shim_cmd:?}"
    );
    // SAFETY: signalling a process this test started (through the runtime), by pid.
    assert_eq!(unsafe { libc::kill(ppid, libc::SIGKILL) }, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.rt.kill(&id, libc::SIGKILL).await.expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match env.rt.state(&id).await.expect("state") {
            ContainerState::Unknown => break,
            ContainerState::Running { .. } if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("expected Unknown, got {other:?}"),
        }
    }
    env.rt.remove(&id).await.expect("remove");
    assert_eq!(
        env.rt.state(&id).await.expect("state"),
        ContainerState::NotFound
    );
}

#[tokio::test]
async fn start_replaces_stale_container_of_same_id() {
    require_runc!("start_replaces_stale_container_of_same_id");
    let mut env = Env::new("stale");
    let (id, first, log) = env.bundle_for("again", "first", &["sh", "-c", "exit 5"], None);
    env.rt.start(&id, &first, &log).await.expect("first start");
    let rec = wait_exited(&env.rt, &id, Duration::from_secs(10)).await;
    assert_eq!(rec.exit_code, 5);
    // Not removed: runc still knows the stopped container and its exit file is there.
    let (same, second, log2) = env.bundle_for("again", "second", &["sleep", "1000"], None);
    assert_eq!(same, id);
    let pid = env
        .rt
        .start(&id, &second, &log2)
        .await
        .expect("second start");
    assert_eq!(
        env.rt.state(&id).await.expect("state"),
        ContainerState::Running { pid }
    );
    let listed = env.rt.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].bundle, second);
    env.rt.remove(&id).await.expect("remove");
    assert_eq!(
        env.rt.state(&id).await.expect("state"),
        ContainerState::NotFound
    );
    assert!(!env.rt.exit_file(&id).exists());
}
