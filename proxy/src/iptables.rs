//! kube-proxy's iptables mode as a pure function: [`render`] turns the Service ports into one
//! `iptables-restore` batch per table (nat and filter) with kube-proxy's chain layout —
//! `KUBE-SERVICES` matching each ClusterIP, a `KUBE-SVC-…` chain per Service port choosing an
//! endpoint at random (or by `-m recent` for ClientIP affinity), a `KUBE-SEP-…` chain per
//! endpoint doing the DNAT, `KUBE-NODEPORTS` → `KUBE-EXT-…` for NodePorts (→ `KUBE-SVL-…`,
//! the local endpoints, for `externalTrafficPolicy: Local`), masquerading by a mark
//! (`KUBE-MARK-MASQ` sets 0x4000, `KUBE-POSTROUTING` masquerades marked packets), and a REJECT
//! in the filter table for a Service port without endpoints.
//!
//! Chain names are a hash of what they stand for, so the same Service always gets the same
//! chains. A chain the last batch wrote and this one does not is flushed and deleted in the
//! same batch, so one sync is one atomic replacement per table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use sha2::{Digest, Sha256};

use crate::model::{Endpoint, ServicePort};

/// The mark of packets to masquerade (kube-proxy's `--iptables-masquerade-bit` 14).
pub const MASQ_MARK: &str = "0x4000";

/// The chains every batch declares (and so owns) in the nat table.
pub const NAT_BASE_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];
/// The chains every batch declares in the filter table.
pub const FILTER_BASE_CHAINS: [&str; 3] =
    ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD"];

/// The prefixes of the per-Service and per-endpoint chains.
pub const SERVICE_CHAIN_PREFIXES: [&str; 4] = ["KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-"];

/// The jumps from the built-in chains into ours: (table, chain, rule spec). They stay in
/// place between syncs; `--cleanup` removes them.
pub const JUMPS: [(&str, &str, &str); 7] = [
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
];

/// How traffic is masqueraded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Masquerade {
    /// `--masquerade-all`: every packet to a ClusterIP.
    pub all: bool,
    /// `--cluster-cidr`: packets to a ClusterIP from outside it.
    pub cluster_cidr: Option<String>,
}

/// One sync's batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `iptables-restore --noflush` input: the nat table, then the filter table.
    pub text: String,
    /// The per-Service chains the kernel holds once this batch is applied.
    pub chains: BTreeSet<String>,
    /// What those chains hold, for the next partial batch.
    pub written: Written,
    /// How many per-Service chains this batch (re)wrote.
    pub rewritten: usize,
}

/// The per-Service chains in the kernel, each with a hash of its rules (0: unknown), and
/// what each Service port rendered to, so an unchanged one is not rendered again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    chains: BTreeMap<String, u64>,
    services: BTreeMap<String, ServiceWritten>,
}

/// One Service port's part of the last batch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceWritten {
    /// A hash of the port's inputs (the `ServicePort` and the masquerade settings).
    input: u64,
    /// Its lines in the fixed chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`) and in the filter
    /// table.
    fixed: Vec<String>,
    filter: Vec<String>,
    /// Its own chains.
    chains: Vec<String>,
}

impl Written {
    /// Chains whose content is unknown (found in the kernel at start): rewritten next time.
    pub fn unknown(chains: &BTreeSet<String>) -> Written {
        Written {
            chains: chains.iter().map(|c| (c.clone(), 0)).collect(),
            services: BTreeMap::new(),
        }
    }
}

fn input_hash(p: &ServicePort, masquerade: &Masquerade) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    masquerade.hash(&mut h);
    h.finish()
}

