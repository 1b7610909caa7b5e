//! Network partitions as Jepsen "grudges", and the iptables rules that install them.
//!
//! A grudge maps a node slot to the slots whose packets it drops on INPUT. Rules go into each
//! node's own namespace (`ip netns exec <ns> iptables -w -A INPUT -s <peer> -j DROP`); the client
//! address is never in a grudge, so clients keep reaching every member. Healing flushes INPUT in
//! every node namespace. DROP (not REJECT) makes cut connections hang, so operations through them
//! time out as indeterminate, as on a real network.
//!
//! Grudges (after `jepsen.nemesis`): [`isolate`] (one node, both ways), [`split`] (complete
//! grudge between two components: majority/minority), [`bridge`] (two halves joined by one node
//! that sees both), [`majorities_ring`] (every node sees a majority, no two the same one; at 3
//! nodes a one-way ring), [`one_way`] (a node stops hearing the others but can still send).

use std::collections::{BTreeMap, BTreeSet};

use crate::net::Topology;

/// Node slot → slots it drops INPUT from.
pub type Grudge = BTreeMap<usize, BTreeSet<usize>>;

/// `x` and the others cannot talk in either direction.
pub fn isolate(nodes: &[usize], x: usize) -> Grudge {
    let others: Vec<usize> = nodes.iter().copied().filter(|&n| n != x).collect();
    split(&[x], &others)
}

/// Complete grudge between components `a` and `b`.
pub fn split(a: &[usize], b: &[usize]) -> Grudge {
    let mut g = Grudge::new();
    for &x in a {
        g.entry(x).or_default().extend(b.iter().copied());
    }
    for &y in b {
        g.entry(y).or_default().extend(a.iter().copied());
    }
    g
}

/// Cuts `nodes` (already shuffled) into halves, the first `n/2` and the rest, and keeps the first
/// node of the second half connected to everyone (Jepsen's `bridge`).
pub fn bridge(nodes: &[usize]) -> Grudge {
    let half = nodes.len() / 2;
    let (a, b) = nodes.split_at(half);
    let Some(&bridge) = b.first() else {
        return Grudge::new();
    };
    let mut g = split(a, b);
    g.remove(&bridge);
    for drops in g.values_mut() {
        drops.remove(&bridge);
    }
    g.retain(|_, d| !d.is_empty());
    g
}

/// Jepsen's `majorities-ring-perfect` over `nodes` (already shuffled): consecutive windows of a
/// majority around the ring; the middle node of each window drops everyone outside it.
pub fn majorities_ring(nodes: &[usize]) -> Grudge {
    let n = nodes.len();
    let m = n / 2 + 1;
    let all: BTreeSet<usize> = nodes.iter().copied().collect();
    let mut g = Grudge::new();
    for start in 0..n {
        let window: Vec<usize> = (0..m).map(|k| nodes[(start + k) % n]).collect();
        let middle = window[window.len() / 2];
        let outside: BTreeSet<usize> = all
            .difference(&window.iter().copied().collect())
            .copied()
            .collect();
        if !outside.is_empty() {
            g.entry(middle).or_default().extend(outside);
        }
    }
    g
}

/// `x` drops everything from the others; they still hear `x`.
pub fn one_way(nodes: &[usize], x: usize) -> Grudge {
    let mut g = Grudge::new();
    let others: BTreeSet<usize> = nodes.iter().copied().filter(|&n| n != x).collect();
    if !others.is_empty() {
        g.insert(x, others);
    }
    g
}

/// The iptables arguments installing `grudge`: `(slot, args)` per rule, in slot order.
pub fn rules(grudge: &Grudge) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for (&node, drops) in grudge {
        for &src in drops {
            out.push((
                node,
                vec![
                    "-w".into(),
                    "-A".into(),
                    "INPUT".into(),
                    "-s".into(),
                    format!("{}/32", Topology::node_ip(src)),
                    "-j".into(),
                    "DROP".into(),
                ],
            ));
        }
    }
    out
}

