//! The Endpoints controller (kube-controller-manager's `endpoint` controller): every Service
//! with a selector gets an Endpoints object of the same name listing the ready and not-ready
//! addresses of the pods it selects, per resolved port. The IO shell: informers on Services,
//! pods and Endpoints feed a work queue of Service keys (a pod queues the Services of its
//! namespace that select it or whose Endpoints name it; every Service is queued again each
//! [`RESYNC_PERIOD`]); each worker turns one key into a [`plan`] over the caches and writes
//! the Endpoints only when they changed, against the cached resourceVersion. A deleted
//! Service's Endpoints are deleted.

pub mod plan;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use skiff_client::events::{EventRecorder, EventType, NewEvent};
use skiff_client::workqueue::WorkQueue;

use self::plan::{EndpointsChange, LEADER_ELECTION_ANNOTATION, TriggerTimeTracker};
use crate::Error;
use crate::replicaset::controller::reference_to;
use crate::shell::{Key, Plumbing, SyncOutcome, api_code, resync_every};

/// How often every Service is queued again (level-triggered safety net).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(300);
/// How long a sync waits when the cache does not show the controller's last write yet.
pub const STALE_CACHE_RETRY: Duration = Duration::from_millis(100);
/// How long a sync waits when a create found the object already there (the cache lags).
pub const ALREADY_EXISTS_RETRY: Duration = Duration::from_secs(1);

/// Locks a mutex, taking the data of a poisoned one (a panicking worker leaves plain data).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The resourceVersions of Endpoints this controller replaced (upstream
/// `staleEndpointsTracker`): while the cache still shows one, it is out of date.
#[derive(Debug, Default)]
struct StaleEndpoints {
    replaced: HashMap<Key, String>,
}

impl StaleEndpoints {
    fn replaced(&mut self, key: &Key, old_version: Option<String>) {
        if let Some(version) = old_version {
            self.replaced.insert(key.clone(), version);
        }
    }

    fn is_stale(&self, key: &Key, cached: &Endpoints) -> bool {
        match (
            self.replaced.get(key),
            cached.metadata.resource_version.as_ref(),
        ) {
            (Some(replaced), Some(cached)) => replaced == cached,
            _ => false,
        }
    }

    fn forget(&mut self, key: &Key) {
        self.replaced.remove(key);
    }
}

/// What the workers share.
struct Shell {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    trigger_times: Mutex<TriggerTimeTracker>,
    stale: Mutex<StaleEndpoints>,
    recorder: EventRecorder,
}

/// Runs the Endpoints controller with `workers` concurrent syncs
/// (`--concurrent-endpoint-syncs`) until `shutdown`.
pub async fn run(
    client: kube::Client,
    workers: usize,
    recorder: EventRecorder,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut plumbing = Plumbing::new("endpoint");
    let service_store = plumbing.informer_of(Api::<Service>::all(client.clone()), |service| {
        vec![Key::of(service)]
    });
    // Upstream queues a Service when its Endpoints are deleted (someone else's delete is
    // undone).
    let endpoints_store =
        plumbing.informer(Api::<Endpoints>::all(client.clone()), |event, queue| {
            if let watcher::Event::Delete(endpoints) = event {
                queue.add(Key::of(&endpoints));
            }
        });
    let (pod_services, pod_endpoints) = (service_store.clone(), endpoints_store.clone());
    let pod_store = plumbing.informer_of(Api::<Pod>::all(client.clone()), move |pod| {
        services_for_pod(pod, &pod_services, &pod_endpoints)
    });
    let shell = Arc::new(Shell {
        client,
        services: service_store.clone(),
        pods: pod_store,
        endpoints: endpoints_store.clone(),
        trigger_times: Mutex::new(TriggerTimeTracker::default()),
        stale: Mutex::new(StaleEndpoints::default()),
        recorder,
    });
    // Upstream's checkLeftoverEndpoints: Endpoints whose Service is gone are deleted.
    let leftovers = move |queue: &WorkQueue<Key>| {
        for endpoints in endpoints_store.state() {
            let leader_record = endpoints
                .annotations()
                .contains_key(LEADER_ELECTION_ANNOTATION);
            if !leader_record {
                queue.add(Key::of(endpoints.as_ref()));
            }
        }
    };
    let resync = resync_every(RESYNC_PERIOD, service_store, plumbing.queue());
    let sync = move |key: Key| {
        let shell = shell.clone();
        async move { shell.sync(&key).await }
    };
    plumbing
        .run(workers, sync, leftovers, resync, shutdown)
        .await;
    Ok(())
}