/// The chain a `-A <chain> …` line appends to.
fn chain_of(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

fn hash_lines(lines: &[String]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lines.hash(&mut h);
    // 0 means "unknown".
    h.finish().max(1)
}

/// A chain name: `prefix` + the first 16 characters of the base32 SHA-256 of `what`
/// (kube-proxy's `servicePortChainName` scheme).
pub fn chain_name(prefix: &str, what: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(what.as_bytes());
    let mut out = String::from(prefix);
    let mut bits = 0u32;
    let mut value = 0u32;
    for byte in digest.iter() {
        value = (value << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 && out.len() < prefix.len() + 16 {
            bits -= 5;
            out.push(ALPHABET[((value >> bits) & 31) as usize] as char);
        }
    }
    out
}

fn svc_chain(p: &ServicePort) -> String {
    chain_name("KUBE-SVC-", &format!("{}{}", p.name, p.protocol))
}

fn ext_chain(p: &ServicePort) -> String {
    chain_name("KUBE-EXT-", &format!("{}{}", p.name, p.protocol))
}

fn svl_chain(p: &ServicePort) -> String {
    chain_name("KUBE-SVL-", &format!("{}{}", p.name, p.protocol))
}

fn sep_chain(p: &ServicePort, e: &Endpoint) -> String {
    chain_name(
        "KUBE-SEP-",
        &format!("{}{}{}:{}", p.name, p.protocol, e.ip, e.port),
    )
}

/// Appends the rules that spread traffic over `endpoints` from `chain`: ClientIP affinity
/// first (a client seen within the timeout goes where it went), then one rule per endpoint
/// with probability 1/(endpoints left).
fn spread(out: &mut String, chain: &str, p: &ServicePort, endpoints: &[&Endpoint]) {
    if let Some(seconds) = p.affinity_seconds {
        for e in endpoints {
            let sep = sep_chain(p, e);
            let _ = writeln!(
                out,
                "-A {chain} -m comment --comment \"{} -> {}:{}\" -m recent --name {sep} --rcheck --seconds {seconds} --reap -j {sep}",
                p.name, e.ip, e.port
            );
        }
    }
    let n = endpoints.len();
    for (i, e) in endpoints.iter().enumerate() {
        let sep = sep_chain(p, e);
        let comment = format!("-m comment --comment \"{} -> {}:{}\"", p.name, e.ip, e.port);
        if i + 1 < n {
            let probability = 1.0 / (n - i) as f64;
            let _ = writeln!(
                out,
                "-A {chain} {comment} -m statistic --mode random --probability {probability:.10} -j {sep}"
            );
        } else {
            let _ = writeln!(out, "-A {chain} {comment} -j {sep}");
        }
    }
}

/// One Service port's rules: its lines in the fixed chains and its own chains into `rules`,
/// its REJECTs into `filter_rules`, its chain names into `chains`.
fn render_port(
    p: &ServicePort,
    masquerade: &Masquerade,
    rules: &mut String,
    filter_rules: &mut String,
    chains: &mut BTreeSet<String>,
) {
    let proto = &p.protocol;
    let match_port = format!("-p {proto} -m {proto} --dport {}", p.port);
    let cluster = p.cluster_endpoints();
    if cluster.is_empty() {
        let _ = writeln!(
            filter_rules,
            "-A KUBE-SERVICES -m comment --comment \"{} has no endpoints\" -d {}/32 {match_port} -j REJECT --reject-with icmp-port-unreachable",
            p.name, p.cluster_ip
        );
    } else {
        let svc = svc_chain(p);
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -d {}/32 {match_port} -j {svc}",
            p.name, p.cluster_ip
        );
        if masquerade.all {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{} cluster IP\" -d {}/32 {match_port} -j KUBE-MARK-MASQ",
                p.name, p.cluster_ip
            );
        } else if let Some(cidr) = &masquerade.cluster_cidr {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{} cluster IP\" ! -s {cidr} -d {}/32 {match_port} -j KUBE-MARK-MASQ",
                p.name, p.cluster_ip
            );
        }
        spread(rules, &svc, p, &cluster);
        chains.insert(svc);
    }
    if let Some(node_port) = p.node_port {
        let external = p.external_endpoints();
        let node_match = format!("-p {proto} -m {proto} --dport {node_port}");
        if external.is_empty() {
            let _ = writeln!(
                filter_rules,
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{} has no endpoints\" -m addrtype --dst-type LOCAL {node_match} -j REJECT --reject-with icmp-port-unreachable",
                p.name
            );
        } else {
            let ext = ext_chain(p);
            let _ = writeln!(
                rules,
                "-A KUBE-NODEPORTS -m comment --comment \"{}\" {node_match} -j {ext}",
                p.name
            );
            if p.external_local {
                // The client's address is kept; only the local endpoints serve.
                let svl = svl_chain(p);
                let _ = writeln!(rules, "-A {ext} -j {svl}");
                spread(rules, &svl, p, &external);
                chains.insert(svl);
            } else {
                let _ = writeln!(
                    rules,
                    "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ",
                    p.name
                );
                if cluster.is_empty() {
                    spread(rules, &ext, p, &external);
                } else {
                    let _ = writeln!(rules, "-A {ext} -j {}", svc_chain(p));
                }
            }
            chains.insert(ext);
        }
    }
    // Endpoint chains: hairpin masquerade, then the DNAT.
    let mut seen = BTreeSet::new();
    for e in cluster.iter().chain(p.external_endpoints().iter()) {
        let sep = sep_chain(p, e);
        if !seen.insert(sep.clone()) {
            continue;
        }
        let comment = format!("-m comment --comment \"{}\"", p.name);
        let _ = writeln!(rules, "-A {sep} {comment} -s {}/32 -j KUBE-MARK-MASQ", e.ip);
        let recent = if p.affinity_seconds.is_some() {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        let _ = writeln!(
            rules,
            "-A {sep} {comment}{recent} -p {proto} -m {proto} -j DNAT --to-destination {}:{}",
            e.ip, e.port
        );
        chains.insert(sep);
    }
}

