//! Carrying out a preemption the PostFilter decided: the preemptor is nominated to the node
//! (its room reserved there), lower-priority pods nominated there lose their nomination, and a
//! task evicts the victims (at most `PREEMPTIONS_IN_FLIGHT_MAX` preemptions at a time) — each
//! marked `DisruptionTarget`, deleted with its uid as precondition, with a `Preempted` event.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use skiff_client::events::{EventRecorder, EventType, NewEvent};
use tokio::time::Instant;

use super::Scheduler;
use super::status::StatusWrite;
use crate::node_info::{REASON_PREEMPTION_BY_SCHEDULER, pod_priority};
use crate::preemption::{self, Candidate};

/// How long one victim's status patch or DELETE may take.
const EVICT_TIMEOUT: Duration = Duration::from_secs(10);

/// A preemption's evictions to carry out.
#[derive(Debug)]
pub(super) struct Eviction {
    preemptor_key: String,
    preemptor_uid: String,
    node: String,
    victims: Vec<preemption::Victim>,
}

/// How one victim's eviction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EvictionOutcome {
    /// Deleted (it goes when the watch says so).
    Deleted,
    /// Already gone, or replaced by a pod of the same name.
    Gone,
    /// The API refused or timed out.
    Failed,
}

/// What an eviction task reports, per victim.
#[derive(Debug)]
pub(super) struct EvictionDone {
    preemptor_key: String,
    victims: Vec<(String, EvictionOutcome)>,
}

impl Scheduler {
    /// Nominates the preemptor to the candidate's node, drops the nominations of
    /// lower-priority pods there, and hands the victims to an eviction task. `false` when
    /// too many preemptions are in flight (the pod backs off and tries again).
    pub(super) fn start_preemption(&mut self, key: &str, pod: &Pod, candidate: Candidate) -> bool {
        let Ok(permit) = self.preemptions.clone().try_acquire_owned() else {
            tracing::warn!(pod = %key, "too many preemptions in flight; backing off");
            return false;
        };
        let priority = pod_priority(pod);
        tracing::info!(
            pod = %key,
            node = %candidate.node,
            victims = ?candidate.victims.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(),
            "preempting lower-priority pods"
        );
        self.metrics
            .preemption_victims
            .observe(&[], candidate.victims.len() as f64);
        self.nominator.nominate(key, pod, &candidate.node);
        let lower: Vec<String> = self
            .nominator
            .pods_on(&candidate.node)
            .filter(|(_, n)| n.usage.priority < priority)
            .map(|(k, _)| k.to_string())
            .collect();
        for other in lower {
            self.nominator.remove(&other);
            self.queue.activate(&other, Instant::now());
            let _ = self
                .status_tx
                .try_send(StatusWrite::ClearNomination { key: other });
        }
        for victim in &candidate.victims {
            self.evicting.insert(victim.key.clone());
            self.preemptor_of
                .insert(victim.key.clone(), key.to_string());
        }
        let eviction = Eviction {
            preemptor_key: key.to_string(),
            preemptor_uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: candidate.node,
            victims: candidate.victims,
        };
        let client = self.client.clone();
        let events = self.events.clone();
        let tx = self.evict_tx.clone();
        let scheduler_name = self.config.scheduler_name.clone();
        tokio::spawn(async move {
            let done = evict(&client, &events, &scheduler_name, eviction).await;
            drop(permit);
            let _ = tx.send(done).await;
        });
        true
    }

    pub(super) fn on_eviction_done(&mut self, done: EvictionDone) {
        let mut failed = Vec::new();
        for (key, outcome) in done.victims {
            match outcome {
                // Stays "terminating" until the watch shows it gone.
                EvictionOutcome::Deleted => {}
                EvictionOutcome::Gone => {
                    self.evicting.remove(&key);
                    self.victim_gone(&key);
                }
                EvictionOutcome::Failed => {
                    self.evicting.remove(&key);
                    self.victim_gone(&key);
                    failed.push(key);
                }
            }
        }
        if !failed.is_empty() {
            tracing::warn!(pod = %done.preemptor_key, ?failed, "could not evict every victim");
            // As upstream: the preemptor must not wait for deletions that will not come.
            self.queue.activate(&done.preemptor_key, Instant::now());
        }
    }
}

impl Scheduler {
    /// A victim went (or will not go): once none of its preemptor's victims is left, the
    /// preemptor is tried again at once.
    pub(super) fn victim_gone(&mut self, victim: &str) {
        let Some(preemptor) = self.preemptor_of.remove(victim) else {
            return;
        };
        if !self.preemptor_of.values().any(|p| *p == preemptor) {
            self.queue.victims_gone(&preemptor);
        }
    }

    /// Whether some victim of `preemptor` has not been seen go yet.
    pub(super) fn awaits_victims(&self, preemptor: &str) -> bool {
        self.preemptor_of.values().any(|p| p == preemptor)
    }
}

/// Evicts a preemption's victims (in parallel): marks each `DisruptionTarget` (reason
/// `PreemptionByScheduler`), deletes it with its uid as precondition, and records the
/// `Preempted` event upstream records. A victim already gone counts as evicted.
async fn evict(
    client: &kube::Client,
    events: &EventRecorder,
    scheduler_name: &str,
    eviction: Eviction,
) -> EvictionDone {
    let Eviction {
        preemptor_key,
        preemptor_uid,
        node,
        victims,
    } = eviction;
    let results = futures::future::join_all(victims.iter().map(|victim| async {
        let (namespace, name) = victim.key.split_once('/').unwrap_or(("default", &victim.key));
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let condition = serde_json::json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": REASON_PREEMPTION_BY_SCHEDULER,
            "message": format!("{scheduler_name}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": Time(skiff_client::now_timestamp()),
        }]}});
        let marked = tokio::time::timeout(
            EVICT_TIMEOUT,
            api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&condition)),
        )
        .await;
        match marked {
            Ok(Ok(_)) => {}
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => return EvictionOutcome::Gone,
            Ok(Err(err)) => {
                tracing::warn!(victim = %victim.key, error = %err, "cannot mark victim DisruptionTarget");
                return EvictionOutcome::Failed;
            }
            Err(_) => return EvictionOutcome::Failed,
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(victim.uid.clone()).filter(|u| !u.is_empty()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match tokio::time::timeout(EVICT_TIMEOUT, api.delete(name, &params)).await {
            Ok(Ok(_)) => {
                events.record(NewEvent {
                    object: ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        namespace: Some(namespace.to_string()),
                        name: Some(name.to_string()),
                        uid: Some(victim.uid.clone()).filter(|u| !u.is_empty()),
                        ..Default::default()
                    },
                    type_: EventType::Normal,
                    reason: "Preempted".into(),
                    message: format!("Preempted by pod {preemptor_uid} on node {node}"),
                    action: "Preempting".into(),
                });
                EvictionOutcome::Deleted
            }
            // Gone already, or replaced by a pod of the same name (uid precondition).
            Ok(Err(kube::Error::Api(status))) if status.code == 404 || status.code == 409 => {
                EvictionOutcome::Gone
            }
            Ok(Err(err)) => {
                tracing::warn!(victim = %victim.key, error = %err, "cannot delete victim");
                EvictionOutcome::Failed
            }
            Err(_) => EvictionOutcome::Failed,
        }
    }))
    .await;
    EvictionDone {
        preemptor_key,
        victims: victims.into_iter().map(|v| v.key).zip(results).collect(),
    }
}
