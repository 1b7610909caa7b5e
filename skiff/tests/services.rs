//! Service addresses as real processes (`skiff store`, two `skiff apiserver`s) and real
//! kubectl and kube-rs: the `kubernetes` Service at the range's first address with both API
//! servers in its Endpoints (and one gone after it stops); 200 Services created at once
//! through both API servers get 200 distinct ClusterIPs and distinct NodePorts; a taken
//! ClusterIP or NodePort is refused with kube-apiserver's words; deleting Services gives their
//! addresses back.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::collections::BTreeSet;
use std::time::Duration;

use control_plane::{Cluster, kube_client, wait_for};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// Services created at once in the uniqueness check.
const SERVICES: usize = 200;

/// The API server ports the `kubernetes` Endpoints list.
async fn endpoint_ports(api: &Api<Endpoints>) -> Option<BTreeSet<i32>> {
    let ep = api.get("kubernetes").await.ok()?;
    let mut ports = BTreeSet::new();
    for subset in ep.subsets.iter().flatten() {
        let addresses: Vec<_> = subset.addresses.iter().flatten().collect();
        if addresses.iter().any(|a| a.ip != "127.0.0.1") {
            return None;
        }
        for p in subset.ports.iter().flatten() {
            if !addresses.is_empty() {
                ports.insert(p.port);
            }
        }
    }
    Some(ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_addresses_are_unique_across_api_servers_and_given_back() {
    let cluster = Cluster::api_only(&[]).await;
    let (mut second, second_kubeconfig) = cluster.another_api_server();
    let first_port = i32::from(cluster.api.port);
    let second_port = i32::from(second.port);

    // The kubernetes Service, and both API servers in its Endpoints.
    let default_services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let kubernetes = default_services
        .get("kubernetes")
        .await
        .expect("kubernetes Service");
    let spec = kubernetes.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.1"));
    let port = &spec.ports.expect("ports")[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("https"), 443));
    let endpoints: Api<Endpoints> = Api::namespaced(cluster.client.clone(), "default");
    wait_for(
        "both API servers in the kubernetes Endpoints",
        Duration::from_secs(30),
        async || {
            let ports = endpoint_ports(&endpoints).await?;
            (ports == BTreeSet::from([first_port, second_port])).then_some(())
        },
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "default");
    let slice = slices
        .get("kubernetes")
        .await
        .expect("kubernetes EndpointSlice");
    assert_eq!(
        slice
            .labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str),
        Some("kubernetes")
    );
    assert_eq!(slice.endpoints[0].addresses, vec!["127.0.0.1".to_string()]);

    // 200 Services at once, half NodePort, alternating between the two API servers.
    cluster.kubectl_ok(&["create", "namespace", "many"]);
    let clients = [
        cluster.client.clone(),
        kube_client(&second_kubeconfig).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..SERVICES {
        let api: Api<Service> = Api::namespaced(clients[i % 2].clone(), "many");
        tasks.push(tokio::spawn(async move {
            let kind = if i % 4 < 2 { "NodePort" } else { "ClusterIP" };
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("s{i}")},
                "spec": {"type": kind, "selector": {"app": "x"}, "ports": [{"port": 80}]}
            }))
            .unwrap();
            api.create(&PostParams::default(), &svc).await
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("create");
    }
    let many: Api<Service> = Api::namespaced(cluster.client.clone(), "many");
    let list = many.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), SERVICES);
    let mut ips = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for svc in &list.items {
        let spec = svc.spec.as_ref().unwrap();
        let ip = spec.cluster_ip.clone().expect("a ClusterIP");
        assert!(ip.starts_with("10.43.") && ip != "10.43.0.1", "{ip}");
        assert!(ips.insert(ip.clone()), "ClusterIP {ip} twice");
        if spec.type_.as_deref() == Some("NodePort") {
            let port = spec.ports.as_ref().unwrap()[0]
                .node_port
                .expect("a nodePort");
            assert!((30000..=32767).contains(&port), "{port}");
            assert!(node_ports.insert(port), "NodePort {port} twice");
        }
    }
    assert_eq!((ips.len(), node_ports.len()), (SERVICES, SERVICES / 2));

    // A taken ClusterIP or NodePort, with kube-apiserver's words.
    let taken_ip = ips.iter().next().unwrap().clone();
    let out = cluster.kubectl(&[
        "create",
        "service",
        "clusterip",
        "dup",
        "-n",
        "many",
        "--tcp=80",
        "--clusterip",
        &taken_ip,
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!(
            "failed to allocate IP {taken_ip}: provided IP is already allocated"
        )),
        "{err}"
    );
    let taken_port = node_ports.iter().next().unwrap().to_string();
    let out = cluster.kubectl(&[
        "create",
        "service",
        "nodeport",
        "dup",
        "-n",
        "many",
        "--tcp=80",
        "--node-port",
        &taken_port,
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!(
            "spec.ports[0].nodePort: Invalid value: {taken_port}: provided port is already allocated"
        )),
        "{err}"
    );

    // Deleting the Services gives their addresses back (the namespace's too).
    many.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete the Services");
    cluster.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "again",
        "-n",
        "default",
        "--tcp=80",
        "--clusterip",
        &taken_ip,
    ]);
    cluster.kubectl_ok(&[
        "create",
        "service",
        "nodeport",
        "again-np",
        "-n",
        "default",
        "--tcp=80",
        "--node-port",
        &taken_port,
    ]);

    // The second API server stops: it takes itself out of the Endpoints.
    let pid = second.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = second.child.wait();
    wait_for(
        "the stopped API server out of the kubernetes Endpoints",
        Duration::from_secs(10),
        async || {
            let ports = endpoint_ports(&endpoints).await?;
            (ports == BTreeSet::from([first_port])).then_some(())
        },
    )
    .await;
}
