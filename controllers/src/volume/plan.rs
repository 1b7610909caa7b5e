//! The PersistentVolume binder's decisions, as kube-controller-manager's PV controller
//! (`pkg/controller/volume/persistentvolume/pv_controller.go`: `syncClaim`, `syncVolume`,
//! `bind`) makes them, without any IO: what one sync of a claim or of a volume should do, and
//! the objects a binding writes. The shell feeds it the informers' view and applies it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeStatus,
};
use k8s_openapi::api::storage::v1::StorageClass;

use super::binder::{self, ChosenNode};
use super::provisioner;

/// A claim annotation: the binding was completed by the controller (`AnnBindCompleted`).
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// On a claim or volume: the controller, not the user, wrote the binding
/// (`AnnBoundByController`).
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// On a volume: the provisioner that created it (`AnnDynamicallyProvisioned`).
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// On a claim: the node the scheduler chose for its first consumer (`AnnSelectedNode`).
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The binding mode that waits for a pod to be scheduled.
pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";

/// An Event the sync records on the claim or volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `Normal` (true) or `Warning`.
    pub normal: bool,
    /// The reason (`FailedBinding`, ...).
    pub reason: &'static str,
    /// The message, upstream's wording.
    pub message: String,
}

impl Event {
    fn normal(reason: &'static str, message: impl Into<String>) -> Event {
        Event {
            normal: true,
            reason,
            message: message.into(),
        }
    }

    fn warning(reason: &'static str, message: impl Into<String>) -> Event {
        Event {
            normal: false,
            reason,
            message: message.into(),
        }
    }
}

/// What one sync of a claim should do.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimSync {
    /// Nothing (all is well, or a later event finishes the work).
    Nothing,
    /// Bind the claim and the volume of this name to each other (see [`bound_volume`],
    /// [`bound_claim`], [`claim_status`]).
    Bind(String),
    /// Set the claim's phase (`Pending` or `Lost`, clearing its capacity and access modes)
    /// and record the event, if any.
    Phase(&'static str, Option<Event>),
    /// Create this volume for the claim (the built-in provisioner), then record
    /// `ProvisioningSucceeded`.
    Provision(Box<PersistentVolume>),
}

/// What the claim sync sees besides the claim: the volumes, classes and, when the claim has
/// a selected node, that node's labels.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Every PersistentVolume.
    pub volumes: &'a [PersistentVolume],
    /// Every StorageClass.
    pub classes: &'a [StorageClass],
    /// The labels of the node named by the claim's `volume.kubernetes.io/selected-node`
    /// (None if it has none or the node is unknown: then only the hostname label counts).
    pub selected_node_labels: Option<&'a BTreeMap<String, String>>,
}

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The volume phase (`Pending` if unset).
pub fn volume_phase(volume: &PersistentVolume) -> &str {
    volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn class_named<'a>(classes: &'a [StorageClass], name: &str) -> Option<&'a StorageClass> {
    classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
}

/// Whether the claim's binding waits for a consumer (`IsDelayBindingMode`): its class exists
/// and says `WaitForFirstConsumer`.
pub fn delays_binding(claim: &PersistentVolumeClaim, classes: &[StorageClass]) -> bool {
    let class = binder::claim_class(claim);
    !class.is_empty()
        && class_named(classes, class)
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some(WAIT_FOR_FIRST_CONSUMER))
}

/// One sync of a claim (`syncClaim`).
pub fn sync_claim(claim: &PersistentVolumeClaim, view: View<'_>) -> ClaimSync {
    if claim.metadata.deletion_timestamp.is_some() {
        return ClaimSync::Nothing;
    }
    if annotation(&claim.metadata, ANN_BIND_COMPLETED).is_some() {
        sync_bound_claim(claim, view)
    } else {
        sync_unbound_claim(claim, view)
    }
}

fn volume_name(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or("")
}

