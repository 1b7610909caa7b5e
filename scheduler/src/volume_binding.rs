//! kube-scheduler's VolumeBinding plugin, the part the local-path provisioner needs:
//! PreFilter (a pod's claims exist; none is unbound with an `Immediate` class), Filter (a
//! bound claim's volume allows the node by its node affinity; an unbound claim of a
//! `WaitForFirstConsumer` class can be provisioned there, or — for classes that are never
//! provisioned — some available matching volume allows the node), and PreBind (the chosen
//! node goes on each such claim as `volume.kubernetes.io/selected-node`, then the pod waits,
//! bounded, until they are bound). Everything but [`pre_bind`] is pure; reasons are
//! upstream's, word for word.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::filters::{Unfit, term_matches};
use crate::node_info::NodeInfo;
use crate::resources::parse_quantity;

/// The plugin's name, as statuses carry it.
pub const PLUGIN: &str = "VolumeBinding";
/// A bound claim's volume does not allow the node (`ErrReasonNodeConflict`).
pub const REASON_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
/// No available volume for an unbound claim fits the node (`ErrReasonBindConflict`).
pub const REASON_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
/// A bound claim names a volume that does not exist (`ErrReasonPVNotExist`).
pub const REASON_PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
/// PreFilter: a claim of an `Immediate` class is not bound yet.
pub const REASON_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
/// The claim annotation PreBind sets (`AnnSelectedNode`).
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The provisioner of classes whose volumes are only ever created by hand.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
/// How long PreBind waits for the claims to be bound (upstream's `bindTimeoutSeconds` is 600;
/// the local provisioner binds in well under a second).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// What the plugin reads: the cluster's claims, volumes and classes.
#[derive(Debug, Clone, Copy)]
pub struct VolumeView<'a> {
    /// PersistentVolumeClaims (of every namespace; looked up by namespace and name).
    pub claims: &'a [PersistentVolumeClaim],
    /// PersistentVolumes.
    pub volumes: &'a [PersistentVolume],
    /// StorageClasses.
    pub classes: &'a [StorageClass],
}

/// A pod's claims as PreFilter sorts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    /// Bound claims: (claim name, volume name).
    pub bound: Vec<(String, String)>,
    /// Unbound claims of a `WaitForFirstConsumer` class: their names.
    pub delayed: Vec<String>,
}

impl PodVolumes {
    /// Whether the pod has no claims to check.
    pub fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.delayed.is_empty()
    }
}

fn unfit(reason: String, detail: String) -> Unfit {
    Unfit {
        plugin: PLUGIN,
        reasons: vec![reason],
        unresolvable: true,
        details: vec![detail],
    }
}

/// The claim names the pod's volumes use (`volumes[].persistentVolumeClaim.claimName`), in
/// order, each once.
pub fn claim_names(pod: &Pod) -> Vec<String> {
    let mut seen = BTreeSet::new();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .filter(|name| seen.insert(name.clone()))
        .collect()
}

fn find_claim<'a>(
    view: &VolumeView<'a>,
    namespace: &str,
    name: &str,
) -> Option<&'a PersistentVolumeClaim> {
    view.claims.iter().find(|c| {
        c.metadata.namespace.as_deref() == Some(namespace)
            && c.metadata.name.as_deref() == Some(name)
    })
}

fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn class_named<'a>(view: &VolumeView<'a>, name: &str) -> Option<&'a StorageClass> {
    view.classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
}

fn delays_binding(view: &VolumeView<'_>, claim: &PersistentVolumeClaim) -> bool {
    let class = claim_class(claim);
    !class.is_empty()
        && class_named(view, class)
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
}

