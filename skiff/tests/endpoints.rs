//! The `endpoint` and `endpointslice` controllers of `skiff controller-manager` as real
//! processes, with `skiff apiserver` on a `skiff store`, `skiff scheduler` and simulated nodes
//! (`skiff node-sim`), driven with kubectl: an exposed Deployment's Endpoints and
//! EndpointSlice list its pods' IPs on the target port, ready; a deleted pod leaves both; a
//! pod turning not ready moves to `notReadyAddresses` and `ready: false`; a terminating pod
//! leaves the Endpoints and stays in the slice as terminating; scaled to zero the Service has
//! empty subsets and one empty slice; a deleted Service loses its Endpoints (the controller)
//! and its slices (the garbage collector, through their owner reference).
//!
//! The simulated kubelet restarts any pod on its nodes that is not running and ready, so the
//! not-ready and terminating pods are bare pods bound to a Node no simulator runs, whose
//! status the test writes itself.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use control_plane::{Cluster, Proc, wait_for};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The controllers under test and those the scenario needs.
const CONTROLLERS: &str = "endpoint,endpointslice,deployment,replicaset,garbagecollector";
/// How long any one convergence may take.
const CONVERGE: Duration = Duration::from_secs(60);

/// What an Endpoints object says, flattened: ready and not-ready pod names with IPs, ports.
#[derive(Debug, Default, PartialEq)]
struct EndpointsView {
    ready: BTreeMap<String, String>,
    not_ready: BTreeMap<String, String>,
    ports: BTreeSet<i32>,
}

fn endpoints_view(ep: &Endpoints) -> EndpointsView {
    let mut view = EndpointsView::default();
    for subset in ep.subsets.iter().flatten() {
        let pairs = |list: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
            list.iter()
                .flatten()
                .map(|a| {
                    let name = a
                        .target_ref
                        .as_ref()
                        .and_then(|r| r.name.clone())
                        .unwrap_or_default();
                    (name, a.ip.clone())
                })
                .collect::<Vec<_>>()
        };
        view.ready.extend(pairs(&subset.addresses));
        view.not_ready.extend(pairs(&subset.not_ready_addresses));
        view.ports
            .extend(subset.ports.iter().flatten().map(|p| p.port));
    }
    view
}

/// One endpoint of a slice, flattened.
#[derive(Debug, Clone, PartialEq)]
struct SliceEndpoint {
    ip: String,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    zone: Option<String>,
}

/// The slices of a Service, flattened: endpoints by pod name, the slices' ports, the count.
#[derive(Debug, Default)]
struct SlicesView {
    endpoints: BTreeMap<String, SliceEndpoint>,
    ports: BTreeSet<i32>,
    slices: usize,
    owners: BTreeSet<String>,
}

async fn slices_view(client: &Client, service: &str) -> SlicesView {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("list endpointslices");
    let mut view = SlicesView {
        slices: list.items.len(),
        ..SlicesView::default()
    };
    for slice in &list.items {
        assert_eq!(slice.address_type, "IPv4");
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
        for owner in slice.metadata.owner_references.iter().flatten() {
            assert_eq!(
                (owner.kind.as_str(), owner.controller),
                ("Service", Some(true))
            );
            view.owners.insert(owner.uid.clone());
        }
        view.ports
            .extend(slice.ports.iter().flatten().filter_map(|p| p.port));
        for e in &slice.endpoints {
            let name = e
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            let c = e.conditions.clone().unwrap_or_default();
            view.endpoints.insert(
                name,
                SliceEndpoint {
                    ip: e.addresses.first().cloned().unwrap_or_default(),
                    ready: c.ready,
                    serving: c.serving,
                    terminating: c.terminating,
                    zone: e.zone.clone(),
                },
            );
        }
    }
    view
}

async fn endpoints_of(client: &Client, service: &str) -> Option<EndpointsView> {
    Api::<Endpoints>::namespaced(client.clone(), "default")
        .get_opt(service)
        .await
        .expect("get endpoints")
        .map(|ep| endpoints_view(&ep))
}

/// The running, ready pods of `selector` with their IPs (none being deleted).
async fn ready_pod_ips(client: &Client, selector: &str) -> BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    list.items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| Some((p.metadata.name.clone()?, p.status.as_ref()?.pod_ip.clone()?)))
        .collect()
}