fn find_volume<'a>(volumes: &'a [PersistentVolume], name: &str) -> Option<&'a PersistentVolume> {
    volumes
        .iter()
        .find(|v| v.metadata.name.as_deref() == Some(name))
}

fn claim_ref(volume: &PersistentVolume) -> Option<&ObjectReference> {
    volume.spec.as_ref()?.claim_ref.as_ref()
}

/// `syncBoundClaim`: a claim the controller bound before.
fn sync_bound_claim(claim: &PersistentVolumeClaim, view: View<'_>) -> ClaimSync {
    let lost = |reason, message: &str| {
        if claim_phase(claim) == "Lost" {
            ClaimSync::Nothing
        } else {
            ClaimSync::Phase("Lost", Some(Event::warning(reason, message)))
        }
    };
    let name = volume_name(claim);
    if name.is_empty() {
        return lost(
            "ClaimLost",
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        );
    }
    let Some(volume) = find_volume(view.volumes, name) else {
        return lost(
            "ClaimLost",
            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
        );
    };
    match claim_ref(volume) {
        None => ClaimSync::Bind(name.to_string()),
        Some(r) if r.uid.is_some() && r.uid == claim.metadata.uid => {
            if binding_complete(volume, claim) {
                ClaimSync::Nothing
            } else {
                ClaimSync::Bind(name.to_string())
            }
        }
        Some(_) => lost(
            "ClaimMisbound",
            "Two claims are bound to the same volume, this one is bound incorrectly",
        ),
    }
}

/// Whether nothing of a binding is left to write.
fn binding_complete(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    bound_volume(volume, claim).is_none()
        && volume_phase(volume) == "Bound"
        && bound_claim(claim, volume).is_none()
        && claim_status(claim, "Bound", Some(volume)).is_none()
}

/// `syncUnboundClaim`: a claim not bound yet.
fn sync_unbound_claim(claim: &PersistentVolumeClaim, view: View<'_>) -> ClaimSync {
    let pending = |event: Option<Event>| {
        if claim_phase(claim) == "Pending" && event.is_none() {
            ClaimSync::Nothing
        } else {
            ClaimSync::Phase("Pending", event)
        }
    };
    let requested = volume_name(claim);
    if !requested.is_empty() {
        // The user asked for a specific volume.
        let Some(volume) = find_volume(view.volumes, requested) else {
            return pending(None);
        };
        return match claim_ref(volume) {
            None => {
                if binder::find_best_match(claim, std::slice::from_ref(volume), false, None)
                    .is_some()
                {
                    ClaimSync::Bind(requested.to_string())
                } else {
                    pending(Some(Event::warning(
                        "VolumeMismatch",
                        format!(
                            "Cannot bind to requested volume {requested:?}: {}",
                            mismatch(claim, volume)
                        ),
                    )))
                }
            }
            Some(_) if binder::is_bound_to(volume, claim) => ClaimSync::Bind(requested.to_string()),
            // Claimed by someone else: retry later.
            Some(_) => pending(None),
        };
    }
    let delay = delays_binding(claim, view.classes);
    let selected = annotation(&claim.metadata, ANN_SELECTED_NODE);
    let hostname_only;
    let node = match selected {
        Some(name) if delay => {
            let labels = match view.selected_node_labels {
                Some(labels) => labels,
                None => {
                    hostname_only =
                        BTreeMap::from([(binder::HOSTNAME_LABEL.to_string(), name.to_string())]);
                    &hostname_only
                }
            };
            Some(ChosenNode { name, labels })
        }
        _ => None,
    };
    if let Some(volume) = binder::find_best_match(claim, view.volumes, delay, node) {
        return match &volume.metadata.name {
            Some(name) => ClaimSync::Bind(name.clone()),
            None => ClaimSync::Nothing,
        };
    }
    let class = binder::claim_class(claim);
    if delay && selected.is_none() {
        return pending(Some(Event::normal(
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        )));
    }
    if class.is_empty() {
        return pending(Some(Event::normal(
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
        )));
    }
    provision(claim, class, view, selected)
}

