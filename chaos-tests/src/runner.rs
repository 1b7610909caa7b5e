//! One run, end to end: namespaces → members → workload + nemesis → heal → final reads →
//! checkers → run directory.
//!
//! The synchronous part ([`run`]) builds the namespaces, moves the harness into the switch
//! namespace (before any thread of the async runtime exists, so every client socket lives there),
//! then drives the async part; whatever happens — success, checker failure, harness error,
//! Ctrl-C/SIGTERM or a panic — the members are killed and the namespaces deleted before it
//! returns, and the history recorded so far is written and checked.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::analysis;
use crate::client::Recorder;
use crate::cluster::{Cluster, ClusterSpec, LIBFAKETIME, Target};
use crate::history::Value;
use crate::nemesis::{self, Nemesis, NemesisSpec};
use crate::net::{self, Topology};
use crate::results::{Results, RunInfo, Validity};
use crate::workload::{self, Ctx, Workload};

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Workload.
    pub workload: Workload,
    /// Faults.
    pub nemesis: NemesisSpec,
    /// Initial members.
    pub nodes: usize,
    /// Workload phase length.
    pub time_limit: Duration,
    /// Seed.
    pub seed: u64,
    /// Store implementation.
    pub target: Target,
    /// Store binary.
    pub binary: PathBuf,
    /// Results root (the run directory goes below it).
    pub out_root: PathBuf,
    /// Client workers.
    pub concurrency: usize,
    /// Target ops/s.
    pub rate: f64,
    /// Per-request timeout.
    pub op_timeout: Duration,
    /// Bound on recovery after healing.
    pub recovery_limit: Duration,
    /// Minimum ok fraction during the workload.
    pub min_ok_fraction: f64,
    /// `--snapshot-count` of the members.
    pub snapshot_count: u64,
    /// `--heartbeat-interval` (ms).
    pub heartbeat_ms: u64,
    /// `--election-timeout` (ms).
    pub election_ms: u64,
    /// Extra member arguments.
    pub extra_args: Vec<String>,
    /// Extra member environment.
    pub extra_env: Vec<(String, String)>,
    /// Keep data directories after the run.
    pub keep_data: bool,
    /// Linearizability checker budget.
    pub lin_timeout: Duration,
    /// Show the progress line.
    pub progress: bool,
    /// Watchers request progress notifications (etcd 3.4 answers a progress request with its
    /// current revision before delivering pending events, so `auto` turns them off for etcd).
    pub watch_progress: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The run directory.
    pub dir: PathBuf,
    /// The results.
    pub results: Results,
    /// A harness error, if the run did not complete normally.
    pub error: Option<String>,
}

impl RunOutcome {
    /// 0 valid, 1 invalid, 2 unknown or harness error (an invalid verdict wins over an error).
    pub fn exit_code(&self) -> i32 {
        match (self.results.valid, &self.error) {
            (Validity::False, _) => 1,
            (_, Some(_)) => 2,
            (v, None) => v.exit_code(),
        }
    }
}

/// Problems found before anything is started (one line each).
pub fn preflight(cfg: &RunConfig) -> Result<(), String> {
    if !net::is_root() {
        return Err("skiff-chaos needs root (network namespaces and iptables)".into());
    }
    if !cfg.binary.is_file() {
        return Err(format!(
            "store binary {} not found (build it with `cargo build -p skiff`, or pass --skiff-bin / --etcd-bin)",
            cfg.binary.display()
        ));
    }
    if net::run("iptables", &["-V"]).is_err() {
        return Err("iptables is not installed (apt-get install -y iptables)".into());
    }
    if cfg.nemesis.has_kind("clock") && !Path::new(LIBFAKETIME).exists() {
        return Err(format!(
            "the clock nemesis needs libfaketime ({LIBFAKETIME}): apt-get install -y faketime libfaketime"
        ));
    }
    if !(1..=7).contains(&cfg.nodes) {
        return Err("--nodes must be between 1 and 7".into());
    }
    Ok(())
}

