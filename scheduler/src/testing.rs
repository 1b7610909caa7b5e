//! Builders for unit tests: nodes with allocatable, pods with requests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::node_info::{NodeInfo, PodUsage};

pub(crate) fn node(name: &str, cpu: &str, mem: &str, pods: i64) -> Node {
    let alloc = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.into())),
        ("memory".to_string(), Quantity(mem.into())),
        ("pods".to_string(), Quantity(pods.to_string())),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(alloc.clone()),
            capacity: Some(alloc),
            ..Default::default()
        }),
    }
}

pub(crate) fn info(node: Node) -> NodeInfo {
    NodeInfo::new(node)
}

pub(crate) fn with_labels(mut node: Node, labels: &[(&str, &str)]) -> Node {
    let l = node.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in labels {
        l.insert(k.to_string(), v.to_string());
    }
    node
}

pub(crate) fn with_taint(mut node: Node, key: &str, value: &str, effect: &str) -> Node {
    node.spec
        .get_or_insert_with(Default::default)
        .taints
        .get_or_insert_with(Vec::new)
        .push(Taint {
            key: key.into(),
            value: Some(value.into()).filter(|v: &String| !v.is_empty()),
            effect: effect.into(),
            time_added: None,
        });
    node
}

pub(crate) fn pod_req(name: &str, cpu: &str, mem: &str) -> Pod {
    let mut requests = BTreeMap::new();
    if !cpu.is_empty() {
        requests.insert("cpu".to_string(), Quantity(cpu.into()));
    }
    if !mem.is_empty() {
        requests.insert("memory".to_string(), Quantity(mem.into()));
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

pub(crate) fn pod_on(name: &str, cpu: &str, mem: &str, node: &str) -> Pod {
    let mut p = pod_req(name, cpu, mem);
    p.spec.as_mut().unwrap().node_name = Some(node.into());
    p
}

pub(crate) fn toleration(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
    let opt = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    Toleration {
        key: opt(key),
        operator: opt(op),
        value: opt(value),
        effect: opt(effect),
        toleration_seconds: None,
    }
}

pub(crate) fn place(info: &mut NodeInfo, pod: &Pod) {
    let key = format!("default/{}", pod.metadata.name.as_deref().unwrap_or(""));
    info.add_pod(&key, PodUsage::of(pod));
}
