//! kube-scheduler's default Filter plugins, as pure functions of (pod, node info), run in
//! upstream's order; a node's verdict is the first failing plugin's status, as
//! `RunFilterPlugins` returns. Reason strings are upstream's, word for word, because
//! operators grep for them. Each failure also carries `details` with the numbers, which
//! `skiff why-pending` prints and kube-scheduler does not.

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};

use crate::node_info::{NodeInfo, PodUsage};
use crate::resources::{format_bytes, format_milli_cpu};

/// `NodeUnschedulable`'s reason.
pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// `NodeName`'s reason.
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
/// `NodeAffinity`'s reason for the pod's selector/affinity.
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
/// `NodePorts`' reason.
pub const REASON_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
/// `NodeResourcesFit`'s reason when the node has no pod slot left.
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";
/// The taint `NodeUnschedulable` lets a pod tolerate.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Why a node cannot take a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    /// The plugin that refused.
    pub plugin: &'static str,
    /// Upstream's reason strings (counted in the FailedScheduling message).
    pub reasons: Vec<String>,
    /// `UnschedulableAndUnresolvable`: evicting pods would not help (preemption skips it).
    pub unresolvable: bool,
    /// The same with numbers, one line per reason.
    pub details: Vec<String>,
}

impl Unfit {
    fn one(plugin: &'static str, reason: String, unresolvable: bool, detail: String) -> Unfit {
        Unfit {
            plugin,
            reasons: vec![reason],
            unresolvable,
            details: vec![detail],
        }
    }
}

/// Runs every filter in upstream order; the first failure wins.
pub fn run_filters(pod: &Pod, usage: &PodUsage, node: &NodeInfo) -> Result<(), Unfit> {
    node_unschedulable(pod, node)?;
    node_name(pod, node)?;
    taint_toleration(pod, node)?;
    node_affinity(pod, node)?;
    node_ports(usage, node)?;
    node_resources_fit(usage, node)?;
    Ok(())
}

/// The pod's tolerations.
pub fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

/// The node's taints.
pub fn taints(node: &NodeInfo) -> &[Taint] {
    node.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

/// NoSchedule/NoExecute taints of the node that the pod does not tolerate.
pub fn untolerated_hard_taints<'a>(
    pod: &'a Pod,
    node: &'a NodeInfo,
) -> impl Iterator<Item = &'a Taint> + 'a {
    let tols = tolerations(pod);
    taints(node)
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(move |t| !tols.iter().any(|tol| tolerates(tol, t)))
}

/// The pod's required node affinity, if any.
pub fn required_node_affinity(spec: &PodSpec) -> Option<&NodeSelector> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
}

/// `v1.Toleration.ToleratesTaint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// NodeUnschedulable: `spec.unschedulable` unless the pod tolerates the unschedulable taint.
pub fn node_unschedulable(pod: &Pod, node: &NodeInfo) -> Result<(), Unfit> {
    let unschedulable = node
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !unschedulable {
        return Ok(());
    }
    let taint = Taint {
        key: TAINT_UNSCHEDULABLE.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
        return Ok(());
    }
    Err(Unfit::one(
        "NodeUnschedulable",
        REASON_UNSCHEDULABLE.into(),
        true,
        "node is cordoned (spec.unschedulable)".into(),
    ))
}

/// NodeName: a pod naming a node fits only there.
pub fn node_name(pod: &Pod, node: &NodeInfo) -> Result<(), Unfit> {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(name) if !name.is_empty() && name != node.name() => Err(Unfit::one(
            "NodeName",
            REASON_NODE_NAME.into(),
            true,
            format!("pod asks for node {name}"),
        )),
        _ => Ok(()),
    }
}

/// TaintToleration (filter): the first NoSchedule/NoExecute taint the pod does not tolerate.
pub fn taint_toleration(pod: &Pod, node: &NodeInfo) -> Result<(), Unfit> {
    match untolerated_hard_taints(pod, node).next() {
        Some(taint) => {
            let value = taint.value.as_deref().unwrap_or("");
            Err(Unfit::one(
                "TaintToleration",
                format!("node(s) had untolerated taint {{{}: {}}}", taint.key, value),
                true,
                format!("untolerated taint {}={}:{}", taint.key, value, taint.effect),
            ))
        }
        None => Ok(()),
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Ok(bound), Some(Ok(actual))) =
                (bound.parse::<i64>(), value.map(str::parse::<i64>))
            else {
                return false;
            };
            if op == "Gt" {
                actual > bound
            } else {
                actual < bound
            }
        }
        _ => false,
    }
}