/// The full batch for `ports`: every chain written, the chains of `previous` it no longer
/// writes deleted.
pub fn render(
    ports: &[ServicePort],
    masquerade: &Masquerade,
    previous: &BTreeSet<String>,
) -> Batch {
    render_since(ports, masquerade, &Written::unknown(previous), true)
}

/// The batch that takes the kernel from `previous` to `ports` (kube-proxy's partial sync):
/// the fixed chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`, …) always, the per-Service chains
/// that are new or whose rules changed (all of them when `full`), and the deletion of those
/// no longer written. Unchanged per-Service chains are not in the text: `--noflush` leaves
/// them as they are.
pub fn render_since(
    ports: &[ServicePort],
    masquerade: &Masquerade,
    previous: &Written,
    full: bool,
) -> Batch {
    let mut chains = BTreeSet::new();
    let mut rules = String::new();
    let mut filter_rules = String::new();
    // Masquerading by mark.
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE"
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");

    let mut services = BTreeMap::new();
    let mut carried: BTreeMap<String, u64> = BTreeMap::new();
    let mut rendered = Vec::new();
    for p in ports {
        let key = format!("{}/{}", p.name, p.protocol);
        let input = input_hash(p, masquerade);
        // Unchanged since the last batch (and its chains as that batch left them): its lines
        // in the fixed chains again, its own chains left alone.
        if !full
            && let Some(prev) = previous.services.get(&key)
            && prev.input == input
            && prev
                .chains
                .iter()
                .all(|c| previous.chains.get(c).is_some_and(|h| *h != 0))
        {
            for line in prev.fixed.iter() {
                rules.push_str(line);
                rules.push('\n');
            }
            for line in prev.filter.iter() {
                filter_rules.push_str(line);
                filter_rules.push('\n');
            }
            for chain in &prev.chains {
                chains.insert(chain.clone());
                carried.insert(chain.clone(), previous.chains[chain]);
            }
            services.insert(key, prev.clone());
            continue;
        }
        let (mut port_rules, mut port_filter, mut port_chains) =
            (String::new(), String::new(), BTreeSet::new());
        render_port(
            p,
            masquerade,
            &mut port_rules,
            &mut port_filter,
            &mut port_chains,
        );
        let fixed: Vec<String> = port_rules
            .lines()
            .filter(|l| !port_chains.contains(chain_of(l)))
            .map(str::to_string)
            .collect();
        rules.push_str(&port_rules);
        filter_rules.push_str(&port_filter);
        chains.extend(port_chains.iter().cloned());
        rendered.push((
            key,
            ServiceWritten {
                input,
                fixed,
                filter: port_filter.lines().map(str::to_string).collect(),
                chains: port_chains.into_iter().collect(),
            },
        ));
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    let _ = writeln!(
        filter_rules,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
    );
    let _ = writeln!(
        filter_rules,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    let _ = writeln!(
        filter_rules,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );

    // Group the nat rules by chain (each line is `-A <chain> …`), keeping their order.
    let mut by_chain: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut fixed = String::new();
    for line in rules.lines() {
        let chain = chain_of(line);
        if chains.contains(chain) {
            by_chain
                .entry(chain.to_string())
                .or_default()
                .push(line.to_string());
        } else {
            fixed.push_str(line);
            fixed.push('\n');
        }
    }
    let mut written = BTreeMap::new();
    let mut changed: Vec<&String> = Vec::new();
    for chain in &chains {
        if let Some(hash) = carried.get(chain) {
            written.insert(chain.clone(), *hash);
            continue;
        }
        let lines = by_chain.get(chain).map(Vec::as_slice).unwrap_or(&[]);
        let hash = hash_lines(lines);
        if full || previous.chains.get(chain) != Some(&hash) {
            changed.push(chain);
        }
        written.insert(chain.clone(), hash);
    }
    services.extend(rendered);
    let stale: Vec<&String> = previous
        .chains
        .keys()
        .filter(|c| !chains.contains(*c))
        .collect();
    let mut text = String::from("*nat\n");
    for chain in NAT_BASE_CHAINS.iter().map(|c| c.to_string()) {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    for chain in changed.iter().chain(stale.iter()) {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    text.push_str(&fixed);
    for chain in &changed {
        for line in by_chain.get(*chain).into_iter().flatten() {
            text.push_str(line);
            text.push('\n');
        }
    }
    for chain in &stale {
        let _ = writeln!(text, "-X {chain}");
    }
    text.push_str("COMMIT\n*filter\n");
    for chain in FILTER_BASE_CHAINS {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    text.push_str(&filter_rules);
    text.push_str("COMMIT\n");
    Batch {
        text,
        rewritten: changed.len(),
        chains,
        written: Written {
            chains: written,
            services,
        },
    }
}

#[cfg(test)]
mod tests;
