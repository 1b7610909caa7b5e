//! `skiff store`: a store member with etcd's flags, or the offline store tools
//! (`skiff store snapshot ...`, like `etcdutl`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Subcommand};
use skiff_store::config::{
    ClusterState, ConfigError, StoreConfig, TlsFiles, parse_initial_cluster, parse_urls,
};

use crate::cli::{EXIT_USAGE, parse_duration, shutdown_signal};

/// Offline tools on store files (like `etcdutl`).
#[derive(Subcommand)]
pub(crate) enum StoreTool {
    /// Snapshot files written by `etcdctl snapshot save` against a skiff member.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Create a new member's data dir, in a NEW cluster, from a snapshot file.
    Restore(RestoreArgs),
    /// Verify a snapshot file and print its hash, revision, total keys and total size.
    Status {
        /// The snapshot file.
        file: PathBuf,
        /// Output format: simple, table or json.
        #[arg(short = 'w', long = "write-out", default_value = "simple")]
        write_out: skiff_store::snapshot::StatusFormat,
    },
}

/// `snapshot restore` flags, with etcdutl's names and meanings.
#[derive(Args)]
pub(crate) struct RestoreArgs {
    /// The snapshot file.
    file: PathBuf,
    /// Name of the member to create.
    #[arg(long, default_value = "default")]
    name: String,
    /// Data directory to create (default: ./<name>.skiff); must not exist or be empty.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The NEW cluster: name=peer-url,... (default: <name>=<advertised peer URL>).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Token of the NEW cluster.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// Peer URLs of the member to create.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    initial_advertise_peer_urls: String,
    /// Accept a file whose SHA-256 trailer is missing or wrong.
    #[arg(long)]
    skip_hash_check: bool,
}

