//! What the rules are made from, as pure data: each Service port with its ClusterIP, NodePort,
//! policies and the endpoints its EndpointSlices list (kube-proxy's `ServicePortInfo` and
//! `Endpoint`, with its choice of endpoints: the ready ones, else the serving terminating
//! ones). No IO here; the `iptables` module renders this.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint of a Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: String,
    pub port: i32,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Whether it runs on this proxy's node.
    pub local: bool,
}

/// One port of one Service, as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// `namespace/name:port-name` (kube-proxy's `ServicePortName`).
    pub name: String,
    pub cluster_ip: String,
    pub port: i32,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub node_port: Option<i32>,
    /// `sessionAffinity: ClientIP`'s timeout in seconds.
    pub affinity_seconds: Option<i32>,
    pub external_local: bool,
    pub internal_local: bool,
    /// Every endpoint the slices list, sorted.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// The endpoints traffic goes to (kube-proxy's `CategorizeEndpoints`): the ready ones;
    /// if none is ready, the serving terminating ones; only local ones if `local`.
    pub fn usable(&self, local: bool) -> Vec<&Endpoint> {
        let candidates: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| !local || e.local)
            .collect();
        let ready: Vec<&Endpoint> = candidates.iter().copied().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates
            .into_iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }

    /// The endpoints of cluster traffic (`internalTrafficPolicy`).
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        self.usable(self.internal_local)
    }

    /// The endpoints of NodePort traffic (`externalTrafficPolicy`).
    pub fn external_endpoints(&self) -> Vec<&Endpoint> {
        self.usable(self.external_local)
    }
}

/// The Service ports the rules cover, sorted by name: Services with a ClusterIP (not headless,
/// not ExternalName), their endpoints from the slices of the same namespace whose
/// `kubernetes.io/service-name` names them, matched by port name.
pub fn service_ports(
    services: &[&Service],
    slices: &[&EndpointSlice],
    node_name: &str,
) -> Vec<ServicePort> {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let labels = slice.metadata.labels.as_ref();
        let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        by_service
            .entry((ns, service.clone()))
            .or_default()
            .push(slice);
    }
    let mut out = Vec::new();
    for service in services {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.as_deref().unwrap_or("");
        if ip.is_empty() || ip == "None" || spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let ns = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let service_slices = by_service
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_default();
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10_800)
        });
        for port in spec.ports.iter().flatten() {
            let port_name = port.name.clone().unwrap_or_default();
            let protocol = port
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .to_ascii_lowercase();
            let mut endpoints = Vec::new();
            for slice in &service_slices {
                let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase() == protocol
                }) else {
                    continue;
                };
                let Some(target) = slice_port.port else {
                    continue;
                };
                for e in &slice.endpoints {
                    let conditions = e.conditions.as_ref();
                    // Upstream: an unset `ready` means ready, unset `serving` follows `ready`.
                    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
                    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                    let local = e.node_name.as_deref() == Some(node_name);
                    for address in &e.addresses {
                        endpoints.push(Endpoint {
                            ip: address.clone(),
                            port: target,
                            ready,
                            serving,
                            terminating,
                            local,
                        });
                    }
                }
            }
            endpoints.sort();
            endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
            let external = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
            out.push(ServicePort {
                name: format!("{ns}/{name}:{port_name}"),
                cluster_ip: ip.to_string(),
                port: port.port,
                protocol,
                node_port: port.node_port.filter(|_| external),
                affinity_seconds,
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                endpoints,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests;
