//! Why a pod is pending, in kube-scheduler's words: `FitError.Error()` — `0/N nodes are
//! available: ` + the reason histogram (`"<count> <reason>"`, sorted as strings, joined by
//! `", "`) + `.` — followed by DefaultPreemption's PostFilter message (`preemption: ...`,
//! built in `preemption`), which is empty when preemption nominated the pod somewhere.

use std::collections::BTreeMap;

use crate::filters::Unfit;

/// `ErrNoNodesAvailable`'s text, used when the cluster has no nodes.
pub const NO_NODES: &str = "no nodes available to schedule pods";
/// Upstream's PostFilter reason for resolvable nodes without victims.
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// Upstream's PostFilter reason for unresolvable nodes.
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

fn histogram<'a>(reasons: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_insert(0) += 1;
    }
    let mut lines: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    lines.sort();
    lines.join(", ")
}

/// `0/N nodes are available: <histogram>.` over every node's reasons.
pub fn nodes_unavailable<'a>(total: usize, reasons: impl Iterator<Item = &'a str>) -> String {
    let mut msg = format!("0/{total} nodes are available:");
    let reasons = histogram(reasons);
    if !reasons.is_empty() {
        msg.push_str(&format!(" {reasons}."));
    }
    msg
}

/// The FailedScheduling message for a pod refused by every node (`unfit`, one per node;
/// `total` nodes in the cluster), with the PostFilter's message (`post_filter`, if any).
pub fn fit_error_message(total: usize, unfit: &[Unfit], post_filter: Option<&str>) -> String {
    if total == 0 {
        return NO_NODES.into();
    }
    let mut msg = nodes_unavailable(
        total,
        unfit
            .iter()
            .flat_map(|u| u.reasons.iter().map(String::as_str)),
    );
    if let Some(post) = post_filter.filter(|p| !p.is_empty()) {
        msg.push(' ');
        msg.push_str(post);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unfit(reason: &str, unresolvable: bool) -> Unfit {
        Unfit {
            plugin: "x",
            reasons: vec![reason.into()],
            unresolvable,
            details: vec![],
        }
    }

    #[test]
    fn matches_upstream_wording() {
        let post = format!(
            "preemption: {}",
            nodes_unavailable(3, [NO_VICTIMS, NOT_HELPFUL, NOT_HELPFUL].into_iter())
        );
        let msg = fit_error_message(
            3,
            &[
                unfit("Insufficient cpu", false),
                unfit("node(s) had untolerated taint {dedicated: gpu}", true),
                unfit("node(s) had untolerated taint {dedicated: gpu}", true),
            ],
            Some(&post),
        );
        assert_eq!(
            msg,
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint \
             {dedicated: gpu}. preemption: 0/3 nodes are available: 1 No preemption victims \
             found for incoming pod, 2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn counts_every_reason_of_a_node_and_sorts_as_strings() {
        let mut two = unfit("Insufficient cpu", false);
        two.reasons.push("Insufficient memory".into());
        let msg = fit_error_message(2, &[two, unfit("Insufficient memory", false)], None);
        assert_eq!(
            msg, "0/2 nodes are available: 1 Insufficient cpu, 2 Insufficient memory.",
            "preemption nominated the pod: no PostFilter message"
        );
    }

    #[test]
    fn no_nodes() {
        assert_eq!(fit_error_message(0, &[], Some("x")), NO_NODES);
    }
}