/// The iptables arguments dropping a fraction `p` of the packets a node receives on `eth0`.
pub fn loss_rule(p: f64) -> Vec<String> {
    vec![
        "-w".into(),
        "-A".into(),
        "INPUT".into(),
        "-i".into(),
        "eth0".into(),
        "-m".into(),
        "statistic".into(),
        "--mode".into(),
        "random".into(),
        "--probability".into(),
        format!("{p:.3}"),
        "-j".into(),
        "DROP".into(),
    ]
}

/// The iptables arguments that heal a node (flush its INPUT chain).
pub fn heal_rule() -> Vec<String> {
    vec!["-w".into(), "-F".into(), "INPUT".into()]
}

/// Whether `a` and `b` can exchange packets in both directions under `g`.
pub fn connected(g: &Grudge, a: usize, b: usize) -> bool {
    let drops = |x: usize, y: usize| g.get(&x).is_some_and(|d| d.contains(&y));
    !drops(a, b) && !drops(b, a)
}

/// A grudge as JSON-friendly text: `{"1": [2, 3], ...}`.
pub fn describe(g: &Grudge) -> BTreeMap<String, Vec<usize>> {
    g.iter()
        .map(|(k, v)| (format!("n{k}"), v.iter().copied().collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[usize]) -> BTreeSet<usize> {
        v.iter().copied().collect()
    }

    #[test]
    fn isolate_is_symmetric() {
        let g = isolate(&[1, 2, 3], 3);
        assert_eq!(g[&3], set(&[1, 2]));
        assert_eq!(g[&1], set(&[3]));
        assert_eq!(g[&2], set(&[3]));
        assert!(connected(&g, 1, 2));
        assert!(!connected(&g, 1, 3));
    }

    #[test]
    fn split_majority_minority() {
        let g = split(&[1, 2, 3], &[4, 5]);
        assert!(connected(&g, 1, 3) && connected(&g, 4, 5));
        assert!(!connected(&g, 3, 4));
        assert_eq!(rules(&g).len(), 12);
    }

    #[test]
    fn bridge_keeps_the_middle_node() {
        let g = bridge(&[1, 2, 3]);
        assert!(connected(&g, 1, 2) && connected(&g, 2, 3));
        assert!(!connected(&g, 1, 3));
        assert!(!g.contains_key(&2));
        let g = bridge(&[5, 1, 4, 2, 3]);
        // halves [5,1] and [4,2,3]; bridge 4.
        for x in [5, 1, 2, 3] {
            assert!(connected(&g, 4, x));
        }
        assert!(!connected(&g, 5, 2) && !connected(&g, 1, 3));
        assert!(connected(&g, 5, 1) && connected(&g, 2, 3));
    }

    #[test]
    fn majorities_ring_gives_every_node_a_different_majority() {
        let nodes = [1, 2, 3, 4, 5];
        let g = majorities_ring(&nodes);
        let mut views = BTreeSet::new();
        for &n in &nodes {
            // Each node hears itself and two neighbours: a majority of 3.
            let hears: BTreeSet<usize> = nodes
                .iter()
                .copied()
                .filter(|&m| !g.get(&n).is_some_and(|d| d.contains(&m)))
                .collect();
            assert_eq!(hears.len(), 3, "node {n} hears {hears:?}");
            views.insert(hears.into_iter().collect::<Vec<_>>());
        }
        assert_eq!(views.len(), 5);
        // At three nodes: a one-way ring, each node drops exactly one other.
        let g = majorities_ring(&[1, 2, 3]);
        assert_eq!(g.len(), 3);
        assert!(g.values().all(|d| d.len() == 1));
    }

    #[test]
    fn one_way_only_blocks_inbound() {
        let g = one_way(&[1, 2, 3], 1);
        assert_eq!(g.len(), 1);
        assert_eq!(g[&1], set(&[2, 3]));
    }

    #[test]
    fn rules_name_sources_by_address() {
        let r = rules(&isolate(&[1, 2], 2));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, 1);
        assert_eq!(
            r[0].1.join(" "),
            "-w -A INPUT -s 10.77.0.2/32 -j DROP".to_owned()
        );
        assert!(loss_rule(0.25).join(" ").contains("--probability 0.250"));
        assert_eq!(heal_rule().join(" "), "-w -F INPUT");
    }
}
