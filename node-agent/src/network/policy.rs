//! NetworkPolicy (networking.k8s.io/v1) on the node, as k3s's embedded policy controller
//! enforces it: for every pod on this node that a policy isolates, a chain in the filter
//! table that lets through what the policies allow and rejects the rest. [`render`] is pure
//! (policies, pods, namespaces → one `iptables-restore` batch); [`apply`] and [`cleanup`] run
//! it.
//!
//! Layout: `FORWARD` jumps to `SKIFF-NETPOL` (first rule: established and related traffic
//! passes), which sends traffic to an isolated pod through its ingress chain
//! (`SKIFF-NP-I-<hash>`) and traffic from one through its egress chain (`SKIFF-NP-E-<hash>`).
//! A chain RETURNs what a rule allows — so both ends' chains are checked — and ends in a
//! REJECT. Semantics as upstream: a pod is isolated for a direction once any policy of that
//! type selects it; what it may do is the union of those policies' rules; a rule's peers
//! (podSelector, namespaceSelector, both, ipBlock with except) and ports (number, name,
//! endPort) must both match; no peers = any peer, no ports = any port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The chain `FORWARD` jumps to.
pub const CHAIN: &str = "SKIFF-NETPOL";
const POD_CHAIN_PREFIXES: [&str; 2] = ["SKIFF-NP-I-", "SKIFF-NP-E-"];
/// The prefix of an ipBlock-with-except chain.
const BLOCK_CHAIN_PREFIX: &str = "SKIFF-NP-B-";
/// The mark an allowing rule sets (cleared before the packet leaves the chain).
const ALLOW_MARK: &str = "0x10000/0x10000";
const JUMP: [&str; 4] = ["-m", "comment", "--comment", "skiff network policies"];

/// Whether `selector` matches `labels` (matchLabels and matchExpressions; an empty selector
/// matches everything).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &selector.match_labels
        && ml.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    })
}

fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn pod_ip(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status.pod_ip.clone().filter(|ip| !ip.is_empty())
}

/// A source or destination a rule allows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Any,
    Ip(String),
    Block { cidr: String, except: Vec<String> },
}

/// A port a rule allows: protocol in lower case, a port range, or any port of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    protocol: String,
    range: Option<(i32, i32)>,
}

/// The peers of a rule, for a policy in `policy_ns`.
fn peers(
    list: Option<&Vec<NetworkPolicyPeer>>,
    policy_ns: &str,
    pods: &[&Pod],
    namespaces: &[&Namespace],
) -> Vec<Peer> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return vec![Peer::Any];
    };
    let mut out = BTreeSet::new();
    for peer in list {
        if let Some(block) = &peer.ip_block {
            out.insert(Peer::Block {
                cidr: block.cidr.clone(),
                except: block.except.clone().unwrap_or_default(),
            });
            continue;
        }
        let in_namespaces: Option<BTreeSet<String>> = peer.namespace_selector.as_ref().map(|sel| {
            namespaces
                .iter()
                .filter(|ns| selects(sel, &labels_of(&ns.metadata)))
                .filter_map(|ns| ns.metadata.name.clone())
                .collect()
        });
        for pod in pods {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("");
            let ns_ok = match &in_namespaces {
                Some(set) => set.contains(ns),
                None => ns == policy_ns,
            };
            let pod_ok = peer
                .pod_selector
                .as_ref()
                .is_none_or(|sel| selects(sel, &labels_of(&pod.metadata)));
            if ns_ok
                && pod_ok
                && let Some(ip) = pod_ip(pod)
            {
                out.insert(Peer::Ip(ip));
            }
        }
    }
    out.into_iter().collect()
}

