//! One pending pod's filters with their pre-pass state (upstream's `CycleState` for the
//! Filter plugins): built once per scheduling attempt from every node, then asked per node.
//! Preemption's what-ifs move placed pods in and out of a node copy and tell the state
//! (`add_pod` / `remove_pod`, upstream's PreFilterExtensions) so PodTopologySpread and
//! InterPodAffinity count what the copy holds. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::filters::{self, Unfit, run_filters};
use crate::interpod::{self, InterPodState};
use crate::node_info::{NodeInfo, PodUsage};
use crate::spread::{self, SpreadState};

/// Namespace name → labels.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// The filters of one pod.
#[derive(Debug, Clone)]
pub struct PodFilters<'a> {
    pod: &'a Pod,
    usage: PodUsage,
    namespaces: &'a NamespaceLabels,
    spread: SpreadState,
    interpod: InterPodState,
}

impl<'a> PodFilters<'a> {
    /// Runs the pre-passes over every node.
    pub fn new(pod: &'a Pod, nodes: &[&NodeInfo], namespaces: &'a NamespaceLabels) -> Self {
        PodFilters {
            pod,
            usage: PodUsage::of(pod),
            namespaces,
            spread: spread::prefilter(pod, nodes),
            interpod: interpod::prefilter(pod, nodes, namespaces),
        }
    }

    /// The pod.
    pub fn pod(&self) -> &'a Pod {
        self.pod
    }

    /// What the pod would occupy.
    pub fn usage(&self) -> &PodUsage {
        &self.usage
    }

    /// Every filter, in upstream's order; the first failure wins.
    pub fn check(&self, node: &NodeInfo) -> Result<(), Unfit> {
        run_filters(self.pod, &self.usage, node)?;
        spread::filter(&self.spread, node)?;
        interpod::filter(&self.interpod, node)
    }

    /// Every failing filter, not only the first (`skiff why-pending`'s smallest change).
    pub fn check_every(&self, node: &NodeInfo) -> Vec<Unfit> {
        [
            filters::node_unschedulable(self.pod, node),
            filters::node_name(self.pod, node),
            filters::taint_toleration(self.pod, node),
            filters::node_affinity(self.pod, node),
            filters::node_ports(&self.usage, node),
            filters::node_resources_fit(&self.usage, node),
            spread::filter(&self.spread, node),
            interpod::filter(&self.interpod, node),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect()
    }

    /// `existing` was added to `node` (a copy).
    pub fn add_pod(&mut self, existing: &PodUsage, node: &NodeInfo) {
        self.update(existing, node, 1);
    }

    /// `existing` was removed from `node` (a copy).
    pub fn remove_pod(&mut self, existing: &PodUsage, node: &NodeInfo) {
        self.update(existing, node, -1);
    }

    fn update(&mut self, existing: &PodUsage, node: &NodeInfo, delta: i64) {
        self.spread.update_with_pod(self.pod, existing, node, delta);
        self.interpod
            .update_with_pod(self.pod, existing, node, self.namespaces, delta);
    }
}
