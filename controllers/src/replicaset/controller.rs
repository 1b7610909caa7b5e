//! The ReplicaSet controller's IO shell: informers on ReplicaSets and pods feed a work queue
//! of ReplicaSet keys; each worker turns one key into a [`plan`] over the cache and applies
//! it — adoption and release patches, slow-start creates, ranked deletes, the status — with
//! [`Expectations`] holding a ReplicaSet back until the cache shows its own creates and
//! deletes, so a lagging watch never makes it act twice.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use skiff_client::events::{EventRecorder, EventType, NewEvent};

use super::plan::{self, Plan};
use crate::Error;
use crate::expectations::{Expectations, PodId};
use crate::pods::controller_of;
pub(crate) use crate::shell::applied;
use crate::shell::{
    Key, Plumbing, RESYNC_PERIOD, SyncOutcome, api_code, error_message, message_of,
    owners_to_queue, resync_every,
};

/// What the workers share.
struct Shell {
    client: kube::Client,
    replica_sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    expectations: Arc<Expectations<Key>>,
    recorder: EventRecorder,
}

/// Runs the ReplicaSet controller with `workers` concurrent syncs (`--concurrent-replicaset-
/// syncs`) until `shutdown`.
pub async fn run(
    client: kube::Client,
    workers: usize,
    recorder: EventRecorder,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut plumbing = Plumbing::new("replicaset");
    let rs_store = plumbing.informer_of(Api::<ReplicaSet>::all(client.clone()), |rs| {
        vec![Key::of(rs)]
    });
    let expectations = Arc::new(Expectations::default());
    let (seen, owners) = (expectations.clone(), rs_store.clone());
    let pod_store = plumbing.informer_of(Api::<Pod>::all(client.clone()), move |pod| {
        let keys = owners_of(pod, &owners);
        if let Some(uid) = pod.metadata.uid.as_deref() {
            for key in &keys {
                seen.observed(key, uid);
            }
        }
        keys
    });
    let resync = resync_every(RESYNC_PERIOD, rs_store.clone(), plumbing.queue());
    let shell = Arc::new(Shell {
        client,
        replica_sets: rs_store,
        pods: pod_store,
        expectations,
        recorder,
    });
    let sync = move |key: Key| {
        let shell = shell.clone();
        async move { shell.sync(&key).await }
    };
    plumbing.run(workers, sync, |_| {}, resync, shutdown).await;
    Ok(())
}

/// The ReplicaSets a pod event concerns: its controller if that is a ReplicaSet, else (an
/// orphan) every ReplicaSet of its namespace whose selector matches it, which may adopt it.
fn owners_of(pod: &Pod, replica_sets: &Store<ReplicaSet>) -> Vec<Key> {
    owners_to_queue(&pod.metadata, "ReplicaSet", "apps/", replica_sets, |rs| {
        rs.spec.as_ref().map(|spec| &spec.selector)
    })
}

