//! The Deployment controller's decisions, without IO: given a Deployment, the ReplicaSets and
//! pods of its namespace and the time, what to create, scale, adopt, delete and write, as
//! kube-controller-manager's deployment controller decides it (`syncDeployment`,
//! `getNewReplicaSet`, `getReplicaSetsForDeployment`). The rollouts themselves live in
//! `rollout`, the status in `status`.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::pods::{
    controller_of, controller_reference, labels, selector_is_empty, selector_matches,
};

pub use super::hash::pod_template_hash;
use super::hash::{POD_TEMPLATE_HASH_LABEL, equal_ignore_hash};
use super::replica_sets::{by_creation, new_replica_set_size};
use super::revision::{REVISION_ANNOTATION, max_revision, set_new_replica_set_annotations};
use super::spec::ResolvedSpec;
use super::status::{
    FOUND_NEW_RS_REASON, NEW_RS_REASON, PROGRESSING, StatusInputs, calculate_status, condition,
    new_condition, same_status, set_condition, set_paused_condition,
};

/// One step of a sync, for the shell to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create this ReplicaSet (name set, not generateName). If it already exists with another
    /// template the shell reports `AlreadyExists`; the next sync sees it and bumps
    /// `status.collisionCount` (upstream's hash collision handling).
    CreateReplicaSet(ReplicaSet),
    /// Replace the ReplicaSet with this object (same resourceVersion as observed: a conflict
    /// makes the shell requeue): spec.replicas and/or annotations changed. A ReplicaSet adopted
    /// in the same sync carries the new controller reference too (its adoption changed the
    /// resourceVersion, so this replace conflicts and the next sync retries it).
    UpdateReplicaSet(ReplicaSet),
    /// Patch our controller reference into an orphan ReplicaSet that matches the selector
    /// (adoption). Name + uid.
    AdoptReplicaSet {
        /// The ReplicaSet's name.
        name: String,
        /// Its uid (the patch's precondition).
        uid: String,
    },
    /// Delete an old ReplicaSet (revisionHistoryLimit cleanup), precondition uid +
    /// resourceVersion.
    DeleteReplicaSet {
        /// The ReplicaSet's name.
        name: String,
        /// Its uid.
        uid: String,
        /// Its resourceVersion as observed.
        resource_version: String,
    },
    /// Set the Deployment's metadata annotations to exactly these (the shell merge-patches the
    /// main resource); used for `deployment.kubernetes.io/revision`.
    SetDeploymentAnnotations(BTreeMap<String, String>),
    /// Write this status (the status subresource).
    UpdateStatus(DeploymentStatus),
    /// Record an Event on the Deployment.
    Event {
        /// A Warning (else Normal) event.
        warning: bool,
        /// The event's reason.
        reason: String,
        /// The event's message.
        message: String,
    },
}

/// What one sync decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncResult {
    /// Applied in order by the shell; it stops at the first failure and requeues with backoff
    /// (level-triggered: the next sync recomputes everything).
    pub actions: Vec<Action>,
    /// Sync again after this long even if nothing changes (minReadySeconds,
    /// progressDeadlineSeconds checks).
    pub requeue_after: Option<Duration>,
}

/// The reason of the events recording a ReplicaSet's scaling.
pub const SCALING_REPLICA_SET_REASON: &str = "ScalingReplicaSet";
/// The reason of the warning about an empty selector.
pub const SELECTING_ALL_REASON: &str = "SelectingAll";

/// Decides one sync of `deployment` (upstream `syncDeployment`).
///
/// `replica_sets`: the ReplicaSets of the Deployment's namespace the controller knows (owned
/// by it or orphans — the function picks, adopts orphans matching the selector, ignores those
/// controlled by others); `pods`: the pods of the namespace (for Recreate's "old pods still
/// running" check; those owned by the deployment's ReplicaSets count). `now`: current time.
pub fn sync(
    deployment: &Deployment,
    replica_sets: &[ReplicaSet],
    pods: &[Pod],
    now: Timestamp,
) -> SyncResult {
    // API times have whole seconds: stamping conditions with more would make every written
    // status differ from its read-back.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let mut planner = Planner::new(deployment, replica_sets, now);
    let selector = deployment.spec.as_ref().map(|s| &s.selector);
    if selector.is_none_or(selector_is_empty) {
        planner.event(
            true,
            SELECTING_ALL_REASON,
            "This deployment is selecting all pods. A non-empty selector is required.".into(),
        );
        let generation = deployment.metadata.generation.unwrap_or(0);
        if planner.status.observed_generation.unwrap_or(0) < generation {
            planner.status.observed_generation = Some(generation);
            let status = planner.status.clone();
            planner.write_status(status);
        }
        return planner.finish(None);
    }
    let deleting = deployment.metadata.deletion_timestamp.is_some();
    planner.claim(!deleting);
    if deleting {
        return planner.sync_status_only();
    }
    set_paused_condition(&planner.spec, &mut planner.status, now);
    if planner.spec.paused || planner.is_scaling_event() {
        return planner.sync_scale(pods);
    }
    if planner.spec.recreate {
        planner.rollout_recreate(pods)
    } else {
        planner.rollout_rolling(pods)
    }
}

/// A sync ended early (a hash collision: the collision count was bumped).
pub(super) struct Stop;

