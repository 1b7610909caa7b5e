//! What the loops ask of pods and owners, as kube-controller-manager's `podutil` and
//! `metav1` helpers answer it: active, ready, available; controller references; label
//! selectors.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

/// Not terminal and not being deleted: a pod that counts toward its owner's replicas
/// (upstream `controller.IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// When the pod's `Ready` condition last turned `True` (the Unix epoch if it has no time),
/// `None` if the pod is not ready.
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (condition.status == "True").then(|| {
        condition
            .last_transition_time
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
    })
}

/// Ready for at least `min_ready_seconds` at `now` (upstream `podutil.IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since + SignedDuration::from_secs(i64::from(min_ready_seconds)) <= now,
    }
}

/// How long until a ready pod becomes available, if it is ready but not yet available.
pub fn until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Option<std::time::Duration> {
    let since = ready_since(pod)?;
    let at = since + SignedDuration::from_secs(i64::from(min_ready_seconds.max(0)));
    (at > now).then(|| {
        let wait = at.duration_since(now);
        std::time::Duration::from_millis(wait.as_millis().max(0) as u64)
    })
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to an owner, as controllers set it on what they create
/// (`controller: true`, `blockOwnerDeletion: true`).
pub fn controller_reference(
    api_version: &str,
    kind: &str,
    owner: &ObjectMeta,
) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone()?,
        uid: owner.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Whether `labels` match a label selector (matchLabels and matchExpressions, ANDed). An
/// empty selector matches everything; operators upstream does not know match nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_match
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Whether a selector is empty (matches everything): controllers refuse to act on one.
pub fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// A pod's labels (empty if it has none).
pub fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    use super::*;

    fn ready_pod(since: Timestamp) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(since)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn availability_waits_min_ready_seconds_after_ready() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let pod = ready_pod(t0);
        assert!(is_available(&pod, 0, t0));
        assert!(!is_available(&pod, 10, t0 + SignedDuration::from_secs(9)));
        assert!(is_available(&pod, 10, t0 + SignedDuration::from_secs(10)));
        assert_eq!(
            until_available(&pod, 10, t0 + SignedDuration::from_secs(4)),
            Some(std::time::Duration::from_secs(6))
        );
        assert!(!is_available(&Pod::default(), 0, t0));
    }

    #[test]
    fn deleted_and_terminal_pods_are_not_active() {
        let mut pod = ready_pod(Timestamp::UNIX_EPOCH);
        assert!(is_active(&pod));
        pod.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!is_active(&pod));
        let mut pod = ready_pod(Timestamp::UNIX_EPOCH);
        pod.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(!is_active(&pod));
    }

    #[test]
    fn selectors_and_labels_and_expressions() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        let mut selector = LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        assert!(selector_matches(&selector, &labels));
        selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }]);
        assert!(selector_matches(&selector, &labels));
        selector.match_expressions.as_mut().unwrap()[0].operator = "Exists".into();
        assert!(!selector_matches(&selector, &labels));
        assert!(selector_is_empty(&LabelSelector::default()));
        assert!(!selector_is_empty(&selector));
    }
}