/// PreFilter: every claim exists and is not being deleted, and none is unbound with an
/// `Immediate` class; the claims sorted into bound and delayed.
pub fn pre_filter(pod: &Pod, view: &VolumeView<'_>) -> Result<PodVolumes, Unfit> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = PodVolumes::default();
    for name in claim_names(pod) {
        let Some(claim) = find_claim(view, namespace, &name) else {
            return Err(unfit(
                format!("persistentvolumeclaim {name:?} not found"),
                format!("claim {namespace}/{name} does not exist"),
            ));
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(unfit(
                format!("persistentvolumeclaim {name:?} is being deleted"),
                format!("claim {namespace}/{name} is being deleted"),
            ));
        }
        let volume = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .unwrap_or("");
        if !volume.is_empty() {
            out.bound.push((name, volume.to_string()));
        } else if delays_binding(view, claim) {
            out.delayed.push(name);
        } else {
            return Err(unfit(
                REASON_UNBOUND_IMMEDIATE.into(),
                format!("claim {namespace}/{name} is unbound and its class binds immediately"),
            ));
        }
    }
    Ok(out)
}

fn volume_fits(volume: &PersistentVolume, node: &NodeInfo) -> bool {
    match volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    {
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

fn bytes(q: Option<&Quantity>) -> Option<i64> {
    q.and_then(|q| parse_quantity(&q.0, 1))
}

/// Whether an available, unclaimed static volume matches the claim on this node (class,
/// volume mode, access modes, selector-free claims only, capacity), not already `taken`.
fn static_match<'a>(
    claim: &PersistentVolumeClaim,
    view: &VolumeView<'a>,
    node: &NodeInfo,
    taken: &BTreeSet<&'a str>,
) -> Option<&'a str> {
    let spec = claim.spec.as_ref()?;
    let requested = bytes(
        spec.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    )
    .unwrap_or(0);
    let modes = spec.access_modes.as_deref().unwrap_or_default();
    let mode = |m: Option<&String>| m.map_or("Filesystem", String::as_str).to_string();
    let class = claim_class(claim);
    let mut best: Option<(&str, i64)> = None;
    for volume in view.volumes {
        let Some(name) = volume.metadata.name.as_deref() else {
            continue;
        };
        let Some(vspec) = volume.spec.as_ref() else {
            continue;
        };
        let bound_to_claim = vspec.claim_ref.as_ref().is_some_and(|r| {
            r.name == claim.metadata.name && r.namespace == claim.metadata.namespace
        });
        if (vspec.claim_ref.is_some() && !bound_to_claim)
            || taken.contains(name)
            || volume.metadata.deletion_timestamp.is_some()
            || vspec.storage_class_name.as_deref().unwrap_or("") != class
            || mode(vspec.volume_mode.as_ref()) != mode(spec.volume_mode.as_ref())
            || !modes
                .iter()
                .all(|m| vspec.access_modes.iter().flatten().any(|o| o == m))
            || !volume_fits(volume, node)
        {
            continue;
        }
        let Some(capacity) = bytes(vspec.capacity.as_ref().and_then(|c| c.get("storage"))) else {
            continue;
        };
        if capacity < requested {
            continue;
        }
        if bound_to_claim {
            return Some(name);
        }
        if best.is_none_or(|(_, size)| capacity < size) {
            best = Some((name, capacity));
        }
    }
    best.map(|(name, _)| name)
}

/// Filter: the node suits every claim PreFilter sorted.
pub fn filter(
    pod_volumes: &PodVolumes,
    view: &VolumeView<'_>,
    pod: &Pod,
    node: &NodeInfo,
) -> Result<(), Unfit> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    for (claim, volume) in &pod_volumes.bound {
        let Some(pv) = view
            .volumes
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(volume.as_str()))
        else {
            return Err(unfit(
                REASON_PV_NOT_EXIST.into(),
                format!(
                    "claim {namespace}/{claim} is bound to volume {volume}, which does not exist"
                ),
            ));
        };
        if !volume_fits(pv, node) {
            return Err(unfit(
                REASON_NODE_CONFLICT.into(),
                format!(
                    "volume {volume} of claim {namespace}/{claim} is pinned away from this node"
                ),
            ));
        }
    }
    let mut taken = BTreeSet::new();
    for name in &pod_volumes.delayed {
        let Some(claim) = find_claim(view, namespace, name) else {
            continue;
        };
        if let Some(volume) = static_match(claim, view, node, &taken) {
            taken.insert(volume);
            continue;
        }
        let provisioner = class_named(view, claim_class(claim)).map(|c| c.provisioner.as_str());
        if provisioner.is_some_and(|p| p != NO_PROVISIONER) {
            // Provisionable here.
            continue;
        }
        return Err(unfit(
            REASON_BIND_CONFLICT.into(),
            format!("no available volume for claim {namespace}/{name} fits this node"),
        ));
    }
    Ok(())
}

