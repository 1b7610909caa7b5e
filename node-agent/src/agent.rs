//! `run(client, config, shutdown)`: the node agent as a library function. It registers the
//! node, keeps its Lease and status, watches the pods bound to it and gives each its own
//! worker; at start it re-adopts what an earlier agent left and removes what belongs to no
//! pod any more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cgroups::Cgroups;
use crate::image::gc::{self, DiskUsage, GcPolicy};
use crate::image::{ImageStore, RegistryConfig};
use crate::network::{NetworkConfig, PodNetwork};
use crate::node::{self, NodeFacts, Pressure};
use crate::pod::worker::{PodEnv, PodWorker};
use crate::runtime::RuncRuntime;

/// The agent's settings (kubelet's flags).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// Persistent state: images, pod volumes, container bundles (`/var/lib/skiff/agent`).
    pub root_dir: PathBuf,
    /// `/var/log/pods`.
    pub pod_logs_dir: PathBuf,
    /// The node's pod subnet; else the Node's `spec.podCIDR` (waited for).
    pub pod_cidr: Option<String>,
    pub cluster_dns: Vec<Ipv4Addr>,
    pub cluster_domain: String,
    pub max_pods: u32,
    pub node_labels: BTreeMap<String, String>,
    pub register_with_taints: Vec<Taint>,
    pub port: u16,
    /// kubelet's `--cgroup-root`.
    pub cgroup_root: String,
    pub cni_bin_dir: PathBuf,
    pub cni_bridge: String,
    pub runc: PathBuf,
    pub shim: PathBuf,
    pub registries: RegistryConfig,
    /// CrashLoopBackOff's first delay and cap.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The HTTPS API (kubelet's `--address`:`--port`: logs, exec); `None` serves nothing.
    pub server: Option<ServerSettings>,
    /// Image garbage collection thresholds.
    pub image_gc: GcPolicy,
    /// Keep routes to the other nodes' pod subnets via their InternalIPs
    /// (`crate::network::routes`).
    pub pod_routes: bool,
    /// Enforce NetworkPolicies on this node's pods (`crate::network::policy`).
    pub network_policy: bool,
}

/// The agent's HTTPS API settings.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub address: std::net::SocketAddr,
    /// The serving certificate (`--tls-cert-file`/`--tls-private-key-file`, else self-signed).
    pub cert: skiff_client::tls::ServingCert,
    /// Only clients with a certificate signed by this CA may read logs or exec
    /// (`--client-ca-file`; the API server's `--kubelet-client-certificate`).
    pub client_ca: Option<PathBuf>,
}

impl AgentConfig {
    /// Volatile state: runc's root, exit files, CNI state (`<root-dir>/run`).
    pub fn run_dir(&self) -> PathBuf {
        self.root_dir.join("run")
    }
}

/// Agent failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Setup(String),
    #[error("api: {0}")]
    Api(#[from] kube::Error),
}

