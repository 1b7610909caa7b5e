//! `skiff why-pending`: for one pod, every node's verdict from the same filters the scheduler
//! runs, with numbers (`node-3: Insufficient memory: requests 2Gi, allocatable 4Gi, in use
//! 3.1Gi`). Reads nodes and pods through the API; pure once it has them.
//!
//! When no node fits, the last line(s) name the smallest change that would let the pod be
//! scheduled, from the same snapshot and the same filters (every failing one per node, not
//! only the first): a single change that opens some node if there is one (capacity first —
//! the node needing the least of what is missing —, then node labels, tolerations, uncordons),
//! else the node with the fewest failing filters and each change it needs.

use std::collections::BTreeMap;

use std::cmp::Reverse;

use k8s_openapi::api::core::v1::{Namespace, Node, NodeSelectorTerm, Pod, Taint};
use kube::Api;
use kube::api::ListParams;

use crate::Error;
use crate::cache::Cache;
use crate::filters::{TAINT_UNSCHEDULABLE, Unfit, term_matches};
use crate::node_info::{NodeInfo, PodUsage};
use crate::pod_filters::PodFilters;
use crate::resources::{format_bytes, format_milli_cpu};

/// One line per node, plus a first line saying where the pod stands and, when no node fits,
/// the smallest change that would make it fit.
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
    for node in &nodes {
        match filters.check(node) {
            Ok(()) => lines.push(format!("{}: fits", node.name())),
            Err(unfit) => {
                for detail in unfit.details {
                    lines.push(format!("{}: {detail}", node.name()));
                }
            }
        }
    }
    lines.extend(smallest_change(&filters, &nodes));
    lines
}

/// A kind of change; the order is the preference among single changes: capacity first (the
/// pod's placement rules stay as they are), then the rules (labels, tolerations), then cordons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Resource,
    PodSlot,
    HostPort,
    Label,
    Toleration,
    Uncordon,
    Other,
}

/// One edit of the pod or of a node.
#[derive(Debug, Clone)]
struct Change {
    kind: Kind,
    /// Within a kind, smaller is better (resources: the shortage, per mille of the request).
    cost: i64,
    /// An edit of the pod alone, the same whichever node it opens (tolerations): the nodes it
    /// opens are counted.
    pod_side: bool,
    text: String,
}

impl Change {
    fn node(kind: Kind, cost: i64, text: String) -> Change {
        Change {
            kind,
            cost,
            pod_side: false,
            text,
        }
    }
}

/// The changes one node needs: every failing filter lifted.
#[derive(Debug)]
struct NodeChanges<'a> {
    node: &'a str,
    failing: usize,
    changes: Vec<Change>,
}

