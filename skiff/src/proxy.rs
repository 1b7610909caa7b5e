//! `skiff proxy`: kube-proxy's flags mapped onto `skiff_proxy::ProxyConfig`; `--cleanup`
//! removes every rule and chain the proxy writes, then exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use skiff_proxy::iptables::Masquerade;
use skiff_proxy::{ProxyConfig, ProxyError};

use crate::cli::{EXIT_USAGE, parse_duration, shutdown_signal};

/// `skiff proxy` flags.
#[derive(Args)]
pub(crate) struct ProxyArgs {
    /// Kubeconfig of the API server (default: `KUBECONFIG`, else in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name: endpoints on it are local (externalTrafficPolicy/
    /// internalTrafficPolicy Local). Default: the machine's hostname.
    #[arg(long)]
    hostname_override: Option<String>,
    /// `iptables` (nftables is not implemented yet).
    #[arg(long, default_value = "iptables")]
    proxy_mode: String,
    /// The pods' CIDR: traffic to a ClusterIP from outside it is masqueraded.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// Masquerade every packet sent to a ClusterIP.
    #[arg(long)]
    masquerade_all: bool,
    /// A full sync at least this often.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    iptables_sync_period: Duration,
    /// Syncs at most this often (changes within it are batched into one sync).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    iptables_min_sync_period: Duration,
    /// Remove every rule and chain the proxy writes, then exit.
    #[arg(long)]
    cleanup: bool,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

pub(crate) fn run(args: ProxyArgs) -> ExitCode {
    crate::component::init_logging(&args.log_level);
    if args.cleanup {
        return match skiff_proxy::apply::cleanup() {
            Ok(chains) => {
                tracing::info!(chains, "removed the proxy's rules");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("skiff: cleanup: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.proxy_mode != "iptables" {
        eprintln!(
            "skiff: --proxy-mode {:?}: only iptables is implemented",
            args.proxy_mode
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(cidr) = args.cluster_cidr.as_deref().filter(|c| !valid_cidr(c)) {
        eprintln!("skiff: --cluster-cidr {cidr:?}: expected an IPv4 CIDR such as 10.42.0.0/16");
        return ExitCode::from(EXIT_USAGE);
    }
    let node_name = args.hostname_override.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_else(|_| "localhost".into())
    });
    let config = ProxyConfig {
        node_name,
        masquerade: Masquerade {
            all: args.masquerade_all,
            cluster_cidr: args.cluster_cidr.clone(),
        },
        sync_period: args.iptables_sync_period,
        min_sync_period: args.iptables_min_sync_period,
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let kubeconfig = args.kubeconfig;
    let res: Result<(), String> = runtime.block_on(async move {
        let source =
            skiff_client::config::resolve(kubeconfig.as_deref(), std::env::var_os("KUBECONFIG"));
        let client = skiff_client::config::client(&source)
            .await
            .map_err(|e| e.to_string())?;
        let writer = Arc::new(skiff_proxy::apply::Iptables);
        skiff_proxy::run(config, client, writer, shutdown_signal())
            .await
            .map_err(|e: ProxyError| e.to_string())
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `cidr` is `a.b.c.d/n` with n ≤ 32.
fn valid_cidr(cidr: &str) -> bool {
    cidr.split_once('/').is_some_and(|(ip, bits)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32)
    })
}