/// Flags with etcd's names, meanings and defaults.
#[derive(Args)]
pub(crate) struct StoreArgs {
    #[command(subcommand)]
    tool: Option<StoreTool>,
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    name: String,
    /// Path to the data directory (default: ./<name>.skiff).
    #[arg(long, env = "ETCD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    listen_client_urls: String,
    /// Client URLs of this member, as advertised to the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    advertise_client_urls: String,
    /// URLs to listen on for peer traffic: only the members may reach them, unless peer
    /// mTLS is on.
    ///
    /// A peer message can make this member append log entries, vote, install a snapshot
    /// or change the membership. Unless only the members can reach these URLs, use https
    /// with --peer-cert-file, --peer-key-file, --peer-trusted-ca-file and
    /// --peer-client-cert-auth.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    listen_peer_urls: String,
    /// Peer URLs of this member, as advertised to the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    initial_advertise_peer_urls: String,
    /// Initial cluster configuration: name=peer-url,... (default: <name>=<advertised peer URL>).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// `new` for a new cluster, `existing` to join one (after `member add`).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,
    /// Token distinguishing this cluster from others bootstrapped with the same URLs.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    initial_cluster_token: String,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    heartbeat_interval: u64,
    /// Election timeout in milliseconds.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    election_timeout: u64,
    /// Run etcd's pre-vote before every election (on by default, as in etcd 3.5): a member
    /// cut off from the others never raises its term, and writes resume sooner after a
    /// leader dies. `--pre-vote=false` leaves elections to openraft's own timer (3–4 s).
    #[arg(long, env = "ETCD_PRE_VOTE", action = ArgAction::Set, num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    pre_vote: bool,
    /// Applied entries between two Raft snapshots (etcd's default: 100,000).
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    snapshot_count: u64,
    /// Entries kept after a snapshot so slow followers can catch up from the log.
    #[arg(
        long,
        env = "ETCD_SNAPSHOT_CATCHUP_ENTRIES",
        alias = "experimental-snapshot-catchup-entries",
        default_value_t = 5_000
    )]
    snapshot_catchup_entries: u64,
    /// Maximum client request size in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = skiff_store::config::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Maximum operations per Txn branch.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = skiff_store::config::DEFAULT_MAX_TXN_OPS)]
    max_txn_ops: usize,
    /// Extra URLs serving /metrics and /health over plain HTTP.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    listen_metrics_urls: String,
    /// How often applied writes are committed durably to the backend, e.g. `100ms` (the
    /// WAL holds them meanwhile; a restart re-applies from it).
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    backend_batch_interval: Duration,
    /// Interval of watch progress notifications, e.g. `10m`, `5s`, `500ms`.
    #[arg(long = "experimental-watch-progress-notify-interval", env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    watch_progress_notify_interval: Duration,
    /// Client server TLS certificate file (for https client URLs).
    #[arg(long, env = "ETCD_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// Client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// CA that signs client certificates (with --client-cert-auth).
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    trusted_ca_file: Option<PathBuf>,
    /// Require clients to present a certificate signed by --trusted-ca-file.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    client_cert_auth: bool,
    /// Peer TLS certificate file (for https peer URLs; also presented to other members).
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    peer_cert_file: Option<PathBuf>,
    /// Peer TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    peer_key_file: Option<PathBuf>,
    /// CA that signs peer certificates.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    peer_client_cert_auth: bool,
    /// Raise a NOSPACE alarm and refuse writes once the data file exceeds this many bytes
    /// (0 = 2 GiB, negative = no quota).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    quota_backend_bytes: i64,
    /// Token type for authenticated clients: only etcd's default `simple` is supported.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    auth_token: String,
    /// Lifetime in seconds of an unused simple auth token.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    auth_token_ttl: u64,
    /// bcrypt cost for hashing auth passwords (4..=31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    bcrypt_cost: u32,
    /// Automatic compaction by the leader: `periodic` (keep --auto-compaction-retention of
    /// history by time) or `revision` (keep that many revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic", value_parser = ["periodic", "revision"])]
    auto_compaction_mode: String,
    /// History to keep: a duration for `periodic` (`1h`, `30m`; a bare number is hours), a
    /// revision count for `revision`; 0 = no automatic compaction.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    auto_compaction_retention: String,
    /// Verify the data before serving (accepted: a member always checks its WAL and
    /// backend on start and refuses to serve damaged data).
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    experimental_initial_corrupt_check: bool,
    /// etcd's logger: `zap` (accepted; `capnslog` too). skiff logs with tracing.
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap", value_parser = ["zap", "capnslog"])]
    logger: String,
    /// Where logs go, comma-separated: `default` or `stderr`, `stdout`, or file paths.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    log_outputs: String,
    /// Log level (`debug`, `info`, `warn`, `error`, `panic`, `fatal`) or a tracing
    /// EnvFilter such as `info,openraft=warn` [default: $SKIFF_LOG, else info].
    #[arg(long, env = "ETCD_LOG_LEVEL")]
    log_level: Option<String>,
    /// Serve the v2 API: refused (skiff serves only the v3 API).
    #[arg(long, env = "ETCD_ENABLE_V2", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    enable_v2: bool,
    /// Self-signed client TLS: refused (use --cert-file/--key-file, e.g. from `skiff pki init`).
    #[arg(long, env = "ETCD_AUTO_TLS", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    auto_tls: bool,
    /// Self-signed peer TLS: refused (use --peer-cert-file/--peer-key-file).
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    peer_auto_tls: bool,
    /// `basic` or `extensive` metrics (accepted; skiff serves one set).
    #[arg(long, env = "ETCD_METRICS", default_value = "basic", value_parser = ["basic", "extensive"])]
    metrics: String,
}