/// Runs the agent until `shutdown` resolves. Running containers are left running (a new
/// agent re-adopts them), as kubelet leaves them.
pub async fn run(
    client: kube::Client,
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run_dir = config.run_dir();
    for dir in [&config.root_dir, &run_dir, &config.pod_logs_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::Setup(format!("creating {}: {e}", dir.display())))?;
    }
    let runtime_dir = run_dir.join("runtime");
    let runtime = RuncRuntime::new(
        config.runc.clone(),
        runtime_dir.clone(),
        config.shim.clone(),
    );
    let runtime_version = runtime.version().await.map_err(|e| {
        AgentError::Setup(format!(
            "runc is not usable ({}): {e}",
            config.runc.display()
        ))
    })?;
    let images = ImageStore::open(&config.root_dir.join("images"), config.registries.clone())
        .map_err(|e| AgentError::Setup(format!("image store: {e}")))?;

    let (cpus, memory_bytes, ephemeral_storage_bytes) = NodeFacts::machine(&config.root_dir);
    let mut facts = NodeFacts {
        name: config.node_name.clone(),
        ip: config.node_ip,
        labels: config.node_labels.clone(),
        taints: config.register_with_taints.clone(),
        pod_cidr: config.pod_cidr.clone(),
        max_pods: config.max_pods,
        port: config.port,
        runtime_version,
        cpus,
        memory_bytes,
        ephemeral_storage_bytes,
    };
    let registered = node::register(&client, &facts).await?;
    tracing::info!(node = %config.node_name, "node registered");
    let node_uid = registered.metadata.uid.clone();
    let pod_cidr = match facts
        .pod_cidr
        .clone()
        .or_else(|| registered.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
    {
        Some(cidr) => cidr,
        None => wait_for_pod_cidr(&client, &config.node_name).await?,
    };
    facts.pod_cidr = Some(pod_cidr.clone());
    let network = PodNetwork::new(NetworkConfig {
        pod_cidr: pod_cidr.clone(),
        bridge: config.cni_bridge.clone(),
        cni_bin_dir: config.cni_bin_dir.clone(),
        state_dir: run_dir.join("cni"),
        netns_prefix: "skiff-".into(),
    })
    .map_err(|e| AgentError::Setup(format!("pod network: {e}")))?;

    let metrics = crate::pod::metrics::AgentMetrics::default();
    let server_task = match &config.server {
        Some(settings) => {
            let acceptor = crate::server::acceptor(&settings.cert, settings.client_ca.as_deref())
                .map_err(|e| AgentError::Setup(format!("serving certificate: {e}")))?;
            let listener = tokio::net::TcpListener::bind(settings.address)
                .await
                .map_err(|e| AgentError::Setup(format!("listen on {}: {e}", settings.address)))?;
            tracing::info!(address = %settings.address, "serving the node API (logs, exec) over HTTPS");
            let mut server_config =
                crate::server::ServerConfig::new(config.pod_logs_dir.clone(), runtime.clone());
            server_config.metrics = Some(metrics.registry.clone());
            Some(tokio::spawn(async move {
                if let Err(e) =
                    crate::server::serve(server_config, listener, acceptor, std::future::pending())
                        .await
                {
                    tracing::warn!(error = %e, "the node API stopped");
                }
            }))
        }
        None => None,
    };
    let status_task = tokio::spawn(keep_node(
        client.clone(),
        facts.clone(),
        node_uid,
        config.root_dir.clone(),
    ));
    let host_resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let env = Arc::new(PodEnv {
        client: client.clone(),
        node_name: config.node_name.clone(),
        node_ip: config.node_ip,
        runtime,
        runtime_dir,
        images,
        network,
        cgroups: Cgroups::new(&config.cgroup_root),
        pods_dir: config.root_dir.join("pods"),
        containers_dir: config.root_dir.join("containers"),
        logs_dir: config.pod_logs_dir.clone(),
        cluster_dns: config.cluster_dns.clone(),
        cluster_domain: config.cluster_domain.clone(),
        host_resolv_conf,
        backoff_initial: config.backoff_initial,
        backoff_max: config.backoff_max,
        events: skiff_client::events::EventRecorder::start(
            client.clone(),
            "kubelet",
            &config.node_name,
        ),
        metrics: metrics.clone(),
    });
    let pods_task = tokio::spawn(watch_pods(env, config.image_gc));
    let routes_task = config
        .pod_routes
        .then(|| tokio::spawn(keep_routes(client.clone(), config.node_name.clone())));
    let policy_task = config.network_policy.then(|| {
        tokio::spawn(keep_network_policies(
            client.clone(),
            config.node_name.clone(),
        ))
    });
    shutdown.await;
    if let Some(task) = policy_task {
        task.abort();
    }
    if let Some(task) = routes_task {
        task.abort();
    }
    tracing::info!("node agent stopping; containers keep running");
    status_task.abort();
    pods_task.abort();
    if let Some(task) = server_task {
        task.abort();
    }
    Ok(())
}

