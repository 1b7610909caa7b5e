//! Routes to the other nodes' pod subnets (flannel's host-gw backend, which k3s offers): for
//! every other Node with a `spec.podCIDR` and an InternalIP, `<podCIDR> via <InternalIP>` in
//! the node's main table, so a pod reaches pods on other nodes through their node. The nodes
//! must share a link (as host-gw requires). The routes carry their own protocol number
//! ([`ROUTE_PROTOCOL`]), so the agent finds and removes exactly the routes it added and
//! never touches anyone else's.
//!
//! [`desired`] and [`plan`] are pure; [`current`] and [`apply`] run `ip route`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use k8s_openapi::api::core::v1::Node;

/// The `proto` of the routes this agent adds (unused by the kernel and routing daemons).
pub const ROUTE_PROTOCOL: &str = "99";

/// One route to a node's pod subnet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    /// `10.42.1.0/24`.
    pub cidr: String,
    pub via: Ipv4Addr,
}

/// The routes this node wants: one per other Node with a pod CIDR and an InternalIP.
pub fn desired(nodes: &[&Node], me: &str) -> BTreeSet<NodeRoute> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            let cidr = n.spec.as_ref()?.pod_cidr.clone()?;
            let via = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some(NodeRoute { cidr, via })
        })
        .collect()
}

/// What to add (or re-point) and what to remove to get from `current` to `desired`.
pub fn plan(
    desired: &BTreeSet<NodeRoute>,
    current: &BTreeSet<NodeRoute>,
) -> (Vec<NodeRoute>, Vec<NodeRoute>) {
    let add = desired.difference(current).cloned().collect();
    let wanted: BTreeSet<&String> = desired.iter().map(|r| &r.cidr).collect();
    let remove = current
        .iter()
        .filter(|r| !wanted.contains(&r.cidr))
        .cloned()
        .collect();
    (add, remove)
}

/// Parses `ip -4 route show proto 99` lines (`10.42.1.0/24 via 10.0.0.2 dev eth0`).
pub fn parse(text: &str) -> BTreeSet<NodeRoute> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let cidr = words.next()?.to_string();
            let mut rest = words.skip_while(|w| *w != "via");
            rest.next()?;
            let via = rest.next()?.parse().ok()?;
            Some(NodeRoute { cidr, via })
        })
        .collect()
}

/// The routes this agent added earlier.
pub fn current() -> Result<BTreeSet<NodeRoute>, String> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "proto", ROUTE_PROTOCOL])
        .output()
        .map_err(|e| format!("ip route show: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip route show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Adds (or re-points) and removes routes; every failure is reported, none stops the rest.
pub fn apply(add: &[NodeRoute], remove: &[NodeRoute]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut run = |args: Vec<String>| match Command::new("ip").args(&args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => errors.push(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => errors.push(format!("ip {}: {e}", args.join(" "))),
    };
    for r in remove {
        run(vec![
            "route".into(),
            "del".into(),
            r.cidr.clone(),
            "proto".into(),
            ROUTE_PROTOCOL.into(),
        ]);
    }
    for r in add {
        run(vec![
            "route".into(),
            "replace".into(),
            r.cidr.clone(),
            "via".into(),
            r.via.to_string(),
            "proto".into(),
            ROUTE_PROTOCOL.into(),
        ]);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": ip.map_or(serde_json::json!([]), |ip| serde_json::json!([
                {"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]))}
        }))
        .unwrap()
    }

    fn route(cidr: &str, via: [u8; 4]) -> NodeRoute {
        NodeRoute {
            cidr: cidr.into(),
            via: Ipv4Addr::from(via),
        }
    }

    #[test]
    fn every_other_node_with_a_subnet_and_an_address_gets_a_route() {
        let nodes = [
            node("a", Some("10.42.0.0/24"), Some("10.0.0.1")),
            node("b", Some("10.42.1.0/24"), Some("10.0.0.2")),
            node("c", None, Some("10.0.0.3")),
            node("d", Some("10.42.3.0/24"), None),
        ];
        let refs: Vec<&Node> = nodes.iter().collect();
        assert_eq!(
            desired(&refs, "a").into_iter().collect::<Vec<_>>(),
            [route("10.42.1.0/24", [10, 0, 0, 2])]
        );
    }

    #[test]
    fn the_plan_adds_re_points_and_removes_only_its_own() {
        let desired: BTreeSet<_> = [
            route("10.42.1.0/24", [10, 0, 0, 2]),
            route("10.42.2.0/24", [10, 0, 0, 9]),
        ]
        .into();
        let current = parse(
            "10.42.2.0/24 via 10.0.0.3 dev eth0 proto 99\n10.42.5.0/24 via 10.0.0.5 dev eth0 proto 99\n",
        );
        let (add, remove) = plan(&desired, &current);
        assert_eq!(
            add,
            [
                route("10.42.1.0/24", [10, 0, 0, 2]),
                route("10.42.2.0/24", [10, 0, 0, 9])
            ]
        );
        assert_eq!(remove, [route("10.42.5.0/24", [10, 0, 0, 5])]);
        let (add, remove) = plan(&desired, &desired);
        assert!(add.is_empty() && remove.is_empty());
    }
}
