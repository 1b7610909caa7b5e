//! `skiff node-sim` as a real process against a real `skiff apiserver` on a one-member `skiff
//! store`, checked with kubectl: 5 simulated nodes Ready with their labels, their Leases in
//! kube-node-lease renewing, pods bound to them (no scheduler) Running and Ready with distinct
//! IPs from their node's /24, deletions honoured (a plain one and one held by a finalizer,
//! which shows the containers stopped first), and a node in the stop file falling silent.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apiserver::{ApiHome, ApiServer};
use node_sim::NodeSim;
use serde_json::{Value, json};

const NODES: usize = 5;

struct Kubectl<'a> {
    api: &'a ApiServer,
    kubeconfig: PathBuf,
    sim: &'a NodeSim,
}

impl Kubectl<'_> {
    fn ok(&self, args: &[&str]) -> String {
        let out = self.api.kubectl(&self.kubeconfig, args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n--- node-sim log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.sim.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("kubectl printed JSON")
    }

    /// Polls `check` every 500 ms until it returns Some, or fails after `timeout`.
    fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- node-sim log ---\n{}",
                self.sim.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn renew_time(&self, node: &str) -> String {
        let lease = self.json(&["get", "lease", node, "-n", "kube-node-lease"]);
        lease["spec"]["renewTime"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn create(&self, dir: &Path, object: &Value) {
        let name = object["metadata"]["name"].as_str().unwrap_or("object");
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, object.to_string()).expect("write manifest");
        self.ok(&["create", "-f", path.to_str().expect("utf-8 path")]);
    }
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
}

fn pod(name: &str, node: &str, finalizers: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "sim", "finalizers": finalizers},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx:1.27"}]},
    })
}

/// Whether `ip` lies in `cidr` (an IPv4 /24 as node-sim hands out).
fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').expect("CIDR");
    let (ip, net): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (ip.parse().expect("IPv4"), net.parse().expect("IPv4"));
    let mask = u32::MAX << (32 - len.parse::<u32>().expect("prefix"));
    u32::from(ip) & mask == u32::from(net)
}

