//! `skiff controller-manager`: kube-controller-manager's flags mapped onto
//! `skiff_controllers::manager::ManagerConfig`, HTTPS health and metrics on `--secure-port`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use skiff_client::leader::LeaderElectionConfig;
use skiff_client::tls::ServingCertOptions;

use crate::cli::{EXIT_USAGE, parse_duration, parse_go_bool, shutdown_signal};

/// `skiff controller-manager` flags, with kube-controller-manager's names and defaults.
#[derive(Args)]
pub(crate) struct ControllerManagerArgs {
    /// kubeconfig to reach the API server; else $KUBECONFIG, else the in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Controllers to run: `*` for all on by default, `name` to add one, `-name` to drop one
    /// (known: deployment, endpoint, endpointslice, garbagecollector, nodeipam,
    /// nodelifecycle, persistentvolume-binder, podgc, replicaset, resourcequota,
    /// serviceaccount).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Elect a leader through a Lease before acting (run several for availability).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set)]
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
    #[arg(long, default_value = "kube-controller-manager")]
    leader_elect_resource_name: String,
    /// Namespace of the Lease object.
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// Deployments synced at once.
    #[arg(long, default_value_t = 5)]
    concurrent_deployment_syncs: usize,
    /// ReplicaSets synced at once.
    #[arg(long, default_value_t = 5)]
    concurrent_replicaset_syncs: usize,
    /// Garbage-collector workers.
    #[arg(long, default_value_t = 20)]
    concurrent_gc_syncs: usize,
    /// Allocate and set pod CIDRs for nodes (node IPAM) from --cluster-cidr.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// The CIDR range of pods in the cluster (with --allocate-node-cidrs).
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How long a node may go without a status update or Lease renewal before it is marked
    /// unhealthy (Ready Unknown).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// How long a starting node may stay unresponsive before it is marked unhealthy.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    node_startup_grace_period: Duration,
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_monitor_period: Duration,
    /// Nodes per second whose pods are evicted (tainted NoExecute) in a healthy zone.
    #[arg(long, default_value_t = 0.1)]
    node_eviction_rate: f64,
    /// Nodes per second evicted in a zone that is unhealthy (past --unhealthy-zone-threshold).
    #[arg(long, default_value_t = 0.01)]
    secondary_node_eviction_rate: f64,
    /// A zone with at most this many nodes uses a secondary eviction rate of 0 when unhealthy.
    #[arg(long, default_value_t = 50)]
    large_cluster_size_threshold: u32,
    /// The fraction of not-ready nodes (at least 3) that makes a zone unhealthy.
    #[arg(long, default_value_t = 0.55)]
    unhealthy_zone_threshold: f64,
    /// Terminated pods kept before the oldest are deleted; 0 = never delete them.
    #[arg(long, default_value_t = 12500)]
    terminated_pod_gc_threshold: u32,
    /// Endpoints objects synced at once.
    #[arg(long, default_value_t = 5)]
    concurrent_endpoint_syncs: usize,
    /// Services whose EndpointSlices are synced at once.
    #[arg(long, default_value_t = 5)]
    concurrent_service_endpoint_syncs: usize,
    /// Endpoints in one EndpointSlice at most.
    #[arg(long, default_value_t = 100)]
    max_endpoints_per_slice: usize,
    /// ResourceQuotas synced at once.
    #[arg(long, default_value_t = 5)]
    concurrent_resource_quota_syncs: usize,
    /// How often every quota's usage is recounted in full.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    resource_quota_sync_period: Duration,
    /// Address to serve /healthz, /livez, /readyz and /metrics on (HTTPS).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port for /healthz, /livez, /readyz and /metrics; 0 = do not serve.
    #[arg(long, default_value_t = 10257)]
    secure_port: u16,
    /// Serving certificate (PEM, leaf first); with none, a self-signed one is generated.
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// Key of --tls-cert-file (PEM).
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// Where a generated certificate is kept (kube-controller-manager.crt/.key, reused when
    /// present); empty: generated in memory at each start. Ignored with --tls-cert-file.
    #[arg(long, default_value = "", hide_default_value = true)]
    cert_dir: String,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

pub(crate) fn run(args: ControllerManagerArgs) -> ExitCode {
    crate::component::init_logging(&args.log_level);
    let identity = skiff_client::leader::default_identity();
    let controllers = match skiff_controllers::manager::select_controllers(&args.controllers) {
        Ok(controllers) => controllers,
        Err(err) => {
            eprintln!("skiff: --controllers: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let leader_election = args.leader_elect.then(|| LeaderElectionConfig {
        lease_name: args.leader_elect_resource_name.clone(),
        namespace: args.leader_elect_resource_namespace.clone(),
        identity: identity.clone(),
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
    });
    if let Some(le) = &leader_election
        && let Err(err) = le.validate()
    {
        eprintln!("skiff: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    let node_cidrs = match node_cidrs(&args) {
        Ok(node_cidrs) => node_cidrs,
        Err(err) => {
            eprintln!("skiff: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let serving = ServingCertOptions {
        cert_file: args.tls_cert_file.clone(),
        key_file: args.tls_private_key_file.clone(),
        cert_dir: Some(PathBuf::from(&args.cert_dir)),
        pair_name: "kube-controller-manager".into(),
        bind_address: Some(args.bind_address),
    };
    let acceptor = match crate::component::serving_acceptor(&serving, args.secure_port) {
        Ok(acceptor) => acceptor,
        Err(code) => return code,
    };
    let config = skiff_controllers::manager::ManagerConfig {
        controllers,
        leader_election,
        identity,
        concurrent_deployment_syncs: args.concurrent_deployment_syncs.max(1),
        concurrent_replicaset_syncs: args.concurrent_replicaset_syncs.max(1),
        concurrent_gc_syncs: args.concurrent_gc_syncs.max(1),
        node_cidrs,
        node_lifecycle: skiff_controllers::nodelifecycle::NodeLifecycleSettings {
            node_monitor_grace_period: args.node_monitor_grace_period,
            node_startup_grace_period: args.node_startup_grace_period,
            node_monitor_period: args.node_monitor_period,
            node_eviction_rate: args.node_eviction_rate,
            secondary_node_eviction_rate: args.secondary_node_eviction_rate,
            large_cluster_size_threshold: args.large_cluster_size_threshold,
            unhealthy_zone_threshold: args.unhealthy_zone_threshold,
        },
        terminated_pod_gc_threshold: args.terminated_pod_gc_threshold,
        concurrent_endpoint_syncs: args.concurrent_endpoint_syncs.max(1),
        concurrent_service_endpoint_syncs: args.concurrent_service_endpoint_syncs.max(1),
        max_endpoints_per_slice: args.max_endpoints_per_slice.clamp(1, 1000),
        concurrent_resource_quota_syncs: args.concurrent_resource_quota_syncs.max(1),
        resource_quota_sync_period: args.resource_quota_sync_period,
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let source =
        skiff_client::config::resolve(args.kubeconfig.as_deref(), std::env::var_os("KUBECONFIG"));
    let result: Result<(), skiff_controllers::Error> = runtime.block_on(async move {
        let client = skiff_client::config::client(&source).await?;
        let registry = skiff_client::metrics::Registry::default();
        crate::component::spawn_health_server(
            args.bind_address,
            args.secure_port,
            acceptor,
            registry,
        )
        .await?;
        skiff_controllers::manager::run(client, config, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `--allocate-node-cidrs` needs `--cluster-cidr`, and the mask must fit it (checked here so
/// a bad value stops the start with one line, as kube-controller-manager's validation does).
fn node_cidrs(
    args: &ControllerManagerArgs,
) -> Result<Option<(skiff_controllers::nodeipam::plan::Cidr, u8)>, String> {
    use skiff_controllers::nodeipam::plan::{Cidr, CidrSet};
    if !args.allocate_node_cidrs {
        return Ok(None);
    }
    let Some(text) = &args.cluster_cidr else {
        return Err("--allocate-node-cidrs requires --cluster-cidr".into());
    };
    let cidr = Cidr::parse(text).map_err(|e| format!("--cluster-cidr: {e}"))?;
    CidrSet::new(cidr, args.node_cidr_mask_size)?;
    Ok(Some((cidr, args.node_cidr_mask_size)))
}
