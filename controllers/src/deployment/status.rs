//! A Deployment's status as upstream computes it (`calculateStatus`, `syncRolloutStatus`,
//! `checkPausedConditions`, `requeueStuckDeployment` and the condition helpers of
//! `deployment_util`).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::replica_sets::{
    available_replicas, ready_replicas, spec_replicas, status_replicas, total,
};
use super::spec::ResolvedSpec;

/// The `Available` condition type.
pub const AVAILABLE: &str = "Available";
/// The `Progressing` condition type.
pub const PROGRESSING: &str = "Progressing";
/// The `ReplicaFailure` condition type (copied from the ReplicaSets).
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// Progressing: a new ReplicaSet was created.
pub const NEW_RS_REASON: &str = "NewReplicaSetCreated";
/// Progressing: the new ReplicaSet already existed when progress started being tracked.
pub const FOUND_NEW_RS_REASON: &str = "FoundNewReplicaSet";
/// Progressing: the new ReplicaSet is fully rolled out.
pub const NEW_RS_AVAILABLE_REASON: &str = "NewReplicaSetAvailable";
/// Progressing: the rollout moved forward.
pub const RS_UPDATED_REASON: &str = "ReplicaSetUpdated";
/// Progressing (False): no progress within `progressDeadlineSeconds`.
pub const TIMED_OUT_REASON: &str = "ProgressDeadlineExceeded";
/// Progressing (Unknown): the Deployment is paused.
pub const PAUSED_REASON: &str = "DeploymentPaused";
/// Progressing (Unknown): the Deployment was resumed.
pub const RESUMED_REASON: &str = "DeploymentResumed";
/// Available (True).
pub const MIN_AVAILABLE_REASON: &str = "MinimumReplicasAvailable";
/// Available (False).
pub const MIN_UNAVAILABLE_REASON: &str = "MinimumReplicasUnavailable";

/// A condition stamped `now` (update and transition time).
pub(super) fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The condition of this type, if any.
pub(super) fn condition<'a>(
    status: &'a DeploymentStatus,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Upstream `SetDeploymentCondition`: same status and reason → nothing changes; same status →
/// the transition time is kept; the condition replaces any of its type (moved last).
pub(super) fn set_condition(status: &mut DeploymentStatus, mut new: DeploymentCondition) {
    if let Some(current) = condition(status, &new.type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &new.type_);
    status.conditions.get_or_insert_with(Vec::new).push(new);
}

/// Drops the condition of this type.
pub(super) fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
        if conditions.is_empty() {
            status.conditions = None;
        }
    }
}

fn count(status: Option<i32>) -> i32 {
    status.unwrap_or(0)
}

/// Whether two statuses say the same (absent counts are 0, absent conditions are none).
pub(super) fn same_status(a: &DeploymentStatus, b: &DeploymentStatus) -> bool {
    let conditions = |s: &DeploymentStatus| s.conditions.clone().unwrap_or_default();
    a.observed_generation.unwrap_or(0) == b.observed_generation.unwrap_or(0)
        && count(a.replicas) == count(b.replicas)
        && count(a.updated_replicas) == count(b.updated_replicas)
        && count(a.ready_replicas) == count(b.ready_replicas)
        && count(a.available_replicas) == count(b.available_replicas)
        && count(a.unavailable_replicas) == count(b.unavailable_replicas)
        && count(a.terminating_replicas) == count(b.terminating_replicas)
        && a.collision_count == b.collision_count
        && conditions(a) == conditions(b)
}

/// Upstream `DeploymentComplete`: every replica updated and available, none old, and this
/// generation observed.
pub(super) fn deployment_complete(
    spec: &ResolvedSpec,
    generation: i64,
    status: &DeploymentStatus,
) -> bool {
    count(status.updated_replicas) == spec.replicas
        && count(status.replicas) == spec.replicas
        && count(status.available_replicas) == spec.replicas
        && status.observed_generation.unwrap_or(0) >= generation
}

/// Upstream `DeploymentProgressing`: more updated, ready or available replicas, or fewer old
/// ones, than the last status said.
fn deployment_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_pods = |s: &DeploymentStatus| count(s.replicas) - count(s.updated_replicas);
    count(new.updated_replicas) > count(old.updated_replicas)
        || old_pods(new) < old_pods(old)
        || count(new.ready_replicas) > count(old.ready_replicas)
        || count(new.available_replicas) > count(old.available_replicas)
}

/// When the Progressing condition's deadline passes (`lastUpdateTime + deadline`).
fn deadline_of(condition: &DeploymentCondition, deadline_seconds: i32) -> Option<Timestamp> {
    let updated = condition.last_update_time.as_ref()?.0;
    updated
        .checked_add(SignedDuration::from_secs(i64::from(deadline_seconds)))
        .ok()
}