/// Why a requested volume does not satisfy the claim (upstream's `checkVolumeSatisfyClaim`
/// reasons, first failing check first).
fn mismatch(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> &'static str {
    let claim_mode = claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref());
    let volume_mode = volume.spec.as_ref().and_then(|s| s.volume_mode.as_deref());
    if binder::capacity_bytes(volume).unwrap_or(0) < binder::requested_bytes(claim) {
        "requested PV is too small"
    } else if binder::volume_class(volume) != binder::claim_class(claim) {
        "storageClassName does not match"
    } else if claim_mode.unwrap_or("Filesystem") != volume_mode.unwrap_or("Filesystem") {
        "incompatible volumeMode"
    } else {
        "incompatible accessMode"
    }
}

/// `provisionClaim` for a claim no volume matched: the built-in provisioner creates one; a
/// class of another provisioner waits for it.
fn provision(
    claim: &PersistentVolumeClaim,
    class_name: &str,
    view: View<'_>,
    selected: Option<&str>,
) -> ClaimSync {
    let failed = |message: String| {
        ClaimSync::Phase(
            "Pending",
            Some(Event::warning("ProvisioningFailed", message)),
        )
    };
    let Some(class) = class_named(view.classes, class_name) else {
        return failed(format!(
            "storageclass.storage.k8s.io {class_name:?} not found"
        ));
    };
    if class.provisioner != provisioner::PROVISIONER {
        return ClaimSync::Phase(
            "Pending",
            Some(Event::normal(
                "ExternalProvisioning",
                format!(
                    "Waiting for a volume to be created either by the external provisioner '{}' \
                     or manually by the system administrator. If volume creation is delayed, \
                     please verify that the provisioner is running and correctly registered.",
                    class.provisioner
                ),
            )),
        );
    }
    let volume_name = provisioner::volume_name(claim);
    if find_volume(view.volumes, &volume_name).is_some() {
        // Provisioned already; the volume's sync queues the claim for binding.
        return ClaimSync::Nothing;
    }
    match provisioner::volume_for(claim, class, selected) {
        Ok(volume) => ClaimSync::Provision(Box::new(volume)),
        Err(why) => failed(format!(
            "failed to provision volume with StorageClass {class_name:?}: {why}"
        )),
    }
}

/// The volume with `claimRef` set to the claim (kind, namespace, name, uid, resourceVersion)
/// and, if it had none, `pv.kubernetes.io/bound-by-controller: "yes"`
/// (`bindVolumeToClaim`); None if it already says all that.
pub fn bound_volume(
    volume: &PersistentVolume,
    claim: &PersistentVolumeClaim,
) -> Option<PersistentVolume> {
    let current = claim_ref(volume);
    let reference_ok = current.is_some_and(|r| {
        r.name == claim.metadata.name
            && r.namespace == claim.metadata.namespace
            && r.uid.is_some()
            && r.uid == claim.metadata.uid
    });
    if reference_ok {
        return None;
    }
    let mut updated = volume.clone();
    if current.is_none() {
        updated
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
    }
    let spec = updated.spec.get_or_insert_with(Default::default);
    spec.claim_ref = Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    });
    Some(updated)
}

/// The claim with `spec.volumeName` set and the `bind-completed` (and, if the controller
/// chose the volume, `bound-by-controller`) annotations (`bindClaimToVolume`); None if it
/// already has them.
pub fn bound_claim(
    claim: &PersistentVolumeClaim,
    volume: &PersistentVolume,
) -> Option<PersistentVolumeClaim> {
    let name = volume.metadata.name.as_deref().unwrap_or("");
    let current = volume_name(claim);
    let annotated = annotation(&claim.metadata, ANN_BIND_COMPLETED) == Some("yes");
    if current == name && annotated {
        return None;
    }
    let mut updated = claim.clone();
    let annotations = updated
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    if current != name {
        annotations.insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
    }
    annotations.insert(ANN_BIND_COMPLETED.into(), "yes".into());
    updated
        .spec
        .get_or_insert_with(Default::default)
        .volume_name = Some(name.to_string());
    Some(updated)
}