/// `smallest change: ...` (one line, or a header and one line per change); nothing when some
/// node fits.
fn smallest_change(filters: &PodFilters, nodes: &[&NodeInfo]) -> Vec<String> {
    if nodes.is_empty() {
        return vec!["smallest change: add a node".into()];
    }
    let mut candidates = Vec::new();
    for node in nodes {
        let unfit = filters.check_every(node);
        if unfit.is_empty() {
            return Vec::new();
        }
        let mut changes = Vec::new();
        let lifted = unfit.iter().all(|u| match changes_for(u, filters, node) {
            Some(c) if !c.is_empty() => {
                changes.extend(c);
                true
            }
            _ => false,
        });
        if lifted {
            // A cordon fails two filters (NodeUnschedulable, its taint); one uncordon lifts both.
            let mut seen = std::collections::BTreeSet::new();
            changes.retain(|c| seen.insert(c.text.clone()));
            candidates.push(NodeChanges {
                node: node.name(),
                failing: unfit.len(),
                changes,
            });
        }
    }
    // Single changes, a pod-side one counted over every node it alone opens.
    let mut singles: BTreeMap<&str, (&Change, Vec<&str>)> = BTreeMap::new();
    for c in &candidates {
        if let [change] = c.changes.as_slice() {
            singles
                .entry(change.text.as_str())
                .or_insert((change, Vec::new()))
                .1
                .push(c.node);
        }
    }
    let best_single = singles
        .values()
        .min_by_key(|(c, opened)| (c.kind, Reverse(opened.len()), c.cost, c.text.as_str()));
    if let Some((change, opened)) = best_single {
        let suffix = match opened.as_slice() {
            _ if !change.pod_side => String::new(),
            [one] => format!(" (node {one})"),
            many => format!(" ({} nodes)", many.len()),
        };
        return vec![format!("smallest change: {}{suffix}", change.text)];
    }
    let best = candidates.iter().min_by_key(|c| {
        (
            c.failing,
            c.changes.len(),
            c.changes.iter().map(|c| c.kind).max(),
            c.changes.iter().map(|c| c.cost).sum::<i64>(),
            c.node,
        )
    });
    let Some(best) = best else {
        return vec![
            "smallest change: none (every node refuses the pod for a reason no edit lifts)".into(),
        ];
    };
    let mut changes: Vec<&Change> = best.changes.iter().collect();
    changes.sort_by_key(|c| c.kind);
    let mut lines = vec![format!(
        "smallest change: {} changes on node {}:",
        changes.len(),
        best.node
    )];
    lines.extend(changes.iter().map(|c| format!("  {}", c.text)));
    lines
}

/// What lifts one filter's refusal of one node; `None` when no edit does (the pod names
/// another node, a node affinity term on node fields).
fn changes_for(unfit: &Unfit, filters: &PodFilters, node: &NodeInfo) -> Option<Vec<Change>> {
    let name = node.name();
    match unfit.plugin {
        "NodeUnschedulable" => Some(vec![Change::node(
            Kind::Uncordon,
            0,
            format!("kubectl uncordon {name}"),
        )]),
        "NodeName" => None,
        "TaintToleration" => Some(toleration_changes(filters.pod(), node)),
        "NodeAffinity" => label_changes(filters.pod(), node),
        "NodePorts" => Some(port_changes(filters.usage(), node)),
        "NodeResourcesFit" => Some(resource_changes(filters.usage(), node)),
        plugin => Some(
            unfit
                .details
                .iter()
                .map(|d| {
                    Change::node(
                        Kind::Other,
                        0,
                        format!("satisfy {plugin} on node {name} ({d})"),
                    )
                })
                .collect(),
        ),
    }
}

/// `dedicated=gpu:NoSchedule`, as `kubectl taint` writes it.
fn taint_text(taint: &Taint) -> String {
    match taint.value.as_deref().filter(|v| !v.is_empty()) {
        Some(value) => format!("{}={value}:{}", taint.key, taint.effect),
        None => format!("{}:{}", taint.key, taint.effect),
    }
}

/// A toleration per NoSchedule/NoExecute taint of the node the pod does not tolerate.
fn toleration_changes(pod: &Pod, node: &NodeInfo) -> Vec<Change> {
    crate::filters::untolerated_hard_taints(pod, node)
        .map(|t| {
            if t.key == TAINT_UNSCHEDULABLE {
                // The cordon's taint: uncordoning removes it.
                return Change::node(
                    Kind::Uncordon,
                    0,
                    format!("kubectl uncordon {}", node.name()),
                );
            }
            Change {
                kind: Kind::Toleration,
                cost: 0,
                pod_side: true,
                text: format!("add a toleration for {}", taint_text(t)),
            }
        })
        .collect()
}

