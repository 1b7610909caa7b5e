//! The EndpointSlice controller's building blocks, as upstream's `k8s.io/endpointslice`
//! (`utils.go`, `util/`) defines them, without any IO: a pod's endpoint for an address type
//! (addresses, ready/serving/terminating, node, zone, hostname, pod reference), the ports a
//! pod resolves a Service's ports to (pods resolving differently go to different slices), the
//! identity of an endpoint within a slice, a slice's labels and owner, and the
//! [`SliceTracker`] that tells a stale informer cache from a current one. The reconciliation
//! itself is in [`super::reconciler`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::endpoints::plan::{
    HEADLESS_SERVICE_LABEL, find_port, hostname_for, is_headless, is_ipv6, is_service_ip_set,
    pod_ips, pod_node_name, pod_reference, protocol_or_tcp, service_ports,
};
use crate::pods::is_ready;
use crate::shell::Key;

/// The label naming the Service a slice belongs to (`discovery.LabelServiceName`).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice (`discovery.LabelManagedBy`).
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The node label holding the node's zone (`v1.LabelTopologyZone`).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// `--max-endpoints-per-slice`'s default.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The `addressType` of IPv4 slices.
pub const IPV4: &str = "IPv4";
/// The `addressType` of IPv6 slices.
pub const IPV6: &str = "IPv6";

/// What the controller knows of a pod's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLookup {
    /// No such Node in the cache (or the pod names none).
    Missing,
    /// The Node exists; its zone label, if set and not empty.
    Found { zone: Option<String> },
}

/// The address types a Service's slices have (upstream `getAddressTypesForService`): its
/// `ipFamilies`; without them the cluster IP's family; a headless Service without them gets
/// both.
pub fn address_types(service: &Service) -> BTreeSet<&'static str> {
    let spec = service.spec.as_ref();
    let mut types: BTreeSet<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|family| match family.as_str() {
            "IPv4" => Some(IPV4),
            "IPv6" => Some(IPV6),
            _ => None,
        })
        .collect();
    if !types.is_empty() {
        return types;
    }
    if is_service_ip_set(service) {
        let ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        types.insert(if is_ipv6(ip) { IPV6 } else { IPV4 });
        return types;
    }
    types.insert(IPV4);
    types.insert(IPV6);
    types
}

/// The pod's addresses of one address type, each re-formatted canonically.
fn addresses_of(pod: &Pod, address_type: &str) -> Vec<String> {
    pod_ips(pod)
        .into_iter()
        .filter_map(|ip| {
            let parsed: IpAddr = ip.parse().ok()?;
            let wanted = if parsed.is_ipv6() { IPV6 } else { IPV4 };
            (wanted == address_type).then(|| parsed.to_string())
        })
        .collect()
}

/// The endpoint of `pod` in a slice of `address_type` (upstream `podToEndpoint`): serving is
/// the pod's `Ready` condition, terminating its `deletionTimestamp`, ready is serving and not
/// terminating — or always with `publishNotReadyAddresses`.
pub fn pod_endpoint(
    pod: &Pod,
    zone: Option<&str>,
    service: &Service,
    address_type: &str,
) -> Endpoint {
    let serving = is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let ready = publish_not_ready || (serving && !terminating);
    Endpoint {
        addresses: addresses_of(pod, address_type),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(pod_reference(pod)),
        node_name: pod_node_name(pod).map(str::to_string),
        zone: zone.filter(|z| !z.is_empty()).map(str::to_string),
        hostname: hostname_for(pod, service),
        deprecated_topology: None,
        hints: None,
    }
}

