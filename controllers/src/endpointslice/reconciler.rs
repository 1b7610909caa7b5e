//! The EndpointSlice reconciler, as upstream's `k8s.io/endpointslice` `Reconciler` decides,
//! without any IO: the pods a Service selects against the slices it has, per address type and
//! per port mapping. Existing slices are kept where they still hold desired endpoints (changed
//! endpoints updated in place), filled up before new slices are made, slices left empty are
//! deleted — or, rather than a delete plus a create, rewritten under the old name — and a
//! Service without endpoints keeps one empty placeholder slice.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};

use super::plan::{
    EndpointKey, NodeLookup, PortMapKey, address_types, endpoint_key, endpoint_ports,
    endpoints_equal_beyond_key, new_slice, owned_by, pod_endpoint, port_map_key, slice_labels,
};
use crate::endpoints::plan::{
    LAST_CHANGE_TRIGGER_TIME_ANNOTATION, format_trigger_time, pod_node_name, service_selects,
    should_pod_be_in_endpoints,
};

/// What one sync of a Service does to its slices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlicePlan {
    /// Slices to create (generateName set, no name).
    pub create: Vec<EndpointSlice>,
    /// Slices to replace (name and the cached resourceVersion set: optimistic writes).
    pub update: Vec<EndpointSlice>,
    /// Slices to delete.
    pub delete: Vec<EndpointSlice>,
    /// Nodes that selected pods name but the cache does not have: those pods were left out
    /// and the Service should be synced again later (upstream returns an error).
    pub missing_nodes: Vec<String>,
}

impl SlicePlan {
    /// Whether the plan writes nothing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// The desired endpoints of one port mapping.
struct DesiredGroup {
    ports: Vec<EndpointPort>,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
}

/// Reconciles `service`'s slices (`existing`: the cached slices with its name and this
/// controller's managed-by label, none being deleted) with the pods it selects (`pods`: the
/// pods of its namespace; the selector is applied here). `node`: the cache's view of a node.
/// At most `max_endpoints_per_slice` endpoints go in a slice. `trigger_time` becomes the
/// last-change-trigger-time annotation of every slice written.
pub fn reconcile(
    service: &Service,
    pods: &[&Pod],
    existing: &[&EndpointSlice],
    node: &dyn Fn(&str) -> NodeLookup,
    max_endpoints_per_slice: usize,
    trigger_time: Option<Timestamp>,
) -> SlicePlan {
    let max = max_endpoints_per_slice.max(1);
    let types = address_types(service);
    let mut plan = SlicePlan::default();
    let mut by_type: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        match types.get(slice.address_type.as_str()) {
            Some(address_type) => by_type.entry(address_type).or_default().push(slice),
            // The Service no longer has this address type.
            None => plan.delete.push((*slice).clone()),
        }
    }
    let mut missing = BTreeSet::new();
    for address_type in &types {
        let slices = by_type.remove(address_type).unwrap_or_default();
        reconcile_address_type(
            service,
            pods,
            &slices,
            node,
            max,
            address_type,
            &mut plan,
            &mut missing,
        );
    }
    plan.missing_nodes = missing.into_iter().collect();
    for slice in plan.create.iter_mut().chain(plan.update.iter_mut()) {
        set_trigger_time(slice, trigger_time);
    }
    plan
}

/// Sets or clears the trigger-time annotation.
fn set_trigger_time(slice: &mut EndpointSlice, trigger_time: Option<Timestamp>) {
    let annotations = slice.metadata.annotations.get_or_insert_default();
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
    if annotations.is_empty() {
        slice.metadata.annotations = None;
    }
}

