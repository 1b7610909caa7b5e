//! The scheduler's view of the cluster: nodes and the pods placed on them, either bound (seen
//! through the watch) or *assumed* (this scheduler decided and is binding; counted at once so
//! the next pod sees the capacity taken). When the watch shows an assumed pod bound the
//! assumption is confirmed; when binding fails it is forgotten. Pods of terminal phase hold no
//! resources. Pods on a node the cache has not seen yet are kept on a placeholder.
//! It also keeps what the system default spread constraints read (`DefaultSelector`): the
//! selectors of Services, ReplicationControllers, ReplicaSets and StatefulSets.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Resource;
use kube::runtime::watcher;

use crate::node_info::{NodeInfo, PodUsage};
use crate::scores_spread::{controller_ref, default_selector};

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
    /// What `DefaultSelector` reads.
    pub selectors: SpreadSelectors,
}

/// Objects of one kind by `namespace/name`, kept from a watch. A relist (`Init` ...
/// `InitDone`) fills a fresh map that replaces the old one when it is done, so lookups never
/// see a half-listed kind.
#[derive(Debug)]
pub struct Listed<V> {
    objects: BTreeMap<String, V>,
    relisting: Option<BTreeMap<String, V>>,
}

impl<V> Default for Listed<V> {
    fn default() -> Self {
        Listed {
            objects: BTreeMap::new(),
            relisting: None,
        }
    }
}

impl<V> Listed<V> {
    /// Applies a watch event; `value` keeps what is needed of an object.
    pub fn apply<K: Resource>(&mut self, event: watcher::Event<K>, value: impl Fn(K) -> V) {
        match event {
            watcher::Event::Init => self.relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                let key = key_of(obj.meta());
                let map = self.relisting.as_mut().unwrap_or(&mut self.objects);
                map.insert(key, value(obj));
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relisting.take() {
                    self.objects = fresh;
                }
            }
            watcher::Event::Apply(obj) => {
                self.objects.insert(key_of(obj.meta()), value(obj));
            }
            watcher::Event::Delete(obj) => {
                self.objects.remove(&key_of(obj.meta()));
            }
        }
    }

    /// The object `namespace/name`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.objects.get(key)
    }

    /// Every object of a namespace.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = &V> {
        let prefix = format!("{namespace}/");
        self.objects
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
    }

    /// How many objects are kept.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// The selectors `DefaultSelector` reads: Services (only their namespace and
/// `spec.selector` are kept) and the pods' controllers.
#[derive(Debug, Default)]
pub struct SpreadSelectors {
    /// Services, stripped to namespace and selector.
    pub services: Listed<Service>,
    /// ReplicationControllers' `spec.selector`.
    pub replication_controllers: Listed<LabelSelector>,
    /// ReplicaSets' `spec.selector`.
    pub replica_sets: Listed<LabelSelector>,
    /// StatefulSets' `spec.selector`.
    pub stateful_sets: Listed<LabelSelector>,
}

