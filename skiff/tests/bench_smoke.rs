//! CI smoke of `skiff bench`: a short put run against one real member must finish, print a
//! parsable JSON last line, succeed on every request and attribute server CPU to the
//! member; `skiff bench scheduler` against a real API server and scheduler binds every pod
//! of two profiles and removes what it created, `skiff bench apiserver` lists and fans
//! writes out to every watcher, and `skiff bench controllers` against a real controller
//! manager, scheduler and simulated nodes completes every phase and deletes its Deployment.
//! No timing thresholds: CI machines are shared.
#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::process::{Child, Command, Stdio};

use apiserver::{ApiHome, Backend};
use common::{Cluster, skiff_bin};

fn bench(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(skiff_bin())
        .arg("bench")
        .args(args)
        .output()
        .expect("run skiff bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "skiff bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("some output");
    let json = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}\n{stdout}"));
    (json, stdout)
}

#[test]
fn bench_put_reports_json_with_no_errors() {
    let cluster = Cluster::start(1);
    let endpoint = cluster.members[0].endpoint();
    let (report, text) = bench(&[
        "put",
        "--endpoints",
        &endpoint,
        "--total",
        "2000",
        "--clients",
        "8",
        "--json",
    ]);
    assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["ops"], 2000, "{report}");
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_ms"][key].is_number(), "{key}: {report}");
    }
    // The member was found through its listening port: CPU and RSS are reported.
    let servers = report["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{report}");
    assert_eq!(
        servers[0]["pid"].as_u64(),
        cluster.members[0].child.as_ref().map(|c| c.id() as u64)
    );
    assert!(report["server_rss_mb"].as_f64().unwrap() > 0.0, "{report}");
    assert!(text.contains("Latency distribution"), "{text}");

    // The keys are readable; a serializable range of one of them succeeds too.
    let (range, _) = bench(&[
        "range",
        "00000000",
        "--consistency",
        "s",
        "--endpoints",
        &endpoint,
        "--total",
        "200",
        "--json",
    ]);
    assert_eq!(range["errors"], 0, "{range}");
}

#[test]
fn bench_rejects_bad_flags_with_exit_code_2() {
    let out = Command::new(skiff_bin())
        .args(["bench", "put", "--clients", "0"])
        .output()
        .expect("run skiff bench");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(skiff_bin())
        .args(["bench", "range", "k", "--consistency", "x"])
        .output()
        .expect("run skiff bench");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_scheduler_binds_every_pod_and_removes_what_it_created() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let metrics_port = common::free_port().to_string();
    let log = std::fs::File::create(home.path().join("scheduler.log")).expect("log");
    let mut scheduler = Command::new(skiff_bin())
        .args(["scheduler", "--leader-elect=false", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &metrics_port,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn skiff scheduler");
    let kubeconfig_arg = kubeconfig.to_string_lossy().to_string();
    let scheduler_endpoint = format!("127.0.0.1:{metrics_port}");
    let outcome = Command::new(skiff_bin())
        .args(["bench", "scheduler", "--kubeconfig", &kubeconfig_arg])
        .args([
            "--nodes",
            "20",
            "--pods",
            "200",
            "--profile",
            "basic,spread",
        ])
        .args(["--scheduler-endpoints", &scheduler_endpoint])
        .args([
            "--store-endpoints",
            &store.endpoints().replace("http://", ""),
        ])
        .arg("--json")
        .output()
        .expect("run skiff bench scheduler");
    let _ = scheduler.kill();
    let _ = scheduler.wait();
    let stdout = String::from_utf8_lossy(&outcome.stdout).to_string();
    let stderr = String::from_utf8_lossy(&outcome.stderr).to_string();
    let scheduler_log =
        std::fs::read_to_string(home.path().join("scheduler.log")).unwrap_or_default();
    assert!(
        outcome.status.success(),
        "bench scheduler failed: {stderr}\n{stdout}\nscheduler: {scheduler_log}"
    );
    let last = stdout.lines().last().expect("some output");
    let report: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));
    assert!(report["pods_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["p99_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    let profiles = report["profiles"].as_array().unwrap();
    let names: Vec<&str> = profiles
        .iter()
        .map(|p| p["profile"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["basic", "spread"], "{report}");
    for profile in profiles {
        assert_eq!(profile["bound"], 200, "{profile}");
        // The API server, scheduler and store member run here: each is charged CPU.
        for component in ["apiserver", "scheduler", "store"] {
            assert!(
                profile["cpu_ms_per_pod"][component].is_number(),
                "{component}: {profile}"
            );
        }
    }
    assert!(
        stdout.contains("basic: 200 of 200 pods on 20 nodes"),
        "{stdout}"
    );
    // Nothing is left behind: no benchmark node, no benchmark pod.
    let (code, nodes) = api.admin(&[], "/api/v1/nodes");
    assert_eq!(code, 200, "{nodes}");
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(0), "{nodes}");
    let (code, pods) = api.admin(&[], "/api/v1/namespaces/bench-scheduler/pods");
    assert_eq!(code, 200, "{pods}");
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0), "{pods}");
}

#[test]
fn bench_scheduler_refuses_more_pods_than_a_profile_can_place() {
    let out = Command::new(skiff_bin())
        .args(["bench", "scheduler", "--nodes", "10", "--pods", "11"])
        .args(["--profile", "anti-affinity", "--kubeconfig", "/nonexistent"])
        .output()
        .expect("run skiff bench scheduler");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("profile anti-affinity places at most 10 pods on 10 nodes"),
        "{stderr}"
    );
}