/// The claim status for `phase` (`updateClaimStatus`): with a volume, its capacity and access
/// modes; without, none. None if the claim already has it.
pub fn claim_status(
    claim: &PersistentVolumeClaim,
    phase: &str,
    volume: Option<&PersistentVolume>,
) -> Option<PersistentVolumeClaimStatus> {
    let current = claim.status.clone().unwrap_or_default();
    let mut desired = current.clone();
    desired.phase = Some(phase.to_string());
    let spec = volume.and_then(|v| v.spec.as_ref());
    desired.access_modes = spec.and_then(|s| s.access_modes.clone());
    desired.capacity = spec.and_then(|s| s.capacity.clone());
    let same_capacity = match (&current.capacity, &desired.capacity) {
        (Some(a), Some(b)) => {
            let bytes =
                |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                    m.get("storage").and_then(|q| binder::quantity_bytes(&q.0))
                };
            bytes(a) == bytes(b)
        }
        (a, b) => {
            a.as_ref().is_none_or(|m| m.is_empty()) && b.as_ref().is_none_or(|m| m.is_empty())
        }
    };
    let empty = |m: &Option<Vec<String>>| m.as_ref().is_none_or(|v| v.is_empty());
    let same_modes = current.access_modes == desired.access_modes
        || (empty(&current.access_modes) && empty(&desired.access_modes));
    if current.phase == desired.phase && same_capacity && same_modes {
        return None;
    }
    Some(desired)
}

/// The volume status for `phase` (reason and message cleared); None if it has it already.
pub fn volume_status(volume: &PersistentVolume, phase: &str) -> Option<PersistentVolumeStatus> {
    if volume_phase(volume) == phase {
        return None;
    }
    Some(PersistentVolumeStatus {
        phase: Some(phase.to_string()),
        ..PersistentVolumeStatus::default()
    })
}

/// What one sync of a volume should do besides its phase.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeThen {
    /// Nothing more.
    Nothing,
    /// Sync this claim (`namespace`, `name`): it finishes the binding.
    SyncClaim(String, String),
    /// Delete the volume object (reclaim policy `Delete` of a provisioned volume).
    Delete,
    /// Clear the binding the controller made (`claimRef` removed), or only its uid when the
    /// user pre-bound the volume (`unbindVolume`).
    Unbind,
    /// Record an event on the volume (and set phase `Failed` first, as the plan's phase says).
    Event(Event),
}

/// What one sync of a volume should do (`syncVolume` and `reclaimVolume`): the phase to set
/// first (None to keep it), then the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSync {
    /// The phase to write, if it changes.
    pub phase: Option<&'static str>,
    /// What follows.
    pub then: VolumeThen,
}

impl VolumeSync {
    fn phase(volume: &PersistentVolume, phase: &'static str, then: VolumeThen) -> VolumeSync {
        VolumeSync {
            phase: (volume_phase(volume) != phase).then_some(phase),
            then,
        }
    }
}

