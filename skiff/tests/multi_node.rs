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
use node_agent::{Agent, Registry, STUB_RESOLVER};

/// The switch's subnet of the first test: the test's own end is .254, node N is .N.
const SWITCH_PREFIX: &str = "10.89.0";
/// The second test's.
const SERVICES_SWITCH_PREFIX: &str = "10.88.0";

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
    /// `nodes` node namespaces on a switch with addresses `<prefix>.N`; `tag` (one letter)
    /// keeps the names of tests running at once apart.
    fn build(tag: &str, prefix: &str, nodes: usize) -> Fabric {
        let id = std::process::id() % 10000;
        let fabric = Fabric {
            switch: format!("skiff-mn{tag}-{id}-sw"),
            nodes: (1..=nodes)
                .map(|n| format!("skiff-mn{tag}-{id}-n{n}"))
                .collect(),
            root_link: format!("skm{tag}r{id}"),
        };
        ip(&["netns", "add", &fabric.switch]);
        ip(&["-n", &fabric.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &fabric.switch, "link", "set", "br0", "up"]);
        // The test's own end (the API server is reached here).
        let root_peer = format!("skm{tag}s{id}");
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
            &format!("{prefix}.254/24"),
            "dev",
            &fabric.root_link,
        ]);
        ip(&["link", "set", &fabric.root_link, "up"]);
        for (i, ns) in fabric.nodes.iter().enumerate() {
            let n = i + 1;
            let port = format!("skm{tag}{id}p{n}");
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
                &format!("{prefix}.{n}/24"),
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

/// A cluster of node agents in namespaces of their own: the fabric, the control plane (its
/// API server reached by the nodes at the switch's address, `<prefix>.254`), the nodes'
/// kubeconfig, and node N's agent with InternalIP `<prefix>.N`, pod CIDR
/// `10.<first_subnet + N>.77.0/24` and the test image imported (the nodes cannot reach this
/// machine's registry). Fields drop in reverse order: agents, then the cluster, then the
/// namespaces.
struct Nodes {
    agents: Vec<Agent>,
    kubeconfig: std::path::PathBuf,
    cluster: Cluster,
    _registry: Registry,
    fabric: Fabric,
}

impl Nodes {
    async fn start(
        tag: &str,
        prefix: &str,
        count: usize,
        first_subnet: u8,
        agent_extra: &[&str],
    ) -> Nodes {
        let fabric = Fabric::build(tag, prefix, count);
        let switch_ip = format!("{prefix}.254");
        let cluster = Cluster::api_only(&[
            "--bind-address",
            "0.0.0.0",
            "--advertise-address",
            &switch_ip,
        ])
        .await;
        let kubeconfig_text = std::fs::read_to_string(&cluster.kubeconfig)
            .unwrap()
            .replace("https://127.0.0.1:", &format!("https://{switch_ip}:"));
        let kubeconfig = cluster.home.path().join("kubeconfig-nodes");
        std::fs::write(&kubeconfig, kubeconfig_text).unwrap();
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
            let subnet = first_subnet + n as u8;
            let agent = Agent::start_in(
                ns,
                &kubeconfig,
                &format!("node-{n}"),
                subnet,
                &format!("{prefix}.{n}"),
                &format!("10.{subnet}.77.0/24"),
                &[&["--port", "0"], agent_extra].concat(),
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
        Nodes {
            agents,
            kubeconfig,
            cluster,
            _registry: registry,
            fabric,
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
    let Nodes {
        agents,
        cluster,
        fabric,
        ..
    } = Nodes::start("a", SWITCH_PREFIX, 2, 88, &[]).await;
    let mut agents = agents;
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

/// A process run inside a node's network namespace (`nsenter --net`), killed on drop.
struct InNode(std::process::Child);

impl InNode {
    fn start(ns: &str, log: &std::path::Path, program: &std::path::Path, args: &[&str]) -> InNode {
        let log = std::fs::File::create(log).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(program)
            .args(args)
            .env("SKIFF_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nsenter");
        InNode(child)
    }
}

impl Drop for InNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of `log` between the marker lines `from` and `to`.
fn section<'a>(log: &'a str, from: &str, to: &str) -> Vec<&'a str> {
    log.lines()
        .skip_while(|l| l.trim() != from)
        .skip(1)
        .take_while(|l| l.trim() != to)
        .collect()
}

/// Two nodes in their own namespaces, `skiff proxy` on each (its rules in the node's own
/// iptables) and `skiff dns` on the first: a 3-replica httpd Deployment spread over both
/// nodes, reached from a pod on the first node by ClusterIP (300 requests, every pod ≥ 15 %),
/// by full and short name, a headless Service listing every pod, an outside name answered
/// upstream, and the NodePort on both nodes' addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_answer_across_nodes_by_cluster_ip_node_port_and_name() {
    let prefix = SERVICES_SWITCH_PREFIX;
    // Pod subnets 10.85.77.0/24 and 10.86.77.0/24; node 1's bridge address serves DNS.
    let dns_ip = "10.85.77.1";
    let Nodes {
        agents,
        kubeconfig: node_kubeconfig,
        mut cluster,
        fabric,
        ..
    } = Nodes::start("b", prefix, 2, 84, &["--cluster-dns", dns_ip]).await;
    cluster.start_scheduler();
    cluster.start_manager(&["--controllers", "deployment,replicaset,endpointslice"]);
    let home = cluster.home.path().to_path_buf();
    let node_kc = node_kubeconfig.to_string_lossy().to_string();
    let _proxies: Vec<InNode> = fabric
        .nodes
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let node = format!("node-{}", i + 1);
            InNode::start(
                ns,
                &home.join(format!("proxy-{node}.log")),
                &common::skiff_bin(),
                &[
                    "proxy",
                    "--kubeconfig",
                    &node_kc,
                    "--hostname-override",
                    &node,
                    "--cluster-cidr",
                    "10.84.0.0/14",
                    "--iptables-min-sync-period",
                    "100ms",
                ],
            )
        })
        .collect();

    // The Deployment, spread 2/1 over the nodes, and its Services.
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
              "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
                "containers": [{"name": "httpd", "image": "offline/tools:7", "imagePullPolicy": "Never",
                  "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]}]}}}
        }))
        .unwrap();
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(cluster.client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    cluster.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "--type=NodePort",
    ]);
    cluster.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web-headless",
        "--cluster-ip=None",
        "--port=8080",
    ]);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let web: Vec<Pod> = poll_until(
        "3 web pods Running on both nodes",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || logs(&agents),
        async || {
            let list = pods
                .list(&kube::api::ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let running: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| {
                    phase(p) == "Running" && p.status.as_ref().is_some_and(|s| s.pod_ip.is_some())
                })
                .collect();
            let nodes: std::collections::BTreeSet<_> = running
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            (running.len() == 3 && nodes.len() == 2).then_some(running)
        },
    )
    .await;
    let web_ips: Vec<String> = web
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();

    // DNS on node 1 (its bridge exists now), other names to a stub in node 1's namespace.
    let stub_port = common::free_port().to_string();
    let stub_script = home.join("stub-resolver.py");
    std::fs::write(&stub_script, STUB_RESOLVER).unwrap();
    let _stub = InNode::start(
        &fabric.nodes[0],
        &home.join("stub.log"),
        std::path::Path::new("/usr/bin/python3"),
        &[&stub_script.to_string_lossy(), &stub_port],
    );
    let _dns = InNode::start(
        &fabric.nodes[0],
        &home.join("dns.log"),
        &common::skiff_bin(),
        &[
            "dns",
            "--kubeconfig",
            &node_kc,
            "--listen",
            &format!("{dns_ip}:53"),
            "--upstream",
            &format!("127.0.0.1:{stub_port}"),
        ],
    );
    let cluster_ip = cluster.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = cluster.kubectl_ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);

    // The client on node 1: waits for the ClusterIP, then asks everything once.
    let script = format!(
        "for i in $(seq 1 30); do wget -qO- http://{cluster_ip}/ >/dev/null 2>&1 && break; sleep 1; done; \
         for i in $(seq 1 30); do nslookup web.default.svc.cluster.local >/dev/null 2>&1 && break; sleep 1; done; \
         echo SPREAD; for i in $(seq 1 300); do wget -qO- http://{cluster_ip}/; done; \
         echo NAME; wget -qO- http://web.default.svc.cluster.local/; \
         echo SHORT; wget -qO- http://web/; \
         echo HEADLESS; nslookup web-headless.default.svc.cluster.local; \
         echo OUTSIDE; nslookup outside.test; echo END"
    );
    pods.create(
        &PostParams::default(),
        &pod("client", "node-1", &script, "Never"),
    )
    .await
    .unwrap();
    let client = poll_until(
        "the client done",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || logs(&agents),
        async || {
            let p = pods.get("client").await.ok()?;
            matches!(phase(&p).as_str(), "Succeeded" | "Failed").then_some(p)
        },
    )
    .await;
    let uid = client.metadata.uid.clone().unwrap();
    let log = agents[0].container_log("default", "client", &uid, "main", 0);
    let names: Vec<String> = web.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let mut counts = std::collections::BTreeMap::new();
    for line in section(&log, "SPREAD", "NAME") {
        *counts.entry(line.trim().to_string()).or_insert(0usize) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}\n{log}");
    for (name, n) in &counts {
        assert!(names.contains(name) && *n >= 45, "{counts:?}");
    }
    for (from, to) in [("NAME", "SHORT"), ("SHORT", "HEADLESS")] {
        let answer = section(&log, from, to).join("");
        assert!(names.contains(&answer.trim().to_string()), "{from}: {log}");
    }
    let headless = section(&log, "HEADLESS", "OUTSIDE").join("\n");
    for ip in &web_ips {
        assert!(headless.contains(ip.as_str()), "{ip} not in {headless}");
    }
    let outside = section(&log, "OUTSIDE", "END").join("\n");
    assert!(outside.contains("192.0.2.44"), "{outside}");

    // The NodePort on both nodes' addresses, from the test's own end of the switch.
    for n in 1..=2 {
        let url = format!("http://{prefix}.{n}:{node_port}/");
        let out = Command::new("curl")
            .args(["-s", "--max-time", "3", &url])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(names.contains(&body), "{url}: {out:?}");
    }
    // No ReplicaSet left to make new pods while the agents stop (no garbage collector runs).
    let _ = cluster.kubectl(&["delete", "deployment", "web", "--wait=false"]);
    let _ = cluster.kubectl(&["delete", "replicasets", "--all", "--wait=false"]);
    let _ = cluster.kubectl(&["delete", "pods", "--all", "--grace-period=0", "--force"]);
}

