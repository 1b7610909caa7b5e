//! `NodeSimConfig`: what to simulate (how many nodes, their size, labels, taints, pod CIDR) and
//! the limits and intervals the simulator runs with; parsing of the flag values it takes.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;
use crate::ipam::PodCidr;

/// Most nodes one simulator runs (each gets a node IP in 172.16.0.0/12 and a pod subnet).
pub const NODES_MAX: usize = 50_000;
/// Most zones the nodes are spread over.
pub const ZONES_MAX: usize = 1_000;
/// Default `--max-concurrent-writes`: API writes (Lease renewals, node and pod status patches,
/// pod deletions) in flight at once, across the whole simulator.
pub const CONCURRENT_WRITES_DEFAULT: usize = 32;
/// Upper bound of `--max-concurrent-writes`.
pub const CONCURRENT_WRITES_MAX: usize = 1_024;
/// Pods waiting for a status worker; the pod watch waits (backpressure) when it is full.
pub const POD_QUEUE_MAX: usize = 8_192;
/// kubelet's `nodeLeaseDurationSeconds`.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// kubelet renews its Lease every quarter of the lease duration, 10 s.
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// How often a node's Ready condition (`lastHeartbeatTime`) is written again. kubelet's
/// `nodeStatusReportFrequency` is 5 m; one minute keeps 1,000 nodes at ~17 writes/s.
pub const NODE_STATUS_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// How often `--stop-renewing-file` is read.
pub const STOP_FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Attempts at one API write before it is given up (and logged).
pub const WRITE_ATTEMPTS_MAX: u32 = 5;

/// Everything `run` needs; built from `skiff node-sim`'s flags, checked with [`validate`].
///
/// [`validate`]: NodeSimConfig::validate
#[derive(Debug, Clone)]
pub struct NodeSimConfig {
    /// Number of nodes, named `{name_prefix}{0..nodes}`.
    pub nodes: usize,
    pub name_prefix: String,
    /// Capacity (= allocatable) quantities.
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub ephemeral_storage: String,
    /// `kubernetes.io/arch`.
    pub arch: String,
    /// Nodes are spread round-robin over `zone-0..zone-{zones-1}` (`topology.kubernetes.io/zone`).
    pub zones: usize,
    pub taints: Vec<TaintSpec>,
    /// Split into one `node_cidr_mask_size` subnet per node.
    pub pod_cidr: PodCidr,
    pub node_cidr_mask_size: u8,
    /// Node names listed here (one a line) stop renewing their Lease and Ready condition.
    pub stop_renewing_file: Option<PathBuf>,
    /// API writes in flight at once.
    pub max_concurrent_writes: usize,
}

impl NodeSimConfig {
    /// Cross-field checks: counts within limits, quantities well formed, and enough pod
    /// subnets for the nodes.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.nodes == 0 || self.nodes > NODES_MAX {
            return bad(format!("--nodes {}: must be 1..={NODES_MAX}", self.nodes));
        }
        if self.zones == 0 || self.zones > ZONES_MAX {
            return bad(format!("--zones {}: must be 1..={ZONES_MAX}", self.zones));
        }
        if self.max_concurrent_writes == 0 || self.max_concurrent_writes > CONCURRENT_WRITES_MAX {
            return bad(format!(
                "--max-concurrent-writes {}: must be 1..={CONCURRENT_WRITES_MAX}",
                self.max_concurrent_writes
            ));
        }
        let name = format!("{}{}", self.name_prefix, self.nodes - 1);
        if !is_dns_subdomain(&name) {
            return bad(format!(
                "--name-prefix {:?}: node names like {name:?} must be lowercase DNS subdomains",
                self.name_prefix
            ));
        }
        for (flag, value) in [
            ("--cpu", &self.cpu),
            ("--memory", &self.memory),
            ("--ephemeral-storage", &self.ephemeral_storage),
        ] {
            if !is_quantity(value) {
                return bad(format!(
                    "{flag} {value:?}: not a quantity (e.g. 32, 500m, 256Gi)"
                ));
            }
        }
        if self.pods == 0 {
            return bad("--pods 0: a node must hold at least one pod".into());
        }
        self.pod_cidr
            .subnets(self.node_cidr_mask_size, self.nodes)?;
        Ok(())
    }
}

/// One `--taints` entry: `key=value:Effect` or `key:Effect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaintSpec {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

impl std::str::FromStr for TaintSpec {
    type Err = Error;

    /// kubectl taint's syntax; effects NoSchedule, PreferNoSchedule, NoExecute.
    fn from_str(s: &str) -> Result<TaintSpec, Error> {
        let bad = |why: &str| Error::Config(format!("--taints {s:?}: {why} (key=value:Effect)"));
        let (kv, effect) = s.rsplit_once(':').ok_or_else(|| bad("no effect"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(bad(
                "effect must be NoSchedule, PreferNoSchedule or NoExecute",
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((key, value)) => (key, Some(value.to_string())),
            None => (kv, None),
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(bad("empty or blank key"));
        }
        Ok(TaintSpec {
            key: key.to_string(),
            value,
            effect: effect.to_string(),
        })
    }
}

/// A Kubernetes quantity as users write them: a decimal number with an optional suffix.
pub fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    !number.is_empty()
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number != "."
        && SUFFIXES.contains(&suffix)
}

/// RFC 1123 subdomain (what node names must be).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The InternalIP of node `index`: 172.16.0.0/12 counted from 172.16.0.1.
pub fn node_ip(index: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(172, 16, 0, 0));
    // NODES_MAX keeps index + 1 far below the /12's 2^20 addresses.
    Ipv4Addr::from(base + (index as u32 + 1))
}
