//! `skiff node-agent` (kubelet's flags, mapped onto `skiff_node_agent::agent::AgentConfig`)
//! and `skiff images` (the node's image store offline: import, list, rm).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Taint;
use skiff_node_agent::agent::{AgentConfig, AgentError, ServerSettings};
use skiff_node_agent::image::{ImageStore, RegistryConfig};

use crate::cli::{EXIT_USAGE, parse_duration, shutdown_signal};

/// Default `--root-dir`.
const DEFAULT_ROOT_DIR: &str = "/var/lib/skiff/agent";

/// `skiff node-agent` flags.
#[derive(Args)]
pub(crate) struct NodeAgentArgs {
    /// Kubeconfig of the API server (default: `KUBECONFIG`, else in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's name (default: the machine's hostname).
    #[arg(long)]
    hostname_override: Option<String>,
    /// The node's IP address, reported as InternalIP (default: the address of the interface
    /// holding the default route, else 127.0.0.1).
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// Where images, pod volumes and container bundles live.
    #[arg(long, default_value = DEFAULT_ROOT_DIR)]
    root_dir: PathBuf,
    /// Where container logs go (`<dir>/<namespace>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    pod_logs_dir: PathBuf,
    /// The node's pod subnet (default: the Node's spec.podCIDR, set by the node IPAM controller).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Cluster DNS server addresses written into pods' resolv.conf (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Most pods this node runs.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Labels added to the Node at registration, `key=value` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Taints the Node registers with, `key=value:Effect` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    register_with_taints: Vec<String>,
    /// The agent's HTTPS port (logs, exec; reported in the Node's daemonEndpoints); 0 serves
    /// nothing.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// The address the HTTPS port binds.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
    /// PEM serving certificate of the HTTPS port (default: a self-signed one, in memory).
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// Only clients with a certificate signed by this CA (the API server's
    /// --kubelet-client-certificate) may read logs or exec; without it nobody may.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Root of the pod cgroup hierarchy (`<root>/kubepods/...`).
    #[arg(long, default_value = "/")]
    cgroup_root: String,
    /// Directory of the CNI plugin binaries.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// The Linux bridge pods attach to.
    #[arg(long, default_value = "cni0")]
    cni_bridge: String,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// The per-container shim (default: `skiff-shim` next to this binary, else on PATH).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Registries reached over plain HTTP, `host:port` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    insecure_registry: Vec<String>,
    /// Registry mirrors, `registry=endpoint` (e.g. `docker.io=http://127.0.0.1:5000`),
    /// comma-separated, tried in order before the registry itself.
    #[arg(long, value_delimiter = ',')]
    registry_mirror: Vec<String>,
    /// k3s's registries.yaml (mirrors, insecure hosts), merged with the two flags above.
    #[arg(long)]
    private_registry: Option<PathBuf>,
    /// Disk usage (percent) of the image store's filesystem above which unused images are
    /// removed.
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Image GC removes until usage is under this percentage.
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// An unused image is kept at least this long.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    minimum_image_ttl_duration: Duration,
    /// CrashLoopBackOff's first delay (kubelet's 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    crash_loop_backoff_initial: Duration,
    /// CrashLoopBackOff's cap (kubelet's 300s).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    crash_loop_backoff_max: Duration,
    /// Route the other nodes' pod subnets via their InternalIPs (flannel's host-gw; the nodes
    /// must share a link). `--pod-routes=false` leaves routing to something else.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    pod_routes: bool,
    /// Enforce NetworkPolicies on this node's pods (k3s's embedded policy controller);
    /// `--network-policy=false` leaves them to something else.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = crate::cli::parse_go_bool)]
    network_policy: bool,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
}

fn parse_taint(value: &str) -> Result<Taint, String> {
    let bad = |why: &str| format!("--register-with-taints {value:?}: {why} (key=value:Effect)");
    let (kv, effect) = value.rsplit_once(':').ok_or_else(|| bad("no effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(bad(
            "effect must be NoSchedule, PreferNoSchedule or NoExecute",
        ));
    }
    let (key, v) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    Ok(Taint {
        key: key.into(),
        value: v,
        effect: effect.into(),
        time_added: None,
    })
}

/// The IPv4 address the default route leaves from (no packet is sent: a UDP socket is only
/// connected to learn the source address).
fn default_node_ip() -> Ipv4Addr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    match probe {
        Ok(std::net::SocketAddr::V4(addr)) if !addr.ip().is_unspecified() => *addr.ip(),
        _ => Ipv4Addr::LOCALHOST,
    }
}

fn default_shim() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("skiff-shim")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("skiff-shim"))
}

fn registries(insecure: Vec<String>, mirrors: &[String]) -> Result<RegistryConfig, String> {
    let mut config = RegistryConfig {
        insecure,
        mirrors: BTreeMap::new(),
    };
    for mirror in mirrors {
        let (registry, endpoint) = mirror
            .split_once('=')
            .ok_or_else(|| format!("--registry-mirror {mirror:?}: expected registry=endpoint"))?;
        config
            .mirrors
            .entry(registry.to_string())
            .or_default()
            .push(endpoint.to_string());
    }
    Ok(config)
}

