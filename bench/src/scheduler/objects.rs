//! The objects `skiff bench scheduler` creates, as pure functions of the run and an index: the
//! simulated-capacity Nodes (scheduler_perf's `node-default`: 4 CPUs, 32 Gi, 110 pods, a zone
//! label), the PriorityClasses of the preemption profile, and each profile's pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, Node, NodeAffinity, NodeCondition, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, NodeSpec, NodeStatus, Pod, PodAffinityTerm, PodAntiAffinity, PodSpec,
    ResourceRequirements, TopologySpreadConstraint,
};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// Label on every node and pod a run creates; its value is the run's id.
pub const RUN_LABEL: &str = "bench.skiff.dev/run";
/// Label telling the measured pods (`measure`) from the preemption profile's victims (`init`).
pub const PHASE_LABEL: &str = "bench.skiff.dev/phase";
/// The zone label the affinity and spread profiles use.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Zones the nodes are spread over, round-robin.
pub const ZONES: usize = 10;
/// Node capacity, as scheduler_perf's `node-default.yaml`.
pub const NODE_CPU_MILLIS: u64 = 4_000;
pub const NODE_MEMORY: &str = "32Gi";
pub const NODE_PODS: u64 = 110;
/// Requests of a measured pod, as scheduler_perf's `pod-default.yaml`.
pub const POD_CPU: &str = "100m";
pub const POD_MEMORY: &str = "500Mi";
/// The preemption profile fills each node with this many low-priority pods, each asking for
/// a quarter of the node's CPU less a little, so one more such pod needs one victim.
pub const PREEMPTION_PODS_PER_NODE: usize = 4;
pub const PREEMPTION_POD_CPU: &str = "900m";
/// PriorityClasses of the preemption profile.
pub const LOW_PRIORITY: (&str, i32) = ("bench-low", 1);
pub const HIGH_PRIORITY: (&str, i32) = ("bench-high", 1_000);

/// What the measured pods ask of the scheduler (scheduler_perf's workload names in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Requests only [SchedulingBasic].
    Basic,
    /// Required node affinity to half the zones [SchedulingNodeAffinity].
    Affinity,
    /// Required pod anti-affinity on the hostname: one pod per node [SchedulingPodAntiAffinity].
    AntiAffinity,
    /// A zone spread constraint, maxSkew 1, DoNotSchedule [TopologySpreading].
    Spread,
    /// Every node full of low-priority pods; each measured pod preempts one [PreemptionBasic].
    Preemption,
}

impl Profile {
    pub const ALL: [Profile; 5] = [
        Profile::Basic,
        Profile::Affinity,
        Profile::AntiAffinity,
        Profile::Spread,
        Profile::Preemption,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Basic => "basic",
            Profile::Affinity => "affinity",
            Profile::AntiAffinity => "anti-affinity",
            Profile::Spread => "spread",
            Profile::Preemption => "preemption",
        }
    }

    /// Most measured pods the profile can place on `nodes` nodes (it stays a scheduling
    /// benchmark, not a test of what does not fit).
    pub fn max_pods(self, nodes: usize) -> usize {
        let per_node_by_cpu = (NODE_CPU_MILLIS / 100) as usize;
        match self {
            Profile::Basic | Profile::Spread => nodes * per_node_by_cpu,
            // Half the zones, so about half the nodes.
            Profile::Affinity => nodes.div_ceil(ZONES) * (ZONES / 2) * per_node_by_cpu,
            Profile::AntiAffinity => nodes,
            Profile::Preemption => nodes * PREEMPTION_PODS_PER_NODE,
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Profile, String> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
                format!("unknown profile {s:?} (one of {})", names.join(", "))
            })
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Node names of a run: `{prefix}{index}`.
pub fn node_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index}")
}

/// The zone of node `index`.
pub fn zone(index: usize) -> String {
    format!("zone-{}", index % ZONES)
}

/// Node `index`: hostname and zone labels, the run label, and a Ready status with
/// scheduler_perf's capacity (written again through `nodes/{name}/status`).
pub fn node(run: &str, prefix: &str, index: usize) -> Node {
    let name = node_name(prefix, index);
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels(&[
                ("kubernetes.io/hostname", &name),
                ("kubernetes.io/os", "linux"),
                (ZONE_LABEL, &zone(index)),
                ("type", "kwok"),
                (RUN_LABEL, run),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(node_status()),
    }
}

/// A Ready node with scheduler_perf's capacity (= allocatable).
pub fn node_status() -> NodeStatus {
    let resources = BTreeMap::from([
        (
            "cpu".to_string(),
            Quantity(format!("{}", NODE_CPU_MILLIS / 1000)),
        ),
        ("memory".to_string(), Quantity(NODE_MEMORY.to_string())),
        ("pods".to_string(), Quantity(NODE_PODS.to_string())),
    ]);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("simulated by skiff bench scheduler".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The preemption profile's two PriorityClasses.
pub fn priority_classes() -> Vec<PriorityClass> {
    [LOW_PRIORITY, HIGH_PRIORITY]
        .into_iter()
        .map(|(name, value)| PriorityClass {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            value,
            description: Some("skiff bench scheduler".into()),
            ..Default::default()
        })
        .collect()
}

/// Which pods of a run a pod is: the preemption profile's victims or the measured ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Init,
    Measure,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Init => "init",
            Phase::Measure => "measure",
        }
    }
}

