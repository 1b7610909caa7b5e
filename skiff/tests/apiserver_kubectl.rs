//! `skiff apiserver` driven by the real kubectl over HTTPS with the kubeconfig it writes, on a
//! skiff store and on real etcd (the API server talks to both only through the etcd v3 API).
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Cluster, RealEtcd, free_port, skiff_bin};

/// A running `skiff apiserver` and the kubeconfig it wrote.
struct ApiServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl ApiServer {
    fn start(etcd_endpoints: &str) -> ApiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).expect("log");
        let child = Command::new(skiff_bin())
            .arg("apiserver")
            .args(["--etcd-servers", etcd_endpoints])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &port.to_string(),
            ])
            .arg("--cert-dir")
            .arg(dir.path().join("certs"))
            .arg("--write-kubeconfig")
            .arg(dir.path().join("kubeconfig"))
            .env("SKIFF_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn skiff apiserver");
        let server = ApiServer { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server
            .kubectl(&["get", "--raw", "/readyz"])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "apiserver did not start: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            // An isolated discovery/OpenAPI cache per server.
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kubectl")
    }

    /// Runs kubectl, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n--- apiserver log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("kubectl printed JSON")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: main
        image: nginx:1.26
        env: [{name: A, value: "1"}]
        ports: [{containerPort: 80}]
      - name: sidecar
        image: busybox
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: demo, labels: {app: web}}
data: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: sec, namespace: demo}
stringData: {password: s3cret}
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.to_string_lossy().into_owned()
}

