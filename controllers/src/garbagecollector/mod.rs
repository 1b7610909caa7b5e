//! The garbage collector (kube-controller-manager's `garbagecollector`): dependents whose
//! owners are all gone are deleted, dangling owner references are removed, `Orphan` deletions
//! (the `orphan` finalizer) have their dependents' references removed and `Foreground` ones
//! (`foregroundDeletion`) wait for their blocking dependents to be deleted.
//!
//! `graph` is the pure part. This module is its IO shell: discovery every
//! [`DISCOVERY_INTERVAL`] finds every resource that supports list, watch and delete (CRDs
//! too); one watch per resource (whole objects — the API server does not serve
//! `PartialObjectMetadata` — of which only the metadata is kept) feeds the graph; the graph
//! names the objects to look at, which `workers` tasks take from a bounded, deduplicating,
//! rate-limited work queue. A worker reads the object live, verifies each owner the graph
//! does not hold with a live GET (so a lagging watch never deletes a live dependent), asks
//! [`graph::attempt`] what to do and does it: deletes carry the object's uid as a
//! precondition, patches its resourceVersion. A sweep every [`DISCOVERY_INTERVAL`] queues
//! again whatever still needs the collector, so a full queue only delays.

pub mod graph;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::ApiResource;
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use skiff_client::workqueue::WorkQueue;
use tokio::task::JoinHandle;

use self::graph::{Action, Graph, Node, OwnerRef, OwnerState, Propagation};
use crate::Error;

/// The most object uids waiting in the attempt-to-delete queue (ready plus backing off); adds
/// beyond it are dropped and counted, and the next sweep queues them again.
pub const ATTEMPT_TO_DELETE_QUEUE_MAX: usize = 100_000;
/// How often discovery runs again (new kinds, CRDs) and the graph is swept.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(30);
/// How often a failed first discovery is retried.
pub const DISCOVERY_RETRY: Duration = Duration::from_secs(2);
/// Owner uids verified absent that are remembered (uids are never reused), upstream's
/// `absentOwnerCache`; it is emptied when full.
pub const ABSENT_OWNER_CACHE_MAX: usize = 1024;
/// Consecutive failed passes over one object before they are logged as warnings.
const FAILURES_BEFORE_WARNING: u32 = 5;
/// Resources never watched, as upstream's default `ignoredResources`.
const IGNORED_RESOURCES: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

/// A watched kind: how to address it.
#[derive(Clone, Debug)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

/// What the watches, the workers and the discovery loop share.
struct Shared {
    client: kube::Client,
    graph: Mutex<Graph>,
    queue: WorkQueue<String>,
    /// `(group, kind)` → the watched resource.
    kinds: Mutex<HashMap<(String, String), Kind>>,
    /// `(namespace, uid)` of owners verified absent there.
    absent_owners: Mutex<HashSet<(String, String)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The group of an `apiVersion` (`apps/v1` → `apps`, `v1` → the core group).
fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

impl Shared {
    fn enqueue(&self, uids: Vec<String>) {
        for uid in uids {
            self.queue.add(uid);
        }
    }

    fn kind(&self, api_version: &str, kind: &str) -> Option<Kind> {
        lock(&self.kinds)
            .get(&(group_of(api_version).to_string(), kind.to_string()))
            .cloned()
    }

    fn api(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if kind.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &kind.resource)
            }
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }
}