#[test]
fn bench_apiserver_lists_and_fans_writes_out_to_every_watcher() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let out = Command::new(skiff_bin())
        .args(["bench", "apiserver", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--objects", "50", "--lists", "5", "--watchers", "20"])
        .args(["--writes", "5", "--write-interval", "20ms", "--json"])
        .output()
        .expect("run skiff bench apiserver");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "bench apiserver failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("some output");
    let report: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));
    assert_eq!(report["missing_deliveries"], 0, "{report}");
    assert_eq!(report["case"]["deliveries"], 100, "{report}");
    assert!(report["list_p99_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["watch_p99_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["case"]["cpu_ms_per_list"]["apiserver"].is_number(),
        "{report}"
    );
    // The pods are gone again.
    let (code, pods) = api.admin(&[], "/api/v1/namespaces/bench-apiserver/pods");
    assert_eq!(code, 200, "{pods}");
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0), "{pods}");
}

/// A component process of a test (scheduler, controller manager), killed (by its PID) on drop.
struct Component {
    child: Child,
    log_path: std::path::PathBuf,
}

impl Component {
    /// `skiff <args> --kubeconfig <kubeconfig>`, logging to `<dir>/<name>.log`.
    fn start(
        dir: &std::path::Path,
        name: &str,
        kubeconfig: &std::path::Path,
        args: &[&str],
    ) -> Component {
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(skiff_bin())
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn skiff {name}: {e}"));
        Component { child, log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bench_controllers_completes_every_phase_and_deletes_its_deployment() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    // Started here rather than with common/node_sim.rs: the benchmark is given its PID.
    let nodes = Component::start(
        home.path(),
        "node-sim",
        &kubeconfig,
        &["node-sim", "--nodes", "5", "--pod-cidr", "10.32.0.0/14"],
    );
    let (scheduler_port, manager_port) = (
        common::free_port().to_string(),
        common::free_port().to_string(),
    );
    let scheduler = Component::start(
        home.path(),
        "scheduler",
        &kubeconfig,
        &[
            "scheduler",
            "--leader-elect=false",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &scheduler_port,
        ],
    );
    let manager = Component::start(
        home.path(),
        "controller-manager",
        &kubeconfig,
        &[
            "controller-manager",
            "--leader-elect=false",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &manager_port,
        ],
    );
    let node_sim_pid = nodes.child.id().to_string();
    let outcome = Command::new(skiff_bin())
        .args(["bench", "controllers", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--replicas",
            "50",
            "--min-nodes",
            "5",
            "--timeout",
            "3m",
            "--json",
        ])
        .args([
            "--scheduler-endpoints",
            &format!("127.0.0.1:{scheduler_port}"),
        ])
        .args([
            "--controller-manager-endpoints",
            &format!("127.0.0.1:{manager_port}"),
        ])
        .args([
            "--store-endpoints",
            &store.endpoints().replace("http://", ""),
        ])
        .args(["--node-sim-pid", &node_sim_pid])
        .output()
        .expect("run skiff bench controllers");
    let stdout = String::from_utf8_lossy(&outcome.stdout).to_string();
    let stderr = String::from_utf8_lossy(&outcome.stderr).to_string();
    assert!(
        outcome.status.success(),
        "bench controllers failed: {stderr}\n{stdout}\ncontroller-manager: {}\nscheduler: {}\nnode-sim: {}",
        manager.log(),
        scheduler.log(),
        nodes.log()
    );
    // The figures, for whoever reads the test's output.
    eprintln!("{stdout}");
    let last = stdout.lines().last().expect("some output");
    let report: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));
    assert_eq!(report["completed"], true, "{report}");
    assert_eq!(report["replicas"], 50, "{report}");
    assert_eq!(report["nodes"], 5, "{report}");
    let phases = report["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["create", "rolling update", "cleanup"], "{report}");
    for phase in phases {
        assert_eq!(phase["completed"], true, "{phase}");
        assert!(phase["seconds"].as_f64().unwrap() >= 0.0, "{phase}");
        assert!(phase["pods_per_sec"].as_f64().unwrap() >= 0.0, "{phase}");
        // Every component runs here: each is charged CPU (node-sim through its PID).
        for component in [
            "apiserver",
            "store",
            "scheduler",
            "controller-manager",
            "node-sim",
        ] {
            let ms = phase["cpu_ms_per_pod"][component].as_f64();
            assert!(ms.is_some_and(|ms| ms >= 0.0), "{component}: {phase}");
        }
    }
    for phase in &phases[..2] {
        assert_eq!(phase["available"], 50, "{phase}");
        assert_eq!(phase["updated"], 50, "{phase}");
    }
    assert_eq!(phases[2]["pods"], 0, "{report}");
    assert!(
        stdout.contains("create: 50 of 50 replicas available"),
        "{stdout}"
    );
    // Nothing is left behind: no Deployment, ReplicaSet or pod in the namespace.
    for path in [
        "/apis/apps/v1/namespaces/bench-controllers/deployments",
        "/apis/apps/v1/namespaces/bench-controllers/replicasets",
        "/api/v1/namespaces/bench-controllers/pods",
    ] {
        let (code, list) = api.admin(&[], path);
        assert_eq!(code, 200, "{path}: {list}");
        assert_eq!(
            list["items"].as_array().map(Vec::len),
            Some(0),
            "{path}: {list}"
        );
    }
}
