//! Pod status writes of the loop: the `PodScheduled=False/Unschedulable` condition with the
//! FailedScheduling message, and `status.nominatedNodeName` (set with it, or cleared alone when
//! a preemptor takes the node), written one at a time by `write_statuses`; a write that would
//! change nothing is skipped.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::mpsc;

use crate::cache::key_of;
use crate::nominator::nominated_node_name;

/// What happens to a pod's `status.nominatedNodeName` with its Unschedulable condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Nomination {
    Keep,
    Set(String),
    Clear,
}

/// A status write, done in order by `write_statuses`.
#[derive(Debug)]
pub(super) enum StatusWrite {
    /// `PodScheduled=False/Unschedulable` with the message, and the nomination change.
    Unschedulable {
        pod: Box<Pod>,
        message: String,
        nomination: Nomination,
    },
    /// A lower-priority pod's nomination to a node a preemptor took (`namespace/name`).
    ClearNomination { key: String },
}

/// Whether the pod's PodScheduled condition differs from `False/Unschedulable/message`.
fn needs_condition_update(pod: &Pod, message: &str) -> bool {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    !current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    })
}

/// Whether the condition or the nomination would change.
pub(super) fn needs_status_update(pod: &Pod, message: &str, nomination: &Nomination) -> bool {
    let nomination_changes = match nomination {
        Nomination::Keep => false,
        Nomination::Set(node) => nominated_node_name(pod) != Some(node.as_str()),
        Nomination::Clear => nominated_node_name(pod).is_some(),
    };
    nomination_changes || needs_condition_update(pod, message)
}

/// The status patch of an unschedulable pod: its condition, and its nomination if it changes.
pub(super) fn unschedulable_patch(message: &str, nomination: &Nomination) -> serde_json::Value {
    let mut status = serde_json::json!({
        "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": Time(skiff_client::now_timestamp()),
            "lastProbeTime": null,
        }]
    });
    match nomination {
        Nomination::Keep => {}
        Nomination::Set(node) => status["nominatedNodeName"] = serde_json::json!(node),
        Nomination::Clear => status["nominatedNodeName"] = serde_json::Value::Null,
    }
    serde_json::json!({ "status": status })
}

/// Writes pods' statuses (conditions, nominations), one at a time.
pub(super) async fn write_statuses(client: kube::Client, mut rx: mpsc::Receiver<StatusWrite>) {
    while let Some(write) = rx.recv().await {
        let (key, patch) = match &write {
            StatusWrite::Unschedulable {
                pod,
                message,
                nomination,
            } => (
                key_of(&pod.metadata),
                unschedulable_patch(message, nomination),
            ),
            StatusWrite::ClearNomination { key } => (
                key.clone(),
                serde_json::json!({"status": {"nominatedNodeName": null}}),
            ),
        };
        let (namespace, name) = key.split_once('/').unwrap_or(("default", &key));
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        if let Err(err) = api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tracing::warn!(pod = %key, error = %err, "cannot update pod status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status with the `PodScheduled=False/Unschedulable` condition saying `message`.
    fn unschedulable_status(message: &str) -> k8s_openapi::api::core::v1::PodStatus {
        k8s_openapi::api::core::v1::PodStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(message.into()),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn nominations_ride_on_the_unschedulable_patch() {
        let set = unschedulable_patch("m", &Nomination::Set("n1".into()));
        assert_eq!(set["status"]["nominatedNodeName"], "n1");
        assert_eq!(set["status"]["conditions"][0]["reason"], "Unschedulable");
        let clear = unschedulable_patch("m", &Nomination::Clear);
        assert!(clear["status"]["nominatedNodeName"].is_null());
        assert!(
            clear["status"].get("nominatedNodeName").is_some(),
            "null deletes it"
        );
        let keep = unschedulable_patch("m", &Nomination::Keep);
        assert!(keep["status"].get("nominatedNodeName").is_none());
        let pod = Pod {
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                nominated_node_name: Some("n1".into()),
                ..unschedulable_status("m")
            }),
            ..Default::default()
        };
        assert!(!needs_status_update(
            &pod,
            "m",
            &Nomination::Set("n1".into())
        ));
        assert!(needs_status_update(
            &pod,
            "m",
            &Nomination::Set("n2".into())
        ));
        assert!(needs_status_update(&pod, "m", &Nomination::Clear));
        assert!(!needs_status_update(&pod, "m", &Nomination::Keep));
    }

    #[test]
    fn condition_is_rewritten_only_when_it_changes() {
        let mut pod = Pod::default();
        assert!(needs_condition_update(&pod, "m"));
        pod.status = Some(unschedulable_status("m"));
        assert!(!needs_condition_update(&pod, "m"));
        assert!(needs_condition_update(&pod, "other"));
    }
}