/// The whole kubectl scenario against one store.
fn kubectl_suite(etcd_endpoints: &str) {
    let api = ApiServer::start(etcd_endpoints);
    let dir = api.dir.path();

    tracing_free_section("version and discovery");
    let version = api.ok(&["version"]);
    assert!(version.contains("Server Version: v1.33.0"), "{version}");
    let resources = api.ok(&["api-resources"]);
    for line in [
        "deployments   deploy       apps/v1      true         Deployment",
        "namespaces    ns           v1           false        Namespace",
    ] {
        assert!(resources.contains(line), "{resources}");
    }

    tracing_free_section("create namespace (a protobuf body) and apply");
    assert_eq!(
        api.ok(&["create", "namespace", "demo"]),
        "namespace/demo created\n"
    );
    let out = api.kubectl(&["create", "namespace", "demo"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"),
        "{out:?}"
    );
    let manifest = write(dir, "app.yaml", APP);
    assert_eq!(
        api.ok(&["apply", "-f", &manifest]),
        "deployment.apps/web created\nservice/web created\nconfigmap/cfg created\nsecret/sec created\n"
    );
    let before = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    assert_eq!(before["metadata"]["generation"], 1);
    assert_eq!(
        api.json(&["get", "secret", "sec", "-n", "demo", "-o", "json"])["data"]["password"],
        "czNjcmV0"
    );

    tracing_free_section("re-apply: new image, changed env, sidecar removed (strategic merge)");
    let changed = APP
        .replace("nginx:1.26", "nginx:1.27")
        .replace("value: \"1\"", "value: \"2\"")
        .replace("      - name: sidecar\n        image: busybox\n", "");
    let manifest2 = write(dir, "app2.yaml", &changed);
    let out = api.ok(&["apply", "-f", &manifest2]);
    assert!(
        out.starts_with("deployment.apps/web configured\nservice/web unchanged\n"),
        "{out}"
    );
    let after = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    let containers = &after["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(1), "{after}");
    assert_eq!(containers[0]["image"], "nginx:1.27");
    assert_eq!(containers[0]["env"][0]["value"], "2");
    assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
    assert_eq!(after["metadata"]["generation"], 2);
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_ne!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );

    tracing_free_section("get in every output format");
    let wide = api.ok(&["get", "deployments", "-n", "demo", "-o", "wide"]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[1], row[5], row[6], row[7]),
        ("web", "0/2", "main", "nginx:1.27", "app=web")
    );
    let svc = api.ok(&["get", "svc", "-n", "demo"]);
    assert!(svc.starts_with("NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)   AGE\nweb    ClusterIP   <none>       <none>        80/TCP"), "{svc}");
    let yaml = api.ok(&["get", "configmap", "cfg", "-n", "demo", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: ConfigMap") && yaml.contains("  k: v"),
        "{yaml}"
    );
    assert_eq!(
        api.ok(&[
            "get",
            "cm,svc,deploy",
            "-n",
            "demo",
            "-l",
            "app=web",
            "-o",
            "name"
        ]),
        "configmap/cfg\nservice/web\ndeployment.apps/web\n"
    );
    assert_eq!(
        api.ok(&[
            "get",
            "cm",
            "-n",
            "demo",
            "-l",
            "app notin (web)",
            "-o",
            "name"
        ]),
        ""
    );
    let all = api.ok(&["get", "namespaces", "-A"]);
    assert!(
        all.contains("demo ") && all.contains("kube-system "),
        "{all}"
    );
    let cms = api.ok(&["get", "configmaps", "-A"]);
    assert!(
        cms.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..3] == ["demo", "cfg", "1"]),
        "{cms}"
    );
    let out = api.kubectl(&["get", "cm", "-n", "demo", "--field-selector", "data.k=v"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("field label not supported: data.k"),
        "{out:?}"
    );
    let out = api.kubectl(&["get", "cm", "nope", "-n", "demo"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error from server (NotFound): configmaps \"nope\" not found\n"
    );

    tracing_free_section("get -w sees a change made by another client");
    let mut watch = api
        .command(&[
            "get",
            "configmaps",
            "-n",
            "demo",
            "-w",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubectl get -w");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the initial listing");
    assert!(first.starts_with("EVENT"), "{first}");
    let _ = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the cfg row");
    api.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"data":{"k2":"v2"}}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("MODIFIED") => break line,
            Ok(_) => continue,
            Err(_) => panic!("kubectl get -w saw no MODIFIED event"),
        }
    };
    assert_eq!(
        seen.split_whitespace().collect::<Vec<_>>()[..3],
        ["MODIFIED", "cfg", "2"]
    );
    let _ = watch.kill();
    let _ = watch.wait();

    tracing_free_section("optimistic concurrency: two PUTs at one resourceVersion, one 409");
    let mut cm = api.json(&["get", "configmap", "cfg", "-n", "demo", "-o", "json"]);
    cm["data"]["writer"] = "a".into();
    let a = write(dir, "a.json", &cm.to_string());
    cm["data"]["writer"] = "b".into();
    let b = write(dir, "b.json", &cm.to_string());
    let children: Vec<Child> = [a, b]
        .iter()
        .map(|f| {
            api.command(&["replace", "-f", f])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let conflicts = outputs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("Error from server (Conflict)"))
        .count();
    let successes = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!((successes, conflicts), (1, 1), "{outputs:?}");

    tracing_free_section("a bad token gets 401 as a Status");
    let out = api.kubectl(&["--token", "wrong", "get", "namespaces"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{out:?}"
    );
    let raw = Command::new("curl")
        .args(["-sk", "-H", "Authorization: Bearer wrong"])
        .arg(format!("https://127.0.0.1:{}/api/v1/namespaces", api.port))
        .output()
        .expect("curl");
    let status: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("a Status");
    assert_eq!(
        (
            status["kind"].as_str(),
            status["code"].as_i64(),
            status["reason"].as_str()
        ),
        (Some("Status"), Some(401), Some("Unauthorized"))
    );

    tracing_free_section("delete, then the objects are gone; deleting a namespace empties it");
    assert_eq!(
        api.ok(&["delete", "deployment", "web", "-n", "demo"]),
        "deployment.apps \"web\" deleted\n"
    );
    let out = api.kubectl(&["get", "deployment", "web", "-n", "demo"]);
    assert!(!out.status.success());
    api.ok(&["delete", "namespace", "demo"]);
    let out = api.kubectl(&["get", "configmap", "cfg", "-n", "demo"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
}

/// Marks a phase of the scenario in the test output.
fn tracing_free_section(what: &str) {
    eprintln!("--- {what}");
}

#[test]
fn kubectl_against_a_skiff_store() {
    let cluster = Cluster::start(1);
    kubectl_suite(&cluster.endpoints());
}

#[test]
fn kubectl_against_real_etcd() {
    let etcd = RealEtcd::start();
    kubectl_suite(&etcd.endpoint);
}