/// Label edits for the node: every unmatched `nodeSelector` entry, plus the required node
/// affinity term needing the fewest edits (`value` `None`: remove the label).
fn label_changes(pod: &Pod, node: &NodeInfo) -> Option<Vec<Change>> {
    let spec = pod.spec.as_ref()?;
    let labels = node.node.metadata.labels.clone().unwrap_or_default();
    let mut want: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (k, v) in spec.node_selector.iter().flatten() {
        if labels.get(k) != Some(v) {
            want.insert(k.clone(), Some(v.clone()));
        }
    }
    if let Some(required) = crate::filters::required_node_affinity(spec)
        && !required
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
    {
        let term = required
            .node_selector_terms
            .iter()
            .filter_map(|t| term_label_edits(t, node))
            .min_by_key(Vec::len)?;
        for (k, v) in term {
            want.entry(k).or_insert(v);
        }
    }
    let name = node.name();
    Some(
        want.into_iter()
            .map(|(k, v)| {
                let text = match v {
                    None => format!("kubectl label node {name} {k}-"),
                    Some(v) if labels.contains_key(&k) => {
                        format!("kubectl label node {name} {k}={v} --overwrite")
                    }
                    Some(v) => format!("kubectl label node {name} {k}={v}"),
                };
                Change::node(Kind::Label, 0, text)
            })
            .collect(),
    )
}

/// The label edits that make one node selector term match; `None` when labels cannot (an
/// empty term, an unmatched field, a malformed requirement).
fn term_label_edits(
    term: &NodeSelectorTerm,
    node: &NodeInfo,
) -> Option<Vec<(String, Option<String>)>> {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return None;
    }
    if !fields.is_empty() {
        let only_fields = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(fields.to_vec()),
        };
        if !term_matches(&only_fields, node) {
            return None;
        }
    }
    let mut edits = Vec::new();
    for req in exprs {
        let one = NodeSelectorTerm {
            match_expressions: Some(vec![req.clone()]),
            match_fields: None,
        };
        if term_matches(&one, node) {
            continue;
        }
        let values = req.values.as_deref().unwrap_or(&[]);
        let bound = || values.first().and_then(|v| v.parse::<i64>().ok());
        let value = match req.operator.as_str() {
            "In" => Some(values.first()?.clone()),
            "NotIn" | "DoesNotExist" => None,
            "Exists" => Some("VALUE".into()),
            "Gt" => Some(bound()?.checked_add(1)?.to_string()),
            "Lt" => Some(bound()?.checked_sub(1)?.to_string()),
            _ => return None,
        };
        edits.push((req.key.clone(), value));
    }
    Some(edits)
}

/// Every requested host port in use on the node.
fn port_changes(usage: &PodUsage, node: &NodeInfo) -> Vec<Change> {
    usage
        .ports
        .iter()
        .filter(|want| node.port_conflicts(want))
        .map(|(_, proto, port)| {
            Change::node(
                Kind::HostPort,
                0,
                format!("free host port {port}/{proto} on node {}", node.name()),
            )
        })
        .collect()
}

/// Bytes rounded *up* to kubectl's tenth (what must be freed is never understated).
fn format_bytes_up(bytes: i64) -> String {
    for (suffix, size) in crate::resources::BINARY_SUFFIXES {
        let size = i128::from(size);
        if i128::from(bytes) >= size {
            let tenths = (i128::from(bytes) * 10 + size - 1) / size;
            return match tenths % 10 {
                0 => format!("{}{suffix}", tenths / 10),
                t => format!("{}.{t}{suffix}", tenths / 10),
            };
        }
    }
    bytes.to_string()
}

/// One amount of a resource; `up`: rounded up (to free), else down (to request).
type Show = fn(i64, bool) -> String;

fn show_cpu(milli: i64, _up: bool) -> String {
    format_milli_cpu(milli)
}

fn show_bytes(bytes: i64, up: bool) -> String {
    if up {
        format_bytes_up(bytes)
    } else {
        format_bytes(bytes)
    }
}

fn show_units(units: i64, _up: bool) -> String {
    units.to_string()
}