/// Upstream `reconcileByAddressType` plus its `finalize`, appending to `plan`.
#[allow(clippy::too_many_arguments)]
fn reconcile_address_type(
    service: &Service,
    pods: &[&Pod],
    existing: &[&EndpointSlice],
    node: &dyn Fn(&str) -> NodeLookup,
    max: usize,
    address_type: &str,
    plan: &mut SlicePlan,
    missing_nodes: &mut BTreeSet<String>,
) {
    let mut to_create = Vec::new();
    let mut to_update = Vec::new();
    let mut to_delete: Vec<EndpointSlice> = Vec::new();

    let mut existing_by_ports: BTreeMap<PortMapKey, Vec<EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        if owned_by(slice, service) {
            let key = port_map_key(slice.ports.as_deref().unwrap_or_default());
            existing_by_ports
                .entry(key)
                .or_default()
                .push((*slice).clone());
        } else {
            // A slice of an earlier Service with the same name.
            to_delete.push((*slice).clone());
        }
    }

    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut desired: BTreeMap<PortMapKey, DesiredGroup> = BTreeMap::new();
    for pod in pods.iter().copied().filter(|p| service_selects(service, p)) {
        if !should_pod_be_in_endpoints(pod, true) {
            continue;
        }
        let ports = endpoint_ports(service, pod);
        let group = desired
            .entry(port_map_key(&ports))
            .or_insert_with(|| DesiredGroup {
                ports,
                endpoints: BTreeMap::new(),
            });
        let node_name = pod_node_name(pod).unwrap_or_default();
        let zone = match node(node_name) {
            NodeLookup::Found { zone } => zone,
            NodeLookup::Missing => {
                if !publish_not_ready {
                    missing_nodes.insert(node_name.to_string());
                    continue;
                }
                None
            }
        };
        let endpoint = pod_endpoint(pod, zone.as_deref(), service, address_type);
        if !endpoint.addresses.is_empty() {
            group.endpoints.insert(endpoint_key(&endpoint), endpoint);
        }
    }

    for (key, group) in &mut desired {
        let slices = existing_by_ports.get(key).cloned().unwrap_or_default();
        let (create, update, delete) = reconcile_port_mapping(
            service,
            slices,
            std::mem::take(&mut group.endpoints),
            &group.ports,
            address_type,
            max,
        );
        to_create.extend(create);
        to_update.extend(update);
        to_delete.extend(delete);
    }
    // Port mappings no longer wanted.
    for (key, slices) in existing_by_ports {
        if !desired.contains_key(&key) {
            to_delete.extend(slices);
        }
    }

    // A Service without endpoints keeps one empty slice.
    if existing.len() == to_delete.len() && to_create.is_empty() {
        let placeholder = new_slice(service, &[], address_type);
        if to_delete.len() == 1 && is_same_placeholder(&to_delete[0], &placeholder) {
            to_delete.clear();
        } else {
            to_create.push(placeholder);
        }
    }

    // Rather than deleting one slice and creating another, rewrite the one to delete.
    let mut i = 0;
    while i < to_delete.len() && !to_create.is_empty() {
        let old = &to_delete[i];
        if old.address_type == address_type && owned_by(old, service) {
            let old = to_delete.remove(i);
            if let Some(mut slice) = to_create.pop() {
                slice.metadata.name = old.metadata.name.clone();
                slice.metadata.resource_version = old.metadata.resource_version.clone();
                slice.metadata.uid = old.metadata.uid.clone();
                to_update.push(slice);
            }
        } else {
            i += 1;
        }
    }

    // No new slices for a Service being deleted (the garbage collector would race them).
    if service.metadata.deletion_timestamp.is_none() {
        plan.create.extend(to_create);
    }
    plan.update.extend(to_update);
    plan.delete.extend(to_delete);
}

/// Whether an existing slice is the placeholder this sync would create (upstream
/// `placeholderSliceCompare`: same namespace, labels, owners, address type, no endpoints, no
/// ports).
fn is_same_placeholder(existing: &EndpointSlice, placeholder: &EndpointSlice) -> bool {
    let labels = |s: &EndpointSlice| s.metadata.labels.clone().unwrap_or_default();
    let owners = |s: &EndpointSlice| s.metadata.owner_references.clone().unwrap_or_default();
    existing.metadata.namespace == placeholder.metadata.namespace
        && labels(existing) == labels(placeholder)
        && owners(existing) == owners(placeholder)
        && existing.address_type == placeholder.address_type
        && existing.endpoints.is_empty()
        && existing.ports.as_deref().unwrap_or_default().is_empty()
}

