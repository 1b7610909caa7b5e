//! The Endpoints controller's decisions, as kube-controller-manager's Endpoints controller
//! (`pkg/controller/endpoint`) makes them, without any IO: which pods a Service selects,
//! their addresses (ready or not) and resolved ports, the subsets repacked into the canonical
//! layout (`endpoints.RepackSubsets`), the truncation at [`MAX_ENDPOINT_ADDRESSES`], the
//! labels and annotations, and whether the Endpoints object must be created or updated at
//! all. Also the pod and service rules the EndpointSlice controller shares (upstream's
//! `k8s.io/endpointslice/util`): membership, named target ports, hostnames, address families
//! and the last-change trigger time.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pods::is_ready;
use crate::shell::Key;

/// The label on Endpoints and EndpointSlices of a Service without a cluster IP
/// (`v1.IsHeadlessService`).
pub const HEADLESS_SERVICE_LABEL: &str = "service.kubernetes.io/headless";
/// When the pod or service change behind the last write happened
/// (`v1.EndpointsLastChangeTriggerTime`).
pub const LAST_CHANGE_TRIGGER_TIME_ANNOTATION: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// Set to [`TRUNCATED`] when an Endpoints object holds fewer addresses than the Service has
/// (`v1.EndpointsOverCapacity`).
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
/// The value of [`OVER_CAPACITY_ANNOTATION`].
pub const TRUNCATED: &str = "truncated";
/// Most addresses (ready plus not ready) one Endpoints object holds (upstream `maxCapacity`).
pub const MAX_ENDPOINT_ADDRESSES: usize = 1000;
/// Endpoints carrying this annotation are leader-election records, never deleted as leftovers.
pub const LEADER_ELECTION_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// The port the repacking uses for addresses of a subset without ports (a headless Service
/// without ports), as upstream's sentinel.
const NO_PORT: i32 = -1;

// ---------------------------------------------------------------------------------------------
// Rules shared with the EndpointSlice controller.
// ---------------------------------------------------------------------------------------------

/// The selector of a Service the endpoint controllers manage: `None` for a Service without a
/// selector (its endpoints are written by someone else) and for `type: ExternalName`. An empty
/// selector selects every pod of the namespace, as upstream's `labels.Set{}` does.
pub fn managed_selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref()
}

/// Whether `pod` is in the Service's namespace and matches its selector (a Service without a
/// managed selector selects nothing).
pub fn service_selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = managed_selector(service) else {
        return false;
    };
    if service.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    let labels = crate::pods::labels(&pod.metadata);
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether the pod belongs in Endpoints or EndpointSlices at all (upstream
/// `ShouldPodBeInEndpoints`): not terminal, has an IP, and — unless `include_terminating` —
/// not being deleted.
pub fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    if pod_ips(pod).is_empty() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// Whether an address of `pod` gets its hostname for `service` (upstream `ShouldSetHostname`):
/// the pod names a hostname and its subdomain is the Service, in the same namespace.
pub fn should_set_hostname(pod: &Pod, service: &Service) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.hostname.as_deref().is_some_and(|h| !h.is_empty())
        && spec.subdomain.as_deref().unwrap_or_default()
            == service.metadata.name.as_deref().unwrap_or_default()
        && service.metadata.namespace == pod.metadata.namespace
}

/// The pod's hostname if it should be set for `service`.
pub fn hostname_for(pod: &Pod, service: &Service) -> Option<String> {
    should_set_hostname(pod, service)
        .then(|| pod.spec.as_ref().and_then(|s| s.hostname.clone()))
        .flatten()
}

/// Whether the Service has a cluster IP (not empty, not `None`): otherwise it is headless.
pub fn is_service_ip_set(service: &Service) -> bool {
    let ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap_or_default();
    !ip.is_empty() && ip != "None"
}

