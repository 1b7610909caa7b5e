//! The scheduler's view of the cluster: nodes and the pods placed on them, either bound (seen
//! through the watch) or *assumed* (this scheduler decided and is binding; counted at once so
//! the next pod sees the capacity taken). When the watch shows an assumed pod bound the
//! assumption is confirmed; when binding fails it is forgotten. Pods of terminal phase hold no
//! resources. Pods on a node the cache has not seen yet are kept on a placeholder.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::node_info::{NodeInfo, PodUsage};

/// `namespace/name` of an object.
pub fn key_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Whether a pod has finished (its resources are free again).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Nodes and placed pods.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    placeholders: BTreeSet<String>,
    /// pod key → (node, assumed).
    placed: BTreeMap<String, (String, bool)>,
    /// Namespace labels (for affinity terms' `namespaceSelector`).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Cache {
    /// Adds or updates a node.
    pub fn upsert_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.placeholders.remove(&name);
        match self.nodes.get_mut(&name) {
            Some(info) => info.set_node(node),
            None => {
                self.nodes.insert(name, NodeInfo::new(node));
            }
        }
    }

    /// Removes a node (its pods stay accounted on a placeholder until they go).
    pub fn remove_node(&mut self, name: &str) {
        let has_pods = self.nodes.get(name).is_some_and(|n| !n.pods.is_empty());
        if has_pods {
            self.placeholders.insert(name.to_string());
        } else {
            self.nodes.remove(name);
        }
    }

    fn node_entry(&mut self, name: &str) -> &mut NodeInfo {
        let placeholders = &mut self.placeholders;
        self.nodes.entry(name.to_string()).or_insert_with(|| {
            placeholders.insert(name.to_string());
            NodeInfo::new(Node {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            })
        })
    }

    fn unplace(&mut self, key: &str) {
        if let Some((node, _)) = self.placed.remove(key)
            && let Some(info) = self.nodes.get_mut(&node)
        {
            info.remove_pod(key);
            if info.pods.is_empty() && self.placeholders.remove(&node) {
                self.nodes.remove(&node);
            }
        }
    }

    /// A pod the watch shows with `spec.nodeName` set (bound by anyone).
    pub fn upsert_bound_pod(&mut self, pod: &Pod) {
        let key = key_of(&pod.metadata);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() || is_terminal(pod) {
            self.unplace(&key);
            return;
        }
        self.unplace(&key);
        self.node_entry(&node).add_pod(&key, PodUsage::of(pod));
        self.placed.insert(key, (node, false));
    }

    /// A pod is gone.
    pub fn remove_pod(&mut self, key: &str) {
        self.unplace(key);
    }

    /// This scheduler chose `node` for `pod` and is binding it.
    pub fn assume(&mut self, key: &str, pod: &Pod, node: &str) {
        self.unplace(key);
        self.node_entry(node).add_pod(key, PodUsage::of(pod));
        self.placed
            .insert(key.to_string(), (node.to_string(), true));
    }

    /// The binding failed: give the capacity back (only if still an assumption).
    pub fn forget(&mut self, key: &str) {
        if self.placed.get(key).is_some_and(|(_, assumed)| *assumed) {
            self.unplace(key);
        }
    }

    /// Drops bound pods whose key fails `keep` (after a relist).
    pub fn retain_pods(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .placed
            .iter()
            .filter(|(k, (_, assumed))| !*assumed && !keep(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.unplace(&key);
        }
    }

    /// Where a pod is placed, and whether only assumed.
    pub fn placement(&self, key: &str) -> Option<(&str, bool)> {
        self.placed.get(key).map(|(n, a)| (n.as_str(), *a))
    }

    /// Real nodes (not placeholders), by name.
    pub fn nodes(&self) -> Vec<&NodeInfo> {
        self.nodes
            .iter()
            .filter(|(name, _)| !self.placeholders.contains(*name))
            .map(|(_, info)| info)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod_on, pod_req};

    #[test]
    fn assumed_pods_count_at_once_and_are_confirmed_or_forgotten() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1", "4", "8Gi", 110));
        let p = pod_req("p", "1", "1Gi");
        cache.assume("default/p", &p, "n1");
        assert_eq!(cache.nodes()[0].requested.milli_cpu, 1000);
        assert_eq!(cache.placement("default/p"), Some(("n1", true)));
        // The watch shows it bound: confirmed, counted once.
        cache.upsert_bound_pod(&pod_on("p", "1", "1Gi", "n1"));
        assert_eq!(cache.nodes()[0].requested.milli_cpu, 1000);
        assert_eq!(cache.placement("default/p"), Some(("n1", false)));
        cache.forget("default/p");
        assert_eq!(
            cache.nodes()[0].requested.milli_cpu,
            1000,
            "confirmed pods are not forgotten"
        );
        cache.assume("default/q", &pod_req("q", "2", "1Gi"), "n1");
        cache.forget("default/q");
        assert_eq!(cache.nodes()[0].requested.milli_cpu, 1000);
    }

    #[test]
    fn a_pod_being_deleted_counts_until_it_is_gone() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1", "4", "8Gi", 110));
        let mut victim = pod_on("v", "3", "1Gi", "n1");
        cache.upsert_bound_pod(&victim);
        victim.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        cache.upsert_bound_pod(&victim);
        assert_eq!(
            cache.nodes()[0].requested.milli_cpu,
            3000,
            "terminating still holds its cpu"
        );
        assert!(cache.nodes()[0].pods["default/v"].terminating);
        cache.remove_pod("default/v");
        assert_eq!(cache.nodes()[0].requested.milli_cpu, 0);
    }

    #[test]
    fn pods_before_their_node_and_terminal_pods() {
        let mut cache = Cache::default();
        cache.upsert_bound_pod(&pod_on("p", "1", "1Gi", "late"));
        assert!(
            cache.nodes().is_empty(),
            "placeholder nodes are not schedulable"
        );
        cache.upsert_node(node("late", "4", "8Gi", 110));
        assert_eq!(cache.nodes()[0].requested.milli_cpu, 1000);
        let mut done = pod_on("p", "1", "1Gi", "late");
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        cache.upsert_bound_pod(&done);
        assert_eq!(cache.nodes()[0].requested.milli_cpu, 0);
    }
}