impl SpreadSelectors {
    /// A Service watch event.
    pub fn on_service(&mut self, event: watcher::Event<Service>) {
        self.services.apply(event, |svc| Service {
            metadata: ObjectMeta {
                namespace: svc.metadata.namespace,
                name: svc.metadata.name,
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: svc.spec.and_then(|s| s.selector),
                ..Default::default()
            }),
            status: None,
        });
    }

    /// A ReplicationController watch event (its map selector as `matchLabels`).
    pub fn on_replication_controller(&mut self, event: watcher::Event<ReplicationController>) {
        self.replication_controllers
            .apply(event, |rc| LabelSelector {
                match_labels: rc.spec.and_then(|s| s.selector),
                match_expressions: None,
            });
    }

    /// A ReplicaSet watch event.
    pub fn on_replica_set(&mut self, event: watcher::Event<ReplicaSet>) {
        self.replica_sets
            .apply(event, |rs| rs.spec.map(|s| s.selector).unwrap_or_default());
    }

    /// A StatefulSet watch event.
    pub fn on_stateful_set(&mut self, event: watcher::Event<StatefulSet>) {
        self.stateful_sets
            .apply(event, |ss| ss.spec.map(|s| s.selector).unwrap_or_default());
    }

    /// The selector of the pod's controller, if it is a ReplicationController (`v1`),
    /// ReplicaSet or StatefulSet (`apps/v1`) the cache knows, looked up by name in the pod's
    /// namespace as upstream does.
    pub fn controller_selector(&self, pod: &Pod) -> Option<&LabelSelector> {
        let owner = controller_ref(pod)?;
        let key = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            owner.name
        );
        match (owner.api_version.as_str(), owner.kind.as_str()) {
            ("v1", "ReplicationController") => self.replication_controllers.get(&key),
            ("apps/v1", "ReplicaSet") => self.replica_sets.get(&key),
            ("apps/v1", "StatefulSet") => self.stateful_sets.get(&key),
            _ => None,
        }
    }

    /// `DefaultSelector(pod)` for the PodTopologySpread score; `None` for a pod with
    /// constraints of its own (the system defaults do not apply to it).
    pub fn default_spread_selector(&self, pod: &Pod) -> Option<LabelSelector> {
        let own = pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .is_some_and(|c| !c.is_empty());
        if own {
            return None;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
        Some(default_selector(
            pod,
            self.services.in_namespace(namespace),
            self.controller_selector(pod),
        ))
    }
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
    use k8s_openapi::api::apps::v1::ReplicaSet;

    fn service(ns: &str, name: &str, selector: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                cluster_ip: Some("10.0.0.1".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn replica_set(ns: &str, name: &str, app: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), app.to_string())].into()),
                    match_expressions: None,
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn owned_by(mut pod: Pod, api_version: &str, kind: &str, name: &str) -> Pod {
        pod.metadata.labels = Some(
            [
                ("app".to_string(), "web".to_string()),
                ("tier".to_string(), "front".to_string()),
            ]
            .into(),
        );
        pod.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name: name.into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        pod
    }

    #[test]
    fn a_service_and_the_replica_set_of_a_pod_merge_into_its_default_selector() {
        let mut sel = SpreadSelectors::default();
        sel.on_service(watcher::Event::Apply(service(
            "default",
            "web",
            &[("tier", "front")],
        )));
        sel.on_service(watcher::Event::Apply(service(
            "default",
            "db",
            &[("app", "db")],
        )));
        sel.on_service(watcher::Event::Apply(service(
            "other",
            "web",
            &[("app", "web")],
        )));
        sel.on_replica_set(watcher::Event::Apply(replica_set(
            "default", "web-1", "web",
        )));
        sel.on_replica_set(watcher::Event::Apply(replica_set(
            "other", "web-1", "other",
        )));
        let pod = owned_by(pod_req("p", "", ""), "apps/v1", "ReplicaSet", "web-1");
        let merged = sel.default_spread_selector(&pod);
        assert_eq!(
            merged,
            Some(LabelSelector {
                match_labels: Some([("tier".to_string(), "front".to_string())].into()),
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "app".into(),
                        operator: "In".into(),
                        values: Some(vec!["web".into()]),
                    }
                ]),
            }),
            "the selecting Service of the pod's namespace and its ReplicaSet, nothing else"
        );
        assert_eq!(
            sel.services
                .get("default/web")
                .and_then(|s| s.spec.as_ref()?.cluster_ip.clone()),
            None,
            "only the selector is kept"
        );
        // A pod with constraints of its own uses no defaults.
        let mut own = pod.clone();
        if let Some(spec) = own.spec.as_mut() {
            spec.topology_spread_constraints = Some(vec![Default::default()]);
        }
        assert_eq!(sel.default_spread_selector(&own), None);
        // Another kind or group of controller by the same name is not looked up.
        let deployment = owned_by(pod_req("p", "", ""), "apps/v1", "Deployment", "web-1");
        assert_eq!(sel.controller_selector(&deployment), None);
        assert!(sel.controller_selector(&pod).is_some());
        // The ReplicaSet goes: only the Service is left.
        sel.on_replica_set(watcher::Event::Delete(replica_set(
            "default", "web-1", "web",
        )));
        assert_eq!(
            sel.default_spread_selector(&pod)
                .and_then(|s| s.match_expressions),
            None
        );
    }

    #[test]
    fn a_relist_replaces_the_kind_when_done() {
        let mut sel = SpreadSelectors::default();
        sel.on_service(watcher::Event::Apply(service(
            "default",
            "old",
            &[("app", "web")],
        )));
        sel.on_service(watcher::Event::Init);
        sel.on_service(watcher::Event::InitApply(service(
            "default",
            "new",
            &[("app", "web")],
        )));
        assert!(
            sel.services.get("default/old").is_some(),
            "kept while relisting"
        );
        sel.on_service(watcher::Event::InitDone);
        assert!(sel.services.get("default/old").is_none());
        assert_eq!(sel.services.len(), 1);
        assert_eq!(sel.services.in_namespace("default").count(), 1);
        assert_eq!(sel.services.in_namespace("defaul").count(), 0);
    }

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