/// One sync of a volume (`syncVolume`). `claims` are the claims of the namespace its
/// `claimRef` names (or all: they are looked up by namespace and name).
pub fn sync_volume(volume: &PersistentVolume, claims: &[PersistentVolumeClaim]) -> VolumeSync {
    let nothing = VolumeSync {
        phase: None,
        then: VolumeThen::Nothing,
    };
    if volume.metadata.deletion_timestamp.is_some() {
        return nothing;
    }
    let Some(reference) = claim_ref(volume) else {
        return VolumeSync::phase(volume, "Available", VolumeThen::Nothing);
    };
    if reference.uid.as_deref().is_none_or(str::is_empty) {
        // Pre-bound by the user; the claim's sync binds it.
        return VolumeSync::phase(volume, "Available", VolumeThen::Nothing);
    }
    let claim = claims
        .iter()
        .find(|c| c.metadata.name == reference.name && c.metadata.namespace == reference.namespace);
    // A claim of the same name but another uid: the old one was deleted.
    let claim = claim.filter(|c| c.metadata.uid == reference.uid);
    let Some(claim) = claim else {
        return reclaim(volume);
    };
    let claim_volume = volume_name(claim);
    let name = volume.metadata.name.as_deref().unwrap_or("");
    if claim_volume.is_empty() {
        return VolumeSync {
            phase: None,
            then: VolumeThen::SyncClaim(
                claim.metadata.namespace.clone().unwrap_or_default(),
                claim.metadata.name.clone().unwrap_or_default(),
            ),
        };
    }
    if claim_volume == name {
        return VolumeSync::phase(volume, "Bound", VolumeThen::Nothing);
    }
    // Bound to a claim that is bound elsewhere.
    if provisioned(volume) && reclaim_policy(volume) == "Delete" {
        return reclaim(volume);
    }
    VolumeSync {
        phase: None,
        then: VolumeThen::Unbind,
    }
}

/// Whether a provisioner created the volume (`AnnDynamicallyProvisioned`).
pub fn provisioned(volume: &PersistentVolume) -> bool {
    annotation(&volume.metadata, ANN_PROVISIONED_BY).is_some()
}

