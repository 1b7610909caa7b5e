//! The scheduling cycle: one popped pod filtered against every node (its nominated node first,
//! then from where the last cycle stopped, until enough feasible nodes are found), the feasible
//! ones scored, the winner *assumed* in the cache and a binding task started. A pod no node
//! fits goes through the PostFilter (preemption), gets its FailedScheduling event and
//! condition, and is parked (or backed off) until an event may help it. A pod with
//! PersistentVolumeClaims also goes through VolumeBinding: its PreFilter before the nodes,
//! its Filter per node, and its PreBind (the claims learn the node and are waited for) in the
//! binding task, before `pods/binding`.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use rand::Rng;
use skiff_client::events::{EventType, NewEvent};
use tokio::time::Instant;

use super::Scheduler;
use super::binding::{BindOutcome, BindResult, bind, object_ref};
use super::status::{Nomination, StatusWrite, needs_status_update};
use crate::explain::fit_error_message;
use crate::filters::Unfit;
use crate::node_info::pod_priority;
use crate::nominator::nominated_node_name;
use crate::pod_filters::PodFilters;
use crate::preemption::{self, Decision, PreemptionInput};
use crate::scores::{ScoreContext, score_nodes, select_host};
use crate::volume_binding::{self, VolumeView};

impl Scheduler {
    pub(super) fn schedule_one(&mut self, popped: crate::queue::Popped) {
        let started = Instant::now();
        let pod = popped.pod;
        let key = popped.key;
        let priority = pod_priority(&pod);
        let nodes = self.cache.nodes();
        let total = nodes.len();
        let wanted = num_feasible_nodes_to_find(total);
        let start = if total == 0 {
            0
        } else {
            self.next_start_node % total
        };
        let filters = PodFilters::new(&pod, &nodes, &self.cache.namespaces);
        // VolumeBinding reads claims, volumes and classes only for pods with claims.
        let volume_objects = (!volume_binding::claim_names(&pod).is_empty()).then(|| {
            (
                copy_all(&self.volume_stores.claims),
                copy_all(&self.volume_stores.volumes),
                copy_all(&self.volume_stores.classes),
            )
        });
        let volume_view = volume_objects
            .as_ref()
            .map(|(claims, volumes, classes)| VolumeView {
                claims,
                volumes,
                classes,
            });
        let pod_volumes = match volume_view
            .as_ref()
            .map(|v| volume_binding::pre_filter(&pod, v))
        {
            Some(Err(refused)) => {
                // PreFilter refused: every node is out for the same reason.
                let unfit = vec![refused; total.max(1)];
                self.unschedulable(key, pod, total, unfit, None, started);
                return;
            }
            Some(Ok(found)) if !found.is_empty() => Some(found),
            _ => None,
        };
        // Nodes are seen with the pods nominated there of at least this pod's priority.
        let check = |node: &crate::node_info::NodeInfo| {
            filters.check(&self.nominator.with_nominated(node, &key, priority))?;
            match (&pod_volumes, &volume_view) {
                (Some(found), Some(view)) => volume_binding::filter(found, view, &pod, node),
                _ => Ok(()),
            }
        };
        let mut feasible = Vec::new();
        let mut statuses: std::collections::BTreeMap<String, Unfit> = Default::default();
        // A nominated pod tries its node first (upstream's `evaluateNominatedNode`).
        let nominated = self
            .nominator
            .node_of(&key)
            .or_else(|| nominated_node_name(&pod));
        if let Some(node) = nominated.and_then(|n| nodes.iter().find(|i| i.name() == n))
            && check(node).is_ok()
        {
            feasible.push(*node);
        }
        if feasible.is_empty() {
            let mut processed = 0;
            for i in 0..total {
                let node = nodes[(start + i) % total];
                processed += 1;
                match check(node) {
                    Ok(()) => feasible.push(node),
                    Err(u) => {
                        statuses.insert(node.name().to_string(), u);
                    }
                }
                if feasible.len() >= wanted {
                    break;
                }
            }
            if total > 0 {
                self.next_start_node = (start + processed) % total;
            }
        }
        if feasible.is_empty() {
            let decision = (total > 0).then(|| {
                self.metrics.preemption_attempts.add(&[], 1.0);
                preemption::post_filter(&PreemptionInput {
                    key: &key,
                    filters: &filters,
                    nodes: &nodes,
                    statuses: &statuses,
                    nominator: &self.nominator,
                    evicting: &self.evicting,
                    offset: self.rng.random_range(0..total),
                    now: skiff_client::now_timestamp(),
                })
            });
            let unfit: Vec<Unfit> = statuses.into_values().collect();
            self.unschedulable(key, pod, total, unfit, decision, started);
            return;
        }
        let usage = filters.usage().clone();
        let default_spread_selector = self.cache.selectors.default_spread_selector(&pod);
        let cx = ScoreContext {
            all_nodes: &nodes,
            namespaces: &self.cache.namespaces,
            default_spread_selector: default_spread_selector.as_ref(),
        };
        let scores = score_nodes(&pod, &usage, &feasible, &cx);
        let Some(best) = select_host(&scores, &mut self.rng) else {
            return;
        };
        let node = feasible[best].name().to_string();
        self.nominator.remove(&key);
        self.cache.assume(&key, &pod, &node);
        let Ok(permit) = self.binds.clone().try_acquire_owned() else {
            // Checked before popping; cannot happen, but never bind without a permit.
            self.cache.forget(&key);
            self.queue.error(&key, Instant::now());
            return;
        };
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let tx = self.bind_tx.clone();
        let is_leader = self.is_leader.clone();
        let pod_ref = object_ref(&pod);
        let (attempts, first_seen) = (popped.attempts, popped.first_seen);
        let delayed_claims = pod_volumes.map(|found| found.delayed).unwrap_or_default();
        let client = self.client.clone();
        tokio::spawn(async move {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let outcome = if !*is_leader.borrow() {
                BindOutcome::Failed("not the leader".into())
            } else if let Err(why) = volume_binding::pre_bind(
                client,
                namespace,
                &delayed_claims,
                &node,
                volume_binding::BIND_TIMEOUT,
            )
            .await
            {
                BindOutcome::Failed(why)
            } else {
                bind(&api, &pod, &node).await
            };
            drop(permit);
            let _ = tx
                .send(BindResult {
                    key,
                    node,
                    pod_ref,
                    attempts,
                    first_seen,
                    started,
                    outcome,
                })
                .await;
        });
    }

