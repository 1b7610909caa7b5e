//! What objects use of a namespace's quota, as upstream's quota evaluators
//! (`pkg/quota/v1/evaluator/core`, `pkg/quota/v1/generic`) count it, without any IO:
//!
//! - pods: `pods` and the compute resources (`requests.*`, `limits.*`, bare `cpu`, `memory`,
//!   `ephemeral-storage`, hugepages, `requests.<extended>`) of every pod that is not terminal
//!   (nor stuck terminating past its grace period), with a pod's requests and limits taken
//!   as `resourcehelper.PodRequests`/`PodLimits` take them (max of the containers' sum and of
//!   each init container, restartable init containers added, plus overhead); `count/pods`
//!   counts every pod;
//! - services: `services`, `count/services`, `services.loadbalancers`, `services.nodeports`;
//! - persistent volume claims: `persistentvolumeclaims`, `count/persistentvolumeclaims`,
//!   `requests.storage` and their per-storage-class forms;
//! - any other kind: `count/<resource>[.<group>]` and the legacy names (`configmaps`,
//!   `secrets`, `replicationcontrollers`, `resourcequotas`), one per object.
//!
//! The API server's quota admission charges creates with the same names; the quota
//! controller recounts with these functions. Quantities are kept in milli-units
//! ([`Milli`]) and written back in apimachinery's canonical short form.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The compute resources a pod's containers request or limit, quota'd with their own names.
const COMPUTE_RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];
/// Core kinds counted under their plural name as well as `count/<plural>` (upstream's
/// `legacyObjectCountAliases`; pods, services and claims have evaluators of their own).
pub const LEGACY_OBJECT_COUNTS: [&str; 4] = [
    "configmaps",
    "secrets",
    "replicationcontrollers",
    "resourcequotas",
];
/// What joins a storage class name and a claim resource (`gold.storageclass.storage.k8s.io/
/// requests.storage`).
pub const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";
/// The beta annotation that names a claim's storage class before `spec.storageClassName`.
const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

pub use skiff_client::quantity::{
    Milli, format as format_quantity, is_binary, parse as parse_quantity, units,
};

/// Amounts by quota resource name (`pods`, `requests.cpu`, `count/secrets`, ...).
pub type ResourceAmounts = BTreeMap<String, Milli>;

/// `total += amounts`.
pub fn add_amounts(total: &mut ResourceAmounts, amounts: &ResourceAmounts) {
    for (name, amount) in amounts {
        total.entry(name.clone()).or_default().0 += amount.0;
    }
}

/// `total = max(total, amounts)`, name by name.
fn max_amounts(total: &mut ResourceAmounts, amounts: &ResourceAmounts) {
    for (name, amount) in amounts {
        let entry = total.entry(name.clone()).or_default();
        *entry = (*entry).max(*amount);
    }
}

/// A resource list (`requests`, `limits`, `overhead`) as amounts; malformed quantities are
/// left out.
fn amounts_of(list: Option<&BTreeMap<String, Quantity>>) -> ResourceAmounts {
    list.into_iter()
        .flatten()
        .filter_map(|(name, q)| Some((name.clone(), parse_quantity(&q.0)?)))
        .collect()
}

/// A kind of API object, by group and plural resource name (`apps`, `deployments`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupResource {
    /// The API group (`""` for core).
    pub group: String,
    /// The plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// A kind of the core group.
    pub fn core(resource: &str) -> GroupResource {
        GroupResource {
            group: String::new(),
            resource: resource.to_string(),
        }
    }

    /// `count/<resource>[.<group>]`, the quota resource counting objects of this kind.
    pub fn count_name(&self) -> String {
        if self.group.is_empty() {
            format!("count/{}", self.resource)
        } else {
            format!("count/{}.{}", self.resource, self.group)
        }
    }
}