/// The Services a pod event concerns: those of its namespace whose selector matches it now,
/// and those whose Endpoints name it (it may have stopped matching).
fn services_for_pod(
    pod: &Pod,
    services: &Store<Service>,
    endpoints: &Store<Endpoints>,
) -> Vec<Key> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let mut keys: BTreeSet<Key> = services
        .state()
        .iter()
        .filter(|s| plan::service_selects(s, pod))
        .map(|s| Key::of(s.as_ref()))
        .collect();
    for ep in endpoints.state() {
        if ep.namespace().as_deref() != Some(namespace.as_str()) {
            continue;
        }
        let names_pod = ep.subsets.iter().flatten().any(|subset| {
            subset
                .addresses
                .iter()
                .flatten()
                .chain(subset.not_ready_addresses.iter().flatten())
                .any(|a| {
                    a.target_ref.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some("Pod") && r.name.as_deref() == Some(&name)
                    })
                })
        });
        if names_pod {
            keys.insert(Key::of(ep.as_ref()));
        }
    }
    keys.into_iter().collect()
}

/// Whether a refused create says the namespace is being terminated (creates there keep
/// failing: the key is dropped).
pub(crate) fn namespace_terminating(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => {
            status.code == 403 && status.message.contains("because it is being terminated")
        }
        _ => false,
    }
}

impl Shell {
    /// One sync of one Service key.
    async fn sync(&self, key: &Key) -> Result<SyncOutcome, Error> {
        let api = Api::<Endpoints>::namespaced(self.client.clone(), &key.namespace);
        let Some(service) = self
            .services
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            // The Service is gone: so are its Endpoints.
            lock(&self.trigger_times).forget(key);
            lock(&self.stale).forget(key);
            return match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => Ok(SyncOutcome::Done),
                Err(err) if api_code(&err) == Some(404) => Ok(SyncOutcome::Done),
                Err(err) => Err(err.into()),
            };
        };
        if plan::managed_selector(&service).is_none() {
            return Ok(SyncOutcome::Done);
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|pod| plan::service_selects(&service, pod))
            .collect();
        let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let trigger_time = lock(&self.trigger_times).compute(key, &service, &pods);
        let current = self
            .endpoints
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        if let Some(current) = current.as_deref()
            && lock(&self.stale).is_stale(key, current)
        {
            tracing::debug!(%key, "endpoints cache is out of date; waiting");
            return Ok(SyncOutcome::After(STALE_CACHE_RETRY));
        }
        match plan::plan(&service, &pods, current.as_deref(), trigger_time) {
            EndpointsChange::Unchanged => Ok(SyncOutcome::Done),
            EndpointsChange::Create(endpoints) => {
                match api.create(&PostParams::default(), &endpoints).await {
                    Ok(_) => Ok(SyncOutcome::Done),
                    // The cache has not seen it yet; look again when it has.
                    Err(err) if api_code(&err) == Some(409) => {
                        Ok(SyncOutcome::After(ALREADY_EXISTS_RETRY))
                    }
                    Err(err) if namespace_terminating(&err) => Ok(SyncOutcome::Done),
                    Err(err) => {
                        self.event(
                            &endpoints,
                            "FailedToCreateEndpoint",
                            format!("Failed to create endpoint for service {key}: {err}"),
                        );
                        Err(err.into())
                    }
                }
            }
            EndpointsChange::Update(endpoints) => {
                let old_version = endpoints.metadata.resource_version.clone();
                match api
                    .replace(&key.name, &PostParams::default(), &endpoints)
                    .await
                {
                    Ok(updated) => {
                        if updated.metadata.resource_version != old_version {
                            lock(&self.stale).replaced(key, old_version);
                        }
                        Ok(SyncOutcome::Done)
                    }
                    Err(err) => {
                        if api_code(&err) != Some(409) {
                            self.event(
                                &endpoints,
                                "FailedToUpdateEndpoint",
                                format!("Failed to update endpoint {key}: {err}"),
                            );
                        }
                        Err(err.into())
                    }
                }
            }
        }
    }

    fn event(&self, endpoints: &Endpoints, reason: &str, message: String) {
        self.recorder.record(NewEvent {
            object: reference_to(endpoints),
            type_: EventType::Warning,
            reason: reason.to_string(),
            message,
            action: String::new(),
        });
    }
}