/// Upstream `reconcileByPortMapping`: the slices of one port mapping against its desired
/// endpoints. (1) existing slices keep the endpoints still desired (changed ones updated in
/// place), slices left empty are deleted, slices whose Service labels changed are updated;
/// (2) desired endpoints left over fill the slices being updated, fullest first; (3) the rest
/// goes into the unchanged slice closest to full that takes them all, else into new slices.
fn reconcile_port_mapping(
    service: &Service,
    existing: Vec<EndpointSlice>,
    mut desired: BTreeMap<EndpointKey, Endpoint>,
    ports: &[EndpointPort],
    address_type: &str,
    max: usize,
) -> (Vec<EndpointSlice>, Vec<EndpointSlice>, Vec<EndpointSlice>) {
    let mut by_name: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut unchanged: BTreeSet<String> = BTreeSet::new();
    let mut to_update: BTreeSet<String> = BTreeSet::new();
    let mut to_delete: BTreeSet<String> = BTreeSet::new();

    // 1. Keep what is still desired.
    for slice in existing {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let mut kept = Vec::new();
        let mut endpoint_changed = false;
        for endpoint in &slice.endpoints {
            if let Some(wanted) = desired.remove(&endpoint_key(endpoint)) {
                if !endpoints_equal_beyond_key(&wanted, endpoint) {
                    endpoint_changed = true;
                }
                kept.push(wanted);
            }
        }
        let (labels, labels_changed) = slice_labels(slice.metadata.labels.as_ref(), service);
        if endpoint_changed || kept.len() != slice.endpoints.len() {
            if kept.is_empty() {
                to_delete.insert(name.clone());
            } else {
                let mut slice = slice.clone();
                slice.endpoints = kept;
                slice.metadata.labels = Some(labels);
                to_update.insert(name.clone());
                by_name.insert(name, slice);
                continue;
            }
        } else if labels_changed {
            let mut slice = slice.clone();
            slice.metadata.labels = Some(labels);
            to_update.insert(name.clone());
            by_name.insert(name, slice);
            continue;
        } else {
            unchanged.insert(name.clone());
        }
        by_name.insert(name, slice);
    }

    // 2. Fill the slices being updated, fullest first.
    if !desired.is_empty() && !to_update.is_empty() {
        let mut names: Vec<&String> = to_update.iter().collect();
        names.sort_by_key(|n| std::cmp::Reverse(by_name.get(*n).map_or(0, |s| s.endpoints.len())));
        for name in names {
            if let Some(slice) = by_name.get_mut(name) {
                fill(slice, &mut desired, max);
            }
        }
    }

    // 3. The rest: into an unchanged slice that takes it all, else new slices.
    let mut to_create = Vec::new();
    while !desired.is_empty() {
        let mut target = None;
        if desired.len() < max && !unchanged.is_empty() {
            target = slice_to_fill(
                unchanged.iter().filter_map(|n| by_name.get(n)),
                desired.len(),
                max,
            );
        }
        match target {
            Some(name) => {
                if let Some(slice) = by_name.get_mut(&name) {
                    fill(slice, &mut desired, max);
                }
                unchanged.remove(&name);
                to_update.insert(name);
            }
            None => {
                let mut slice = new_slice(service, ports, address_type);
                fill(&mut slice, &mut desired, max);
                to_create.push(slice);
            }
        }
    }

    let take = |names: &BTreeSet<String>| -> Vec<EndpointSlice> {
        names
            .iter()
            .filter_map(|n| by_name.get(n).cloned())
            .collect()
    };
    (to_create, take(&to_update), take(&to_delete))
}