#[test]
fn node_sim_nodes_leases_pod_lifecycle_and_stop_file() {
    let cluster = common::Cluster::start(1);
    let home = ApiHome::new();
    let api = home.start(&cluster.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let stop_file = home.path().join("stop-renewing");
    let nodes = NODES.to_string();
    let sim = NodeSim::start(
        home.path(),
        &kubeconfig,
        &[
            OsStr::new("--nodes"),
            OsStr::new(&nodes),
            OsStr::new("--stop-renewing-file"),
            stop_file.as_os_str(),
        ],
    );
    let k = Kubectl {
        api: &api,
        kubeconfig,
        sim: &sim,
    };

    tracing_phase("5 nodes registered, Ready, labelled, spread over 3 zones");
    let nodes = k.wait("5 Ready simulated nodes", Duration::from_secs(60), || {
        let list = k.json(&["get", "nodes", "-l", "type=kwok"]);
        let items = list["items"].as_array()?.clone();
        (items.len() == NODES && items.iter().all(|n| condition(n, "Ready") == Some("True")))
            .then_some(items)
    });
    let mut zones = BTreeSet::new();
    for node in &nodes {
        let name = node["metadata"]["name"].as_str().expect("name");
        let labels = &node["metadata"]["labels"];
        assert_eq!(labels["kubernetes.io/hostname"], name);
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        zones.insert(
            labels["topology.kubernetes.io/zone"]
                .as_str()
                .expect("zone"),
        );
        assert_eq!(node["status"]["allocatable"]["pods"], "110");
        assert_eq!(node["status"]["capacity"]["cpu"], "32");
        assert_eq!(node["status"]["addresses"][0]["type"], "InternalIP");
    }
    assert_eq!(zones.len(), 3, "{zones:?}");
    let table = k.ok(&["get", "nodes", "-l", "type=kwok", "--no-headers"]);
    assert_eq!(
        table.lines().filter(|l| l.contains(" Ready ")).count(),
        NODES,
        "{table}"
    );

    tracing_phase("Leases in kube-node-lease held by their nodes and renewed");
    let leases = k.json(&["get", "leases", "-n", "kube-node-lease"]);
    let items = leases["items"].as_array().expect("items");
    assert_eq!(items.len(), NODES, "{leases}");
    for lease in items {
        assert_eq!(lease["spec"]["holderIdentity"], lease["metadata"]["name"]);
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    }
    let first = k.renew_time("sim-node-0");
    k.wait("a Lease renewal", Duration::from_secs(25), || {
        (k.renew_time("sim-node-0") > first).then_some(())
    });

    tracing_phase("pods bound to simulated nodes run with IPs from their node's /24");
    k.ok(&["create", "namespace", "sim"]);
    let bound: Vec<(String, String)> = (0..6)
        .map(|i| (format!("web-{i}"), format!("sim-node-{}", i % 3)))
        .collect();
    for (name, node) in &bound {
        k.create(home.path(), &pod(name, node, &[]));
    }
    let pods = k.wait("6 Running Ready pods", Duration::from_secs(60), || {
        let list = k.json(&["get", "pods", "-n", "sim"]);
        let items = list["items"].as_array()?.clone();
        (items.len() == 6
            && items.iter().all(|p| {
                p["status"]["phase"] == "Running" && condition(p, "Ready") == Some("True")
            }))
        .then_some(items)
    });
    let mut ips = BTreeSet::new();
    for p in &pods {
        let node_name = p["spec"]["nodeName"].as_str().expect("nodeName");
        let node = nodes
            .iter()
            .find(|n| n["metadata"]["name"] == node_name)
            .expect("pod on a sim node");
        let ip = p["status"]["podIP"].as_str().expect("podIP");
        let cidr = node["spec"]["podCIDR"].as_str().expect("podCIDR");
        assert!(in_cidr(ip, cidr), "{ip} not in {cidr}");
        assert!(ips.insert(ip.to_string()), "{ip} handed out twice");
        assert_eq!(
            p["status"]["hostIP"],
            node["status"]["addresses"][0]["address"]
        );
        assert!(p["status"]["startTime"].is_string());
        for type_ in ["PodScheduled", "Initialized", "ContainersReady"] {
            assert_eq!(condition(p, type_), Some("True"), "{type_}: {p}");
        }
        let c = &p["status"]["containerStatuses"][0];
        assert_eq!(
            (c["ready"].clone(), c["started"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(c["restartCount"], 0);
        assert!(c["state"]["running"]["startedAt"].is_string());
        assert!(
            c["containerID"]
                .as_str()
                .is_some_and(|id| id.starts_with("sim://"))
        );
        assert!(
            c["imageID"]
                .as_str()
                .is_some_and(|id| id.starts_with("nginx:1.27@"))
        );
    }

    tracing_phase("a deletion with a grace period: the pod goes away");
    k.ok(&[
        "delete",
        "pod",
        "web-0",
        "-n",
        "sim",
        "--grace-period=30",
        "--wait=false",
    ]);
    k.wait("web-0 gone", Duration::from_secs(30), || {
        let out = api.kubectl(&k.kubeconfig, &["get", "pod", "web-0", "-n", "sim"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });

    tracing_phase("a deletion held by a finalizer: containers stopped first, then gone");
    k.create(
        home.path(),
        &pod("held", "sim-node-2", &["skiff.test/hold"]),
    );
    k.wait("held Running", Duration::from_secs(30), || {
        let p = k.json(&["get", "pod", "held", "-n", "sim"]);
        (p["status"]["phase"] == "Running").then_some(())
    });
    k.ok(&[
        "delete",
        "pod",
        "held",
        "-n",
        "sim",
        "--grace-period=30",
        "--wait=false",
    ]);
    let stopped = k.wait(
        "held containers terminated",
        Duration::from_secs(30),
        || {
            let p = k.json(&["get", "pod", "held", "-n", "sim"]);
            (p["status"]["phase"] == "Succeeded").then_some(p)
        },
    );
    let c = &stopped["status"]["containerStatuses"][0];
    assert_eq!(c["state"]["terminated"]["exitCode"], 0, "{stopped}");
    assert_eq!(condition(&stopped, "Ready"), Some("False"));
    k.ok(&[
        "patch",
        "pod",
        "held",
        "-n",
        "sim",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    k.wait("held gone", Duration::from_secs(30), || {
        let out = api.kubectl(&k.kubeconfig, &["get", "pod", "held", "-n", "sim"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });

    tracing_phase("a node in the stop file stops renewing; the others go on");
    std::fs::write(&stop_file, "sim-node-1\n").expect("write stop file");
    // Let the poll (2 s) and a renewal already under way pass.
    std::thread::sleep(Duration::from_secs(5));
    let frozen = k.renew_time("sim-node-1");
    let other = k.renew_time("sim-node-0");
    k.create(home.path(), &pod("late", "sim-node-1", &[]));
    k.wait("sim-node-0 renewed", Duration::from_secs(25), || {
        (k.renew_time("sim-node-0") > other).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        k.renew_time("sim-node-1"),
        frozen,
        "a stopped node renewed its Lease"
    );
    let late = k.json(&["get", "pod", "late", "-n", "sim"]);
    assert_eq!(
        late["status"]["phase"], "Pending",
        "a stopped node ran a pod: {late}"
    );

    drop(sim);
    drop(api);
}

/// Marks a phase of the test in its output.
fn tracing_phase(what: &str) {
    eprintln!("--- {what}");
}