impl std::fmt::Display for GroupResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// Which objects a quota resource name measures: upstream's evaluator whose
/// `MatchingResources` holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Measured {
    /// Pods: `pods`, `count/pods` and the compute resources.
    Pods,
    /// Services: `services`, `count/services`, `services.loadbalancers`, `services.nodeports`.
    Services,
    /// Claims: `persistentvolumeclaims`, `count/persistentvolumeclaims`, `requests.storage`
    /// and the per-storage-class forms.
    PersistentVolumeClaims,
    /// Objects of any other kind, one each: `count/<resource>[.<group>]` and the legacy names.
    Objects(GroupResource),
}

/// What measures the quota resource `name`, or `None` if nothing does (upstream has no
/// evaluator for it, and the quota controller leaves its usage alone).
pub fn measured_by(name: &str) -> Option<Measured> {
    match name {
        "pods" | "count/pods" => return Some(Measured::Pods),
        "services" | "count/services" | "services.loadbalancers" | "services.nodeports" => {
            return Some(Measured::Services);
        }
        "persistentvolumeclaims" | "count/persistentvolumeclaims" | "requests.storage" => {
            return Some(Measured::PersistentVolumeClaims);
        }
        _ => {}
    }
    if LEGACY_OBJECT_COUNTS.contains(&name) {
        return Some(Measured::Objects(GroupResource::core(name)));
    }
    if let Some(counted) = name.strip_prefix("count/") {
        let (resource, group) = counted.split_once('.').unwrap_or((counted, ""));
        if resource.is_empty() {
            return None;
        }
        return Some(Measured::Objects(GroupResource {
            group: group.to_string(),
            resource: resource.to_string(),
        }));
    }
    if let Some((_, claim_resource)) = name.split_once(STORAGE_CLASS_SUFFIX) {
        return matches!(
            claim_resource,
            "requests.storage" | "persistentvolumeclaims"
        )
        .then_some(Measured::PersistentVolumeClaims);
    }
    if is_pod_compute_resource(name) {
        return Some(Measured::Pods);
    }
    None
}

/// Whether the pod evaluator measures `name`: the compute resources, hugepages and
/// `requests.<extended resource>`.
fn is_pod_compute_resource(name: &str) -> bool {
    if COMPUTE_RESOURCES.contains(&name) || name.starts_with("hugepages-") {
        return true;
    }
    if let Some(limited) = name.strip_prefix("limits.") {
        return COMPUTE_RESOURCES.contains(&limited);
    }
    if let Some(requested) = name.strip_prefix("requests.") {
        return COMPUTE_RESOURCES.contains(&requested)
            || requested.starts_with("hugepages-")
            || is_extended_resource(requested);
    }
    false
}

/// upstream's `IsExtendedResourceName`: a domain-prefixed name outside `kubernetes.io/`.
fn is_extended_resource(name: &str) -> bool {
    name.contains('/') && !name.contains("kubernetes.io/") && !name.starts_with("requests.")
}

/// upstream's `QuotaV1Pod`: whether a pod still uses its compute quota — not terminal
/// (`Succeeded`/`Failed`) and not being deleted for longer than its grace period (a pod
/// stuck terminating on a lost node must not stop its owner from scaling up).
pub fn pod_uses_quota(pod: &Pod, now: Timestamp) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    grace_expires_at(pod).is_none_or(|expiry| now <= expiry)
}

/// When a pod being deleted stops using quota (its deletion time plus grace period).
fn grace_expires_at(pod: &Pod) -> Option<Timestamp> {
    let deletion = pod.metadata.deletion_timestamp.as_ref()?.0;
    let grace = pod.metadata.deletion_grace_period_seconds?;
    deletion
        .checked_add(jiff::SignedDuration::from_secs(grace))
        .ok()
}

/// How long until a pod that uses quota now stops using it on its own (its deletion grace
/// period runs out), if it will.
pub fn until_pod_stops_using_quota(pod: &Pod, now: Timestamp) -> Option<Duration> {
    if !pod_uses_quota(pod, now) {
        return None;
    }
    let expiry = grace_expires_at(pod)?;
    let left = now.duration_until(expiry);
    // Just past the expiry, so the recount sees the pod as gone.
    Duration::try_from(left)
        .ok()
        .map(|d| d + Duration::from_secs(1))
}

/// Which of a container's resource lists to read.
#[derive(Debug, Clone, Copy)]
enum ContainerList {
    Requests,
    Limits,
}

