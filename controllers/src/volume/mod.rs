//! The PersistentVolume binder (`persistentvolume-binder`, kube-controller-manager's PV
//! controller) with k3s's built-in local-path provisioner.
//!
//! - `binder`: which volume an unbound claim gets (pure).
//! - `plan`: what one sync of a claim or a volume does, and what a binding writes (pure).
//! - `provisioner`: the `skiff.io/local-path` volumes and the default `local-path` class (pure).
//!
//! The shell here: informers on volumes, claims, classes and nodes feed one work queue whose
//! keys are claims (`namespace/name`) or volumes (an empty namespace); each worker turns a key
//! into a plan over the caches and applies it. Binding writes, in upstream's order, the
//! volume's `claimRef`, its `Bound` phase, the claim's `volumeName` and annotations, then the
//! claim's status — each against the resourceVersion just read, so a sync that raced another
//! writer fails with a conflict and is retried. Everything is synced again every
//! [`RESYNC_PERIOD`] (upstream's `--pvclaimbinder-sync-period`). At start the default
//! `local-path` StorageClass is created if absent.

pub mod binder;
pub mod plan;
pub mod provisioner;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use skiff_client::events::{EventRecorder, EventType, NewEvent};
use skiff_client::workqueue::WorkQueue;

use crate::Error;
use crate::replicaset::controller::reference_to;
use crate::shell::{Key, Plumbing, SyncOutcome, api_code, resync_every};
use plan::{ClaimSync, VolumeThen};

/// How often every claim and volume is synced again (upstream's default
/// `--pvclaimbinder-sync-period`).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(15);
/// How often creating the default StorageClass is tried at start before giving up.
const DEFAULT_CLASS_ATTEMPTS: u32 = 30;

/// What the workers share.
struct Shell {
    client: kube::Client,
    volumes: Store<PersistentVolume>,
    claims: Store<PersistentVolumeClaim>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    queue: WorkQueue<Key>,
    recorder: EventRecorder,
}

/// The key of a volume (cluster-scoped: an empty namespace).
fn volume_key(name: &str) -> Key {
    Key::new("", name)
}

/// Runs the PersistentVolume binder and the local-path provisioner with `workers` concurrent
/// syncs until `shutdown`.
pub async fn run(
    client: kube::Client,
    workers: usize,
    recorder: EventRecorder,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), crate::Error> {
    let mut plumbing = Plumbing::new("persistentvolume-binder");
    let volume_store =
        plumbing.informer_of(Api::<PersistentVolume>::all(client.clone()), |volume| {
            let mut keys = vec![volume_key(&volume.name_any())];
            if let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
                && let (Some(ns), Some(name)) = (&r.namespace, &r.name)
            {
                keys.push(Key::new(ns, name));
            }
            keys
        });
    let claim_volumes = volume_store.clone();
    let claim_store = plumbing.informer_of(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        move |claim| {
            let mut keys = vec![Key::of(claim)];
            // A deleted claim releases its volume.
            let bound = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
            if let Some(name) = bound.filter(|n| !n.is_empty()) {
                keys.push(volume_key(&name));
            }
            let uid = claim.uid();
            for volume in claim_volumes.state() {
                let r = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                if r.is_some_and(|r| r.uid.is_some() && r.uid == uid) {
                    keys.push(volume_key(&volume.name_any()));
                }
            }
            keys
        },
    );
    let class_claims = claim_store.clone();
    let class_store =
        plumbing.informer_of(Api::<StorageClass>::all(client.clone()), move |class| {
            let name = class.name_any();
            class_claims
                .state()
                .iter()
                .filter(|claim| binder::claim_class(claim) == name)
                .map(|claim| Key::of(claim.as_ref()))
                .collect()
        });
    // Node labels only refine a selected node's matching; the resync picks changes up.
    let node_store = plumbing.informer(Api::<Node>::all(client.clone()), |_, _| {});
    let shell = Arc::new(Shell {
        client,
        volumes: volume_store.clone(),
        claims: claim_store.clone(),
        classes: class_store,
        nodes: node_store,
        queue: plumbing.queue(),
        recorder,
    });
    let class_shell = shell.clone();
    plumbing.before_workers(async move { class_shell.ensure_default_class().await });
    // Everything is synced once at start, then every RESYNC_PERIOD.
    let (all_volumes, all_claims) = (volume_store.clone(), claim_store.clone());
    let everything = move |queue: &WorkQueue<Key>| {
        for volume in all_volumes.state() {
            queue.add(volume_key(&volume.name_any()));
        }
        for claim in all_claims.state() {
            queue.add(Key::of(claim.as_ref()));
        }
    };
    let (volume_queue, claim_queue) = (plumbing.queue(), plumbing.queue());
    let resync = async move {
        futures::future::join(
            resync_every(RESYNC_PERIOD, volume_store, volume_queue),
            resync_every(RESYNC_PERIOD, claim_store, claim_queue),
        )
        .await;
    };
    let sync = move |key: Key| {
        let shell = shell.clone();
        async move { shell.sync(&key).await }
    };
    plumbing
        .run(workers, sync, everything, resync, shutdown)
        .await;
    Ok(())
}

