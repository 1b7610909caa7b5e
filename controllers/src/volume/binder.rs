//! Which PersistentVolume an unbound claim gets, as kube-controller-manager's PV controller
//! (`findMatchingVolume`) chooses it, without any IO: a volume pre-bound to the claim by its
//! `claimRef` wins; otherwise the smallest unclaimed volume whose capacity covers the request,
//! whose access modes include the claim's, of the same class and volume mode, whose labels the
//! claim's selector matches (and, once a node is chosen, whose node affinity allows it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim,
};

use crate::pods::{labels, selector_matches};

/// The node label the local-path provisioner pins its volumes to.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A storage quantity in bytes (`resource.Quantity`: plain or with a decimal exponent,
/// binary (`Ki`..`Ei`) or decimal (`k`..`E`, `m`) suffixes), rounded up to whole bytes.
/// None for text that is not a quantity.
pub fn quantity_bytes(text: &str) -> Option<i128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    // (numerator, denominator) of the suffix's multiplier.
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok().filter(|e| *e <= 30)?;
            (10i128.checked_pow(exp)?, 1)
        }
        _ => return None,
    };
    let negative = number.starts_with('-');
    let digits = number.trim_start_matches(['+', '-']);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole
        .bytes()
        .chain(fraction.bytes())
        .all(|b| b.is_ascii_digit())
        || fraction.len() > 18
    {
        return None;
    }
    let scale = 10i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction: i128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let scaled = whole.checked_mul(scale)?.checked_add(fraction)?;
    let numerator = scaled.checked_mul(mul)?;
    let denominator = scale.checked_mul(div)?;
    let bytes = numerator.checked_add(denominator - 1)? / denominator;
    Some(if negative { -bytes } else { bytes })
}

/// The claim's requested storage in bytes (0 if it states none or an unreadable one).
pub fn requested_bytes(claim: &PersistentVolumeClaim) -> i128 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity_bytes(&q.0))
        .unwrap_or(0)
}

/// The volume's storage capacity in bytes, if it states one.
pub fn capacity_bytes(volume: &PersistentVolume) -> Option<i128> {
    volume
        .spec
        .as_ref()?
        .capacity
        .as_ref()?
        .get("storage")
        .and_then(|q| quantity_bytes(&q.0))
}

/// The claim's class (`GetPersistentVolumeClaimClass`): `spec.storageClassName`, else the
/// beta annotation, else "" (no class).
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    if let Some(class) = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
    {
        return class;
    }
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// The volume's class (`GetPersistentVolumeClass`), "" for none.
pub fn volume_class(volume: &PersistentVolume) -> &str {
    if let Some(class) = volume
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
    {
        return class;
    }
    volume
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// A volume mode, `Filesystem` when unset.
fn mode(mode: Option<&String>) -> &str {
    mode.map_or("Filesystem", String::as_str)
}

/// Whether the volume's `claimRef` names this claim (`IsVolumeBoundToClaim`): same name and
/// namespace, and no uid yet (pre-bound) or the claim's uid.
pub fn is_bound_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(reference) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    reference.name == claim.metadata.name
        && reference.namespace == claim.metadata.namespace
        && reference
            .uid
            .as_deref()
            .is_none_or(|uid| uid.is_empty() || Some(uid) == claim.metadata.uid.as_deref())
}

/// Whether one node-selector requirement holds for `labels` (In, NotIn, Exists,
/// DoesNotExist, Gt, Lt).
fn requirement_holds(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    let number = |v: &str| v.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(|v| number(v)),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Whether a required node selector admits the node `name` with `labels` (any term; a term
/// holds when all its label expressions and `metadata.name` field expressions hold; an empty
/// term admits nothing).
pub fn node_selector_admits(
    selector: &NodeSelector,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let fields = BTreeMap::from([("metadata.name".to_string(), name.to_string())]);
    selector.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let field_expressions = term.match_fields.as_deref().unwrap_or_default();
        (!expressions.is_empty() || !field_expressions.is_empty())
            && expressions.iter().all(|r| requirement_holds(r, labels))
            && field_expressions
                .iter()
                .all(|r| requirement_holds(r, &fields))
    })
}

/// Whether the volume's `nodeAffinity.required` (if any) admits the node.
pub fn volume_fits_node(
    volume: &PersistentVolume,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    match volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    {
        Some(selector) => node_selector_admits(selector, name, labels),
        None => true,
    }
}

