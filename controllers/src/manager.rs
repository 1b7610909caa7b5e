//! The controller manager: which controllers run (`--controllers`, kube-controller-manager's
//! syntax), leader election on the `kube-controller-manager` Lease (controllers start only
//! once it is held; losing it ends `run` with an error, so the process exits as upstream's
//! does and a deposed manager writes nothing more), and shutdown.

use std::collections::BTreeSet;
use std::future::Future;

use futures::FutureExt;
use futures::future::BoxFuture;
use skiff_client::events::EventRecorder;
use skiff_client::leader::{LeaderElectionConfig, LeaderElector};
use tokio::sync::watch;

use crate::Error;

/// The controllers this manager knows, all on by default.
pub const CONTROLLERS: &[&str] = &[
    "deployment",
    "endpoint",
    "endpointslice",
    "garbagecollector",
    "nodeipam",
    "nodelifecycle",
    "persistentvolume-binder",
    "podgc",
    "replicaset",
    "resourcequota",
    "serviceaccount",
];

/// What the manager runs with.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The controllers to run (names from [`CONTROLLERS`]).
    pub controllers: BTreeSet<&'static str>,
    /// Leader election (`--leader-elect`); `None` acts at once, alone.
    pub leader_election: Option<LeaderElectionConfig>,
    /// `reportingInstance` of Events.
    pub identity: String,
    /// `--concurrent-deployment-syncs`.
    pub concurrent_deployment_syncs: usize,
    /// `--concurrent-replicaset-syncs`.
    pub concurrent_replicaset_syncs: usize,
    /// `--concurrent-gc-syncs`.
    pub concurrent_gc_syncs: usize,
    /// `--allocate-node-cidrs` with `--cluster-cidr` and `--node-cidr-mask-size`: node IPAM
    /// hands out pod CIDRs (`None`: it does not).
    pub node_cidrs: Option<(crate::nodeipam::plan::Cidr, u8)>,
    /// The node lifecycle controller's grace periods and eviction rates.
    pub node_lifecycle: crate::nodelifecycle::NodeLifecycleSettings,
    /// `--terminated-pod-gc-threshold` (0 = keep every terminated pod).
    pub terminated_pod_gc_threshold: u32,
    /// `--concurrent-endpoint-syncs`.
    pub concurrent_endpoint_syncs: usize,
    /// `--concurrent-service-endpoint-syncs` (EndpointSlices).
    pub concurrent_service_endpoint_syncs: usize,
    /// `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
    /// `--concurrent-resource-quota-syncs`.
    pub concurrent_resource_quota_syncs: usize,
    /// `--resource-quota-sync-period`.
    pub resource_quota_sync_period: std::time::Duration,
}

/// PersistentVolume and claim syncs at once (upstream runs one worker for each; claims of
/// different namespaces need not wait for each other).
const VOLUME_WORKERS: usize = 4;
/// Namespaces whose `default` ServiceAccount is checked at once.
const SERVICE_ACCOUNT_WORKERS: usize = 2;

/// kube-controller-manager's `--controllers`: `*` turns on every controller that is on by
/// default, `name` turns one on, `-name` turns one off.
pub fn select_controllers(flags: &[String]) -> Result<BTreeSet<&'static str>, Error> {
    let mut on = BTreeSet::new();
    let mut off = BTreeSet::new();
    let mut star = false;
    for flag in flags.iter().flat_map(|f| f.split(',')).map(str::trim) {
        if flag == "*" {
            star = true;
            continue;
        }
        let (disable, name) = match flag.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, flag),
        };
        let Some(known) = CONTROLLERS.iter().find(|c| **c == name) else {
            return Err(Error::Invalid(format!(
                "{name:?} is not in the list of known controllers"
            )));
        };
        if disable {
            off.insert(*known);
        } else {
            on.insert(*known);
        }
    }
    if star {
        on.extend(CONTROLLERS.iter().copied());
    }
    Ok(on.difference(&off).copied().collect())
}

