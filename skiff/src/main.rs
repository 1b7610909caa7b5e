//! The `skiff` binary: command-line parsing, logging setup and signal handling. Every
//! subcommand is a thin shell around a library crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use skiff_store::config::{
    ClusterState, ConfigError, StoreConfig, TlsFiles, parse_initial_cluster, parse_urls,
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

// Parsed once at startup: the size of the flag struct does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a store member (etcd v3 API on the client URLs), or an offline store tool.
    ///
    /// Members trust each other: a message on the peer port can make a member append log
    /// entries, vote, install a snapshot or change the membership. Never let anything but
    /// the members reach the peer port without peer mutual TLS: https peer URLs with
    /// --peer-cert-file, --peer-key-file, --peer-trusted-ca-file and --peer-client-cert-auth.
    #[command(args_conflicts_with_subcommands = true)]
    Store(StoreArgs),
    /// Certificates for TLS between clients and members.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Benchmark etcd v3 endpoints (skiff or etcd) like etcd's benchmark tool, or compare
    /// a skiff cluster with a real etcd cluster side by side.
    Bench(BenchArgs),
    /// Run a Kubernetes-compatible API server over an etcd v3 store (skiff store or etcd).
    Apiserver(ApiserverArgs),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a CA plus server, peer and client certificates (ca.pem, server.pem, ...).
    Init {
        /// Directory to write the PEM files to.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// DNS names and IP addresses the server and peer certificates are valid for.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
    },
}