/// Runs the garbage collector until `shutdown` completes, with `workers` concurrent passes
/// (`--concurrent-gc-syncs`).
pub async fn run(
    client: kube::Client,
    workers: usize,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), crate::Error> {
    let shared = Arc::new(Shared {
        client,
        graph: Mutex::new(Graph::new()),
        queue: WorkQueue::new(ATTEMPT_TO_DELETE_QUEUE_MAX),
        kinds: Mutex::new(HashMap::new()),
        absent_owners: Mutex::new(HashSet::new()),
    });
    let workers: Vec<JoinHandle<()>> = (0..workers.max(1))
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut watches: HashMap<String, JoinHandle<()>> = HashMap::new();
    tokio::pin!(shutdown);
    let mut discovered = false;
    loop {
        let refreshed = tokio::select! {
            _ = &mut shutdown => break,
            r = refresh(&shared, &mut watches) => r,
        };
        match refreshed {
            Ok(()) => discovered = true,
            Err(e) => tracing::warn!(error = %e, "garbage collector: discovery failed"),
        }
        if discovered {
            let uids = lock(&shared.graph).sweep();
            shared.enqueue(uids);
        }
        let wait = if discovered {
            DISCOVERY_INTERVAL
        } else {
            DISCOVERY_RETRY
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Stop at once: every write is conditional and idempotent, so a pass cut short is
    // simply done again by the next leader.
    shared.queue.shut_down();
    for task in watches.into_values().chain(workers) {
        task.abort();
        let _ = task.await;
    }
    Ok(())
}

/// Runs discovery; starts a watch for each new deletable resource and stops (and forgets
/// the objects of) those no longer served.
async fn refresh(
    shared: &Arc<Shared>,
    watches: &mut HashMap<String, JoinHandle<()>>,
) -> Result<(), Error> {
    let discovery = Discovery::new(shared.client.clone()).run().await?;
    let mut served: HashMap<String, Kind> = HashMap::new();
    let mut kinds = HashMap::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let deletable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v));
            let ignored = IGNORED_RESOURCES
                .iter()
                .any(|(g, r)| resource.group == *g && resource.plural == *r);
            if !deletable || ignored {
                continue;
            }
            let kind = Kind {
                namespaced: caps.scope == Scope::Namespaced,
                resource,
            };
            let source = format!("{}/{}", kind.resource.api_version, kind.resource.plural);
            kinds.insert(
                (kind.resource.group.clone(), kind.resource.kind.clone()),
                kind.clone(),
            );
            served.insert(source, kind);
        }
    }
    *lock(&shared.kinds) = kinds;
    let gone: Vec<String> = watches
        .keys()
        .filter(|source| !served.contains_key(*source))
        .cloned()
        .collect();
    for source in gone {
        if let Some(watch) = watches.remove(&source) {
            watch.abort();
        }
        let uids = lock(&shared.graph).retain_source(&source, &HashSet::new());
        shared.enqueue(uids);
    }
    for (source, kind) in served {
        if let std::collections::hash_map::Entry::Vacant(slot) = watches.entry(source) {
            tracing::debug!(source = %slot.key(), "garbage collector: watching");
            let task = tokio::spawn(watch(shared.clone(), kind, slot.key().clone()));
            slot.insert(task);
        }
    }
    Ok(())
}

/// The graph's view of one object.
fn node_of(obj: &DynamicObject, kind: &Kind, source: &str) -> Option<Node> {
    let meta = &obj.metadata;
    Some(Node {
        uid: meta.uid.clone()?,
        api_version: kind.resource.api_version.clone(),
        kind: kind.resource.kind.clone(),
        namespace: meta.namespace.clone().filter(|_| kind.namespaced),
        name: meta.name.clone()?,
        owners: meta
            .owner_references
            .iter()
            .flatten()
            .map(|r| OwnerRef {
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                name: r.name.clone(),
                uid: r.uid.clone(),
                block_owner_deletion: r.block_owner_deletion == Some(true),
            })
            .collect(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        source: source.to_string(),
    })
}

/// One resource's watch into the graph (relisting after errors with kube-runtime's backoff).
async fn watch(shared: Arc<Shared>, kind: Kind, source: String) {
    let api: Api<DynamicObject> = Api::all_with(shared.client.clone(), &kind.resource);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        let queued = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(HashSet::new());
                Vec::new()
            }
            Ok(watcher::Event::InitApply(obj)) => match node_of(&obj, &kind, &source) {
                Some(node) => {
                    if let Some(seen) = listing.as_mut() {
                        seen.insert(node.uid.clone());
                    }
                    lock(&shared.graph).upsert(node)
                }
                None => Vec::new(),
            },
            Ok(watcher::Event::InitDone) => {
                let seen = listing.take().unwrap_or_default();
                lock(&shared.graph).retain_source(&source, &seen)
            }
            Ok(watcher::Event::Apply(obj)) => match node_of(&obj, &kind, &source) {
                Some(node) => lock(&shared.graph).upsert(node),
                None => Vec::new(),
            },
            Ok(watcher::Event::Delete(obj)) => match obj.metadata.uid.as_deref() {
                Some(uid) => lock(&shared.graph).remove(uid),
                None => Vec::new(),
            },
            Err(e) => {
                tracing::debug!(%source, error = %e, "garbage collector: watch failed; retrying");
                Vec::new()
            }
        };
        shared.enqueue(queued);
    }
}

