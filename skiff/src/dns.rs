//! `skiff dns`: the cluster DNS server (CoreDNS with its kubernetes plugin, as k3s runs it),
//! one per node on the address its pods use as nameserver (the node agent's `--cluster-dns`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use skiff_dns::DnsConfig;

use crate::cli::{EXIT_USAGE, shutdown_signal};

/// `skiff dns` flags.
#[derive(Args)]
pub(crate) struct DnsArgs {
    /// Kubeconfig of the API server (default: `KUBECONFIG`, else in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where to serve DNS (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Resolvers other names are forwarded to, in order (`ip:port`, comma-separated;
    /// default: the nameservers of --resolv-conf).
    #[arg(long, value_delimiter = ',')]
    upstream: Vec<SocketAddr>,
    /// The node's resolver configuration, read when --upstream is not given.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

pub(crate) fn run(args: DnsArgs) -> ExitCode {
    crate::component::init_logging(&args.log_level);
    let upstreams = if args.upstream.is_empty() {
        match std::fs::read_to_string(&args.resolv_conf) {
            Ok(text) => skiff_dns::upstreams_from_resolv_conf(&text, args.listen),
            Err(e) => {
                eprintln!("skiff: --resolv-conf {}: {e}", args.resolv_conf.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        args.upstream.clone()
    };
    let config = DnsConfig {
        domain: args.cluster_domain.clone(),
        upstreams,
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let kubeconfig = args.kubeconfig;
    let listen = args.listen;
    let res: Result<(), String> = runtime.block_on(async move {
        let sockets = skiff_dns::bind(listen).await.map_err(|e| e.to_string())?;
        let source =
            skiff_client::config::resolve(kubeconfig.as_deref(), std::env::var_os("KUBECONFIG"));
        let client = skiff_client::config::client(&source)
            .await
            .map_err(|e| e.to_string())?;
        skiff_dns::run(config, client, sockets, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}
