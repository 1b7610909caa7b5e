//! The Deployment controller's IO shell: informers on Deployments, ReplicaSets and pods feed a
//! work queue of Deployment keys; a worker runs [`sync`] over the cache and applies its
//! actions in order, stopping at the first failure (the key backs off and the next sync
//! recomputes everything). Every write carries the cached resourceVersion, so a decision taken
//! on a stale cache fails with a conflict instead of landing.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use skiff_client::events::{EventRecorder, EventType, NewEvent};

use super::sync::{Action, sync};
use crate::Error;
use crate::pods::controller_of;
use crate::replicaset::controller::reference_to;
use crate::shell::{
    Key, Plumbing, RESYNC_PERIOD, SyncOutcome, api_code, owners_to_queue, resync_every,
};

/// What the workers share.
struct Shell {
    client: kube::Client,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: EventRecorder,
}

/// Runs the Deployment controller with `workers` concurrent syncs (`--concurrent-deployment-
/// syncs`) until `shutdown`.
pub async fn run(
    client: kube::Client,
    workers: usize,
    recorder: EventRecorder,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut plumbing = Plumbing::new("deployment");
    let d_store =
        plumbing.informer_of(Api::<Deployment>::all(client.clone()), |d| vec![Key::of(d)]);
    let deployments = d_store.clone();
    let rs_store = plumbing.informer_of(Api::<ReplicaSet>::all(client.clone()), move |rs| {
        deployments_of_replica_set(rs, &deployments)
    });
    // Pods matter to Recreate only (it waits for the old ones to go): a pod event queues
    // the Deployment owning the pod's ReplicaSet.
    let replica_sets = rs_store.clone();
    let pod_store = plumbing.informer_of(Api::<Pod>::all(client.clone()), move |pod| {
        deployment_of_pod(pod, &replica_sets).into_iter().collect()
    });
    let resync = resync_every(RESYNC_PERIOD, d_store.clone(), plumbing.queue());
    let shell = Arc::new(Shell {
        client,
        deployments: d_store,
        replica_sets: rs_store,
        pods: pod_store,
        recorder,
    });
    let sync = move |key: Key| {
        let shell = shell.clone();
        async move { shell.sync(&key).await }
    };
    plumbing.run(workers, sync, |_| {}, resync, shutdown).await;
    Ok(())
}

/// The Deployment owning the ReplicaSet that controls `pod`, if any.
fn deployment_of_pod(pod: &Pod, replica_sets: &Store<ReplicaSet>) -> Option<Key> {
    let owner = controller_of(&pod.metadata)?;
    let namespace = pod.namespace().unwrap_or_default();
    let rs = replica_sets.get(&ObjectRef::new(&owner.name).within(&namespace))?;
    let d = controller_of(&rs.metadata)?;
    (d.kind == "Deployment").then(|| Key::new(&namespace, &d.name))
}

/// The Deployments a ReplicaSet event concerns: its controller if that is a Deployment, else
/// (an orphan) those of its namespace whose selector matches it.
fn deployments_of_replica_set(rs: &ReplicaSet, deployments: &Store<Deployment>) -> Vec<Key> {
    owners_to_queue(&rs.metadata, "Deployment", "", deployments, |d| {
        d.spec.as_ref().map(|spec| &spec.selector)
    })
}