/// One sync's working state: the Deployment's ReplicaSets and status as the actions decided so
/// far leave them.
pub(super) struct Planner<'a> {
    /// The Deployment being synced.
    pub deployment: &'a Deployment,
    /// Every ReplicaSet the caller knows (for name collisions).
    pub known: &'a [ReplicaSet],
    /// Its spec with defaults.
    pub spec: ResolvedSpec,
    /// The time of this sync (whole seconds).
    pub now: Timestamp,
    /// The actions so far.
    pub actions: Vec<Action>,
    /// The Deployment's status as changed so far.
    pub status: DeploymentStatus,
    /// The Deployment's annotations as changed so far.
    pub annotations: BTreeMap<String, String>,
    /// The Deployment's ReplicaSets (owned and adopted), oldest first, as changed so far.
    pub replica_sets: Vec<ReplicaSet>,
    /// Which of them is the new one (its template is the Deployment's).
    pub new_index: Option<usize>,
}

impl<'a> Planner<'a> {
    fn new(deployment: &'a Deployment, known: &'a [ReplicaSet], now: Timestamp) -> Self {
        Planner {
            deployment,
            known,
            spec: ResolvedSpec::of(deployment),
            now,
            actions: Vec::new(),
            status: deployment.status.clone().unwrap_or_default(),
            annotations: deployment.metadata.annotations.clone().unwrap_or_default(),
            replica_sets: Vec::new(),
            new_index: None,
        }
    }

