//! Node IPAM (`--allocate-node-cidrs`): kube-controller-manager's range allocator. Every
//! Node without `spec.podCIDR` gets the next free `/--node-cidr-mask-size` subnet of
//! `--cluster-cidr` (written with the cached resourceVersion), subnets nodes already hold are
//! occupied first (all of them, from the synced cache, before any is handed out), and a
//! deleted node's subnet is freed. One worker: allocation is sequential by nature.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_client::events::{EventRecorder, EventType, NewEvent};

use crate::Error;
use crate::shell::{Key, Plumbing, SyncOutcome};
use plan::{Cidr, CidrSet};

/// The allocator's state: the subnets and which node holds which.
struct Allocations {
    set: CidrSet,
    by_node: HashMap<String, Cidr>,
}

struct Shell {
    client: kube::Client,
    nodes: Store<Node>,
    allocations: Mutex<Allocations>,
    recorder: EventRecorder,
}

/// Runs the range allocator over `cluster_cidr` cut into `/node_cidr_mask_size` subnets until
/// `shutdown`.
pub async fn run(
    client: kube::Client,
    cluster_cidr: Cidr,
    node_cidr_mask_size: u8,
    recorder: EventRecorder,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let set = CidrSet::new(cluster_cidr, node_cidr_mask_size).map_err(Error::Invalid)?;
    let mut plumbing = Plumbing::new("nodeipam");
    let store = plumbing.informer_of(Api::<Node>::all(client.clone()), |node| {
        vec![Key::new("", &node.name_any())]
    });
    let shell = Arc::new(Shell {
        client,
        nodes: store.clone(),
        allocations: Mutex::new(Allocations {
            set,
            by_node: HashMap::new(),
        }),
        recorder,
    });
    let started_shell = shell.clone();
    // Occupy what nodes hold (the synced cache) before handing anything out.
    let started = move |_: &_| {
        for node in store.state() {
            started_shell.occupy(&node);
        }
        tracing::info!(
            in_use = started_shell.lock().set.in_use(),
            "node ipam: occupied the subnets nodes hold"
        );
    };
    let sync = move |key: Key| {
        let shell = shell.clone();
        async move { shell.sync(&key.name).await }
    };
    plumbing
        .run(1, sync, started, std::future::pending(), shutdown)
        .await;
    Ok(())
}

/// A node's `spec.podCIDR`, parsed.
fn pod_cidr(node: &Node) -> Option<Cidr> {
    let text = node.spec.as_ref()?.pod_cidr.as_deref()?;
    Cidr::parse(text).ok()
}

impl Shell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Allocations> {
        self.allocations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the subnet a node holds (one outside the cluster CIDR is left alone).
    fn occupy(&self, node: &Node) {
        if let Some(cidr) = pod_cidr(node) {
            let mut allocations = self.lock();
            if allocations.set.occupy(&cidr) {
                allocations.by_node.insert(node.name_any(), cidr);
            }
        }
    }

    async fn sync(&self, name: &str) -> Result<SyncOutcome, Error> {
        let Some(node) = self.nodes.get(&ObjectRef::new(name)) else {
            let mut allocations = self.lock();
            if let Some(cidr) = allocations.by_node.remove(name) {
                allocations.set.release(&cidr);
                tracing::info!(node = name, %cidr, "released the deleted node's pod CIDR");
            }
            return Ok(SyncOutcome::Done);
        };
        if pod_cidr(&node).is_some() {
            self.occupy(&node);
            return Ok(SyncOutcome::Done);
        }
        let allocated = self.lock().set.allocate_next();
        let Some(cidr) = allocated else {
            self.event(
                &node,
                "CIDRNotAvailable",
                format!("Node {name} status is now: CIDRNotAvailable"),
            );
            return Err(Error::Invalid(format!("no pod CIDR left for node {name}")));
        };
        let patch = json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
        });
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                self.lock().by_node.insert(name.to_string(), cidr);
                tracing::info!(node = name, %cidr, "allocated a pod CIDR");
                Ok(SyncOutcome::Done)
            }
            Err(err) => {
                self.lock().set.release(&cidr);
                self.event(
                    &node,
                    "CIDRAssignmentFailed",
                    format!("Node {name} status is now: CIDRAssignmentFailed"),
                );
                Err(err.into())
            }
        }
    }

    fn event(&self, node: &Node, reason: &str, message: String) {
        self.recorder.record(NewEvent {
            object: ObjectReference {
                kind: Some("Node".into()),
                name: Some(node.name_any()),
                uid: node.uid(),
                api_version: Some("v1".into()),
                ..ObjectReference::default()
            },
            type_: EventType::Normal,
            reason: reason.to_string(),
            message,
            action: String::new(),
        });
    }
}
