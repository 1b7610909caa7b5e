//! `skiff-chaos`: the command line of the chaos suite (`run`, `suite ci|soak`, `bugcheck`,
//! `check DIR`, `cleanup`). Exit codes: 0 valid, 1 invalid, 2 unknown / harness error / bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use skiff_chaos_tests::cluster::Target;
use skiff_chaos_tests::history::History;
use skiff_chaos_tests::nemesis::NemesisSpec;
use skiff_chaos_tests::results::RunInfo;
use skiff_chaos_tests::runner::{self, RunConfig};
use skiff_chaos_tests::workload::Workload;
use skiff_chaos_tests::{analysis, bugcheck, net, suite};

#[derive(Parser)]
#[command(
    name = "skiff-chaos",
    about = "Jepsen-style chaos tests for the skiff store (and etcd)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One workload × nemesis test.
    Run(RunArgs),
    /// A list of tests: `ci` (fixed, ~7 min) or `soak` (random, --duration).
    Suite(SuiteArgs),
    /// Run each bug switch of a skiff test build (`--features chaos-bugs`) and require the
    /// checkers to catch it with the expected anomaly.
    Bugcheck(BugcheckArgs),
    /// Re-check a run directory offline (writes results.json and anomalies.json again).
    Check {
        /// The run directory (holds run.json and history.jsonl).
        dir: PathBuf,
        /// Linearizability checker budget (s).
        #[arg(long, default_value_t = 60)]
        lin_timeout: u64,
    },
    /// Kill what runs in stale skc-* namespaces (of harnesses no longer running) and delete them.
    Cleanup {
        /// Also those of running harnesses.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Store under test.
    #[arg(long, default_value = "skiff", value_parser = ["skiff", "etcd"])]
    target: String,
    /// The skiff binary (default: `skiff` next to this executable).
    #[arg(long, env = "SKIFF_BIN")]
    skiff_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Results root.
    #[arg(long, default_value = "chaos-results")]
    out: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// register | append | watch | lease | k8s
    #[arg(long, default_value = "register")]
    workload: String,
    /// `none`, or comma-separated fault kinds (kill, pause, partition, loss, member, clock;
    /// power-loss, failpoints with a skiff test build; corrupt with skiff) and modes (kill-one,
    /// kill-leader, kill-all, pause-one, pause-leader, partition-one, partition-leader,
    /// partition-majority, partition-ring, partition-bridge, partition-one-way, loss,
    /// member-remove, member-remove-leader, clock-bump, clock-rate, power-loss-one,
    /// power-loss-all, failpoints-crash, failpoints-slow, failpoints-net, corrupt-one,
    /// corrupt-majority).
    #[arg(long, default_value = "none")]
    nemesis: String,
    /// Members (3 or 5 usually).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Workload seconds.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    /// Seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    common: Common,
    /// Client workers (default 2 × nodes).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Target operations per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Per-request timeout (ms); timed-out mutations are indeterminate.
    #[arg(long, default_value_t = 1000)]
    op_timeout_ms: u64,
    /// The cluster must serve again within this many seconds of healing.
    #[arg(long, default_value_t = 30)]
    recovery_limit: u64,
    /// Fraction of workload operations that must succeed.
    #[arg(long, default_value_t = 0.3)]
    min_ok_fraction: f64,
    /// Members' --snapshot-count.
    #[arg(long, default_value_t = 1000)]
    snapshot_count: u64,
    /// Members' --heartbeat-interval (ms).
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Members' --election-timeout (ms).
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Extra argument for every member (repeatable), e.g. for a test build's switches.
    #[arg(long = "store-arg", allow_hyphen_values = true)]
    store_args: Vec<String>,
    /// Extra environment for every member, KEY=VALUE (repeatable).
    #[arg(long = "store-env")]
    store_env: Vec<String>,
    /// Keep the members' data directories.
    #[arg(long)]
    keep_data: bool,
    /// No progress line.
    #[arg(long)]
    no_progress: bool,
    /// Linearizability checker budget (s).
    #[arg(long, default_value_t = 60)]
    lin_timeout: u64,
    /// Watchers request progress notifications: on, off, or auto (on for skiff; off for etcd,
    /// whose 3.4 series answers a progress request before delivering pending events).
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    watch_progress: String,
}

#[derive(Args)]
struct BugcheckArgs {
    /// The skiff test build (default: `skiff-buggy` next to this executable).
    #[arg(long, env = "SKIFF_BUGGY_BIN")]
    skiff_bin: Option<PathBuf>,
    /// Results root.
    #[arg(long, default_value = "chaos-results")]
    out: PathBuf,
    /// Base seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Seeds tried per switch.
    #[arg(long, default_value_t = 2)]
    attempts: u32,
    /// Only this switch (repeatable); then only the controls of the selected scenarios run.
    #[arg(long = "bug")]
    bugs: Vec<String>,
}

#[derive(Args)]
struct SuiteArgs {
    /// `ci` or `soak`.
    #[arg(value_parser = ["ci", "soak"])]
    which: String,
    /// Soak duration, e.g. `2h`, `45m`, `600s`.
    #[arg(long, default_value = "2h")]
    duration: String,
    /// Base seed.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    common: Common,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration {s:?} (use s, m or h)")),
    }))
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000_007)
        .unwrap_or(1)
}