/// One container's requests or limits.
fn container_amounts(container: &Container, list: ContainerList) -> ResourceAmounts {
    amounts_of(container.resources.as_ref().and_then(|r| match list {
        ContainerList::Requests => r.requests.as_ref(),
        ContainerList::Limits => r.limits.as_ref(),
    }))
}

/// upstream's `resourcehelper.PodRequests`/`PodLimits` over one of the containers' lists:
/// max(sum of the containers + restartable init containers, each init container + the
/// restartable ones started before it).
fn pod_container_amounts(pod: &Pod, list: ContainerList) -> ResourceAmounts {
    let Some(spec) = pod.spec.as_ref() else {
        return ResourceAmounts::new();
    };
    let mut total = ResourceAmounts::new();
    for container in &spec.containers {
        add_amounts(&mut total, &container_amounts(container, list));
    }
    let mut restartable = ResourceAmounts::new();
    let mut init_max = ResourceAmounts::new();
    for container in spec.init_containers.iter().flatten() {
        let own = container_amounts(container, list);
        let this = if container.restart_policy.as_deref() == Some("Always") {
            add_amounts(&mut total, &own);
            add_amounts(&mut restartable, &own);
            restartable.clone()
        } else {
            let mut with_sidecars = own;
            add_amounts(&mut with_sidecars, &restartable);
            with_sidecars
        };
        max_amounts(&mut init_max, &this);
    }
    max_amounts(&mut total, &init_max);
    total
}

/// What a pod requests (`resourcehelper.PodRequests`): see [`pod_container_amounts`], plus
/// the pod's overhead.
pub fn pod_requests(pod: &Pod) -> ResourceAmounts {
    let mut requests = pod_container_amounts(pod, ContainerList::Requests);
    let overhead = amounts_of(pod.spec.as_ref().and_then(|s| s.overhead.as_ref()));
    add_amounts(&mut requests, &overhead);
    requests
}

/// What a pod limits (`resourcehelper.PodLimits`): see [`pod_container_amounts`], plus the
/// pod's overhead for the resources that have a limit.
pub fn pod_limits(pod: &Pod) -> ResourceAmounts {
    let mut limits = pod_container_amounts(pod, ContainerList::Limits);
    let overhead = amounts_of(pod.spec.as_ref().and_then(|s| s.overhead.as_ref()));
    for (name, amount) in overhead {
        if let Some(limit) = limits.get_mut(&name) {
            limit.0 += amount.0;
        }
    }
    limits
}

/// A pod's usage (upstream `PodUsageFunc`): `count/pods` always; `pods` and the compute
/// resources only while it [uses quota](pod_uses_quota).
pub fn pod_usage(pod: &Pod, now: Timestamp) -> ResourceAmounts {
    let mut usage = ResourceAmounts::from([("count/pods".to_string(), units(1))]);
    if !pod_uses_quota(pod, now) {
        return usage;
    }
    usage.insert("pods".into(), units(1));
    let requests = pod_requests(pod);
    let limits = pod_limits(pod);
    for name in COMPUTE_RESOURCES {
        if let Some(request) = requests.get(name) {
            usage.insert(name.to_string(), *request);
            usage.insert(format!("requests.{name}"), *request);
        }
        if let Some(limit) = limits.get(name) {
            usage.insert(format!("limits.{name}"), *limit);
        }
    }
    for (name, request) in &requests {
        if name.starts_with("hugepages-") {
            usage.insert(name.clone(), *request);
            usage.insert(format!("requests.{name}"), *request);
        } else if is_extended_resource(name) {
            usage.insert(format!("requests.{name}"), *request);
        }
    }
    usage
}