/// Pod `index` of `phase` in a run of `profile`.
pub fn pod(run: &str, profile: Profile, phase: Phase, index: usize) -> Pod {
    let app = format!("bench-{}", profile.name());
    let (cpu, priority_class) = match (profile, phase) {
        (Profile::Preemption, Phase::Init) => (PREEMPTION_POD_CPU, Some(LOW_PRIORITY.0)),
        (Profile::Preemption, Phase::Measure) => (PREEMPTION_POD_CPU, Some(HIGH_PRIORITY.0)),
        _ => (POD_CPU, None),
    };
    let requests = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.to_string())),
        ("memory".to_string(), Quantity(POD_MEMORY.to_string())),
    ]);
    let selector = LabelSelector {
        match_labels: Some(labels(&[("app", &app)])),
        ..Default::default()
    };
    let affinity = match profile {
        Profile::Affinity => Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: ZONE_LABEL.into(),
                            operator: "In".into(),
                            values: Some((0..ZONES / 2).map(zone).collect()),
                        }]),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        Profile::AntiAffinity => Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(selector.clone()),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        _ => None,
    };
    let spread = (profile == Profile::Spread).then(|| {
        vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: ZONE_LABEL.into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            label_selector: Some(selector.clone()),
            ..Default::default()
        }]
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-{index}", phase.name())),
            labels: Some(labels(&[
                ("app", &app),
                (RUN_LABEL, run),
                (PHASE_LABEL, phase.name()),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "pause".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(requests.clone()),
                    limits: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            affinity,
            topology_spread_constraints: spread,
            priority_class_name: priority_class.map(str::to_string),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_by_name_and_reject_others() {
        for profile in Profile::ALL {
            assert_eq!(profile.name().parse::<Profile>(), Ok(profile));
        }
        let err = "fast".parse::<Profile>().unwrap_err();
        assert!(
            err.contains("basic, affinity, anti-affinity, spread, preemption"),
            "{err}"
        );
    }

    #[test]
    fn profile_capacity_follows_the_node_size() {
        assert_eq!(Profile::Basic.max_pods(1_000), 40_000);
        assert_eq!(Profile::Affinity.max_pods(1_000), 20_000);
        assert_eq!(Profile::AntiAffinity.max_pods(1_000), 1_000);
        assert_eq!(Profile::Preemption.max_pods(1_000), 4_000);
    }

    #[test]
    fn nodes_carry_the_run_zone_and_capacity() {
        let node = node("r1", "bench-node-", 13);
        let labels = node.metadata.labels.unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("bench-node-13"));
        assert_eq!(labels[ZONE_LABEL], "zone-3");
        assert_eq!(labels[RUN_LABEL], "r1");
        let allocatable = node.status.unwrap().allocatable.unwrap();
        assert_eq!(allocatable["cpu"].0, "4");
        assert_eq!(allocatable["pods"].0, "110");
    }

    #[test]
    fn each_profile_shapes_its_pods() {
        let spec = |p, phase| pod("r", p, phase, 7).spec.unwrap();
        let basic = spec(Profile::Basic, Phase::Measure);
        assert!(basic.affinity.is_none() && basic.topology_spread_constraints.is_none());
        let requests = basic.containers[0]
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert_eq!(requests["cpu"].0, "100m");

        let affinity = spec(Profile::Affinity, Phase::Measure).affinity.unwrap();
        let terms = affinity
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let zones = terms[0].match_expressions.clone().unwrap()[0]
            .values
            .clone()
            .unwrap();
        assert_eq!(zones.len(), ZONES / 2);

        let anti = spec(Profile::AntiAffinity, Phase::Measure)
            .affinity
            .unwrap();
        let term = &anti
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()[0];
        assert_eq!(term.topology_key, "kubernetes.io/hostname");

        let spread = spec(Profile::Spread, Phase::Measure)
            .topology_spread_constraints
            .unwrap();
        assert_eq!(
            (spread[0].max_skew, spread[0].topology_key.as_str()),
            (1, ZONE_LABEL)
        );

        let victim = spec(Profile::Preemption, Phase::Init);
        let preemptor = pod("r", Profile::Preemption, Phase::Measure, 7);
        assert_eq!(victim.priority_class_name.as_deref(), Some(LOW_PRIORITY.0));
        assert_eq!(preemptor.metadata.name.as_deref(), Some("measure-7"));
        assert_eq!(
            preemptor.spec.unwrap().priority_class_name.as_deref(),
            Some(HIGH_PRIORITY.0)
        );
    }

    #[test]
    fn preemption_victims_fill_a_node_and_one_more_does_not_fit() {
        let cpu: u64 = PREEMPTION_POD_CPU.trim_end_matches('m').parse().unwrap();
        let per_node = PREEMPTION_PODS_PER_NODE as u64;
        assert!(cpu * per_node <= NODE_CPU_MILLIS);
        assert!(cpu * (per_node + 1) > NODE_CPU_MILLIS);
    }
}