/// The ports of a rule, named ports resolved against `target` (the pod the port is on).
fn ports(list: Option<&Vec<NetworkPolicyPort>>, target: Option<&Pod>) -> Vec<Port> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return vec![Port {
            protocol: String::new(),
            range: None,
        }];
    };
    let mut out = Vec::new();
    for p in list {
        let protocol = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        let range = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => Some((*n, p.end_port.unwrap_or(*n))),
            Some(IntOrString::String(name)) => {
                let found = target.and_then(|pod| {
                    pod.spec.as_ref()?.containers.iter().find_map(|c| {
                        c.ports.iter().flatten().find_map(|cp| {
                            (cp.name.as_deref() == Some(name.as_str())
                                && cp.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase()
                                    == protocol)
                                .then_some(cp.container_port)
                        })
                    })
                });
                match found {
                    Some(n) => Some((n, n)),
                    // A name the pod does not have allows nothing.
                    None => continue,
                }
            }
        };
        out.push(Port { protocol, range });
    }
    out
}

fn chain_for(prefix: &str, pod_key: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(pod_key.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02X}")).collect();
    format!("{prefix}{hex}")
}

/// The rule lines that let `peer` through on `port` from `chain` (`side`: `-s` for ingress
/// sources, `-d` for egress destinations): they set [`ALLOW_MARK`]. An ipBlock with excepts
/// goes through a chain of its own (`subchains`) that returns early for the excepted ranges.
fn allow(
    out: &mut Vec<String>,
    subchains: &mut BTreeMap<String, Vec<String>>,
    chain: &str,
    side: &str,
    peer: &Peer,
    port: &Port,
) {
    let port_match = match (&port.protocol, port.range) {
        (p, _) if p.is_empty() => String::new(),
        (p, None) => format!(" -p {p}"),
        (p, Some((a, b))) if a == b => format!(" -p {p} -m {p} --dport {a}"),
        (p, Some((a, b))) => format!(" -p {p} -m {p} --dport {a}:{b}"),
    };
    let mark = format!("-j MARK --set-xmark {ALLOW_MARK}");
    match peer {
        Peer::Any => out.push(format!("-A {chain}{port_match} {mark}")),
        Peer::Ip(ip) => out.push(format!("-A {chain} {side} {ip}/32{port_match} {mark}")),
        Peer::Block { cidr, except } if except.is_empty() => {
            out.push(format!("-A {chain} {side} {cidr}{port_match} {mark}"))
        }
        Peer::Block { cidr, except } => {
            let sub = chain_for(
                BLOCK_CHAIN_PREFIX,
                &format!("{chain}/{}/{cidr}", subchains.len()),
            );
            let mut lines: Vec<String> = except
                .iter()
                .map(|e| format!("-A {sub} {side} {e} -j RETURN"))
                .collect();
            lines.push(format!("-A {sub} {mark}"));
            subchains.insert(sub.clone(), lines);
            out.push(format!("-A {chain} {side} {cidr}{port_match} -j {sub}"));
        }
    }
}