/// A service's usage: one `services`/`count/services`; a `LoadBalancer` is one
/// `services.loadbalancers`; a `NodePort` (or a `LoadBalancer` that allocates node ports)
/// uses one `services.nodeports` per port.
pub fn service_usage(service: &Service) -> ResourceAmounts {
    let spec = service.spec.as_ref();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map_or(0, |p| i128::try_from(p.len()).unwrap_or(0));
    let service_type = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
    let allocates_node_ports = spec
        .and_then(|s| s.allocate_load_balancer_node_ports)
        .unwrap_or(true);
    let (node_ports, load_balancers) = match service_type {
        "NodePort" => (ports, 0),
        "LoadBalancer" if allocates_node_ports => (ports, 1),
        "LoadBalancer" => (0, 1),
        _ => (0, 0),
    };
    ResourceAmounts::from([
        ("services".to_string(), units(1)),
        ("count/services".to_string(), units(1)),
        ("services.nodeports".to_string(), units(node_ports)),
        ("services.loadbalancers".to_string(), units(load_balancers)),
    ])
}

/// A claim's storage class (the beta annotation, else `spec.storageClassName`), if any.
fn claim_storage_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BETA_STORAGE_CLASS_ANNOTATION))
        .map(String::as_str)
        .or_else(|| {
            claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
        })
        .filter(|class| !class.is_empty())
}

/// A claim's usage: one `persistentvolumeclaims`/`count/persistentvolumeclaims`, its
/// `requests.storage` (the larger of the request and what was allocated, as upstream), and
/// both again under its storage class.
pub fn claim_usage(claim: &PersistentVolumeClaim) -> ResourceAmounts {
    let mut usage = ResourceAmounts::from([
        ("persistentvolumeclaims".to_string(), units(1)),
        ("count/persistentvolumeclaims".to_string(), units(1)),
    ]);
    let class = claim_storage_class(claim);
    if let Some(class) = class {
        usage.insert(
            format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
            units(1),
        );
    }
    let requested = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_quantity(&q.0));
    let allocated = claim
        .status
        .as_ref()
        .and_then(|s| s.allocated_resources.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_quantity(&q.0));
    let storage = match (requested, allocated) {
        (Some(r), Some(a)) => Some(r.max(a)),
        (r, a) => r.or(a),
    };
    if let Some(storage) = storage {
        usage.insert("requests.storage".into(), storage);
        if let Some(class) = class {
            usage.insert(
                format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"),
                storage,
            );
        }
    }
    usage
}

