//! `skiff scheduler` (kube-scheduler's flags mapped onto `skiff_scheduler::SchedulerConfig`)
//! and `skiff why-pending` (per-node filter verdicts for one pod).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use skiff_client::leader::LeaderElectionConfig;

use crate::cli::{EXIT_USAGE, parse_duration, parse_go_bool, shutdown_signal};

/// `skiff scheduler` flags, with kube-scheduler's names and defaults.
#[derive(Args)]
pub(crate) struct SchedulerArgs {
    /// kubeconfig to reach the API server; else $KUBECONFIG, else the in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Elect a leader through a Lease before scheduling (run several for availability).
    #[arg(long, default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = parse_go_bool)]
    leader_elect: bool,
    /// How long non-leaders wait after the last renewal before taking the Lease.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader retries renewing before it steps down.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How long candidates wait between tries.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// Name of the Lease object.
    #[arg(long, default_value = "kube-scheduler")]
    leader_elect_resource_name: String,
    /// Namespace of the Lease object.
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// Address to serve /healthz and /metrics on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Port to serve /healthz and /metrics on (plain HTTP for now); 0 = do not serve.
    #[arg(long, default_value_t = 10259)]
    secure_port: u16,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
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

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) fn run(args: SchedulerArgs) -> ExitCode {
    init_logging(&args.log_level);
    let identity = skiff_client::leader::default_identity();
    let config = skiff_scheduler::SchedulerConfig {
        scheduler_name: "default-scheduler".into(),
        leader_election: args.leader_elect.then(|| LeaderElectionConfig {
            lease_name: args.leader_elect_resource_name.clone(),
            namespace: args.leader_elect_resource_namespace.clone(),
            identity: identity.clone(),
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        }),
        identity,
    };
    if let Err(err) = config.validate() {
        eprintln!("skiff: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let source =
        skiff_client::config::resolve(args.kubeconfig.as_deref(), std::env::var_os("KUBECONFIG"));
    let result = runtime.block_on(async move {
        let client = skiff_client::config::client(&source).await?;
        let registry = skiff_client::metrics::Registry::default();
        let metrics = skiff_scheduler::metrics::SchedulerMetrics::register(&registry);
        if args.secure_port != 0 {
            let addr = SocketAddr::new(args.bind_address, args.secure_port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(skiff_client::Error::Io)?;
            tracing::info!(%addr, "serving /healthz and /metrics (HTTP)");
            let health = skiff_client::serve::Health::default();
            tokio::spawn(async move {
                if let Err(err) =
                    skiff_client::serve::serve(listener, health, registry, shutdown_signal()).await
                {
                    tracing::error!(error = %err, "health server failed");
                }
            });
        }
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
