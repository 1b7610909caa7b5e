//! The built-in dynamic provisioner `skiff.io/local-path`, after k3s's local-path-provisioner,
//! without any IO: the volume a claim of such a class gets (a `hostPath` directory on the node
//! the scheduler chose, pinned there by node affinity, pre-bound to the claim) and the
//! default `local-path` StorageClass the controller manager makes sure exists.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::binder::HOSTNAME_LABEL;
use super::plan::{ANN_BOUND_BY_CONTROLLER, ANN_PROVISIONED_BY, WAIT_FOR_FIRST_CONSUMER};

/// The provisioner's name, as classes name it.
pub const PROVISIONER: &str = "skiff.io/local-path";
/// The default class's name (as k3s ships it).
pub const DEFAULT_CLASS_NAME: &str = "local-path";
/// The class parameter naming the directory volumes are created under.
pub const NODE_PATH_PARAMETER: &str = "nodePath";
/// Where volumes go when the class does not say.
pub const DEFAULT_NODE_PATH: &str = "/var/lib/skiff/storage";
/// The annotation that makes a class the default one.
pub const IS_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// The name of the volume provisioned for a claim: `pvc-<claim uid>`.
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or_default())
}

/// The volume for `claim` of `class` on the node `selected` (the claim's
/// `volume.kubernetes.io/selected-node`): `pvc-<uid>`, a `hostPath` directory
/// `<nodePath>/pvc-<uid>_<namespace>_<name>` (`DirectoryOrCreate`), the claim's request as
/// capacity, its access modes and volume mode, the class's reclaim policy and name, node
/// affinity to the node's hostname, `pv.kubernetes.io/provisioned-by`, and a `claimRef` to the
/// claim (uid included) so the binder binds exactly this pair.
///
/// Errors (upstream local-path-provisioner's wording) when no node was chosen — an
/// `Immediate` class cannot place a local volume — or the claim lacks what the volume needs.
pub fn volume_for(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    selected: Option<&str>,
) -> Result<PersistentVolume, String> {
    let node = selected
        .filter(|n| !n.is_empty())
        .ok_or("configuration error, no node was specified")?;
    let (Some(uid), Some(name), Some(namespace)) = (
        claim.metadata.uid.as_deref(),
        claim.metadata.name.as_deref(),
        claim.metadata.namespace.as_deref(),
    ) else {
        return Err("claim has no uid, name or namespace".into());
    };
    let spec = claim.spec.as_ref();
    let request = spec
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .ok_or("claim.Spec.Resources.Requests[storage] is required")?;
    if spec.and_then(|s| s.selector.as_ref()).is_some() {
        return Err("claim.Spec.Selector is not supported".into());
    }
    let root = class
        .parameters
        .as_ref()
        .and_then(|p| p.get(NODE_PATH_PARAMETER))
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_NODE_PATH);
    let volume = volume_name(claim);
    Ok(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume.clone()),
            annotations: Some(BTreeMap::from([
                (ANN_PROVISIONED_BY.to_string(), PROVISIONER.to_string()),
                (ANN_BOUND_BY_CONTROLLER.to_string(), "yes".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(request.0.clone()),
            )])),
            access_modes: spec.and_then(|s| s.access_modes.clone()),
            volume_mode: spec.and_then(|s| s.volume_mode.clone()),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: class.metadata.name.clone(),
            host_path: Some(HostPathVolumeSource {
                path: format!("{root}/{volume}_{namespace}_{name}"),
                type_: Some("DirectoryOrCreate".into()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![node.to_string()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                resource_version: claim.metadata.resource_version.clone(),
                field_path: None,
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

/// The `local-path` StorageClass k3s ships: this provisioner, `WaitForFirstConsumer`,
/// `Delete`, annotated as the default.
pub fn default_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(DEFAULT_CLASS_NAME.into()),
            annotations: Some(BTreeMap::from([(
                IS_DEFAULT_CLASS_ANNOTATION.to_string(),
                "true".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some(WAIT_FOR_FIRST_CONSUMER.into()),
        ..StorageClass::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::binder::tests::pvc;
    use super::*;

    #[test]
    fn a_claim_gets_a_host_path_volume_on_its_node() {
        let mut claim = pvc("data", "2Gi", &["ReadWriteOnce"], Some("local-path"));
        claim.metadata.resource_version = Some("9".into());
        let class = default_class();
        let pv = volume_for(&claim, &class, Some("node-1")).unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-uid-data"));
        assert_eq!(
            pv.metadata.annotations.as_ref().unwrap()[ANN_PROVISIONED_BY],
            PROVISIONER
        );
        let spec = pv.spec.unwrap();
        let host_path = spec.host_path.unwrap();
        assert_eq!(
            host_path.path,
            "/var/lib/skiff/storage/pvc-uid-data_default_data"
        );
        assert_eq!(host_path.type_.as_deref(), Some("DirectoryOrCreate"));
        assert_eq!(spec.capacity.unwrap()["storage"].0, "2Gi");
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteOnce"]);
        let term = &spec
            .node_affinity
            .unwrap()
            .required
            .unwrap()
            .node_selector_terms[0];
        let req = &term.match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (
                req.key.as_str(),
                req.operator.as_str(),
                req.values.as_deref()
            ),
            (HOSTNAME_LABEL, "In", Some(&["node-1".to_string()][..]))
        );
        let r = spec.claim_ref.unwrap();
        assert_eq!(
            (
                r.name.as_deref(),
                r.uid.as_deref(),
                r.resource_version.as_deref()
            ),
            (Some("data"), Some("uid-data"), Some("9"))
        );
    }

    #[test]
    fn the_class_picks_the_root_and_the_policy() {
        let claim = pvc("data", "1Gi", &["ReadWriteOnce"], Some("mine"));
        let mut class = default_class();
        class.metadata.name = Some("mine".into());
        class.reclaim_policy = Some("Retain".into());
        class.parameters = Some(BTreeMap::from([(
            NODE_PATH_PARAMETER.to_string(),
            "/mnt/disks/".to_string(),
        )]));
        let spec = volume_for(&claim, &class, Some("n")).unwrap().spec.unwrap();
        assert_eq!(
            spec.host_path.unwrap().path,
            "/mnt/disks/pvc-uid-data_default_data"
        );
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
    }

    #[test]
    fn no_node_no_volume() {
        let claim = pvc("data", "1Gi", &["ReadWriteOnce"], None);
        assert_eq!(
            volume_for(&claim, &default_class(), None).unwrap_err(),
            "configuration error, no node was specified"
        );
        let mut no_request = claim.clone();
        no_request.spec.as_mut().unwrap().resources = None;
        assert!(volume_for(&no_request, &default_class(), Some("n")).is_err());
    }

    #[test]
    fn the_default_class_is_k3s_local_path() {
        let class = default_class();
        assert_eq!(class.metadata.name.as_deref(), Some("local-path"));
        assert_eq!(class.provisioner, PROVISIONER);
        assert_eq!(
            class.volume_binding_mode.as_deref(),
            Some("WaitForFirstConsumer")
        );
        assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
        assert_eq!(
            class.metadata.annotations.unwrap()[IS_DEFAULT_CLASS_ANNOTATION],
            "true"
        );
    }
}
