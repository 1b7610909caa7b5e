//! Counting, ordering and proportionally sizing a Deployment's ReplicaSets (upstream
//! `controller.ReplicaSetsBy*`, `deployment_util.GetReplicaCountForReplicaSets`,
//! `GetProportion`, `IsSaturated`, `NewRSNewReplicas`).

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::ReplicaSet;

use super::revision::{self, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION};
use super::spec::ResolvedSpec;

/// `spec.replicas` (absent → the API default 1, negative → 0).
pub(super) fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
}

/// `status.replicas`: pods the ReplicaSet has.
pub(super) fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas.max(0))
}

/// `status.readyReplicas`.
pub(super) fn ready_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        .max(0)
}

/// `status.availableReplicas`.
pub(super) fn available_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .max(0)
}

/// Wants pods: `spec.replicas > 0` (upstream `FilterActiveReplicaSets`).
pub(super) fn wants_pods(rs: &ReplicaSet) -> bool {
    spec_replicas(rs) > 0
}

/// Sums `count` over ReplicaSets without overflowing.
pub(super) fn total<'a>(
    replica_sets: impl IntoIterator<Item = &'a ReplicaSet>,
    count: fn(&ReplicaSet) -> i32,
) -> i32 {
    replica_sets
        .into_iter()
        .fold(0i32, |sum, rs| sum.saturating_add(count(rs)))
}