/// The claims PreBind annotates with the node: the delayed ones not yet naming it.
pub fn claims_to_annotate(
    pod_volumes: &PodVolumes,
    view: &VolumeView<'_>,
    namespace: &str,
    node: &str,
) -> Vec<String> {
    pod_volumes
        .delayed
        .iter()
        .filter(|name| {
            find_claim(view, namespace, name).is_some_and(|c| {
                let annotations: Option<&BTreeMap<String, String>> =
                    c.metadata.annotations.as_ref();
                annotations
                    .and_then(|a| a.get(ANN_SELECTED_NODE))
                    .map(String::as_str)
                    != Some(node)
            })
        })
        .cloned()
        .collect()
}

/// Whether every named claim is bound (`spec.volumeName` set and phase `Bound`).
pub fn all_bound(claims: &[PersistentVolumeClaim]) -> bool {
    claims.iter().all(|c| {
        c.spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty())
            && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    })
}

/// PreBind: sets `volume.kubernetes.io/selected-node: <node>` on each delayed claim of the
/// pod, then polls until all of them are bound, at most `timeout`. The error is the message
/// to report (upstream's `binding volumes: ...`).
pub async fn pre_bind(
    client: kube::Client,
    namespace: &str,
    claims: &[String],
    node: &str,
    timeout: Duration,
) -> Result<(), String> {
    use kube::api::{Patch, PatchParams};
    if claims.is_empty() {
        return Ok(());
    }
    let api = kube::Api::<PersistentVolumeClaim>::namespaced(client, namespace);
    for name in claims {
        let patch = serde_json::json!({"metadata": {"annotations": {ANN_SELECTED_NODE: node}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| format!("binding volumes: {e}"))?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut current = Vec::new();
        for name in claims {
            match api.get(name).await {
                Ok(claim) => current.push(claim),
                Err(e) => return Err(format!("binding volumes: {e}")),
            }
        }
        if all_bound(&current) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("binding volumes: context deadline exceeded".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimSpec,
        PersistentVolumeClaimStatus, PersistentVolumeClaimVolumeSource, PersistentVolumeSpec,
        PodSpec, Volume, VolumeNodeAffinity, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(claims: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                volumes: Some(
                    claims
                        .iter()
                        .map(|c| Volume {
                            name: format!("v-{c}"),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: c.to_string(),
                                read_only: None,
                            }),
                            ..Volume::default()
                        })
                        .collect(),
                ),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn claim(name: &str, class: &str, volume: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some(class.into()),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                volume_name: volume.map(String::from),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }
    }

    fn class(name: &str, provisioner: &str, mode: &str) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            provisioner: provisioner.into(),
            volume_binding_mode: Some(mode.into()),
            ..StorageClass::default()
        }
    }

    fn volume(name: &str, class: &str, on: Option<&str>) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                storage_class_name: Some(class.into()),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                capacity: Some(BTreeMap::from([("storage".into(), Quantity("2Gi".into()))])),
                node_affinity: on.map(|node| VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: Some(vec![node.into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                }),
                ..PersistentVolumeSpec::default()
            }),
            status: None,
        }
    }

    fn node(name: &str) -> NodeInfo {
        NodeInfo::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".to_string(),
                    name.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..Node::default()
        })
    }

    fn reasons(result: Result<impl std::fmt::Debug, Unfit>) -> String {
        result.unwrap_err().reasons.join("; ")
    }

    #[test]
    fn missing_and_immediate_claims_fail_prefilter() {
        let classes = [class("fast", "ebs", "Immediate")];
        let claims = [claim("now", "fast", None)];
        let view = VolumeView {
            claims: &claims,
            volumes: &[],
            classes: &classes,
        };
        assert_eq!(
            reasons(pre_filter(&pod(&["gone"]), &view)),
            "persistentvolumeclaim \"gone\" not found"
        );
        assert_eq!(
            reasons(pre_filter(&pod(&["now"]), &view)),
            REASON_UNBOUND_IMMEDIATE
        );
        assert!(pre_filter(&pod(&[]), &view).unwrap().is_empty());
    }

    #[test]
    fn bound_claims_follow_their_volumes_node_affinity() {
        let claims = [claim("data", "local-path", Some("pv-a"))];
        let volumes = [volume("pv-a", "local-path", Some("a"))];
        let view = VolumeView {
            claims: &claims,
            volumes: &volumes,
            classes: &[],
        };
        let p = pod(&["data"]);
        let sorted = pre_filter(&p, &view).unwrap();
        assert!(filter(&sorted, &view, &p, &node("a")).is_ok());
        assert_eq!(
            reasons(filter(&sorted, &view, &p, &node("b"))),
            REASON_NODE_CONFLICT
        );
        let empty = VolumeView {
            claims: &claims,
            volumes: &[],
            classes: &[],
        };
        assert_eq!(
            reasons(filter(&sorted, &empty, &p, &node("a"))),
            REASON_PV_NOT_EXIST
        );
    }

    #[test]
    fn delayed_claims_are_provisionable_anywhere_or_need_a_static_volume() {
        let classes = [
            class("local-path", "skiff.io/local-path", "WaitForFirstConsumer"),
            class("local", NO_PROVISIONER, "WaitForFirstConsumer"),
        ];
        let claims = [
            claim("dyn", "local-path", None),
            claim("static", "local", None),
        ];
        let volumes = [volume("pv-local", "local", Some("a"))];
        let view = VolumeView {
            claims: &claims,
            volumes: &volumes,
            classes: &classes,
        };
        let dynamic = pod(&["dyn"]);
        let sorted = pre_filter(&dynamic, &view).unwrap();
        assert_eq!(sorted.delayed, ["dyn"]);
        assert!(filter(&sorted, &view, &dynamic, &node("z")).is_ok());
        let fixed = pod(&["static"]);
        let sorted = pre_filter(&fixed, &view).unwrap();
        assert!(filter(&sorted, &view, &fixed, &node("a")).is_ok());
        assert_eq!(
            reasons(filter(&sorted, &view, &fixed, &node("b"))),
            REASON_BIND_CONFLICT
        );
    }

    #[test]
    fn prebind_annotates_what_is_not_annotated_and_waits_for_bound() {
        let classes = [class(
            "local-path",
            "skiff.io/local-path",
            "WaitForFirstConsumer",
        )];
        let mut annotated = claim("b", "local-path", None);
        annotated.metadata.annotations = Some(BTreeMap::from([(
            ANN_SELECTED_NODE.to_string(),
            "n".to_string(),
        )]));
        let claims = [claim("a", "local-path", None), annotated];
        let view = VolumeView {
            claims: &claims,
            volumes: &[],
            classes: &classes,
        };
        let sorted = pre_filter(&pod(&["a", "b"]), &view).unwrap();
        assert_eq!(claims_to_annotate(&sorted, &view, "default", "n"), ["a"]);
        assert_eq!(
            claims_to_annotate(&sorted, &view, "default", "m"),
            ["a", "b"]
        );
        assert!(!all_bound(&claims));
        let mut bound = claim("a", "local-path", Some("pv"));
        bound.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..PersistentVolumeClaimStatus::default()
        });
        assert!(all_bound(&[bound]));
    }

    #[test]
    fn claim_names_are_listed_once() {
        assert_eq!(claim_names(&pod(&["a", "b", "a"])), ["a", "b"]);
    }
}
