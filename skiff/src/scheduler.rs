//! `skiff scheduler` (kube-scheduler's flags and `--config` file mapped onto
//! `skiff_scheduler::SchedulerConfig`, HTTPS health and metrics on `--secure-port`)
//! and `skiff why-pending` (per-node filter verdicts for one pod).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use skiff_client::leader::LeaderElectionConfig;
use skiff_client::tls::ServingCertOptions;

use crate::cli::{EXIT_USAGE, parse_duration, parse_go_bool, shutdown_signal};

/// `skiff scheduler` flags, with kube-scheduler's names and defaults. The flags that
/// `--config` also covers are `Option`s so that only flags given on the command line override
/// the file; their defaults are applied in [`settings`].
#[derive(Args)]
pub(crate) struct SchedulerArgs {
    /// KubeSchedulerConfiguration file (kubescheduler.config.k8s.io/v1, YAML or JSON):
    /// clientConnection.kubeconfig, leaderElection, profiles[].schedulerName (one profile),
    /// percentageOfNodesToScore, parallelism. Flags given explicitly override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// kubeconfig to reach the API server; else the config file's clientConnection.kubeconfig,
    /// else $KUBECONFIG, else the in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Elect a leader through a Lease before scheduling (run several for availability)
    /// [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = parse_go_bool)]
    leader_elect: Option<bool>,
    /// How long non-leaders wait after the last renewal before taking the Lease [default: 15s].
    #[arg(long, value_parser = parse_duration)]
    leader_elect_lease_duration: Option<Duration>,
    /// How long the leader retries renewing before it steps down [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    leader_elect_renew_deadline: Option<Duration>,
    /// How long candidates wait between tries [default: 2s].
    #[arg(long, value_parser = parse_duration)]
    leader_elect_retry_period: Option<Duration>,
    /// Name of the Lease object [default: kube-scheduler].
    #[arg(long)]
    leader_elect_resource_name: Option<String>,
    /// Namespace of the Lease object [default: kube-system].
    #[arg(long)]
    leader_elect_resource_namespace: Option<String>,
    /// Address to serve /healthz, /livez, /readyz and /metrics on (HTTPS).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port for /healthz, /livez, /readyz and /metrics; 0 = do not serve.
    #[arg(long, default_value_t = 10259)]
    secure_port: u16,
    /// Serving certificate (PEM, leaf first); with none, a self-signed one is generated.
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// Key of --tls-cert-file (PEM).
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// Where a generated certificate is kept (kube-scheduler.crt/.key, reused when present);
    /// empty: generated in memory at each start. Ignored with --tls-cert-file.
    #[arg(long, default_value = "", hide_default_value = true)]
    cert_dir: String,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

/// What the scheduler runs with: defaults, then `--config`, then explicit flags.
struct Settings {
    kubeconfig: Option<PathBuf>,
    config: skiff_scheduler::SchedulerConfig,
}

/// Lays the config file (if any) over kube-scheduler's defaults, and explicit flags over that.
fn settings(args: &SchedulerArgs, identity: String) -> Result<Settings, String> {
    use skiff_scheduler::config::KubeSchedulerConfiguration;
    let file = match &args.config {
        Some(path) => KubeSchedulerConfiguration::load(path).map_err(|e| e.to_string())?,
        None => KubeSchedulerConfiguration::default(),
    };
    let scheduler_name = file
        .scheduler_name()
        .map_err(|e| match &args.config {
            Some(path) => format!("--config {}: {e}", path.display()),
            None => e.to_string(),
        })?
        .to_string();
    if file.percentage_of_nodes_to_score.is_some() || file.parallelism.is_some() {
        tracing::info!(
            percentage_of_nodes_to_score = ?file.percentage_of_nodes_to_score,
            parallelism = ?file.parallelism,
            "accepted from --config but not used yet: every feasible node is scored"
        );
    }
    let le = &file.leader_election;
    let leader_elect = args.leader_elect.or(le.leader_elect).unwrap_or(true);
    let pick = |flag: &Option<Duration>, file: Option<Duration>, default: u64| {
        flag.or(file).unwrap_or(Duration::from_secs(default))
    };
    let pick_name = |flag: &Option<String>, file: &Option<String>, default: &str| {
        flag.clone()
            .or_else(|| file.clone())
            .unwrap_or_else(|| default.to_string())
    };
    let config = skiff_scheduler::SchedulerConfig {
        scheduler_name,
        leader_election: leader_elect.then(|| LeaderElectionConfig {
            lease_name: pick_name(
                &args.leader_elect_resource_name,
                &le.resource_name,
                "kube-scheduler",
            ),
            namespace: pick_name(
                &args.leader_elect_resource_namespace,
                &le.resource_namespace,
                "kube-system",
            ),
            identity: identity.clone(),
            lease_duration: pick(&args.leader_elect_lease_duration, le.lease_duration, 15),
            renew_deadline: pick(&args.leader_elect_renew_deadline, le.renew_deadline, 10),
            retry_period: pick(&args.leader_elect_retry_period, le.retry_period, 2),
        }),
        identity,
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(Settings {
        kubeconfig: args.kubeconfig.clone().or(file.kubeconfig),
        config,
    })
}

/// `skiff why-pending` flags.
#[derive(Args)]
pub(crate) struct WhyPendingArgs {
    /// The pod.
    pod: String,
    /// Its namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// kubeconfig to reach the API server; else $KUBECONFIG, else the in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

pub(crate) fn run(args: SchedulerArgs) -> ExitCode {
    crate::component::init_logging(&args.log_level);
    let identity = skiff_client::leader::default_identity();
    let Settings { kubeconfig, config } = match settings(&args, identity) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("skiff: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let serving = ServingCertOptions {
        cert_file: args.tls_cert_file.clone(),
        key_file: args.tls_private_key_file.clone(),
        cert_dir: Some(PathBuf::from(&args.cert_dir)),
        pair_name: "kube-scheduler".into(),
        bind_address: Some(args.bind_address),
    };
    let acceptor = match crate::component::serving_acceptor(&serving, args.secure_port) {
        Ok(acceptor) => acceptor,
        Err(code) => return code,
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let source =
        skiff_client::config::resolve(kubeconfig.as_deref(), std::env::var_os("KUBECONFIG"));
    let result = runtime.block_on(async move {
        let client = skiff_client::config::client(&source).await?;
        let registry = skiff_client::metrics::Registry::default();
        let metrics = skiff_scheduler::metrics::SchedulerMetrics::register(&registry);
        crate::component::spawn_health_server(
            args.bind_address,
            args.secure_port,
            acceptor,
            registry,
        )
        .await?;
        skiff_scheduler::run(client, config, metrics, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn why_pending(args: WhyPendingArgs) -> ExitCode {
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let source =
        skiff_client::config::resolve(args.kubeconfig.as_deref(), std::env::var_os("KUBECONFIG"));
    let result = runtime.block_on(async move {
        let client = skiff_client::config::client(&source).await?;
        skiff_scheduler::why::why_pending(client, &args.namespace, &args.pod).await
    });
    match result {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}
