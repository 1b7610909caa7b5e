//! kwok-style simulated nodes over the Kubernetes API: `run` registers N Nodes, renews their
//! Leases in `kube-node-lease` as kubelet does, keeps their Ready condition fresh, and moves the
//! pods bound to them through kubelet's status lifecycle (Pending → Running with a pod IP from
//! the node's subnet; deletion honoured: containers stopped, pod deleted with grace period 0).
//! Listing a node in the stop file makes it fall silent (no Lease, no status, no pod updates),
//! to test node failure without machines.
//!
//! Layout: `config` (what to simulate, limits), `ipam` (pod CIDR per node, pod IPs), `objects`
//! (the Node, Lease and pod statuses, pure), `plan` (which pods to act on, pure) — these do no
//! IO — and `kubeconfig` (the client), `nodes` (registration, Lease and status loops, stop file),
//! `pods` (one pod watch, a bounded queue, a bounded worker pool).
//!
//! Architecture invariant: talks to the API server only through kube-rs; never depends on the
//! store or the API server crates. Every write goes through one semaphore
//! (`--max-concurrent-writes`); no task per pod or per node.

pub mod config;
pub mod ipam;
pub mod kubeconfig;
pub(crate) mod nodes;
pub mod objects;
pub mod plan;
mod pods;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use k8s_openapi::jiff::Timestamp;
use tokio::sync::Semaphore;

pub use crate::config::{NodeSimConfig, TaintSpec};
pub use crate::ipam::PodCidr;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or configuration.
    #[error("{0}")]
    Config(String),
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// An API request failed for good (after retries).
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Runs the simulator until `shutdown` completes. Nodes and Leases stay behind: after a
/// shutdown the nodes go NotReady as their Leases expire, like a stopped kubelet.
pub async fn run(
    client: kube::Client,
    config: NodeSimConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let sim = Sim::new(client, config)?;
    tracing::info!(
        nodes = sim.nodes.len(),
        prefix = %sim.config.name_prefix,
        pod_cidr = %sim.config.pod_cidr,
        "registering simulated nodes"
    );
    tokio::select! {
        res = sim.serve() => res,
        () = shutdown => {
            tracing::info!("shutting down; Leases are no longer renewed");
            Ok(())
        }
    }
}

/// State shared by the simulator's loops.
struct Sim {
    client: kube::Client,
    config: NodeSimConfig,
    nodes: Vec<objects::SimNode>,
    /// Node name → index in `nodes`.
    index: BTreeMap<String, usize>,
    /// Per node: UID once registered, and since when it is Ready.
    node_state: Mutex<Vec<NodeState>>,
    /// Nodes listed in the stop file.
    stopped: Mutex<BTreeSet<String>>,
    /// Per node: its pods' addresses.
    ips: Mutex<Vec<ipam::NodeIps>>,
    /// `--max-concurrent-writes` permits; every API write holds one.
    writes: Semaphore,
}

#[derive(Debug, Clone)]
struct NodeState {
    uid: Option<String>,
    ready_since: Timestamp,
}

impl Sim {
    fn new(client: kube::Client, config: NodeSimConfig) -> Result<Sim, Error> {
        let subnets = config
            .pod_cidr
            .subnets(config.node_cidr_mask_size, config.nodes)?;
        let nodes: Vec<objects::SimNode> = subnets
            .iter()
            .enumerate()
            .map(|(i, subnet)| objects::SimNode {
                name: format!("{}{i}", config.name_prefix),
                zone: format!("zone-{}", i % config.zones),
                internal_ip: config::node_ip(i),
                pod_subnet: *subnet,
            })
            .collect();
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let now = Timestamp::now();
        Ok(Sim {
            client,
            writes: Semaphore::new(config.max_concurrent_writes),
            node_state: Mutex::new(vec![
                NodeState {
                    uid: None,
                    ready_since: now,
                };
                nodes.len()
            ]),
            stopped: Mutex::new(BTreeSet::new()),
            ips: Mutex::new(subnets.into_iter().map(ipam::NodeIps::new).collect()),
            config,
            nodes,
            index,
        })
    }

    async fn serve(&self) -> Result<(), Error> {
        self.read_stop_file();
        self.register_all().await?;
        tokio::select! {
            () = self.lease_loop() => Ok(()),
            () = self.status_loop() => Ok(()),
            () = self.stop_file_loop() => Ok(()),
            () = self.pod_loop() => Ok(()),
        }
    }

    fn is_stopped(&self, name: &str) -> bool {
        lock(&self.stopped).contains(name)
    }
}

impl Sim {
    /// Runs API write `op` holding a write permit, retrying transient failures (connection
    /// errors, 429, 5xx) with backoff up to `WRITE_ATTEMPTS_MAX` times.
    async fn write<T, F, Fut>(&self, what: impl Fn() -> String, op: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut backoff = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let res = {
                // Never closed: acquire fails only after `close`.
                let _permit = self.writes.acquire().await;
                op().await
            };
            match res {
                Ok(value) => return Ok(value),
                Err(err) if attempt < config::WRITE_ATTEMPTS_MAX && is_transient(&err) => {
                    tracing::debug!(what = %what(), attempt, error = %err, "write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(source) => {
                    return Err(Error::Api {
                        what: what(),
                        source,
                    });
                }
            }
        }
    }
}

/// Whether a failed request may succeed when repeated.
fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => true,
    }
}

/// The HTTP status code of an API error.
fn api_code(err: &Error) -> Option<u16> {
    match err {
        Error::Api {
            source: kube::Error::Api(status),
            ..
        } => Some(status.code),
        _ => None,
    }
}

/// Locks a mutex whose holder cannot leave it inconsistent (no panics inside).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