impl Shell {
    /// Creates the default `local-path` StorageClass if no class of that name exists (as k3s
    /// ships it); retried a while if the API server refuses, then given up with a warning.
    async fn ensure_default_class(&self) {
        let api = Api::<StorageClass>::all(self.client.clone());
        let class = provisioner::default_class();
        for attempt in 1..=DEFAULT_CLASS_ATTEMPTS {
            let result = match api.get_opt(provisioner::DEFAULT_CLASS_NAME).await {
                Ok(Some(_)) => return,
                Ok(None) => api.create(&PostParams::default(), &class).await.map(|_| ()),
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => {
                    tracing::info!(
                        class = provisioner::DEFAULT_CLASS_NAME,
                        "created the default StorageClass"
                    );
                    return;
                }
                Err(err) if api_code(&err) == Some(409) => return,
                Err(err) if attempt == DEFAULT_CLASS_ATTEMPTS => {
                    tracing::warn!(error = %err, "could not create the default StorageClass");
                }
                Err(err) => {
                    tracing::debug!(error = %err, "creating the default StorageClass; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One sync of a claim or volume key.
    async fn sync(&self, key: &Key) -> Result<SyncOutcome, Error> {
        if key.namespace.is_empty() {
            self.sync_volume(&key.name).await
        } else {
            self.sync_claim(key).await
        }
    }

    fn all_volumes(&self) -> Vec<PersistentVolume> {
        let mut volumes: Vec<PersistentVolume> = self
            .volumes
            .state()
            .iter()
            .map(|v| v.as_ref().clone())
            .collect();
        volumes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        volumes
    }

    async fn sync_claim(&self, key: &Key) -> Result<SyncOutcome, Error> {
        let Some(claim) = self
            .claims
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
        else {
            return Ok(SyncOutcome::Done);
        };
        let volumes = self.all_volumes();
        let classes: Vec<StorageClass> = self
            .classes
            .state()
            .iter()
            .map(|c| c.as_ref().clone())
            .collect();
        let node = claim
            .annotations()
            .get(plan::ANN_SELECTED_NODE)
            .and_then(|name| self.nodes.get(&ObjectRef::new(name)));
        let view = plan::View {
            volumes: &volumes,
            classes: &classes,
            selected_node_labels: node.as_ref().and_then(|n| n.metadata.labels.as_ref()),
        };
        match plan::sync_claim(&claim, view) {
            ClaimSync::Nothing => {}
            ClaimSync::Phase(phase, event) => {
                if let Some(status) = plan::claim_status(&claim, phase, None) {
                    let mut updated = claim.as_ref().clone();
                    updated.status = Some(status);
                    self.claims_api(key)
                        .replace_status(&key.name, &PostParams::default(), &updated)
                        .await?;
                }
                if let Some(event) = event {
                    self.event(reference_to(claim.as_ref()), &event);
                }
            }
            ClaimSync::Bind(name) => {
                if let Some(volume) = volumes
                    .iter()
                    .find(|v| v.metadata.name.as_deref() == Some(name.as_str()))
                {
                    self.bind(key, &claim, volume).await?;
                }
            }
            ClaimSync::Provision(volume) => self.provision(&claim, &volume).await?,
        }
        Ok(SyncOutcome::Done)
    }

    fn claims_api(&self, key: &Key) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &key.namespace)
    }

    /// `bind`: the volume's claimRef, its phase, the claim's volumeName and annotations, the
    /// claim's status — each write only if needed.
    async fn bind(
        &self,
        key: &Key,
        claim: &PersistentVolumeClaim,
        volume: &PersistentVolume,
    ) -> Result<(), Error> {
        let volumes = Api::<PersistentVolume>::all(self.client.clone());
        let params = PostParams::default();
        let name = volume.name_any();
        let mut volume = volume.clone();
        if let Some(updated) = plan::bound_volume(&volume, claim) {
            volume = volumes.replace(&name, &params, &updated).await?;
        }
        if let Some(status) = plan::volume_status(&volume, "Bound") {
            volume.status = Some(status);
            volume = volumes.replace_status(&name, &params, &volume).await?;
        }
        let claims = self.claims_api(key);
        let mut claim = claim.clone();
        if let Some(updated) = plan::bound_claim(&claim, &volume) {
            claim = claims.replace(&key.name, &params, &updated).await?;
        }
        if let Some(status) = plan::claim_status(&claim, "Bound", Some(&volume)) {
            claim.status = Some(status);
            claims.replace_status(&key.name, &params, &claim).await?;
            tracing::info!(claim = %key, volume = %name, "claim bound");
        }
        Ok(())
    }

    /// Creates a volume of the built-in provisioner and says so on the claim.
    async fn provision(
        &self,
        claim: &PersistentVolumeClaim,
        volume: &PersistentVolume,
    ) -> Result<(), Error> {
        let name = volume.name_any();
        match Api::<PersistentVolume>::all(self.client.clone())
            .create(&PostParams::default(), volume)
            .await
        {
            Ok(_) => {}
            // Made by an earlier sync whose volume the cache does not show yet.
            Err(err) if api_code(&err) == Some(409) => return Ok(()),
            Err(err) => {
                self.event(
                    reference_to(claim),
                    &plan::Event {
                        normal: false,
                        reason: "ProvisioningFailed",
                        message: format!(
                            "failed to provision volume with StorageClass {:?}: {err}",
                            binder::claim_class(claim)
                        ),
                    },
                );
                return Err(err.into());
            }
        }
        self.event(
            reference_to(claim),
            &plan::Event {
                normal: true,
                reason: "ProvisioningSucceeded",
                message: format!(
                    "Successfully provisioned volume {name} using {}",
                    provisioner::PROVISIONER
                ),
            },
        );
        Ok(())
    }

    async fn sync_volume(&self, name: &str) -> Result<SyncOutcome, Error> {
        let Some(volume) = self.volumes.get(&ObjectRef::new(name)) else {
            return Ok(SyncOutcome::Done);
        };
        let namespace = volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.namespace.clone());
        let claims: Vec<PersistentVolumeClaim> = self
            .claims
            .state()
            .iter()
            .filter(|c| c.metadata.namespace == namespace)
            .map(|c| c.as_ref().clone())
            .collect();
        let sync = plan::sync_volume(&volume, &claims);
        let volumes = Api::<PersistentVolume>::all(self.client.clone());
        let params = PostParams::default();
        let mut current = volume.as_ref().clone();
        if let Some(phase) = sync.phase
            && let Some(status) = plan::volume_status(&current, phase)
        {
            current.status = Some(status);
            current = volumes.replace_status(name, &params, &current).await?;
            tracing::info!(volume = name, phase, "volume phase");
        }
        match sync.then {
            VolumeThen::Nothing => {}
            VolumeThen::SyncClaim(namespace, claim) => {
                self.queue.add(Key::new(&namespace, &claim));
            }
            VolumeThen::Delete => {
                let params = DeleteParams {
                    preconditions: current.uid().map(|uid| Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match volumes.delete(name, &params).await {
                    Ok(_) => tracing::info!(volume = name, "deleted a released volume"),
                    Err(err) if matches!(api_code(&err), Some(404 | 409)) => {}
                    Err(err) => {
                        self.event(
                            reference_to(&current),
                            &plan::Event {
                                normal: false,
                                reason: "VolumeFailedDelete",
                                message: err.to_string(),
                            },
                        );
                        return Err(err.into());
                    }
                }
            }
            VolumeThen::Unbind => {
                let unbound = plan::unbound_volume(&current);
                let mut updated = volumes.replace(name, &params, &unbound).await?;
                if let Some(status) = plan::volume_status(&updated, "Available") {
                    updated.status = Some(status);
                    volumes.replace_status(name, &params, &updated).await?;
                }
            }
            VolumeThen::Event(event) => self.event(reference_to(&current), &event),
        }
        Ok(SyncOutcome::Done)
    }

    fn event(&self, object: k8s_openapi::api::core::v1::ObjectReference, event: &plan::Event) {
        self.recorder.record(NewEvent {
            object,
            type_: if event.normal {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: event.reason.to_string(),
            message: event.message.clone(),
            action: String::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manager spawns [`run`]: its future must be `Send`.
    #[allow(dead_code)]
    fn run_is_send(client: kube::Client, recorder: EventRecorder) -> impl Send {
        run(client, 1, recorder, async {})
    }

    #[test]
    fn volumes_have_keys_without_a_namespace() {
        assert_eq!(volume_key("pv-1"), Key::new("", "pv-1"));
    }
}