/// How often the routes are checked even when no Node changed (someone may delete one).
const ROUTE_RESYNC: Duration = Duration::from_secs(30);

/// Keeps a route to every other node's pod subnet (`crate::network::routes`), after each
/// Node change and every [`ROUTE_RESYNC`].
async fn keep_routes(client: kube::Client, me: String) {
    let (nodes, mut events, _task) = skiff_client::informer::reflect(
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(client),
        kube::runtime::watcher::Config::default(),
    );
    let mut ready = false;
    let mut resync = tokio::time::interval(ROUTE_RESYNC);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(kube::runtime::watcher::Event::InitDone) => ready = true,
                Some(_) => {}
                None => return,
            },
            _ = resync.tick() => {}
        }
        if !ready {
            continue;
        }
        let listed = nodes.state();
        let refs: Vec<&k8s_openapi::api::core::v1::Node> =
            listed.iter().map(|n| n.as_ref()).collect();
        let desired = crate::network::routes::desired(&refs, &me);
        let plan = tokio::task::spawn_blocking(move || {
            let current = crate::network::routes::current()?;
            let (add, remove) = crate::network::routes::plan(&desired, &current);
            let errors = crate::network::routes::apply(&add, &remove);
            Ok::<_, String>((add, remove, errors))
        })
        .await;
        match plan {
            Ok(Ok((add, remove, errors))) => {
                for r in &add {
                    tracing::info!(cidr = %r.cidr, via = %r.via, "route to a node's pods");
                }
                for r in &remove {
                    tracing::info!(cidr = %r.cidr, "route to a node's pods removed");
                }
                for e in errors {
                    tracing::warn!(error = %e, "pod route");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reading pod routes"),
            Err(e) => tracing::warn!(error = %e, "pod route task"),
        }
    }
}

/// Keeps the NetworkPolicy rules of this node's pods (`crate::network::policy`) in step
/// with policies, pods and namespaces; nothing is installed while no policy isolates a pod
/// here, and everything goes when none does any more.
async fn keep_network_policies(client: kube::Client, me: String) {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use kube::runtime::watcher::{Config, Event};
    let (policies, mut policy_events, _p) = skiff_client::informer::reflect(
        kube::Api::<NetworkPolicy>::all(client.clone()),
        Config::default(),
    );
    let (pods, mut pod_events, _o) =
        skiff_client::informer::reflect(kube::Api::<Pod>::all(client.clone()), Config::default());
    let (namespaces, mut namespace_events, _n) =
        skiff_client::informer::reflect(kube::Api::<Namespace>::all(client), Config::default());
    let mut ready = [false; 3];
    let mut previous = std::collections::BTreeSet::new();
    loop {
        // Which informer spoke, and whether it finished its first list (None: it ended).
        let (which, init_done) = tokio::select! {
            e = policy_events.recv() => (0, e.map(|e| matches!(e, Event::InitDone))),
            e = pod_events.recv() => (1, e.map(|e| matches!(e, Event::InitDone))),
            e = namespace_events.recv() => (2, e.map(|e| matches!(e, Event::InitDone))),
        };
        match init_done {
            Some(true) => ready[which] = true,
            Some(false) => {}
            None => return,
        }
        if !ready.iter().all(|r| *r) {
            continue;
        }
        // Changes often come in bursts (a rollout): one pass for what queued meanwhile.
        tokio::time::sleep(POLICY_BATCH_DELAY).await;
        while policy_events.try_recv().is_ok()
            || pod_events.try_recv().is_ok()
            || namespace_events.try_recv().is_ok()
        {}
        let policy_list = policies.state();
        let pod_list = pods.state();
        let namespace_list = namespaces.state();
        let me = me.clone();
        let (text, written) = crate::network::policy::render(
            &policy_list.iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
            &pod_list.iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
            &namespace_list
                .iter()
                .map(|n| n.as_ref())
                .collect::<Vec<_>>(),
            &move |p: &Pod| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(me.as_str())
            },
            &previous,
        );
        if text.is_empty() {
            continue;
        }
        let stale = previous.clone();
        let result = tokio::task::spawn_blocking(move || {
            if written.is_empty() {
                crate::network::policy::cleanup(&stale).map(|_| written)
            } else {
                crate::network::policy::apply(&text).map(|_| written)
            }
        })
        .await;
        match result {
            Ok(Ok(written)) => {
                tracing::debug!(chains = written.len(), "network policy rules synced");
                previous = written;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "network policy rules"),
            Err(e) => tracing::warn!(error = %e, "network policy task"),
        }
    }
}