/// Runs the selected controllers until `shutdown` (then `Ok`), or until leadership is lost
/// or a controller fails (then `Err`).
pub async fn run(
    client: kube::Client,
    config: ManagerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let (leader_tx, mut leader_rx) = watch::channel(config.leader_election.is_none());
    let mut elector = match config.leader_election.clone() {
        Some(le) => {
            let elector = LeaderElector::new(client.clone(), le)?;
            tokio::spawn(elector.run(leader_tx, stopped())).boxed()
        }
        None => futures::future::pending().boxed(),
    };
    tokio::pin!(shutdown);
    // Wait for the Lease.
    loop {
        if *leader_rx.borrow() {
            break;
        }
        tokio::select! {
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                return Ok(());
            }
            result = &mut elector => return elector_ended(result),
            _ = leader_rx.changed() => {}
        }
    }
    let mut controllers: Vec<BoxFuture<'static, Result<(), Error>>> = Vec::new();
    for name in &config.controllers {
        let client = client.clone();
        let stop = stopped();
        let recorder =
            |component: &str| EventRecorder::start(client.clone(), component, &config.identity);
        let controller = match *name {
            "deployment" => crate::deployment::controller::run(
                client.clone(),
                config.concurrent_deployment_syncs,
                recorder("deployment-controller"),
                stop,
            )
            .boxed(),
            "replicaset" => crate::replicaset::controller::run(
                client.clone(),
                config.concurrent_replicaset_syncs,
                recorder("replicaset-controller"),
                stop,
            )
            .boxed(),
            "nodeipam" => match config.node_cidrs {
                Some((cluster_cidr, mask)) => crate::nodeipam::run(
                    client.clone(),
                    cluster_cidr,
                    mask,
                    recorder("node-ipam-controller"),
                    stop,
                )
                .boxed(),
                None => {
                    tracing::info!("node ipam: --allocate-node-cidrs is false, nothing to do");
                    stop.map(Ok).boxed()
                }
            },
            "endpoint" => crate::endpoints::run(
                client.clone(),
                config.concurrent_endpoint_syncs,
                recorder("endpoint-controller"),
                stop,
            )
            .boxed(),
            "endpointslice" => crate::endpointslice::run(
                client.clone(),
                config.concurrent_service_endpoint_syncs,
                config.max_endpoints_per_slice,
                recorder("endpointslice-controller"),
                stop,
            )
            .boxed(),
            "nodelifecycle" => crate::nodelifecycle::run(
                client.clone(),
                config.node_lifecycle.clone(),
                recorder("node-controller"),
                stop,
            )
            .boxed(),
            "persistentvolume-binder" => crate::volume::run(
                client.clone(),
                VOLUME_WORKERS,
                recorder("persistentvolume-controller"),
                stop,
            )
            .boxed(),
            "podgc" => {
                crate::podgc::run(client.clone(), config.terminated_pod_gc_threshold, stop).boxed()
            }
            "resourcequota" => crate::resourcequota::run(
                client.clone(),
                config.concurrent_resource_quota_syncs,
                config.resource_quota_sync_period,
                stop,
            )
            .boxed(),
            "serviceaccount" => {
                crate::serviceaccount::run(client.clone(), SERVICE_ACCOUNT_WORKERS, stop).boxed()
            }
            "garbagecollector" => {
                crate::garbagecollector::run(client.clone(), config.concurrent_gc_syncs, stop)
                    .boxed()
            }
            other => return Err(Error::Invalid(format!("unknown controller {other}"))),
        };
        tracing::info!(controller = %name, "started controller");
        controllers.push(tokio::spawn(controller).map(flatten_join).boxed());
    }
    let any_ended = futures::future::select_all(controllers);
    let mut elector_finished = false;
    let outcome = tokio::select! {
        _ = &mut shutdown => Ok(()),
        result = &mut elector => {
            elector_finished = true;
            elector_ended(result)
        }
        (result, _, _) = any_ended => match result {
            Ok(()) => Err(Error::Invalid("a controller stopped unexpectedly".into())),
            Err(err) => Err(err),
        },
    };
    let _ = stop_tx.send(true);
    if !elector_finished {
        // Let the elector release the Lease, briefly.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), elector).await;
    }
    outcome
}

fn flatten_join(joined: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    joined.unwrap_or_else(|e| Err(Error::Invalid(format!("controller task: {e}"))))
}

fn elector_ended(
    result: Result<Result<(), skiff_client::Error>, tokio::task::JoinError>,
) -> Result<(), Error> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.into()),
        Err(join) => Err(Error::Invalid(format!("leader election task: {join}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(flags: &[&str]) -> Result<Vec<&'static str>, Error> {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        select_controllers(&flags).map(|set| set.into_iter().collect())
    }

    #[test]
    fn controllers_flag_as_upstream() {
        assert_eq!(select(&["*"]).unwrap(), CONTROLLERS.to_vec());
        let all_but_gc: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| *c != "garbagecollector")
            .collect();
        assert_eq!(select(&["*", "-garbagecollector"]).unwrap(), all_but_gc);
        assert_eq!(select(&["replicaset"]).unwrap(), vec!["replicaset"]);
        assert_eq!(
            select(&["deployment,replicaset,-deployment"]).unwrap(),
            vec!["replicaset"]
        );
        let err = select(&["nosuch"]).unwrap_err().to_string();
        assert_eq!(err, "\"nosuch\" is not in the list of known controllers");
    }
}