fn skiff_default() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("skiff")))
        .unwrap_or_else(|| PathBuf::from("skiff"))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("skiff-chaos: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Suite(a) => cmd_suite(a),
        Cmd::Bugcheck(a) => {
            if !net::is_root() {
                return fail("skiff-chaos needs root (network namespaces and iptables)");
            }
            let opts = bugcheck::BugcheckOptions {
                skiff_bin: a
                    .skiff_bin
                    .unwrap_or_else(|| skiff_default().with_file_name("skiff-buggy")),
                out: a.out,
                seed: a.seed.unwrap_or_else(clock_seed),
                attempts: a.attempts,
                only: a.bugs,
            };
            ExitCode::from(bugcheck::run_bugcheck(&opts) as u8)
        }
        Cmd::Check { dir, lin_timeout } => cmd_check(&dir, lin_timeout),
        Cmd::Cleanup { all } => {
            if !net::is_root() {
                return fail("cleanup needs root (network namespaces)");
            }
            let stale = net::stale_namespaces(all);
            for ns in &stale {
                let pids = net::pids_in(ns);
                net::destroy_namespace(ns);
                println!("removed {ns} (killed {} process(es))", pids.len());
            }
            println!("{} namespace(s) removed", stale.len());
            ExitCode::SUCCESS
        }
    }
}

fn cmd_run(a: RunArgs) -> ExitCode {
    let workload = match Workload::parse(&a.workload) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let nemesis = match NemesisSpec::parse(&a.nemesis) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let target = if a.common.target == "etcd" {
        Target::Etcd
    } else {
        Target::Skiff
    };
    let binary = match target {
        Target::Skiff => a.common.skiff_bin.clone().unwrap_or_else(skiff_default),
        Target::Etcd => a.common.etcd_bin.clone(),
    };
    let mut extra_env = Vec::new();
    for kv in &a.store_env {
        match kv.split_once('=') {
            Some((k, v)) => extra_env.push((k.to_owned(), v.to_owned())),
            None => return fail(format!("--store-env {kv:?}: expected KEY=VALUE")),
        }
    }
    let cfg = RunConfig {
        workload,
        nemesis,
        nodes: a.nodes,
        time_limit: Duration::from_secs(a.time_limit.max(1)),
        seed: a.seed.unwrap_or_else(clock_seed),
        target,
        binary,
        out_root: a.common.out.clone(),
        concurrency: a.concurrency.unwrap_or(2 * a.nodes).max(1),
        rate: a.rate,
        op_timeout: Duration::from_millis(a.op_timeout_ms),
        recovery_limit: Duration::from_secs(a.recovery_limit),
        min_ok_fraction: a.min_ok_fraction,
        snapshot_count: a.snapshot_count,
        heartbeat_ms: a.heartbeat_interval,
        election_ms: a.election_timeout,
        extra_args: a.store_args.clone(),
        extra_env,
        keep_data: a.keep_data,
        lin_timeout: Duration::from_secs(a.lin_timeout),
        progress: !a.no_progress,
        watch_progress: match a.watch_progress.as_str() {
            "on" => true,
            "off" => false,
            _ => target == Target::Skiff,
        },
    };
    match runner::run(&cfg) {
        Err(e) => fail(e),
        Ok(out) => {
            print!("{}", out.results.summary());
            if let Some(e) = &out.error {
                println!("  harness error: {e}");
            }
            println!("  results: {}", out.dir.display());
            ExitCode::from(out.exit_code() as u8)
        }
    }
}

fn cmd_suite(a: SuiteArgs) -> ExitCode {
    if !net::is_root() {
        return fail("skiff-chaos needs root (network namespaces and iptables)");
    }
    let seed = a.seed.unwrap_or_else(clock_seed);
    let pairs = if a.which == "ci" {
        suite::ci_pairs()
    } else {
        match parse_duration(&a.duration) {
            Ok(d) => suite::soak_pairs(d, seed, a.common.target == "skiff"),
            Err(e) => return fail(e),
        }
    };
    let opts = suite::SuiteOptions {
        target: a.common.target.clone(),
        skiff_bin: a.common.skiff_bin.clone(),
        etcd_bin: Some(a.common.etcd_bin.clone()),
        out: a.common.out.clone(),
        seed,
        extra: vec!["--no-progress".into()],
    };
    ExitCode::from(suite::run_suite(&pairs, &opts) as u8)
}

fn cmd_check(dir: &std::path::Path, lin_timeout: u64) -> ExitCode {
    let info: RunInfo = match std::fs::read_to_string(dir.join("run.json"))
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(i) => i,
        Err(e) => return fail(format!("{}: {e}", dir.join("run.json").display())),
    };
    let history = match History::load_jsonl(dir.join("history.jsonl")) {
        Ok(h) => h,
        Err(e) => return fail(format!("{}: {e}", dir.join("history.jsonl").display())),
    };
    let results = analysis::analyze(
        &history,
        &info,
        Some(&dir.join("nodes")),
        Duration::from_secs(lin_timeout),
    );
    if let Err(e) = results.write(dir) {
        return fail(e);
    }
    print!("{}", results.summary());
    ExitCode::from(results.valid.exit_code() as u8)
}
