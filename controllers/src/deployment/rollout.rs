//! The rollouts (upstream `rolling.go`, `recreate.go`) and the scaling sync (`sync.go`'s
//! `sync`, `scale`, `cleanupDeployment`): one scaling step per sync, the status written after it.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;

use crate::pods::{controller_of, is_active, labels, selector_matches, until_available};

use super::replica_sets::{
    available_replicas, by_creation, by_revision, by_size_newer, by_size_older, is_saturated,
    new_replica_set_size, proportion, spec_replicas, status_replicas, total, wants_pods,
};
use super::revision::{
    DESIRED_REPLICAS_ANNOTATION, int_annotation, replicas_annotations_need_update,
    set_replicas_annotations,
};
use super::status::{
    calculate_status, deployment_complete, progress_check_after, rollout_status, same_status,
};
use super::sync::{Action, Planner, SCALING_REPLICA_SET_REASON, SyncResult};

/// The ReplicaSets as they were before this sync scaled any (upstream computes the status
/// and cleans up from these).
struct Snapshot {
    replica_sets: Vec<ReplicaSet>,
    new_index: Option<usize>,
}

impl Snapshot {
    fn all(&self) -> Vec<&ReplicaSet> {
        self.replica_sets.iter().collect()
    }

    fn new_replica_set(&self) -> Option<&ReplicaSet> {
        self.new_index.and_then(|i| self.replica_sets.get(i))
    }

    fn old(&self) -> impl Iterator<Item = &ReplicaSet> {
        self.replica_sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.new_index)
            .map(|(_, rs)| rs)
    }
}

