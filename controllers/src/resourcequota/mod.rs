//! The ResourceQuota controller (kube-controller-manager's `resourcequota`): keeps every
//! quota's `status.hard` equal to `spec.hard` and its `status.used` true by recounting the
//! namespace's objects ([`usage`] counts, [`plan`] decides). The API server's quota admission
//! charges creates; this controller gives usage back when objects go away and corrects any
//! drift.
//!
//! The IO shell: informers on quotas, pods, services, config maps, secrets and persistent
//! volume claims feed a work queue of quota keys. A quota is synced when it appears, when its
//! spec changes or its status lacks what its spec asks (its own status writes do not queue it
//! again), when an object it measures is deleted or changes its usage (a pod turning
//! terminal, a service changing type — creates are the admission's), when a counted pod's
//! grace period runs out, and every `resync_period` (`--resource-quota-sync-period`) for
//! everything. Kinds without an informer (`count/deployments.apps`, `replicationcontrollers`,
//! …) are listed from the API at each sync, found through discovery. The status is written
//! only when it differs, with the quota's resourceVersion: a write that lost a race to the
//! admission's charge (409) is retried after a back-off.

pub mod plan;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaSpec, Secret, Service,
};
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use kube::discovery::Scope;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use skiff_client::workqueue::WorkQueue;

use self::plan::{Observed, quota_measures};
use self::usage::{
    GroupResource, Measured, ResourceAmounts, claim_usage, pod_usage, service_usage,
};
use crate::Error;
use crate::shell::{Key, Plumbing, SyncOutcome, api_code, resync_every};

/// Objects asked for per page when a kind without an informer is counted.
const COUNT_PAGE_SIZE: u32 = 500;

/// What the workers share.
struct Shell {
    client: kube::Client,
    quotas: Store<ResourceQuota>,
    pods: Store<Pod>,
    services: Store<Service>,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    claims: Store<PersistentVolumeClaim>,
    /// Kinds found through discovery, by group and resource (found ones only: a kind that
    /// appears later, a new CRD, is looked up again).
    discovered: Mutex<HashMap<GroupResource, ApiResource>>,
}

/// Runs the ResourceQuota controller with `workers` concurrent syncs
/// (`--concurrent-resource-quota-syncs`) and a full recount every `resync_period`
/// (`--resource-quota-sync-period`; zero turns the periodic recount off) until `shutdown`.
pub async fn run(
    client: kube::Client,
    workers: usize,
    resync_period: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut plumbing = Plumbing::new("resourcequota");
    // The spec each quota had when last seen: status-only updates (ours, the admission's
    // charges) do not queue a recount.
    let mut specs: HashMap<Key, Option<ResourceQuotaSpec>> = HashMap::new();
    let quota_store = plumbing.informer(
        Api::<ResourceQuota>::all(client.clone()),
        move |event, queue| match event {
            watcher::Event::Apply(quota) | watcher::Event::InitApply(quota) => {
                let key = Key::of(&quota);
                let spec_changed = specs.get(&key) != Some(&quota.spec);
                if spec_changed || status_incomplete(&quota) {
                    queue.add(key.clone());
                }
                specs.insert(key, quota.spec.clone());
            }
            watcher::Event::Delete(quota) => {
                specs.remove(&Key::of(&quota));
            }
            watcher::Event::Init => specs.clear(),
            watcher::Event::InitDone => {}
        },
    );
    let pod_store = plumbing.informer(
        Api::<Pod>::all(client.clone()),
        route_changes(quota_store.clone(), Measured::Pods, |pod: &Pod| {
            pod_usage(pod, skiff_client::now_timestamp())
        }),
    );
    let service_store = plumbing.informer(
        Api::<Service>::all(client.clone()),
        route_changes(quota_store.clone(), Measured::Services, service_usage),
    );
    let config_map_store = plumbing.informer(
        Api::<ConfigMap>::all(client.clone()),
        route_changes(
            quota_store.clone(),
            Measured::Objects(GroupResource::core("configmaps")),
            |_: &ConfigMap| ResourceAmounts::new(),
        ),
    );
    let secret_store = plumbing.informer(
        Api::<Secret>::all(client.clone()),
        route_changes(
            quota_store.clone(),
            Measured::Objects(GroupResource::core("secrets")),
            |_: &Secret| ResourceAmounts::new(),
        ),
    );
    let claim_store = plumbing.informer(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        route_changes(
            quota_store.clone(),
            Measured::PersistentVolumeClaims,
            claim_usage,
        ),
    );
    let shell = Arc::new(Shell {
        client,
        quotas: quota_store.clone(),
        pods: pod_store,
        services: service_store,
        config_maps: config_map_store,
        secrets: secret_store,
        claims: claim_store,
        discovered: Mutex::new(HashMap::new()),
    });
    let queue = plumbing.queue();
    let resync = async move {
        if resync_period.is_zero() {
            return futures::future::pending().await;
        }
        resync_every(resync_period, quota_store, queue).await;
    };
    let sync = move |key: Key| {
        let shell = shell.clone();
        async move { shell.sync(&key).await }
    };
    plumbing.run(workers, sync, |_| {}, resync, shutdown).await;
    Ok(())
}