/// A bare pod `name` (label `app=manual`) bound to `node`, optionally held by a finalizer.
fn bare_pod(name: &str, node: &str, held: bool) -> Pod {
    let finalizers: Vec<&str> = if held {
        vec!["skiff.test/hold"]
    } else {
        vec![]
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "manual"}, "finalizers": finalizers},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                  "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))
    .expect("pod")
}

/// Writes a pod's status: Running with `ip`, Ready as given.
async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                        "lastTransitionTime": now}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("write pod status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_pods_readiness_deletion_scale_and_service_deletion() {
    let cluster = Cluster::start(2).await;
    let manager = Proc::manager(
        cluster.home.path(),
        &cluster.kubeconfig,
        "controller-manager",
        &[
            "--leader-elect=false",
            &format!("--controllers={CONTROLLERS}"),
        ],
    );
    let client = cluster.client.clone();

    // An exposed Deployment: its three pods, ready, on 8080, in both.
    cluster.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ]);
    cluster.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    let pods = wait_for("3 ready web pods", CONVERGE, async || {
        let pods = ready_pod_ips(&client, "app=web").await;
        (pods.len() == 3).then_some(pods)
    })
    .await;
    wait_for("the Endpoints to list the 3 pods", CONVERGE, async || {
        let out = cluster.kubectl(&["get", "endpoints", "web", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        let ep: Endpoints = serde_json::from_slice(&out.stdout).ok()?;
        let view = endpoints_view(&ep);
        (view.ready == pods && view.not_ready.is_empty()).then_some(view)
    })
    .await
    .ports
    .iter()
    .for_each(|port| assert_eq!(*port, 8080));
    let service_uid = Api::<Service>::namespaced(client.clone(), "default")
        .get("web")
        .await
        .expect("service")
        .metadata
        .uid
        .expect("uid");
    let view = wait_for("the slice to list the 3 pods ready", CONVERGE, async || {
        let view = slices_view(&client, "web").await;
        let ips: BTreeMap<String, String> = view
            .endpoints
            .iter()
            .map(|(name, e)| (name.clone(), e.ip.clone()))
            .collect();
        let all_ready = view.endpoints.values().all(|e| e.ready == Some(true));
        (ips == pods && all_ready).then_some(view)
    })
    .await;
    assert_eq!(view.slices, 1);
    assert_eq!(view.ports, BTreeSet::from([8080]));
    assert_eq!(view.owners, BTreeSet::from([service_uid]));
    assert!(
        view.endpoints.values().all(|e| e.zone.is_some()),
        "{view:?}"
    );

    // Nothing changes: nothing is written.
    let versions = async || {
        let ep = Api::<Endpoints>::namespaced(client.clone(), "default")
            .get("web")
            .await
            .expect("endpoints");
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default")
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .expect("slices");
        let mut versions = vec![ep.metadata.resource_version];
        versions.extend(
            slices
                .items
                .into_iter()
                .map(|s| s.metadata.resource_version),
        );
        versions
    };
    let before = versions().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(versions().await, before, "idle writes");

    // A deleted pod leaves both (its replacement joins).
    let gone = pods.keys().next().expect("a pod").clone();
    cluster.kubectl_ok(&["delete", "pod", &gone, "--wait=false"]);
    wait_for("the deleted pod to leave both", CONVERGE, async || {
        let now = ready_pod_ips(&client, "app=web").await;
        let ep = endpoints_of(&client, "web").await?;
        let slices = slices_view(&client, "web").await;
        let slice_ips: BTreeMap<String, String> = slices
            .endpoints
            .iter()
            .map(|(name, e)| (name.clone(), e.ip.clone()))
            .collect();
        (now.len() == 3
            && !now.contains_key(&gone)
            && ep.ready == now
            && slice_ips == now
            && !ep.ready.contains_key(&gone))
        .then_some(())
    })
    .await;

    // Not ready and terminating pods, on a Node no simulator runs (and nothing schedules to).
    let nodes: Api<Node> = Api::all(client.clone());
    let outside: Node = serde_json::from_value(json!({
        "metadata": {"name": "outside-1", "labels": {"topology.kubernetes.io/zone": "zone-x"}},
        "spec": {"unschedulable": true,
                 "taints": [{"key": "skiff.test/outside", "effect": "NoSchedule"}]},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &outside)
        .await
        .expect("create node");
    cluster.kubectl_ok(&["create", "service", "clusterip", "manual", "--tcp=80:8080"]);
    let bare: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, held) in [("manual-0", true), ("manual-1", false)] {
        bare.create(&PostParams::default(), &bare_pod(name, "outside-1", held))
            .await
            .expect("create bare pod");
    }
    set_status(&bare, "manual-0", "10.250.0.10", true).await;
    set_status(&bare, "manual-1", "10.250.0.11", true).await;
    let both: BTreeMap<String, String> = [
        ("manual-0".to_string(), "10.250.0.10".to_string()),
        ("manual-1".to_string(), "10.250.0.11".to_string()),
    ]
    .into();
    wait_for("both bare pods ready in both", CONVERGE, async || {
        let ep = endpoints_of(&client, "manual").await?;
        let slices = slices_view(&client, "manual").await;
        let ready = slices.endpoints.len() == 2
            && slices
                .endpoints
                .values()
                .all(|e| e.ready == Some(true) && e.zone.as_deref() == Some("zone-x"));
        (ep.ready == both && ready).then_some(())
    })
    .await;

    set_status(&bare, "manual-1", "10.250.0.11", false).await;
    wait_for("manual-1 to turn not ready in both", CONVERGE, async || {
        let ep = endpoints_of(&client, "manual").await?;
        let slices = slices_view(&client, "manual").await;
        let e = slices.endpoints.get("manual-1")?;
        let not_ready =
            (e.ready, e.serving, e.terminating) == (Some(false), Some(false), Some(false));
        (ep.not_ready.get("manual-1").map(String::as_str) == Some("10.250.0.11")
            && ep.ready.keys().collect::<Vec<_>>() == ["manual-0"]
            && not_ready)
            .then_some(())
    })
    .await;

    // manual-0 terminates (its finalizer holds it): out of the Endpoints, terminating in the
    // slice.
    cluster.kubectl_ok(&["delete", "pod", "manual-0", "--wait=false"]);
    wait_for("manual-0 to be terminating", CONVERGE, async || {
        let ep = endpoints_of(&client, "manual").await?;
        let slices = slices_view(&client, "manual").await;
        let e = slices.endpoints.get("manual-0")?;
        let terminating =
            (e.ready, e.serving, e.terminating) == (Some(false), Some(true), Some(true));
        (ep.ready.is_empty() && !ep.not_ready.contains_key("manual-0") && terminating).then_some(())
    })
    .await;
    // Its node confirms with a grace-0 delete (the finalizer still holds it), then the
    // finalizer goes and so does the pod.
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "manual-0",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    bare.patch(
        "manual-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
    wait_for("manual-0 to leave the slice", CONVERGE, async || {
        let slices = slices_view(&client, "manual").await;
        (!slices.endpoints.contains_key("manual-0") && slices.endpoints.contains_key("manual-1"))
            .then_some(())
    })
    .await;

    // Scaled to zero: empty subsets, one empty slice.
    cluster.kubectl_ok(&["scale", "deployment", "web", "--replicas=0"]);
    wait_for("empty subsets and one empty slice", CONVERGE, async || {
        let ep = endpoints_of(&client, "web").await?;
        let slices = slices_view(&client, "web").await;
        (ep == EndpointsView::default() && slices.slices == 1 && slices.endpoints.is_empty())
            .then_some(())
    })
    .await;
    let raw: Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "endpoints", "web", "-o", "json"]))
            .expect("endpoints json");
    assert!(raw["subsets"].as_array().is_none_or(Vec::is_empty), "{raw}");

    // The Service goes: its Endpoints (the controller) and slices (the garbage collector).
    cluster.kubectl_ok(&["delete", "service", "web"]);
    wait_for(
        "the Endpoints and slices of web to go",
        CONVERGE,
        async || {
            let ep = endpoints_of(&client, "web").await;
            let slices = slices_view(&client, "web").await;
            (ep.is_none() && slices.slices == 0).then_some(())
        },
    )
    .await;
    // The other Service is untouched.
    assert!(endpoints_of(&client, "manual").await.is_some());

    let log = manager.log();
    assert!(!log.contains("panicked"), "{log}");
}