/// How long the policy loop waits for more changes before one pass.
const POLICY_BATCH_DELAY: Duration = Duration::from_millis(100);

async fn wait_for_pod_cidr(client: &kube::Client, name: &str) -> Result<String, AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        if let Some(cidr) = nodes.get(name).await?.spec.and_then(|s| s.pod_cidr) {
            return Ok(cidr);
        }
        tracing::info!(node = %name, "waiting for the node's podCIDR (pass --pod-cidr or run the node IPAM controller)");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Renews the Lease every 10 s; writes the status every minute or when pressure changes.
async fn keep_node(
    client: kube::Client,
    facts: NodeFacts,
    node_uid: Option<String>,
    root_dir: PathBuf,
) {
    let mut transitions: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut last_pressure: Option<Pressure> = None;
    let mut last_status_at: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(node::LEASE_RENEW_INTERVAL);
    loop {
        tick.tick().await;
        if let Err(e) = node::renew_lease(&client, &facts.name, node_uid.as_deref()).await {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        let pressure = Pressure::read(&root_dir);
        let due = last_status_at.is_none_or(|t| t.elapsed() >= node::STATUS_REPORT_INTERVAL);
        if last_pressure == Some(pressure) && !due {
            continue;
        }
        let now = Timestamp::now();
        for (name, now_on, before) in [
            (
                "MemoryPressure",
                pressure.memory,
                last_pressure.map(|p| p.memory),
            ),
            ("DiskPressure", pressure.disk, last_pressure.map(|p| p.disk)),
            ("PIDPressure", pressure.pid, last_pressure.map(|p| p.pid)),
        ] {
            if before != Some(now_on) {
                transitions.insert(name.to_string(), now);
            }
        }
        transitions.entry("Ready".to_string()).or_insert(now);
        let status = node::status(&facts, pressure, &transitions, now);
        match node::write_status(&client, &facts.name, &status).await {
            Ok(()) => {
                last_pressure = Some(pressure);
                last_status_at = Some(std::time::Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "writing the node status"),
        }
    }
}

/// Most pod workers at once (kubelet's `--max-pods` bounds this in practice).
pub const MAX_POD_WORKERS: usize = 1024;

struct WorkerHandle {
    pod: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// How often the image filesystem is checked (kubelet's `ImageGCPeriod`).
pub const IMAGE_GC_PERIOD: Duration = Duration::from_secs(300);

/// Watches this node's pods and routes each version to its worker; every
/// [`IMAGE_GC_PERIOD`] collects unused images when the disk is full enough.
async fn watch_pods(env: Arc<PodEnv>, image_gc: GcPolicy) {
    let mut gc_tick = tokio::time::interval(IMAGE_GC_PERIOD);
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unused_since: BTreeMap<String, Timestamp> = BTreeMap::new();
    let api: Api<Pod> = Api::all(env.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", env.node_name));
    let mut stream = watcher(api, config).boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut relist: Option<HashSet<String>> = None;
    let mut cleaned = false;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = gc_tick.tick() => {
                collect_images(&env, &workers, &mut unused_since, &image_gc).await;
                continue;
            }
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            None => return,
        };
        workers.retain(|_, w| !w.task.is_finished());
        match event {
            watcher::Event::Init => relist = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                if let Some(seen) = relist.as_mut()
                    && let Some(uid) = &pod.metadata.uid
                {
                    seen.insert(uid.clone());
                }
                route(&env, &mut workers, pod);
            }
            watcher::Event::Delete(pod) => {
                if let Some(w) = pod.metadata.uid.as_ref().and_then(|uid| workers.get(uid)) {
                    let _ = w.pod.send(None);
                }
            }
            watcher::Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                for (uid, w) in &workers {
                    if !seen.contains(uid) {
                        let _ = w.pod.send(None);
                    }
                }
                if !cleaned {
                    cleaned = true;
                    remove_orphans(&env, &seen).await;
                }
            }
        }
    }
}

