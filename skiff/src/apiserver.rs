//! `skiff apiserver`: kube-apiserver's flags mapped onto `skiff_apiserver::ApiServerConfig`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::{EXIT_USAGE, shutdown_signal};

/// `skiff apiserver` flags, with kube-apiserver's names; mapped onto `ApiServerConfig`.
#[derive(Args)]
pub(crate) struct ApiserverArgs {
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
    /// Admission plugins to enable besides the default-on ones (comma-separated; they run in
    /// kube-apiserver's order whatever the order given).
    #[arg(long, value_delimiter = ',')]
    enable_admission_plugins: Vec<String>,
    /// Default-on admission plugins to disable (comma-separated).
    #[arg(long, value_delimiter = ',')]
    disable_admission_plugins: Vec<String>,
    /// Serve lists and watches from a watch cache per resource (one store watch each);
    /// `--watch-cache=false` sends every list and watch to the store.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    watch_cache: bool,
    /// The client certificate presented to kubelets (node agents) for pods/log, exec, attach
    /// and portforward (PEM; with --kubelet-client-key).
    #[arg(long)]
    kubelet_client_certificate: Option<PathBuf>,
    /// The key of --kubelet-client-certificate (PEM).
    #[arg(long)]
    kubelet_client_key: Option<PathBuf>,
    /// Verify kubelets' serving certificates with this CA (PEM); without it they are not
    /// verified, as kube-apiserver does by default.
    #[arg(long)]
    kubelet_certificate_authority: Option<PathBuf>,
    /// Bound on connecting to a kubelet and on the response headers of non-streaming
    /// requests to it.
    #[arg(long, default_value = "5s", value_parser = skiff_apiserver::server::parse_duration)]
    kubelet_timeout: std::time::Duration,
    /// The Node address types to reach a kubelet at, first match wins (comma-separated).
    /// InternalIP comes first by default (kube-apiserver: Hostname first) because skiff's
    /// agents and simulated nodes report their node name as Hostname, which need not resolve.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP"
    )]
    kubelet_preferred_address_types: Vec<String>,
    /// The ClusterIPs Services get (an IPv4 CIDR); its first address is the `kubernetes`
    /// Service's.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cluster_ip_range: String,
    /// The NodePorts Services of type NodePort and LoadBalancer get (`from-to`, inclusive).
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// The address the `kubernetes` Service's Endpoints list for this server (default:
    /// --bind-address, or 127.0.0.1 when that is 0.0.0.0).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

pub(crate) fn run(args: ApiserverArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        enable_admission_plugins: args.enable_admission_plugins,
        disable_admission_plugins: args.disable_admission_plugins,
        watch_cache: args.watch_cache,
        kubelet_client_certificate: args.kubelet_client_certificate,
        kubelet_client_key: args.kubelet_client_key,
        kubelet_certificate_authority: args.kubelet_certificate_authority,
        kubelet_timeout: args.kubelet_timeout,
        kubelet_preferred_address_types: args.kubelet_preferred_address_types,
        service_cluster_ip_range: args.service_cluster_ip_range,
        service_node_port_range: args.service_node_port_range,
        advertise_address: args.advertise_address,
    };
    if let Err(err) = config.validate() {
        eprintln!("skiff: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
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