/// UTC `YYYYmmddTHHMMSS` of now.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The run's name: `<workload>-<nemesis+…|none>-<target>`.
pub fn test_name(cfg: &RunConfig) -> String {
    let n = if cfg.nemesis.requested.is_empty() {
        "none".to_owned()
    } else {
        cfg.nemesis.requested.join("+")
    };
    format!("{}-{n}-{}", cfg.workload.name(), cfg.target.as_str())
}

fn run_info(cfg: &RunConfig, run_id: &str, notes: Vec<String>) -> RunInfo {
    RunInfo {
        workload: cfg.workload.name().to_owned(),
        nemesis: cfg.nemesis.requested.clone(),
        target: cfg.target.as_str().to_owned(),
        binary: cfg.binary.display().to_string(),
        nodes: cfg.nodes,
        time_limit_s: cfg.time_limit.as_secs_f64(),
        seed: cfg.seed,
        concurrency: cfg.concurrency,
        rate: cfg.rate,
        op_timeout_ms: cfg.op_timeout.as_millis() as u64,
        recovery_limit_s: cfg.recovery_limit.as_secs_f64(),
        min_ok_fraction: cfg.min_ok_fraction,
        run_id: run_id.to_owned(),
        notes,
        plan: nemesis::schedule(&cfg.nemesis, cfg.time_limit, cfg.seed),
    }
}

