//! `skiff bench compare`: a 3-member skiff cluster and a 3-member real etcd cluster on
//! loopback, the same workload matrix run against each alternately, and a Markdown report
//! plus a PNG chart of the skiff/etcd ratios.
//!
//! Procedure:
//! 1. Start both clusters (data dirs side by side under one work directory, so on the same
//!    disk; heartbeat 100 ms and election timeout 1000 ms on both) and wait until every
//!    member serves a linearizable read. Record each member's idle RSS.
//! 2. Preload `preload` keys (sequential, 8-byte keys, 256-byte values, 64 clients) into
//!    each cluster; record RSS again.
//! 3. For each repeat, for each case of the matrix (put at 1/16/64/256 clients,
//!    linearizable and serializable range of one preloaded key at 16/64/256 clients), run
//!    the case for `duration` against skiff and against etcd, back to back; the order
//!    flips from case to case and from repeat to repeat. Connections: clients/4 (at
//!    least 1), connection *i* to member *i mod 3*, leader first.
//! 4. Per case: medians over repeats of ops/s, p99 and server CPU µs/op per system, and
//!    the median of the per-repeat skiff/etcd ratios (the two runs of a repeat are
//!    adjacent in time, so slow drifts in machine load cancel out).
//! 5. Write `<out>/<name>.md`, `<out>/<name>.png` and `<out>/<name>.json` (every run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{RangeRequest, StatusRequest};

use crate::chart::{self, ChartCase};
use crate::{BenchConfig, Consistency, Error, Report, Workload, key_of, procfs};

/// Settings of a compare run.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The `skiff` binary to start members with (normally the running executable).
    pub skiff_bin: PathBuf,
    /// The `etcd` binary (Debian's etcd-server: `/usr/bin/etcd`).
    pub etcd_bin: PathBuf,
    pub repeats: usize,
    /// How long each case runs.
    pub duration: Duration,
    /// Keys preloaded before the matrix (and the key space of the put cases).
    pub preload: u64,
    pub put_clients: Vec<usize>,
    pub range_clients: Vec<usize>,
    pub key_size: usize,
    pub val_size: usize,
    /// Where the Markdown, PNG and JSON go.
    pub out_dir: PathBuf,
    /// File stem of the outputs.
    pub name: String,
    /// A note for the header, e.g. "smoke run on a busy machine".
    pub label: Option<String>,
    /// Parent of the data dirs (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
    pub keep_data: bool,
    /// Before each run, wait (up to 2 minutes) until other processes use fewer cores than this.
    pub idle_gate: Option<f64>,
    /// TrueType font for the chart.
    pub font: Option<PathBuf>,
    /// Extra flags for every skiff / etcd member.
    pub skiff_args: Vec<String>,
    pub etcd_args: Vec<String>,
    /// The command line to print in the report (default: this process's arguments).
    pub command_line: Option<String>,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            skiff_bin: PathBuf::from("skiff"),
            etcd_bin: PathBuf::from("/usr/bin/etcd"),
            repeats: 3,
            duration: Duration::from_secs(10),
            preload: 100_000,
            put_clients: vec![1, 16, 64, 256],
            range_clients: vec![16, 64, 256],
            key_size: 8,
            val_size: 256,
            out_dir: PathBuf::from("docs/benchmarks"),
            name: "compare".to_string(),
            label: None,
            work_dir: None,
            keep_data: false,
            idle_gate: None,
            font: None,
            skiff_args: Vec::new(),
            etcd_args: Vec::new(),
            command_line: None,
        }
    }
}

/// Heartbeat and election timeout for both systems (etcd's defaults).
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MS: u64 = 1000;
const MEMBERS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Skiff,
    Etcd,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Skiff => "skiff",
            System::Etcd => "etcd",
        }
    }
}

/// One case of the matrix.
#[derive(Debug, Clone)]
struct Case {
    id: String,
    label: String,
    clients: usize,
    workload: Workload,
}