/// Moves desired endpoints into `slice` until it holds `max`.
fn fill(slice: &mut EndpointSlice, desired: &mut BTreeMap<EndpointKey, Endpoint>, max: usize) {
    while slice.endpoints.len() < max {
        let Some((_, endpoint)) = desired.pop_first() else {
            break;
        };
        slice.endpoints.push(endpoint);
    }
}

/// Upstream `getSliceToFill`: the slice that is closest to full after taking `count` more
/// endpoints without going over `max`.
fn slice_to_fill<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    count: usize,
    max: usize,
) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for slice in slices {
        let after = count + slice.endpoints.len();
        if after > max {
            continue;
        }
        let room = max - after;
        if best.as_ref().is_none_or(|(r, _)| room < *r) {
            best = Some((room, slice.metadata.name.clone().unwrap_or_default()));
            if room == 0 {
                break;
            }
        }
    }
    best.map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::{Value, json};

    use super::*;
    use crate::endpointslice::plan::{
        CONTROLLER_NAME, EXPECTATION_TTL, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, SliceTracker,
    };
    use crate::shell::Key;

    fn service(ports: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid",
                         "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                     "ipFamilies": ["IPv4"], "ports": ports},
        }))
        .unwrap()
    }

    fn http_service() -> Service {
        service(json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]))
    }

    /// An endpoint's ready, serving and terminating conditions.
    type Conditions = (Option<bool>, Option<bool>, Option<bool>);

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox",
                      "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready",
                                       "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn pods(n: usize) -> Vec<Pod> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 256, i % 256),
                    true,
                )
            })
            .collect()
    }

    fn zone_a(name: &str) -> NodeLookup {
        match name {
            "node-1" => NodeLookup::Found {
                zone: Some("zone-a".into()),
            },
            _ => NodeLookup::Missing,
        }
    }

    fn run(svc: &Service, pods: &[Pod], existing: &[EndpointSlice], max: usize) -> SlicePlan {
        let pods: Vec<&Pod> = pods.iter().collect();
        let existing: Vec<&EndpointSlice> = existing.iter().collect();
        reconcile(svc, &pods, &existing, &zone_a, max, None)
    }

    /// The plan's creates as the server would store them: named and versioned.
    fn stored(mut slices: Vec<EndpointSlice>) -> Vec<EndpointSlice> {
        for (i, slice) in slices.iter_mut().enumerate() {
            slice.metadata.name = Some(format!("web-{i}"));
            slice.metadata.uid = Some(format!("slice-{i}"));
            slice.metadata.resource_version = Some(format!("{}", 10 + i));
        }
        slices
    }

    fn names(endpoints: &[Endpoint]) -> Vec<String> {
        let mut names: Vec<String> = endpoints
            .iter()
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn one_slice_with_conditions_zone_labels_and_owner() {
        let svc = http_service();
        let mut gone = pod("c", "10.0.0.3", true);
        gone.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        let plan = run(
            &svc,
            &[
                pod("a", "10.0.0.1", true),
                pod("b", "10.0.0.2", false),
                gone,
            ],
            &[],
            100,
        );
        assert!(plan.update.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.create.len(), 1);
        let slice = &plan.create[0];
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("ns"));
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], CONTROLLER_NAME);
        assert_eq!(labels["team"], "a");
        let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.uid.as_str()
            ),
            ("v1", "Service", "svc-uid")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), Some(8080), Some("TCP"))
        );
        let conditions: BTreeMap<String, Conditions> = slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.target_ref.as_ref().unwrap().name.clone().unwrap(),
                    (c.ready, c.serving, c.terminating),
                )
            })
            .collect();
        assert_eq!(conditions["a"], (Some(true), Some(true), Some(false)));
        assert_eq!(conditions["b"], (Some(false), Some(false), Some(false)));
        // Terminating pods stay, not ready, serving as their Ready condition says.
        assert_eq!(conditions["c"], (Some(false), Some(true), Some(true)));
        let a = slice.endpoints.iter().find(|e| e.addresses == ["10.0.0.1"]);
        let a = a.unwrap();
        assert_eq!(a.zone.as_deref(), Some("zone-a"));
        assert_eq!(a.node_name.as_deref(), Some("node-1"));
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_endpoint_ready() {
        let mut svc = http_service();
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let plan = run(&svc, &[pod("b", "10.0.0.2", false)], &[], 100);
        let c = plan.create[0].endpoints[0].conditions.clone().unwrap();
        assert_eq!((c.ready, c.serving), (Some(true), Some(false)));
    }

    #[test]
    fn slices_split_at_the_maximum() {
        let svc = http_service();
        let plan = run(&svc, &pods(250), &[], 100);
        let mut sizes: Vec<usize> = plan.create.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [50, 100, 100]);
        // Stored and synced again: nothing to do.
        let existing = stored(plan.create);
        assert!(run(&svc, &pods(250), &existing, 100).is_empty());
    }

    #[test]
    fn pods_resolving_ports_differently_go_to_different_slices() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "http"}]));
        let a = pod("a", "10.0.0.1", true);
        let mut b = pod("b", "10.0.0.2", true);
        b.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 9090;
        let plan = run(&svc, &[a, b], &[], 100);
        assert_eq!(plan.create.len(), 2);
        let by_port: BTreeMap<i32, Vec<String>> = plan
            .create
            .iter()
            .map(|s| {
                (
                    s.ports.as_ref().unwrap()[0].port.unwrap(),
                    names(&s.endpoints),
                )
            })
            .collect();
        assert_eq!(by_port[&8080], ["a"]);
        assert_eq!(by_port[&9090], ["b"]);
    }

    #[test]
    fn existing_slices_are_reused_not_recreated() {
        let svc = http_service();
        let first = run(
            &svc,
            &[
                pod("a", "10.0.0.1", true),
                pod("b", "10.0.0.2", true),
                pod("c", "10.0.0.3", true),
            ],
            &[],
            100,
        );
        let existing = stored(first.create);
        // c goes, d comes, b turns not ready: the one slice is updated in place.
        let plan = run(
            &svc,
            &[
                pod("a", "10.0.0.1", true),
                pod("b", "10.0.0.2", false),
                pod("d", "10.0.0.4", true),
            ],
            &existing,
            100,
        );
        assert!(plan.create.is_empty() && plan.delete.is_empty(), "{plan:?}");
        assert_eq!(plan.update.len(), 1);
        let slice = &plan.update[0];
        assert_eq!(slice.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(slice.metadata.resource_version.as_deref(), Some("10"));
        assert_eq!(names(&slice.endpoints), ["a", "b", "d"]);
        let b = slice.endpoints.iter().find(|e| e.addresses == ["10.0.0.2"]);
        assert_eq!(b.unwrap().conditions.as_ref().unwrap().ready, Some(false));
        // New pods fill an unchanged slice that has room rather than a new one.
        let plan = run(
            &svc,
            &pods(3),
            &stored(run(&svc, &pods(2), &[], 100).create),
            100,
        );
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(names(&plan.update[0].endpoints), ["p0", "p1", "p2"]);
        // A change of the Service's labels updates the slice's.
        let mut relabelled = svc.clone();
        relabelled.metadata.labels = Some([("team".to_string(), "b".to_string())].into());
        let plan = run(
            &relabelled,
            &pods(2),
            &stored(run(&svc, &pods(2), &[], 100).create),
            100,
        );
        assert_eq!(plan.update.len(), 1);
        assert_eq!(
            plan.update[0].metadata.labels.as_ref().unwrap()["team"],
            "b"
        );
    }

    #[test]
    fn a_service_without_endpoints_keeps_one_empty_placeholder() {
        let svc = http_service();
        let plan = run(&svc, &[], &[], 100);
        assert_eq!(plan.create.len(), 1);
        assert!(plan.create[0].endpoints.is_empty());
        assert_eq!(plan.create[0].ports, Some(vec![]));
        let placeholder = stored(plan.create);
        assert!(run(&svc, &[], &placeholder, 100).is_empty());
        // Endpoints appear: the placeholder is rewritten rather than deleted and recreated.
        let plan = run(&svc, &pods(2), &placeholder, 100);
        assert!(plan.create.is_empty() && plan.delete.is_empty(), "{plan:?}");
        assert_eq!(plan.update[0].metadata.name.as_deref(), Some("web-0"));
        assert_eq!(plan.update[0].endpoints.len(), 2);
        // And when they go, the slice becomes the placeholder again, under its name.
        let full = stored(run(&svc, &pods(2), &[], 100).create);
        let plan = run(&svc, &[], &full, 100);
        assert!(plan.create.is_empty() && plan.delete.is_empty(), "{plan:?}");
        assert!(plan.update[0].endpoints.is_empty());
        assert_eq!(plan.update[0].metadata.name.as_deref(), Some("web-0"));
    }

    #[test]
    fn slices_of_another_service_uid_or_address_type_are_deleted() {
        let svc = http_service();
        let mut foreign = stored(run(&svc, &pods(2), &[], 100).create);
        foreign[0].metadata.owner_references.as_mut().unwrap()[0].uid = "old-uid".into();
        let plan = run(&svc, &pods(2), &foreign, 100);
        // Only owned slices are rewritten: the foreign one is deleted, a new one created.
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(plan.create.len(), 1);
        let mut v6 = stored(run(&svc, &pods(1), &[], 100).create);
        v6[0].address_type = "IPv6".into();
        let plan = run(&svc, &pods(1), &v6, 100);
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(plan.create.len(), 1);
    }

    #[test]
    fn pods_on_unknown_nodes_are_left_out_and_reported() {
        let svc = http_service();
        let mut lost = pod("x", "10.0.0.9", true);
        lost.spec.as_mut().unwrap().node_name = Some("gone".into());
        let plan = run(&svc, &[pod("a", "10.0.0.1", true), lost], &[], 100);
        assert_eq!(plan.missing_nodes, ["gone"]);
        assert_eq!(names(&plan.create[0].endpoints), ["a"]);
    }

    #[test]
    fn ipv6_services_get_ipv6_slices() {
        let mut svc = http_service();
        svc.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        let plan = run(&svc, &[pod("a", "fd00::1", true)], &[], 100);
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].address_type, "IPv6");
        assert_eq!(plan.create[0].endpoints[0].addresses, ["fd00::1"]);
    }

    #[test]
    fn the_tracker_tells_a_stale_cache_and_our_own_events() {
        let svc = http_service();
        let key = Key::new("ns", "web");
        let now = std::time::Instant::now();
        let mut tracker = SliceTracker::default();
        let written = stored(run(&svc, &pods(1), &[], 100).create);
        tracker.wrote(&key, &written[0], now);
        // Not in the cache yet: stale.
        assert!(tracker.is_stale(&key, &[], now));
        let mut older = written[0].clone();
        older.metadata.resource_version = Some("9".into());
        assert!(tracker.is_stale(&key, &[&older], now));
        assert!(!tracker.is_stale(&key, &[&written[0]], now));
        // Expectations expire: a cache that never shows a write holds nothing back forever.
        assert!(!tracker.is_stale(&key, &[], now + EXPECTATION_TTL));
        // Our own write coming back is no news; anything else is.
        assert!(!tracker.should_sync(&key, &written[0]));
        assert!(tracker.should_sync(&key, &older));
        tracker.deleted(&key, "web-0", now);
        assert!(tracker.is_stale(&key, &[&written[0]], now));
        assert!(!tracker.observed_deletion(&key, "web-0"));
        assert!(!tracker.is_stale(&key, &[], now));
        // A deletion by someone else is news.
        assert!(tracker.observed_deletion(&key, "web-7"));
    }
}