/// Upstream `DeploymentTimedOut`.
fn deployment_timed_out(spec: &ResolvedSpec, status: &DeploymentStatus, now: Timestamp) -> bool {
    let (Some(deadline_seconds), Some(progressing)) = (
        spec.progress_deadline_seconds,
        condition(status, PROGRESSING),
    ) else {
        return false;
    };
    match progressing.reason.as_deref() {
        Some(NEW_RS_AVAILABLE_REASON) => false,
        Some(TIMED_OUT_REASON) => true,
        _ => deadline_of(progressing, deadline_seconds).is_some_and(|deadline| deadline < now),
    }
}

/// What `calculateStatus` needs besides the ReplicaSets.
pub(super) struct StatusInputs<'a> {
    /// The Deployment.
    pub deployment: &'a Deployment,
    /// Its resolved spec.
    pub spec: &'a ResolvedSpec,
    /// Its status as this sync changed it so far (conditions, collision count).
    pub current: &'a DeploymentStatus,
    /// The time conditions are stamped with.
    pub now: Timestamp,
}

/// Upstream `calculateStatus`: counts summed over the ReplicaSets, the collision count and
/// conditions carried over, the Available condition set.
pub(super) fn calculate_status(
    inputs: &StatusInputs<'_>,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
) -> DeploymentStatus {
    let available = total(all.iter().copied(), available_replicas);
    let wanted = total(all.iter().copied(), spec_replicas);
    let mut status = DeploymentStatus {
        observed_generation: Some(inputs.deployment.metadata.generation.unwrap_or(0)),
        replicas: Some(total(all.iter().copied(), status_replicas)),
        updated_replicas: Some(new_rs.map_or(0, status_replicas)),
        ready_replicas: Some(total(all.iter().copied(), ready_replicas)),
        available_replicas: Some(available),
        unavailable_replicas: Some((wanted - available).max(0)),
        terminating_replicas: None,
        collision_count: inputs.current.collision_count,
        conditions: inputs.current.conditions.clone().filter(|c| !c.is_empty()),
    };
    let spec = inputs.spec;
    let availability = if available >= spec.replicas - spec.max_unavailable {
        new_condition(
            AVAILABLE,
            "True",
            MIN_AVAILABLE_REASON,
            "Deployment has minimum availability.".into(),
            inputs.now,
        )
    } else {
        new_condition(
            AVAILABLE,
            "False",
            MIN_UNAVAILABLE_REASON,
            "Deployment does not have minimum availability.".into(),
            inputs.now,
        )
    };
    set_condition(&mut status, availability);
    status
}

/// Upstream `syncRolloutStatus`: `calculateStatus` plus the Progressing condition (complete,
/// progressing, or timed out against `progressDeadlineSeconds`) and ReplicaFailure conditions
/// copied from the ReplicaSets.
pub(super) fn rollout_status(
    inputs: &StatusInputs<'_>,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
) -> DeploymentStatus {
    let spec = inputs.spec;
    let deployment = inputs.deployment;
    let mut status = calculate_status(inputs, all, new_rs);
    if spec.progress_deadline_seconds.is_none() {
        remove_condition(&mut status, PROGRESSING);
    }
    let current = condition(inputs.current, PROGRESSING);
    let already_complete = count(status.replicas) == count(status.updated_replicas)
        && current.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE_REASON));
    let subject = match new_rs.and_then(|rs| rs.metadata.name.as_deref()) {
        Some(name) => format!("ReplicaSet {name:?}"),
        None => format!(
            "Deployment {:?}",
            deployment.metadata.name.as_deref().unwrap_or_default()
        ),
    };
    let generation = deployment.metadata.generation.unwrap_or(0);
    if spec.progress_deadline_seconds.is_some() && !already_complete {
        if deployment_complete(spec, generation, &status) {
            let done = new_condition(
                PROGRESSING,
                "True",
                NEW_RS_AVAILABLE_REASON,
                format!("{subject} has successfully progressed."),
                inputs.now,
            );
            set_condition(&mut status, done);
        } else if deployment_progressing(inputs.current, &status) {
            let mut progressing = new_condition(
                PROGRESSING,
                "True",
                RS_UPDATED_REASON,
                format!("{subject} is progressing."),
                inputs.now,
            );
            // Progress refreshes lastUpdateTime even with the same reason; a True condition
            // keeps its transition time.
            if let Some(current) = current {
                if current.status == "True" {
                    progressing.last_transition_time = current.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
            }
            set_condition(&mut status, progressing);
        } else if deployment_timed_out(spec, &status, inputs.now) {
            let timed_out = new_condition(
                PROGRESSING,
                "False",
                TIMED_OUT_REASON,
                format!("{subject} has timed out progressing."),
                inputs.now,
            );
            set_condition(&mut status, timed_out);
        }
    }
    match replica_failure(all, new_rs) {
        Some(failure) => set_condition(&mut status, failure),
        None => remove_condition(&mut status, REPLICA_FAILURE),
    }
    status
}