/// Whether the Service is explicitly headless (`clusterIP: None`).
pub fn is_headless(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The Service's ports (none if it has no spec).
pub fn service_ports(service: &Service) -> &[ServicePort] {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// The protocol a port names, `TCP` when unset (the API default).
pub fn protocol_or_tcp(protocol: Option<&str>) -> &str {
    protocol.filter(|p| !p.is_empty()).unwrap_or("TCP")
}

/// The container port a Service port reaches on `pod` (upstream `FindPort`): a numeric
/// `targetPort` as is (the Service port when unset), a named one looked up among the pod's
/// containers (and restartable init containers, the sidecars) with the same protocol; `None`
/// when the pod has no such named port.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let name = match &port.target_port {
        None => return Some(port.port),
        Some(IntOrString::Int(0)) => return Some(port.port),
        Some(IntOrString::Int(number)) => return Some(*number),
        Some(IntOrString::String(name)) => name,
    };
    let protocol = protocol_or_tcp(port.protocol.as_deref());
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name.as_str())
                && protocol_or_tcp(p.protocol.as_deref()) == protocol
        })
        .map(|p| p.container_port)
}

/// The pod's IPs: `status.podIPs`, or `status.podIP` alone when the list is empty.
pub fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    status
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .into_iter()
        .collect()
}

/// Whether an address is IPv6 (anything with a colon that does not parse is taken as IPv6 too).
pub fn is_ipv6(ip: &str) -> bool {
    match ip.parse::<IpAddr>() {
        Ok(addr) => addr.is_ipv6(),
        Err(_) => ip.contains(':'),
    }
}

/// A reference to a pod as endpoints carry it (`Pod` kind, namespace, name, uid).
pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_string()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The pod's node, if it is bound to one.
pub fn pod_node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// When the pod's `Ready` condition last changed (upstream `getPodTriggerTime`).
fn pod_trigger_time(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// What the trigger-time tracker last saw of one Service.
#[derive(Debug, Clone, Default)]
struct TriggerState {
    service_created: Option<Timestamp>,
    pods: HashMap<String, Timestamp>,
}

/// Upstream's `TriggerTimeTracker`: the value of [`LAST_CHANGE_TRIGGER_TIME_ANNOTATION`] — the
/// Service's creation the first time a Service is seen, afterwards the earliest pod `Ready`
/// transition (or Service creation) that changed since the previous sync. Plain data: the
/// shell keeps it behind a lock.
#[derive(Debug, Default)]
pub struct TriggerTimeTracker {
    states: HashMap<Key, TriggerState>,
}

impl TriggerTimeTracker {
    /// The trigger time of this sync of `service` over the pods it selects (`None`: leave the
    /// annotation out), remembering what it saw.
    pub fn compute(&mut self, key: &Key, service: &Service, pods: &[&Pod]) -> Option<Timestamp> {
        let previous = self.states.get(key);
        let known = previous.is_some();
        let mut earliest: Option<Timestamp> = None;
        let mut seen = HashMap::new();
        for pod in pods {
            let (Some(name), Some(time)) = (pod.metadata.name.as_ref(), pod_trigger_time(pod))
            else {
                continue;
            };
            seen.insert(name.clone(), time);
            let before = previous.and_then(|s| s.pods.get(name));
            if before.is_none_or(|b| time > *b) {
                earliest = Some(earliest.map_or(time, |e| e.min(time)));
            }
        }
        let created = service.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(created) = created
            && previous
                .and_then(|s| s.service_created)
                .is_none_or(|b| created > b)
        {
            earliest = Some(earliest.map_or(created, |e| e.min(created)));
        }
        self.states.insert(
            key.clone(),
            TriggerState {
                service_created: created,
                pods: seen,
            },
        );
        if known { earliest } else { created }
    }

    /// Forgets a deleted Service.
    pub fn forget(&mut self, key: &Key) {
        self.states.remove(key);
    }
}

/// A timestamp as the trigger-time annotation writes it (RFC 3339, UTC, nanoseconds as needed).
pub fn format_trigger_time(time: Timestamp) -> String {
    time.to_string()
}

// ---------------------------------------------------------------------------------------------
// The Endpoints object.
// ---------------------------------------------------------------------------------------------

/// What one sync of a Service does to its Endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointsChange {
    /// The Endpoints already say it.
    Unchanged,
    /// Create this Endpoints object.
    Create(Endpoints),
    /// Replace the Endpoints with this (the cached object changed; its resourceVersion kept, so
    /// the write is optimistic).
    Update(Endpoints),
}