    /// The Deployment's pod template.
    pub fn template(&self) -> PodTemplateSpec {
        self.deployment
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    /// The Deployment's selector.
    pub fn selector(&self) -> LabelSelector {
        self.deployment
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default()
    }

    /// Upstream `getReplicaSetsForDeployment`: keeps the ReplicaSets this Deployment controls
    /// whose labels still match, and adopts orphans that match and are not being deleted
    /// (unless `may_adopt` is false: the Deployment is being deleted). Controlled ones that no
    /// longer match are left out (upstream releases them).
    fn claim(&mut self, may_adopt: bool) {
        let selector = self.selector();
        let uid = self.deployment.metadata.uid.as_deref();
        let reference = controller_reference("apps/v1", "Deployment", &self.deployment.metadata);
        for rs in self.known {
            if !selector_matches(&selector, labels(&rs.metadata)) {
                continue;
            }
            match controller_of(&rs.metadata) {
                Some(owner) if Some(owner.uid.as_str()) == uid => {
                    self.replica_sets.push(rs.clone())
                }
                Some(_) => {}
                None => {
                    let Some(reference) = reference.clone() else {
                        continue;
                    };
                    if !may_adopt || rs.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    self.actions.push(Action::AdoptReplicaSet {
                        name: rs.metadata.name.clone().unwrap_or_default(),
                        uid: rs.metadata.uid.clone().unwrap_or_default(),
                    });
                    let mut adopted = rs.clone();
                    adopted
                        .metadata
                        .owner_references
                        .get_or_insert_with(Vec::new)
                        .push(reference);
                    self.replica_sets.push(adopted);
                }
            }
        }
        self.replica_sets.sort_by(by_creation);
    }

    /// The oldest ReplicaSet whose template is the Deployment's (upstream `FindNewReplicaSet`).
    pub fn find_new(&self) -> Option<usize> {
        let template = self.template();
        self.replica_sets.iter().position(|rs| {
            let rs_template = rs.spec.as_ref().and_then(|s| s.template.clone());
            equal_ignore_hash(&rs_template.unwrap_or_default(), &template)
        })
    }

    /// The new ReplicaSet, if any.
    pub fn new_replica_set(&self) -> Option<&ReplicaSet> {
        self.new_index.and_then(|i| self.replica_sets.get(i))
    }

    /// The indices of the old ReplicaSets (all but the new), oldest first.
    pub fn old_indices(&self) -> Vec<usize> {
        (0..self.replica_sets.len())
            .filter(|i| Some(*i) != self.new_index)
            .collect()
    }

    /// Upstream `getNewReplicaSet`: finds the new ReplicaSet and brings its annotations
    /// (revision = max old revision + 1, copied deployment annotations) and minReadySeconds up
    /// to date, the Deployment's revision annotation with it; creates it if `create` and there
    /// is none. `Err(Stop)` on a hash collision (the collision count was bumped).
    pub fn sync_new_replica_set(&mut self, create: bool) -> Result<(), Stop> {
        self.new_index = self.find_new();
        let old_revision = max_revision(
            self.old_indices()
                .into_iter()
                .map(|i| &self.replica_sets[i]),
        );
        let new_revision = old_revision.saturating_add(1);
        let deployment_annotations = self
            .deployment
            .metadata
            .annotations
            .clone()
            .unwrap_or_default();
        let Some(index) = self.new_index else {
            return if create {
                self.create_new_replica_set(new_revision, &deployment_annotations)
            } else {
                Ok(())
            };
        };
        let (replicas, max_replicas) = (self.spec.replicas, self.spec.max_replicas());
        let min_ready_seconds = self.spec.min_ready_seconds;
        let rs = &mut self.replica_sets[index];
        let mut changed = set_new_replica_set_annotations(
            &deployment_annotations,
            rs,
            new_revision,
            true,
            replicas,
            max_replicas,
        );
        let rs_spec = rs.spec.get_or_insert_with(ReplicaSetSpec::default);
        if rs_spec.min_ready_seconds.unwrap_or(0) != min_ready_seconds.unwrap_or(0) {
            rs_spec.min_ready_seconds = min_ready_seconds;
            changed = true;
        }
        let revision = rs
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        if changed {
            self.write_replica_set(index);
        }
        self.set_deployment_revision(revision);
        if self.spec.progress_deadline_seconds.is_some()
            && condition(&self.status, PROGRESSING).is_none()
        {
            let found = new_condition(
                PROGRESSING,
                "True",
                FOUND_NEW_RS_REASON,
                format!("Found new replica set {name:?}"),
                self.now,
            );
            set_condition(&mut self.status, found);
        }
        Ok(())
    }

    /// Creates the new ReplicaSet `<deployment>-<hash>` (upstream `getNewReplicaSet`'s create
    /// branch), or bumps the collision count if another ReplicaSet has that name.
    fn create_new_replica_set(
        &mut self,
        revision: i64,
        deployment_annotations: &BTreeMap<String, String>,
    ) -> Result<(), Stop> {
        let template = self.template();
        let hash = pod_template_hash(&template, self.status.collision_count);
        let deployment_name = self.deployment.metadata.name.clone().unwrap_or_default();
        let name = format!("{deployment_name}-{hash}");
        if let Some(existing) = self
            .known
            .iter()
            .find(|rs| rs.metadata.name.as_deref() == Some(name.as_str()))
        {
            let ours = controller_of(&existing.metadata)
                .is_some_and(|o| Some(o.uid.as_str()) == self.deployment.metadata.uid.as_deref());
            let existing_template = existing.spec.as_ref().and_then(|s| s.template.clone());
            if ours && equal_ignore_hash(&existing_template.unwrap_or_default(), &template) {
                // Upstream's AlreadyExists of our own new ReplicaSet: use it as is.
                let index = match self
                    .replica_sets
                    .iter()
                    .position(|rs| rs.metadata.name.as_deref() == Some(name.as_str()))
                {
                    Some(index) => index,
                    None => {
                        self.replica_sets.push(existing.clone());
                        self.replica_sets.len() - 1
                    }
                };
                self.new_index = Some(index);
                self.set_deployment_revision(revision.to_string());
                return Ok(());
            }
            let count = self.status.collision_count.unwrap_or(0).saturating_add(1);
            self.status.collision_count = Some(count);
            let status = self.status.clone();
            self.write_status(status);
            return Err(Stop);
        }

        let mut rs_labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        rs_labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.clone());
        let mut rs_template = template;
        rs_template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels = Some(rs_labels.clone());
        let mut selector = self.selector();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash);
        let owner = controller_reference("apps/v1", "Deployment", &self.deployment.metadata);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.deployment.metadata.namespace.clone(),
                labels: Some(rs_labels),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: self.spec.min_ready_seconds,
                selector,
                template: Some(rs_template),
            }),
            status: None,
        };
        let all: Vec<&ReplicaSet> = self.replica_sets.iter().chain([&rs]).collect();
        let size = new_replica_set_size(&self.spec, &all, &rs);
        if let Some(spec) = rs.spec.as_mut() {
            spec.replicas = Some(size);
        }
        set_new_replica_set_annotations(
            deployment_annotations,
            &mut rs,
            revision,
            false,
            self.spec.replicas,
            self.spec.max_replicas(),
        );
        self.actions.push(Action::CreateReplicaSet(rs.clone()));
        if size > 0 {
            self.event(
                false,
                SCALING_REPLICA_SET_REASON,
                format!("Scaled up replica set {name} from 0 to {size}"),
            );
        }
        self.set_deployment_revision(revision.to_string());
        if self.spec.progress_deadline_seconds.is_some() {
            let created = new_condition(
                PROGRESSING,
                "True",
                NEW_RS_REASON,
                format!("Created new replica set {name:?}"),
                self.now,
            );
            set_condition(&mut self.status, created);
        }
        self.replica_sets.push(rs);
        self.new_index = Some(self.replica_sets.len() - 1);
        Ok(())
    }

    /// Upstream `SetDeploymentRevision`: the Deployment's revision annotation follows the new
    /// ReplicaSet's.
    fn set_deployment_revision(&mut self, revision: String) {
        if self.annotations.get(REVISION_ANNOTATION) != Some(&revision) {
            self.annotations
                .insert(REVISION_ANNOTATION.to_string(), revision);
            self.actions
                .push(Action::SetDeploymentAnnotations(self.annotations.clone()));
        }
    }

    /// Records an event on the Deployment.
    pub fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.actions.push(Action::Event {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    /// Writes the ReplicaSet at `index` as it is now: folded into this sync's earlier create or
    /// update of it if there is one (a second replace would conflict), else a new update.
    pub fn write_replica_set(&mut self, index: usize) {
        let Some(rs) = self.replica_sets.get(index).cloned() else {
            return;
        };
        let earlier = self.actions.iter_mut().find_map(|action| match action {
            Action::CreateReplicaSet(written) | Action::UpdateReplicaSet(written)
                if written.metadata.name == rs.metadata.name =>
            {
                Some(written)
            }
            _ => None,
        });
        match earlier {
            Some(written) => *written = rs,
            None => self.actions.push(Action::UpdateReplicaSet(rs)),
        }
    }

    /// Takes `status` as the Deployment's status, writing it if it differs from the observed.
    pub fn write_status(&mut self, status: DeploymentStatus) {
        let observed = self.deployment.status.clone().unwrap_or_default();
        if !same_status(&status, &observed) {
            // One status write per sync: a later one replaces an earlier.
            self.actions
                .retain(|action| !matches!(action, Action::UpdateStatus(_)));
            self.actions.push(Action::UpdateStatus(status.clone()));
        }
        self.status = status;
    }

    /// Inputs of the status computations.
    pub fn status_inputs(&self) -> StatusInputs<'_> {
        StatusInputs {
            deployment: self.deployment,
            spec: &self.spec,
            current: &self.status,
            now: self.now,
        }
    }

    /// The result.
    pub fn finish(self, requeue_after: Option<Duration>) -> SyncResult {
        SyncResult {
            actions: self.actions,
            requeue_after,
        }
    }

    /// Upstream `syncStatusOnly` for a Deployment being deleted: only its status.
    fn sync_status_only(mut self) -> SyncResult {
        self.new_index = self.find_new();
        let all: Vec<&ReplicaSet> = self.replica_sets.iter().collect();
        let status = calculate_status(&self.status_inputs(), &all, self.new_replica_set());
        self.write_status(status);
        self.finish(None)
    }
}