pub(crate) fn run(args: NodeAgentArgs) -> ExitCode {
    crate::component::init_logging(&args.log_level);
    let node_name = match args.hostname_override.clone() {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let mut node_labels = BTreeMap::new();
    for label in &args.node_labels {
        let Some((k, v)) = label.split_once('=') else {
            eprintln!("skiff: --node-labels {label:?}: expected key=value");
            return ExitCode::from(EXIT_USAGE);
        };
        node_labels.insert(k.to_string(), v.to_string());
    }
    let taints: Result<Vec<Taint>, String> = args
        .register_with_taints
        .iter()
        .map(|t| parse_taint(t))
        .collect();
    let taints = match taints {
        Ok(t) => t,
        Err(e) => {
            eprintln!("skiff: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut registries = match registries(args.insecure_registry.clone(), &args.registry_mirror) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(path) = &args.private_registry {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| RegistryConfig::from_registries_yaml(&text));
        match parsed {
            Ok(file) => registries.merge(file),
            Err(e) => {
                eprintln!("skiff: --private-registry {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let node_ip = args.node_ip.unwrap_or_else(default_node_ip);
    let server = if args.port == 0 {
        None
    } else {
        let serving = skiff_client::tls::ServingCertOptions {
            cert_file: args.tls_cert_file.clone(),
            key_file: args.tls_private_key_file.clone(),
            cert_dir: None,
            pair_name: "kubelet".into(),
            bind_address: Some(std::net::IpAddr::V4(node_ip)),
        };
        match serving.load() {
            Ok(cert) => Some(ServerSettings {
                address: std::net::SocketAddr::new(args.address, args.port),
                cert,
                client_ca: args.client_ca_file.clone(),
            }),
            Err(e) => {
                eprintln!("skiff: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    let image_gc = skiff_node_agent::image::gc::GcPolicy {
        high_percent: args.image_gc_high_threshold,
        low_percent: args.image_gc_low_threshold,
        min_age: args.minimum_image_ttl_duration,
    };
    if let Err(e) = image_gc.validate() {
        eprintln!("skiff: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let config = AgentConfig {
        node_name,
        node_ip,
        root_dir: args.root_dir,
        pod_logs_dir: args.pod_logs_dir,
        pod_cidr: args.pod_cidr,
        cluster_dns: args.cluster_dns,
        cluster_domain: args.cluster_domain,
        max_pods: args.max_pods,
        node_labels,
        register_with_taints: taints,
        port: args.port,
        cgroup_root: args.cgroup_root,
        cni_bin_dir: args.cni_bin_dir,
        cni_bridge: args.cni_bridge,
        runc: args.runc,
        shim: args.shim.unwrap_or_else(default_shim),
        registries,
        backoff_initial: args.crash_loop_backoff_initial,
        backoff_max: args.crash_loop_backoff_max,
        server,
        image_gc,
        pod_routes: args.pod_routes,
        network_policy: args.network_policy,
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let kubeconfig = args.kubeconfig;
    let res = runtime.block_on(async move {
        let source =
            skiff_client::config::resolve(kubeconfig.as_deref(), std::env::var_os("KUBECONFIG"));
        let client = skiff_client::config::client(&source)
            .await
            .map_err(|e| AgentError::Setup(e.to_string()))?;
        skiff_node_agent::agent::run(client, config, shutdown_signal()).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `skiff images`: the node agent's image store, offline (air-gapped nodes).
#[derive(Subcommand)]
pub(crate) enum ImagesCommand {
    /// Import images from an OCI layout (directory or tar) or a `docker save` tar.
    Import {
        /// The file or directory to import.
        file: PathBuf,
        /// The node agent's --root-dir.
        #[arg(long, default_value = DEFAULT_ROOT_DIR)]
        root_dir: PathBuf,
    },
    /// List the images in the store.
    #[command(alias = "ls")]
    List {
        #[arg(long, default_value = DEFAULT_ROOT_DIR)]
        root_dir: PathBuf,
    },
    /// Remove an image name; its layers go when no image uses them.
    Rm {
        /// Image references.
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(long, default_value = DEFAULT_ROOT_DIR)]
        root_dir: PathBuf,
    },
}

impl ImagesCommand {
    pub(crate) fn run(self) -> ExitCode {
        let open =
            |root: &PathBuf| ImageStore::open(&root.join("images"), RegistryConfig::default());
        let result: Result<(), String> = match self {
            ImagesCommand::Import { file, root_dir } => open(&root_dir)
                .and_then(|store| store.import(&file))
                .map(|records| {
                    for r in records {
                        println!("imported {} {}", r.references.join(","), r.digest);
                    }
                })
                .map_err(|e| e.to_string()),
            ImagesCommand::List { root_dir } => open(&root_dir)
                .and_then(|s| s.list())
                .map(|records| {
                    println!("{:<60} {:<20} {:>10}", "IMAGE", "DIGEST", "SIZE");
                    for r in records {
                        let digest: String = r
                            .digest
                            .trim_start_matches("sha256:")
                            .chars()
                            .take(12)
                            .collect();
                        for name in &r.references {
                            println!("{name:<60} {digest:<20} {:>10}", human_size(r.size));
                        }
                    }
                })
                .map_err(|e| e.to_string()),
            ImagesCommand::Rm { images, root_dir } => open(&root_dir)
                .and_then(|store| {
                    for image in &images {
                        store.remove(image)?;
                        println!("deleted {image}");
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("skiff: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}