/// The slice ports `pod` resolves the Service's ports to (upstream `getEndpointPorts`): one
/// per Service port whose target the pod has; none for a headless Service without ports.
pub fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = service_ports(service);
    if ports.is_empty() && is_headless(service) {
        return Vec::new();
    }
    ports
        .iter()
        .filter_map(|port| {
            let number = find_port(pod, port)?;
            Some(EndpointPort {
                name: Some(port.name.clone().unwrap_or_default()),
                port: Some(number),
                protocol: Some(protocol_or_tcp(port.protocol.as_deref()).to_string()),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect()
}

/// One slice port as the port mapping keys it (name, number, protocol, app protocol).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    name: String,
    port: Option<i32>,
    protocol: String,
    app_protocol: Option<String>,
}

/// The set of ports a group of slices serves (upstream `PortMapKey`): the ports, sorted, with
/// unset names and protocols as the API defaults them.
pub type PortMapKey = Vec<PortKey>;

/// The [`PortMapKey`] of a list of ports.
pub fn port_map_key(ports: &[EndpointPort]) -> PortMapKey {
    let mut key: Vec<PortKey> = ports
        .iter()
        .map(|p| PortKey {
            name: p.name.clone().unwrap_or_default(),
            port: p.port,
            protocol: protocol_or_tcp(p.protocol.as_deref()).to_string(),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    key.sort();
    key
}

/// An endpoint's identity within a Service's slices (upstream `hashEndpoint`): its sorted
/// addresses, hostname and target namespace/name. What else differs is an in-place update.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointKey {
    addresses: Vec<String>,
    hostname: String,
    namespace: String,
    name: String,
}

/// The [`EndpointKey`] of an endpoint.
pub fn endpoint_key(endpoint: &Endpoint) -> EndpointKey {
    let mut addresses = endpoint.addresses.clone();
    addresses.sort();
    let target = endpoint.target_ref.as_ref();
    EndpointKey {
        addresses,
        hostname: endpoint.hostname.clone().unwrap_or_default(),
        namespace: target.and_then(|r| r.namespace.clone()).unwrap_or_default(),
        name: target.and_then(|r| r.name.clone()).unwrap_or_default(),
    }
}

/// A reference without its resourceVersion (a pod's resourceVersion changing changes nothing).
fn without_version(reference: Option<&ObjectReference>) -> Option<ObjectReference> {
    reference.map(|r| ObjectReference {
        resource_version: None,
        ..r.clone()
    })
}

/// Whether two endpoints with the same [`EndpointKey`] are equal in everything else the
/// controller writes (upstream `EndpointsEqualBeyondHash`): node, zone, the three conditions,
/// the target (resourceVersion ignored).
pub fn endpoints_equal_beyond_key(a: &Endpoint, b: &Endpoint) -> bool {
    let conditions = |e: &Endpoint| {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready, c.serving, c.terminating)
    };
    a.node_name == b.node_name
        && a.zone == b.zone
        && conditions(a) == conditions(b)
        && without_version(a.target_ref.as_ref()) == without_version(b.target_ref.as_ref())
}

/// Whether a label is reserved for slices (never copied from the Service).
fn is_reserved_label(key: &str) -> bool {
    key == SERVICE_NAME_LABEL || key == MANAGED_BY_LABEL || key == HEADLESS_SERVICE_LABEL
}

/// The labels a slice of `service` should have, and whether the Service's own labels differ
/// from those the slice carries (upstream `setEndpointSliceLabels`): the Service's labels
/// minus the reserved ones, the headless label for a Service without a cluster IP, the
/// Service's name and the manager.
pub fn slice_labels(
    slice_labels: Option<&BTreeMap<String, String>>,
    service: &Service,
) -> (BTreeMap<String, String>, bool) {
    let current: BTreeMap<&String, &String> = slice_labels
        .into_iter()
        .flatten()
        .filter(|(k, _)| !is_reserved_label(k))
        .collect();
    let mut labels: BTreeMap<String, String> = service
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !is_reserved_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let changed = current.len() != labels.len()
        || current
            .iter()
            .any(|(k, v)| labels.get(k.as_str()) != Some(*v));
    if !is_service_ip_set(service) {
        labels.insert(HEADLESS_SERVICE_LABEL.to_string(), String::new());
    }
    labels.insert(
        SERVICE_NAME_LABEL.to_string(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.to_string(), CONTROLLER_NAME.to_string());
    (labels, changed)
}

/// Whether the slice has an owner reference to this Service (`v1`, `Service`, same uid).
pub fn owned_by(slice: &EndpointSlice, service: &Service) -> bool {
    let Some(uid) = service.metadata.uid.as_deref() else {
        return false;
    };
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.kind == "Service" && r.api_version == "v1")
}

/// The generateName of a Service's slices: `<service>-`, or the bare name when that would be
/// too long for a name.
pub fn slice_name_prefix(service_name: &str) -> String {
    if service_name.len() < 253 {
        format!("{service_name}-")
    } else {
        service_name.to_string()
    }
}

/// A new, empty slice of `service` with these ports and address type (upstream
/// `newEndpointSlice`): generateName, labels, and a controller reference to the Service.
pub fn new_slice(service: &Service, ports: &[EndpointPort], address_type: &str) -> EndpointSlice {
    let (labels, _) = slice_labels(None, service);
    let owner = crate::pods::controller_reference("v1", "Service", &service.metadata);
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(slice_name_prefix(
                service.metadata.name.as_deref().unwrap_or_default(),
            )),
            namespace: service.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        address_type: address_type.to_string(),
        endpoints: Vec::new(),
        ports: Some(ports.to_vec()),
    }
}

/// The key of the Service a slice belongs to (its namespace and service-name label).
pub fn service_key_of(slice: &EndpointSlice) -> Option<Key> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    if name.is_empty() {
        return None;
    }
    Some(Key::new(
        slice.metadata.namespace.as_deref().unwrap_or_default(),
        name,
    ))
}

