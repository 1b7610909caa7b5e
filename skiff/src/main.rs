//! The `skiff` binary: command-line parsing, logging setup and signal handling. Every
//! subcommand is a thin shell around a library crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use skiff_store::config::{
    ClusterState, ConfigError, StoreConfig, parse_initial_cluster, parse_urls,
};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A Kubernetes-style control plane with a built-in Raft-replicated etcd-compatible store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a store member (etcd v3 API on the client URLs).
    Store(StoreArgs),
}

/// Flags with etcd's names, meanings and defaults.
#[derive(Args)]
struct StoreArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory (default: ./<name>.skiff).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// Client URLs of this member, as advertised to the cluster.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    listen_peer_urls: String,
    /// Peer URLs of this member, as advertised to the cluster.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    initial_advertise_peer_urls: String,
    /// Initial cluster configuration: name=peer-url,... (default: <name>=<advertised peer URL>).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// `new` for a new cluster, `existing` to join one (after `member add`).
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,
    /// Token distinguishing this cluster from others bootstrapped with the same URLs.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Election timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Applied entries between two Raft snapshots.
    #[arg(long, default_value_t = 10_000)]
    snapshot_count: u64,
    /// Entries kept after a snapshot so slow followers can catch up from the log.
    #[arg(
        long,
        alias = "experimental-snapshot-catchup-entries",
        default_value_t = 5_000
    )]
    snapshot_catchup_entries: u64,
    /// Maximum client request size in bytes.
    #[arg(long, default_value_t = skiff_store::config::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Maximum operations per Txn branch.
    #[arg(long, default_value_t = skiff_store::config::DEFAULT_MAX_TXN_OPS)]
    max_txn_ops: usize,
    /// Extra URLs serving /metrics and /health over plain HTTP.
    #[arg(long, default_value = "")]
    listen_metrics_urls: String,
    /// Interval of watch progress notifications, e.g. `10m`, `5s`, `500ms`.
    #[arg(long = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = parse_duration)]
    watch_progress_notify_interval: Duration,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `skiff_store=debug`.
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

impl StoreArgs {
    fn into_config(self) -> Result<StoreConfig, ConfigError> {
        let advertised_peers = parse_urls(&self.initial_advertise_peer_urls)?;
        let initial_cluster = match &self.initial_cluster {
            Some(value) => parse_initial_cluster(value)?,
            None => [(self.name.clone(), advertised_peers.clone())]
                .into_iter()
                .collect(),
        };
        let config = StoreConfig {
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.skiff", self.name))),
            listen_client_urls: parse_urls(&self.listen_client_urls)?,
            advertise_client_urls: parse_urls(&self.advertise_client_urls)?,
            listen_peer_urls: parse_urls(&self.listen_peer_urls)?,
            initial_advertise_peer_urls: advertised_peers,
            initial_cluster,
            initial_cluster_state: if self.initial_cluster_state == "existing" {
                ClusterState::Existing
            } else {
                ClusterState::New
            },
            initial_cluster_token: self.initial_cluster_token,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            snapshot_catchup_entries: self.snapshot_catchup_entries,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            listen_metrics_urls: parse_urls(&self.listen_metrics_urls)?,
            watch_progress_notify_interval: self.watch_progress_notify_interval,
            name: self.name,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Parse a Go-style duration: `500ms`, `5s`, `10m`, `1h`.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{value:?}: missing unit (ms, s, m, h)"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{value:?}: not a duration"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{value:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Exit code for bad flags or configuration (like etcd).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = err.print();
                return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One clear line instead of clap's multi-line usage text.
            let rendered = err.render().to_string();
            let line = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("skiff: {line} (see `skiff --help`)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Store(args) => run_store(args),
    }
}

fn run_store(args: StoreArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("skiff: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("skiff: cannot start runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(skiff_store::run(config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(skiff_store::Error::Config(msg)) => {
            eprintln!("skiff: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