/// The address of `pod` for `service`: the first pod IP of the Service's family (its first
/// `ipFamilies` entry; else the cluster IP's family; else, headless, the pod IP's own), with
/// the node, the pod reference and — when the pod names the Service as subdomain — the
/// hostname. `None` when the pod has no IP of that family.
pub fn pod_address(service: &Service, pod: &Pod) -> Option<EndpointAddress> {
    let ips = pod_ips(pod);
    let spec = service.spec.as_ref();
    let family_v6 = match spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
    {
        Some(family) => family == "IPv6",
        None if is_service_ip_set(service) => is_ipv6(
            spec.and_then(|s| s.cluster_ip.as_deref())
                .unwrap_or_default(),
        ),
        None => ips.first().is_some_and(|ip| is_ipv6(ip)),
    };
    let ip = ips.into_iter().find(|ip| is_ipv6(ip) == family_v6)?;
    Some(EndpointAddress {
        ip: ip.to_string(),
        node_name: pod_node_name(pod).map(str::to_string),
        target_ref: Some(pod_reference(pod)),
        hostname: hostname_for(pod, service),
    })
}

/// The subsets the Service's Endpoints should hold, repacked: for every selected pod that
/// belongs in Endpoints (terminating pods only with `publishNotReadyAddresses`), one address per
/// resolved Service port, ready when the pod's `Ready` condition is true or the Service
/// publishes not-ready addresses. A headless Service without ports gets portless subsets; a
/// Service with a cluster IP and no ports gets none.
pub fn desired_subsets(service: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let ports = service_ports(service);
    let mut subsets = Vec::new();
    for pod in pods.iter().copied().filter(|p| service_selects(service, p)) {
        if !should_pod_be_in_endpoints(pod, publish_not_ready) {
            continue;
        }
        let Some(address) = pod_address(service, pod) else {
            continue;
        };
        let ready = publish_not_ready || is_ready(pod);
        let subset_of = |ports: Option<Vec<EndpointPort>>| {
            let addresses = Some(vec![address.clone()]);
            if ready {
                EndpointSubset {
                    addresses,
                    not_ready_addresses: None,
                    ports,
                }
            } else {
                EndpointSubset {
                    addresses: None,
                    not_ready_addresses: addresses,
                    ports,
                }
            }
        };
        if ports.is_empty() {
            if is_headless(service) {
                subsets.push(subset_of(None));
            }
            continue;
        }
        for port in ports {
            let Some(number) = find_port(pod, port) else {
                continue;
            };
            subsets.push(subset_of(Some(vec![EndpointPort {
                name: port.name.clone(),
                port: number,
                protocol: Some(protocol_or_tcp(port.protocol.as_deref()).to_string()),
                app_protocol: port.app_protocol.clone(),
            }])));
        }
    }
    repack_subsets(&subsets)
}

/// A port as the repacking keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    port: i32,
    name: String,
    protocol: String,
    app_protocol: Option<String>,
}

impl PortKey {
    fn of(port: &EndpointPort) -> PortKey {
        PortKey {
            port: port.port,
            name: port.name.clone().unwrap_or_default(),
            protocol: protocol_or_tcp(port.protocol.as_deref()).to_string(),
            app_protocol: port.app_protocol.clone(),
        }
    }

    fn to_port(&self) -> EndpointPort {
        EndpointPort {
            name: (!self.name.is_empty()).then(|| self.name.clone()),
            port: self.port,
            protocol: Some(self.protocol.clone()),
            app_protocol: self.app_protocol.clone(),
        }
    }
}

/// An address's identity in the repacking: IP, then the target's uid (none sorts first).
type AddressKey = (String, String);

fn address_key(address: &EndpointAddress) -> AddressKey {
    let uid = address
        .target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_default();
    (address.ip.clone(), uid)
}