/// One measured run, as kept in the JSON file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub repeat: usize,
    pub case: String,
    pub system: System,
    /// Other processes' load measured by the idle gate just before the run.
    pub gate_other_cores: Option<f64>,
    pub report: Report,
}

/// RSS of each member at one point, MiB.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    pub idle: Vec<f64>,
    pub after_preload: Vec<f64>,
    pub after_matrix: Vec<f64>,
}

/// Everything a compare run measured (the JSON file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareResults {
    pub preload: BTreeMap<System, Report>,
    pub memory: BTreeMap<System, Memory>,
    pub runs: Vec<RunRecord>,
}

/// A member process, killed when dropped.
struct Member {
    child: Child,
    client_endpoint: String,
    log: PathBuf,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    system: System,
    members: Vec<Member>,
    /// Client endpoints, leader first.
    endpoints: Vec<String>,
}

impl Cluster {
    fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.child.id()).collect()
    }

    fn rss(&self) -> Vec<f64> {
        self.members
            .iter()
            .map(|m| procfs::process_rss(m.child.id()).unwrap_or(0) as f64 / (1024.0 * 1024.0))
            .collect()
    }

    /// Fail if a member exited.
    fn check_alive(&mut self) -> Result<(), Error> {
        for member in &mut self.members {
            if let Ok(Some(status)) = member.child.try_wait() {
                return Err(Error::Run(format!(
                    "{} member {} exited ({status}); log:\n{}",
                    self.system.name(),
                    member.client_endpoint,
                    log_tail(&member.log)
                )));
            }
        }
        Ok(())
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Free loopback ports, never the same one twice.
#[derive(Default)]
pub(crate) struct Ports(Vec<u16>);

impl Ports {
    pub(crate) fn next(&mut self) -> Result<u16, Error> {
        loop {
            let listener = TcpListener::bind("127.0.0.1:0")
                .map_err(|e| Error::Run(format!("cannot find a free port: {e}")))?;
            let port = listener
                .local_addr()
                .map_err(|e| Error::Run(e.to_string()))?
                .port();
            if !self.0.contains(&port) {
                self.0.push(port);
                return Ok(port);
            }
        }
    }
}

/// Names and loopback ports (client, peer) of `members` members, and their
/// `--initial-cluster` value.
pub(crate) type Layout = Vec<(String, u16, u16)>;

pub(crate) fn layout(
    system: System,
    members: usize,
    ports: &mut Ports,
) -> Result<(Layout, String), Error> {
    let prefix = system.name();
    let mut layout = Vec::new();
    for i in 0..members {
        layout.push((format!("{prefix}{i}"), ports.next()?, ports.next()?));
    }
    let initial_cluster = layout
        .iter()
        .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok((layout, initial_cluster))
}

fn start_cluster(
    system: System,
    config: &CompareConfig,
    work_dir: &Path,
    ports: &mut Ports,
) -> Result<Cluster, Error> {
    let prefix = system.name();
    let (layout, initial_cluster) = layout(system, MEMBERS, ports)?;
    let mut members = Vec::new();
    for (name, client, peer) in &layout {
        let data_dir = work_dir.join(format!("{name}.data"));
        let log = work_dir.join(format!("{name}.log"));
        let log_file = fs::File::create(&log)
            .map_err(|e| Error::Run(format!("cannot create {}: {e}", log.display())))?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = match system {
            System::Skiff => {
                let mut cmd = Command::new(&config.skiff_bin);
                cmd.arg("store").env("SKIFF_LOG", "warn");
                cmd
            }
            System::Etcd => {
                let mut cmd = Command::new(&config.etcd_bin);
                cmd.args(["--logger", "zap", "--log-level", "warn"]);
                cmd
            }
        };
        cmd.args(["--name", name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &format!("bench-{prefix}")])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()])
            .args(match system {
                System::Skiff => &config.skiff_args,
                System::Etcd => &config.etcd_args,
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().map_err(|e| {
            Error::Run(format!(
                "cannot start {}: {e}",
                cmd.get_program().to_string_lossy()
            ))
        })?;
        members.push(Member {
            child,
            client_endpoint: format!("127.0.0.1:{client}"),
            log,
        });
    }
    let endpoints = members.iter().map(|m| m.client_endpoint.clone()).collect();
    Ok(Cluster {
        system,
        members,
        endpoints,
    })
}

/// Wait until every member serves a linearizable read; then order the endpoints leader first.
async fn wait_ready(cluster: &mut Cluster) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for endpoint in cluster.endpoints.clone() {
        loop {
            cluster.check_alive()?;
            let ok = async {
                let channel = crate::connect_one(&endpoint, Duration::from_secs(1))
                    .await
                    .ok()?;
                let mut kv = KvClient::new(channel);
                let read = kv.range(RangeRequest {
                    key: b"health".to_vec(),
                    ..Default::default()
                });
                tokio::time::timeout(Duration::from_secs(2), read)
                    .await
                    .ok()?
                    .ok()
            }
            .await
            .is_some();
            if ok {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Run(format!(
                    "{} member {endpoint} not ready within 60 s",
                    cluster.system.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut leader_first = Vec::new();
    for endpoint in &cluster.endpoints {
        let status = async {
            let channel = crate::connect_one(endpoint, Duration::from_secs(1))
                .await
                .ok()?;
            MaintenanceClient::new(channel)
                .status(StatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        }
        .await;
        let is_leader = status
            .as_ref()
            .is_some_and(|s| s.header.as_ref().is_some_and(|h| h.member_id == s.leader));
        leader_first.push((!is_leader, endpoint.clone()));
    }
    leader_first.sort_by_key(|(not_leader, _)| *not_leader);
    match leader_first.iter().find(|(not_leader, _)| !not_leader) {
        Some((_, leader)) => eprintln!("{} leader: {leader}", cluster.system.name()),
        None => eprintln!(
            "warning: no {} member reported itself leader; endpoints in start order",
            cluster.system.name()
        ),
    }
    cluster.endpoints = leader_first.into_iter().map(|(_, e)| e).collect();
    Ok(())
}

fn matrix(config: &CompareConfig) -> Vec<Case> {
    let mut cases = Vec::new();
    for &clients in &config.put_clients {
        cases.push(Case {
            id: format!("put_c{clients}"),
            label: format!("put c{clients}"),
            clients,
            workload: Workload::Put,
        });
    }
    let key = key_of(config.preload / 2, config.key_size);
    for (tag, consistency) in [
        ("l", Consistency::Linearizable),
        ("s", Consistency::Serializable),
    ] {
        for &clients in &config.range_clients {
            cases.push(Case {
                id: format!("range{tag}_c{clients}"),
                label: format!("range-{tag} c{clients}"),
                clients,
                workload: Workload::Range {
                    key: key.clone(),
                    end: None,
                    consistency,
                    limit: 0,
                    count_only: false,
                },
            });
        }
    }
    cases
}

fn case_config(
    config: &CompareConfig,
    cluster: &Cluster,
    clients: usize,
    workload: Workload,
) -> BenchConfig {
    BenchConfig {
        endpoints: cluster.endpoints.clone(),
        clients,
        conns: (clients / 4).max(1),
        total: None,
        duration: Some(config.duration),
        key_size: config.key_size,
        val_size: config.val_size,
        key_space_size: config.preload.max(1),
        sequential_keys: false,
        rate: None,
        dial_timeout: Duration::from_secs(5),
        progress: false,
        workload,
    }
}

/// Wait until other processes use fewer than `gate` cores (sampled over 1 s), at most 2
/// minutes. Returns the last measurement.
fn idle_gate(gate: Option<f64>, exclude: &[u32]) -> Option<f64> {
    let gate = gate?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let load = procfs::other_load(exclude, Duration::from_secs(1))?;
        if load < gate || Instant::now() > deadline {
            if load >= gate {
                eprintln!("  idle gate: still {load:.2} cores busy after 2 min, running anyway");
            }
            return Some(load);
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Run the whole comparison. Blocking: builds its own runtime.
pub fn run_blocking(config: CompareConfig) -> Result<PathBuf, Error> {
    // Read before the run: the report's own files are tracked and get rewritten by it.
    git_describe();
    if config.repeats == 0 || config.duration.is_zero() || config.preload == 0 {
        return Err(Error::Config(
            "--repeats, --duration and --preload must be positive".into(),
        ));
    }
    if config
        .put_clients
        .iter()
        .chain(&config.range_clients)
        .any(|&c| c == 0)
    {
        return Err(Error::Config("client counts must be at least 1".into()));
    }
    if config.key_size < (config.preload - 1).to_string().len() {
        return Err(Error::Config(format!(
            "key size {} is too small for {} preloaded keys",
            config.key_size, config.preload
        )));
    }
    if !config.etcd_bin.exists() {
        return Err(Error::Config(format!(
            "{} not found: install Debian's etcd-server or pass --etcd-bin",
            config.etcd_bin.display()
        )));
    }
    fs::create_dir_all(&config.out_dir)
        .map_err(|e| Error::Run(format!("cannot create {}: {e}", config.out_dir.display())))?;
    let parent = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&parent)
        .map_err(|e| Error::Run(format!("cannot create {}: {e}", parent.display())))?;
    let work = tempfile_dir(&parent)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Run(format!("cannot start runtime: {e}")))?;
    let result = runtime.block_on(compare(&config, &work));
    if config.keep_data {
        eprintln!("data and member logs kept in {}", work.display());
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    let results = result?;
    write_outputs(&config, &work, &results)
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf, Error> {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = parent.join(format!("skiff-bench-{}-{stamp}", std::process::id()));
    fs::create_dir_all(&dir)
        .map_err(|e| Error::Run(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

async fn compare(config: &CompareConfig, work: &Path) -> Result<CompareResults, Error> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; build with `cargo build --release -p skiff` for meaningful figures"
        );
    }
    let mut ports = Ports(Vec::new());
    eprintln!(
        "starting 3 skiff and 3 etcd members under {}",
        work.display()
    );
    let mut skiff = start_cluster(System::Skiff, config, work, &mut ports)?;
    let mut etcd = start_cluster(System::Etcd, config, work, &mut ports)?;
    wait_ready(&mut skiff).await?;
    wait_ready(&mut etcd).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut results = CompareResults {
        preload: BTreeMap::new(),
        memory: BTreeMap::new(),
        runs: Vec::new(),
    };
    for cluster in [&skiff, &etcd] {
        results.memory.entry(cluster.system).or_default().idle = cluster.rss();
    }
    for cluster in [&mut skiff, &mut etcd] {
        eprintln!(
            "preloading {} keys into {}",
            config.preload,
            cluster.system.name()
        );
        let preload = BenchConfig {
            total: Some(config.preload),
            duration: None,
            sequential_keys: true,
            conns: 16,
            ..case_config(config, cluster, 64, Workload::Put)
        };
        let (report, _) = crate::run(&preload).await?;
        if report.errors > 0 {
            return Err(Error::Run(format!(
                "preloading {} failed: {} errors {:?}",
                cluster.system.name(),
                report.errors,
                report.error_messages
            )));
        }
        eprintln!(
            "  {:.0} puts/s, server {:.0} µs/op",
            report.ops_per_sec,
            report.server_cpu_us_per_op.unwrap_or(f64::NAN)
        );
        results.preload.insert(cluster.system, report);
        cluster.check_alive()?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for cluster in [&skiff, &etcd] {
        results
            .memory
            .entry(cluster.system)
            .or_default()
            .after_preload = cluster.rss();
    }

    let cases = matrix(config);
    let all_pids: Vec<u32> = skiff.pids().into_iter().chain(etcd.pids()).collect();
    for repeat in 0..config.repeats {
        for (ci, case) in cases.iter().enumerate() {
            let order = if (repeat + ci) % 2 == 0 {
                [System::Skiff, System::Etcd]
            } else {
                [System::Etcd, System::Skiff]
            };
            for system in order {
                let cluster = match system {
                    System::Skiff => &mut skiff,
                    System::Etcd => &mut etcd,
                };
                cluster.check_alive()?;
                let gate = tokio::task::block_in_place(|| idle_gate(config.idle_gate, &all_pids));
                let bench = case_config(config, cluster, case.clients, case.workload.clone());
                let (report, _) = crate::run(&bench).await?;
                eprintln!(
                    "[{}/{}] {:<12} {:<5} {:>9.0} ops/s  p99 {:>8.2} ms  server {:>6.0} µs/op  errors {}  other {:.2} cores",
                    repeat + 1,
                    config.repeats,
                    case.id,
                    system.name(),
                    report.ops_per_sec,
                    report.latency_ms.p99,
                    report.server_cpu_us_per_op.unwrap_or(f64::NAN),
                    report.errors,
                    report.other_cores.unwrap_or(f64::NAN),
                );
                results.runs.push(RunRecord {
                    repeat,
                    case: case.id.clone(),
                    system,
                    gate_other_cores: gate,
                    report,
                });
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for cluster in [&skiff, &etcd] {
        results
            .memory
            .entry(cluster.system)
            .or_default()
            .after_matrix = cluster.rss();
    }
    Ok(results)
}

/// Per-case aggregate over repeats.
#[derive(Debug, Clone)]
pub struct CaseSummary {
    pub id: String,
    pub label: String,
    pub ops: [f64; 2],
    pub p99: [f64; 2],
    pub cpu: [f64; 2],
    pub errors: [u64; 2],
    pub ratio: f64,
    pub p99_ratio: f64,
    pub other_cores: f64,
}

fn summarize(config: &CompareConfig, results: &CompareResults) -> Vec<CaseSummary> {
    let mut out = Vec::new();
    for case in matrix(config) {
        let runs = |system: System| -> Vec<&RunRecord> {
            results
                .runs
                .iter()
                .filter(|r| r.case == case.id && r.system == system)
                .collect()
        };
        let (s, e) = (runs(System::Skiff), runs(System::Etcd));
        let med = |runs: &[&RunRecord], f: &dyn Fn(&Report) -> f64| {
            median(runs.iter().map(|r| f(&r.report)).collect())
        };
        let paired = |f: &dyn Fn(&Report) -> f64| {
            let mut ratios = Vec::new();
            for a in &s {
                if let Some(b) = e.iter().find(|b| b.repeat == a.repeat) {
                    ratios.push(f(&a.report) / f(&b.report));
                }
            }
            median(ratios)
        };
        let ops = |r: &Report| r.ops_per_sec;
        let p99 = |r: &Report| r.latency_ms.p99;
        let cpu = |r: &Report| r.server_cpu_us_per_op.unwrap_or(f64::NAN);
        out.push(CaseSummary {
            id: case.id.clone(),
            label: case.label.clone(),
            ops: [med(&s, &ops), med(&e, &ops)],
            p99: [med(&s, &p99), med(&e, &p99)],
            cpu: [med(&s, &cpu), med(&e, &cpu)],
            errors: [
                s.iter().map(|r| r.report.errors).sum(),
                e.iter().map(|r| r.report.errors).sum(),
            ],
            ratio: paired(&ops),
            p99_ratio: paired(&p99),
            other_cores: median(
                s.iter()
                    .chain(&e)
                    .map(|r| r.report.other_cores.unwrap_or(f64::NAN))
                    .collect(),
            ),
        });
    }
    out
}

fn fmt_num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".to_string();
    }
    let s = format!("{v:.decimals$}");
    // Thousands separators for the integer part.
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), format!(".{f}")),
        None => (s.clone(), String::new()),
    };
    let (sign, digits) = match int.strip_prefix('-') {
        Some(d) => ("-", d.to_string()),
        None => ("", int),
    };
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}{frac}")
}

fn mib_list(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `YYYY-MM-DD HH:MM UTC` without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
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
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn machine_description() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| procfs::parse_status_kb(&t, "MemTotal"))
        .map(|b| format!("{:.0} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)))
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {mem} RAM, Linux {kernel}")
}

fn command_output(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// This process's command line, shell-quoted.
/// `git describe --always --dirty` of the working tree, read once (at the start of a run).
fn git_describe() -> Option<String> {
    static DESCRIBED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DESCRIBED
        .get_or_init(|| command_output(Path::new("git"), &["describe", "--always", "--dirty"]))
        .clone()
}

pub fn current_command_line() -> String {
    std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_outputs(
    config: &CompareConfig,
    work: &Path,
    results: &CompareResults,
) -> Result<PathBuf, Error> {
    let summary = summarize(config, results);
    let md_path = config.out_dir.join(format!("{}.md", config.name));
    let png_name = format!("{}.png", config.name);
    let json_path = config.out_dir.join(format!("{}.json", config.name));
    let chart_cases: Vec<ChartCase> = summary
        .iter()
        .map(|c| ChartCase {
            label: c.label.clone(),
            throughput_ratio: c.ratio,
            p99_ratio: c.p99_ratio,
        })
        .collect();
    let chart_result = chart::render(
        &config.out_dir.join(&png_name),
        &format!("skiff vs etcd, {}", config.name),
        &chart_cases,
        config.font.as_deref(),
    );
    if let Err(msg) = &chart_result {
        eprintln!("warning: no chart: {msg}");
    }

    let mut md = String::new();
    let _ = writeln!(md, "# skiff vs etcd 3.4: {}\n", config.name);
    if let Some(label) = &config.label {
        let _ = writeln!(md, "> **{label}**\n");
    }
    let command = config
        .command_line
        .clone()
        .unwrap_or_else(current_command_line);
    let _ = writeln!(
        md,
        "Produced by `skiff bench compare` on {} with:\n\n```sh\n{command}\n```\n",
        utc_now()
    );
    let git = git_describe()
        .map(|g| format!(", git {g}"))
        .unwrap_or_default();
    let etcd_version = command_output(&config.etcd_bin, &["--version"])
        .unwrap_or_else(|| "etcd (version unknown)".into());
    let others: Vec<f64> = results
        .runs
        .iter()
        .filter_map(|r| r.report.other_cores)
        .collect();
    let noise_max = others.iter().copied().fold(0.0f64, f64::max);
    let _ = writeln!(md, "| setting | value |\n|---|---|");
    let _ = writeln!(md, "| machine | {} |", machine_description());
    let _ = writeln!(
        md,
        "| skiff | {} ({} build{git}), `{}` |",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "**debug**"
        } else {
            "release"
        },
        config.skiff_bin.display()
    );
    let _ = writeln!(
        md,
        "| etcd | {etcd_version}, `{}` |",
        config.etcd_bin.display()
    );
    let extra_args = |args: &[String]| {
        if args.is_empty() {
            "none".to_string()
        } else {
            format!("`{}`", args.join(" "))
        }
    };
    let _ = writeln!(
        md,
        "| clusters | 3 members each on 127.0.0.1, heartbeat {HEARTBEAT_MS} ms, election timeout {ELECTION_MS} ms, other flags at their defaults; extra flags for skiff: {}, for etcd: {} |",
        extra_args(&config.skiff_args),
        extra_args(&config.etcd_args)
    );
    let _ = writeln!(
        md,
        "| data | both clusters' data dirs side by side under `{}` (same disk) |",
        work.parent().unwrap_or(work).display()
    );
    let _ = writeln!(
        md,
        "| workload | {} keys preloaded ({}-byte keys, {}-byte values, 64 clients, sequential); put cases write random keys of that key space; range cases read one preloaded key |",
        fmt_num(config.preload as f64, 0),
        config.key_size,
        config.val_size
    );
    let _ = writeln!(
        md,
        "| runs | {} s per case, {} repeats; skiff and etcd back to back, order flipped every case and repeat; connections = clients/4 (at least 1) spread over the members, leader first; load generator in this process |",
        config.duration.as_secs_f64(),
        config.repeats
    );
    let _ = writeln!(
        md,
        "| noise | other processes used {} cores (median of all runs, max {}) while measuring{} |",
        fmt_num(median(others.clone()), 2),
        fmt_num(noise_max, 2),
        match config.idle_gate {
            Some(g) => format!("; idle gate: each run waited for < {g} cores"),
            None => "; no idle gate".into(),
        }
    );
    let _ = writeln!(
        md,
        "\n## Throughput and latency (median of {} repeats)\n",
        config.repeats
    );
    let _ = writeln!(
        md,
        "| case | skiff ops/s | etcd ops/s | **skiff/etcd** | skiff p99 ms | etcd p99 ms | skiff CPU µs/op | etcd CPU µs/op | errors skiff/etcd | other cores |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for c in &summary {
        let _ = writeln!(
            md,
            "| {} | {} | {} | **{}** | {} | {} | {} | {} | {}/{} | {} |",
            c.label,
            fmt_num(c.ops[0], 0),
            fmt_num(c.ops[1], 0),
            fmt_num(c.ratio, 2),
            fmt_num(c.p99[0], 2),
            fmt_num(c.p99[1], 2),
            fmt_num(c.cpu[0], 0),
            fmt_num(c.cpu[1], 0),
            c.errors[0],
            c.errors[1],
            fmt_num(c.other_cores, 2),
        );
    }
    let _ = writeln!(
        md,
        "\nskiff/etcd is the median of the per-repeat ratios of ops/s. CPU µs/op is server CPU (user + system, from /proc) summed over the three members, per successful request; the load generator's own CPU is not included. \"other cores\": CPU used by every other process on the machine during the run (the idle cluster included), a measure of noise.\n"
    );
    if chart_result.is_ok() {
        let _ = writeln!(md, "![skiff/etcd ratios]({png_name})\n");
    }
    let _ = writeln!(md, "## Memory (RSS per member, MiB)\n");
    let _ = writeln!(md, "| point | skiff | etcd |\n|---|--:|--:|");
    let mem = |s: System| results.memory.get(&s).cloned().unwrap_or_default();
    let (ms, me) = (mem(System::Skiff), mem(System::Etcd));
    let _ = writeln!(
        md,
        "| idle, after start | {} | {} |",
        mib_list(&ms.idle),
        mib_list(&me.idle)
    );
    let _ = writeln!(
        md,
        "| after {} keys | {} | {} |",
        fmt_num(config.preload as f64, 0),
        mib_list(&ms.after_preload),
        mib_list(&me.after_preload)
    );
    let _ = writeln!(
        md,
        "| after the matrix | {} | {} |",
        mib_list(&ms.after_matrix),
        mib_list(&me.after_matrix)
    );
    let _ = writeln!(md, "\n## Preload\n");
    let _ = writeln!(
        md,
        "| system | puts/s | p99 ms | server CPU µs/op |\n|---|--:|--:|--:|"
    );
    for (system, report) in &results.preload {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            system.name(),
            fmt_num(report.ops_per_sec, 0),
            fmt_num(report.latency_ms.p99, 2),
            fmt_num(report.server_cpu_us_per_op.unwrap_or(f64::NAN), 0)
        );
    }
    let _ = writeln!(md, "\n## Every run\n");
    let _ = writeln!(
        md,
        "| repeat | case | system | ops/s | p50 ms | p99 ms | max ms | server CPU µs/op | client CPU µs/op | errors | other cores |"
    );
    let _ = writeln!(md, "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for run in &results.runs {
        let r = &run.report;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.repeat + 1,
            run.case,
            run.system.name(),
            fmt_num(r.ops_per_sec, 0),
            fmt_num(r.latency_ms.p50, 2),
            fmt_num(r.latency_ms.p99, 2),
            fmt_num(r.latency_ms.max, 2),
            fmt_num(r.server_cpu_us_per_op.unwrap_or(f64::NAN), 0),
            fmt_num(r.client_cpu_us_per_op.unwrap_or(f64::NAN), 0),
            r.errors,
            fmt_num(r.other_cores.unwrap_or(f64::NAN), 2),
        );
    }
    let _ = writeln!(
        md,
        "\nRaw reports of every run: [`{}`]({}).",
        json_path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        json_path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    );
    fs::write(&md_path, md)
        .map_err(|e| Error::Run(format!("cannot write {}: {e}", md_path.display())))?;
    let json = serde_json::to_string_pretty(results).map_err(|e| Error::Run(e.to_string()))?;
    fs::write(&json_path, json + "\n")
        .map_err(|e| Error::Run(format!("cannot write {}: {e}", json_path.display())))?;
    // Print the summary table to stdout too.
    println!(
        "{:<12} {:>10} {:>10} {:>8} {:>9} {:>9}",
        "case", "skiff/s", "etcd/s", "ratio", "p99 s", "p99 e"
    );
    for c in &summary {
        println!(
            "{:<12} {:>10.0} {:>10.0} {:>8.2} {:>9.2} {:>9.2}",
            c.id, c.ops[0], c.ops[1], c.ratio, c.p99[0], c.p99[1]
        );
    }
    println!("wrote {}", md_path.display());
    Ok(md_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_formatting() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![f64::NAN]).is_nan());
        assert_eq!(fmt_num(1234567.891, 0), "1,234,568");
        assert_eq!(fmt_num(999.5, 2), "999.50");
        assert_eq!(fmt_num(-1234.0, 0), "-1,234");
        assert_eq!(fmt_num(f64::NAN, 1), "–");
        assert_eq!(shell_quote("--label"), "--label");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert!(utc_now().ends_with("UTC"));
    }

    #[test]
    fn the_matrix_matches_the_issue() {
        let cases = matrix(&CompareConfig::default());
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "put_c1",
                "put_c16",
                "put_c64",
                "put_c256",
                "rangel_c16",
                "rangel_c64",
                "rangel_c256",
                "ranges_c16",
                "ranges_c64",
                "ranges_c256"
            ]
        );
        // Range cases read a preloaded key.
        match &cases[4].workload {
            Workload::Range { key, .. } => assert_eq!(key, &key_of(50_000, 8)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn summary_pairs_runs_by_repeat() {
        let report = |ops: f64| Report {
            command: "put".into(),
            clients: 1,
            conns: 1,
            endpoints: vec![],
            ops: 1,
            errors: 0,
            duration_s: 1.0,
            ops_per_sec: ops,
            latency_ms: Default::default(),
            error_messages: Default::default(),
            server_cpu_us_per_op: None,
            client_cpu_us_per_op: None,
            server_rss_mb: None,
            other_cores: None,
            servers: vec![],
            extra: Default::default(),
        };
        let config = CompareConfig {
            put_clients: vec![1],
            range_clients: vec![],
            ..CompareConfig::default()
        };
        let mut runs = Vec::new();
        for (repeat, s, e) in [(0, 100.0, 50.0), (1, 300.0, 100.0), (2, 90.0, 100.0)] {
            for (system, ops) in [(System::Skiff, s), (System::Etcd, e)] {
                runs.push(RunRecord {
                    repeat,
                    case: "put_c1".into(),
                    system,
                    gate_other_cores: None,
                    report: report(ops),
                });
            }
        }
        let results = CompareResults {
            preload: BTreeMap::new(),
            memory: BTreeMap::new(),
            runs,
        };
        let summary = summarize(&config, &results);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].ops, [100.0, 100.0]);
        // Ratios per repeat: 2.0, 3.0, 0.9 -> median 2.0.
        assert_eq!(summary[0].ratio, 2.0);
    }
}
