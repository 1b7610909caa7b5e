//! `skiff node-sim`: kwok-style simulated nodes; flags mapped onto
//! `skiff_node_sim::NodeSimConfig`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use skiff_node_sim::{NodeSimConfig, PodCidr, TaintSpec};

use crate::cli::{EXIT_USAGE, shutdown_signal};

/// `skiff node-sim` flags.
#[derive(Args)]
pub(crate) struct NodeSimArgs {
    /// Kubeconfig of the API server (default: as kubectl, `KUBECONFIG` or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Node names are this prefix and a number from 0.
    #[arg(long, default_value = "sim-node-")]
    name_prefix: String,
    /// CPU capacity (and allocatable) of each node.
    #[arg(long, default_value = "32")]
    cpu: String,
    /// Memory capacity (and allocatable) of each node.
    #[arg(long, default_value = "256Gi")]
    memory: String,
    /// Pod capacity of each node.
    #[arg(long, default_value_t = 110)]
    pods: u32,
    /// Ephemeral storage capacity of each node.
    #[arg(long, default_value = "100Gi")]
    ephemeral_storage: String,
    /// `kubernetes.io/arch` of the nodes.
    #[arg(long, default_value = "amd64")]
    arch: String,
    /// Nodes are spread round-robin over zones `zone-0`… (`topology.kubernetes.io/zone`).
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// Taints of every node, `key=value:Effect` or `key:Effect` (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_parser = parse_taint)]
    taints: Vec<TaintSpec>,
    /// Pod addresses: one subnet of --node-cidr-mask-size per node.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = parse_cidr)]
    pod_cidr: PodCidr,
    /// Prefix length of each node's pod subnet.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Nodes named in this file (one a line; reread every 2 s) stop renewing their Lease and
    /// Ready condition and stop updating their pods, as if their machine died.
    #[arg(long)]
    stop_renewing_file: Option<PathBuf>,
    /// API writes (Lease renewals, node and pod status, pod deletions) in flight at once.
    #[arg(long, default_value_t = skiff_node_sim::config::CONCURRENT_WRITES_DEFAULT)]
    max_concurrent_writes: usize,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

fn parse_taint(value: &str) -> Result<TaintSpec, String> {
    value
        .parse()
        .map_err(|e: skiff_node_sim::Error| e.to_string())
}

fn parse_cidr(value: &str) -> Result<PodCidr, String> {
    value
        .parse()
        .map_err(|e: skiff_node_sim::Error| e.to_string())
}

pub(crate) fn run(args: NodeSimArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = NodeSimConfig {
        nodes: args.nodes,
        name_prefix: args.name_prefix,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        ephemeral_storage: args.ephemeral_storage,
        arch: args.arch,
        zones: args.zones,
        taints: args.taints,
        pod_cidr: args.pod_cidr,
        node_cidr_mask_size: args.node_cidr_mask_size,
        stop_renewing_file: args.stop_renewing_file,
        max_concurrent_writes: args.max_concurrent_writes,
    };
    if let Err(err) = config.validate() {
        eprintln!("skiff: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let res = runtime.block_on(async {
        let client = skiff_node_sim::kubeconfig::client(args.kubeconfig.as_deref()).await?;
        skiff_node_sim::run(client, config, shutdown_signal()).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ (skiff_node_sim::Error::Config(_) | skiff_node_sim::Error::Kubeconfig(_))) => {
            eprintln!("skiff: {err}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}