fn reclaim_policy(volume: &PersistentVolume) -> &str {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

/// A volume whose claim is gone: `Released` (a `Failed` one stays `Failed`), then its reclaim
/// policy (`reclaimVolume`): `Retain` keeps it, `Delete` deletes a volume the built-in
/// provisioner made (others have no deleter here), `Recycle` has no recycler.
fn reclaim(volume: &PersistentVolume) -> VolumeSync {
    let phase = volume_phase(volume);
    let released = (phase != "Released" && phase != "Failed").then_some("Released");
    let failed = |reason, message: String| VolumeSync {
        phase: (phase != "Failed").then_some("Failed"),
        then: VolumeThen::Event(Event::warning(reason, message)),
    };
    let name = volume.metadata.name.as_deref().unwrap_or("");
    match reclaim_policy(volume) {
        "Retain" => VolumeSync {
            phase: released,
            then: VolumeThen::Nothing,
        },
        "Delete" => {
            if annotation(&volume.metadata, ANN_PROVISIONED_BY) == Some(provisioner::PROVISIONER) {
                VolumeSync {
                    phase: released,
                    then: VolumeThen::Delete,
                }
            } else if released.is_some() || phase == "Released" {
                failed(
                    "VolumeFailedDelete",
                    format!(
                        "error getting deleter volume plugin for volume {name:?}: no deletable volume plugin matched"
                    ),
                )
            } else {
                VolumeSync {
                    phase: None,
                    then: VolumeThen::Nothing,
                }
            }
        }
        "Recycle" if phase != "Failed" => failed(
            "VolumeFailedRecycle",
            "No recycler plugin found for the volume!".to_string(),
        ),
        "Recycle" => VolumeSync {
            phase: None,
            then: VolumeThen::Nothing,
        },
        other => failed(
            "VolumeUnknownReclaimPolicy",
            format!("Volume has unrecognized PersistentVolumeReclaimPolicy {other:?}"),
        ),
    }
}

/// The volume with its binding cleared (`unbindVolume`): the whole `claimRef` (and the
/// `bound-by-controller` annotation) when the controller made it, only the uid when the user
/// pre-bound it.
pub fn unbound_volume(volume: &PersistentVolume) -> PersistentVolume {
    let mut updated = volume.clone();
    let by_controller = annotation(&volume.metadata, ANN_BOUND_BY_CONTROLLER).is_some();
    if let Some(spec) = updated.spec.as_mut() {
        if by_controller {
            spec.claim_ref = None;
        } else if let Some(r) = spec.claim_ref.as_mut() {
            r.uid = None;
            r.resource_version = None;
        }
    }
    if by_controller && let Some(a) = updated.metadata.annotations.as_mut() {
        a.remove(ANN_BOUND_BY_CONTROLLER);
    }
    updated
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::super::binder::tests::{claim_ref as reference, pv, pvc};
    use super::*;

    fn class(name: &str, provisioner: &str, mode: &str) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            provisioner: provisioner.into(),
            volume_binding_mode: Some(mode.into()),
            reclaim_policy: Some("Delete".into()),
            ..StorageClass::default()
        }
    }

    fn view<'a>(volumes: &'a [PersistentVolume], classes: &'a [StorageClass]) -> View<'a> {
        View {
            volumes,
            classes,
            selected_node_labels: None,
        }
    }

    fn event_of(sync: &ClaimSync) -> Option<(&'static str, &str)> {
        match sync {
            ClaimSync::Phase(_, Some(e)) => Some((e.reason, e.message.as_str())),
            _ => None,
        }
    }

    fn annotate(meta: &mut ObjectMeta, key: &str, value: &str) {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
    }

    #[test]
    fn an_unbound_claim_binds_the_best_volume() {
        let claim = pvc("c", "500Mi", &["ReadWriteOnce"], Some("manual"));
        let volumes = [pv("v", "1Gi", &["ReadWriteOnce"], "manual")];
        assert_eq!(
            sync_claim(&claim, view(&volumes, &[])),
            ClaimSync::Bind("v".into())
        );
    }

    #[test]
    fn binding_writes_the_reference_annotations_and_statuses() {
        let mut claim = pvc("c", "500Mi", &["ReadWriteOnce"], Some("manual"));
        claim.metadata.resource_version = Some("7".into());
        let volume = pv("v", "1Gi", &["ReadWriteOnce"], "manual");
        let bound = bound_volume(&volume, &claim).unwrap();
        let r = bound.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
        assert_eq!(
            (
                r.kind.as_deref(),
                r.namespace.as_deref(),
                r.name.as_deref(),
                r.uid.as_deref(),
                r.resource_version.as_deref()
            ),
            (
                Some("PersistentVolumeClaim"),
                Some("default"),
                Some("c"),
                Some("uid-c"),
                Some("7")
            )
        );
        assert_eq!(
            annotation(&bound.metadata, ANN_BOUND_BY_CONTROLLER),
            Some("yes")
        );
        assert_eq!(bound_volume(&bound, &claim), None);
        assert_eq!(
            volume_status(&bound, "Bound").unwrap().phase.as_deref(),
            Some("Bound")
        );

        let claimed = bound_claim(&claim, &bound).unwrap();
        assert_eq!(
            claimed.spec.as_ref().unwrap().volume_name.as_deref(),
            Some("v")
        );
        assert_eq!(
            annotation(&claimed.metadata, ANN_BIND_COMPLETED),
            Some("yes")
        );
        assert_eq!(
            annotation(&claimed.metadata, ANN_BOUND_BY_CONTROLLER),
            Some("yes")
        );
        assert_eq!(bound_claim(&claimed, &bound), None);
        let status = claim_status(&claimed, "Bound", Some(&bound)).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Bound"));
        assert_eq!(status.capacity.as_ref().unwrap()["storage"].0, "1Gi");
        assert_eq!(
            status.access_modes.as_deref(),
            Some(&["ReadWriteOnce".to_string()][..])
        );
        let mut done = claimed.clone();
        done.status = Some(status);
        assert_eq!(claim_status(&done, "Bound", Some(&bound)), None);
    }

    #[test]
    fn a_user_prebound_volume_keeps_no_controller_annotation() {
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("manual"));
        let mut volume = pv("v", "1Gi", &["ReadWriteOnce"], "manual");
        volume.spec.as_mut().unwrap().claim_ref = Some(reference(&claim, false));
        let bound = bound_volume(&volume, &claim).unwrap();
        assert_eq!(annotation(&bound.metadata, ANN_BOUND_BY_CONTROLLER), None);
        assert_eq!(sync_volume(&volume, &[claim]).phase, Some("Available"));
    }

    #[test]
    fn no_match_without_class_fails_binding_as_upstream() {
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some(""));
        let sync = sync_claim(&claim, view(&[], &[]));
        assert_eq!(
            event_of(&sync),
            Some((
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set"
            ))
        );
    }

    #[test]
    fn wait_for_first_consumer_waits_for_a_node_then_provisions() {
        let classes = [class(
            "local-path",
            provisioner::PROVISIONER,
            WAIT_FOR_FIRST_CONSUMER,
        )];
        let mut claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("local-path"));
        let sync = sync_claim(&claim, view(&[], &classes));
        assert_eq!(
            event_of(&sync),
            Some((
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding"
            ))
        );
        annotate(&mut claim.metadata, ANN_SELECTED_NODE, "node-1");
        let ClaimSync::Provision(volume) = sync_claim(&claim, view(&[], &classes)) else {
            panic!("expected a provision");
        };
        assert_eq!(volume.metadata.name.as_deref(), Some("pvc-uid-c"));
        // Once the volume exists, the claim waits for its sync to bind it (pre-bound wins).
        let volumes = [*volume];
        assert_eq!(
            sync_claim(&claim, view(&volumes, &classes)),
            ClaimSync::Bind("pvc-uid-c".into())
        );
    }

    #[test]
    fn immediate_local_path_refuses_without_a_node() {
        let classes = [class("now", provisioner::PROVISIONER, "Immediate")];
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("now"));
        let sync = sync_claim(&claim, view(&[], &classes));
        assert_eq!(
            event_of(&sync),
            Some((
                "ProvisioningFailed",
                "failed to provision volume with StorageClass \"now\": configuration error, no node was specified"
            ))
        );
    }

    #[test]
    fn missing_and_external_classes() {
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("gone"));
        assert_eq!(
            event_of(&sync_claim(&claim, view(&[], &[]))),
            Some((
                "ProvisioningFailed",
                "storageclass.storage.k8s.io \"gone\" not found"
            ))
        );
        let classes = [class("gone", "ebs.csi.aws.com", "Immediate")];
        assert_eq!(
            event_of(&sync_claim(&claim, view(&[], &classes))).map(|e| e.0),
            Some("ExternalProvisioning")
        );
    }

    #[test]
    fn bound_claims_are_checked_and_lost_ones_reported() {
        let mut claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("manual"));
        annotate(&mut claim.metadata, ANN_BIND_COMPLETED, "yes");
        claim.spec.as_mut().unwrap().volume_name = Some("v".into());
        assert_eq!(
            event_of(&sync_claim(&claim, view(&[], &[]))),
            Some((
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
            ))
        );
        let other = pvc("other", "1Gi", &[], None);
        let mut volume = pv("v", "1Gi", &["ReadWriteOnce"], "manual");
        volume.spec.as_mut().unwrap().claim_ref = Some(reference(&other, true));
        let volumes = [volume.clone()];
        assert_eq!(
            event_of(&sync_claim(&claim, view(&volumes, &[]))).map(|e| e.0),
            Some("ClaimMisbound")
        );
        volume.spec.as_mut().unwrap().claim_ref = None;
        let volumes = [volume];
        assert_eq!(
            sync_claim(&claim, view(&volumes, &[])),
            ClaimSync::Bind("v".into())
        );
    }

    #[test]
    fn a_requested_volume_is_bound_or_explained() {
        let mut claim = pvc("c", "5Gi", &["ReadWriteOnce"], Some("manual"));
        claim.spec.as_mut().unwrap().volume_name = Some("v".into());
        let volumes = [pv("v", "1Gi", &["ReadWriteOnce"], "manual")];
        assert_eq!(
            event_of(&sync_claim(&claim, view(&volumes, &[]))),
            Some((
                "VolumeMismatch",
                "Cannot bind to requested volume \"v\": requested PV is too small"
            ))
        );
        let volumes = [pv("v", "10Gi", &["ReadWriteOnce"], "manual")];
        assert_eq!(
            sync_claim(&claim, view(&volumes, &[])),
            ClaimSync::Bind("v".into())
        );
    }

    #[test]
    fn volumes_go_available_bound_released_and_are_reclaimed() {
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("manual"));
        let mut volume = pv("v", "1Gi", &["ReadWriteOnce"], "manual");
        assert_eq!(sync_volume(&volume, &[]).phase, Some("Available"));
        volume.spec.as_mut().unwrap().claim_ref = Some(reference(&claim, true));
        assert_eq!(
            sync_volume(&volume, std::slice::from_ref(&claim)).then,
            VolumeThen::SyncClaim("default".into(), "c".into())
        );
        let mut bound = claim.clone();
        bound.spec.as_mut().unwrap().volume_name = Some("v".into());
        assert_eq!(
            sync_volume(&volume, std::slice::from_ref(&bound)).phase,
            Some("Bound")
        );
        // The claim is gone: Retain keeps it Released.
        let released = sync_volume(&volume, &[]);
        assert_eq!(
            released,
            VolumeSync {
                phase: Some("Released"),
                then: VolumeThen::Nothing
            }
        );
        volume.status = Some(PersistentVolumeStatus {
            phase: Some("Released".into()),
            ..Default::default()
        });
        assert_eq!(
            sync_volume(&volume, &[]),
            VolumeSync {
                phase: None,
                then: VolumeThen::Nothing
            }
        );
        // A new claim of the same name is another claim.
        let mut again = claim.clone();
        again.metadata.uid = Some("new".into());
        assert_eq!(sync_volume(&volume, &[again]).then, VolumeThen::Nothing);
    }

    #[test]
    fn provisioned_volumes_with_delete_are_deleted_others_fail() {
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("local-path"));
        let mut volume = pv("v", "1Gi", &["ReadWriteOnce"], "local-path");
        volume.spec.as_mut().unwrap().claim_ref = Some(reference(&claim, true));
        volume
            .spec
            .as_mut()
            .unwrap()
            .persistent_volume_reclaim_policy = Some("Delete".into());
        volume.status = Some(PersistentVolumeStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        });
        let static_delete = sync_volume(&volume, &[]);
        assert_eq!(static_delete.phase, Some("Failed"));
        assert!(
            matches!(static_delete.then, VolumeThen::Event(ref e) if e.reason == "VolumeFailedDelete")
        );
        annotate(
            &mut volume.metadata,
            ANN_PROVISIONED_BY,
            provisioner::PROVISIONER,
        );
        assert_eq!(
            sync_volume(&volume, &[]),
            VolumeSync {
                phase: Some("Released"),
                then: VolumeThen::Delete
            }
        );
        volume.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(sync_volume(&volume, &[]).then, VolumeThen::Nothing);
    }

    #[test]
    fn a_volume_bound_by_the_controller_to_a_claim_bound_elsewhere_is_unbound() {
        let mut claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("manual"));
        claim.spec.as_mut().unwrap().volume_name = Some("elsewhere".into());
        let mut volume = pv("v", "1Gi", &["ReadWriteOnce"], "manual");
        volume.spec.as_mut().unwrap().claim_ref = Some(reference(&claim, true));
        annotate(&mut volume.metadata, ANN_BOUND_BY_CONTROLLER, "yes");
        assert_eq!(
            sync_volume(&volume, std::slice::from_ref(&claim)).then,
            VolumeThen::Unbind
        );
        let unbound = unbound_volume(&volume);
        assert!(unbound.spec.as_ref().unwrap().claim_ref.is_none());
        volume.metadata.annotations = None;
        let user = unbound_volume(&volume);
        let r = user.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
        assert_eq!((r.name.as_deref(), r.uid.as_deref()), (Some("c"), None));
    }
}
