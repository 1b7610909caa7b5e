//! Nominated pods, as kube-scheduler's `nominator`: a pending pod that preempted pods on a
//! node is *nominated* to it (`status.nominatedNodeName`) until it is bound, deleted or
//! nominated elsewhere. Its requests are reserved there: a pod of lower or equal priority
//! filtering that node sees the nominated pods of higher or equal priority as placed
//! (`addNominatedPods`), so the room the victims leave is not taken by someone else. Fed by
//! the scheduler's own decisions at once and by the pod watch (`updateNominatedPod`). Pure.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

use crate::node_info::{NodeInfo, PodUsage};

/// A pod nominated to a node.
#[derive(Debug, Clone)]
pub struct NominatedPod {
    /// The node it is nominated to.
    pub node: String,
    /// What it will occupy there (its priority included).
    pub usage: PodUsage,
}

/// Nominated pods by key and by node.
#[derive(Debug, Default)]
pub struct Nominator {
    by_pod: BTreeMap<String, NominatedPod>,
    by_node: BTreeMap<String, BTreeSet<String>>,
}

/// A pod's `status.nominatedNodeName`, if set.
pub fn nominated_node_name(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty())
}

impl Nominator {
    /// Nominates `pod` to `node` (replacing an earlier nomination).
    pub fn nominate(&mut self, key: &str, pod: &Pod, node: &str) {
        self.remove(key);
        self.by_node
            .entry(node.to_string())
            .or_default()
            .insert(key.to_string());
        self.by_pod.insert(
            key.to_string(),
            NominatedPod {
                node: node.to_string(),
                usage: PodUsage::of(pod),
            },
        );
    }

    /// Drops a pod's nomination (bound, deleted, assumed, or cleared).
    pub fn remove(&mut self, key: &str) -> Option<NominatedPod> {
        let gone = self.by_pod.remove(key)?;
        if let Some(keys) = self.by_node.get_mut(&gone.node) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_node.remove(&gone.node);
            }
        }
        Some(gone)
    }

    /// Upstream's `updateNominatedPod` for a pending pod the watch shows (`old`: the copy seen
    /// before, if any): a `nominatedNodeName` in the update wins; one removed by the update
    /// drops the nomination; with none before or after, an in-memory nomination (made by this
    /// scheduler, not yet written) stays.
    pub fn update_from_watch(&mut self, key: &str, old: Option<&Pod>, pod: &Pod) {
        match nominated_node_name(pod) {
            Some(node) => self.nominate(key, pod, node),
            None if old.and_then(nominated_node_name).is_some() => {
                self.remove(key);
            }
            None => {
                if let Some(node) = self.node_of(key).map(str::to_string) {
                    self.nominate(key, pod, &node);
                }
            }
        }
    }

    /// Drops nominations of pods whose key fails `keep` (after a relist).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.by_pod.keys().filter(|k| !keep(k)).cloned().collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// Where a pod is nominated.
    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.by_pod.get(key).map(|n| n.node.as_str())
    }

    /// The pods nominated to `node`, by key.
    pub fn pods_on<'a>(
        &'a self,
        node: &str,
    ) -> impl Iterator<Item = (&'a str, &'a NominatedPod)> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.by_pod.get(k).map(|n| (k.as_str(), n)))
    }

    /// `addNominatedPods`: `node` with the pods nominated to it whose priority is at least
    /// `priority` (other than `key` itself) added, or the node as is when there are none.
    pub fn with_nominated<'a>(
        &self,
        node: &'a NodeInfo,
        key: &str,
        priority: i32,
    ) -> Cow<'a, NodeInfo> {
        let mut reserved = self
            .pods_on(node.name())
            .filter(|(k, n)| *k != key && n.usage.priority >= priority)
            .peekable();
        if reserved.peek().is_none() {
            return Cow::Borrowed(node);
        }
        let mut copy = node.clone();
        for (k, n) in reserved {
            copy.add_pod(&format!("nominated:{k}"), n.usage.clone());
        }
        Cow::Owned(copy)
    }

    /// Nominated pods in all.
    pub fn len(&self) -> usize {
        self.by_pod.len()
    }

    /// Whether nothing is nominated.
    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::node_resources_fit;
    use crate::testing::*;

    fn with_priority(mut pod: Pod, priority: i32) -> Pod {
        pod.spec.as_mut().unwrap().priority = Some(priority);
        pod
    }

    #[test]
    fn a_nominated_pod_reserves_its_room_against_lower_priority_pods_only() {
        let mut n = info(node("n1", "2", "4Gi", 10));
        place(&mut n, &pod_req("busy", "1", "1Gi"));
        let mut nominator = Nominator::default();
        nominator.nominate(
            "default/high",
            &with_priority(pod_req("high", "1", "1Gi"), 1000),
            "n1",
        );
        let low = with_priority(pod_req("low", "1", "1Gi"), 0);
        let low_view = nominator.with_nominated(&n, "default/low", 0);
        assert!(
            node_resources_fit(&PodUsage::of(&low), &low_view).is_err(),
            "the high pod's cpu is reserved"
        );
        let higher = with_priority(pod_req("higher", "1", "1Gi"), 2000);
        let higher_view = nominator.with_nominated(&n, "default/higher", 2000);
        assert!(node_resources_fit(&PodUsage::of(&higher), &higher_view).is_ok());
        let own_view = nominator.with_nominated(&n, "default/high", 1000);
        assert!(
            matches!(own_view, Cow::Borrowed(_)),
            "a pod does not reserve against itself"
        );
    }

    #[test]
    fn watch_updates_follow_upstream() {
        let mut nominator = Nominator::default();
        let mut pod = pod_req("p", "1", "1Gi");
        // Nominated in memory, the watch has not caught up: kept.
        nominator.nominate("default/p", &pod, "n1");
        nominator.update_from_watch("default/p", Some(&pod.clone()), &pod);
        assert_eq!(nominator.node_of("default/p"), Some("n1"));
        // The status says n2: moved.
        let old = pod.clone();
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            nominated_node_name: Some("n2".into()),
            ..Default::default()
        });
        nominator.update_from_watch("default/p", Some(&old), &pod);
        assert_eq!(nominator.node_of("default/p"), Some("n2"));
        assert_eq!(nominator.pods_on("n1").count(), 0);
        // Cleared by an update: dropped.
        let old = pod.clone();
        pod.status = None;
        nominator.update_from_watch("default/p", Some(&old), &pod);
        assert!(nominator.is_empty());
    }
}