/// Whether a quota's status does not yet say what its spec asks: `hard` differs, or some
/// hard resource has no `used` (upstream's addQuota priority case).
fn status_incomplete(quota: &ResourceQuota) -> bool {
    let hard = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let Some(status) = quota.status.as_ref() else {
        return true;
    };
    let status_hard = status.hard.clone().unwrap_or_default();
    let used = status.used.clone().unwrap_or_default();
    !plan::resource_lists_equal(&hard, &status_hard)
        || hard.keys().any(|name| !used.contains_key(name))
}

/// Queues the quotas of `namespace` that measure `measured` (all namespaces when `None`).
fn queue_quotas(
    quotas: &Store<ResourceQuota>,
    queue: &WorkQueue<Key>,
    namespace: Option<&str>,
    measured: &Measured,
) {
    for quota in quotas.state() {
        if namespace.is_some_and(|ns| quota.namespace().as_deref() != Some(ns)) {
            continue;
        }
        if quota_measures(&quota, measured) {
            queue.add(Key::of(quota.as_ref()));
        }
    }
}

/// Turns one informer's events into quota recounts (upstream's replenishment): a deletion,
/// or an update that changes the object's usage, queues the namespace's quotas that measure
/// `measured`; additions do not (the admission charged them). After a relist, whose gap may
/// hide deletions, every quota measuring the kind is queued.
fn route_changes<K>(
    quotas: Store<ResourceQuota>,
    measured: Measured,
    usage_of: impl Fn(&K) -> ResourceAmounts + Send + 'static,
) -> impl FnMut(watcher::Event<K>, &WorkQueue<Key>) + Send + 'static
where
    K: Resource + ResourceExt,
{
    // The usage each object had when last seen.
    let mut last_usage: HashMap<Key, ResourceAmounts> = HashMap::new();
    move |event, queue| match event {
        watcher::Event::Init => last_usage.clear(),
        watcher::Event::InitApply(obj) => {
            last_usage.insert(Key::of(&obj), usage_of(&obj));
        }
        watcher::Event::InitDone => queue_quotas(&quotas, queue, None, &measured),
        watcher::Event::Apply(obj) => {
            let usage = usage_of(&obj);
            let key = Key::of(&obj);
            let changed = last_usage.get(&key).is_some_and(|last| *last != usage);
            if changed {
                queue_quotas(&quotas, queue, Some(&key.namespace), &measured);
            }
            last_usage.insert(key, usage);
        }
        watcher::Event::Delete(obj) => {
            let key = Key::of(&obj);
            last_usage.remove(&key);
            queue_quotas(&quotas, queue, Some(&key.namespace), &measured);
        }
    }
}

/// The cached objects of `namespace`.
fn in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .into_iter()
        .filter(|obj| obj.meta().namespace.as_deref() == Some(namespace))
        .collect()
}