impl Planner<'_> {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            replica_sets: self.replica_sets.clone(),
            new_index: self.new_index,
        }
    }

    fn generation(&self) -> i64 {
        self.deployment.metadata.generation.unwrap_or(0)
    }

    /// Upstream `isScalingEvent`: an active ReplicaSet was last scaled for another
    /// `spec.replicas` than the Deployment's now.
    pub(super) fn is_scaling_event(&self) -> bool {
        self.replica_sets
            .iter()
            .filter(|rs| wants_pods(rs))
            .any(|rs| {
                int_annotation(rs, DESIRED_REPLICAS_ANNOTATION)
                    .is_some_and(|desired| desired != self.spec.replicas)
            })
    }

    /// Upstream `sync`: for a paused Deployment or a scaling event, scale the ReplicaSets
    /// there are (no new one, no rollout), clean up old ones if paused, write the status.
    pub(super) fn sync_scale(mut self, pods: &[Pod]) -> SyncResult {
        if self.sync_new_replica_set(false).is_err() {
            return self.finish(None);
        }
        let snapshot = self.snapshot();
        self.scale();
        if self.spec.paused {
            self.cleanup_deployment(&snapshot);
        }
        let all = snapshot.all();
        let status = calculate_status(&self.status_inputs(), &all, snapshot.new_replica_set());
        self.write_status(status);
        let requeue = self.availability_check_after(pods);
        self.finish(requeue)
    }

    /// Upstream `rolloutRolling`: grow the new ReplicaSet within maxSurge, or else shrink the
    /// old ones within maxUnavailable; once complete, clean up old ReplicaSets.
    pub(super) fn rollout_rolling(mut self, pods: &[Pod]) -> SyncResult {
        if self.sync_new_replica_set(true).is_err() {
            return self.finish(None);
        }
        let snapshot = self.snapshot();
        if let Some(new) = self.new_index
            && (self.reconcile_new_replica_set(new) || self.reconcile_old_replica_sets(new))
        {
            return self.finish_rollout(&snapshot, pods);
        }
        if deployment_complete(&self.spec, self.generation(), &self.status) {
            self.cleanup_deployment(&snapshot);
        }
        self.finish_rollout(&snapshot, pods)
    }

    /// Upstream `reconcileNewReplicaSet`: scale the new ReplicaSet toward `spec.replicas`
    /// (down at once, up within maxSurge). Whether it scaled.
    fn reconcile_new_replica_set(&mut self, new: usize) -> bool {
        let size = spec_replicas(&self.replica_sets[new]);
        let replicas = self.spec.replicas;
        if size == replicas {
            return false;
        }
        if size > replicas {
            return self.scale_replica_set_and_record_event(new, replicas);
        }
        let all: Vec<&ReplicaSet> = self.replica_sets.iter().collect();
        let target = new_replica_set_size(&self.spec, &all, &self.replica_sets[new]);
        self.scale_replica_set_and_record_event(new, target)
    }

    /// Upstream `reconcileOldReplicaSets`: scale old ReplicaSets down as far as
    /// `replicas - maxUnavailable` available pods allow, unhealthy replicas first. Whether any
    /// scaled.
    fn reconcile_old_replica_sets(&mut self, new: usize) -> bool {
        let old_active: Vec<usize> = self
            .old_indices()
            .into_iter()
            .filter(|i| wants_pods(&self.replica_sets[*i]))
            .collect();
        let old_pods = total(
            old_active.iter().map(|i| &self.replica_sets[*i]),
            spec_replicas,
        );
        if old_pods == 0 {
            return false;
        }
        let all_pods = total(&self.replica_sets, spec_replicas);
        let new_rs = &self.replica_sets[new];
        let new_unavailable = spec_replicas(new_rs) - available_replicas(new_rs);
        let max_scaled_down = all_pods - self.spec.min_available() - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let cleaned = self.cleanup_unhealthy_replicas(&old_active, max_scaled_down);
        let scaled = self.scale_down_old_replica_sets_for_rolling_update(&old_active, new);
        cleaned + scaled > 0
    }

    /// Upstream `cleanupUnhealthyReplicas`: old ReplicaSets (oldest first) lose their
    /// unavailable replicas, at most `max_cleanup` in all. How many were removed.
    fn cleanup_unhealthy_replicas(&mut self, old: &[usize], max_cleanup: i32) -> i32 {
        let mut order = old.to_vec();
        order.sort_by(|a, b| by_creation(&self.replica_sets[*a], &self.replica_sets[*b]));
        let mut removed = 0;
        for index in order {
            if removed >= max_cleanup {
                break;
            }
            let rs = &self.replica_sets[index];
            let (size, available) = (spec_replicas(rs), available_replicas(rs));
            if size == 0 || size <= available {
                continue;
            }
            let remove = (max_cleanup - removed).min(size - available);
            self.scale_replica_set_and_record_event(index, size - remove);
            removed += remove;
        }
        removed
    }

    /// Upstream `scaleDownOldReplicaSetsForRollingUpdate`: old ReplicaSets (oldest first) lose
    /// the available pods above `replicas - maxUnavailable`. How many were removed.
    fn scale_down_old_replica_sets_for_rolling_update(&mut self, old: &[usize], new: usize) -> i32 {
        let min_available = self.spec.min_available();
        let available = total(
            old.iter().chain([&new]).map(|i| &self.replica_sets[*i]),
            available_replicas,
        );
        if available <= min_available {
            return 0;
        }
        let to_remove = available - min_available;
        let mut order = old.to_vec();
        order.sort_by(|a, b| by_creation(&self.replica_sets[*a], &self.replica_sets[*b]));
        let mut removed = 0;
        for index in order {
            if removed >= to_remove {
                break;
            }
            let size = spec_replicas(&self.replica_sets[index]);
            if size == 0 {
                continue;
            }
            let remove = size.min(to_remove - removed);
            self.scale_replica_set_and_record_event(index, size - remove);
            removed += remove;
        }
        removed
    }

    /// Upstream `rolloutRecreate`: scale every old ReplicaSet to 0, wait until none of their
    /// pods runs, then create or scale up the new ReplicaSet to `spec.replicas`.
    pub(super) fn rollout_recreate(mut self, pods: &[Pod]) -> SyncResult {
        if self.sync_new_replica_set(false).is_err() {
            return self.finish(None);
        }
        let mut snapshot = self.snapshot();
        let mut scaled_down = false;
        for index in self.old_indices() {
            if wants_pods(&self.replica_sets[index]) {
                scaled_down |= self.scale_replica_set_and_record_event(index, 0);
            }
        }
        if scaled_down || self.old_pods_running(&snapshot, pods) {
            return self.finish_rollout(&snapshot, pods);
        }
        if self.new_index.is_none() {
            if self.sync_new_replica_set(true).is_err() {
                return self.finish(None);
            }
            snapshot = self.snapshot();
        }
        if let Some(new) = self.new_index {
            self.scale_replica_set_and_record_event(new, self.spec.replicas);
        }
        if deployment_complete(&self.spec, self.generation(), &self.status) {
            self.cleanup_deployment(&snapshot);
        }
        self.finish_rollout(&snapshot, pods)
    }

    /// Upstream `oldPodsRunning`: old ReplicaSets still report pods, or a pod selected by the
    /// Deployment and controlled by an old ReplicaSet is not Succeeded or Failed (terminating
    /// pods count: they may still run).
    fn old_pods_running(&self, snapshot: &Snapshot, pods: &[Pod]) -> bool {
        if total(snapshot.old(), status_replicas) > 0 {
            return true;
        }
        let old_uids: BTreeSet<&str> = snapshot
            .old()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .collect();
        let selector = self.selector();
        pods.iter().any(|pod| {
            let terminal = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            !terminal
                && controller_of(&pod.metadata).is_some_and(|o| old_uids.contains(o.uid.as_str()))
                && selector_matches(&selector, labels(&pod.metadata))
        })
    }

    /// Upstream `scale`: one active (or no active: the newest) ReplicaSet takes
    /// `spec.replicas`; a saturated new ReplicaSet leaves the old ones 0; otherwise (rolling)
    /// `replicas + maxSurge - current` is spread over the active ReplicaSets in proportion to
    /// their share (largest first, leftovers to the first), every one's annotations updated.
    fn scale(&mut self) {
        let new = self.new_index;
        let mut old = self.old_indices();
        // Newest first, as upstream `FindActiveOrLatest` sorts them.
        old.sort_by(|a, b| by_creation(&self.replica_sets[*b], &self.replica_sets[*a]));
        let active_old: Vec<usize> = old
            .iter()
            .copied()
            .filter(|i| wants_pods(&self.replica_sets[*i]))
            .collect();
        let mut active = active_old.clone();
        active.extend(new.filter(|i| wants_pods(&self.replica_sets[*i])));
        let only = match active.len() {
            0 => new.or(old.first().copied()),
            1 => Some(active[0]),
            _ => None,
        };
        if active.len() <= 1 {
            if let Some(index) = only {
                self.scale_replica_set_and_record_event(index, self.spec.replicas);
            }
            return;
        }
        if is_saturated(&self.spec, self.new_replica_set()) {
            for index in active_old {
                self.scale_replica_set_and_record_event(index, 0);
            }
            return;
        }
        if self.spec.recreate {
            return;
        }
        let current = total(active.iter().map(|i| &self.replica_sets[*i]), spec_replicas);
        let allowed = if self.spec.replicas > 0 {
            self.spec.max_replicas()
        } else {
            0
        };
        let to_add = allowed - current;
        if to_add > 0 {
            active.sort_by(|a, b| by_size_newer(&self.replica_sets[*a], &self.replica_sets[*b]));
        } else if to_add < 0 {
            active.sort_by(|a, b| by_size_older(&self.replica_sets[*a], &self.replica_sets[*b]));
        }
        let observed_replicas = self
            .deployment
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        let mut added = 0;
        let mut sizes = Vec::with_capacity(active.len());
        for index in &active {
            let rs = &self.replica_sets[*index];
            let share = proportion(rs, &self.spec, observed_replicas, to_add, added);
            sizes.push(spec_replicas(rs) + share);
            added += share;
        }
        for (position, index) in active.iter().enumerate() {
            let mut size = sizes[position];
            if position == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_replica_set(*index, size);
        }
    }

    /// Upstream `cleanupDeployment`: delete the oldest-revision old ReplicaSets beyond
    /// revisionHistoryLimit, those that have no pods, want none and whose status is current;
    /// never one being deleted.
    fn cleanup_deployment(&mut self, snapshot: &Snapshot) {
        let Some(limit) = self.spec.revision_history_limit else {
            return;
        };
        let mut cleanable: Vec<&ReplicaSet> = snapshot
            .old()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = cleanable
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        cleanable.sort_by(|a, b| by_revision(a, b));
        for rs in cleanable.into_iter().take(excess) {
            let generation = rs.metadata.generation.unwrap_or(0);
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if status_replicas(rs) != 0 || spec_replicas(rs) != 0 || generation > observed {
                continue;
            }
            self.actions.push(Action::DeleteReplicaSet {
                name: rs.metadata.name.clone().unwrap_or_default(),
                uid: rs.metadata.uid.clone().unwrap_or_default(),
                resource_version: rs.metadata.resource_version.clone().unwrap_or_default(),
            });
        }
    }

    /// Upstream `scaleReplicaSetAndRecordEvent`: scale unless already that size.
    fn scale_replica_set_and_record_event(&mut self, index: usize, size: i32) -> bool {
        if spec_replicas(&self.replica_sets[index]) == size {
            return false;
        }
        self.scale_replica_set(index, size)
    }

    /// Upstream `scaleReplicaSet`: set the size and the desired/max replicas annotations if
    /// either differs, with a ScalingReplicaSet event when the size changes. Whether it did.
    fn scale_replica_set(&mut self, index: usize, size: i32) -> bool {
        let (desired, max) = (self.spec.replicas, self.spec.max_replicas());
        let Some(rs) = self.replica_sets.get_mut(index) else {
            return false;
        };
        let old_size = spec_replicas(rs);
        let resize = old_size != size;
        if !resize && !replicas_annotations_need_update(rs, desired, max) {
            return false;
        }
        rs.spec.get_or_insert_with(ReplicaSetSpec::default).replicas = Some(size);
        set_replicas_annotations(rs, desired, max);
        let name = rs.metadata.name.clone().unwrap_or_default();
        self.write_replica_set(index);
        if resize {
            let direction = if size > old_size { "up" } else { "down" };
            self.event(
                false,
                SCALING_REPLICA_SET_REASON,
                format!("Scaled {direction} replica set {name} from {old_size} to {size}"),
            );
        }
        resize
    }

    /// Upstream `syncRolloutStatus` after a rollout step: write the status if it changed, else
    /// requeue for the progress deadline check.
    fn finish_rollout(mut self, snapshot: &Snapshot, pods: &[Pod]) -> SyncResult {
        let all = snapshot.all();
        let (status, progress_check) = {
            let inputs = self.status_inputs();
            let status = rollout_status(&inputs, &all, snapshot.new_replica_set());
            let check = if same_status(&status, &self.status) {
                progress_check_after(&inputs, &status)
            } else {
                None
            };
            (status, check)
        };
        self.write_status(status);
        let requeue = match (progress_check, self.availability_check_after(pods)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.finish(requeue)
    }

    /// With minReadySeconds, when the first ready pod of the Deployment's ReplicaSets becomes
    /// available (the counts change then).
    fn availability_check_after(&self, pods: &[Pod]) -> Option<Duration> {
        let min_ready = self.spec.min_ready();
        if min_ready == 0 {
            return None;
        }
        let uids: BTreeSet<&str> = self
            .replica_sets
            .iter()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .collect();
        pods.iter()
            .filter(|pod| is_active(pod))
            .filter(|pod| {
                controller_of(&pod.metadata).is_some_and(|o| uids.contains(o.uid.as_str()))
            })
            .filter_map(|pod| until_available(pod, min_ready, self.now))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::{DeploymentStatus, ReplicaSetCondition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::super::revision::{
        MAX_REPLICAS_ANNOTATION, REVISION_ANNOTATION, REVISION_HISTORY_ANNOTATION,
    };
    use super::super::status::{
        FOUND_NEW_RS_REASON, NEW_RS_AVAILABLE_REASON, PROGRESSING, REPLICA_FAILURE,
        RS_UPDATED_REASON, TIMED_OUT_REASON, new_condition, set_condition,
    };
    use super::super::sync::fixtures::*;
    use super::super::sync::{Action, sync};
    use super::*;

    fn with_progressing(
        mut status: DeploymentStatus,
        reason: &str,
        updated: i64,
    ) -> DeploymentStatus {
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "True", reason, "earlier".into(), at(updated)),
        );
        status
    }

    #[test]
    fn old_replica_set_shrinks_only_as_far_as_max_unavailable_allows() {
        // 10 replicas, surge 3, unavailable 2: the new RS has 3 pods, none available yet.
        let d = at_revision(deployment(10, "nginx:2"), 2);
        let old = owned(&d, "old", "nginx:1", 10, 1, 10);
        let new = with_status(owned(&d, "new", "nginx:2", 3, 2, 20), 3, 0);
        let result = sync(&d, &[old, new], &[], at(100));
        let updates = updated(&result);
        assert_eq!(updates.len(), 1, "{:?}", result.actions);
        assert_eq!(updates[0].metadata.name.as_deref(), Some("web-old"));
        assert_eq!(size(updates[0]), 8);
        assert_eq!(
            events(&result),
            ["Scaled down replica set web-old from 10 to 8"]
        );
    }

    #[test]
    fn nothing_scales_while_the_new_pods_are_unavailable_at_the_limit() {
        let d = at_revision(deployment(10, "nginx:2"), 2);
        let old = owned(&d, "old", "nginx:1", 8, 1, 10);
        let new = with_status(owned(&d, "new", "nginx:2", 5, 2, 20), 5, 0);
        // 13 pods in all, 8 must stay available, 5 new ones are not: nothing to do.
        let result = sync(&d, &[old, new], &[], at(100));
        assert!(updated(&result).is_empty(), "{:?}", result.actions);
        assert!(events(&result).is_empty());
    }

    #[test]
    fn unhealthy_old_replicas_go_first_in_one_write() {
        let d = at_revision(deployment(10, "nginx:3"), 3);
        // Oldest: 5 wanted, 2 available (3 unhealthy); then 5 healthy; new: 3 available.
        let oldest = with_status(owned(&d, "a", "nginx:1", 5, 1, 10), 5, 2);
        let older = owned(&d, "b", "nginx:2", 5, 2, 20);
        let new = owned(&d, "c", "nginx:3", 3, 3, 30);
        let result = sync(&d, &[oldest, older, new], &[], at(100));
        // maxScaledDown = 13 - 8 - 0 = 5: 3 unhealthy removed from the oldest, then the
        // 10 available pods allow 2 more, again from the oldest (which has 2 left).
        let updates = updated(&result);
        assert_eq!(updates.len(), 1, "{:?}", result.actions);
        assert_eq!(updates[0].metadata.name.as_deref(), Some("web-a"));
        assert_eq!(size(updates[0]), 0);
        assert_eq!(
            events(&result),
            [
                "Scaled down replica set web-a from 5 to 2",
                "Scaled down replica set web-a from 2 to 0"
            ]
        );
    }

    #[test]
    fn new_replica_set_above_replicas_scales_down_at_once() {
        let d = at_revision(deployment(2, "nginx:1"), 1);
        let rs = owned(&deployment(5, "nginx:1"), "v1", "nginx:1", 5, 1, 10);
        let mut d = d;
        // Not a scaling event (no desired annotation): the rollout shrinks it.
        let mut rs = rs;
        if let Some(a) = rs.metadata.annotations.as_mut() {
            a.remove(DESIRED_REPLICAS_ANNOTATION);
        }
        d.status = Some(observed(5, 5, 5));
        let result = sync(&d, &[rs], &[], at(100));
        assert_eq!(size(updated(&result)[0]), 2);
        assert_eq!(
            events(&result),
            ["Scaled down replica set web-v1 from 5 to 2"]
        );
    }

    #[test]
    fn proportional_scaling_from_ten_to_fifteen() {
        // Mid-rollout at 10 replicas (surge 0, unavailable 1): 5 old + 5 new, both last
        // scaled for 10/10. Scaled to 15: 5 more, shared 3 (newer first) and 2.
        let ten = rolling(
            at_revision(deployment(10, "nginx:2"), 2),
            IntOrString::Int(0),
            IntOrString::Int(1),
        );
        let old = owned(&ten, "old", "nginx:1", 5, 1, 10);
        let new = with_status(owned(&ten, "new", "nginx:2", 5, 2, 20), 5, 3);
        let mut fifteen = ten.clone();
        if let Some(spec) = fifteen.spec.as_mut() {
            spec.replicas = Some(15);
        }
        fifteen.status = Some(observed(10, 5, 8));
        let result = sync(&fifteen, &[old, new], &[], at(100));
        let updates = updated(&result);
        assert_eq!(updates.len(), 2, "{:?}", result.actions);
        let size_of = |name: &str| {
            updates
                .iter()
                .find(|rs| rs.metadata.name.as_deref() == Some(name))
                .map(|rs| size(rs))
        };
        assert_eq!(size_of("web-new"), Some(8));
        assert_eq!(size_of("web-old"), Some(7));
        for rs in &updates {
            assert_eq!(annotation(rs, DESIRED_REPLICAS_ANNOTATION), Some("15"));
            assert_eq!(annotation(rs, MAX_REPLICAS_ANNOTATION), Some("15"));
        }
        assert_eq!(
            events(&result),
            [
                "Scaled up replica set web-new from 5 to 8",
                "Scaled up replica set web-old from 5 to 7"
            ]
        );
        assert!(created(&result).is_empty());
    }

    #[test]
    fn proportional_scaling_down_takes_from_the_larger_and_older_first() {
        // 6 old + 4 new at 10 (surge 0); down to 5: remove 5, 3 from old and 2 from new.
        let ten = rolling(
            at_revision(deployment(10, "nginx:2"), 2),
            IntOrString::Int(0),
            IntOrString::Int(1),
        );
        let old = owned(&ten, "old", "nginx:1", 6, 1, 10);
        let new = owned(&ten, "new", "nginx:2", 4, 2, 20);
        let mut five = ten.clone();
        if let Some(spec) = five.spec.as_mut() {
            spec.replicas = Some(5);
        }
        let result = sync(&five, &[old, new], &[], at(100));
        let sizes: Vec<(Option<String>, i32)> = updated(&result)
            .iter()
            .map(|rs| (rs.metadata.name.clone(), size(rs)))
            .collect();
        assert_eq!(
            sizes,
            [(Some("web-old".into()), 3), (Some("web-new".into()), 2)]
        );
    }

    #[test]
    fn a_single_active_replica_set_takes_all_replicas_and_saturation_empties_old_ones() {
        let d = at_revision(deployment(4, "nginx:2"), 2);
        let old = with_status(
            owned(&deployment(2, "nginx:1"), "old", "nginx:1", 0, 1, 10),
            0,
            0,
        );
        let new = owned(&deployment(2, "nginx:1"), "new", "nginx:2", 2, 2, 20);
        let result = sync(&d, &[old, new], &[], at(100));
        assert_eq!(
            events(&result),
            ["Scaled up replica set web-new from 2 to 4"]
        );

        // The new one saturated (4 of 4 available, desired 4) and an adopted old one with
        // pods: the old one goes to 0.
        let new = owned(&d, "new", "nginx:2", 4, 2, 20);
        let old = owned(&deployment(3, "nginx:1"), "old", "nginx:1", 3, 1, 10);
        let result = sync(&d, &[old, new], &[], at(100));
        assert_eq!(
            events(&result),
            ["Scaled down replica set web-old from 3 to 0"]
        );
    }

    #[test]
    fn recreate_scales_old_down_waits_for_pods_then_creates() {
        let d = recreate(at_revision(deployment(2, "nginx:2"), 1));
        let old = owned(&d, "old", "nginx:1", 2, 1, 10);
        let result = sync(&d, std::slice::from_ref(&old), &[], at(100));
        assert!(created(&result).is_empty());
        assert_eq!(
            events(&result),
            ["Scaled down replica set web-old from 2 to 0"]
        );

        // Scaled to 0 but a pod still runs (terminating, say): wait.
        let old = with_status(
            {
                let mut rs = old;
                if let Some(spec) = rs.spec.as_mut() {
                    spec.replicas = Some(0);
                }
                rs
            },
            0,
            0,
        );
        let mut running = pod("uid-old", "Running", None);
        running.metadata.deletion_timestamp = Some(Time(at(95)));
        let result = sync(&d, std::slice::from_ref(&old), &[running], at(100));
        assert!(created(&result).is_empty(), "{:?}", result.actions);
        assert!(updated(&result).is_empty());

        // Only finished pods left: the new ReplicaSet is created with every replica.
        let done = pod("uid-old", "Succeeded", None);
        let result = sync(&d, &[old], &[done], at(100));
        let creates = created(&result);
        assert_eq!(creates.len(), 1);
        assert_eq!(size(creates[0]), 2);
        assert_eq!(annotation(creates[0], MAX_REPLICAS_ANNOTATION), Some("2"));
        assert_eq!(events(&result).len(), 1);
    }

    #[test]
    fn recreate_scales_up_an_existing_new_replica_set() {
        let d = recreate(at_revision(deployment(3, "nginx:2"), 2));
        let old = with_status(owned(&d, "old", "nginx:1", 0, 1, 10), 0, 0);
        let new = owned(&d, "new", "nginx:2", 0, 2, 20);
        let mut d = d;
        if let Some(a) = d.metadata.annotations.as_mut() {
            a.insert("x".into(), "y".into());
        }
        let result = sync(&d, &[old, new], &[], at(100));
        let updates = updated(&result);
        assert_eq!(updates.len(), 1);
        assert_eq!(size(updates[0]), 3);
        // The copied annotation rode along in the same write.
        assert_eq!(annotation(updates[0], "x"), Some("y"));
        assert_eq!(
            events(&result),
            ["Scaled up replica set web-new from 0 to 3"]
        );
    }

    #[test]
    fn revision_history_limit_deletes_the_oldest_empty_replica_sets() {
        let mut d = at_revision(deployment(2, "nginx:9"), 9);
        if let Some(spec) = d.spec.as_mut() {
            spec.revision_history_limit = Some(1);
        }
        d.status = Some(with_progressing(
            observed(2, 2, 2),
            NEW_RS_AVAILABLE_REASON,
            50,
        ));
        let empty = |suffix: &str, revision: i64, created: i64| {
            with_status(owned(&d, suffix, suffix, 0, revision, created), 0, 0)
        };
        // Revision order, not creation order, decides.
        let r1 = empty("r1", 1, 40);
        let r2 = empty("r2", 2, 30);
        let r3 = empty("r3", 3, 20);
        let mut deleting = empty("r0", 0, 5);
        deleting.metadata.deletion_timestamp = Some(Time(at(90)));
        let new = owned(&d, "r9", "nginx:9", 2, 9, 50);
        let result = sync(&d, &[r1, r2, r3, deleting, new], &[], at(100));
        let deleted: Vec<&str> = result
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteReplicaSet {
                    name,
                    uid,
                    resource_version,
                } => {
                    assert_eq!(resource_version, "7");
                    assert!(uid.starts_with("uid-"));
                    Some(name.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["web-r1", "web-r2"]);
    }

    #[test]
    fn cleanup_skips_replica_sets_with_pods_or_stale_status() {
        let mut d = at_revision(deployment(1, "nginx:9"), 9);
        if let Some(spec) = d.spec.as_mut() {
            spec.revision_history_limit = Some(0);
        }
        d.status = Some(observed(1, 1, 1));
        let busy = with_status(owned(&d, "busy", "a", 0, 1, 10), 1, 0);
        let mut stale = with_status(owned(&d, "stale", "b", 0, 2, 20), 0, 0);
        stale.metadata.generation = Some(2);
        let new = owned(&d, "new", "nginx:9", 1, 9, 30);
        let result = sync(&d, &[busy, stale, new], &[], at(100));
        assert!(
            !result
                .actions
                .iter()
                .any(|a| matches!(a, Action::DeleteReplicaSet { .. }))
        );
    }

    #[test]
    fn complete_rollout_reports_new_replica_set_available() {
        let mut d = at_revision(deployment(3, "nginx:1"), 1);
        d.status = Some(with_progressing(observed(3, 3, 3), RS_UPDATED_REASON, 50));
        let rs = owned(&d, "v1", "nginx:1", 3, 1, 10);
        let result = sync(&d, &[rs], &[], at(100));
        let status = status_written(&result).unwrap();
        assert_eq!(
            condition_of(status, PROGRESSING),
            Some(("True".into(), NEW_RS_AVAILABLE_REASON.into()))
        );
        let progressing = super::super::status::condition(status, PROGRESSING).unwrap();
        assert_eq!(
            progressing.message.as_deref(),
            Some("ReplicaSet \"web-v1\" has successfully progressed.")
        );
        // Same status (True): the transition time is kept.
        assert_eq!(progressing.last_transition_time, Some(Time(at(50))));
        assert_eq!(progressing.last_update_time, Some(Time(at(100))));
    }

    #[test]
    fn progress_refreshes_the_update_time_and_a_stall_times_out() {
        let mut d = at_revision(deployment(4, "nginx:2"), 2);
        if let Some(spec) = d.spec.as_mut() {
            spec.progress_deadline_seconds = Some(60);
        }
        // More updated pods than the last status said: progressing. (3 old available, 3 new
        // not yet: maxUnavailable 1 allows no scaling.)
        d.status = Some(with_progressing(observed(6, 2, 3), RS_UPDATED_REASON, 10));
        let old = owned(&d, "old", "nginx:1", 3, 1, 5);
        let new = with_status(owned(&d, "new", "nginx:2", 3, 2, 10), 3, 0);
        let result = sync(&d, &[old.clone(), new.clone()], &[], at(100));
        assert!(updated(&result).is_empty(), "{:?}", result.actions);
        let status = status_written(&result).unwrap();
        let progressing = super::super::status::condition(status, PROGRESSING).unwrap();
        assert_eq!(progressing.reason.as_deref(), Some(RS_UPDATED_REASON));
        assert_eq!(progressing.last_update_time, Some(Time(at(100))));
        assert_eq!(progressing.last_transition_time, Some(Time(at(10))));

        // The same counts again: no progress. Before the deadline: a requeue for it.
        let mut stalled = d.clone();
        let mut same = with_progressing(observed(6, 3, 3), RS_UPDATED_REASON, 80);
        set_condition(
            &mut same,
            new_condition(
                super::super::status::AVAILABLE,
                "True",
                super::super::status::MIN_AVAILABLE_REASON,
                "Deployment has minimum availability.".into(),
                at(1),
            ),
        );
        stalled.status = Some(same);
        let result = sync(&stalled, &[old.clone(), new.clone()], &[], at(100));
        assert_eq!(result.actions, []);
        assert_eq!(result.requeue_after, Some(Duration::from_secs(41)));

        // After it: timed out.
        let result = sync(&stalled, &[old, new], &[], at(200));
        let status = status_written(&result).unwrap();
        assert_eq!(
            condition_of(status, PROGRESSING),
            Some(("False".into(), TIMED_OUT_REASON.into()))
        );
        assert_eq!(
            super::super::status::condition(status, PROGRESSING)
                .unwrap()
                .message
                .as_deref(),
            Some("ReplicaSet \"web-new\" has timed out progressing.")
        );
    }

    #[test]
    fn no_progress_deadline_means_no_progressing_condition() {
        let mut d = at_revision(deployment(2, "nginx:1"), 1);
        if let Some(spec) = d.spec.as_mut() {
            spec.progress_deadline_seconds = Some(i32::MAX);
        }
        d.status = Some(with_progressing(observed(2, 2, 2), FOUND_NEW_RS_REASON, 1));
        let rs = owned(&d, "v1", "nginx:1", 2, 1, 10);
        let result = sync(&d, &[rs], &[], at(100));
        let status = status_written(&result).unwrap();
        assert_eq!(condition_of(status, PROGRESSING), None);
        assert_eq!(result.requeue_after, None);
    }

    #[test]
    fn replica_failures_are_copied_into_the_deployment() {
        let mut d = at_revision(deployment(2, "nginx:1"), 1);
        d.status = Some(observed(0, 0, 0));
        let mut rs = with_status(owned(&d, "v1", "nginx:1", 2, 1, 10), 0, 0);
        if let Some(status) = rs.status.as_mut() {
            status.conditions = Some(vec![ReplicaSetCondition {
                type_: REPLICA_FAILURE.into(),
                status: "True".into(),
                reason: Some("FailedCreate".into()),
                message: Some("quota".into()),
                last_transition_time: Some(Time(at(90))),
            }]);
        }
        let result = sync(&d, &[rs], &[], at(100));
        let status = status_written(&result).unwrap();
        assert_eq!(
            condition_of(status, REPLICA_FAILURE),
            Some(("True".into(), "FailedCreate".into()))
        );
    }

    #[test]
    fn a_rolling_update_converges_within_its_bounds() {
        let d = rolling(
            deployment(10, "nginx:1"),
            IntOrString::String("20%".into()),
            IntOrString::String("30%".into()),
        );
        let mut cluster = Cluster::new(d, vec![]);
        for _ in 0..4 {
            cluster.step(true);
        }
        assert_eq!(cluster.running("nginx:1").map(size), Some(10));
        cluster.set_image("nginx:2");
        for _ in 0..30 {
            cluster.step(true);
            let wanted: i32 = cluster.replica_sets.iter().map(size).sum();
            // Never more than replicas + surge (2) pods, never fewer than replicas -
            // unavailable (3) of them.
            assert!(wanted <= 12, "{wanted} pods wanted");
            assert!(wanted >= 7, "{wanted} pods wanted");
        }
        assert_eq!(cluster.running("nginx:2").map(size), Some(10));
        assert_eq!(cluster.running("nginx:1").map(size), Some(0));
        let status = cluster.deployment.status.clone().unwrap();
        assert_eq!(status.updated_replicas, Some(10));
        assert_eq!(status.replicas, Some(10));
        assert_eq!(
            condition_of(&status, PROGRESSING).map(|c| c.1),
            Some(NEW_RS_AVAILABLE_REASON.to_string())
        );
        let annotations = cluster.deployment.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations.get(REVISION_ANNOTATION).map(String::as_str),
            Some("2")
        );
        assert_eq!(cluster.step(true).actions, []);

        // Rolling back re-uses the first ReplicaSet at revision 3.
        cluster.set_image("nginx:1");
        for _ in 0..30 {
            cluster.step(true);
        }
        let back = cluster.running("nginx:1").unwrap();
        assert_eq!(size(back), 10);
        assert_eq!(annotation(back, REVISION_ANNOTATION), Some("3"));
        assert_eq!(annotation(back, REVISION_HISTORY_ANNOTATION), Some("1"));
        assert_eq!(cluster.replica_sets.len(), 2);
    }

    #[test]
    fn a_recreate_rollout_never_overlaps_old_and_new_pods() {
        let mut cluster = Cluster::new(recreate(deployment(3, "nginx:1")), vec![]);
        for _ in 0..4 {
            cluster.step(true);
        }
        cluster.set_image("nginx:2");
        for _ in 0..10 {
            cluster.step(true);
            let old = cluster.running("nginx:1").map_or(0, size);
            let new = cluster.running("nginx:2").map_or(0, size);
            assert!(old == 0 || new == 0, "old {old} and new {new} together");
        }
        assert_eq!(cluster.running("nginx:2").map(size), Some(3));
        assert_eq!(cluster.step(true).actions, []);
    }
}