/// The first ReplicaFailure condition of the new ReplicaSet, else of any ReplicaSet, as a
/// Deployment condition (upstream `getReplicaFailures`).
fn replica_failure(
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
) -> Option<DeploymentCondition> {
    new_rs
        .into_iter()
        .chain(all.iter().copied())
        .filter_map(|rs| rs.status.as_ref()?.conditions.as_ref())
        .flatten()
        .find(|c| c.type_ == REPLICA_FAILURE)
        .map(|c| DeploymentCondition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_update_time: c.last_transition_time.clone(),
            last_transition_time: c.last_transition_time.clone(),
        })
}

/// Upstream `requeueStuckDeployment`: while a rollout has a deadline, is neither complete nor
/// timed out, when to look again (the deadline plus a second; at least a second).
pub(super) fn progress_check_after(
    inputs: &StatusInputs<'_>,
    new_status: &DeploymentStatus,
) -> Option<Duration> {
    let spec = inputs.spec;
    let deadline_seconds = spec.progress_deadline_seconds?;
    let current = condition(inputs.current, PROGRESSING)?;
    let generation = inputs.deployment.metadata.generation.unwrap_or(0);
    if deployment_complete(spec, generation, new_status)
        || current.reason.as_deref() == Some(TIMED_OUT_REASON)
    {
        return None;
    }
    let deadline = deadline_of(current, deadline_seconds)?;
    let after = if deadline > inputs.now {
        deadline.duration_since(inputs.now)
    } else {
        SignedDuration::ZERO
    };
    let after = Duration::try_from(after).unwrap_or_default();
    Some(if after < Duration::from_secs(1) {
        Duration::from_secs(1)
    } else {
        after + Duration::from_secs(1)
    })
}

/// Upstream `checkPausedConditions`: with a progress deadline, a paused Deployment gets
/// Progressing Unknown `DeploymentPaused`, a resumed one `DeploymentResumed` (so the time
/// spent paused never counts against the deadline); a timed-out condition stays.
pub(super) fn set_paused_condition(
    spec: &ResolvedSpec,
    status: &mut DeploymentStatus,
    now: Timestamp,
) {
    if spec.progress_deadline_seconds.is_none() {
        return;
    }
    let reason = condition(status, PROGRESSING).and_then(|c| c.reason.as_deref());
    if reason == Some(TIMED_OUT_REASON) {
        return;
    }
    let paused_recorded = reason == Some(PAUSED_REASON);
    if spec.paused && !paused_recorded {
        let paused = new_condition(
            PROGRESSING,
            "Unknown",
            PAUSED_REASON,
            "Deployment is paused".into(),
            now,
        );
        set_condition(status, paused);
    } else if !spec.paused && paused_recorded {
        let resumed = new_condition(
            PROGRESSING,
            "Unknown",
            RESUMED_REASON,
            "Deployment is resumed".into(),
            now,
        );
        set_condition(status, resumed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn set_condition_keeps_transition_time_for_same_status() {
        let mut status = DeploymentStatus::default();
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "True", NEW_RS_REASON, "a".into(), at(10)),
        );
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "True", RS_UPDATED_REASON, "b".into(), at(20)),
        );
        let progressing = condition(&status, PROGRESSING).unwrap();
        assert_eq!(progressing.reason.as_deref(), Some(RS_UPDATED_REASON));
        assert_eq!(progressing.last_transition_time, Some(Time(at(10))));
        assert_eq!(progressing.last_update_time, Some(Time(at(20))));
        // Same status and reason: untouched.
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "True", RS_UPDATED_REASON, "c".into(), at(30)),
        );
        assert_eq!(
            condition(&status, PROGRESSING).unwrap().message.as_deref(),
            Some("b")
        );
        // Status change: new transition time.
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "False", TIMED_OUT_REASON, "d".into(), at(40)),
        );
        assert_eq!(
            condition(&status, PROGRESSING)
                .unwrap()
                .last_transition_time,
            Some(Time(at(40)))
        );
        remove_condition(&mut status, PROGRESSING);
        assert_eq!(status.conditions, None);
    }

    #[test]
    fn same_status_treats_absent_as_zero() {
        let explicit = DeploymentStatus {
            replicas: Some(0),
            conditions: Some(vec![]),
            ..Default::default()
        };
        assert!(same_status(&explicit, &DeploymentStatus::default()));
        let other = DeploymentStatus {
            replicas: Some(1),
            ..Default::default()
        };
        assert!(!same_status(&other, &DeploymentStatus::default()));
    }

    #[test]
    fn progressing_compares_with_the_last_status() {
        let old = DeploymentStatus {
            replicas: Some(4),
            updated_replicas: Some(1),
            ..Default::default()
        };
        let fewer_old = DeploymentStatus {
            replicas: Some(3),
            updated_replicas: Some(1),
            ..Default::default()
        };
        assert!(deployment_progressing(&old, &fewer_old));
        assert!(!deployment_progressing(&old, &old));
    }
}
