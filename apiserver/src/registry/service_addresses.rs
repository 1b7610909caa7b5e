//! Service addresses: ClusterIPs from `--service-cluster-ip-range` and NodePorts from
//! `--service-node-port-range` (kube-apiserver's `ipallocator` and `portallocator`).
//!
//! Every allocated address is one key in the store, created only if absent
//! (`<prefix>/skiff/serviceips/<ip as 8 hex digits>`, `<prefix>/skiff/servicenodeports/<port
//! as 5 digits>`, holding the Service's `namespace/name`), so two writers — two requests, or
//! two API servers — can never hold the same address: the loser's create fails and it picks
//! again (a provided address answers upstream's `provided IP is already allocated`). The
//! fixed-width key names make each key its own prefix, so a Service's keys are deleted in the
//! same transaction as the Service (`Registry::children`). A write that fails after
//! allocating gives its new keys back; an update gives back what it no longer holds once it is
//! written. Dynamic ClusterIPs come from the upper part of the range first, as upstream
//! reserves the lower band (up to 256 addresses) for addresses chosen by users; the range's
//! first address belongs to the `kubernetes` Service.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::*;
use crate::registry::table::Printer;

/// Random picks before a scan of the allocated keys.
const RANDOM_PICKS: usize = 32;

/// The address ranges Services are given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRanges {
    /// `--service-cluster-ip-range`: network address and prefix length.
    pub cluster_ip_network: Ipv4Addr,
    pub cluster_ip_prefix: u8,
    /// `--service-node-port-range`, inclusive.
    pub node_ports: (u16, u16),
}

impl Default for ServiceRanges {
    /// k3s's defaults: `10.43.0.0/16` and kube's `30000-32767`.
    fn default() -> ServiceRanges {
        ServiceRanges {
            cluster_ip_network: Ipv4Addr::new(10, 43, 0, 0),
            cluster_ip_prefix: 16,
            node_ports: (30000, 32767),
        }
    }
}

impl ServiceRanges {
    /// Parses `--service-cluster-ip-range` (an IPv4 CIDR, at most 20 bits of hosts as
    /// kube-apiserver allows) and `--service-node-port-range` (`from-to` or `from+size`).
    pub fn parse(cluster_ip_range: &str, node_port_range: &str) -> Result<ServiceRanges, String> {
        let (ip, bits) = cluster_ip_range.split_once('/').ok_or_else(|| {
            format!("--service-cluster-ip-range {cluster_ip_range:?}: not a CIDR")
        })?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| {
            format!("--service-cluster-ip-range {cluster_ip_range:?}: not an IPv4 CIDR")
        })?;
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| (12..=30).contains(b))
            .ok_or_else(|| {
                format!(
                    "--service-cluster-ip-range {cluster_ip_range:?}: the prefix length must be \
                     12 to 30 (a range of at most 2^20 addresses)"
                )
            })?;
        let mask = u32::MAX << (32 - bits);
        let network = Ipv4Addr::from(u32::from(ip) & mask);
        let parsed: Option<(u16, u16)> = if let Some((from, to)) = node_port_range.split_once('-') {
            from.trim().parse().ok().zip(to.trim().parse().ok())
        } else if let Some((from, size)) = node_port_range.split_once('+') {
            let from: Option<u16> = from.trim().parse().ok();
            let size: Option<u16> = size.trim().parse().ok().filter(|s| *s > 0);
            from.zip(size)
                .and_then(|(f, s)| f.checked_add(s - 1).map(|t| (f, t)))
        } else {
            node_port_range.trim().parse().ok().map(|p| (p, p))
        };
        let node_ports = parsed.filter(|(f, t)| f <= t && *f > 0).ok_or_else(|| {
            format!("--service-node-port-range {node_port_range:?}: want e.g. 30000-32767")
        })?;
        Ok(ServiceRanges {
            cluster_ip_network: network,
            cluster_ip_prefix: bits,
            node_ports,
        })
    }

    /// The range as kube-apiserver prints it (`10.43.0.0/16`).
    pub fn cluster_ip_cidr(&self) -> String {
        format!("{}/{}", self.cluster_ip_network, self.cluster_ip_prefix)
    }

    /// The first usable address: the `kubernetes` Service's ClusterIP.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cluster_ip_network) + 1)
    }

    /// The usable addresses: the network and broadcast addresses are not handed out.
    fn usable(&self) -> (u32, u32) {
        let base = u32::from(self.cluster_ip_network);
        let size = 1u32 << (32 - self.cluster_ip_prefix);
        (base + 1, base + size - 2)
    }

    /// Whether `ip` may be allocated.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.usable();
        (first..=last).contains(&u32::from(ip))
    }

    /// The lower band kept for addresses users choose (upstream: `min(max(16, size/16), 256)`).
    fn static_band(&self) -> u32 {
        let (first, last) = self.usable();
        let size = last - first + 1;
        (size / 16).clamp(16, 256).min(size / 2)
    }

    /// The order of bands dynamic allocation tries: upper, then lower.
    fn dynamic_bands(&self) -> [(u32, u32); 2] {
        let (first, last) = self.usable();
        let split = first + self.static_band();
        [(split, last), (first, split - 1)]
    }
}