/// Whether this controller manages the slice (its managed-by label).
pub fn managed_by_us(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == CONTROLLER_NAME)
}

/// How long the [`SliceTracker`] holds an expectation: past it, a cache that still does not
/// show a write (a relist that dropped a deletion event, ...) no longer holds a Service back.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(60);

/// What the controller expects the cache to show of a slice it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// At least this resourceVersion.
    Version(String),
    /// Gone.
    Deleted,
}

/// An expectation and when it was made.
#[derive(Debug, Clone)]
struct Expectation {
    expected: Expected,
    since: Instant,
}

/// Upstream's `EndpointSliceTracker`, by resourceVersion: the slices each Service's syncs
/// wrote, so a sync over a cache that does not show them yet waits instead of writing again
/// (which would create duplicates), and the cache's events for the controller's own writes
/// do not queue the Service again.
#[derive(Debug, Default)]
pub struct SliceTracker {
    services: HashMap<Key, HashMap<String, Expectation>>,
}

/// Whether resourceVersion `cached` is older than `expected` (both numbers; otherwise they
/// cannot be ordered and nothing is assumed).
fn older(cached: Option<&str>, expected: &str) -> bool {
    match (
        cached.and_then(|c| c.parse::<u64>().ok()),
        expected.parse::<u64>(),
    ) {
        (Some(cached), Ok(expected)) => cached < expected,
        _ => false,
    }
}

impl SliceTracker {
    /// The controller wrote `slice` of `service` (created or updated) at `now`.
    pub fn wrote(&mut self, service: &Key, slice: &EndpointSlice, now: Instant) {
        let (Some(name), Some(version)) = (
            slice.metadata.name.clone(),
            slice.metadata.resource_version.clone(),
        ) else {
            return;
        };
        self.set_expectation(service, name, Expected::Version(version), now);
    }

    /// The controller deleted slice `name` of `service` at `now`.
    pub fn deleted(&mut self, service: &Key, name: &str, now: Instant) {
        self.set_expectation(service, name.to_string(), Expected::Deleted, now);
    }

    fn set_expectation(&mut self, service: &Key, name: String, expected: Expected, now: Instant) {
        let slices = self.services.entry(service.clone()).or_default();
        // Expectations past their time go (they are only ever read for this Service).
        slices.retain(|_, e| now.duration_since(e.since) < EXPECTATION_TTL);
        slices.insert(
            name,
            Expectation {
                expected,
                since: now,
            },
        );
    }

    /// Whether the cached slices of `service` are older than what the controller wrote at
    /// most [`EXPECTATION_TTL`] before `now`: a slice it wrote missing or at an older
    /// resourceVersion, or one it deleted still there.
    pub fn is_stale(&self, service: &Key, cached: &[&EndpointSlice], now: Instant) -> bool {
        let Some(expected) = self.services.get(service) else {
            return false;
        };
        expected.iter().any(|(name, expectation)| {
            if now.duration_since(expectation.since) >= EXPECTATION_TTL {
                return false;
            }
            let found = cached
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
            match (&expectation.expected, found) {
                (Expected::Deleted, found) => found.is_some(),
                (Expected::Version(_), None) => true,
                (Expected::Version(version), Some(slice)) => {
                    older(slice.metadata.resource_version.as_deref(), version)
                }
            }
        })
    }

    /// A slice event from the cache: whether it is news to the controller (anything but the
    /// version it wrote itself), so its Service should be synced.
    pub fn should_sync(&self, service: &Key, slice: &EndpointSlice) -> bool {
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        match self
            .services
            .get(service)
            .and_then(|m| m.get(name))
            .map(|e| &e.expected)
        {
            Some(Expected::Version(version)) => {
                slice.metadata.resource_version.as_deref() != Some(version.as_str())
            }
            _ => true,
        }
    }

    /// A slice deletion from the cache: forgets the slice; whether the deletion was not the
    /// controller's own (so its Service should be synced).
    pub fn observed_deletion(&mut self, service: &Key, name: &str) -> bool {
        let Some(expected) = self.services.get_mut(service) else {
            return true;
        };
        let was = expected.remove(name).map(|e| e.expected);
        if expected.is_empty() {
            self.services.remove(service);
        }
        was != Some(Expected::Deleted)
    }

    /// Forgets a deleted Service.
    pub fn forget(&mut self, service: &Key) {
        self.services.remove(service);
    }
}