/// The last `n` lines of a looping client's log (`ok`/`fail` per try), once there are `n`.
fn last_lines(agent: &Agent, pod: &Pod, n: usize) -> Option<Vec<String>> {
    let uid = pod.metadata.uid.clone()?;
    let name = pod.metadata.name.clone()?;
    let log = agent.container_log("default", &name, &uid, "main", 0);
    let lines: Vec<String> = log.lines().map(|l| l.trim().to_string()).collect();
    (lines.len() >= n).then(|| lines[lines.len() - n..].to_vec())
}

/// NetworkPolicy enforced by the node agent (its rules in the node's own namespace): with no
/// policy two clients reach the server; a default-deny ingress policy blocks both; a policy
/// allowing the labelled client lets it through and still blocks the other; removing the
/// policies restores both; `kubectl get networkpolicy` lists them on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_block_and_allow_pod_traffic() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let prefix = "10.87.0";
    let Nodes {
        agents,
        cluster,
        fabric,
        ..
    } = Nodes::start("c", prefix, 1, 82, &[]).await;

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let mut server = pod(
        "server",
        "node-1",
        "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 8080 -h /www",
        "Always",
    );
    server.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    pods.create(&PostParams::default(), &server).await.unwrap();
    let server_ip = poll_until(
        "the server Running",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || logs(&agents),
        async || {
            let p = pods.get("server").await.ok()?;
            (phase(&p) == "Running").then(|| p.status?.pod_ip).flatten()
        },
    )
    .await;
    let loop_script = format!(
        "while true; do if wget -qO- http://{server_ip}:8080/ >/dev/null 2>&1; then echo ok; else echo fail; fi; sleep 0.3; done"
    );
    let mut clients = Vec::new();
    for (name, labelled) in [("good", true), ("bad", false)] {
        let mut client = pod(name, "node-1", &loop_script, "Always");
        if labelled {
            client.metadata.labels = Some([("access".to_string(), "true".to_string())].into());
        }
        pods.create(&PostParams::default(), &client).await.unwrap();
        clients.push(name);
    }
    // Waits until each client's last 3 tries are all `want` (ok / fail).
    let expect = async |what: &str, want: [&str; 2]| {
        poll_until(
            what,
            Duration::from_secs(30),
            Duration::from_millis(300),
            || logs(&agents),
            async || {
                for (name, want) in clients.iter().zip(want) {
                    let p = pods.get(name).await.ok()?;
                    let last = last_lines(&agents[0], &p, 3)?;
                    if !last.iter().all(|l| l == want) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    };
    expect("both clients through without a policy", ["ok", "ok"]).await;

    let policies: Api<NetworkPolicy> = Api::namespaced(cluster.client.clone(), "default");
    let deny: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "deny-web"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &deny)
        .await
        .unwrap();
    expect("both clients blocked by default-deny", ["fail", "fail"]).await;

    let allow: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "allow-good"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"access": "true"}}}],
                              "ports": [{"protocol": "TCP", "port": 8080}]}]}
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &allow)
        .await
        .unwrap();
    expect(
        "the labelled client through, the other blocked",
        ["ok", "fail"],
    )
    .await;
    let listed = cluster.kubectl_ok(&["get", "networkpolicy"]);
    assert!(
        listed.contains("allow-good   app=web") && listed.contains("deny-web     app=web"),
        "{listed}"
    );

    for name in ["deny-web", "allow-good"] {
        policies
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    expect("both clients through again", ["ok", "ok"]).await;
    // No policy left: no rule left in the node.
    let saved = Command::new("ip")
        .args([
            "netns",
            "exec",
            &fabric.nodes[0],
            "iptables-save",
            "-t",
            "filter",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&saved.stdout).to_string();
    assert!(!text.contains("SKIFF-N"), "{text}");
    let _ = cluster.kubectl(&["delete", "pods", "--all", "--grace-period=0", "--force"]);
}
