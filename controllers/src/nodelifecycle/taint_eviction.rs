//! The taint manager's IO (upstream `tainteviction.Controller`): on node and pod events, on
//! its next timer and every monitor period, one pass recomputes the eviction timer of every
//! pod on a NoExecute-tainted node ([`super::eviction::EvictionTimers`]) and deletes the pods
//! due — a `TaintManagerEviction` Event, the pod's `DisruptionTarget` condition
//! (`DeletionByTaintManager`, best effort) and a deletion with its uid as precondition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodCondition, Taint};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_client::events::EventType;

use super::eviction::{self, PodOnTaintedNode};
use super::{
    EVICTION_ATTEMPTS, EVICTION_PASS_MIN_INTERVAL, EVICTION_RETRY_DELAY, EVICTIONS_IN_FLIGHT_MAX,
    REASON_DELETION_BY_TAINT_MANAGER, Shell, plan,
};
use crate::Error;
use crate::shell::{Key, api_code};

/// A reference to a pod by key, for Events.
pub(super) fn pod_reference(key: &Key, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        uid,
        ..Default::default()
    }
}

impl Shell {
    pub(super) async fn evictor_loop(&self) {
        loop {
            let next_due = self.lock().timers.next_due();
            let wait = next_due.map_or(self.settings.node_monitor_period, |at| {
                let left = at.duration_since(skiff_client::now_timestamp());
                Duration::try_from(left).unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                _ = self.evict_wake.notified() => {}
                _ = tokio::time::sleep(wait.min(self.settings.node_monitor_period)) => {}
            }
            if self.eviction_pass().await {
                // More were due than one pass takes.
                self.evict_wake.notify_one();
            }
            tokio::time::sleep(EVICTION_PASS_MIN_INTERVAL).await;
        }
    }

    /// One pass of the taint manager over every pod on a NoExecute-tainted node; whether
    /// pods due were left for the next pass.
    async fn eviction_pass(&self) -> bool {
        let tainted: HashMap<String, Vec<Taint>> = self
            .nodes
            .state()
            .iter()
            .filter_map(|node| {
                let taints = eviction::no_execute(plan::taints_of(node));
                (!taints.is_empty()).then(|| (node.name_any(), taints))
            })
            .collect();
        let pods: Vec<Arc<Pod>> = if tainted.is_empty() {
            Vec::new()
        } else {
            self.pods
                .state()
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|n| tainted.contains_key(n))
                })
                .collect()
        };
        let views = pods.iter().filter_map(|pod| {
            let spec = pod.spec.as_ref()?;
            let taints = tainted.get(spec.node_name.as_deref()?)?;
            Some(PodOnTaintedNode {
                key: Key::of(pod.as_ref()),
                uid: pod.uid().unwrap_or_default(),
                tolerations: spec.tolerations.as_deref().unwrap_or_default(),
                taints,
            })
        });
        let now = skiff_client::now_timestamp();
        let (outcome, due, more) = {
            let mut state = self.lock();
            let outcome = state.timers.sync(views, now);
            let due = state.timers.take_due(now, EVICTIONS_IN_FLIGHT_MAX);
            let more = state.timers.next_due().is_some_and(|at| at <= now);
            (outcome, due, more)
        };
        if outcome.dropped > 0 {
            tracing::warn!(
                dropped = outcome.dropped,
                "eviction timers full; pods wait for a later pass"
            );
        }
        for key in outcome.cancelled {
            self.event(
                pod_reference(&key, None),
                EventType::Normal,
                "TaintManagerEviction",
                format!("Cancelling deletion of Pod {key}"),
            );
        }
        let evictions = due.into_iter().map(|(key, uid)| async move {
            let result = self.evict(&key, &uid).await;
            (key, result)
        });
        for (key, result) in futures::future::join_all(evictions).await {
            if let Err(err) = result {
                tracing::warn!(pod = %key, error = %err, "eviction failed; retrying");
                let at = skiff_client::now_timestamp()
                    + jiff::SignedDuration::from_secs(EVICTION_RETRY_DELAY.as_secs() as i64);
                self.lock().timers.retry(&key, at);
            }
        }
        more
    }

    /// Upstream's delete handler: the `TaintManagerEviction` Event, then (up to
    /// [`EVICTION_ATTEMPTS`] tries) the DisruptionTarget condition and the deletion.
    async fn evict(&self, key: &Key, uid: &str) -> Result<(), Error> {
        tracing::info!(pod = %key, "taint manager: deleting pod");
        self.event(
            pod_reference(key, Some(uid.to_string())),
            EventType::Normal,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {key}"),
        );
        let mut last = None;
        for attempt in 0..EVICTION_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            match self.add_condition_and_delete(key, uid).await {
                Ok(()) => return Ok(()),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("eviction not tried".into())))
    }

    async fn add_condition_and_delete(&self, key: &Key, uid: &str) -> Result<(), Error> {
        let api = Api::<Pod>::namespaced(self.client.clone(), &key.namespace);
        let pod = match api.get(&key.name).await {
            Ok(pod) => pod,
            Err(err) if api_code(&err) == Some(404) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        if pod.uid().as_deref() != Some(uid) {
            // Another pod of the same name: not ours to evict.
            return Ok(());
        }
        let conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let target = PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some(REASON_DELETION_BY_TAINT_MANAGER.into()),
            message: Some("Taint manager: deleting due to NoExecute taint".into()),
            ..Default::default()
        };
        if let Some(updated) =
            plan::with_pod_condition(conditions, target, skiff_client::now_timestamp())
        {
            let patch = json!({
                "metadata": {"resourceVersion": pod.resource_version()},
                "status": {"conditions": updated},
            });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(err) if api_code(&err) == Some(404) => return Ok(()),
                Err(err) => return Err(err.into()),
            }
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&key.name, &params).await {
            Ok(_) => Ok(()),
            Err(err) if matches!(api_code(&err), Some(404 | 409)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}