/// One image GC round: which images pods here use, since when the others are unused, and
/// the removals `gc::plan` asks for (an image a container still runs from is refused by the
/// store and stays).
async fn collect_images(
    env: &Arc<PodEnv>,
    workers: &HashMap<String, WorkerHandle>,
    unused_since: &mut BTreeMap<String, Timestamp>,
    policy: &GcPolicy,
) {
    let mut in_use = std::collections::BTreeSet::new();
    for w in workers.values() {
        let pod = w.pod.borrow().clone();
        for container in pod.iter().flat_map(crate::pod::plan::all_containers) {
            let image = container.image.as_deref().unwrap_or_default();
            if let Ok(Some(record)) = env.images.lookup(image) {
                in_use.insert(record.digest);
            }
        }
    }
    let images = match env.images.list() {
        Ok(images) => images,
        Err(e) => {
            tracing::warn!(error = %e, "image GC: listing images");
            return;
        }
    };
    let now = Timestamp::now();
    unused_since
        .retain(|digest, _| images.iter().any(|i| &i.digest == digest) && !in_use.contains(digest));
    for image in &images {
        if !in_use.contains(&image.digest) {
            unused_since.entry(image.digest.clone()).or_insert(now);
        }
    }
    let Some(disk) = crate::node::disk_usage(env.images.root()) else {
        return;
    };
    let disk = DiskUsage {
        used_bytes: disk.0,
        capacity_bytes: disk.1,
    };
    for digest in gc::plan(disk, &images, &in_use, unused_since, policy, now) {
        match env.images.remove(&digest) {
            Ok(()) => {
                tracing::info!(%digest, "image GC removed an unused image");
                unused_since.remove(&digest);
            }
            Err(e) => tracing::warn!(%digest, error = %e, "image GC could not remove an image"),
        }
    }
}

fn route(env: &Arc<PodEnv>, workers: &mut HashMap<String, WorkerHandle>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(w) = workers.get(&uid) {
        let _ = w.pod.send(Some(pod));
        return;
    }
    if workers.len() >= MAX_POD_WORKERS {
        tracing::warn!(%uid, "too many pod workers; pod ignored until others finish");
        return;
    }
    let (tx, rx) = watch::channel(Some(pod));
    let task = tokio::spawn(PodWorker::run(env.clone(), uid.clone(), rx));
    workers.insert(uid, WorkerHandle { pod: tx, task });
}

/// Removes containers and sandboxes of pods that no longer exist on this node.
async fn remove_orphans(env: &Arc<PodEnv>, pods: &HashSet<String>) {
    match env.runtime.list().await {
        Ok(containers) => {
            for c in containers {
                let uid = c.id.split('_').next().unwrap_or_default();
                if pods.contains(uid) {
                    continue;
                }
                tracing::info!(id = %c.id, "removing a container of a pod that is gone");
                let _ = env.runtime.stop(&c.id, Duration::from_secs(10)).await;
                let _ = env.runtime.remove(&c.id).await;
                let bundle = env.containers_dir.join(&c.id);
                let _ = crate::image::unmount_rootfs(&bundle.join("rootfs"));
                let _ = std::fs::remove_dir_all(&bundle);
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing containers"),
    }
    for sandbox in env.network.checkpoints() {
        if !pods.contains(&sandbox.sandbox_id) {
            tracing::info!(sandbox = %sandbox.sandbox_id, "removing the network of a pod that is gone");
            let _ = env.network.teardown(&sandbox.sandbox_id).await;
        }
    }
}