/// Runs one test. Must be called before any other thread of this process uses the network (it
/// switches the calling thread into the run's switch namespace).
pub fn run(cfg: &RunConfig) -> Result<RunOutcome, String> {
    preflight(cfg)?;
    let run_id = net::new_run_id();
    let dir = cfg
        .out_root
        .join(test_name(cfg))
        .join(format!("{}-{run_id}", timestamp()));
    std::fs::create_dir_all(dir.join("nodes")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let latest = cfg.out_root.join(test_name(cfg)).join("latest");
    let _ = std::fs::remove_file(&latest);
    #[cfg(unix)]
    let _ = std::os::unix::fs::symlink(dir.file_name().unwrap_or_default(), &latest);
    let data_root = PathBuf::from("/var/tmp/skiff-chaos/data").join(&run_id);
    std::fs::create_dir_all(&data_root).map_err(|e| format!("{}: {e}", data_root.display()))?;

    net::install_panic_cleanup();
    let topology = Topology::new(&run_id, cfg.nodes);
    topology.create().map_err(|e| e.to_string())?;
    if let Err(e) = net::enter_netns(&topology.switch_ns()) {
        topology.destroy();
        return Err(e.to_string());
    }
    let spec = ClusterSpec {
        target: cfg.target,
        binary: cfg.binary.clone(),
        nodes: cfg.nodes,
        token: format!("skiff-chaos-{run_id}"),
        heartbeat_ms: cfg.heartbeat_ms,
        election_ms: cfg.election_ms,
        snapshot_count: cfg.snapshot_count,
        faketime: cfg.nemesis.has_kind("clock"),
        extra_args: cfg.extra_args.clone(),
        extra_env: {
            let mut env = cfg.extra_env.clone();
            if cfg.nemesis.has_kind("power-loss") {
                env.push(("SKIFF_CHAOS_POWERLOSS".into(), "1".into()));
            }
            env
        },
    };
    let cluster = Arc::new(Cluster::new(
        spec,
        topology.clone(),
        &data_root,
        &dir.join("nodes"),
    ));
    let rec = Arc::new(Recorder::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let drive = {
        let cluster = cluster.clone();
        let rec = rec.clone();
        let cfg = cfg.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| e.to_string())?;
            tokio::select! {
                r = drive(&cfg, cluster, rec) => r,
                _ = tokio::signal::ctrl_c() => Err("interrupted (Ctrl-C)".to_owned()),
                _ = term.recv() => Err("interrupted (SIGTERM)".to_owned()),
            }
        }
    };
    let outcome = rt.block_on(drive);
    rt.shutdown_timeout(Duration::from_secs(2));
    cluster.kill_all();
    topology.destroy();
    if !cfg.keep_data {
        let _ = std::fs::remove_dir_all(&data_root);
    }
    let (notes, error) = match outcome {
        Ok(notes) => (notes, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let history = rec.snapshot();
    let info = run_info(cfg, &run_id, notes);
    let write = |name: &str, text: String| {
        let _ = std::fs::write(dir.join(name), text);
    };
    write(
        "run.json",
        serde_json::to_string_pretty(&info).unwrap_or_default() + "\n",
    );
    let _ = history.save_jsonl(dir.join("history.jsonl"));
    let mut results = analysis::analyze(&history, &info, Some(&dir.join("nodes")), cfg.lin_timeout);
    if let Some(e) = &error {
        results
            .checks
            .entry("harness".into())
            .or_insert_with(|| crate::results::CheckResult::new(Validity::Unknown))
            .set("error", e.clone());
        if results.valid == Validity::True {
            results.valid = Validity::Unknown;
        }
    }
    let _ = results.write(&dir);
    if let Err(e) = crate::plot::render(
        &history,
        &test_name(cfg),
        &dir.join("latency-throughput.png"),
    ) {
        eprintln!("skiff-chaos: {e}");
    }
    Ok(RunOutcome {
        dir,
        results,
        error,
    })
}

/// The async part: returns notes for `run.json`.
async fn drive(
    cfg: &RunConfig,
    cluster: Arc<Cluster>,
    rec: Arc<Recorder>,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    cluster
        .start_all()
        .map_err(|e| format!("cannot start members: {e}"))?;
    let mut nem = Nemesis::new(cluster.clone(), rec.clone(), cfg.seed);
    let phase = Arc::new(std::sync::Mutex::new("starting".to_owned()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let progress = tokio::spawn(progress_task(
        rec.clone(),
        cfg.time_limit,
        phase.clone(),
        nem.current.clone(),
        done_rx.clone(),
        cfg.progress,
    ));
    let monitor = {
        let cluster = cluster.clone();
        let rec = rec.clone();
        let mut done = done_rx.clone();
        tokio::spawn(async move {
            loop {
                for e in cluster.reap() {
                    rec.named(
                        "harness",
                        "node-exited",
                        Value::Map(std::collections::BTreeMap::from([
                            ("node".to_owned(), Value::Str(format!("n{}", e.slot))),
                            ("status".to_owned(), Value::Str(e.status)),
                        ])),
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = done.wait_for(|d| *d) => return,
                }
            }
        })
    };
    let set_phase = |s: &str| {
        if let Ok(mut p) = phase.lock() {
            *p = s.to_owned();
        }
    };
    let finish = |notes| {
        let _ = done_tx.send(true);
        Ok(notes)
    };
    if nem.await_healthy(Duration::from_secs(30)).await.is_none() {
        let _ = done_tx.send(true);
        let _ = progress.await;
        return Err("the cluster did not become healthy within 30 s of starting".into());
    }
    let nodes = cluster.members();
    if cfg.workload == Workload::Lease
        && let Err(note) = workload::lease::supported(nodes[0]).await
    {
        notes.push(format!("skipped: {note}"));
        set_phase("skipped");
        nem.heal_all().await;
        let _ = done_tx.send(true);
        let _ = progress.await;
        let _ = monitor.await;
        return Ok(notes);
    }
    let ctx = Ctx {
        rec: rec.clone(),
        nodes: nodes.clone(),
        workers: cfg.concurrency,
        op_timeout: cfg.op_timeout,
        rate: cfg.rate,
        seed: cfg.seed,
        stop: stop_rx.clone(),
        watch_progress: cfg.watch_progress,
    };
    if cfg.workload == Workload::Watch && !cfg.watch_progress {
        notes.push("watchers did not request progress notifications (bookmarks unchecked)".into());
    }
    set_phase("workload");
    let reg_keys = Arc::new(workload::register::Keys::new(
        (cfg.concurrency / 2).max(1),
        120,
    ));
    let app_keys = Arc::new(workload::append::AppendKeys::new(5, 100));
    let lease_keys = Arc::new(workload::lease::LeaseKeys::default());
    let mut workers = Vec::new();
    for w in 0..cfg.concurrency {
        let ctx = ctx.clone();
        workers.push(match cfg.workload {
            Workload::Register => {
                tokio::spawn(workload::register::worker(ctx, w, reg_keys.clone()))
            }
            Workload::Append => tokio::spawn(workload::append::worker(ctx, w, app_keys.clone())),
            Workload::Watch => tokio::spawn(workload::watch::worker(ctx, w)),
            Workload::Lease => tokio::spawn(workload::lease::worker(ctx, w, lease_keys.clone())),
            Workload::K8s => tokio::spawn(workload::k8s::worker(ctx, w)),
        });
    }
    let plan = nemesis::schedule(&cfg.nemesis, cfg.time_limit, cfg.seed);
    let start = tokio::time::Instant::now();
    let nem_task = {
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            nem.run_plan(&plan, start, stop).await;
            nem
        })
    };
    tokio::time::sleep(cfg.time_limit).await;
    let _ = stop_tx.send(true);
    set_phase("stopping");
    for w in workers {
        if tokio::time::timeout(cfg.op_timeout * 4 + Duration::from_secs(2), w)
            .await
            .is_err()
        {
            notes.push("a worker did not stop in time".into());
        }
    }
    let mut nem = match tokio::time::timeout(Duration::from_secs(20), nem_task).await {
        Ok(Ok(n)) => n,
        _ => {
            notes.push("the nemesis did not finish its last fault in time".into());
            Nemesis::new(cluster.clone(), rec.clone(), cfg.seed ^ 1)
        }
    };
    set_phase("healing");
    nem.heal_all().await;
    nem.await_healthy(cfg.recovery_limit).await;
    set_phase("final reads");
    let members = cluster.members();
    match cfg.workload {
        Workload::Register => {
            workload::register::final_reads(&ctx, &members, &reg_keys, cfg.recovery_limit).await
        }
        Workload::Append => {
            workload::append::final_reads(&ctx, &members, &app_keys, cfg.recovery_limit).await
        }
        Workload::Watch => workload::watch::final_history(&ctx, &members, cfg.recovery_limit).await,
        Workload::K8s => workload::k8s::final_lists(&ctx, &members, cfg.recovery_limit).await,
        Workload::Lease => {
            // Every lease (TTL ≤ 4 s, renewed at most on a leader change) must be gone by then.
            tokio::time::sleep(Duration::from_secs(8)).await;
            workload::lease::final_reads(&ctx, &members, &lease_keys, cfg.recovery_limit).await
        }
    }
    set_phase("checking");
    let r = finish(notes);
    let _ = progress.await;
    let _ = monitor.await;
    r
}

async fn progress_task(
    rec: Arc<Recorder>,
    limit: Duration,
    phase: Arc<std::sync::Mutex<String>>,
    current: Arc<std::sync::Mutex<Option<String>>>,
    mut done: tokio::sync::watch::Receiver<bool>,
    enabled: bool,
) {
    if !enabled {
        return;
    }
    let tty = std::io::stderr().is_terminal();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = done.wait_for(|d| *d) => break,
        }
        n += 1;
        if !tty && !n.is_multiple_of(10) {
            continue;
        }
        let c = &rec.counters;
        let line = format!(
            "[{:>5.1}s/{:.0}s] {:<11} ok {} fail {} info {} | nemesis: {}",
            rec.start().elapsed().as_secs_f64(),
            limit.as_secs_f64(),
            phase.lock().map(|p| p.clone()).unwrap_or_default(),
            c.ok.load(Ordering::Relaxed),
            c.fail.load(Ordering::Relaxed),
            c.info.load(Ordering::Relaxed),
            current
                .lock()
                .ok()
                .and_then(|c| c.clone())
                .unwrap_or_else(|| "-".into()),
        );
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
    if tty {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_right() {
        let t = timestamp();
        assert_eq!(t.len(), 15);
        assert_eq!(&t[8..9], "T");
        assert!(t.starts_with("20"));
    }
}
