//! What `skiff bench controllers` creates and checks, as pure functions: the benchmark's
//! Deployment (busybox, no resource requests, the default RollingUpdate strategy of 25 %
//! surge and 25 % unavailable), the image patch of the rolling update, how many pods the
//! run needs at its peak, and how many pods the Ready nodes can hold.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Node, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::scheduler::objects::RUN_LABEL;

/// The container image of the created pods.
pub const IMAGE: &str = "busybox:1.36";
/// The image the rolling update changes it to.
pub const UPDATED_IMAGE: &str = "busybox:1.37";
/// The one container's name (the strategic-merge key of the image patch).
pub const CONTAINER: &str = "busybox";
/// Label every pod of the Deployment carries; its value is the Deployment's name.
pub const APP_LABEL: &str = "app";
/// The default `maxSurge` of a RollingUpdate Deployment, in percent of `replicas`.
pub const MAX_SURGE_PERCENT: usize = 25;

/// The Deployment's name in a run.
pub fn deployment_name(run: &str) -> String {
    format!("bench-{run}")
}

/// The label selector (`key=value,...`) matching the run's Deployment, ReplicaSets and pods.
pub fn run_selector(run: &str) -> String {
    format!("{RUN_LABEL}={run}")
}

fn labels(run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_LABEL.to_string(), deployment_name(run)),
        (RUN_LABEL.to_string(), run.to_string()),
    ])
}

/// The Deployment of `replicas` busybox pods (no requests: only the nodes' pod count limits
/// where they fit), with the default RollingUpdate strategy.
pub fn deployment(run: &str, replicas: usize) -> Deployment {
    let labels = labels(run);
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(run)),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: CONTAINER.into(),
                        image: Some(IMAGE.into()),
                        command: Some(vec!["sleep".into(), "infinity".into()]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The strategic-merge patch of the rolling update (what `kubectl set image` sends).
pub fn image_patch() -> serde_json::Value {
    serde_json::json!({
        "spec": { "template": { "spec": { "containers": [
            { "name": CONTAINER, "image": UPDATED_IMAGE }
        ] } } }
    })
}

/// Most pods the run has at once: `replicas` plus the rolling update's surge (rounded up, as
/// the Deployment controller rounds `maxSurge`).
pub fn peak_pods(replicas: usize) -> usize {
    replicas + (replicas * MAX_SURGE_PERCENT).div_ceil(100)
}

/// What the cluster's nodes can hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Capacity {
    /// Ready, schedulable nodes without a NoSchedule or NoExecute taint.
    pub ready_nodes: usize,
    /// Their allocatable pods, summed.
    pub pods: usize,
}

/// The pods the usable nodes among `nodes` can hold (a node that is not Ready, is cordoned or
/// carries a NoSchedule/NoExecute taint counts for nothing: the benchmark's pods tolerate none).
pub fn capacity(nodes: &[Node]) -> Capacity {
    let mut capacity = Capacity::default();
    for node in nodes.iter().filter(|n| usable(n)) {
        capacity.ready_nodes += 1;
        capacity.pods += allocatable_pods(node);
    }
    capacity
}

fn usable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let spec = node.spec.as_ref();
    let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let tainted = spec.and_then(|s| s.taints.as_ref()).is_some_and(|t| {
        t.iter()
            .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
    });
    ready && !cordoned && !tainted
}

fn allocatable_pods(node: &Node) -> usize {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("pods"))
        .and_then(|q| q.0.parse::<usize>().ok())
        .unwrap_or(0)
}

/// The Deployment's counts as one phase sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `status.replicas`: pods of every ReplicaSet (old ones included).
    pub replicas: i32,
    pub updated: i32,
    pub available: i32,
    /// Whether the controller has seen the Deployment's latest `metadata.generation`.
    pub observed: bool,
}

impl Counts {
    /// The counts of a Deployment; `generation` is the one the phase waits for.
    pub fn of(deployment: &Deployment, generation: i64) -> Counts {
        let status = deployment.status.clone().unwrap_or_default();
        Counts {
            replicas: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            observed: status.observed_generation.unwrap_or(0) >= generation,
        }
    }

    /// `replicas` are available (the create phase's end).
    pub fn all_available(&self, replicas: usize) -> bool {
        self.observed && usize::try_from(self.available).is_ok_and(|a| a == replicas)
    }

    /// `replicas` are updated and available and no old pod is counted (the rolling update's
    /// end, as `kubectl rollout status` decides it).
    pub fn rolled_out(&self, replicas: usize) -> bool {
        let is = |n: i32| usize::try_from(n).is_ok_and(|n| n == replicas);
        self.observed && is(self.updated) && is(self.available) && is(self.replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn node(ready: bool, pods: &str, spec: NodeSpec) -> Node {
        Node {
            metadata: ObjectMeta::default(),
            spec: Some(spec),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([("pods".into(), Quantity(pods.into()))])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_ready_schedulable_untainted_nodes_count() {
        let taint = |effect: &str| NodeSpec {
            taints: Some(vec![Taint {
                key: "k".into(),
                effect: effect.into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let nodes = vec![
            node(true, "110", NodeSpec::default()),
            node(true, "110", taint("PreferNoSchedule")),
            node(false, "110", NodeSpec::default()),
            node(true, "110", taint("NoSchedule")),
            node(true, "110", taint("NoExecute")),
            node(
                true,
                "110",
                NodeSpec {
                    unschedulable: Some(true),
                    ..Default::default()
                },
            ),
            node(true, "nonsense", NodeSpec::default()),
        ];
        assert_eq!(
            capacity(&nodes),
            Capacity {
                ready_nodes: 3,
                pods: 220
            }
        );
    }

    #[test]
    fn the_peak_adds_the_rounded_up_surge() {
        assert_eq!(peak_pods(1_000), 1_250);
        assert_eq!(peak_pods(50), 63);
        assert_eq!(peak_pods(1), 2);
        // The issue's setup fits: 100 nodes of 110 pods.
        assert!(peak_pods(1_000) <= 100 * 110);
    }

    #[test]
    fn the_deployment_selects_its_own_pods_and_the_patch_changes_the_image() {
        let d = deployment("42", 7);
        let spec = d.spec.unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("bench-42"));
        assert_eq!(spec.replicas, Some(7));
        let template_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(spec.selector.match_labels.as_ref(), Some(&template_labels));
        assert_eq!(template_labels[RUN_LABEL], "42");
        let container = &spec.template.spec.unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some(IMAGE));
        assert!(container.resources.is_none(), "no requests");
        let patch = image_patch();
        let patched = &patch["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(patched["name"], CONTAINER);
        assert_eq!(patched["image"], UPDATED_IMAGE);
        assert_eq!(run_selector("42"), format!("{RUN_LABEL}=42"));
    }

    #[test]
    fn phases_end_only_on_the_observed_generation() {
        let mut d = deployment("r", 3);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(4),
            updated_replicas: Some(3),
            available_replicas: Some(3),
            ..Default::default()
        });
        assert!(Counts::of(&d, 1).all_available(3));
        assert!(!Counts::of(&d, 1).rolled_out(3), "an old pod is left");
        assert!(!Counts::of(&d, 2).all_available(3), "stale status");
        d.status.as_mut().unwrap().replicas = Some(3);
        assert!(Counts::of(&d, 1).rolled_out(3));
        assert!(!Counts::of(&d, 2).rolled_out(3));
    }
}