/// The usage of `count` objects of `kind` (its `count/` name, and its legacy name if it has
/// one).
pub fn object_count_usage(kind: &GroupResource, count: u64) -> ResourceAmounts {
    let amount = units(i128::from(count));
    let mut usage = ResourceAmounts::from([(kind.count_name(), amount)]);
    if kind.group.is_empty() && LEGACY_OBJECT_COUNTS.contains(&kind.resource.as_str()) {
        usage.insert(kind.resource.clone(), amount);
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PodSpec, PodStatus, ResourceRequirements, ServicePort,
        ServiceSpec, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn list(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    }

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn quantities_parse_and_format_like_apimachinery() {
        assert_eq!(parse_quantity("100m"), Some(Milli(100)));
        assert_eq!(parse_quantity("0.5"), Some(Milli(500)));
        assert_eq!(parse_quantity("2"), Some(units(2)));
        assert_eq!(parse_quantity("128Mi"), Some(units(128 << 20)));
        assert_eq!(parse_quantity("1G"), Some(units(1_000_000_000)));
        assert_eq!(parse_quantity("1e3"), Some(units(1000)));
        assert_eq!(
            parse_quantity("1n"),
            Some(Milli(1)),
            "finer than milli rounds up"
        );
        assert_eq!(parse_quantity("abc"), None);
        assert_eq!(parse_quantity(""), None);
        assert_eq!(parse_quantity("1e100"), None);
        assert_eq!(format_quantity(Milli(500), false), "500m");
        assert_eq!(format_quantity(units(2), false), "2");
        assert_eq!(format_quantity(units(2000), false), "2k");
        assert_eq!(format_quantity(units(256 << 20), true), "256Mi");
        assert_eq!(format_quantity(Milli(0), true), "0");
        assert!(is_binary("1Gi") && !is_binary("1G"));
    }

    #[test]
    fn pod_requests_take_the_larger_of_containers_and_init_containers_plus_overhead() {
        let mut p = pod(
            vec![
                container(&[("cpu", "1"), ("memory", "1Gi")], &[]),
                container(&[("cpu", "1"), ("memory", "1Gi")], &[]),
            ],
            vec![
                container(&[("cpu", "3"), ("memory", "1Gi")], &[]),
                container(&[("cpu", "1"), ("memory", "3Gi")], &[]),
            ],
        );
        let requests = pod_requests(&p);
        assert_eq!(requests["cpu"], units(3));
        assert_eq!(requests["memory"], units(3 << 30));
        p.spec.as_mut().unwrap().overhead = list(&[("cpu", "500m"), ("memory", "10Mi")]);
        let requests = pod_requests(&p);
        assert_eq!(requests["cpu"], Milli(3500));
        // Limits get overhead only where they are set.
        assert!(pod_limits(&p).is_empty());
    }

    #[test]
    fn restartable_init_containers_add_to_the_sum() {
        let mut sidecar = container(&[("cpu", "1")], &[("cpu", "1")]);
        sidecar.restart_policy = Some("Always".into());
        let p = pod(
            vec![container(&[("cpu", "1")], &[("cpu", "2")])],
            vec![sidecar, container(&[("cpu", "2")], &[])],
        );
        // Requests: sum = 1 + 1 (sidecar) = 2; init max = 2 + 1 (sidecar before it) = 3.
        assert_eq!(pod_requests(&p)["cpu"], units(3));
        // Limits: sum = 2 + 1 = 3; init max = max(1, 0 + 1) = 1.
        assert_eq!(pod_limits(&p)["cpu"], units(3));
    }

    #[test]
    fn pod_usage_names_every_compute_resource() {
        let mut p = pod(
            vec![container(
                &[
                    ("cpu", "250m"),
                    ("memory", "64Mi"),
                    ("hugepages-2Mi", "4Mi"),
                    ("example.com/gpu", "1"),
                ],
                &[("cpu", "500m"), ("memory", "128Mi")],
            )],
            vec![],
        );
        p.spec.as_mut().unwrap().overhead = list(&[("memory", "1Mi")]);
        let usage = pod_usage(&p, t0());
        assert_eq!(usage["pods"], units(1));
        assert_eq!(usage["count/pods"], units(1));
        assert_eq!(usage["cpu"], Milli(250));
        assert_eq!(usage["requests.cpu"], Milli(250));
        assert_eq!(usage["limits.cpu"], Milli(500));
        assert_eq!(usage["memory"], units(65 << 20));
        assert_eq!(usage["requests.memory"], units(65 << 20));
        assert_eq!(usage["limits.memory"], units(129 << 20));
        assert_eq!(usage["hugepages-2Mi"], units(4 << 20));
        assert_eq!(usage["requests.hugepages-2Mi"], units(4 << 20));
        assert_eq!(usage["requests.example.com/gpu"], units(1));
        assert!(!usage.contains_key("example.com/gpu"));
        assert!(!usage.contains_key("ephemeral-storage"), "not requested");
    }

    #[test]
    fn terminal_pods_and_pods_past_their_grace_period_use_no_compute_quota() {
        let running = pod(vec![container(&[("cpu", "1")], &[])], vec![]);
        assert!(pod_uses_quota(&running, t0()));
        for phase in ["Succeeded", "Failed"] {
            let mut done = running.clone();
            done.status = Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            assert!(!pod_uses_quota(&done, t0()));
            let usage = pod_usage(&done, t0());
            assert_eq!(
                usage,
                ResourceAmounts::from([("count/pods".to_string(), units(1))]),
                "{phase}: only the object count"
            );
        }
        let mut deleting = running.clone();
        deleting.metadata.deletion_timestamp = Some(Time(t0()));
        deleting.metadata.deletion_grace_period_seconds = Some(30);
        let at = |secs: i64| t0() + jiff::SignedDuration::from_secs(secs);
        assert!(pod_uses_quota(&deleting, at(30)));
        assert_eq!(
            until_pod_stops_using_quota(&deleting, at(10)),
            Some(Duration::from_secs(21))
        );
        assert!(!pod_uses_quota(&deleting, at(31)));
        assert_eq!(until_pod_stops_using_quota(&deleting, at(31)), None);
        assert_eq!(until_pod_stops_using_quota(&running, t0()), None);
    }

    #[test]
    fn services_count_node_ports_and_load_balancers() {
        let service = |type_: &str, ports: usize, allocate: Option<bool>| Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                ports: Some(vec![ServicePort::default(); ports]),
                allocate_load_balancer_node_ports: allocate,
                ..Default::default()
            }),
            ..Default::default()
        };
        let cluster_ip = service_usage(&service("ClusterIP", 2, None));
        assert_eq!(cluster_ip["services"], units(1));
        assert_eq!(cluster_ip["count/services"], units(1));
        assert_eq!(cluster_ip["services.nodeports"], units(0));
        let node_port = service_usage(&service("NodePort", 2, None));
        assert_eq!(node_port["services.nodeports"], units(2));
        assert_eq!(node_port["services.loadbalancers"], units(0));
        let lb = service_usage(&service("LoadBalancer", 3, None));
        assert_eq!(lb["services.nodeports"], units(3));
        assert_eq!(lb["services.loadbalancers"], units(1));
        let lb_without_ports = service_usage(&service("LoadBalancer", 3, Some(false)));
        assert_eq!(lb_without_ports["services.nodeports"], units(0));
    }

    #[test]
    fn claims_count_storage_per_class() {
        let claim = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some("gold".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: list(&[("storage", "10Gi")]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let usage = claim_usage(&claim);
        assert_eq!(usage["persistentvolumeclaims"], units(1));
        assert_eq!(usage["count/persistentvolumeclaims"], units(1));
        assert_eq!(usage["requests.storage"], units(10 << 30));
        assert_eq!(
            usage["gold.storageclass.storage.k8s.io/requests.storage"],
            units(10 << 30)
        );
        assert_eq!(
            usage["gold.storageclass.storage.k8s.io/persistentvolumeclaims"],
            units(1)
        );
    }

    #[test]
    fn resource_names_map_to_what_measures_them() {
        assert_eq!(measured_by("pods"), Some(Measured::Pods));
        assert_eq!(measured_by("count/pods"), Some(Measured::Pods));
        assert_eq!(measured_by("requests.cpu"), Some(Measured::Pods));
        assert_eq!(measured_by("limits.memory"), Some(Measured::Pods));
        assert_eq!(measured_by("ephemeral-storage"), Some(Measured::Pods));
        assert_eq!(measured_by("requests.hugepages-2Mi"), Some(Measured::Pods));
        assert_eq!(
            measured_by("requests.example.com/gpu"),
            Some(Measured::Pods)
        );
        assert_eq!(measured_by("limits.example.com/gpu"), None);
        assert_eq!(measured_by("services.nodeports"), Some(Measured::Services));
        assert_eq!(measured_by("count/services"), Some(Measured::Services));
        assert_eq!(
            measured_by("requests.storage"),
            Some(Measured::PersistentVolumeClaims)
        );
        assert_eq!(
            measured_by("gold.storageclass.storage.k8s.io/requests.storage"),
            Some(Measured::PersistentVolumeClaims)
        );
        assert_eq!(
            measured_by("secrets"),
            Some(Measured::Objects(GroupResource::core("secrets")))
        );
        assert_eq!(
            measured_by("count/deployments.apps"),
            Some(Measured::Objects(GroupResource {
                group: "apps".into(),
                resource: "deployments".into()
            }))
        );
        assert_eq!(measured_by("count/"), None);
        assert_eq!(measured_by("nonsense"), None);
    }

    #[test]
    fn object_counts_use_count_and_legacy_names() {
        let secrets = object_count_usage(&GroupResource::core("secrets"), 3);
        assert_eq!(secrets["secrets"], units(3));
        assert_eq!(secrets["count/secrets"], units(3));
        let deployments = GroupResource {
            group: "apps".into(),
            resource: "deployments".into(),
        };
        assert_eq!(
            object_count_usage(&deployments, 2),
            ResourceAmounts::from([("count/deployments.apps".to_string(), units(2))])
        );
    }
}