impl Shell {
    /// One sync of one Deployment key.
    async fn sync(&self, key: &Key) -> Result<SyncOutcome, Error> {
        let Some(deployment) = self
            .deployments
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            return Ok(SyncOutcome::Done);
        };
        let uid = deployment.uid().unwrap_or_default();
        let in_namespace = |ns: Option<String>| ns.as_deref() == Some(key.namespace.as_str());
        let replica_sets: Vec<ReplicaSet> = self
            .replica_sets
            .state()
            .iter()
            .filter(|rs| in_namespace(rs.namespace()))
            .filter(|rs| controller_of(&rs.metadata).is_none_or(|owner| owner.uid == uid))
            .map(|rs| rs.as_ref().clone())
            .collect();
        let recreate = deployment
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate");
        let pods: Vec<Pod> = if recreate {
            let owned: Vec<String> = replica_sets.iter().filter_map(|rs| rs.uid()).collect();
            self.pods
                .state()
                .iter()
                .filter(|pod| in_namespace(pod.namespace()))
                .filter(|pod| controller_of(&pod.metadata).is_some_and(|o| owned.contains(&o.uid)))
                .map(|pod| pod.as_ref().clone())
                .collect()
        } else {
            Vec::new()
        };
        let result = sync(
            &deployment,
            &replica_sets,
            &pods,
            skiff_client::now_timestamp(),
        );
        // Each write answers with the object's new resourceVersion; later actions of the same
        // sync on the same object write against it, not against the cache's.
        let mut written = Written {
            deployment: deployment.as_ref().clone(),
            replica_sets: BTreeMap::new(),
        };
        for action in result.actions {
            self.apply(key, &mut written, action).await?;
        }
        Ok(result
            .requeue_after
            .map_or(SyncOutcome::Done, SyncOutcome::After))
    }

    async fn apply(&self, key: &Key, written: &mut Written, action: Action) -> Result<(), Error> {
        let deployment = &written.deployment;
        let replica_sets = Api::<ReplicaSet>::namespaced(self.client.clone(), &key.namespace);
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), &key.namespace);
        match action {
            Action::CreateReplicaSet(rs) => {
                let created = replica_sets.create(&PostParams::default(), &rs).await?;
                written
                    .replica_sets
                    .insert(created.name_any(), created.resource_version());
            }
            Action::UpdateReplicaSet(mut rs) => {
                let name = rs.name_any();
                if let Some(version) = written.replica_sets.get(&name) {
                    rs.metadata.resource_version = version.clone();
                }
                let updated = replica_sets
                    .replace(&name, &PostParams::default(), &rs)
                    .await?;
                written
                    .replica_sets
                    .insert(name, updated.resource_version());
            }
            Action::AdoptReplicaSet { name, uid } => {
                let Some(rs) = self
                    .replica_sets
                    .get(&ObjectRef::new(&name).within(&key.namespace))
                    .filter(|rs| rs.uid().as_deref() == Some(uid.as_str()))
                else {
                    return Ok(());
                };
                let mut references = rs.owner_references().to_vec();
                references.extend(crate::pods::controller_reference(
                    "apps/v1",
                    "Deployment",
                    &deployment.metadata,
                ));
                let patch = json!({"metadata": {
                    "ownerReferences": references,
                    "resourceVersion": rs.resource_version(),
                }});
                let adopted = replica_sets
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                written
                    .replica_sets
                    .insert(name, adopted.resource_version());
            }
            Action::DeleteReplicaSet {
                name,
                uid,
                resource_version,
            } => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: Some(resource_version),
                    }),
                    ..DeleteParams::default()
                };
                match replica_sets.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(err) if api_code(&err) == Some(404) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            Action::SetDeploymentAnnotations(annotations) => {
                let patch = json!({"metadata": {
                    "annotations": annotation_patch(deployment.annotations(), &annotations),
                    "resourceVersion": deployment.resource_version(),
                }});
                let patched = deployments
                    .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                written.deployment.metadata = patched.metadata;
            }
            Action::UpdateStatus(status) => {
                let mut updated = deployment.clone();
                updated.status = Some(status);
                let replaced = deployments
                    .replace_status(&key.name, &PostParams::default(), &updated)
                    .await?;
                written.deployment.metadata = replaced.metadata;
            }
            Action::Event {
                warning,
                reason,
                message,
            } => self.recorder.record(NewEvent {
                object: reference_to(&written.deployment),
                type_: if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason,
                message,
                action: String::new(),
            }),
        }
        Ok(())
    }
}

/// What this sync wrote so far: the Deployment as last written, and the resourceVersion of
/// each ReplicaSet it wrote.
struct Written {
    deployment: Deployment,
    replica_sets: BTreeMap<String, Option<String>>,
}

/// A JSON merge patch turning `current` annotations into exactly `desired`: removed keys are
/// `null`.
fn annotation_patch(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> Value {
    let mut patch = serde_json::Map::new();
    for key in current.keys().filter(|k| !desired.contains_key(*k)) {
        patch.insert(key.clone(), Value::Null);
    }
    for (key, value) in desired {
        if current.get(key) != Some(value) {
            patch.insert(key.clone(), Value::String(value.clone()));
        }
    }
    Value::Object(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_patch_sets_changes_and_nulls_removals() {
        let current: BTreeMap<String, String> = [("a", "1"), ("b", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let desired: BTreeMap<String, String> = [("a", "1"), ("c", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            annotation_patch(&current, &desired),
            json!({"b": null, "c": "3"})
        );
    }
}