/// A worker: one pass per queued uid; a failed pass is retried with the queue's back-off.
async fn worker(shared: Arc<Shared>) {
    while let Some(uid) = shared.queue.get().await {
        match attempt(&shared, &uid).await {
            Ok(()) => shared.queue.forget(&uid),
            Err(e) => {
                let delay = shared.queue.add_rate_limited(uid.clone());
                // A lost race (409) is routine; a pass failing again and again is not.
                if shared.queue.failures(&uid) >= FAILURES_BEFORE_WARNING {
                    tracing::warn!(%uid, error = %e, ?delay, "garbage collector: pass failed");
                } else {
                    tracing::debug!(%uid, error = %e, ?delay, "garbage collector: pass failed");
                }
            }
        }
        shared.queue.done(&uid);
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// One pass over the object `uid` (upstream `attemptToDeleteItem` and friends).
async fn attempt(shared: &Shared, uid: &str) -> Result<(), Error> {
    let node = {
        let graph = lock(&shared.graph);
        match graph.get(uid) {
            // Queued when an owner was not seen yet, and it has arrived meanwhile (the initial
            // lists of several resources race): nothing to read.
            Some(node) if graph.wants_attention(uid) => node.clone(),
            _ => return Ok(()),
        }
    };
    let kind = shared.kind(&node.api_version, &node.kind).ok_or_else(|| {
        Error::Invalid(format!(
            "unable to resolve {} {}",
            node.api_version, node.kind
        ))
    })?;
    let api = shared.api(&kind, node.namespace.as_deref());
    let latest = match api.get_opt(&node.name).await? {
        Some(obj) if obj.metadata.uid.as_deref() == Some(uid) => obj,
        // Gone (or replaced) without the watch telling yet: forget it now.
        _ => {
            let queued = lock(&shared.graph).remove(uid);
            shared.enqueue(queued);
            return Ok(());
        }
    };
    let Some(item) = node_of(&latest, &kind, &node.source) else {
        return Ok(());
    };
    let mut owners = Vec::with_capacity(item.owners.len());
    if !item.deleting {
        for reference in &item.owners {
            owners.push(owner_state(shared, &item, kind.namespaced, reference).await?);
        }
    }
    let action = graph::attempt(&lock(&shared.graph), &item, &owners);
    if action != Action::Nothing {
        tracing::debug!(kind = %item.kind, name = %item.name, ?action, "garbage collector");
    }
    match action {
        Action::Nothing => Ok(()),
        Action::RemoveOwnerRefs(uids) => {
            patch_references(&api, &latest, |r| {
                (!uids.contains(&r.uid)).then(|| r.clone())
            })
            .await
        }
        Action::Delete(policy) => delete(&api, &item, policy).await,
        Action::UnblockThenDeleteForeground => {
            patch_references(&api, &latest, |r| {
                Some(OwnerReference {
                    block_owner_deletion: r.block_owner_deletion.map(|_| false),
                    ..r.clone()
                })
            })
            .await?;
            delete(&api, &item, Propagation::Foreground).await
        }
        Action::Orphan(dependents) => {
            for dependent in dependents {
                on_dependent(shared, &dependent, |r| {
                    (r.uid != item.uid).then(|| r.clone())
                })
                .await?;
            }
            remove_finalizer(&api, &latest, graph::FINALIZER_ORPHAN).await
        }
        Action::RemoveFinalizer(finalizer) => remove_finalizer(&api, &latest, finalizer).await,
        Action::Enqueue(uids) => {
            shared.enqueue(uids);
            Ok(())
        }
        Action::UnblockDependents(dependents) => {
            for dependent in dependents {
                on_dependent(shared, &dependent, |r| {
                    Some(if r.uid == item.uid {
                        OwnerReference {
                            block_owner_deletion: Some(false),
                            ..r.clone()
                        }
                    } else {
                        r.clone()
                    })
                })
                .await?;
            }
            Ok(())
        }
    }
}

/// Whether the owner `reference` of `item` exists (upstream `isDangling` and
/// `classifyReferences`): an owner the graph holds where the reference points is read from
/// the graph; any other is read live (by name, comparing the uid) before it counts as absent.
async fn owner_state(
    shared: &Shared,
    item: &Node,
    item_namespaced: bool,
    reference: &OwnerRef,
) -> Result<OwnerState, Error> {
    let kind = shared
        .kind(&reference.api_version, &reference.kind)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "unable to resolve owner {} {}",
                reference.api_version, reference.kind
            ))
        })?;
    if kind.namespaced && !item_namespaced {
        // A cluster-scoped object cannot have a namespaced owner; upstream leaves it alone.
        tracing::debug!(name = %item.name, owner = %reference.name,
                        "garbage collector: cluster-scoped object with a namespaced owner");
        return Ok(OwnerState::Solid);
    }
    let namespace = item.namespace.as_deref().filter(|_| kind.namespaced);
    // Absent where this reference points (upstream keys its cache by namespace too: a uid
    // looked for in the wrong namespace is absent there only).
    let absent_key = (namespace.unwrap_or("").to_string(), reference.uid.clone());
    if lock(&shared.absent_owners).contains(&absent_key) {
        return Ok(OwnerState::Absent);
    }
    let observed = lock(&shared.graph).get(&reference.uid).and_then(|owner| {
        (owner.name == reference.name && owner.namespace.as_deref() == namespace).then(|| {
            if owner.deleting_dependents() {
                OwnerState::WaitingForDependents
            } else {
                OwnerState::Solid
            }
        })
    });
    if let Some(state) = observed {
        return Ok(state);
    }
    let live = shared
        .api(&kind, namespace)
        .get_opt(&reference.name)
        .await?;
    match live {
        Some(owner) if owner.metadata.uid.as_deref() == Some(reference.uid.as_str()) => {
            let waiting = owner.metadata.deletion_timestamp.is_some()
                && owner
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == graph::FINALIZER_FOREGROUND);
            Ok(if waiting {
                OwnerState::WaitingForDependents
            } else {
                OwnerState::Solid
            })
        }
        _ => {
            let mut absent = lock(&shared.absent_owners);
            if absent.len() >= ABSENT_OWNER_CACHE_MAX {
                absent.clear();
            }
            absent.insert(absent_key);
            Ok(OwnerState::Absent)
        }
    }
}

