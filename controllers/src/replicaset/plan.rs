//! The ReplicaSet controller's decisions, as kube-controller-manager's ReplicaSet controller
//! (`pkg/controller/replicaset`) makes them, without any IO: which pods to adopt and release,
//! how many pods to create, which pods to delete (upstream's deletion ranking), and the status
//! the ReplicaSet should report. The shell feeds it the informers' view and applies the plan.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

use crate::pods::{
    controller_of, controller_reference, is_active, is_available, is_ready, labels,
    selector_is_empty, selector_matches, until_available,
};

/// Most pods created or deleted in one sync (upstream burstReplicas).
pub const BURST_REPLICAS: usize = 500;
/// The first batch of a slow start (upstream SlowStartInitialBatchSize).
pub const SLOW_START_INITIAL_BATCH: usize = 1;
/// The condition type set when creating or deleting pods failed (upstream
/// `ReplicaSetReplicaFailure`).
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// The pod annotation whose integer value makes a pod cheaper (lower) or dearer (higher) to
/// delete on scale-down (upstream `PodDeletionCost`).
pub const POD_DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The longest generateName prefix a pod name allows (a DNS subdomain).
const MAX_NAME_LENGTH: usize = 253;

/// What one sync of a ReplicaSet should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Orphan pods (no controller reference, active, not being deleted) whose labels match the selector: adopt them (the shell patches in our controller reference). Names.
    pub adopt: Vec<String>,
    /// Pods with our controller reference (uid match) whose labels no longer match: release them (the shell removes our reference). Names.
    pub release: Vec<String>,
    /// Pods to create now (≤ BURST_REPLICAS).
    pub create: usize,
    /// Pods to delete now, most deletable first (≤ BURST_REPLICAS). Names.
    pub delete: Vec<String>,
    /// The status the ReplicaSet should have (computed as upstream calculateStatus does, from the pods it owns after adoption/release, BEFORE this plan's creates/deletes), observedGeneration = metadata.generation.
    pub status: ReplicaSetStatus,
    /// Sync again after this long (a ready pod that becomes available when minReadySeconds pass), if any.
    pub requeue_after: Option<std::time::Duration>,
}

/// `pods`: every pod of the ReplicaSet's namespace the controller knows (the shell passes the informer's view). `now`: the time for availability.
///
/// Like upstream's `syncReplicaSet`: only active pods are claimed (adopted, kept or released);
/// a ReplicaSet being deleted claims only the pods it already owns and still matches, and
/// neither adopts, releases, creates nor deletes. A ReplicaSet with an empty or invalid
/// selector (or without a name or uid to reference) only gets its status computed, from the
/// active pods it controls.
pub fn plan(rs: &ReplicaSet, pods: &[Pod], now: Timestamp) -> Plan {
    let spec = rs.spec.as_ref();
    let selector = spec.map(|s| &s.selector).filter(|s| selector_is_valid(s));
    let being_deleted = rs.metadata.deletion_timestamp.is_some();
    let rs_uid = rs.metadata.uid.as_deref();
    let can_act = selector.is_some() && rs_uid.is_some() && rs.metadata.name.is_some();

    let mut adopt = Vec::new();
    let mut release = Vec::new();
    let mut owned: Vec<&Pod> = Vec::new();
    for pod in pods.iter().filter(|pod| is_active(pod)) {
        let matches = selector.is_some_and(|s| selector_matches(s, labels(&pod.metadata)));
        match controller_of(&pod.metadata) {
            Some(reference) => {
                if rs_uid != Some(reference.uid.as_str()) {
                    // Controlled by someone else.
                    continue;
                }
                if matches || !can_act {
                    owned.push(pod);
                } else if !being_deleted && let Some(name) = &pod.metadata.name {
                    release.push(name.clone());
                }
            }
            None => {
                if !can_act || being_deleted || !matches || !same_namespace(rs, pod) {
                    continue;
                }
                if let Some(name) = &pod.metadata.name {
                    adopt.push(name.clone());
                    owned.push(pod);
                }
            }
        }
    }

    let (create, delete) = if can_act && !being_deleted {
        let desired = usize::try_from(spec.and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(0);
        if owned.len() < desired {
            ((desired - owned.len()).min(BURST_REPLICAS), Vec::new())
        } else {
            let surplus = (owned.len() - desired).min(BURST_REPLICAS);
            (0, pods_to_delete(&owned, surplus, now))
        }
    } else {
        (0, Vec::new())
    };

    let min_ready_seconds = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let requeue_after = if min_ready_seconds > 0 {
        owned
            .iter()
            .filter_map(|pod| until_available(pod, min_ready_seconds, now))
            .min()
    } else {
        None
    };

    Plan {
        adopt,
        release,
        create,
        delete,
        status: calculate_status(rs, &owned, now),
        requeue_after,
    }
}

/// The pod to create for `rs` (upstream GetPodFromTemplate): generateName "<rs name>-", namespace, labels, annotations, finalizers and spec from spec.template, ownerReferences = [controller_reference("apps/v1", "ReplicaSet", &rs.metadata)]. No name, no status.
///
/// A name too long for the dash becomes the prefix itself, as upstream's `getPodsPrefix` has
/// it.
pub fn pod_for(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
    let template_meta = template.and_then(|t| t.metadata.as_ref());
    Pod {
        metadata: ObjectMeta {
            generate_name: rs.metadata.name.as_deref().map(generate_name_prefix),
            namespace: rs.metadata.namespace.clone(),
            labels: template_meta.and_then(|m| m.labels.clone()),
            annotations: template_meta.and_then(|m| m.annotations.clone()),
            finalizers: template_meta.and_then(|m| m.finalizers.clone()),
            owner_references: controller_reference("apps/v1", "ReplicaSet", &rs.metadata)
                .map(|reference| vec![reference]),
            ..ObjectMeta::default()
        },
        spec: template.and_then(|t| t.spec.clone()),
        status: None,
    }
}

/// Upstream slowStartBatch sizes for creating `count` pods: 1, 2, 4, ... (doubling, each capped by what remains), summing to count. The shell creates each batch concurrently and stops at the first batch with a failure.
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let mut remaining = count;
    let mut batch = remaining.min(SLOW_START_INITIAL_BATCH);
    while batch > 0 {
        batches.push(batch);
        remaining -= batch;
        batch = batch.saturating_mul(2).min(remaining);
    }
    batches
}