/// A node chosen for a claim (its `volume.kubernetes.io/selected-node`), with its labels.
#[derive(Debug, Clone, Copy)]
pub struct ChosenNode<'a> {
    /// The node's name.
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// The volume `claim` should bind to (`findBestMatchForClaim`), if any.
///
/// A volume pre-bound to the claim wins (unless its node affinity excludes the chosen node:
/// then nothing matches). A claim of a delayed-binding class without a chosen node gets only
/// such a pre-bound volume: the scheduler picks a node first. Otherwise, among volumes
/// without a `claimRef` and not being deleted, of the claim's class and volume mode, offering
/// every access mode the claim asks for, matched by its selector, fitting the chosen node and
/// holding at least the request, the smallest (ties: the first name).
pub fn find_best_match<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [PersistentVolume],
    delay_binding: bool,
    node: Option<ChosenNode<'_>>,
) -> Option<&'a PersistentVolume> {
    let spec = claim.spec.as_ref();
    let requested = requested_bytes(claim);
    let wanted_modes = spec
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or_default();
    let claim_mode = mode(spec.and_then(|s| s.volume_mode.as_ref()));
    let class = claim_class(claim);
    let selector = spec.and_then(|s| s.selector.as_ref());
    let fits_node =
        |v: &PersistentVolume| node.is_none_or(|n| volume_fits_node(v, n.name, n.labels));
    let mut best: Option<(&PersistentVolume, i128)> = None;
    for volume in volumes {
        if volume.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let vspec = volume.spec.as_ref();
        if mode(vspec.and_then(|s| s.volume_mode.as_ref())) != claim_mode {
            continue;
        }
        if is_bound_to(volume, claim) {
            return fits_node(volume).then_some(volume);
        }
        if delay_binding && node.is_none() {
            continue;
        }
        if vspec.is_some_and(|s| s.claim_ref.is_some()) {
            continue;
        }
        if selector.is_some_and(|s| !selector_matches(s, labels(&volume.metadata))) {
            continue;
        }
        if volume_class(volume) != class || !fits_node(volume) {
            continue;
        }
        let offered = vspec
            .and_then(|s| s.access_modes.as_deref())
            .unwrap_or_default();
        if !wanted_modes.iter().all(|m| offered.contains(m)) {
            continue;
        }
        let Some(capacity) = capacity_bytes(volume) else {
            continue;
        };
        if capacity < requested {
            continue;
        }
        let smaller = best.is_none_or(|(b, size)| {
            capacity < size || (capacity == size && volume.metadata.name < b.metadata.name)
        });
        if smaller {
            best = Some((volume, capacity));
        }
    }
    best.map(|(v, _)| v)
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{
        NodeSelectorTerm, ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeSpec,
        VolumeNodeAffinity, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    use super::*;

    pub(crate) fn pv(name: &str, size: &str, modes: &[&str], class: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                storage_class_name: (!class.is_empty()).then(|| class.to_string()),
                persistent_volume_reclaim_policy: Some("Retain".into()),
                volume_mode: Some("Filesystem".into()),
                ..PersistentVolumeSpec::default()
            }),
            status: None,
        }
    }

    pub(crate) fn pvc(
        name: &str,
        size: &str,
        modes: &[&str],
        class: Option<&str>,
    ) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                    ..VolumeResourceRequirements::default()
                }),
                storage_class_name: class.map(String::from),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }
    }

    pub(crate) fn claim_ref(claim: &PersistentVolumeClaim, with_uid: bool) -> ObjectReference {
        ObjectReference {
            kind: Some("PersistentVolumeClaim".into()),
            namespace: claim.metadata.namespace.clone(),
            name: claim.metadata.name.clone(),
            uid: if with_uid {
                claim.metadata.uid.clone()
            } else {
                None
            },
            ..ObjectReference::default()
        }
    }

    fn pinned(mut volume: PersistentVolume, node: &str) -> PersistentVolume {
        if let Some(spec) = volume.spec.as_mut() {
            spec.node_affinity = Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![node.into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            });
        }
        volume
    }

    fn name(v: Option<&PersistentVolume>) -> Option<&str> {
        v.and_then(|v| v.metadata.name.as_deref())
    }

    #[test]
    fn quantities_read_as_bytes() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("500Mi"), Some(500 << 20));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("1500m"), Some(2));
        assert_eq!(quantity_bytes("2e3"), Some(2000));
        assert_eq!(quantity_bytes("12"), Some(12));
        assert_eq!(quantity_bytes("x"), None);
        assert_eq!(quantity_bytes("1Zi"), None);
        assert_eq!(quantity_bytes(""), None);
        assert_eq!(
            quantity_bytes("170141183460469231731687303715884105727m"),
            None
        );
        assert_eq!(
            quantity_bytes("99999999999999999999999999999999999999Ei"),
            None
        );
    }

    #[test]
    fn the_smallest_volume_that_fits_wins() {
        let claim = pvc("c", "500Mi", &["ReadWriteOnce"], Some("manual"));
        let volumes = [
            pv("big", "10Gi", &["ReadWriteOnce"], "manual"),
            pv("small", "100Mi", &["ReadWriteOnce"], "manual"),
            pv("fits", "1Gi", &["ReadWriteOnce", "ReadOnlyMany"], "manual"),
            pv("other-class", "600Mi", &["ReadWriteOnce"], "fast"),
            pv("rox", "600Mi", &["ReadOnlyMany"], "manual"),
        ];
        assert_eq!(
            name(find_best_match(&claim, &volumes, false, None)),
            Some("fits")
        );
        let none = pvc("c", "500Gi", &["ReadWriteOnce"], Some("manual"));
        assert_eq!(name(find_best_match(&none, &volumes, false, None)), None);
    }

    #[test]
    fn no_class_matches_only_no_class() {
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some(""));
        let volumes = [
            pv("classed", "1Gi", &["ReadWriteOnce"], "manual"),
            pv("plain", "2Gi", &["ReadWriteOnce"], ""),
        ];
        assert_eq!(
            name(find_best_match(&claim, &volumes, false, None)),
            Some("plain")
        );
    }

    #[test]
    fn claimed_modes_and_selectors_exclude_volumes() {
        let mut claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("manual"));
        let other = pvc("other", "1Gi", &["ReadWriteOnce"], Some("manual"));
        let mut taken = pv("taken", "1Gi", &["ReadWriteOnce"], "manual");
        taken.spec.as_mut().unwrap().claim_ref = Some(claim_ref(&other, false));
        let mut block = pv("block", "1Gi", &["ReadWriteOnce"], "manual");
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let mut labelled = pv("labelled", "5Gi", &["ReadWriteOnce"], "manual");
        labelled.metadata.labels = Some(BTreeMap::from([("tier".into(), "gold".into())]));
        let mut volumes = vec![
            taken,
            block,
            labelled,
            pv("plain", "2Gi", &["ReadWriteOnce"], "manual"),
        ];
        assert_eq!(
            name(find_best_match(&claim, &volumes, false, None)),
            Some("plain")
        );
        claim.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "gold".into())])),
            ..LabelSelector::default()
        });
        assert_eq!(
            name(find_best_match(&claim, &volumes, false, None)),
            Some("labelled")
        );
        volumes[2].metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(name(find_best_match(&claim, &volumes, false, None)), None);
    }

    #[test]
    fn a_prebound_volume_wins_even_if_larger_or_of_another_class() {
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("manual"));
        let mut reserved = pv("reserved", "100Gi", &["ReadWriteMany"], "other");
        reserved.spec.as_mut().unwrap().claim_ref = Some(claim_ref(&claim, false));
        let volumes = [pv("fits", "1Gi", &["ReadWriteOnce"], "manual"), reserved];
        assert_eq!(
            name(find_best_match(&claim, &volumes, false, None)),
            Some("reserved")
        );
        // Pre-bound wins in delayed binding too; others wait for a node.
        assert_eq!(
            name(find_best_match(&claim, &volumes, true, None)),
            Some("reserved")
        );
        assert_eq!(
            name(find_best_match(&claim, &volumes[..1], true, None)),
            None
        );
    }

    #[test]
    fn a_chosen_node_filters_by_node_affinity() {
        let claim = pvc("c", "1Gi", &["ReadWriteOnce"], Some("local"));
        let volumes = [
            pinned(pv("on-a", "1Gi", &["ReadWriteOnce"], "local"), "a"),
            pinned(pv("on-b", "2Gi", &["ReadWriteOnce"], "local"), "b"),
        ];
        let labels_b = BTreeMap::from([(HOSTNAME_LABEL.to_string(), "b".to_string())]);
        let b = ChosenNode {
            name: "b",
            labels: &labels_b,
        };
        assert_eq!(
            name(find_best_match(&claim, &volumes, true, Some(b))),
            Some("on-b")
        );
        let labels_c = BTreeMap::from([(HOSTNAME_LABEL.to_string(), "c".to_string())]);
        let c = ChosenNode {
            name: "c",
            labels: &labels_c,
        };
        assert_eq!(name(find_best_match(&claim, &volumes, true, Some(c))), None);
    }

    #[test]
    fn bound_to_checks_name_namespace_and_uid() {
        let claim = pvc("c", "1Gi", &[], None);
        let mut volume = pv("v", "1Gi", &[], "");
        assert!(!is_bound_to(&volume, &claim));
        volume.spec.as_mut().unwrap().claim_ref = Some(claim_ref(&claim, true));
        assert!(is_bound_to(&volume, &claim));
        let mut recreated = claim.clone();
        recreated.metadata.uid = Some("new".into());
        assert!(!is_bound_to(&volume, &recreated));
    }
}