/// `DELETE` with `policy` and the object's uid as a precondition; already gone is done.
async fn delete(api: &Api<DynamicObject>, item: &Node, policy: Propagation) -> Result<(), Error> {
    let params = DeleteParams {
        propagation_policy: Some(match policy {
            Propagation::Orphan => PropagationPolicy::Orphan,
            Propagation::Background => PropagationPolicy::Background,
            Propagation::Foreground => PropagationPolicy::Foreground,
        }),
        preconditions: Some(Preconditions {
            uid: Some(item.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&item.name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A JSON merge patch of `metadata` conditional on the object's resourceVersion.
async fn patch_meta(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    mut metadata: Value,
) -> Result<(), Error> {
    let (Some(name), Some(rv)) = (&obj.metadata.name, &obj.metadata.resource_version) else {
        return Ok(());
    };
    metadata["resourceVersion"] = json!(rv);
    let patch = json!({ "metadata": metadata });
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Rewrites `obj`'s ownerReferences through `keep` (`None` drops one); no write if nothing
/// changes.
async fn patch_references(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    keep: impl Fn(&OwnerReference) -> Option<OwnerReference>,
) -> Result<(), Error> {
    let current = obj.metadata.owner_references.clone().unwrap_or_default();
    let next: Vec<OwnerReference> = current.iter().filter_map(keep).collect();
    if next == current {
        return Ok(());
    }
    let refs = if next.is_empty() {
        Value::Null
    } else {
        serde_json::to_value(&next).map_err(|e| Error::Invalid(e.to_string()))?
    };
    patch_meta(api, obj, json!({ "ownerReferences": refs })).await
}

/// Reads the dependent `uid` (from the graph's address, live) and rewrites its references.
async fn on_dependent(
    shared: &Shared,
    uid: &str,
    keep: impl Fn(&OwnerReference) -> Option<OwnerReference>,
) -> Result<(), Error> {
    let Some(node) = lock(&shared.graph).get(uid).cloned() else {
        return Ok(());
    };
    let Some(kind) = shared.kind(&node.api_version, &node.kind) else {
        return Ok(());
    };
    let api = shared.api(&kind, node.namespace.as_deref());
    match api.get_opt(&node.name).await? {
        Some(obj) if obj.metadata.uid.as_deref() == Some(uid) => {
            patch_references(&api, &obj, keep).await
        }
        _ => Ok(()),
    }
}

/// Removes `finalizer` from `obj` (conditional on its resourceVersion; the API server deletes
/// an object being deleted once its last finalizer goes).
async fn remove_finalizer(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    finalizer: &str,
) -> Result<(), Error> {
    let current = obj.metadata.finalizers.clone().unwrap_or_default();
    if !current.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let kept: Vec<&String> = current.iter().filter(|f| *f != finalizer).collect();
    let finalizers = if kept.is_empty() {
        Value::Null
    } else {
        json!(kept)
    };
    patch_meta(api, obj, json!({ "finalizers": finalizers })).await
}

#[cfg(test)]
mod tests {
    /// The manager spawns [`super::run`]: its future must be `Send` and `'static`.
    #[allow(dead_code)]
    fn run_is_send(client: kube::Client) {
        fn spawnable<T: Send + 'static>(_: T) {}
        spawnable(super::run(client, 1, std::future::pending()));
    }
}