/// Whether two statuses differ in what the controller would write (so the shell skips no-op status writes).
///
/// Compares what upstream's `updateReplicaSetStatus` compares: the replica counts, the
/// observed generation and the conditions. A missing count equals zero and missing conditions
/// equal none (the API server drops zeros and empty lists); a missing status is the empty one.
pub fn status_differs(current: Option<&ReplicaSetStatus>, desired: &ReplicaSetStatus) -> bool {
    let empty = ReplicaSetStatus::default();
    let current = current.unwrap_or(&empty);
    let count = |n: Option<i32>| n.unwrap_or(0);
    let conditions = |s: &ReplicaSetStatus| s.conditions.clone().unwrap_or_default();
    current.replicas != desired.replicas
        || count(current.fully_labeled_replicas) != count(desired.fully_labeled_replicas)
        || count(current.ready_replicas) != count(desired.ready_replicas)
        || count(current.available_replicas) != count(desired.available_replicas)
        || current.terminating_replicas != desired.terminating_replicas
        || current.observed_generation.unwrap_or(0) != desired.observed_generation.unwrap_or(0)
        || conditions(current) != conditions(desired)
}

/// Upstream's ReplicaFailure condition, set by the shell when creating or deleting pods failed: type ReplicaFailure, status True, reason "FailedCreate" or "FailedDelete", message the error; returns the status with the condition set (replacing an earlier one), or removes it when `failure` is None (upstream removes it once a sync succeeds).
///
/// Replacing an earlier `True` ReplicaFailure condition keeps its lastTransitionTime (the
/// condition did not transition); a new one gets `now`, truncated to whole seconds as the API
/// stores it. Other conditions are left as they are.
pub fn with_failure(
    mut status: ReplicaSetStatus,
    failure: Option<(&str, String)>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let mut conditions = status.conditions.take().unwrap_or_default();
    let earlier_failure_since = conditions
        .iter()
        .find(|c| c.type_ == REPLICA_FAILURE && c.status == "True")
        .and_then(|c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != REPLICA_FAILURE);
    if let Some((reason, message)) = failure {
        let since = earlier_failure_since
            .unwrap_or_else(|| Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
        conditions.push(ReplicaSetCondition {
            type_: REPLICA_FAILURE.to_string(),
            status: "True".to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(since),
        });
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    status
}

/// Upstream's `calculateStatus` over the active pods the ReplicaSet owns; conditions are kept
/// as they are (only [`with_failure`] changes them).
fn calculate_status(rs: &ReplicaSet, owned: &[&Pod], now: Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready_seconds = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .map(labels);
    let fully_labeled = owned
        .iter()
        .filter(|pod| template_labels.is_none_or(|t| has_all_labels(&pod.metadata, t)))
        .count();
    let ready = owned.iter().filter(|pod| is_ready(pod)).count();
    let available = owned
        .iter()
        .filter(|pod| is_available(pod, min_ready_seconds, now))
        .count();
    ReplicaSetStatus {
        replicas: as_count(owned.len()),
        fully_labeled_replicas: Some(as_count(fully_labeled)),
        ready_replicas: Some(as_count(ready)),
        available_replicas: Some(as_count(available)),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    }
}

/// A pod count as the API's int32.
fn as_count(count: usize) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Every template label is on the pod with the same value.
fn has_all_labels(meta: &ObjectMeta, template_labels: &BTreeMap<String, String>) -> bool {
    let pod_labels = labels(meta);
    template_labels
        .iter()
        .all(|(key, value)| pod_labels.get(key) == Some(value))
}

/// A selector upstream's `LabelSelectorAsSelector` accepts and that selects something: not
/// empty, known operators, values exactly for `In`/`NotIn`.
fn selector_is_valid(selector: &LabelSelector) -> bool {
    !selector_is_empty(selector)
        && selector.match_expressions.iter().flatten().all(|e| {
            let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
            match e.operator.as_str() {
                "In" | "NotIn" => has_values,
                "Exists" | "DoesNotExist" => !has_values,
                _ => false,
            }
        })
}

/// An orphan is adoptable only from the ReplicaSet's own namespace (upstream ignores others).
fn same_namespace(rs: &ReplicaSet, pod: &Pod) -> bool {
    match rs.metadata.namespace.as_deref() {
        None | Some("") => true,
        Some(namespace) => pod.metadata.namespace.as_deref() == Some(namespace),
    }
}

/// Upstream `getPodsPrefix`: "<name>-", or the name alone when the dash would make it too long.
fn generate_name_prefix(name: &str) -> String {
    if name.len() < MAX_NAME_LENGTH {
        format!("{name}-")
    } else {
        name.to_string()
    }
}

/// The `count` owned pods most deletable first (upstream `getPodsToDelete`), ranked by
/// [`DeletionRank`]; doubled-up ranks count this ReplicaSet's active pods per node.
fn pods_to_delete(owned: &[&Pod], count: usize, now: Timestamp) -> Vec<String> {
    if count == 0 {
        return Vec::new();
    }
    let mut pods_on_node: HashMap<&str, usize> = HashMap::new();
    for pod in owned {
        *pods_on_node.entry(node_name(pod)).or_default() += 1;
    }
    let mut ranked: Vec<(DeletionRank<'_>, &str)> = owned
        .iter()
        .filter_map(|pod| {
            let name = pod.metadata.name.as_deref()?;
            let on_node = pods_on_node.get(node_name(pod)).copied().unwrap_or(0);
            Some((DeletionRank::of(pod, name, on_node, now), name))
        })
        .collect();
    ranked.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    ranked
        .into_iter()
        .take(count)
        .map(|(_, name)| name.to_string())
        .collect()
}

/// How deletable a pod is, least first: upstream's `ActivePodsWithRanks` order (with
/// LogarithmicScaleDown, GA since 1.31) as a lexicographic key, so sorting is a total order.
/// Fields compare in declaration order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DeletionRank<'a> {
    /// 1. Unassigned (no node) before assigned.
    assigned: bool,
    /// 2. Pending (or no phase) before Unknown before Running.
    phase: u8,
    /// 3. Not ready before ready.
    ready: bool,
    /// 4. Lower pod-deletion-cost before higher.
    deletion_cost: i32,
    /// 5. More of the ReplicaSet's active pods on the same node ("doubled up") first.
    pods_on_node: Reverse<usize>,
    /// 6. Among ready pods: no ready time first, then ready for less time (log2 buckets).
    ready_for: Option<Age>,
    /// 7. More restarts of regular containers first, then of sidecar containers.
    restarts: Reverse<i32>,
    sidecar_restarts: Reverse<i32>,
    /// 8. No creation time first, then newer (log2 buckets).
    created: Age,
    /// Within a bucket upstream picks by uid (a random order); then by name, to be total.
    uid: &'a str,
    name: &'a str,
}

impl<'a> DeletionRank<'a> {
    fn of(pod: &'a Pod, name: &'a str, pods_on_node: usize, now: Timestamp) -> Self {
        let ready = is_ready(pod);
        let (restarts, sidecar_restarts) = max_restarts(pod);
        DeletionRank {
            assigned: !node_name(pod).is_empty(),
            phase: phase_ordinal(pod),
            ready,
            deletion_cost: deletion_cost(pod),
            pods_on_node: Reverse(pods_on_node),
            ready_for: ready.then(|| Age::since(ready_transition_time(pod), now)),
            restarts: Reverse(restarts),
            sidecar_restarts: Reverse(sidecar_restarts),
            created: Age::since(pod.metadata.creation_timestamp.as_ref().map(|t| t.0), now),
            uid: pod.metadata.uid.as_deref().unwrap_or_default(),
            name,
        }
    }
}

/// How long ago something happened, as upstream's `logarithmicRankDiff` buckets it: the floor
/// of log2 of the nanoseconds since (-1 for now or the future). Unknown (a zero time upstream)
/// sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Age {
    Unknown,
    Log2Nanos(i64),
}

impl Age {
    fn since(at: Option<Timestamp>, now: Timestamp) -> Self {
        let Some(at) = at else {
            return Age::Unknown;
        };
        let nanos = now.duration_since(at).as_nanos();
        if nanos <= 0 {
            return Age::Log2Nanos(-1);
        }
        let nanos = i64::try_from(nanos).unwrap_or(i64::MAX);
        Age::Log2Nanos((nanos as f64).log2().floor() as i64)
    }
}

/// The node a pod is bound to ("" if unassigned).
fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// Upstream `podPhaseToOrdinal`: Pending 0, Unknown 1, Running 2, anything else 0.
fn phase_ordinal(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

/// The `Ready=True` condition's lastTransitionTime, `None` if it has none (upstream's zero
/// time, which ranks first). Only asked of ready pods.
fn ready_transition_time(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// Upstream `GetDeletionCostFromPodAnnotations`: an int32 without a plus sign or leading
/// zeros; missing or invalid is 0.
fn deletion_cost(pod: &Pod) -> i32 {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST_ANNOTATION))
    else {
        return 0;
    };
    let valid_start = match value.as_bytes().first() {
        Some(b'-' | b'1'..=b'9') => true,
        Some(b'0') => value == "0",
        _ => false,
    };
    if valid_start {
        value.parse().unwrap_or(0)
    } else {
        0
    }
}

/// Upstream `maxContainerRestarts`: the most restarts of a regular container, and of a sidecar
/// (an init container with restartPolicy Always).
fn max_restarts(pod: &Pod) -> (i32, i32) {
    let Some(status) = pod.status.as_ref() else {
        return (0, 0);
    };
    let regular = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
        .max(0);
    let sidecars: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| sidecars.contains(&c.name.as_str()))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
        .max(0);
    (regular, sidecar)
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{
        Container, ContainerStatus, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelectorRequirement, OwnerReference,
    };

    use super::*;

    const RS_UID: &str = "rs-uid";

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn ago(seconds: i64) -> Timestamp {
        now() - SignedDuration::from_secs(seconds)
    }

    fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn replica_set(replicas: Option<i32>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some(RS_UID.into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas,
                selector: LabelSelector {
                    match_labels: Some(string_map(&[("app", "web")])),
                    ..Default::default()
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(string_map(&[("app", "web"), ("tier", "front")])),
                        annotations: Some(string_map(&[("note", "hello")])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: Some("nginx".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                min_ready_seconds: None,
            }),
            status: None,
        }
    }

    fn other_owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "other".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// A running, not ready pod with the ReplicaSet's labels, alone on its own node, created
    /// an hour ago, without owner.
    fn orphan(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(string_map(&[("app", "web"), ("tier", "front")])),
                creation_timestamp: Some(Time(ago(3600))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(format!("node-{name}")),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    fn owned(name: &str) -> Pod {
        let mut pod = orphan(name);
        pod.metadata.owner_references = Some(vec![
            controller_reference("apps/v1", "ReplicaSet", &replica_set(None).metadata).unwrap(),
        ]);
        pod
    }

    fn ready(mut pod: Pod, since: Option<Timestamp>) -> Pod {
        pod.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: since.map(Time),
                ..Default::default()
            });
        pod
    }

    fn on_node(mut pod: Pod, node: Option<&str>) -> Pod {
        pod.spec.get_or_insert_with(Default::default).node_name = node.map(str::to_string);
        pod
    }

    fn in_phase(mut pod: Pod, phase: Option<&str>) -> Pod {
        pod.status.get_or_insert_with(Default::default).phase = phase.map(str::to_string);
        pod
    }

    fn created(mut pod: Pod, at: Option<Timestamp>) -> Pod {
        pod.metadata.creation_timestamp = at.map(Time);
        pod
    }

    fn restarted(mut pod: Pod, restarts: i32) -> Pod {
        pod.status
            .get_or_insert_with(Default::default)
            .container_statuses = Some(vec![ContainerStatus {
            name: "app".into(),
            restart_count: restarts,
            ..Default::default()
        }]);
        pod
    }

    fn with_cost(mut pod: Pod, cost: &str) -> Pod {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(POD_DELETION_COST_ANNOTATION.into(), cost.into());
        pod
    }

    fn deleting(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(Time(ago(1)));
        pod
    }

    fn relabeled(mut pod: Pod, pairs: &[(&str, &str)]) -> Pod {
        pod.metadata.labels = Some(string_map(pairs));
        pod
    }

    /// The order in which a ReplicaSet scaled to zero deletes these pods.
    fn deletion_order(pods: Vec<Pod>) -> Vec<String> {
        plan(&replica_set(Some(0)), &pods, now()).delete
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    // ---- creating and deleting ----

    #[test]
    fn creates_the_missing_pods() {
        let pods = vec![owned("a")];
        let plan = plan(&replica_set(Some(3)), &pods, now());
        assert_eq!(plan.create, 2);
        assert!(plan.delete.is_empty());
        assert!(plan.adopt.is_empty() && plan.release.is_empty());
    }

    #[test]
    fn creates_at_most_burst_replicas() {
        let plan = plan(&replica_set(Some(1_000)), &[], now());
        assert_eq!(plan.create, BURST_REPLICAS);
    }

    #[test]
    fn does_nothing_when_the_count_is_right() {
        let pods = vec![owned("a"), owned("b")];
        let plan = plan(&replica_set(Some(2)), &pods, now());
        assert_eq!(plan.create, 0);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn missing_replicas_means_one() {
        assert_eq!(plan(&replica_set(None), &[], now()).create, 1);
        let pods = vec![owned("a"), owned("b")];
        assert_eq!(plan(&replica_set(None), &pods, now()).delete.len(), 1);
    }

    #[test]
    fn negative_replicas_means_zero() {
        let pods = vec![owned("a")];
        let plan = plan(&replica_set(Some(-4)), &pods, now());
        assert_eq!((plan.create, plan.delete.len()), (0, 1));
    }

    #[test]
    fn zero_replicas_deletes_every_pod() {
        let pods = vec![owned("a"), owned("b"), owned("c")];
        let mut deleted = plan(&replica_set(Some(0)), &pods, now()).delete;
        deleted.sort();
        assert_eq!(deleted, strings(&["a", "b", "c"]));
    }

    #[test]
    fn deletes_at_most_burst_replicas() {
        let pods: Vec<Pod> = (0..600).map(|i| owned(&format!("p{i:03}"))).collect();
        let plan = plan(&replica_set(Some(50)), &pods, now());
        assert_eq!(plan.delete.len(), BURST_REPLICAS);
        assert_eq!(plan.create, 0);
    }

    #[test]
    fn inactive_pods_do_not_count_and_are_replaced() {
        let pods = vec![
            owned("a"),
            in_phase(owned("done"), Some("Succeeded")),
            in_phase(owned("crashed"), Some("Failed")),
            deleting(owned("going")),
        ];
        let plan = plan(&replica_set(Some(3)), &pods, now());
        assert_eq!(plan.create, 2);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.replicas, 1);
    }

    #[test]
    fn pods_of_other_controllers_are_ignored() {
        let mut theirs = orphan("theirs");
        theirs.metadata.owner_references = Some(vec![other_owner("other-uid")]);
        let plan = plan(&replica_set(Some(1)), &[theirs], now());
        assert_eq!(plan.create, 1);
        assert!(plan.adopt.is_empty() && plan.release.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.status.replicas, 0);
    }

    #[test]
    fn a_non_controller_owner_reference_leaves_a_pod_orphan() {
        let mut pod = orphan("a");
        let mut reference = other_owner("other-uid");
        reference.controller = Some(false);
        pod.metadata.owner_references = Some(vec![reference]);
        let plan = plan(&replica_set(Some(1)), &[pod], now());
        assert_eq!(plan.adopt, strings(&["a"]));
    }

    // ---- deletion ranking ----

    #[test]
    fn deletes_unassigned_pods_before_assigned_ones() {
        let pods = vec![owned("assigned"), on_node(owned("unassigned"), None)];
        assert_eq!(deletion_order(pods), strings(&["unassigned", "assigned"]));
        let pods = vec![owned("assigned"), on_node(owned("empty-node"), Some(""))];
        assert_eq!(deletion_order(pods), strings(&["empty-node", "assigned"]));
    }

    #[test]
    fn deletes_pending_before_unknown_before_running() {
        let pods = vec![
            owned("running"),
            in_phase(owned("unknown"), Some("Unknown")),
            in_phase(owned("pending"), Some("Pending")),
        ];
        assert_eq!(
            deletion_order(pods),
            strings(&["pending", "unknown", "running"])
        );
    }

    #[test]
    fn a_pod_without_phase_ranks_as_pending() {
        let pods = vec![
            in_phase(owned("a-pending"), Some("Pending")),
            owned("running"),
            in_phase(owned("b-no-phase"), None),
        ];
        assert_eq!(
            deletion_order(pods),
            strings(&["a-pending", "b-no-phase", "running"])
        );
    }

    #[test]
    fn deletes_not_ready_before_ready() {
        let pods = vec![ready(owned("ready"), Some(ago(60))), owned("not-ready")];
        assert_eq!(deletion_order(pods), strings(&["not-ready", "ready"]));
    }

    #[test]
    fn deletes_lower_deletion_cost_first() {
        let pods = vec![
            with_cost(owned("a-dear"), "100"),
            with_cost(owned("b-cheap"), "-5"),
            owned("c-default"),
        ];
        assert_eq!(
            deletion_order(pods),
            strings(&["b-cheap", "c-default", "a-dear"])
        );
    }

    #[test]
    fn invalid_deletion_costs_count_as_zero() {
        for invalid in ["+5", "007", "", "abc", "99999999999"] {
            assert_eq!(
                deletion_cost(&with_cost(owned("a"), invalid)),
                0,
                "{invalid}"
            );
        }
        assert_eq!(deletion_cost(&with_cost(owned("a"), "0")), 0);
        assert_eq!(deletion_cost(&with_cost(owned("a"), "-7")), -7);
        assert_eq!(
            deletion_cost(&with_cost(owned("a"), "2147483647")),
            i32::MAX
        );
    }

    #[test]
    fn deletes_doubled_up_pods_first() {
        // c is newer (deleted first otherwise), but a and b share a node.
        let pods = vec![
            on_node(owned("a"), Some("node-1")),
            on_node(owned("b"), Some("node-1")),
            created(on_node(owned("c"), Some("node-2")), Some(ago(10))),
        ];
        let plan = plan(&replica_set(Some(2)), &pods, now());
        assert_eq!(plan.delete, strings(&["a"]));
        assert_eq!(deletion_order(pods), strings(&["a", "b", "c"]));
    }

    #[test]
    fn doubled_up_counts_only_active_owned_pods() {
        let mut theirs = on_node(orphan("theirs"), Some("node-1"));
        theirs.metadata.owner_references = Some(vec![other_owner("other-uid")]);
        let pods = vec![
            created(on_node(owned("a"), Some("node-1")), Some(ago(10))),
            on_node(deleting(owned("gone")), Some("node-1")),
            theirs,
            on_node(owned("b"), Some("node-2")),
        ];
        // a is alone among our active pods on node-1: the newer one goes first.
        assert_eq!(deletion_order(pods), strings(&["a", "b"]));
    }

    #[test]
    fn deletes_pods_ready_for_less_time_first() {
        let pods = vec![
            ready(owned("long"), Some(ago(3600))),
            ready(owned("short"), Some(ago(60))),
            ready(owned("no-time"), None),
        ];
        assert_eq!(deletion_order(pods), strings(&["no-time", "short", "long"]));
    }

    #[test]
    fn ready_times_in_the_same_log_bucket_tie_and_fall_to_uid() {
        // 100 s and 101 s ago share the 2^36 ns bucket: like upstream, the uid decides, not
        // which became ready later.
        let pods = vec![
            ready(owned("b"), Some(ago(100))),
            ready(owned("a"), Some(ago(101))),
        ];
        assert_eq!(deletion_order(pods), strings(&["a", "b"]));
    }

    #[test]
    fn deletes_pods_with_more_restarts_first() {
        let pods = vec![
            restarted(owned("a-few"), 1),
            restarted(owned("b-many"), 7),
            owned("c-none"),
        ];
        assert_eq!(
            deletion_order(pods),
            strings(&["b-many", "a-few", "c-none"])
        );
    }

    #[test]
    fn sidecar_restarts_break_regular_restart_ties() {
        let mut sidecar = restarted(owned("b-sidecar"), 2);
        sidecar.spec.as_mut().unwrap().init_containers = Some(vec![
            Container {
                name: "proxy".into(),
                restart_policy: Some("Always".into()),
                ..Default::default()
            },
            Container {
                name: "setup".into(),
                ..Default::default()
            },
        ]);
        sidecar.status.as_mut().unwrap().init_container_statuses = Some(vec![
            ContainerStatus {
                name: "proxy".into(),
                restart_count: 4,
                ..Default::default()
            },
            ContainerStatus {
                name: "setup".into(),
                restart_count: 9,
                ..Default::default()
            },
        ]);
        assert_eq!(max_restarts(&sidecar), (2, 4));
        let pods = vec![restarted(owned("a-plain"), 2), sidecar];
        assert_eq!(deletion_order(pods), strings(&["b-sidecar", "a-plain"]));
    }

    #[test]
    fn deletes_newer_pods_first() {
        let pods = vec![
            created(owned("old"), Some(ago(100_000))),
            created(owned("new"), Some(ago(10))),
            created(owned("no-time"), None),
        ];
        assert_eq!(deletion_order(pods), strings(&["no-time", "new", "old"]));
    }

    #[test]
    fn full_ties_are_ordered_by_uid_then_name() {
        let mut pods = vec![owned("c"), owned("a"), owned("b")];
        assert_eq!(deletion_order(pods.clone()), strings(&["a", "b", "c"]));
        for pod in &mut pods {
            pod.metadata.uid = Some("same".into());
        }
        assert_eq!(deletion_order(pods), strings(&["a", "b", "c"]));
    }

    #[test]
    fn earlier_ranking_rules_win_over_later_ones() {
        let pods = vec![
            // Ready, running, on a node: most worth keeping.
            ready(created(owned("keeper"), Some(ago(10))), Some(ago(5))),
            // Restarted a lot, but running and ready long ago.
            ready(restarted(owned("restarts"), 50), Some(ago(3600))),
            // Unassigned beats everything.
            ready(on_node(owned("unassigned"), None), Some(ago(3600))),
            // Pending and not ready.
            in_phase(owned("pending"), Some("Pending")),
            // Running, not ready.
            owned("not-ready"),
        ];
        assert_eq!(
            deletion_order(pods),
            strings(&["unassigned", "pending", "not-ready", "keeper", "restarts"])
        );
    }

    #[test]
    fn deletes_the_most_deletable_surplus_only() {
        let pods = vec![
            ready(owned("a"), Some(ago(3600))),
            owned("b-not-ready"),
            ready(owned("c"), Some(ago(3600))),
            in_phase(owned("d-pending"), Some("Pending")),
        ];
        let plan = plan(&replica_set(Some(2)), &pods, now());
        assert_eq!(plan.delete, strings(&["d-pending", "b-not-ready"]));
    }

    // ---- adoption and release ----

    #[test]
    fn adopts_matching_orphans_and_counts_them() {
        let pods = vec![owned("a"), orphan("b")];
        let plan = plan(&replica_set(Some(2)), &pods, now());
        assert_eq!(plan.adopt, strings(&["b"]));
        assert_eq!(plan.create, 0);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.replicas, 2);
    }

    #[test]
    fn adopted_surplus_pods_can_be_deleted() {
        let pods = vec![owned("a"), created(orphan("b"), Some(ago(10)))];
        let plan = plan(&replica_set(Some(1)), &pods, now());
        assert_eq!(plan.adopt, strings(&["b"]));
        assert_eq!(plan.delete, strings(&["b"]));
    }

    #[test]
    fn does_not_adopt_what_it_should_not() {
        let mut theirs = orphan("theirs");
        theirs.metadata.owner_references = Some(vec![other_owner("other-uid")]);
        let mut elsewhere = orphan("elsewhere");
        elsewhere.metadata.namespace = Some("other".into());
        let pods = vec![
            theirs,
            relabeled(orphan("unmatched"), &[("app", "db")]),
            relabeled(orphan("unlabeled"), &[]),
            deleting(orphan("deleting")),
            in_phase(orphan("finished"), Some("Succeeded")),
            elsewhere,
        ];
        let plan = plan(&replica_set(Some(1)), &pods, now());
        assert!(plan.adopt.is_empty(), "{:?}", plan.adopt);
        assert_eq!(plan.create, 1);
        assert_eq!(plan.status.replicas, 0);
    }

    #[test]
    fn adoption_honours_match_expressions() {
        let mut rs = replica_set(Some(2));
        rs.spec.as_mut().unwrap().selector.match_expressions =
            Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["front".into()]),
            }]);
        let pods = vec![
            orphan("front"),
            relabeled(orphan("back"), &[("app", "web"), ("tier", "back")]),
        ];
        let plan = plan(&rs, &pods, now());
        assert_eq!(plan.adopt, strings(&["front"]));
    }

    #[test]
    fn releases_owned_pods_that_no_longer_match() {
        let pods = vec![owned("a"), relabeled(owned("moved"), &[("app", "db")])];
        let plan = plan(&replica_set(Some(2)), &pods, now());
        assert_eq!(plan.release, strings(&["moved"]));
        assert_eq!(plan.status.replicas, 1);
        assert_eq!(plan.create, 1);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn inactive_owned_pods_are_not_claimed_or_released() {
        let pods = vec![
            deleting(relabeled(owned("going"), &[("app", "db")])),
            in_phase(relabeled(owned("done"), &[("app", "db")]), Some("Failed")),
        ];
        let plan = plan(&replica_set(Some(1)), &pods, now());
        assert!(plan.release.is_empty());
        assert_eq!(plan.create, 1);
    }

    // ---- ReplicaSets that must not act ----

    #[test]
    fn a_deleting_replica_set_only_computes_status() {
        let mut rs = replica_set(Some(5));
        rs.metadata.deletion_timestamp = Some(Time(ago(1)));
        let pods = vec![
            ready(owned("a"), Some(ago(60))),
            orphan("b"),
            relabeled(owned("moved"), &[("app", "db")]),
        ];
        let plan = plan(&rs, &pods, now());
        assert!(plan.adopt.is_empty() && plan.release.is_empty());
        assert_eq!(plan.create, 0);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.replicas, 1);
        assert_eq!(plan.status.ready_replicas, Some(1));
        assert_eq!(plan.status.observed_generation, Some(3));

        rs.spec.as_mut().unwrap().replicas = Some(0);
        assert!(super::plan(&rs, &pods, now()).delete.is_empty());
    }

    #[test]
    fn an_empty_selector_only_computes_status() {
        let mut rs = replica_set(Some(5));
        rs.spec.as_mut().unwrap().selector = LabelSelector::default();
        let pods = vec![
            owned("a"),
            relabeled(owned("moved"), &[("app", "db")]),
            orphan("b"),
        ];
        let plan = plan(&rs, &pods, now());
        assert!(plan.adopt.is_empty() && plan.release.is_empty());
        assert_eq!((plan.create, plan.delete.len()), (0, 0));
        // The pods it controls are still counted.
        assert_eq!(plan.status.replicas, 2);
    }

    #[test]
    fn an_invalid_selector_only_computes_status() {
        let invalid = [
            ("Matches", None),
            ("In", None),
            ("NotIn", Some(vec![])),
            ("Exists", Some(vec!["x".to_string()])),
        ];
        for (operator, values) in invalid {
            let mut rs = replica_set(Some(5));
            rs.spec.as_mut().unwrap().selector.match_expressions =
                Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: operator.into(),
                    values,
                }]);
            let plan = plan(&rs, &[orphan("b")], now());
            assert!(plan.adopt.is_empty(), "{operator}");
            assert_eq!(plan.create, 0, "{operator}");
        }
    }

    #[test]
    fn a_replica_set_without_spec_or_uid_does_nothing() {
        let mut rs = replica_set(Some(3));
        rs.spec = None;
        let plan = plan(&rs, &[owned("a")], now());
        assert_eq!((plan.create, plan.delete.len()), (0, 0));
        assert_eq!(plan.status.replicas, 1);

        let mut rs = replica_set(Some(3));
        rs.metadata.uid = None;
        let plan = super::plan(&rs, &[orphan("a")], now());
        assert_eq!((plan.create, plan.adopt.len()), (0, 0));
    }

    #[test]
    fn empty_input_does_not_panic() {
        let plan = plan(&ReplicaSet::default(), &[Pod::default()], now());
        assert_eq!(plan.create, 0);
        assert_eq!(plan.status.replicas, 0);
        let pod = pod_for(&ReplicaSet::default());
        assert!(pod.metadata.generate_name.is_none() && pod.metadata.owner_references.is_none());
        let odd = created(
            ready(on_node(Pod::default(), None), None),
            Some(now() + SignedDuration::from_secs(60)),
        );
        let mut named = odd.clone();
        named.metadata.name = Some("odd".into());
        named.metadata.owner_references = owned("x").metadata.owner_references;
        named.metadata.labels = Some(string_map(&[("app", "web")]));
        let plan = super::plan(&replica_set(Some(0)), &[named, odd], now());
        assert_eq!(plan.delete, strings(&["odd"]));
    }

    // ---- status ----

    #[test]
    fn status_counts_owned_pods() {
        let mut rs = replica_set(Some(4));
        rs.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let pods = vec![
            ready(owned("available"), Some(ago(60))),
            ready(owned("warming"), Some(ago(10))),
            relabeled(owned("partly-labeled"), &[("app", "web")]),
            owned("plain"),
            deleting(ready(owned("terminating"), Some(ago(60)))),
            orphan("adopted"),
        ];
        let plan = plan(&rs, &pods, now());
        assert_eq!(
            plan.status,
            ReplicaSetStatus {
                replicas: 5,
                fully_labeled_replicas: Some(4),
                ready_replicas: Some(2),
                available_replicas: Some(1),
                observed_generation: Some(3),
                conditions: None,
                terminating_replicas: None,
            }
        );
        assert_eq!(plan.requeue_after, Some(std::time::Duration::from_secs(20)));
        // The status is from before this plan's deletes.
        assert_eq!(plan.delete.len(), 1);
    }

    #[test]
    fn fully_labeled_needs_every_template_label_with_its_value() {
        let pods = vec![
            owned("exact"),
            relabeled(
                owned("more"),
                &[("app", "web"), ("tier", "front"), ("extra", "x")],
            ),
            relabeled(owned("wrong-value"), &[("app", "web"), ("tier", "back")]),
        ];
        let plan = plan(&replica_set(Some(3)), &pods, now());
        assert_eq!(plan.status.replicas, 3);
        assert_eq!(plan.status.fully_labeled_replicas, Some(2));
    }

    #[test]
    fn status_keeps_existing_conditions_and_takes_the_generation() {
        let mut rs = replica_set(Some(1));
        rs.metadata.generation = Some(9);
        let failed = with_failure(
            ReplicaSetStatus::default(),
            Some(("FailedCreate", "quota".into())),
            now(),
        );
        rs.status = Some(ReplicaSetStatus {
            observed_generation: Some(8),
            terminating_replicas: Some(2),
            ..failed.clone()
        });
        let plan = plan(&rs, &[owned("a")], now());
        assert_eq!(plan.status.conditions, failed.conditions);
        assert_eq!(plan.status.observed_generation, Some(9));
        assert_eq!(plan.status.terminating_replicas, None);
    }

    #[test]
    fn available_without_min_ready_seconds_means_ready() {
        let pods = vec![ready(owned("a"), Some(now())), owned("b")];
        let plan = plan(&replica_set(Some(2)), &pods, now());
        assert_eq!(plan.status.ready_replicas, Some(1));
        assert_eq!(plan.status.available_replicas, Some(1));
        assert_eq!(plan.requeue_after, None);
    }

    #[test]
    fn requeues_for_the_soonest_pod_to_become_available() {
        let mut rs = replica_set(Some(3));
        rs.spec.as_mut().unwrap().min_ready_seconds = Some(100);
        let pods = vec![
            ready(owned("a"), Some(ago(10))),
            ready(owned("b"), Some(ago(70))),
            ready(owned("c"), Some(ago(500))),
        ];
        let plan = plan(&rs, &pods, now());
        assert_eq!(plan.requeue_after, Some(std::time::Duration::from_secs(30)));
        assert_eq!(plan.status.available_replicas, Some(1));
    }

    #[test]
    fn no_requeue_when_every_ready_pod_is_available() {
        let mut rs = replica_set(Some(2));
        rs.spec.as_mut().unwrap().min_ready_seconds = Some(10);
        let pods = vec![ready(owned("a"), Some(ago(60))), owned("not-ready")];
        assert_eq!(plan(&rs, &pods, now()).requeue_after, None);
    }

    #[test]
    fn no_requeue_for_pods_it_does_not_own() {
        let mut rs = replica_set(Some(1));
        rs.spec.as_mut().unwrap().min_ready_seconds = Some(100);
        let mut theirs = ready(orphan("theirs"), Some(ago(10)));
        theirs.metadata.owner_references = Some(vec![other_owner("other-uid")]);
        assert_eq!(plan(&rs, &[theirs], now()).requeue_after, None);
    }

    // ---- slow start ----

    #[test]
    fn slow_start_batches_double() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), vec![1]);
        assert_eq!(slow_start_batches(2), vec![1, 1]);
        assert_eq!(slow_start_batches(3), vec![1, 2]);
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
        assert_eq!(slow_start_batches(15), vec![1, 2, 4, 8]);
        let burst = slow_start_batches(BURST_REPLICAS);
        assert_eq!(burst, vec![1, 2, 4, 8, 16, 32, 64, 128, 245]);
        assert_eq!(burst.iter().sum::<usize>(), BURST_REPLICAS);
        assert_eq!(
            slow_start_batches(usize::MAX).iter().sum::<usize>(),
            usize::MAX
        );
    }

    // ---- pod_for ----

    #[test]
    fn pod_for_copies_the_template_and_references_the_replica_set() {
        let mut rs = replica_set(Some(1));
        rs.spec
            .as_mut()
            .unwrap()
            .template
            .as_mut()
            .unwrap()
            .metadata
            .as_mut()
            .unwrap()
            .finalizers = Some(vec!["example.com/keep".into()]);
        let pod = pod_for(&rs);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(pod.metadata.name, None);
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            pod.metadata.labels,
            Some(string_map(&[("app", "web"), ("tier", "front")]))
        );
        assert_eq!(
            pod.metadata.annotations,
            Some(string_map(&[("note", "hello")]))
        );
        assert_eq!(
            pod.metadata.finalizers,
            Some(vec!["example.com/keep".to_string()])
        );
        assert_eq!(
            pod.metadata.owner_references,
            Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: RS_UID.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }])
        );
        assert_eq!(pod.spec, rs.spec.unwrap().template.unwrap().spec);
        assert_eq!(pod.status, None);
    }

    #[test]
    fn pod_for_a_long_name_drops_the_dash() {
        let mut rs = replica_set(Some(1));
        rs.metadata.name = Some("a".repeat(253));
        assert_eq!(pod_for(&rs).metadata.generate_name, Some("a".repeat(253)));
        rs.metadata.name = Some("a".repeat(252));
        assert_eq!(
            pod_for(&rs).metadata.generate_name,
            Some(format!("{}-", "a".repeat(252)))
        );
    }

    #[test]
    fn created_pods_are_owned_and_matched_by_the_next_plan() {
        let rs = replica_set(Some(1));
        let mut pod = pod_for(&rs);
        pod.metadata.name = Some("web-x1".into());
        let plan = plan(&rs, &[pod], now());
        assert_eq!((plan.create, plan.adopt.len()), (0, 0));
        assert_eq!(plan.status.fully_labeled_replicas, Some(1));
    }

    // ---- conditions and status writes ----

    #[test]
    fn with_failure_sets_replaces_and_clears_the_condition() {
        let other = ReplicaSetCondition {
            type_: "Other".into(),
            status: "False".into(),
            ..Default::default()
        };
        let start = ReplicaSetStatus {
            conditions: Some(vec![other.clone()]),
            ..Default::default()
        };
        let at = now() + SignedDuration::from_millis(1_500);
        let failed = with_failure(start, Some(("FailedCreate", "quota exceeded".into())), at);
        let expected_failure = ReplicaSetCondition {
            type_: REPLICA_FAILURE.into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some("quota exceeded".into()),
            last_transition_time: Some(Time(now() + SignedDuration::from_secs(1))),
        };
        assert_eq!(
            failed.conditions,
            Some(vec![other.clone(), expected_failure.clone()])
        );

        let later = now() + SignedDuration::from_secs(60);
        let replaced = with_failure(failed, Some(("FailedDelete", "forbidden".into())), later);
        let conditions = replaced.conditions.clone().unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1].reason.as_deref(), Some("FailedDelete"));
        assert_eq!(conditions[1].message.as_deref(), Some("forbidden"));
        // Still failing: the condition did not transition.
        assert_eq!(
            conditions[1].last_transition_time,
            expected_failure.last_transition_time
        );

        let cleared = with_failure(replaced, None, later);
        assert_eq!(cleared.conditions, Some(vec![other]));
        let empty = with_failure(cleared, None, later);
        let empty = with_failure(
            ReplicaSetStatus {
                conditions: Some(vec![]),
                ..empty
            },
            None,
            later,
        );
        assert_eq!(empty.conditions, None);
    }

    #[test]
    fn with_failure_restarts_the_clock_after_a_false_condition() {
        let start = ReplicaSetStatus {
            conditions: Some(vec![ReplicaSetCondition {
                type_: REPLICA_FAILURE.into(),
                status: "False".into(),
                last_transition_time: Some(Time(ago(600))),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let failed = with_failure(start, Some(("FailedCreate", "boom".into())), now());
        let conditions = failed.conditions.unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].last_transition_time, Some(Time(now())));
    }

    #[test]
    fn status_differs_compares_what_the_controller_writes() {
        let desired = plan(&replica_set(Some(1)), &[owned("a")], now()).status;
        assert!(status_differs(None, &desired));
        assert!(!status_differs(Some(&desired), &desired));

        // Zero counts and empty conditions the API server dropped are the same.
        let zero = plan(&replica_set(Some(1)), &[], now()).status;
        let stored = ReplicaSetStatus {
            replicas: 0,
            observed_generation: Some(3),
            conditions: Some(vec![]),
            ..Default::default()
        };
        assert!(!status_differs(Some(&stored), &zero));

        let changes = [
            ReplicaSetStatus {
                replicas: 2,
                ..desired.clone()
            },
            ReplicaSetStatus {
                fully_labeled_replicas: Some(0),
                ..desired.clone()
            },
            ReplicaSetStatus {
                ready_replicas: Some(1),
                ..desired.clone()
            },
            ReplicaSetStatus {
                available_replicas: Some(1),
                ..desired.clone()
            },
            ReplicaSetStatus {
                observed_generation: Some(2),
                ..desired.clone()
            },
            ReplicaSetStatus {
                terminating_replicas: Some(1),
                ..desired.clone()
            },
            with_failure(desired.clone(), Some(("FailedCreate", "x".into())), now()),
        ];
        for current in &changes {
            assert!(status_differs(Some(current), &desired), "{current:?}");
        }
    }
}
