//! The EndpointSlice controller (kube-controller-manager's `endpointslice` controller): every
//! Service with a selector gets `discovery.k8s.io/v1` EndpointSlices (at most
//! `--max-endpoints-per-slice` endpoints each, one group per address type and per resolved
//! port mapping) owned by the Service, so the garbage collector removes them with it. The IO
//! shell: informers on Services, pods, this controller's slices and Nodes (zones) feed a work
//! queue of Service keys; each worker runs the [`reconciler`] over the caches and applies its
//! creates, updates (against the cached resourceVersion) and deletes, with a [`SliceTracker`]
//! holding a Service back while the cache does not show the controller's own writes yet.

pub mod plan;
pub mod reconciler;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use skiff_client::events::{EventRecorder, EventType, NewEvent};
use skiff_client::workqueue::WorkQueue;

use self::plan::{
    CONTROLLER_NAME, MANAGED_BY_LABEL, NodeLookup, SERVICE_NAME_LABEL, SliceTracker, ZONE_LABEL,
    managed_by_us, service_key_of,
};
use self::reconciler::SlicePlan;
use crate::Error;
use crate::endpoints::plan::{
    TriggerTimeTracker, managed_selector, pod_node_name, service_selects,
};
use crate::endpoints::{RESYNC_PERIOD, STALE_CACHE_RETRY, lock, namespace_terminating};
use crate::replicaset::controller::reference_to;
use crate::shell::{Key, Plumbing, SyncOutcome, api_code, resync_every};

/// How long a Service waits before it is synced again because a pod's Node was missing.
pub const MISSING_NODE_RETRY: Duration = Duration::from_secs(5);

/// What the workers share.
struct Shell {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    max_endpoints_per_slice: usize,
    trigger_times: Mutex<TriggerTimeTracker>,
    tracker: Arc<Mutex<SliceTracker>>,
    recorder: EventRecorder,
}

/// Runs the EndpointSlice controller with `workers` concurrent syncs
/// (`--concurrent-service-endpoint-syncs`) and at most `max_endpoints_per_slice` endpoints
/// per slice (`--max-endpoints-per-slice`) until `shutdown`.
pub async fn run(
    client: kube::Client,
    workers: usize,
    max_endpoints_per_slice: usize,
    recorder: EventRecorder,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut plumbing = Plumbing::new("endpointslice");
    let service_store = plumbing.informer_of(Api::<Service>::all(client.clone()), |service| {
        vec![Key::of(service)]
    });
    let tracker = Arc::new(Mutex::new(SliceTracker::default()));
    let slice_tracker = tracker.clone();
    let slice_store = plumbing.informer_with(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={CONTROLLER_NAME}")),
        move |event, queue| {
            let (slice, deleted) = match event {
                watcher::Event::Apply(slice) => (slice, false),
                watcher::Event::Delete(slice) => (slice, true),
                // The startup sync queues every Service anyway.
                _ => return,
            };
            if !managed_by_us(&slice) {
                return;
            }
            let Some(key) = service_key_of(&slice) else {
                return;
            };
            let news = if deleted {
                lock(&slice_tracker).observed_deletion(&key, &slice.name_any())
            } else {
                lock(&slice_tracker).should_sync(&key, &slice)
            };
            if news {
                queue.add(key);
            }
        },
    );
    let (pod_services, pod_slices) = (service_store.clone(), slice_store.clone());
    let pod_store = plumbing.informer_of(Api::<Pod>::all(client.clone()), move |pod| {
        services_for_pod(pod, &pod_services, &pod_slices)
    });
    let (node_pods, node_services) = (pod_store.clone(), service_store.clone());
    // The zone each node had when last seen: a zone that changes (or a node that comes or
    // goes) changes the endpoints of the pods on it.
    let mut zones: HashMap<String, Option<String>> = HashMap::new();
    let node_store = plumbing.informer(Api::<Node>::all(client.clone()), move |event, queue| {
        let (node, gone, initial) = match event {
            watcher::Event::Apply(node) => (node, false, false),
            watcher::Event::InitApply(node) => (node, false, true),
            watcher::Event::Delete(node) => (node, true, false),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let name = node.name_any();
        let zone = node.labels().get(ZONE_LABEL).cloned();
        let changed = if gone {
            zones.remove(&name).is_some()
        } else {
            zones.insert(name.clone(), zone.clone()) != Some(zone)
        };
        if !changed || initial {
            return;
        }
        for key in services_on_node(&name, &node_pods, &node_services) {
            queue.add(key);
        }
    });
    let shell = Arc::new(Shell {
        client,
        services: service_store.clone(),
        pods: pod_store,
        slices: slice_store,
        nodes: node_store,
        max_endpoints_per_slice: max_endpoints_per_slice.max(1),
        trigger_times: Mutex::new(TriggerTimeTracker::default()),
        tracker,
        recorder,
    });
    let services = service_store.clone();
    let every_service = move |queue: &WorkQueue<Key>| {
        tracing::info!(
            max_endpoints_per_slice,
            "endpointslice controller: syncing every Service"
        );
        for service in services.state() {
            queue.add(Key::of(service.as_ref()));
        }
    };
    let resync = resync_every(RESYNC_PERIOD, service_store, plumbing.queue());
    let sync = move |key: Key| {
        let shell = shell.clone();
        async move { shell.sync(&key).await }
    };
    plumbing
        .run(workers, sync, every_service, resync, shutdown)
        .await;
    Ok(())
}

/// The Services a pod event concerns: those of its namespace whose selector matches it now,
/// and those whose slices name it (it may have stopped matching).
fn services_for_pod(
    pod: &Pod,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
) -> Vec<Key> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let mut keys: BTreeSet<Key> = services
        .state()
        .iter()
        .filter(|s| service_selects(s, pod))
        .map(|s| Key::of(s.as_ref()))
        .collect();
    for slice in slices.state() {
        if slice.namespace().as_deref() != Some(namespace.as_str()) {
            continue;
        }
        let names_pod = slice.endpoints.iter().any(|e| {
            e.target_ref.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Pod") && r.name.as_deref() == Some(name.as_str())
            })
        });
        if names_pod && let Some(key) = service_key_of(&slice) {
            keys.insert(key);
        }
    }
    keys.into_iter().collect()
}