impl Shell {
    /// One sync of one ReplicaSet key.
    async fn sync(&self, key: &Key) -> Result<SyncOutcome, Error> {
        let Some(rs) = self
            .replica_sets
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            self.expectations.forget(key);
            return Ok(SyncOutcome::Done);
        };
        let cached_uid = |name: &str| {
            self.pods
                .get(&ObjectRef::new(name).within(&key.namespace))
                .and_then(|pod| pod.uid())
        };
        if let Err(expire_in) = self.expectations.satisfied(key, &cached_uid) {
            // The pod events that meet them queue the ReplicaSet again; at the latest it is
            // looked at when they expire.
            return Ok(SyncOutcome::After(expire_in));
        }
        let rs_uid = rs.uid().unwrap_or_default();
        // Only the pods this ReplicaSet owns or might adopt are copied out of the cache.
        let pods: Vec<Pod> = self
            .pods
            .state()
            .iter()
            .filter(|pod| pod.namespace().as_deref() == Some(key.namespace.as_str()))
            .filter(|pod| controller_of(&pod.metadata).is_none_or(|owner| owner.uid == rs_uid))
            .map(|pod| pod.as_ref().clone())
            .collect();
        let plan = plan::plan(&rs, &pods, skiff_client::now_timestamp());
        let failure = self.apply(key, &rs, &plan).await;
        let status = plan::with_failure(
            plan.status.clone(),
            failure.as_ref().map(|(reason, e)| (*reason, message_of(e))),
            skiff_client::now_timestamp(),
        );
        if plan::status_differs(rs.status.as_ref(), &status) {
            let mut updated = rs.as_ref().clone();
            updated.status = Some(status);
            Api::<ReplicaSet>::namespaced(self.client.clone(), &key.namespace)
                .replace_status(&key.name, &PostParams::default(), &updated)
                .await?;
        }
        match failure {
            Some((_, err)) => Err(err),
            None => Ok(plan
                .requeue_after
                .map_or(SyncOutcome::Done, SyncOutcome::After)),
        }
    }

    /// Applies the plan's pod changes; the first failure (its ReplicaFailure reason and the
    /// error) stops it.
    async fn apply(
        &self,
        key: &Key,
        rs: &ReplicaSet,
        plan: &Plan,
    ) -> Option<(&'static str, Error)> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), &key.namespace);
        for name in &plan.adopt {
            if let Err(err) = self.set_controller(&pods, name, rs, true).await {
                return Some(("FailedCreate", err));
            }
        }
        for name in &plan.release {
            if let Err(err) = self.set_controller(&pods, name, rs, false).await {
                return Some(("FailedDelete", err));
            }
        }
        if plan.create > 0 {
            let template = plan::pod_for(rs);
            let params = PostParams::default();
            for batch in plan::slow_start_batches(plan.create) {
                let creates = (0..batch).map(|_| pods.create(&params, &template));
                let results = futures::future::join_all(creates).await;
                let mut failed = None;
                for result in results {
                    match result {
                        Ok(pod) => {
                            let name = pod.name_any();
                            self.expectations.created(
                                key,
                                PodId {
                                    name: name.clone(),
                                    uid: pod.uid().unwrap_or_default(),
                                },
                            );
                            self.event(
                                rs,
                                EventType::Normal,
                                "SuccessfulCreate",
                                format!("Created pod: {name}"),
                            );
                        }
                        Err(err) => {
                            self.event(
                                rs,
                                EventType::Warning,
                                "FailedCreate",
                                format!("Error creating: {}", error_message(&err)),
                            );
                            failed.get_or_insert(err);
                        }
                    }
                }
                if let Some(err) = failed {
                    return Some(("FailedCreate", err.into()));
                }
            }
        }
        let deletes = plan.delete.iter().map(|name| {
            let uid = self
                .pods
                .get(&ObjectRef::new(name).within(&key.namespace))
                .and_then(|pod| pod.uid());
            let params = DeleteParams {
                preconditions: uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let pods = pods.clone();
            async move { (name, uid, pods.delete(name, &params).await) }
        });
        let mut failed = None;
        for (name, uid, result) in futures::future::join_all(deletes).await {
            match result {
                Ok(_) => {
                    if let Some(uid) = uid {
                        self.expectations.deleted(
                            key,
                            PodId {
                                name: name.clone(),
                                uid,
                            },
                        );
                    }
                    self.event(
                        rs,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    );
                }
                // Gone already, or replaced by another pod of the same name: nothing to do.
                Err(err) if matches!(api_code(&err), Some(404 | 409)) => {}
                Err(err) => {
                    self.event(
                        rs,
                        EventType::Warning,
                        "FailedDelete",
                        format!("Error deleting: {}", error_message(&err)),
                    );
                    failed.get_or_insert(err);
                }
            }
        }
        failed.map(|err| ("FailedDelete", err.into()))
    }

    /// Adopts (`adopt`) or releases a pod: its ownerReferences with ours added or removed,
    /// written against the cached resourceVersion so a pod changed meanwhile is left alone.
    async fn set_controller(
        &self,
        pods: &Api<Pod>,
        name: &str,
        rs: &ReplicaSet,
        adopt: bool,
    ) -> Result<(), Error> {
        let Some(pod) = self
            .pods
            .get(&ObjectRef::new(name).within(&rs.namespace().unwrap_or_default()))
        else {
            return Ok(());
        };
        let rs_uid = rs.uid().unwrap_or_default();
        let mut references: Vec<_> = pod
            .owner_references()
            .iter()
            .filter(|r| r.uid != rs_uid)
            .cloned()
            .collect();
        if adopt
            && let Some(ours) =
                crate::pods::controller_reference("apps/v1", "ReplicaSet", &rs.metadata)
        {
            references.push(ours);
        }
        let patch = json!({"metadata": {
            "ownerReferences": references,
            "resourceVersion": pod.resource_version(),
        }});
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if matches!(api_code(&err), Some(404)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn event(&self, rs: &ReplicaSet, type_: EventType, reason: &str, message: String) {
        self.recorder.record(NewEvent {
            object: reference_to(rs),
            type_,
            reason: reason.to_string(),
            message,
            action: String::new(),
        });
    }
}

/// An ObjectReference to a namespaced object, for Events.
pub(crate) fn reference_to<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        name: obj.meta().name.clone(),
        namespace: obj.meta().namespace.clone(),
        uid: obj.meta().uid.clone(),
        resource_version: obj.meta().resource_version.clone(),
        field_path: None,
    }
}