/// Whether one `NodeSelectorTerm` matches (expressions and fields ANDed; empty = no match).
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.node.metadata.labels.as_ref();
    let label_ok = exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)));
    let field_ok = fields
        .iter()
        .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node.name())));
    label_ok && field_ok
}

/// NodeAffinity (filter): `nodeSelector` and the required node affinity terms (ORed).
pub fn node_affinity(pod: &Pod, node: &NodeInfo) -> Result<(), Unfit> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let labels = node.node.metadata.labels.as_ref();
    for (k, v) in spec.node_selector.iter().flatten() {
        if labels.and_then(|l| l.get(k)) != Some(v) {
            return Err(Unfit::one(
                "NodeAffinity",
                REASON_NODE_AFFINITY.into(),
                true,
                format!("nodeSelector {k}={v} not matched"),
            ));
        }
    }
    if let Some(required) = required_node_affinity(spec)
        && !required
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
    {
        return Err(Unfit::one(
            "NodeAffinity",
            REASON_NODE_AFFINITY.into(),
            true,
            "no required node affinity term matched".into(),
        ));
    }
    Ok(())
}

/// NodePorts: every requested host port must be free.
pub fn node_ports(usage: &PodUsage, node: &NodeInfo) -> Result<(), Unfit> {
    for want in &usage.ports {
        if node.port_conflicts(want) {
            return Err(Unfit::one(
                "NodePorts",
                REASON_NODE_PORTS.into(),
                false,
                format!("host port {}/{} on {} is in use", want.2, want.1, want.0),
            ));
        }
    }
    Ok(())
}

/// NodeResourcesFit (filter): pod slots, then cpu, memory, ephemeral-storage and extended
/// resources; every shortage is reported. Unresolvable when the request exceeds the node's
/// whole allocatable.
pub fn node_resources_fit(usage: &PodUsage, node: &NodeInfo) -> Result<(), Unfit> {
    let req = &usage.requests;
    let alloc = &node.allocatable;
    let used = &node.requested;
    let mut unfit = Unfit {
        plugin: "NodeResourcesFit",
        reasons: Vec::new(),
        unresolvable: false,
        details: Vec::new(),
    };
    let pods_now = i64::try_from(node.pods.len()).unwrap_or(i64::MAX);
    if pods_now + 1 > alloc.allowed_pods {
        unfit.reasons.push(REASON_TOO_MANY_PODS.into());
        unfit.details.push(format!(
            "Too many pods: allocatable {}, in use {pods_now}",
            alloc.allowed_pods
        ));
    }
    let mut check = |name: &str, want: i64, have: i64, in_use: i64, fmt: &dyn Fn(i64) -> String| {
        if want > 0 && want > have - in_use {
            unfit.reasons.push(format!("Insufficient {name}"));
            unfit.details.push(format!(
                "Insufficient {name}: requests {}, allocatable {}, in use {}",
                fmt(want),
                fmt(have),
                fmt(in_use)
            ));
            if want > have {
                unfit.unresolvable = true;
            }
        }
    };
    check(
        "cpu",
        req.milli_cpu,
        alloc.milli_cpu,
        used.milli_cpu,
        &format_milli_cpu,
    );
    check(
        "memory",
        req.memory,
        alloc.memory,
        used.memory,
        &format_bytes,
    );
    check(
        "ephemeral-storage",
        req.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
        &format_bytes,
    );
    for (name, want) in &req.scalar {
        let have = alloc.scalar.get(name).copied().unwrap_or(0);
        let in_use = used.scalar.get(name).copied().unwrap_or(0);
        check(name, *want, have, in_use, &|v: i64| v.to_string());
    }
    if unfit.reasons.is_empty() {
        Ok(())
    } else {
        Err(unfit)
    }
}

#[cfg(test)]
#[path = "filters_tests.rs"]
mod tests;