    /// The pod fits nowhere: act on the PostFilter's decision, record FailedScheduling, park
    /// the pod (or back it off) and write its condition and nomination.
    fn unschedulable(
        &mut self,
        key: String,
        pod: Pod,
        total: usize,
        unfit: Vec<Unfit>,
        decision: Option<Decision>,
        started: Instant,
    ) {
        let profile = self.config.scheduler_name.clone();
        let mut post_filter = None;
        let mut nomination = Nomination::Keep;
        let mut retry_soon = false;
        let mut await_victims = false;
        match decision {
            Some(Decision::Preempt(candidate)) => {
                let node = candidate.node.clone();
                if self.start_preemption(&key, &pod, candidate) {
                    nomination = Nomination::Set(node);
                    await_victims = self.awaits_victims(&key);
                } else {
                    retry_soon = true;
                }
            }
            Some(Decision::Fail {
                message,
                clear_nomination,
            }) => {
                let had = clear_nomination && self.nominator.remove(&key).is_some();
                if clear_nomination && (had || nominated_node_name(&pod).is_some()) {
                    nomination = Nomination::Clear;
                }
                // Still waiting for its own victims: wait for them, not for any event.
                await_victims = message.ends_with(preemption::NOT_ELIGIBLE_TERMINATING)
                    && self.awaits_victims(&key);
                post_filter = Some(message);
            }
            None => {}
        }
        let message = fit_error_message(total, &unfit, post_filter.as_deref());
        self.metrics.attempts.add(&["unschedulable", &profile], 1.0);
        self.metrics.attempt_duration.observe(
            &["unschedulable", &profile],
            started.elapsed().as_secs_f64(),
        );
        tracing::info!(pod = %key, %message, "unable to schedule pod");
        if retry_soon {
            self.queue.error(&key, Instant::now());
        } else if await_victims {
            self.queue.await_victims(&key, Instant::now());
        } else {
            let rejected_by = unfit.iter().map(|u| u.plugin).collect();
            self.queue.unschedulable(&key, Instant::now(), rejected_by);
        }
        self.events.record(NewEvent {
            object: object_ref(&pod),
            type_: EventType::Warning,
            reason: "FailedScheduling".into(),
            message: message.clone(),
            action: "Scheduling".into(),
        });
        if needs_status_update(&pod, &message, &nomination) {
            let _ = self.status_tx.try_send(StatusWrite::Unschedulable {
                pod: Box::new(pod),
                message,
                nomination,
            });
        }
    }
}

/// Every object of a reflector cache, copied out.
fn copy_all<K>(store: &kube::runtime::reflector::Store<K>) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.state().iter().map(|o| o.as_ref().clone()).collect()
}

/// Upstream's `minFeasibleNodesToFind`.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// Upstream's `minFeasibleNodesPercentageToFind`.
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;
/// Upstream's `DefaultPercentageOfNodesToScore` base for the adaptive percentage.
const BASE_PERCENTAGE_OF_NODES_TO_SCORE: usize = 50;

/// `numFeasibleNodesToFind` with the default (adaptive) `percentageOfNodesToScore`: every node
/// below 100 nodes, else 50% - nodes/125 (at least 5%), at least 100 nodes.
pub fn num_feasible_nodes_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = BASE_PERCENTAGE_OF_NODES_TO_SCORE
        .saturating_sub(all / 125)
        .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feasible_nodes_to_find_matches_upstream() {
        assert_eq!(num_feasible_nodes_to_find(3), 3);
        assert_eq!(num_feasible_nodes_to_find(99), 99);
        assert_eq!(num_feasible_nodes_to_find(100), 100);
        assert_eq!(num_feasible_nodes_to_find(1000), 420);
        assert_eq!(num_feasible_nodes_to_find(5000), 500);
        assert_eq!(num_feasible_nodes_to_find(6000), 300);
    }
}
