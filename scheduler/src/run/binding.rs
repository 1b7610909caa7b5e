//! Binding: the `pods/binding` call a task makes for an assumed pod (at most
//! `BIND_CONCURRENCY_MAX` at a time), and what the loop does with its outcome — a bound pod is
//! done (`Scheduled` event, metrics), one bound elsewhere or gone is forgotten, a failure gives
//! the capacity back and retries after backoff.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use skiff_client::events::{EventType, NewEvent};
use tokio::time::Instant;

use super::Scheduler;

/// How long a bind request may take.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a binding task reports.
#[derive(Debug)]
pub(super) enum BindOutcome {
    Bound,
    /// 409: someone else bound it. 404: it is gone. Either way: forget it.
    Gone(String),
    /// Retry after backoff.
    Failed(String),
}

/// What a binding task sends back to the loop.
#[derive(Debug)]
pub(super) struct BindResult {
    pub(super) key: String,
    pub(super) node: String,
    pub(super) pod_ref: ObjectReference,
    pub(super) attempts: u32,
    pub(super) first_seen: Instant,
    pub(super) started: Instant,
    pub(super) outcome: BindOutcome,
}

/// The pod's reference, for its Events.
pub(super) fn object_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: None,
    }
}

impl Scheduler {
    /// A binding task is done.
    pub(super) fn on_bind_result(&mut self, result: BindResult) {
        let profile = self.config.scheduler_name.clone();
        let elapsed = result.started.elapsed().as_secs_f64();
        match result.outcome {
            BindOutcome::Bound => {
                self.queue.remove(&result.key);
                self.metrics.attempts.add(&["scheduled", &profile], 1.0);
                self.metrics
                    .attempt_duration
                    .observe(&["scheduled", &profile], elapsed);
                let attempts = result.attempts.min(15).to_string();
                self.metrics
                    .pod_scheduling_duration
                    .observe(&[&attempts], result.first_seen.elapsed().as_secs_f64());
                let (ns, name) = result.key.split_once('/').unwrap_or(("", &result.key));
                self.events.record(NewEvent {
                    object: result.pod_ref,
                    type_: EventType::Normal,
                    reason: "Scheduled".into(),
                    message: format!("Successfully assigned {ns}/{name} to {}", result.node),
                    action: "Binding".into(),
                });
            }
            BindOutcome::Gone(why) => {
                tracing::info!(pod = %result.key, %why, "pod bound elsewhere or gone; forgetting it");
                self.cache.forget(&result.key);
                self.queue.remove(&result.key);
                self.metrics.attempts.add(&["error", &profile], 1.0);
            }
            BindOutcome::Failed(why) => {
                tracing::warn!(pod = %result.key, %why, "binding failed; retrying after backoff");
                self.cache.forget(&result.key);
                self.queue.error(&result.key, Instant::now());
                self.metrics.attempts.add(&["error", &profile], 1.0);
                self.metrics
                    .attempt_duration
                    .observe(&["error", &profile], elapsed);
            }
        }
    }
}

pub(super) async fn bind(api: &Api<Pod>, pod: &Pod, node: &str) -> BindOutcome {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    };
    let params = PostParams::default();
    let request =
        api.create_subresource::<Binding, serde_json::Value>("binding", &name, &params, &binding);
    match tokio::time::timeout(BIND_TIMEOUT, request).await {
        Ok(Ok(_)) => BindOutcome::Bound,
        Ok(Err(kube::Error::Api(status))) if status.code == 409 || status.code == 404 => {
            BindOutcome::Gone(status.message)
        }
        Ok(Err(err)) => BindOutcome::Failed(err.to_string()),
        Err(_) => BindOutcome::Failed("binding timed out".into()),
    }
}