/// NodeResourcesFit's shortages on the node: a pod slot, then each resource short — free it
/// on the node, or lower the pod's request to what is free there.
fn resource_changes(usage: &PodUsage, node: &NodeInfo) -> Vec<Change> {
    let name = node.name();
    let (req, alloc, used) = (&usage.requests, &node.allocatable, &node.requested);
    let mut out = Vec::new();
    let pods_now = i64::try_from(node.pods.len()).unwrap_or(i64::MAX);
    let extra_pods = pods_now.saturating_add(1) - alloc.allowed_pods;
    if extra_pods > 0 {
        out.push(Change::node(
            Kind::PodSlot,
            extra_pods,
            format!(
                "free {extra_pods} pod slot(s) on node {name} (allocatable pods {})",
                alloc.allowed_pods
            ),
        ));
    }
    let mut wanted: Vec<(&str, i64, i64, i64, Show)> = vec![
        (
            "cpu",
            req.milli_cpu,
            alloc.milli_cpu,
            used.milli_cpu,
            show_cpu,
        ),
        ("memory", req.memory, alloc.memory, used.memory, show_bytes),
        (
            "ephemeral-storage",
            req.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
            show_bytes,
        ),
    ];
    for (res, want) in &req.scalar {
        let have = alloc.scalar.get(res).copied().unwrap_or(0);
        let in_use = used.scalar.get(res).copied().unwrap_or(0);
        wanted.push((res.as_str(), *want, have, in_use, show_units));
    }
    for (res, want, have, in_use, show) in wanted {
        let free = have - in_use;
        if want <= 0 || want <= free {
            continue;
        }
        let short = want - free;
        let cost = short.saturating_mul(1000) / want;
        let text = if want <= have && free > 0 {
            format!(
                "free {} {res} on node {name} (or lower the pod's {res} request to {})",
                show(short, true),
                show(free, false)
            )
        } else if want <= have {
            format!("free {} {res} on node {name}", show(short, true))
        } else if free > 0 {
            format!(
                "lower the pod's {res} request to {} (node {name} has {} allocatable)",
                show(free, false),
                show(have, false)
            )
        } else if have > 0 {
            format!(
                "lower the pod's {res} request to {} and free {} {res} on node {name}",
                show(have, false),
                show(in_use, true)
            )
        } else {
            format!("drop the pod's {res} request (node {name} has none)")
        };
        out.push(Change::node(Kind::Resource, cost, text));
    }
    out
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

    /// `pending` asks for `cpu`; each `(node, allocatable cpu, cpu in use)` gets one busy pod.
    fn explain_cpu(pending: Pod, nodes: Vec<Node>, in_use: &[(&str, &str)]) -> Vec<String> {
        let busy: Vec<Pod> = in_use
            .iter()
            .map(|(n, cpu)| {
                let mut p = pod_on(&format!("busy-{n}"), cpu, "", n);
                p.metadata.uid = Some(format!("busy-{n}"));
                p
            })
            .collect();
        explain(&pending, nodes, &busy, BTreeMap::new())
    }

    fn pending(cpu: &str) -> Pod {
        let mut p = pod_req("p", cpu, "");
        p.metadata.uid = Some("p".into());
        p
    }

    fn cordoned(mut n: Node) -> Node {
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        n
    }

    #[test]
    fn insufficient_cpu_everywhere_names_the_node_needing_least() {
        let lines = explain_cpu(
            pending("1100m"),
            vec![
                node("n-mid", "4", "8Gi", 10),
                node("n-small", "2", "8Gi", 10),
            ],
            &[("n-mid", "3800m"), ("n-small", "1500m")],
        );
        assert_eq!(
            lines,
            vec![
                "n-mid: Insufficient cpu: requests 1100m, allocatable 4, in use 3800m",
                "n-small: Insufficient cpu: requests 1100m, allocatable 2, in use 1500m",
                "smallest change: free 600m cpu on node n-small (or lower the pod's cpu request \
                 to 500m)",
            ]
        );
    }

    #[test]
    fn taint_blocked_names_the_toleration_and_the_nodes_it_opens() {
        let gpu = |n: &str| with_taint(node(n, "4", "8Gi", 10), "dedicated", "gpu", "NoSchedule");
        let lines = explain_cpu(
            pending("100m"),
            vec![
                gpu("n1"),
                gpu("n2"),
                gpu("n3"),
                with_taint(gpu("n4"), "team", "ml", "NoExecute"),
            ],
            &[],
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("smallest change: add a toleration for dedicated=gpu:NoSchedule (3 nodes)"),
            "{lines:#?}"
        );
        assert_eq!(lines[3], "n4: untolerated taint dedicated=gpu:NoSchedule");
    }

    #[test]
    fn cpu_on_one_node_and_a_taint_on_another_pick_one_single_change() {
        let lines = explain_cpu(
            pending("1100m"),
            vec![
                with_taint(
                    node("n-both", "2", "8Gi", 10),
                    "dedicated",
                    "gpu",
                    "NoSchedule",
                ),
                with_taint(
                    node("n-gpu", "4", "8Gi", 10),
                    "dedicated",
                    "gpu",
                    "NoSchedule",
                ),
                node("n-small", "2", "8Gi", 10),
            ],
            &[("n-both", "1500m"), ("n-small", "1500m")],
        );
        assert_eq!(
            lines,
            vec![
                "n-both: untolerated taint dedicated=gpu:NoSchedule",
                "n-gpu: untolerated taint dedicated=gpu:NoSchedule",
                "n-small: Insufficient cpu: requests 1100m, allocatable 2, in use 1500m",
                "smallest change: free 600m cpu on node n-small (or lower the pod's cpu request \
                 to 500m)",
            ]
        );
    }

    #[test]
    fn several_filters_on_every_node_list_the_changes_of_the_closest() {
        let tainted = |n: Node| with_taint(n, "dedicated", "gpu", "NoSchedule");
        let lines = explain_cpu(
            pending("100m"),
            vec![
                cordoned(tainted(node("n1", "4", "8Gi", 10))),
                cordoned(tainted(node("n2", "1", "8Gi", 10))),
            ],
            &[("n2", "1")],
        );
        assert_eq!(
            lines[2..],
            [
                "smallest change: 2 changes on node n1:",
                "  add a toleration for dedicated=gpu:NoSchedule",
                "  kubectl uncordon n1",
            ],
            "{lines:#?}"
        );
        // Cordoned and nothing else: one uncordon.
        let lines = explain_cpu(
            pending("100m"),
            vec![cordoned(node("n1", "4", "8Gi", 10))],
            &[],
        );
        assert_eq!(
            lines,
            [
                "n1: node is cordoned (spec.unschedulable)",
                "smallest change: kubectl uncordon n1"
            ]
        );
    }

    #[test]
    fn node_selector_labels_the_closest_node_and_a_fitting_pod_needs_nothing() {
        let mut p = pending("100m");
        if let Some(spec) = p.spec.as_mut() {
            spec.node_selector = Some(BTreeMap::from([
                ("disktype".to_string(), "ssd".to_string()),
                ("zone".to_string(), "a".to_string()),
            ]));
        }
        let lines = explain_cpu(
            p.clone(),
            vec![
                node("n1", "4", "8Gi", 10),
                with_labels(
                    node("n2", "4", "8Gi", 10),
                    &[("zone", "a"), ("disktype", "hdd")],
                ),
            ],
            &[],
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("smallest change: kubectl label node n2 disktype=ssd --overwrite"),
            "{lines:#?}"
        );
        let fits = explain_cpu(
            p,
            vec![with_labels(
                node("n1", "4", "8Gi", 10),
                &[("zone", "a"), ("disktype", "ssd")],
            )],
            &[],
        );
        assert_eq!(fits, ["n1: fits"]);
        assert_eq!(
            explain_cpu(pending("1"), vec![], &[]),
            ["no nodes", "smallest change: add a node"]
        );
    }
}