/// Oldest first, ties by name (upstream `ReplicaSetsByCreationTimestamp`).
pub(super) fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    created(a)
        .cmp(&created(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Largest first, ties newest first (upstream `ReplicaSetsBySizeNewer`, for scaling up).
pub(super) fn by_size_newer(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    spec_replicas(b)
        .cmp(&spec_replicas(a))
        .then_with(|| by_creation(b, a))
}

/// Largest first, ties oldest first (upstream `ReplicaSetsBySizeOlder`, for scaling down).
pub(super) fn by_size_older(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    spec_replicas(b)
        .cmp(&spec_replicas(a))
        .then_with(|| by_creation(a, b))
}

/// Lowest revision first; unparsable or equal revisions by creation (upstream
/// `ReplicaSetsByRevision`).
pub(super) fn by_revision(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    match (revision::revision(a), revision::revision(b)) {
        (Some(x), Some(y)) if x != y => x.cmp(&y),
        _ => by_creation(a, b),
    }
}

/// The size the new ReplicaSet may have now (upstream `NewRSNewReplicas`): Recreate wants all
/// replicas at once; RollingUpdate grows it within `replicas + maxSurge` pods in total and
/// never beyond `replicas`.
pub(super) fn new_replica_set_size(
    spec: &ResolvedSpec,
    all: &[&ReplicaSet],
    new_rs: &ReplicaSet,
) -> i32 {
    if spec.recreate {
        return spec.replicas;
    }
    let current = total(all.iter().copied(), spec_replicas);
    let max_total = spec.max_replicas();
    let new_size = spec_replicas(new_rs);
    if current >= max_total {
        return new_size;
    }
    let scale_up = (max_total - current).min(spec.replicas - new_size);
    new_size + scale_up
}

/// The new ReplicaSet already runs everything the Deployment wants, available (upstream
/// `IsSaturated`).
pub(super) fn is_saturated(spec: &ResolvedSpec, new_rs: Option<&ReplicaSet>) -> bool {
    new_rs.is_some_and(|rs| {
        revision::int_annotation(rs, DESIRED_REPLICAS_ANNOTATION) == Some(spec.replicas)
            && spec_replicas(rs) == spec.replicas
            && available_replicas(rs) == spec.replicas
    })
}

/// How many replicas to add to (or remove from, negative) `rs` when `to_add` are distributed
/// and `added` already were (upstream `GetProportion`).
pub(super) fn proportion(
    rs: &ReplicaSet,
    spec: &ResolvedSpec,
    observed_replicas: i32,
    to_add: i32,
    added: i32,
) -> i32 {
    if spec_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = fraction(rs, spec, observed_replicas);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// The change that keeps `rs`'s share of the Deployment when it goes from the size in the
/// max-replicas annotation (or the observed `status.replicas`) to `replicas + maxSurge`
/// (upstream `getReplicaSetFraction`).
fn fraction(rs: &ReplicaSet, spec: &ResolvedSpec, observed_replicas: i32) -> i32 {
    let size = spec_replicas(rs);
    if spec.replicas == 0 {
        return -size;
    }
    let max_before = match revision::int_annotation(rs, MAX_REPLICAS_ANNOTATION) {
        Some(max) if max != 0 => max,
        _ if observed_replicas == 0 => return 0,
        _ => observed_replicas,
    };
    let scaled = f64::from(size) * f64::from(spec.max_replicas()) / f64::from(max_before);
    // `as` saturates: an absurd annotation cannot overflow.
    let rounded = scaled.round() as i64;
    i32::try_from(rounded - i64::from(size)).unwrap_or(if rounded < 0 {
        i32::MIN
    } else {
        i32::MAX
    })
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::api::apps::v1::{ReplicaSetSpec, ReplicaSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn rs(name: &str, created: i64, replicas: i32, max_annotation: Option<i32>) -> ReplicaSet {
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some(name.into());
        rs.metadata.creation_timestamp = Timestamp::from_second(created).ok().map(Time);
        rs.spec = Some(ReplicaSetSpec {
            replicas: Some(replicas),
            ..Default::default()
        });
        if let Some(max) = max_annotation {
            revision::set_replicas_annotations(&mut rs, max, max);
        }
        rs
    }

    fn rolling(replicas: i32, surge: i32) -> ResolvedSpec {
        ResolvedSpec {
            replicas,
            recreate: false,
            max_surge: surge,
            max_unavailable: 0,
            min_ready_seconds: None,
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            paused: false,
        }
    }

    #[test]
    fn counts_default_and_clamp() {
        let mut set = ReplicaSet::default();
        assert_eq!(spec_replicas(&set), 1);
        set.spec = Some(ReplicaSetSpec {
            replicas: Some(-2),
            ..Default::default()
        });
        assert_eq!(spec_replicas(&set), 0);
        assert!(!wants_pods(&set));
        set.status = Some(ReplicaSetStatus {
            replicas: 3,
            available_replicas: Some(2),
            ready_replicas: Some(-1),
            ..Default::default()
        });
        assert_eq!(
            (
                status_replicas(&set),
                available_replicas(&set),
                ready_replicas(&set)
            ),
            (3, 2, 0)
        );
    }

    #[test]
    fn orders_match_upstream() {
        let old_small = rs("a", 1, 2, None);
        let new_small = rs("b", 2, 2, None);
        let big = rs("c", 3, 5, None);
        let mut list = [&old_small, &new_small, &big];
        list.sort_by(|a, b| by_size_newer(a, b));
        let names: Vec<_> = list.iter().map(|r| r.metadata.name.clone()).collect();
        assert_eq!(
            names,
            [Some("c".into()), Some("b".into()), Some("a".into())]
        );
        list.sort_by(|a, b| by_size_older(a, b));
        let names: Vec<_> = list.iter().map(|r| r.metadata.name.clone()).collect();
        assert_eq!(
            names,
            [Some("c".into()), Some("a".into()), Some("b".into())]
        );
    }

    #[test]
    fn new_size_stays_within_surge_and_replicas() {
        let old = rs("old", 1, 10, None);
        let new = rs("new", 2, 0, None);
        let spec = rolling(10, 3);
        assert_eq!(new_replica_set_size(&spec, &[&old, &new], &new), 3);
        let old = rs("old", 1, 2, None);
        assert_eq!(new_replica_set_size(&spec, &[&old, &new], &new), 10);
        let old = rs("old", 1, 13, None);
        assert_eq!(new_replica_set_size(&spec, &[&old, &new], &new), 0);
    }

    #[test]
    fn proportions_follow_the_max_replicas_annotation() {
        // 10 → 15 replicas with surge 0 over 2 ReplicaSets of 5 each annotated max 10.
        let spec = rolling(15, 0);
        let a = rs("a", 1, 5, Some(10));
        assert_eq!(fraction(&a, &spec, 10), 3); // 5 * 15 / 10 = 7.5 → 8
        assert_eq!(proportion(&a, &spec, 10, 5, 0), 3);
        assert_eq!(proportion(&a, &spec, 10, 5, 3), 2);
        assert_eq!(proportion(&a, &spec, 10, 5, 5), 0);
        // Scaling to zero removes everything.
        assert_eq!(fraction(&a, &rolling(0, 0), 10), -5);
        // No annotation: the observed status.replicas is the old size; none at all → 0.
        let bare = rs("bare", 1, 5, None);
        assert_eq!(fraction(&bare, &spec, 10), 3);
        assert_eq!(fraction(&bare, &spec, 0), 0);
    }
}
