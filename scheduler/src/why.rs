//! `skiff why-pending`: for one pod, every node's verdict from the same filters the scheduler
//! runs, with numbers (`node-3: Insufficient memory: requests 2Gi, allocatable 4Gi, in use
//! 3.1Gi`). Reads nodes and pods through the API; pure once it has them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::ListParams;

use crate::Error;
use crate::cache::Cache;
use crate::pod_filters::PodFilters;

/// One line per node, plus a first line saying where the pod stands.
pub fn explain(
    pod: &Pod,
    nodes: Vec<Node>,
    pods: &[Pod],
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<String> {
    let mut cache = Cache::default();
    for node in nodes {
        cache.upsert_node(node);
    }
    for p in pods {
        if p.metadata.uid != pod.metadata.uid || pod.metadata.uid.is_none() {
            cache.upsert_bound_pod(p);
        }
    }
    let mut lines = Vec::new();
    if let Some(node) = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
    {
        lines.push(format!(
            "pod is bound to node {node}; filters as if it were pending:"
        ));
    }
    cache.namespaces = namespaces;
    let nodes = cache.nodes();
    let filters = PodFilters::new(pod, &nodes, &cache.namespaces);
    if nodes.is_empty() {
        lines.push("no nodes".into());
    }
    for node in nodes {
        match filters.check(node) {
            Ok(()) => lines.push(format!("{}: fits", node.name())),
            Err(unfit) => {
                for detail in unfit.details {
                    lines.push(format!("{}: {detail}", node.name()));
                }
            }
        }
    }
    lines
}

/// Fetches the pod, the nodes and the pods, and explains.
pub async fn why_pending(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<String>, Error> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "pods \"{name}\" not found in namespace {namespace}"
            ))
        })?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let namespaces = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|ns| {
            (
                ns.metadata.name.unwrap_or_default(),
                ns.metadata.labels.unwrap_or_default(),
            )
        })
        .collect();
    Ok(explain(&pod, nodes, &pods, namespaces))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn numbers_per_node() {
        let mut busy = pod_on("busy", "100m", "3200Mi", "node-3");
        busy.metadata.uid = Some("u1".into());
        let mut pending = pod_req("p", "100m", "2Gi");
        pending.metadata.uid = Some("u2".into());
        let lines = explain(
            &pending,
            vec![
                node("node-3", "2", "4Gi", 10),
                with_taint(
                    node("node-4", "2", "8Gi", 10),
                    "dedicated",
                    "gpu",
                    "NoSchedule",
                ),
                node("node-5", "2", "8Gi", 10),
            ],
            &[busy],
            BTreeMap::new(),
        );
        assert_eq!(
            lines,
            vec![
                "node-3: Insufficient memory: requests 2Gi, allocatable 4Gi, in use 3.1Gi",
                "node-4: untolerated taint dedicated=gpu:NoSchedule",
                "node-5: fits",
            ]
        );
    }
}