impl Shell {
    /// One recount of one quota.
    async fn sync(&self, key: &Key) -> Result<SyncOutcome, Error> {
        let Some(quota) = self
            .quotas
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            return Ok(SyncOutcome::Done);
        };
        let namespace = key.namespace.as_str();
        let pods = in_namespace(&self.pods, namespace);
        let services = in_namespace(&self.services, namespace);
        let claims = in_namespace(&self.claims, namespace);
        let mut object_counts = BTreeMap::new();
        let mut count_failure = None;
        for kind in plan::kinds_to_count(&quota) {
            match self.count_objects(&kind, namespace).await {
                Ok(Some(count)) => {
                    object_counts.insert(kind, count);
                }
                Ok(None) => tracing::debug!(%kind, "not served; its count is left alone"),
                // Upstream goes on with what it could count and reports the error.
                Err(err) => {
                    count_failure.get_or_insert(err);
                }
            }
        }
        let observed = Observed {
            pods: pods.iter().map(AsRef::as_ref).collect(),
            services: services.iter().map(AsRef::as_ref).collect(),
            claims: claims.iter().map(AsRef::as_ref).collect(),
            object_counts,
        };
        let plan = plan::plan(&quota, &observed, skiff_client::now_timestamp());
        if plan.write {
            let mut updated = quota.as_ref().clone();
            updated.status = Some(plan.status.clone());
            // The cached resourceVersion travels with it: a quota changed meanwhile (an
            // admission charge) is a 409, and the key comes back after a back-off.
            match Api::<ResourceQuota>::namespaced(self.client.clone(), namespace)
                .replace_status(&key.name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {}
                Err(err) if api_code(&err) == Some(404) => return Ok(SyncOutcome::Done),
                Err(err) => return Err(err.into()),
            }
        }
        if let Some(err) = count_failure {
            return Err(err);
        }
        Ok(plan
            .requeue_after
            .map_or(SyncOutcome::Done, SyncOutcome::After))
    }

    /// How many objects of `kind` `namespace` holds: from a cache when there is one, else
    /// listed from the API; `None` when the API serves no such namespaced kind.
    async fn count_objects(
        &self,
        kind: &GroupResource,
        namespace: &str,
    ) -> Result<Option<u64>, Error> {
        fn count<K>(store: &Store<K>, namespace: &str) -> Option<u64>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            u64::try_from(in_namespace(store, namespace).len()).ok()
        }
        if kind.group.is_empty() {
            match kind.resource.as_str() {
                "configmaps" => return Ok(count(&self.config_maps, namespace)),
                "secrets" => return Ok(count(&self.secrets, namespace)),
                "resourcequotas" => return Ok(count(&self.quotas, namespace)),
                _ => {}
            }
        }
        let Some(resource) = self.discover(kind).await? else {
            return Ok(None);
        };
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, &resource);
        let mut total: u64 = 0;
        let mut params = ListParams::default().limit(COUNT_PAGE_SIZE);
        loop {
            let page = api.list(&params).await?;
            total += u64::try_from(page.items.len()).unwrap_or(0);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(Some(total)),
            }
        }
    }

    /// The namespaced, listable kind `kind` names, through discovery (cached once found).
    async fn discover(&self, kind: &GroupResource) -> Result<Option<ApiResource>, Error> {
        if let Some(found) = self.known(kind) {
            return Ok(Some(found));
        }
        let group = match kube::discovery::group(&self.client, &kind.group).await {
            Ok(group) => group,
            Err(kube::Error::Discovery(_)) => return Ok(None),
            Err(err) if api_code(&err) == Some(404) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let found = group
            .recommended_resources()
            .into_iter()
            .find(|(resource, capabilities)| {
                resource.plural == kind.resource
                    && matches!(capabilities.scope, Scope::Namespaced)
                    && capabilities.supports_operation(kube::discovery::verbs::LIST)
            })
            .map(|(resource, _)| resource);
        if let Some(resource) = &found
            && let Ok(mut discovered) = self.discovered.lock()
        {
            discovered.insert(kind.clone(), resource.clone());
        }
        Ok(found)
    }

    fn known(&self, kind: &GroupResource) -> Option<ApiResource> {
        self.discovered.lock().ok()?.get(kind).cloned()
    }
}