/// Builders and a tiny in-memory cluster for the tests of this module and `rollout`.
#[cfg(test)]
pub(super) mod fixtures {
    use std::collections::BTreeMap;

    use jiff::Timestamp;
    use k8s_openapi::api::apps::v1::{
        Deployment, DeploymentSpec, DeploymentStatus, DeploymentStrategy, ReplicaSet,
        ReplicaSetSpec, ReplicaSetStatus, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{
        Container, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::{Action, SyncResult, sync};
    use crate::deployment::hash::POD_TEMPLATE_HASH_LABEL;
    use crate::deployment::revision::{
        DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION, REVISION_ANNOTATION,
    };
    use crate::pods::controller_reference;

    /// The Deployment's uid.
    pub const UID: &str = "uid-web";

    /// A time, in seconds since the epoch.
    pub fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn app_labels() -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), "web".to_string())])
    }

    /// The pod template running `image`.
    pub fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(app_labels()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    /// Deployment `web` (generation 1) of `replicas` pods running `image`, default strategy.
    pub fn deployment(replicas: i32, image: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some(UID.into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(app_labels()),
                    match_expressions: None,
                },
                template: template(image),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Sets a RollingUpdate strategy with these fenceposts.
    pub fn rolling(mut d: Deployment, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        if let Some(spec) = d.spec.as_mut() {
            spec.strategy = Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            });
        }
        d
    }

    /// Sets the Recreate strategy.
    pub fn recreate(mut d: Deployment) -> Deployment {
        if let Some(spec) = d.spec.as_mut() {
            spec.strategy = Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            });
        }
        d
    }

    /// Sets the Deployment's revision annotation.
    pub fn at_revision(mut d: Deployment, revision: i64) -> Deployment {
        d.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(REVISION_ANNOTATION.into(), revision.to_string());
        d
    }

    /// A ReplicaSet of `d` named `web-<suffix>` running `image`, created at `created`, with
    /// `replicas` wanted and all of them running and available, at `revision`, last scaled
    /// for `d`'s current replicas (desired/max annotations as `d` would set them).
    pub fn owned(
        d: &Deployment,
        suffix: &str,
        image: &str,
        replicas: i32,
        revision: i64,
        created: i64,
    ) -> ReplicaSet {
        let spec = crate::deployment::spec::ResolvedSpec::of(d);
        let mut labels = app_labels();
        labels.insert(POD_TEMPLATE_HASH_LABEL.into(), suffix.into());
        let mut rs_template = template(image);
        if let Some(meta) = rs_template.metadata.as_mut() {
            meta.labels = Some(labels.clone());
        }
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("web-{suffix}")),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{suffix}")),
                resource_version: Some("7".into()),
                generation: Some(1),
                creation_timestamp: Some(Time(at(created))),
                labels: Some(labels.clone()),
                annotations: Some(BTreeMap::from([
                    (REVISION_ANNOTATION.into(), revision.to_string()),
                    (
                        DESIRED_REPLICAS_ANNOTATION.into(),
                        spec.replicas.to_string(),
                    ),
                    (
                        MAX_REPLICAS_ANNOTATION.into(),
                        spec.max_replicas().to_string(),
                    ),
                ])),
                owner_references: controller_reference("apps/v1", "Deployment", &d.metadata)
                    .map(|r| vec![r]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: None,
                selector: LabelSelector {
                    match_labels: Some(labels),
                    match_expressions: None,
                },
                template: Some(rs_template),
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(replicas),
                available_replicas: Some(replicas),
                observed_generation: Some(1),
                ..Default::default()
            }),
        }
    }

    /// A Deployment status with these counts (all ready ones available).
    pub fn observed(replicas: i32, updated: i32, available: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(available),
            available_replicas: Some(available),
            unavailable_replicas: Some((replicas - available).max(0)),
            ..Default::default()
        }
    }

    /// Sets a ReplicaSet's status counts.
    pub fn with_status(mut rs: ReplicaSet, replicas: i32, available: i32) -> ReplicaSet {
        rs.status = Some(ReplicaSetStatus {
            replicas,
            ready_replicas: Some(available),
            available_replicas: Some(available),
            observed_generation: Some(1),
            ..Default::default()
        });
        rs
    }

    /// A pod with app=web labels controlled by the ReplicaSet with `owner_uid`, in `phase`,
    /// ready since `ready_since` if given.
    pub fn pod(owner_uid: &str, phase: &str, ready_since: Option<Timestamp>) -> Pod {
        let owner = ObjectMeta {
            name: Some("owner".into()),
            uid: Some(owner_uid.into()),
            ..Default::default()
        };
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("pod-of-{owner_uid}")),
                labels: Some(app_labels()),
                owner_references: controller_reference("apps/v1", "ReplicaSet", &owner)
                    .map(|r| vec![r]),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_since.map(|since| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(since)),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    /// The ReplicaSets created.
    pub fn created(result: &SyncResult) -> Vec<&ReplicaSet> {
        result
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateReplicaSet(rs) => Some(rs),
                _ => None,
            })
            .collect()
    }

    /// The ReplicaSets replaced.
    pub fn updated(result: &SyncResult) -> Vec<&ReplicaSet> {
        result
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::UpdateReplicaSet(rs) => Some(rs),
                _ => None,
            })
            .collect()
    }

    /// The messages of the events.
    pub fn events(result: &SyncResult) -> Vec<String> {
        result
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    /// The status written, if any.
    pub fn status_written(result: &SyncResult) -> Option<&DeploymentStatus> {
        result.actions.iter().find_map(|a| match a {
            Action::UpdateStatus(status) => Some(status),
            _ => None,
        })
    }

    /// A condition's (status, reason).
    pub fn condition_of(status: &DeploymentStatus, type_: &str) -> Option<(String, String)> {
        crate::deployment::status::condition(status, type_)
            .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
    }

    /// `spec.replicas` of a ReplicaSet.
    pub fn size(rs: &ReplicaSet) -> i32 {
        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1)
    }

    /// An annotation of a ReplicaSet.
    pub fn annotation<'a>(rs: &'a ReplicaSet, key: &str) -> Option<&'a str> {
        rs.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// A fake cluster: applies sync results like the API server would, and plays a
    /// ReplicaSet controller whose pods are available at once.
    pub struct Cluster {
        /// The Deployment.
        pub deployment: Deployment,
        /// Its ReplicaSets.
        pub replica_sets: Vec<ReplicaSet>,
        /// The clock.
        pub now: i64,
        next_uid: u32,
    }

    impl Cluster {
        /// A cluster holding these.
        pub fn new(deployment: Deployment, replica_sets: Vec<ReplicaSet>) -> Self {
            Cluster {
                deployment,
                replica_sets,
                now: 1_000,
                next_uid: 0,
            }
        }

        /// One sync, its actions applied; the ReplicaSets' pods then match their spec if
        /// `pods_follow`.
        pub fn step(&mut self, pods_follow: bool) -> SyncResult {
            self.now += 10;
            let result = sync(&self.deployment, &self.replica_sets, &[], at(self.now));
            for action in &result.actions {
                self.apply(action);
            }
            if pods_follow {
                for rs in &mut self.replica_sets {
                    let replicas = size(rs).max(0);
                    *rs = with_status(rs.clone(), replicas, replicas);
                }
            }
            result
        }

        fn apply(&mut self, action: &Action) {
            match action {
                Action::CreateReplicaSet(rs) => {
                    let mut rs = rs.clone();
                    self.next_uid += 1;
                    rs.metadata.uid = Some(format!("uid-created-{}", self.next_uid));
                    rs.metadata.creation_timestamp = Some(Time(at(self.now)));
                    rs.metadata.resource_version = Some("1".into());
                    self.replica_sets.push(rs);
                }
                Action::UpdateReplicaSet(rs) => {
                    for existing in &mut self.replica_sets {
                        if existing.metadata.name == rs.metadata.name {
                            *existing = rs.clone();
                        }
                    }
                }
                Action::DeleteReplicaSet { name, .. } => self
                    .replica_sets
                    .retain(|rs| rs.metadata.name.as_deref() != Some(name.as_str())),
                Action::SetDeploymentAnnotations(annotations) => {
                    self.deployment.metadata.annotations = Some(annotations.clone())
                }
                Action::UpdateStatus(status) => self.deployment.status = Some(status.clone()),
                Action::AdoptReplicaSet { .. } | Action::Event { .. } => {}
            }
        }

        /// The ReplicaSet running `image`.
        pub fn running(&self, image: &str) -> Option<&ReplicaSet> {
            self.replica_sets.iter().find(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .and_then(|t| t.spec.as_ref())
                    .is_some_and(|s| s.containers[0].image.as_deref() == Some(image))
            })
        }

        /// Changes the Deployment's template image (a new generation).
        pub fn set_image(&mut self, image: &str) {
            if let Some(spec) = self.deployment.spec.as_mut() {
                spec.template = template(image);
            }
            let generation = self.deployment.metadata.generation.unwrap_or(0);
            self.deployment.metadata.generation = Some(generation + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::fixtures::*;
    use super::*;
    use crate::deployment::revision::{
        DESIRED_REPLICAS_ANNOTATION, LAST_APPLIED_ANNOTATION, MAX_REPLICAS_ANNOTATION,
        REVISION_HISTORY_ANNOTATION,
    };
    use crate::deployment::status::{
        AVAILABLE, MIN_UNAVAILABLE_REASON, NEW_RS_AVAILABLE_REASON, PAUSED_REASON, RESUMED_REASON,
    };

    #[test]
    fn first_sync_creates_the_new_replica_set() {
        let mut d = deployment(3, "nginx:1");
        d.metadata.annotations = Some(BTreeMap::from([
            ("team".to_string(), "blue".to_string()),
            (LAST_APPLIED_ANNOTATION.to_string(), "{}".to_string()),
        ]));
        if let Some(spec) = d.spec.as_mut() {
            spec.min_ready_seconds = Some(5);
        }
        let result = sync(&d, &[], &[], at(100));
        let hash = pod_template_hash(&template("nginx:1"), None);
        let name = format!("web-{hash}");
        let creates = created(&result);
        assert_eq!(creates.len(), 1);
        let rs = creates[0];
        assert_eq!(rs.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(rs.metadata.namespace.as_deref(), Some("default"));
        let labels = rs.metadata.labels.clone().unwrap();
        assert_eq!(labels.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let spec = rs.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.min_ready_seconds, Some(5));
        assert_eq!(
            spec.selector
                .match_labels
                .as_ref()
                .unwrap()
                .get(POD_TEMPLATE_HASH_LABEL),
            Some(&hash)
        );
        let template_labels = spec.template.as_ref().unwrap().metadata.as_ref().unwrap();
        assert_eq!(
            template_labels
                .labels
                .as_ref()
                .unwrap()
                .get(POD_TEMPLATE_HASH_LABEL),
            Some(&hash)
        );
        let owner = controller_of(&rs.metadata).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Deployment", UID)
        );
        assert_eq!(annotation(rs, REVISION_ANNOTATION), Some("1"));
        assert_eq!(annotation(rs, DESIRED_REPLICAS_ANNOTATION), Some("3"));
        assert_eq!(annotation(rs, MAX_REPLICAS_ANNOTATION), Some("4"));
        assert_eq!(annotation(rs, "team"), Some("blue"));
        assert_eq!(annotation(rs, LAST_APPLIED_ANNOTATION), None);
        assert_eq!(
            events(&result),
            [format!("Scaled up replica set {name} from 0 to 3")]
        );
        let mut expected_annotations = d.metadata.annotations.clone().unwrap();
        expected_annotations.insert(REVISION_ANNOTATION.into(), "1".into());
        assert!(
            result
                .actions
                .contains(&Action::SetDeploymentAnnotations(expected_annotations))
        );
        let status = status_written(&result).unwrap();
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(
            condition_of(status, PROGRESSING),
            Some(("True".into(), NEW_RS_REASON.into()))
        );
        assert_eq!(
            crate::deployment::status::condition(status, PROGRESSING)
                .unwrap()
                .message
                .as_deref(),
            Some(format!("Created new replica set {name:?}").as_str())
        );
        assert_eq!(
            condition_of(status, AVAILABLE),
            Some(("False".into(), MIN_UNAVAILABLE_REASON.into()))
        );
        // Create, event, annotations, status: in that order.
        assert!(matches!(result.actions[0], Action::CreateReplicaSet(_)));
        assert!(matches!(
            result.actions.last(),
            Some(Action::UpdateStatus(_))
        ));
        assert_eq!(result.requeue_after, None);
    }

    #[test]
    fn template_change_creates_the_new_replica_set_within_max_surge() {
        let d = at_revision(deployment(10, "nginx:2"), 1);
        let old = owned(&d, "old", "nginx:1", 10, 1, 10);
        let result = sync(&d, &[old], &[], at(100));
        let creates = created(&result);
        assert_eq!(creates.len(), 1);
        // 25% of 10 rounds up to a surge of 3.
        assert_eq!(size(creates[0]), 3);
        assert_eq!(annotation(creates[0], REVISION_ANNOTATION), Some("2"));
        assert_eq!(annotation(creates[0], MAX_REPLICAS_ANNOTATION), Some("13"));
        // As upstream, the same sync already scales the old one down to the 8 available pods
        // maxUnavailable (2) requires: 13 pods - 8 - 3 unavailable new ones.
        let updates = updated(&result);
        assert_eq!(updates.len(), 1);
        assert_eq!(size(updates[0]), 8);
        let name = creates[0].metadata.name.clone().unwrap();
        assert_eq!(
            events(&result),
            [
                format!("Scaled up replica set {name} from 0 to 3"),
                "Scaled down replica set web-old from 10 to 8".to_string()
            ]
        );
    }

    #[test]
    fn surge_exhausted_creates_the_new_replica_set_empty_without_event() {
        let d = rolling(
            at_revision(deployment(2, "nginx:2"), 1),
            IntOrString::Int(0),
            IntOrString::Int(1),
        );
        let old = owned(&d, "old", "nginx:1", 2, 1, 10);
        let result = sync(&d, &[old], &[], at(100));
        assert_eq!(size(created(&result)[0]), 0);
        // No "scaled up from 0 to 0"; the old one makes room within maxUnavailable.
        assert_eq!(
            events(&result),
            ["Scaled down replica set web-old from 2 to 1"]
        );
    }

    #[test]
    fn hash_collision_bumps_the_collision_count_and_stops() {
        let d = deployment(3, "nginx:1");
        let hash = pod_template_hash(&template("nginx:1"), None);
        // Same name, owned by d, another template: a collision.
        let mut squatter = owned(&d, &hash, "busybox", 1, 1, 10);
        squatter.metadata.name = Some(format!("web-{hash}"));
        let result = sync(&d, std::slice::from_ref(&squatter), &[], at(100));
        assert_eq!(result.actions.len(), 1, "{:?}", result.actions);
        let status = status_written(&result).unwrap();
        assert_eq!(status.collision_count, Some(1));
        // With the bumped count the next sync hashes to another name and creates it.
        let mut d = d;
        d.status = Some(status.clone());
        let result = sync(&d, &[squatter], &[], at(110));
        let expected = format!("web-{}", pod_template_hash(&template("nginx:1"), Some(1)));
        assert_eq!(
            created(&result)[0].metadata.name.as_deref(),
            Some(expected.as_str())
        );
        assert_eq!(status_written(&result).unwrap().collision_count, Some(1));
    }

    #[test]
    fn orphans_matching_the_selector_are_adopted_and_used() {
        let d = at_revision(deployment(2, "nginx:1"), 1);
        let mut orphan = owned(&d, "orphan", "nginx:1", 2, 1, 10);
        orphan.metadata.owner_references = None;
        let mut foreign = owned(&d, "foreign", "nginx:0", 4, 1, 5);
        if let Some(refs) = foreign.metadata.owner_references.as_mut() {
            refs[0].uid = "someone-else".into();
        }
        let mut deleting_orphan = owned(&d, "gone", "nginx:0", 0, 1, 6);
        deleting_orphan.metadata.owner_references = None;
        deleting_orphan.metadata.deletion_timestamp = Some(Time(at(50)));
        let result = sync(&d, &[orphan, foreign, deleting_orphan], &[], at(100));
        assert_eq!(
            result.actions[0],
            Action::AdoptReplicaSet {
                name: "web-orphan".into(),
                uid: "uid-orphan".into()
            }
        );
        // It is the new ReplicaSet: nothing created, the foreign one left alone.
        assert!(created(&result).is_empty());
        assert!(updated(&result).is_empty());
        let adoptions = result
            .actions
            .iter()
            .filter(|a| matches!(a, Action::AdoptReplicaSet { .. }))
            .count();
        assert_eq!(adoptions, 1);
        assert_eq!(status_written(&result).unwrap().replicas, Some(2));
    }

    #[test]
    fn an_adopted_replica_set_is_scaled_in_the_same_sync() {
        let d = at_revision(deployment(4, "nginx:1"), 1);
        let mut orphan = owned(&deployment(2, "nginx:1"), "orphan", "nginx:1", 2, 1, 10);
        orphan.metadata.owner_references = None;
        let result = sync(&d, &[orphan], &[], at(100));
        assert!(matches!(result.actions[0], Action::AdoptReplicaSet { .. }));
        let updates = updated(&result);
        assert_eq!(updates.len(), 1);
        assert_eq!(size(updates[0]), 4);
        assert_eq!(
            controller_of(&updates[0].metadata).map(|o| o.uid.as_str()),
            Some(UID)
        );
    }

    #[test]
    fn an_empty_selector_only_warns() {
        let mut d = deployment(3, "nginx:1");
        if let Some(spec) = d.spec.as_mut() {
            spec.selector = LabelSelector::default();
        }
        let result = sync(&d, &[], &[], at(100));
        assert_eq!(
            result.actions[0],
            Action::Event {
                warning: true,
                reason: SELECTING_ALL_REASON.into(),
                message: "This deployment is selecting all pods. A non-empty selector is required."
                    .into()
            }
        );
        assert_eq!(
            status_written(&result).unwrap().observed_generation,
            Some(1)
        );
        assert_eq!(result.actions.len(), 2);
    }

    #[test]
    fn a_deleting_deployment_only_gets_its_status() {
        let mut d = deployment(3, "nginx:2");
        d.metadata.deletion_timestamp = Some(Time(at(90)));
        let old = owned(&d, "old", "nginx:1", 3, 1, 10);
        let mut orphan = owned(&d, "orphan", "nginx:1", 1, 1, 10);
        orphan.metadata.owner_references = None;
        let result = sync(&d, &[old, orphan], &[], at(100));
        assert_eq!(result.actions.len(), 1, "{:?}", result.actions);
        let status = status_written(&result).unwrap();
        assert_eq!(status.replicas, Some(3));
        assert_eq!(status.updated_replicas, Some(0));
    }

    #[test]
    fn rollback_to_an_older_replica_set_raises_its_revision() {
        let mut d = at_revision(deployment(3, "nginx:1"), 2);
        d.status = Some(observed(3, 3, 3));
        let mut v1 = owned(&d, "v1", "nginx:1", 0, 1, 10);
        v1 = with_status(v1, 0, 0);
        let v2 = owned(&d, "v2", "nginx:2", 3, 2, 20);
        let result = sync(&d, &[v1, v2], &[], at(100));
        let updates = updated(&result);
        assert_eq!(updates.len(), 1, "{:?}", result.actions);
        let v1 = updates[0];
        assert_eq!(v1.metadata.name.as_deref(), Some("web-v1"));
        assert_eq!(annotation(v1, REVISION_ANNOTATION), Some("3"));
        assert_eq!(annotation(v1, REVISION_HISTORY_ANNOTATION), Some("1"));
        // Scaled up in the same write, within maxSurge (3 + 1 - 3 = 1).
        assert_eq!(size(v1), 1);
        assert_eq!(
            events(&result),
            ["Scaled up replica set web-v1 from 0 to 1"]
        );
        let mut expected = BTreeMap::new();
        expected.insert(REVISION_ANNOTATION.to_string(), "3".to_string());
        assert!(
            result
                .actions
                .contains(&Action::SetDeploymentAnnotations(expected))
        );
        // No Progressing condition before: the found one is recorded.
        let status = status_written(&result).unwrap();
        assert_eq!(
            condition_of(status, PROGRESSING).map(|c| c.1),
            Some(FOUND_NEW_RS_REASON.to_string())
        );
    }

    #[test]
    fn a_steady_deployment_produces_no_actions() {
        let mut cluster = Cluster::new(deployment(3, "nginx:1"), vec![]);
        for _ in 0..5 {
            cluster.step(true);
        }
        let result = cluster.step(true);
        assert_eq!(result.actions, []);
        let status = cluster.deployment.status.clone().unwrap();
        assert_eq!(
            condition_of(&status, PROGRESSING).map(|c| c.1),
            Some(NEW_RS_AVAILABLE_REASON.to_string())
        );
        assert_eq!(status.available_replicas, Some(3));
        assert_eq!(status.unavailable_replicas, Some(0));
    }

    #[test]
    fn a_status_only_change_writes_only_the_status() {
        let mut cluster = Cluster::new(deployment(3, "nginx:1"), vec![]);
        for _ in 0..5 {
            cluster.step(true);
        }
        // One pod stops being ready.
        let rs = cluster.replica_sets[0].clone();
        cluster.replica_sets[0] = with_status(rs, 3, 2);
        let result = cluster.step(false);
        assert_eq!(result.actions.len(), 1, "{:?}", result.actions);
        let status = status_written(&result).unwrap();
        assert_eq!(status.available_replicas, Some(2));
        assert_eq!(status.unavailable_replicas, Some(1));
        assert_eq!(status.ready_replicas, Some(2));
    }

    #[test]
    fn paused_deployment_scales_but_does_not_roll_out() {
        let mut d = at_revision(deployment(5, "nginx:2"), 1);
        if let Some(spec) = d.spec.as_mut() {
            spec.paused = Some(true);
        }
        let old = owned(&deployment(3, "nginx:1"), "old", "nginx:1", 3, 1, 10);
        let result = sync(&d, &[old], &[], at(100));
        assert!(created(&result).is_empty());
        let updates = updated(&result);
        assert_eq!(updates.len(), 1);
        assert_eq!(size(updates[0]), 5);
        assert_eq!(
            annotation(updates[0], DESIRED_REPLICAS_ANNOTATION),
            Some("5")
        );
        assert_eq!(
            events(&result),
            ["Scaled up replica set web-old from 3 to 5"]
        );
        let status = status_written(&result).unwrap();
        assert_eq!(
            condition_of(status, PROGRESSING),
            Some(("Unknown".into(), PAUSED_REASON.into()))
        );
        assert_eq!(result.requeue_after, None);
    }

    #[test]
    fn resuming_replaces_the_paused_condition() {
        let mut d = at_revision(deployment(3, "nginx:1"), 1);
        let mut status = DeploymentStatus::default();
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "Unknown", PAUSED_REASON, "x".into(), at(1)),
        );
        d.status = Some(status);
        let rs = owned(&d, "v1", "nginx:1", 3, 1, 10);
        let result = sync(&d, &[rs], &[], at(100));
        let status = status_written(&result).unwrap();
        // Resumed, then the complete rollout is recognised in the same sync.
        assert_eq!(
            condition_of(status, PROGRESSING).map(|c| c.1),
            Some(NEW_RS_AVAILABLE_REASON.to_string())
        );
        // Not complete and no progress against the observed counts: the resumed condition
        // stays.
        if let Some(spec) = d.spec.as_mut() {
            spec.replicas = Some(4);
        }
        let mut status = observed(3, 3, 3);
        status.conditions = d.status.as_ref().and_then(|s| s.conditions.clone());
        d.status = Some(status);
        let rs = owned(&d, "v1", "nginx:1", 3, 1, 10);
        let result = sync(&d, &[rs], &[], at(100));
        let status = status_written(&result).unwrap();
        assert_eq!(
            condition_of(status, PROGRESSING),
            Some(("Unknown".into(), RESUMED_REASON.into()))
        );
    }

    #[test]
    fn minimum_ready_seconds_requeue_until_pods_are_available() {
        let mut d = at_revision(deployment(1, "nginx:1"), 1);
        if let Some(spec) = d.spec.as_mut() {
            spec.min_ready_seconds = Some(30);
        }
        let mut rs = owned(&d, "v1", "nginx:1", 1, 1, 10);
        if let Some(spec) = rs.spec.as_mut() {
            spec.min_ready_seconds = Some(30);
        }
        let rs = with_status(rs, 1, 0);
        let ready = pod("uid-v1", "Running", Some(at(90)));
        let result = sync(&d, &[rs], &[ready], at(100));
        assert_eq!(
            result.requeue_after,
            Some(std::time::Duration::from_secs(20))
        );
    }

    #[test]
    fn negative_replicas_and_garbage_fenceposts_do_not_panic() {
        let d = rolling(
            deployment(-3, "nginx:1"),
            IntOrString::String("abc%".into()),
            IntOrString::String("%".into()),
        );
        let result = sync(&d, &[], &[], at(100));
        assert_eq!(size(created(&result)[0]), 0);
        assert_eq!(
            sync(&Deployment::default(), &[], &[], at(0)).actions.len(),
            1
        );
    }
}