/// The keys a Service write created (to give back if the write fails) and the keys it no longer
/// holds (to delete once it is written).
#[derive(Debug, Default)]
pub(super) struct Allocation {
    pub created: Vec<String>,
    pub released: Vec<String>,
}

/// The ClusterIP a Service holds: none for headless and ExternalName Services.
fn cluster_ip(obj: &Value) -> Option<Ipv4Addr> {
    obj["spec"]["clusterIP"].as_str()?.parse().ok()
}

/// Whether a Service of this spec gets a ClusterIP.
fn wants_cluster_ip(spec: &Value) -> bool {
    spec["type"].as_str() != Some("ExternalName") && spec["clusterIP"].as_str() != Some("None")
}

/// Whether a Service of this spec gets NodePorts (NodePort, and LoadBalancer unless
/// `allocateLoadBalancerNodePorts` is false).
fn wants_node_ports(spec: &Value) -> bool {
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"].as_bool() != Some(false),
        _ => false,
    }
}

/// The NodePorts a Service holds.
fn node_ports(obj: &Value) -> Vec<u16> {
    obj["spec"]["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p["nodePort"].as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Registry {
    /// Whether `info` is the kind whose objects hold service addresses.
    fn holds_service_addresses(info: &ResourceInfo) -> bool {
        info.strategy.printer() == Printer::Service
    }

    fn service_ip_prefix(&self) -> String {
        format!("{}/skiff/serviceips/", self.prefix)
    }

    fn service_ip_key(&self, ip: Ipv4Addr) -> String {
        format!("{}{:08x}", self.service_ip_prefix(), u32::from(ip))
    }

    fn node_port_prefix(&self) -> String {
        format!("{}/skiff/servicenodeports/", self.prefix)
    }

    fn node_port_key(&self, port: u16) -> String {
        format!("{}{port:05}", self.node_port_prefix())
    }

    /// The allocation keys `obj` holds (deleted with it).
    pub(super) fn service_address_keys(&self, info: &ResourceInfo, obj: &Value) -> Vec<String> {
        if !Self::holds_service_addresses(info) {
            return Vec::new();
        }
        let mut keys: Vec<String> = cluster_ip(obj)
            .filter(|ip| self.service_ranges.contains(*ip))
            .map(|ip| self.service_ip_key(ip))
            .into_iter()
            .collect();
        let mut seen = HashSet::new();
        for port in node_ports(obj) {
            if seen.insert(port) {
                keys.push(self.node_port_key(port));
            }
        }
        keys
    }

    /// Gives `obj` (a Service being created, or updated from `current`) its addresses: keeps
    /// what `current` holds (a ClusterIP may not change), takes the addresses the client asked
    /// for if they are free and in range, and picks free ones for the rest. On an error,
    /// nothing stays allocated.
    pub(super) async fn allocate_service_addresses(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        current: Option<&Value>,
    ) -> Result<Allocation, ApiError> {
        let mut allocation = Allocation::default();
        if !Self::holds_service_addresses(info) || !obj["spec"].is_object() {
            return Ok(allocation);
        }
        match self
            .allocate_into(info, obj, current, &mut allocation)
            .await
        {
            Ok(()) => Ok(allocation),
            Err(e) => {
                self.release_service_addresses(&allocation.created).await;
                Err(e)
            }
        }
    }

    async fn allocate_into(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        current: Option<&Value>,
        allocation: &mut Allocation,
    ) -> Result<(), ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let owner = format!(
            "{}/{name}",
            obj["metadata"]["namespace"].as_str().unwrap_or("")
        );
        let invalid = |field: &str, message: String| {
            ApiError::invalid(
                info.kind,
                info.group,
                &name,
                &[(field.to_string(), message)],
            )
        };
        let held_ip = current.and_then(cluster_ip);
        let held_ports: HashSet<u16> = current
            .map(node_ports)
            .unwrap_or_default()
            .into_iter()
            .collect();

        // The ClusterIP.
        if wants_cluster_ip(&obj["spec"]) {
            let asked = obj["spec"]["clusterIP"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let ip = match (asked, held_ip) {
                (None, Some(held)) => held,
                (Some(asked), Some(held)) if asked.parse::<Ipv4Addr>().ok() != Some(held) => {
                    return Err(invalid(
                        "spec.clusterIPs[0]",
                        format!("Invalid value: {asked:?}: may not change once set"),
                    ));
                }
                (Some(_), Some(held)) => held,
                (Some(asked), None) => {
                    let ip: Ipv4Addr = asked.parse().map_err(|_| {
                        invalid(
                            "spec.clusterIPs[0]",
                            format!(
                                "Invalid value: {asked:?}: must be a valid IP address, (e.g. \
                                 10.9.8.7 or 2001:db8::ffff) or \"None\""
                            ),
                        )
                    })?;
                    let failed = |why: String| {
                        invalid(
                            "spec.clusterIPs",
                            format!(
                                "Invalid value: []string{{{asked:?}}}: failed to allocate IP \
                                 {asked}: {why}"
                            ),
                        )
                    };
                    if !self.service_ranges.contains(ip) {
                        return Err(failed(format!(
                            "the provided IP ({ip}) is not in the valid range. The range of \
                             valid IPs is {}",
                            self.service_ranges.cluster_ip_cidr()
                        )));
                    }
                    let key = self.service_ip_key(ip);
                    if !self.take(&key, &owner).await? {
                        return Err(failed("provided IP is already allocated".into()));
                    }
                    allocation.created.push(key);
                    ip
                }
                (None, None) => {
                    let ip = self.pick_cluster_ip(&owner).await?;
                    allocation.created.push(self.service_ip_key(ip));
                    ip
                }
            };
            obj["spec"]["clusterIP"] = json!(ip.to_string());
            obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
        } else if obj["spec"]["clusterIP"].as_str() == Some("None") {
            obj["spec"]["clusterIPs"] = json!(["None"]);
        }
        if let Some(held) = held_ip
            && cluster_ip(obj) != Some(held)
            && self.service_ranges.contains(held)
        {
            allocation.released.push(self.service_ip_key(held));
        }

        // The NodePorts.
        let wants_ports = wants_node_ports(&obj["spec"]);
        let old_ports: Vec<Value> = current
            .and_then(|c| c["spec"]["ports"].as_array().cloned())
            .unwrap_or_default();
        let count = obj["spec"]["ports"].as_array().map_or(0, Vec::len);
        let mut mine: HashSet<u16> = HashSet::new();
        for i in 0..count {
            let port = &mut obj["spec"]["ports"][i];
            if !wants_ports {
                if let Some(map) = port.as_object_mut() {
                    map.remove("nodePort");
                }
                continue;
            }
            if port["nodePort"].as_u64().is_none_or(|p| p == 0) {
                // An update that leaves a port's nodePort out keeps the one it had.
                if let Some(old) = old_ports
                    .iter()
                    .find(|o| o["port"] == port["port"] && o["protocol"] == port["protocol"])
                    && let Some(p) = old["nodePort"].as_u64()
                {
                    port["nodePort"] = json!(p);
                }
            }
            match port["nodePort"].as_u64().filter(|p| *p != 0) {
                Some(asked) => {
                    let field = format!("spec.ports[{i}].nodePort");
                    let (from, to) = self.service_ranges.node_ports;
                    let Some(asked) = u16::try_from(asked)
                        .ok()
                        .filter(|p| (from..=to).contains(p))
                    else {
                        return Err(invalid(
                            &field,
                            format!(
                                "Invalid value: {asked}: provided port is not in the valid \
                                 range. The range of valid ports is {from}-{to}"
                            ),
                        ));
                    };
                    if held_ports.contains(&asked) || mine.contains(&asked) {
                        mine.insert(asked);
                        continue;
                    }
                    let key = self.node_port_key(asked);
                    if !self.take(&key, &owner).await? {
                        return Err(invalid(
                            &field,
                            format!("Invalid value: {asked}: provided port is already allocated"),
                        ));
                    }
                    allocation.created.push(key);
                    mine.insert(asked);
                }
                None => {
                    let picked = self.pick_node_port(&owner).await?;
                    allocation.created.push(self.node_port_key(picked));
                    obj["spec"]["ports"][i]["nodePort"] = json!(picked);
                    mine.insert(picked);
                }
            }
        }
        for held in held_ports {
            if !mine.contains(&held) {
                allocation.released.push(self.node_port_key(held));
            }
        }
        Ok(())
    }

    /// Creates `key` for `owner`: false if another holds it.
    async fn take(&self, key: &str, owner: &str) -> Result<bool, ApiError> {
        let value = serde_json::to_vec(&json!({ "owner": owner })).unwrap_or_default();
        match self.storage.create(key, value).await {
            Ok(_) => Ok(true),
            Err(StorageError::Exists) => Ok(false),
            Err(e) => Err(ApiError::from_storage(e, "services", "", owner)),
        }
    }

    /// The allocated keys under `prefix`.
    async fn taken(&self, prefix: &str) -> Result<HashSet<String>, ApiError> {
        let page = self
            .storage
            .list(prefix, "", 0, 0)
            .await
            .map_err(|e| ApiError::from_storage(e, "services", "", ""))?;
        Ok(page.items.into_iter().map(|s| s.key).collect())
    }

    /// A free ClusterIP: random picks in the upper band, then a scan of both bands.
    async fn pick_cluster_ip(&self, owner: &str) -> Result<Ipv4Addr, ApiError> {
        let bands = self.service_ranges.dynamic_bands();
        let (low, high) = bands[0];
        for _ in 0..RANDOM_PICKS {
            let ip = Ipv4Addr::from(rand::random_range(low..=high));
            if self.take(&self.service_ip_key(ip), owner).await? {
                return Ok(ip);
            }
        }
        let taken = self.taken(&self.service_ip_prefix()).await?;
        for (low, high) in bands {
            if low > high {
                continue;
            }
            let start = rand::random_range(low..=high);
            for n in (start..=high).chain(low..start) {
                let ip = Ipv4Addr::from(n);
                let key = self.service_ip_key(ip);
                if !taken.contains(&key) && self.take(&key, owner).await? {
                    return Ok(ip);
                }
            }
        }
        Err(ApiError::internal(
            "Internal error occurred: failed to allocate a serviceIP: range is full",
        ))
    }

    /// A free NodePort: random picks, then a scan.
    async fn pick_node_port(&self, owner: &str) -> Result<u16, ApiError> {
        let (from, to) = self.service_ranges.node_ports;
        for _ in 0..RANDOM_PICKS {
            let port = rand::random_range(from..=to);
            if self.take(&self.node_port_key(port), owner).await? {
                return Ok(port);
            }
        }
        let taken = self.taken(&self.node_port_prefix()).await?;
        let start = rand::random_range(from..=to);
        for port in (start..=to).chain(from..start) {
            let key = self.node_port_key(port);
            if !taken.contains(&key) && self.take(&key, owner).await? {
                return Ok(port);
            }
        }
        Err(ApiError::internal(
            "Internal error occurred: failed to allocate a nodePort: range is full",
        ))
    }

    /// Deletes allocation keys (a failed write's, or what an update gave up). A key that
    /// cannot be deleted now stays allocated: it is logged, never handed out twice.
    pub(super) async fn release_service_addresses(&self, keys: &[String]) {
        for key in keys {
            let result = match self.storage.get(key).await {
                Ok(Some(stored)) => self
                    .storage
                    .delete(key, stored.revision, Vec::new())
                    .await
                    .map(|_| ()),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(key, error = %e, "could not release a service address");
            }
        }
    }
}

#[cfg(test)]
mod tests;