impl StoreArgs {
    fn into_config(self) -> Result<StoreConfig, ConfigError> {
        // etcd flags that mean nothing here: refused with the flag's name.
        for (set, flag, why) in [
            (
                self.enable_v2,
                "--enable-v2",
                "skiff serves only the v3 API",
            ),
            (
                self.auto_tls,
                "--auto-tls",
                "self-signed certificates are not generated; use --cert-file/--key-file (`skiff pki init` makes them)",
            ),
            (
                self.peer_auto_tls,
                "--peer-auto-tls",
                "self-signed certificates are not generated; use --peer-cert-file/--peer-key-file (`skiff pki init` makes them)",
            ),
        ] {
            if set {
                return Err(ConfigError(format!("{flag}: not supported: {why}")));
            }
        }
        let auto_compaction = skiff_store::config::AutoCompaction::from_flags(
            &self.auto_compaction_mode,
            &self.auto_compaction_retention,
        )?;
        if self.auth_token != "simple" {
            return Err(ConfigError(format!(
                "--auth-token={}: only \"simple\" tokens are supported",
                self.auth_token
            )));
        }
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
            pre_vote: self.pre_vote,
            snapshot_count: self.snapshot_count,
            snapshot_catchup_entries: self.snapshot_catchup_entries,
            backend_batch_interval: self.backend_batch_interval,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            listen_metrics_urls: parse_urls(&self.listen_metrics_urls)?,
            watch_progress_notify_interval: self.watch_progress_notify_interval,
            quota_backend_bytes: self.quota_backend_bytes,
            client_tls: TlsFiles {
                cert_file: self.cert_file,
                key_file: self.key_file,
                trusted_ca_file: self.trusted_ca_file,
                client_cert_auth: self.client_cert_auth,
            },
            peer_tls: TlsFiles {
                cert_file: self.peer_cert_file,
                key_file: self.peer_key_file,
                trusted_ca_file: self.peer_trusted_ca_file,
                client_cert_auth: self.peer_client_cert_auth,
            },
            auth: skiff_store::auth::AuthConfig {
                token_ttl: Duration::from_secs(self.auth_token_ttl.max(1)),
                bcrypt_cost: self.bcrypt_cost,
            },
            auto_compaction,
            name: self.name,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Run `skiff store`: a member, or the offline tool named by its subcommand.
pub(crate) fn run(args: StoreArgs) -> ExitCode {
    match args.tool {
        Some(StoreTool::Snapshot(command)) => run_snapshot_tool(command),
        None => run_store(args),
    }
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
fn progress_bar(message: &'static str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(None, target);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

fn run_snapshot_tool(command: SnapshotCommand) -> ExitCode {
    use skiff_store::snapshot::{self, SnapshotError};
    let fail = |err: SnapshotError| {
        eprintln!("skiff: {err}");
        if matches!(err, SnapshotError::Config(_)) {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::FAILURE
        }
    };
    match command {
        SnapshotCommand::Status { file, write_out } => {
            let bar = progress_bar("verifying");
            let result = snapshot::status(&file, &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            match result {
                Ok(status) => {
                    print!("{}", snapshot::render_status(&status, write_out));
                    ExitCode::SUCCESS
                }
                Err(err) => fail(err),
            }
        }
        SnapshotCommand::Restore(args) => {
            let options = match args.options() {
                Ok(options) => options,
                Err(err) => {
                    eprintln!("skiff: {err}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let bar = progress_bar("restoring");
            let result = snapshot::restore(&args.file, &options, &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            match result {
                Ok(restored) => {
                    println!(
                        "restored snapshot {} (revision {}, {} records) into {} as member {:x} of cluster {:x}",
                        args.file.display(),
                        restored.revision,
                        restored.kv_records,
                        restored.data_dir.display(),
                        restored.member_id,
                        restored.cluster_id
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => fail(err),
            }
        }
    }
}

impl RestoreArgs {
    fn options(&self) -> Result<skiff_store::snapshot::RestoreOptions, ConfigError> {
        let advertised = parse_urls(&self.initial_advertise_peer_urls)?;
        let initial_cluster = match &self.initial_cluster {
            Some(value) => parse_initial_cluster(value)?,
            None => [(self.name.clone(), advertised.clone())]
                .into_iter()
                .collect(),
        };
        Ok(skiff_store::snapshot::RestoreOptions {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.skiff", self.name))),
            initial_cluster,
            initial_cluster_token: self.initial_cluster_token.clone(),
            initial_advertise_peer_urls: advertised,
            skip_hash_check: self.skip_hash_check,
        })
    }
}

fn run_store(args: StoreArgs) -> ExitCode {
    let outputs = match crate::logging::Outputs::parse(&args.log_outputs) {
        Ok(outputs) => outputs,
        Err(err) => {
            eprintln!("skiff: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    crate::logging::init(args.log_level.as_deref(), outputs);
    // Accepted for etcd compatibility; they change nothing here (see their --help).
    tracing::debug!(
        logger = %args.logger,
        metrics = %args.metrics,
        initial_corrupt_check = args.experimental_initial_corrupt_check,
        "etcd flags accepted"
    );
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("skiff: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(skiff_store::run(config, store_stop_signal()));
    // The stop is bounded (skiff_store::server::STOP_DEADLINE); so is the wait for
    // blocking work still running (a snapshot being built). Dropping the runtime drops the
    // tasks still holding the engine, which closes it and releases the data-dir lock.
    runtime.shutdown_timeout(Duration::from_millis(500));
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

/// `skiff store`'s signals: the first SIGTERM or SIGINT completes this future (a clean,
/// bounded stop; exit status 0). Another one while stopping exits at once with status 1,
/// as kube-apiserver and k3s do (etcd ignores it and finishes its own bounded stop).
async fn store_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        shutdown_signal().await;
        return;
    };
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("received {first}; stopping (another signal exits at once)");
    tokio::spawn(async move {
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::error!("received {second} while stopping; exiting at once");
        std::process::exit(1);
    });
}