/// Offline tools on store files (like `etcdutl`).
#[derive(Subcommand)]
enum StoreTool {
    /// Snapshot files written by `etcdctl snapshot save` against a skiff member.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
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
struct RestoreArgs {
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
struct StoreArgs {
    #[command(subcommand)]
    tool: Option<StoreTool>,
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
    /// URLs to listen on for peer traffic: only the members may reach them, unless peer
    /// mTLS is on.
    ///
    /// A peer message can make this member append log entries, vote, install a snapshot
    /// or change the membership. Unless only the members can reach these URLs, use https
    /// with --peer-cert-file, --peer-key-file, --peer-trusted-ca-file and
    /// --peer-client-cert-auth.
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
    /// Applied entries between two Raft snapshots (etcd's default: 100,000).
    #[arg(long, default_value_t = 100_000)]
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
    /// How often applied writes are committed durably to the backend, e.g. `100ms` (the
    /// WAL holds them meanwhile; a restart re-applies from it).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    backend_batch_interval: Duration,
    /// Interval of watch progress notifications, e.g. `10m`, `5s`, `500ms`.
    #[arg(long = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = parse_duration)]
    watch_progress_notify_interval: Duration,
    /// Client server TLS certificate file (for https client URLs).
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Client server TLS key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// CA that signs client certificates (with --client-cert-auth).
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Require clients to present a certificate signed by --trusted-ca-file.
    #[arg(long)]
    client_cert_auth: bool,
    /// Peer TLS certificate file (for https peer URLs; also presented to other members).
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// Peer TLS key file.
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// CA that signs peer certificates.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long)]
    peer_client_cert_auth: bool,
    /// Raise a NOSPACE alarm and refuse writes once the data file exceeds this many bytes
    /// (0 = 2 GiB, negative = no quota).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    quota_backend_bytes: i64,
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
        Command::Store(StoreArgs {
            tool: Some(StoreTool::Snapshot(command)),
            ..
        }) => run_snapshot_tool(command),
        Command::Store(args) => run_store(args),
        Command::Bench(args) => args.run(),
        Command::Apiserver(args) => run_apiserver(args),
        Command::Pki(PkiCommand::Init { dir, hosts }) => match skiff_store::pki::init(&dir, &hosts)
        {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("skiff: {err}");
                ExitCode::FAILURE
            }
        },
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

/// `skiff apiserver` flags, with kube-apiserver's names; mapped onto `ApiServerConfig`.
#[derive(Args)]
struct ApiserverArgs {
    /// etcd v3 endpoints to keep objects in (comma-separated URLs or host:port).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_servers: Vec<String>,
    /// CA (PEM) that signed the store's serving certificates; needed for https --etcd-servers.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) presented to the store (with --etcd-keyfile).
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// Key (PEM) of --etcd-certfile.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
    /// Key prefix of every object in the store.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// Port to serve HTTPS on.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Serving certificate (PEM); with no certificate a self-signed one is made in --cert-dir.
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// Key of --tls-cert-file (PEM).
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// Where a generated CA and serving certificate are kept.
    #[arg(long, default_value = "apiserver.local.config/certificates")]
    cert_dir: PathBuf,
    /// Bearer tokens: CSV lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Serve requests that carry no credentials.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// Client certificates signed by a CA in this PEM file authenticate: CN = user, O = groups.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Authorization: AlwaysAllow or AlwaysDeny.
    #[arg(long, default_value = "AlwaysAllow")]
    authorization_mode: String,
    /// Serve the gRPC automation API (skiff.api.v1.Resources, health, reflection) on this port.
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Write an admin kubeconfig (CA + bearer token) for this server to this path.
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// How often to compact the store, to the revision it had one interval earlier (as
    /// kube-apiserver; replicas coordinate through the key `compact_rev_key`); 0 = never.
    #[arg(long, default_value = "5m", value_parser = skiff_apiserver::server::parse_duration)]
    etcd_compaction_interval: std::time::Duration,
    /// Read requests served at once (watches and system:masters excluded); more get 429. 0 =
    /// no limit.
    #[arg(long, default_value_t = skiff_apiserver::server::MAX_REQUESTS_INFLIGHT_DEFAULT)]
    max_requests_inflight: usize,
    /// Create/update/patch/delete requests served at once; more get 429. 0 = no limit.
    #[arg(long, default_value_t = skiff_apiserver::server::MAX_MUTATING_REQUESTS_INFLIGHT_DEFAULT)]
    max_mutating_requests_inflight: usize,
    /// Encrypt resources at rest as this EncryptionConfiguration file (apiserver.config.k8s.io/v1)
    /// says: providers aescbc, aesgcm, secretbox and identity; the first provider encrypts.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// Write the audit log (JSON lines of audit.k8s.io/v1 Events) to this file; `-` = stdout.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// Audit policy (audit.k8s.io/v1 Policy) deciding what is logged at which level; without it
    /// every request is logged at Metadata.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Megabytes the audit log may reach before it is rotated; 0 = never.
    #[arg(long, default_value_t = 0)]
    audit_log_maxsize: u64,
    /// Rotated audit logs to keep; 0 = all.
    #[arg(long, default_value_t = 0)]
    audit_log_maxbackup: usize,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

fn run_apiserver(args: ApiserverArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = skiff_apiserver::ApiServerConfig {
        etcd_servers: args.etcd_servers,
        etcd_cafile: args.etcd_cafile,
        etcd_certfile: args.etcd_certfile,
        etcd_keyfile: args.etcd_keyfile,
        etcd_prefix: args.etcd_prefix,
        bind_address: args.bind_address,
        secure_port: args.secure_port,
        tls_cert_file: args.tls_cert_file,
        tls_private_key_file: args.tls_private_key_file,
        cert_dir: args.cert_dir,
        token_auth_file: args.token_auth_file,
        anonymous_auth: args.anonymous_auth,
        client_ca_file: args.client_ca_file,
        authorization_mode: args.authorization_mode,
        grpc_port: args.grpc_port,
        write_kubeconfig: args.write_kubeconfig,
        etcd_compaction_interval: args.etcd_compaction_interval,
        max_requests_inflight: args.max_requests_inflight,
        max_mutating_requests_inflight: args.max_mutating_requests_inflight,
        encryption_provider_config: args.encryption_provider_config,
        audit_log_path: args.audit_log_path,
        audit_policy_file: args.audit_policy_file,
        audit_log_maxsize: args.audit_log_maxsize,
        audit_log_maxbackup: args.audit_log_maxbackup,
    };
    if let Err(err) = config.validate() {
        eprintln!("skiff: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
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
    match runtime.block_on(skiff_apiserver::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(skiff_apiserver::Error::Config(msg)) => {
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

/// `skiff bench` flags, with the names of etcd's benchmark tool; mapped onto
/// `skiff_bench::BenchConfig` (or `compare::CompareConfig`).
#[derive(Args)]
struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
    /// Client endpoints, comma-separated (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Concurrent clients (each sends one request at a time).
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// gRPC connections shared by the clients (connection i goes to endpoint i mod N).
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Requests to send (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Run for this long, e.g. `10s` (compare: per case; default 10s).
    #[arg(long, global = true, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Key size in bytes [default: 8].
    #[arg(long, global = true)]
    key_size: Option<usize>,
    /// Value size in bytes [default: 8; compare: 256].
    #[arg(long, global = true)]
    val_size: Option<usize>,
    /// Number of distinct keys written.
    #[arg(long, global = true, default_value_t = 1)]
    key_space_size: u64,
    /// Write keys in sequence instead of at random.
    #[arg(long, global = true)]
    sequential_keys: bool,
    /// Requests per second over all clients (0 = no limit).
    #[arg(long, global = true, default_value_t = 0.0)]
    rate: f64,
    /// Print one JSON object as the last line of output.
    #[arg(long, global = true)]
    json: bool,
}

// Parsed once at startup: the size of the flag struct does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum BenchCommand {
    /// Put keys of the key space.
    Put,
    /// Range KEY (or [KEY, END)) repeatedly.
    Range {
        key: String,
        end: Option<String>,
        /// l (linearizable) or s (serializable).
        #[arg(long, default_value = "l")]
        consistency: skiff_bench::Consistency,
        /// Maximum keys per range (0 = no limit).
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Only count the keys.
        #[arg(long)]
        count_only: bool,
    },
    /// Txns whose success branch puts --txn-ops keys.
    TxnPut {
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// N watchers on the key space while the clients put: events/s and delivery latency.
    Watch {
        #[arg(long, default_value_t = 10)]
        watchers: usize,
        /// Watch streams the watchers are spread over.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// Lease keepalive round trips (one lease and one keepalive stream per client).
    LeaseKeepalive,
    /// Start 3 skiff and 3 etcd members on loopback, run the same matrix against both, and
    /// write a Markdown table, a PNG chart and the raw JSON (see README "Benchmarks").
    Compare {
        /// Repeats of the whole matrix.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Keys preloaded into each cluster (also the put key space).
        #[arg(long, default_value_t = 100_000)]
        preload: u64,
        /// Client counts of the put cases.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        put_clients: Vec<usize>,
        /// Client counts of the linearizable and serializable range cases.
        #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
        range_clients: Vec<usize>,
        /// Output directory.
        #[arg(long, default_value = "docs/benchmarks")]
        out: PathBuf,
        /// File stem of the outputs (<out>/<name>.md, .png, .json).
        #[arg(long, default_value = "compare")]
        name: String,
        /// A note for the report header, e.g. "smoke run on a busy machine".
        #[arg(long)]
        label: Option<String>,
        /// The etcd binary.
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd_bin: PathBuf,
        /// Parent directory of both clusters' data dirs (default: the temp dir).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Keep data dirs and member logs.
        #[arg(long)]
        keep_data: bool,
        /// Before each run, wait until other processes use fewer than this many cores.
        #[arg(long)]
        idle_gate: Option<f64>,
        /// TrueType font for the chart (default: DejaVu Sans).
        #[arg(long)]
        font: Option<PathBuf>,
        /// Extra flag for every skiff member (repeat for more).
        #[arg(long, allow_hyphen_values = true)]
        skiff_arg: Vec<String>,
        /// Extra flag for every etcd member (repeat for more).
        #[arg(long, allow_hyphen_values = true)]
        etcd_arg: Vec<String>,
    },
}

impl BenchArgs {
    fn run(self) -> ExitCode {
        use skiff_bench::{BenchConfig, Error, Workload, compare::CompareConfig};
        let workload = match self.command {
            BenchCommand::Put => Workload::Put,
            BenchCommand::Range {
                key,
                end,
                consistency,
                limit,
                count_only,
            } => Workload::Range {
                key: key.into_bytes(),
                end: end.map(String::into_bytes),
                consistency,
                limit,
                count_only,
            },
            BenchCommand::TxnPut { txn_ops } => Workload::TxnPut { txn_ops },
            BenchCommand::Watch { watchers, streams } => Workload::Watch { watchers, streams },
            BenchCommand::LeaseKeepalive => Workload::LeaseKeepalive,
            BenchCommand::Compare {
                repeats,
                preload,
                put_clients,
                range_clients,
                out,
                name,
                label,
                etcd_bin,
                work_dir,
                keep_data,
                idle_gate,
                font,
                skiff_arg,
                etcd_arg,
            } => {
                let defaults = CompareConfig::default();
                let config = CompareConfig {
                    skiff_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff")),
                    etcd_bin,
                    repeats,
                    duration: self.duration.unwrap_or(defaults.duration),
                    preload,
                    put_clients,
                    range_clients,
                    key_size: self.key_size.unwrap_or(defaults.key_size),
                    val_size: self.val_size.unwrap_or(defaults.val_size),
                    out_dir: out,
                    name,
                    label,
                    work_dir,
                    keep_data,
                    idle_gate,
                    font,
                    skiff_args: skiff_arg,
                    etcd_args: etcd_arg,
                    command_line: None,
                };
                return match skiff_bench::compare::run_blocking(config) {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(Error::Config(msg)) => {
                        eprintln!("skiff: {msg}");
                        ExitCode::from(EXIT_USAGE)
                    }
                    Err(err) => {
                        eprintln!("skiff: {err}");
                        ExitCode::FAILURE
                    }
                };
            }
        };
        let config = BenchConfig {
            endpoints: self.endpoints,
            clients: self.clients,
            conns: self.conns,
            total: self.total,
            duration: self.duration,
            key_size: self.key_size.unwrap_or(8),
            val_size: self.val_size.unwrap_or(8),
            key_space_size: self.key_space_size,
            sequential_keys: self.sequential_keys,
            rate: (self.rate > 0.0).then_some(self.rate),
            workload,
            ..BenchConfig::default()
        };
        match skiff_bench::run_and_print(config, self.json) {
            Ok(_) => ExitCode::SUCCESS,
            Err(Error::Config(msg)) => {
                eprintln!("skiff: {msg}");
                ExitCode::from(EXIT_USAGE)
            }
            Err(err) => {
                eprintln!("skiff: {err}");
                ExitCode::FAILURE
            }
        }
    }
}
