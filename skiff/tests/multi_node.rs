//! Two real node agents, each in a network namespace of its own (a node: its own links,
//! routes, bridge and iptables) on a switch (a bridge in a third namespace), under a store,
//! an API server (reached by the nodes at the switch's address) and real runc pods: each
//! agent routes the other node's pod subnet via the other node's InternalIP (host-gw), so a
//! pod on one node fetches from a pod on the other; a Node that goes loses its route. Nothing
//! here touches the machine's own routes or rules: every address is inside the test's
//! namespaces or on the test's own link to them.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_agent.rs"]
mod node_agent;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::process::Command;
use std::time::Duration;

use control_plane::{Cluster, poll_until};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use node_agent::{Agent, Registry};

/// The switch's subnet: the test's own end is .254, node N is .N.
const SWITCH_PREFIX: &str = "10.89.0";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and links of the test, removed on drop.
struct Fabric {
    switch: String,
    nodes: Vec<String>,
    root_link: String,
}

impl Fabric {
    fn build(nodes: usize) -> Fabric {
        let id = std::process::id() % 10000;
        let fabric = Fabric {
            switch: format!("skiff-mn-{id}-sw"),
            nodes: (1..=nodes).map(|n| format!("skiff-mn-{id}-n{n}")).collect(),
            root_link: format!("skmr{id}"),
        };
        ip(&["netns", "add", &fabric.switch]);
        ip(&["-n", &fabric.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &fabric.switch, "link", "set", "br0", "up"]);
        // The test's own end (the API server is reached here).
        let root_peer = format!("skms{id}");
        ip(&[
            "link",
            "add",
            &fabric.root_link,
            "type",
            "veth",
            "peer",
            "name",
            &root_peer,
            "netns",
            &fabric.switch,
        ]);
        ip(&[
            "-n",
            &fabric.switch,
            "link",
            "set",
            &root_peer,
            "master",
            "br0",
            "up",
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{SWITCH_PREFIX}.254/24"),
            "dev",
            &fabric.root_link,
        ]);
        ip(&["link", "set", &fabric.root_link, "up"]);
        for (i, ns) in fabric.nodes.iter().enumerate() {
            let n = i + 1;
            let port = format!("skm{id}p{n}");
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &fabric.switch,
            ]);
            ip(&[
                "-n",
                &fabric.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{SWITCH_PREFIX}.{n}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        fabric
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_link])
            .output();
        for ns in self.nodes.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The agents' log tails, for a failure.
fn logs(agents: &[Agent]) -> String {
    agents
        .iter()
        .map(|a| format!("{} log:\n{}", a.name, a.log_tail(40)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn pod(name: &str, node: &str, command: &str, restart: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "restartPolicy": restart, "terminationGracePeriodSeconds": 1,
          "containers": [{"name": "main", "image": "offline/tools:7", "imagePullPolicy": "Never",
                          "command": ["sh", "-c", command]}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_pods_on_another_node_through_host_gw_routes() {
    let fabric = Fabric::build(2);
    let switch_ip = format!("{SWITCH_PREFIX}.254");
    let cluster = Cluster::api_only(&[
        "--bind-address",
        "0.0.0.0",
        "--advertise-address",
        &switch_ip,
    ])
    .await;
    // The nodes reach the API server at the switch's address.
    let kubeconfig = std::fs::read_to_string(&cluster.kubeconfig)
        .unwrap()
        .replace("https://127.0.0.1:", &format!("https://{switch_ip}:"));
    let node_kubeconfig = cluster.home.path().join("kubeconfig-nodes");
    std::fs::write(&node_kubeconfig, kubeconfig).unwrap();

    // The image, imported on each node (the nodes cannot reach this machine's registry).
    let registry = Registry::start(&["1.36"]);
    let tar = cluster.home.path().join("tools.tar");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1.36", registry.layout.display()))
        .arg(format!("docker-archive:{}:offline/tools:7", tar.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let mut agents = Vec::new();
    for (i, ns) in fabric.nodes.iter().enumerate() {
        let n = i + 1;
        let agent = Agent::start_in(
            ns,
            &node_kubeconfig,
            &format!("node-{n}"),
            88 + n as u8,
            &format!("{SWITCH_PREFIX}.{n}"),
            &format!("10.{}.77.0/24", 88 + n),
            &["--port", "0"],
        );
        let out = Command::new(common::skiff_bin())
            .args(["images", "import"])
            .arg(&tar)
            .arg("--root-dir")
            .arg(&agent.root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        agents.push(agent);
    }
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    poll_until(
        "both nodes Ready",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || logs(&agents),
        async || {
            let list = nodes.list(&Default::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            (ready == 2).then_some(())
        },
    )
    .await;
    // Each node routes the other's pod subnet via the other's address.
    for (i, ns) in fabric.nodes.iter().enumerate() {
        let other = 2 - i;
        let want = format!("10.{}.77.0/24 via {SWITCH_PREFIX}.{other}", 88 + other);
        poll_until(
            &format!("{ns}: {want}"),
            Duration::from_secs(30),
            Duration::from_millis(250),
            || logs(&agents),
            async || {
                let out = Command::new("ip")
                    .args(["-n", ns, "route", "show", "proto", "99"])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .contains(&want)
                    .then_some(())
            },
        )
        .await;
    }

    // A server on node 2, a client on node 1.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod(
            "server",
            "node-2",
            "mkdir -p /www && echo from-node-2 > /www/index.html && exec httpd -f -p 8080 -h /www",
            "Always",
        ),
    )
    .await
    .unwrap();
    let server_ip = poll_until(
        "the server Running with an IP",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || logs(&agents),
        async || {
            let p = pods.get("server").await.ok()?;
            (phase(&p) == "Running").then(|| p.status?.pod_ip).flatten()
        },
    )
    .await;
    assert!(server_ip.starts_with("10.90.77."), "{server_ip}");
    let fetch = format!(
        "for i in $(seq 1 20); do wget -qO- http://{server_ip}:8080/ && exit 0; sleep 1; done; exit 1"
    );
    pods.create(
        &PostParams::default(),
        &pod("client", "node-1", &fetch, "Never"),
    )
    .await
    .unwrap();
    let client = poll_until(
        "the client done",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || logs(&agents),
        async || {
            let p = pods.get("client").await.ok()?;
            matches!(phase(&p).as_str(), "Succeeded" | "Failed").then_some(p)
        },
    )
    .await;
    let uid = client.metadata.uid.clone().unwrap();
    let log = agents[0].container_log("default", "client", &uid, "main", 0);
    assert_eq!(phase(&client), "Succeeded", "{log}\n{}", logs(&agents));
    assert_eq!(log.trim(), "from-node-2");

    // Node 2 goes: node 1 drops its route.
    let _ = pods
        .delete("server", &DeleteParams::default().grace_period(0))
        .await;
    let mut second = agents.pop().unwrap();
    second.kill9();
    nodes
        .delete("node-2", &DeleteParams::default())
        .await
        .unwrap();
    poll_until(
        "node-1 without a route to node-2's pods",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || logs(&agents),
        async || {
            let out = Command::new("ip")
                .args(["-n", &fabric.nodes[0], "route", "show", "proto", "99"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    drop(second);
    let _ = pods
        .delete("client", &DeleteParams::default().grace_period(0))
        .await;
}