/// The Services selecting pods bound to `node`.
fn services_on_node(node: &str, pods: &Store<Pod>, services: &Store<Service>) -> Vec<Key> {
    let services = services.state();
    let mut keys = BTreeSet::new();
    for pod in pods.state() {
        if pod_node_name(&pod) != Some(node) {
            continue;
        }
        for service in services.iter().filter(|s| service_selects(s, &pod)) {
            keys.insert(Key::of(service.as_ref()));
        }
    }
    keys.into_iter().collect()
}

impl Shell {
    /// One sync of one Service key.
    async fn sync(&self, key: &Key) -> Result<SyncOutcome, Error> {
        let Some(service) = self
            .services
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            // The Service is gone; the garbage collector deletes its slices (they are owned).
            lock(&self.trigger_times).forget(key);
            lock(&self.tracker).forget(key);
            return Ok(SyncOutcome::Done);
        };
        if managed_selector(&service).is_none() {
            return Ok(SyncOutcome::Done);
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|pod| service_selects(&service, pod))
            .collect();
        let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let slices: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| s.namespace().as_deref() == Some(key.namespace.as_str()))
            .filter(|s| s.labels().get(SERVICE_NAME_LABEL) == Some(&key.name) && managed_by_us(s))
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect();
        let slices: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        if lock(&self.tracker).is_stale(key, &slices, Instant::now()) {
            tracing::debug!(%key, "endpointslice cache is out of date; waiting");
            return Ok(SyncOutcome::After(STALE_CACHE_RETRY));
        }
        let trigger_time = lock(&self.trigger_times).compute(key, &service, &pods);
        let node = |name: &str| match self.nodes.get(&ObjectRef::new(name)) {
            Some(node) => NodeLookup::Found {
                zone: node
                    .labels()
                    .get(ZONE_LABEL)
                    .filter(|z| !z.is_empty())
                    .cloned(),
            },
            None => NodeLookup::Missing,
        };
        let plan = reconciler::reconcile(
            &service,
            &pods,
            &slices,
            &node,
            self.max_endpoints_per_slice,
            trigger_time,
        );
        if let Err(err) = self.apply(key, &plan).await {
            if api_code(&err) != Some(409) {
                self.event(
                    &service,
                    "FailedToUpdateEndpointSlices",
                    format!("Error updating Endpoint Slices for Service {key}: {err}"),
                );
            }
            return Err(err.into());
        }
        if !plan.missing_nodes.is_empty() {
            tracing::info!(
                %key,
                nodes = ?plan.missing_nodes,
                "pods on nodes not found were left out; syncing again"
            );
            return Ok(SyncOutcome::After(MISSING_NODE_RETRY));
        }
        Ok(SyncOutcome::Done)
    }

    /// Creates, updates, then deletes; the first failure stops it (a namespace being
    /// terminated drops the creates silently).
    async fn apply(&self, key: &Key, plan: &SlicePlan) -> Result<(), kube::Error> {
        let api = Api::<EndpointSlice>::namespaced(self.client.clone(), &key.namespace);
        let params = PostParams::default();
        for slice in &plan.create {
            match api.create(&params, slice).await {
                Ok(created) => lock(&self.tracker).wrote(key, &created, Instant::now()),
                Err(err) if namespace_terminating(&err) => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        for slice in &plan.update {
            let name = slice.name_any();
            let updated = api.replace(&name, &params, slice).await?;
            lock(&self.tracker).wrote(key, &updated, Instant::now());
        }
        for slice in &plan.delete {
            let name = slice.name_any();
            let params = DeleteParams {
                preconditions: slice.uid().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => lock(&self.tracker).deleted(key, &name, Instant::now()),
                Err(err) if matches!(api_code(&err), Some(404)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn event(&self, service: &Service, reason: &str, message: String) {
        self.recorder.record(NewEvent {
            object: reference_to(service),
            type_: EventType::Warning,
            reason: reason.to_string(),
            message,
            action: String::new(),
        });
    }
}