/// The batch for this node: `pods` are all pods of the cluster, `local` says which are on
/// this node. `previous` are the per-pod chains the last batch wrote (deleted if unused).
/// Returns the text and the per-pod chains it wrote; an empty text means nothing needs to be
/// enforced (no policy isolates a pod here).
pub fn render(
    policies: &[&NetworkPolicy],
    pods: &[&Pod],
    namespaces: &[&Namespace],
    local: &dyn Fn(&Pod) -> bool,
    previous: &BTreeSet<String>,
) -> (String, BTreeSet<String>) {
    let mut dispatch = Vec::new();
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut subchains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| local(p)) {
        let Some(ip) = pod_ip(pod) else {
            continue;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let key = format!("{ns}/{}", pod.metadata.name.clone().unwrap_or_default());
        let labels = labels_of(&pod.metadata);
        for (ingress, prefix, side, match_pod) in [
            (true, POD_CHAIN_PREFIXES[0], "-s", "-d"),
            (false, POD_CHAIN_PREFIXES[1], "-d", "-s"),
        ] {
            let selecting: Vec<&&NetworkPolicy> = policies
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.pod_selector
                            .as_ref()
                            .is_none_or(|sel| selects(sel, &labels))
                    })
                })
                .filter(|p| {
                    let spec = p.spec.as_ref().expect("filtered");
                    match &spec.policy_types {
                        Some(types) => types
                            .iter()
                            .any(|t| t == if ingress { "Ingress" } else { "Egress" }),
                        None => ingress || spec.egress.is_some(),
                    }
                })
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let chain = chain_for(prefix, &key);
            let mut lines = Vec::new();
            for policy in selecting {
                let spec = policy.spec.as_ref().expect("filtered");
                let policy_ns = policy.metadata.namespace.as_deref().unwrap_or("");
                if ingress {
                    for rule in spec.ingress.iter().flatten() {
                        let peers = peers(rule.from.as_ref(), policy_ns, pods, namespaces);
                        for port in ports(rule.ports.as_ref(), Some(pod)) {
                            for peer in &peers {
                                allow(&mut lines, &mut subchains, &chain, side, peer, &port);
                            }
                        }
                    }
                } else {
                    for rule in spec.egress.iter().flatten() {
                        let peers = peers(rule.to.as_ref(), policy_ns, pods, namespaces);
                        // Named egress ports resolve on the destination; without one, only
                        // numbered ports count.
                        for port in ports(rule.ports.as_ref(), None) {
                            for peer in &peers {
                                allow(&mut lines, &mut subchains, &chain, side, peer, &port);
                            }
                        }
                    }
                }
            }
            // Not allowed: rejected. Allowed: the mark is cleared and the packet returns, to
            // meet the other end's chain.
            lines.push(format!(
                "-A {chain} -m comment --comment \"{key} {}\" -m mark ! --mark {ALLOW_MARK} -j REJECT --reject-with icmp-port-unreachable",
                if ingress { "ingress" } else { "egress" }
            ));
            lines.push(format!("-A {chain} -j MARK --set-xmark 0x0/0x10000"));
            dispatch.push(format!("-A {CHAIN} {match_pod} {ip}/32 -j {chain}"));
            chains.insert(chain, lines);
        }
    }
    chains.extend(subchains);
    let written: BTreeSet<String> = chains.keys().cloned().collect();
    if written.is_empty() && previous.is_empty() {
        return (String::new(), written);
    }
    let stale: Vec<&String> = previous.difference(&written).collect();
    let mut text = format!("*filter\n:{CHAIN} - [0:0]\n");
    for chain in chains.keys().chain(stale.iter().copied()) {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    let _ = writeln!(
        text,
        "-A {CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    for line in &dispatch {
        text.push_str(line);
        text.push('\n');
    }
    for lines in chains.values() {
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
    }
    for chain in stale {
        let _ = writeln!(text, "-X {chain}");
    }
    text.push_str("COMMIT\n");
    (text, written)
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", args[0]))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Applies a batch and makes sure `FORWARD` jumps to [`CHAIN`] first.
pub fn apply(text: &str) -> Result<(), String> {
    run(&["iptables-restore", "-w", "--noflush"], Some(text))?;
    let mut check = vec!["iptables", "-w", "-C", "FORWARD"];
    check.extend(JUMP);
    check.extend(["-j", CHAIN]);
    if run(&check, None).is_err() {
        let mut insert = vec!["iptables", "-w", "-I", "FORWARD", "1"];
        insert.extend(JUMP);
        insert.extend(["-j", CHAIN]);
        run(&insert, None)?;
    }
    Ok(())
}

/// Removes the jump and every chain (nothing isolates a pod here any more).
pub fn cleanup(chains: &BTreeSet<String>) -> Result<(), String> {
    let mut delete = vec!["iptables", "-w", "-D", "FORWARD"];
    delete.extend(JUMP);
    delete.extend(["-j", CHAIN]);
    while run(&delete, None).is_ok() {}
    let mut text = format!("*filter\n:{CHAIN} - [0:0]\n");
    for chain in chains {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    for chain in chains {
        let _ = writeln!(text, "-X {chain}");
    }
    let _ = writeln!(text, "-X {CHAIN}");
    text.push_str("COMMIT\n");
    run(&["iptables-restore", "-w", "--noflush"], Some(&text))
}

#[cfg(test)]
mod tests;