/// Upstream `endpoints.RepackSubsets`: expands the subsets to (address, port) pairs, dedupes
/// addresses by IP and target uid (not ready wins over ready for the same port), and packs
/// every set of ports that share the same addresses into one subset. Addresses are sorted by
/// IP and uid; ports and subsets in a fixed order, so equal inputs give equal outputs.
pub fn repack_subsets(subsets: &[EndpointSubset]) -> Vec<EndpointSubset> {
    let mut addresses: BTreeMap<AddressKey, EndpointAddress> = BTreeMap::new();
    let mut by_port: BTreeMap<PortKey, BTreeMap<AddressKey, bool>> = BTreeMap::new();
    let no_port = [EndpointPort {
        port: NO_PORT,
        ..EndpointPort::default()
    }];
    for subset in subsets {
        let ports = subset.ports.as_deref().unwrap_or_default();
        let ports = if ports.is_empty() {
            &no_port[..]
        } else {
            ports
        };
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false));
        for (address, is_ready) in ready.chain(not_ready) {
            let key = address_key(address);
            addresses
                .entry(key.clone())
                .or_insert_with(|| address.clone());
            for port in ports {
                let states = by_port.entry(PortKey::of(port)).or_default();
                let state = states.entry(key.clone()).or_insert(is_ready);
                *state = *state && is_ready;
            }
        }
    }
    let mut groups: BTreeMap<BTreeMap<AddressKey, bool>, Vec<PortKey>> = BTreeMap::new();
    for (port, states) in by_port {
        groups.entry(states).or_default().push(port);
    }
    groups
        .into_iter()
        .map(|(states, ports)| {
            let pick = |want: bool| {
                let list: Vec<EndpointAddress> = states
                    .iter()
                    .filter(|(_, ready)| **ready == want)
                    .filter_map(|(key, _)| addresses.get(key).cloned())
                    .collect();
                (!list.is_empty()).then_some(list)
            };
            let ports: Vec<EndpointPort> = ports
                .iter()
                .filter(|p| p.port != NO_PORT)
                .map(PortKey::to_port)
                .collect();
            EndpointSubset {
                addresses: pick(true),
                not_ready_addresses: pick(false),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

/// Subsets with empty lists as absent and target references without resourceVersions, so
/// what the server gives back compares equal to what was written.
fn normalized(subsets: Option<&[EndpointSubset]>) -> Vec<EndpointSubset> {
    let addresses = |list: &Option<Vec<EndpointAddress>>| {
        let list: Vec<EndpointAddress> = list
            .iter()
            .flatten()
            .map(|a| {
                let mut a = a.clone();
                if let Some(r) = a.target_ref.as_mut() {
                    r.resource_version = None;
                }
                if a.hostname.as_deref() == Some("") {
                    a.hostname = None;
                }
                if a.node_name.as_deref() == Some("") {
                    a.node_name = None;
                }
                a
            })
            .collect();
        (!list.is_empty()).then_some(list)
    };
    subsets
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let ports: Vec<EndpointPort> = s
                .ports
                .iter()
                .flatten()
                .map(|p| PortKey::of(p).to_port())
                .collect();
            EndpointSubset {
                addresses: addresses(&s.addresses),
                not_ready_addresses: addresses(&s.not_ready_addresses),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

/// Labels without the headless label (what a Service's own labels are compared with).
fn without_headless(labels: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut labels = labels.cloned().unwrap_or_default();
    labels.remove(HEADLESS_SERVICE_LABEL);
    labels
}

/// Upstream `truncateEndpoints`: past [`MAX_ENDPOINT_ADDRESSES`] addresses, keeps ready
/// addresses first and shares what is left between the subsets in proportion to their size
/// (rounded up, the last subsets getting what remains). Whether it truncated.
pub fn truncate_subsets(subsets: &mut [EndpointSubset]) -> bool {
    let count = |list: &Option<Vec<EndpointAddress>>| list.as_ref().map_or(0, Vec::len);
    let total_ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let total_not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if total_ready + total_not_ready <= MAX_ENDPOINT_ADDRESSES {
        return false;
    }
    let truncate_ready = total_ready > MAX_ENDPOINT_ADDRESSES;
    let (budget, total) = if truncate_ready {
        (MAX_ENDPOINT_ADDRESSES, total_ready)
    } else {
        (MAX_ENDPOINT_ADDRESSES - total_ready, total_not_ready)
    };
    let mut left = budget;
    for subset in subsets.iter_mut() {
        let in_subset = if truncate_ready {
            count(&subset.addresses)
        } else {
            count(&subset.not_ready_addresses)
        };
        // ceil(in_subset / total * budget) in integers.
        let share = if total == 0 {
            0
        } else {
            (in_subset * budget).div_ceil(total)
        };
        let keep = share.min(left);
        let list = if truncate_ready {
            subset.not_ready_addresses = None;
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        if let Some(addresses) = list.as_mut() {
            addresses.truncate(keep);
            left -= addresses.len();
        }
    }
    true
}

/// Whether the over-capacity annotation agrees with the subsets (upstream
/// `capacityAnnotationSetCorrectly`): over capacity is never correct (it must be truncated),
/// otherwise the annotation must be absent.
fn capacity_annotation_correct(endpoints: &Endpoints) -> bool {
    let count: usize = endpoints
        .subsets
        .iter()
        .flatten()
        .map(|s| {
            s.addresses.as_ref().map_or(0, Vec::len)
                + s.not_ready_addresses.as_ref().map_or(0, Vec::len)
        })
        .sum();
    if count > MAX_ENDPOINT_ADDRESSES {
        return false;
    }
    endpoints
        .metadata
        .annotations
        .as_ref()
        .is_none_or(|a| !a.contains_key(OVER_CAPACITY_ANNOTATION))
}

/// One sync of a Service that exists: the Endpoints it should have, compared with `current`
/// (the cached object, if any). `pods`: the pods of the Service's namespace (the plan picks
/// those the selector matches). `trigger_time`: from [`TriggerTimeTracker::compute`]. A
/// Service without a managed selector, or `ExternalName`, is left alone.
pub fn plan(
    service: &Service,
    pods: &[&Pod],
    current: Option<&Endpoints>,
    trigger_time: Option<Timestamp>,
) -> EndpointsChange {
    if managed_selector(service).is_none() {
        return EndpointsChange::Unchanged;
    }
    let subsets = desired_subsets(service, pods);
    let service_labels = service.metadata.labels.clone().unwrap_or_default();
    if let Some(current) = current
        && normalized(current.subsets.as_deref()) == normalized(Some(&subsets))
        && without_headless(current.metadata.labels.as_ref()) == service_labels
        && capacity_annotation_correct(current)
    {
        return EndpointsChange::Unchanged;
    }
    let mut endpoints = match current {
        Some(current) => current.clone(),
        None => Endpoints {
            metadata: ObjectMeta {
                name: service.metadata.name.clone(),
                namespace: service.metadata.namespace.clone(),
                ..ObjectMeta::default()
            },
            subsets: None,
        },
    };
    let mut subsets = subsets;
    let truncated = truncate_subsets(&mut subsets);
    endpoints.subsets = Some(subsets);
    let mut labels = service_labels;
    if is_service_ip_set(service) {
        labels.remove(HEADLESS_SERVICE_LABEL);
    } else {
        labels.insert(HEADLESS_SERVICE_LABEL.to_string(), String::new());
    }
    endpoints.metadata.labels = Some(labels);
    let annotations = endpoints.metadata.annotations.get_or_insert_default();
    match trigger_time {
        Some(time) => {
            annotations.insert(
                LAST_CHANGE_TRIGGER_TIME_ANNOTATION.to_string(),
                format_trigger_time(time),
            );
        }
        None => {
            annotations.remove(LAST_CHANGE_TRIGGER_TIME_ANNOTATION);
        }
    }
    if truncated {
        annotations.insert(OVER_CAPACITY_ANNOTATION.to_string(), TRUNCATED.to_string());
    } else {
        annotations.remove(OVER_CAPACITY_ANNOTATION);
    }
    if annotations.is_empty() {
        endpoints.metadata.annotations = None;
    }
    if current.is_some() {
        EndpointsChange::Update(endpoints)
    } else {
        EndpointsChange::Create(endpoints)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::{Value, json};

    use super::*;

    /// A Service `web` in `ns` selecting `app=web`, with these ports.
    fn service(ports: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid",
                         "labels": {"team": "a"},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                     "ipFamilies": ["IPv4"], "ports": ports},
        }))
        .unwrap()
    }

    fn http_service() -> Service {
        service(json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]))
    }

    /// A running pod `name` of `app=web` with `ip`, ready or not.
    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox",
                      "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready",
                                       "status": if ready { "True" } else { "False" },
                                       "lastTransitionTime": "2026-01-01T00:00:05Z"}]},
        }))
        .unwrap()
    }

    fn terminating(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(Time("2026-01-01T00:01:00Z".parse().unwrap()));
        pod
    }

    fn ips(addresses: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        addresses.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    fn created(change: EndpointsChange) -> Endpoints {
        match change {
            EndpointsChange::Create(endpoints) => endpoints,
            other => panic!("expected a create, got {other:?}"),
        }
    }

    #[test]
    fn ready_not_ready_and_terminating_pods() {
        let svc = http_service();
        let (a, b, c) = (
            pod("a", "10.0.0.1", true),
            pod("b", "10.0.0.2", false),
            terminating(pod("c", "10.0.0.3", true)),
        );
        let ep = created(plan(&svc, &[&a, &b, &c], None, None));
        assert_eq!(ep.metadata.name.as_deref(), Some("web"));
        assert_eq!(ep.metadata.namespace.as_deref(), Some("ns"));
        let subsets = ep.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.2"]);
        let port = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), 8080, Some("TCP"))
        );
        let address = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(address.node_name.as_deref(), Some("node-1"));
        let target = address.target_ref.as_ref().unwrap();
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        assert_eq!(target.name.as_deref(), Some("a"));
        assert_eq!(target.namespace.as_deref(), Some("ns"));
        assert_eq!(target.uid.as_deref(), Some("a-uid"));
        assert_eq!(ep.metadata.labels.unwrap()["team"], "a");
    }

    #[test]
    fn publish_not_ready_addresses_counts_every_pod_as_ready() {
        let mut svc = http_service();
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let (a, b, c) = (
            pod("a", "10.0.0.1", true),
            pod("b", "10.0.0.2", false),
            terminating(pod("c", "10.0.0.3", false)),
        );
        let subsets = created(plan(&svc, &[&a, &b, &c], None, None))
            .subsets
            .unwrap();
        assert_eq!(
            ips(&subsets[0].addresses),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn pods_without_ip_terminal_or_unselected_are_left_out() {
        let svc = http_service();
        let mut no_ip = pod("a", "10.0.0.1", true);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        no_ip.status.as_mut().unwrap().pod_ips = None;
        let mut done = pod("b", "10.0.0.2", true);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut other = pod("c", "10.0.0.3", true);
        other.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        let mut elsewhere = pod("d", "10.0.0.4", true);
        elsewhere.metadata.namespace = Some("other".into());
        let ep = created(plan(&svc, &[&no_ip, &done, &other, &elsewhere], None, None));
        assert_eq!(ep.subsets, Some(vec![]));
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "http"}]));
        let a = pod("a", "10.0.0.1", true);
        let mut b = pod("b", "10.0.0.2", true);
        b.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 9090;
        let mut c = pod("c", "10.0.0.3", true);
        c.spec.as_mut().unwrap().containers[0].ports = None;
        let subsets = created(plan(&svc, &[&a, &b, &c], None, None))
            .subsets
            .unwrap();
        // Different numbers: different subsets; the pod without the port: nowhere.
        assert_eq!(subsets.len(), 2);
        let by_port: BTreeMap<i32, Vec<&str>> = subsets
            .iter()
            .map(|s| (s.ports.as_ref().unwrap()[0].port, ips(&s.addresses)))
            .collect();
        assert_eq!(by_port[&8080], ["10.0.0.1"]);
        assert_eq!(by_port[&9090], ["10.0.0.2"]);
        // A named port of another protocol does not match.
        let udp = service(json!([{"name": "dns", "port": 53, "targetPort": "http",
                                   "protocol": "UDP"}]));
        assert_eq!(created(plan(&udp, &[&a], None, None)).subsets, Some(vec![]));
    }

    #[test]
    fn repacking_groups_ports_sharing_addresses_and_not_ready_wins() {
        let svc = service(json!([
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "metrics", "port": 9100, "targetPort": 9100},
        ]));
        let (a, b) = (pod("a", "10.0.0.2", true), pod("b", "10.0.0.1", false));
        let subsets = created(plan(&svc, &[&a, &b], None, None)).subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        let ports: Vec<i32> = subsets[0].ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [8080, 9100]);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.1"]);

        // The same address ready on one listing and not ready on another: not ready.
        let address = pod_address(&svc, &a).unwrap();
        let port = EndpointPort {
            port: 80,
            ..EndpointPort::default()
        };
        let repacked = repack_subsets(&[
            EndpointSubset {
                addresses: Some(vec![address.clone()]),
                not_ready_addresses: None,
                ports: Some(vec![port.clone()]),
            },
            EndpointSubset {
                addresses: None,
                not_ready_addresses: Some(vec![address]),
                ports: Some(vec![port]),
            },
        ]);
        assert_eq!(repacked.len(), 1);
        assert!(repacked[0].addresses.is_none());
        assert_eq!(ips(&repacked[0].not_ready_addresses), ["10.0.0.2"]);
    }

    #[test]
    fn headless_services_get_the_label_and_portless_subsets() {
        let mut svc = service(json!([]));
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let a = pod("a", "10.0.0.1", true);
        let ep = created(plan(&svc, &[&a], None, None));
        assert_eq!(
            ep.metadata.labels.as_ref().unwrap()[HEADLESS_SERVICE_LABEL],
            ""
        );
        let subsets = ep.subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert!(subsets[0].ports.is_none());
        // A Service with a cluster IP loses the label; without ports it gets no addresses.
        let mut with_ip = service(json!([]));
        with_ip.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.1".into());
        let mut current = Endpoints {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                resource_version: Some("7".into()),
                labels: Some(
                    [
                        ("team".to_string(), "a".to_string()),
                        (HEADLESS_SERVICE_LABEL.to_string(), String::new()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            subsets: None,
        };
        // Only the headless label differs: nothing to write (upstream compares without it).
        assert_eq!(
            plan(&with_ip, &[&a], Some(&current), None),
            EndpointsChange::Unchanged
        );
        current.metadata.labels.as_mut().unwrap().remove("team");
        match plan(&with_ip, &[&a], Some(&current), None) {
            EndpointsChange::Update(ep) => {
                assert_eq!(ep.metadata.resource_version.as_deref(), Some("7"));
                let labels = ep.metadata.labels.unwrap();
                assert!(!labels.contains_key(HEADLESS_SERVICE_LABEL));
                assert_eq!(labels["team"], "a");
            }
            other => panic!("expected an update, got {other:?}"),
        }
    }

    #[test]
    fn hostname_when_the_pod_names_the_service_as_subdomain() {
        let svc = http_service();
        let mut a = pod("a", "10.0.0.1", true);
        a.spec.as_mut().unwrap().hostname = Some("a-host".into());
        a.spec.as_mut().unwrap().subdomain = Some("web".into());
        let mut b = pod("b", "10.0.0.2", true);
        b.spec.as_mut().unwrap().hostname = Some("b-host".into());
        let subsets = created(plan(&svc, &[&a, &b], None, None)).subsets.unwrap();
        let hostnames: Vec<Option<&str>> = subsets[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| a.hostname.as_deref())
            .collect();
        assert_eq!(hostnames, [Some("a-host"), None]);
    }

    #[test]
    fn written_endpoints_are_unchanged_next_time_and_services_without_selector_left_alone() {
        let svc = http_service();
        let (a, b) = (pod("a", "10.0.0.1", true), pod("b", "10.0.0.2", false));
        let mut ep = created(plan(&svc, &[&a, &b], None, None));
        ep.metadata.resource_version = Some("3".into());
        // As the server gives it back: empty lists dropped, a pod resourceVersion added.
        if let Some(r) = ep.subsets.as_mut().unwrap()[0].addresses.as_mut().unwrap()[0]
            .target_ref
            .as_mut()
        {
            r.resource_version = Some("99".into());
        }
        assert_eq!(
            plan(&svc, &[&a, &b], Some(&ep), None),
            EndpointsChange::Unchanged
        );
        // A pod turning ready is an update.
        let b_ready = pod("b", "10.0.0.2", true);
        match plan(&svc, &[&a, &b_ready], Some(&ep), None) {
            EndpointsChange::Update(updated) => {
                let subsets = updated.subsets.unwrap();
                assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1", "10.0.0.2"]);
            }
            other => panic!("expected an update, got {other:?}"),
        }
        let mut no_selector = http_service();
        no_selector.spec.as_mut().unwrap().selector = None;
        assert_eq!(
            plan(&no_selector, &[&a], None, None),
            EndpointsChange::Unchanged
        );
        let mut external = http_service();
        external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert_eq!(
            plan(&external, &[&a], None, None),
            EndpointsChange::Unchanged
        );
    }

    #[test]
    fn over_capacity_is_truncated_and_annotated() {
        let svc = http_service();
        let pods: Vec<Pod> = (0..1005)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                    i % 2 == 0,
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let ep = created(plan(&svc, &refs, None, None));
        let subsets = ep.subsets.as_ref().unwrap();
        let ready: usize = subsets.iter().map(|s| ips(&s.addresses).len()).sum();
        let not_ready: usize = subsets
            .iter()
            .map(|s| ips(&s.not_ready_addresses).len())
            .sum();
        // Ready addresses are kept; the not-ready ones fill what is left.
        assert_eq!((ready, not_ready), (503, MAX_ENDPOINT_ADDRESSES - 503));
        assert_eq!(
            ep.metadata.annotations.as_ref().unwrap()[OVER_CAPACITY_ANNOTATION],
            TRUNCATED
        );
        // Back under capacity: the annotation goes.
        let mut current = ep.clone();
        current.metadata.resource_version = Some("1".into());
        match plan(&svc, &refs[..10], Some(&current), None) {
            EndpointsChange::Update(ep) => {
                assert!(
                    ep.metadata
                        .annotations
                        .is_none_or(|a| !a.contains_key(OVER_CAPACITY_ANNOTATION))
                );
            }
            other => panic!("expected an update, got {other:?}"),
        }
        // More ready addresses than fit: only ready ones, in proportion.
        let mut subsets = vec![
            EndpointSubset {
                addresses: Some(vec![EndpointAddress::default(); 1500]),
                not_ready_addresses: Some(vec![EndpointAddress::default(); 10]),
                ports: None,
            },
            EndpointSubset {
                addresses: Some(vec![EndpointAddress::default(); 500]),
                not_ready_addresses: None,
                ports: None,
            },
        ];
        assert!(truncate_subsets(&mut subsets));
        assert_eq!(ips(&subsets[0].addresses).len(), 750);
        assert_eq!(ips(&subsets[1].addresses).len(), 250);
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn trigger_time_is_the_service_creation_then_the_earliest_change() {
        let svc = http_service();
        let key = Key::new("ns", "web");
        let mut tracker = TriggerTimeTracker::default();
        let a = pod("a", "10.0.0.1", true);
        let created_at: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(tracker.compute(&key, &svc, &[&a]), Some(created_at));
        // Nothing changed since: no trigger time.
        assert_eq!(tracker.compute(&key, &svc, &[&a]), None);
        let mut b = pod("b", "10.0.0.2", false);
        let changed: Timestamp = "2026-01-01T00:02:00Z".parse().unwrap();
        b.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(Time(changed));
        assert_eq!(tracker.compute(&key, &svc, &[&a, &b]), Some(changed));
        let ep = created(plan(&svc, &[&a, &b], None, Some(changed)));
        assert_eq!(
            ep.metadata.annotations.unwrap()[LAST_CHANGE_TRIGGER_TIME_ANNOTATION],
            "2026-01-01T00:02:00Z"
        );
        tracker.forget(&key);
        assert_eq!(tracker.compute(&key, &svc, &[&a, &b]), Some(created_at));
    }

    #[test]
    fn address_family_follows_the_service() {
        let mut svc = http_service();
        svc.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        let mut dual = pod("a", "10.0.0.1", true);
        dual.status.as_mut().unwrap().pod_ips = Some(vec![
            k8s_openapi::api::core::v1::PodIP {
                ip: "10.0.0.1".into(),
            },
            k8s_openapi::api::core::v1::PodIP {
                ip: "fd00::1".into(),
            },
        ]);
        assert_eq!(pod_address(&svc, &dual).unwrap().ip, "fd00::1");
        let v4_only = pod("b", "10.0.0.2", true);
        assert!(pod_address(&svc, &v4_only).is_none());
    }
}
