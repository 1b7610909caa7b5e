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
    let squashed: Vec<String> = resources
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for line in [
        "deployments deploy apps/v1 true Deployment",
        "namespaces ns v1 false Namespace",
    ] {
        assert!(squashed.iter().any(|l| l == line), "{resources}");
    }
    // kubectl takes the whole discovery from aggregated /api and /apis: no per-group requests.
    let out = api.kubectl(&["api-resources", "-v=6"]);
    let log = stderr(&out);
    assert!(
        out.status.success() && log.contains("/apis?timeout=") && !log.contains("/apis/apps/v1?"),
        "{log}"
    );

    discovery_and_openapi(&api);

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
    compatibility(&api);
    assert_eq!(
        api.json(&["get", "secret", "sec", "-n", "demo", "-o", "json"])["data"]["password"],
        "czNjcmV0"
    );

    tracing_free_section(
        "re-apply: new image, changed env, new label, sidecar removed (strategic merge)",
    );
    let changed = APP
        .replace(
            "metadata: {name: web, namespace: demo, labels: {app: web}}\nspec:\n  replicas",
            "metadata: {name: web, namespace: demo, labels: {app: web, release: v2}}\nspec:\n  replicas",
        )
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
    assert_eq!(
        after["metadata"]["labels"],
        serde_json::json!({"app": "web", "release": "v2"})
    );
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
    let labelled = api.ok(&["get", "deployments", "-n", "demo", "--show-labels"]);
    let mut lines = labelled.lines();
    assert!(
        lines.next().unwrap_or("").trim_end().ends_with("LABELS"),
        "{labelled}"
    );
    assert_eq!(
        lines
            .next()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or(""),
        "app=web,release=v2",
        "{labelled}"
    );
    let svc = api.ok(&["get", "svc", "-n", "demo"]);
    // A ClusterIP from the default range (10.43.0.0/16, its upper part for dynamic ones).
    let mut row = svc.lines().nth(1).unwrap_or("").split_whitespace();
    assert_eq!(row.next(), Some("web"), "{svc}");
    assert_eq!(row.next(), Some("ClusterIP"), "{svc}");
    let ip = row.next().unwrap_or("");
    assert!(
        ip.starts_with("10.43.") && !ip.starts_with("10.43.0."),
        "{svc}"
    );
    assert_eq!(row.next(), Some("<none>"), "{svc}");
    assert_eq!(row.next(), Some("80/TCP"), "{svc}");
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

    more_kinds(&api);
    event_field_selector(&api);
    subresources(&api);
    verbs(&api);
    server_side_apply(&api);

    metrics(&api);

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

/// Issue 12's small compatibility misses: trailing-slash discovery paths, apimachinery's
/// booleans, upstream's defaults and new statuses, the namespace name label; defaults keep a
/// re-apply and `kubectl diff` quiet. Runs right after `app.yaml` was applied.
fn compatibility(api: &ApiServer) {
    tracing_free_section("compatibility: /version/, ?watch=True, defaults, statuses");
    for path in ["/version/", "/api/", "/apis/"] {
        let out = api.json(&["get", "--raw", path]);
        assert!(out.is_object(), "{path}: {out}");
    }
    assert_eq!(
        api.json(&["get", "--raw", "/version/"])["gitVersion"],
        "v1.33.0"
    );
    assert_eq!(api.json(&["get", "--raw", "/api/"])["kind"], "APIVersions");
    // `True` is a watch (kube-apiserver reads booleans as apimachinery does): a stream of
    // events, ended by timeoutSeconds, not a ConfigMapList.
    let stream = api.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/demo/configmaps?watch=True&timeoutSeconds=1",
    ]);
    let first: serde_json::Value =
        serde_json::from_str(stream.lines().next().unwrap_or("")).expect("an event line");
    assert_eq!(
        (&first["type"], &first["object"]["metadata"]["name"]),
        (&serde_json::json!("ADDED"), &serde_json::json!("cfg")),
        "{stream}"
    );
    assert!(
        stream.starts_with("{\"type\":\"ADDED\",\"object\":{"),
        "{stream}"
    );
    let list = api.json(&[
        "get",
        "--raw",
        "/api/v1/namespaces/demo/configmaps?watch=False",
    ]);
    assert_eq!(list["kind"], "ConfigMapList");

    let svc = api.json(&["get", "svc", "web", "-n", "demo", "-o", "json"]);
    assert_eq!(
        svc["status"],
        serde_json::json!({"loadBalancer": {}}),
        "{svc}"
    );
    assert_eq!(
        (
            &svc["spec"]["sessionAffinity"],
            &svc["spec"]["ports"][0]["protocol"],
            &svc["spec"]["ipFamilyPolicy"],
            &svc["spec"]["internalTrafficPolicy"]
        ),
        (
            &serde_json::json!("None"),
            &serde_json::json!("TCP"),
            &serde_json::json!("SingleStack"),
            &serde_json::json!("Cluster")
        ),
        "{svc}"
    );
    let deploy = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        (
            &spec["restartPolicy"],
            &spec["dnsPolicy"],
            &spec["terminationGracePeriodSeconds"],
            &spec["schedulerName"],
            &spec["securityContext"]
        ),
        (
            &serde_json::json!("Always"),
            &serde_json::json!("ClusterFirst"),
            &serde_json::json!(30),
            &serde_json::json!("default-scheduler"),
            &serde_json::json!({})
        ),
        "{deploy}"
    );
    let containers = &spec["containers"];
    assert_eq!(
        (
            &containers[0]["imagePullPolicy"],
            &containers[1]["imagePullPolicy"],
            &containers[0]["ports"][0]["protocol"],
            &containers[0]["terminationMessagePath"]
        ),
        (
            &serde_json::json!("IfNotPresent"),
            &serde_json::json!("Always"),
            &serde_json::json!("TCP"),
            &serde_json::json!("/dev/termination-log")
        ),
        "{deploy}"
    );
    assert_eq!(deploy["spec"]["revisionHistoryLimit"], 10);

    let ns = api.json(&["get", "namespace", "demo", "-o", "json"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "demo"
    );
    assert_eq!(ns["status"]["phase"], "Active");
    // The label is the server's: removing or changing it leaves it as it was.
    api.ok(&["label", "namespace", "demo", "kubernetes.io/metadata.name-"]);
    api.ok(&[
        "label",
        "namespace",
        "demo",
        "--overwrite",
        "kubernetes.io/metadata.name=other",
    ]);
    let ns = api.json(&["get", "namespace", "demo", "-o", "json"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "demo"
    );

    // Defaults change nothing on a re-apply: no diff, "unchanged", the same generation.
    let workloads: Vec<&str> = APP.split("---").take(3).collect();
    let manifest = write(api.dir.path(), "workloads.yaml", &workloads.join("---"));
    let out = api.kubectl(&["diff", "-f", &manifest]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        api.ok(&["apply", "-f", &manifest]),
        "deployment.apps/web unchanged\nservice/web unchanged\nconfigmap/cfg unchanged\n"
    );
    let again = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    assert_eq!(again["metadata"]["generation"], 1);
}

/// Every other kind issue 6 asks for, created from a manifest, listed with kube-apiserver's
/// Table columns.
const MORE_KINDS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {node-role.kubernetes.io/worker: ""}}
---
apiVersion: v1
kind: Event
metadata: {name: web.1, namespace: demo}
involvedObject: {kind: Deployment, name: web, namespace: demo}
reason: ScalingReplicaSet
message: Scaled up
type: Normal
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: demo}
subsets: [{addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}], ports: [{port: 80}]}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec: {containers: [{name: main, image: nginx}]}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /tmp/pv-1}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: demo}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: node-1, namespace: kube-node-lease}
spec: {holderIdentity: node-1, leaseDurationSeconds: 40}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: demo}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}]
ports: [{port: 80, protocol: TCP}]
"#;

fn more_kinds(api: &ApiServer) {
    tracing_free_section("more kinds: discovery, protobuf generators, tables");
    let resources = api.ok(&["api-resources"]);
    for kind in [
        "Node",
        "Event",
        "Endpoints",
        "ReplicaSet",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "ResourceQuota",
        "ServiceAccount",
        "Lease",
        "EndpointSlice",
    ] {
        assert!(
            resources.contains(&format!(" {kind}\n")),
            "{kind}: {resources}"
        );
    }
    // -v=8 logs the request headers: the body really is protobuf.
    let out = api.kubectl(&[
        "create",
        "deployment",
        "pb",
        "--image=busybox",
        "--replicas=3",
        "-n",
        "demo",
        "-v=8",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deployment.apps/pb created\n",
        "{out:?}"
    );
    assert!(
        stderr(&out).contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "{}",
        stderr(&out)
    );
    let pb = api.json(&["get", "deployment", "pb", "-n", "demo", "-o", "json"]);
    assert_eq!(pb["spec"]["replicas"], 3, "{pb}");
    assert_eq!(pb["spec"]["selector"]["matchLabels"]["app"], "pb", "{pb}");
    assert_eq!(
        pb["spec"]["template"]["spec"]["containers"][0]["image"], "busybox",
        "{pb}"
    );
    let out = api.ok(&["get", "deployment", "pb", "-n", "demo", "-o", "wide"]);
    let mut row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    row.remove(4); // AGE
    assert_eq!(
        row,
        ["pb", "0/3", "0", "0", "busybox", "busybox", "app=pb"],
        "{out}"
    );
    assert_eq!(
        api.ok(&[
            "create",
            "service",
            "clusterip",
            "pbsvc",
            "--tcp=80:8080",
            "-n",
            "demo"
        ]),
        "service/pbsvc created\n"
    );
    let svc = api.json(&["get", "svc", "pbsvc", "-n", "demo", "-o", "json"]);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080, "{svc}");
    assert_eq!(
        api.ok(&["create", "serviceaccount", "robot", "-n", "demo"]),
        "serviceaccount/robot created\n"
    );
    assert_eq!(
        api.ok(&["create", "quota", "q", "--hard=pods=10,cpu=2", "-n", "demo"]),
        "resourcequota/q created\n"
    );
    let manifest = write(api.dir.path(), "kinds.yaml", MORE_KINDS);
    let out = api.ok(&["apply", "-f", &manifest]);
    assert_eq!(out.lines().count(), 8, "{out}");
    for (args, header, row) in [
        (
            &["get", "nodes"][..],
            "NAME STATUS ROLES AGE VERSION",
            "node-1 Unknown worker",
        ),
        (
            &["get", "ev", "-n", "demo"],
            "LAST SEEN TYPE REASON OBJECT MESSAGE",
            "Normal ScalingReplicaSet deployment/web Scaled up",
        ),
        (
            &["get", "ep", "-n", "demo"],
            "NAME ENDPOINTS AGE",
            "web 10.0.0.1:80,10.0.0.2:80",
        ),
        (
            &["get", "rs", "-n", "demo"],
            "NAME DESIRED CURRENT READY AGE",
            "rs 2 0 0",
        ),
        (
            &["get", "pv"],
            "NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM STORAGECLASS VOLUMEATTRIBUTESCLASS REASON AGE",
            "pv-1 1Gi RWO Retain Pending",
        ),
        (
            &["get", "pvc", "-n", "demo"],
            "NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS VOLUMEATTRIBUTESCLASS AGE",
            "data Pending",
        ),
        (
            &["get", "quota", "-n", "demo"],
            "NAME AGE REQUEST LIMIT",
            "cpu: 0/2, pods: 0/10",
        ),
        (&["get", "sa", "-n", "demo"], "NAME SECRETS AGE", "robot 0"),
        (
            &["get", "lease", "-n", "kube-node-lease"],
            "NAME HOLDER AGE",
            "node-1 node-1",
        ),
        (
            &["get", "endpointslices", "-n", "demo"],
            "NAME ADDRESSTYPE PORTS ENDPOINTS AGE",
            "web-abc IPv4 80 10.0.0.1",
        ),
    ] {
        let out = api.ok(args);
        let squashed: Vec<String> = out
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(squashed[0], header, "{args:?}: {out}");
        assert!(
            squashed[1..].iter().any(|l| l.contains(row)),
            "{args:?}: {out}"
        );
    }
}

fn event_field_selector(api: &ApiServer) {
    let out = api.ok(&[
        "get",
        "ev",
        "-n",
        "demo",
        "--field-selector",
        "involvedObject.kind=Deployment,involvedObject.name=web",
        "-o",
        "name",
    ]);
    assert_eq!(out, "event/web.1\n");
    let out = api.ok(&[
        "get",
        "ev",
        "-n",
        "demo",
        "--field-selector",
        "involvedObject.name=other",
        "-o",
        "name",
    ]);
    assert_eq!(out, "");

    tracing_free_section("field selectors are per kind");
    let out = api.kubectl(&[
        "get",
        "ev",
        "-n",
        "demo",
        "--field-selector",
        "spec.nodeName=x",
    ]);
    assert!(
        stderr(&out).contains("field label not supported: spec.nodeName"),
        "{out:?}"
    );
    let out = api.kubectl(&[
        "get",
        "cm",
        "-n",
        "demo",
        "--field-selector",
        "status.phase=Active",
    ]);
    assert!(
        stderr(&out).contains("field label not supported: status.phase"),
        "{out:?}"
    );
    assert_eq!(
        api.ok(&[
            "get",
            "secrets",
            "-n",
            "demo",
            "--field-selector",
            "type=Opaque",
            "-o",
            "name"
        ]),
        "secret/sec\n"
    );
    let active = api.ok(&[
        "get",
        "ns",
        "--field-selector",
        "status.phase=Active",
        "-o",
        "name",
    ]);
    assert!(active.lines().any(|l| l == "namespace/demo"), "{active}");
    assert_eq!(
        api.ok(&[
            "get",
            "nodes",
            "--field-selector",
            "spec.unschedulable=false",
            "-o",
            "name"
        ]),
        "node/node-1\n"
    );
}

fn subresources(api: &ApiServer) {
    tracing_free_section("scale subresource: kubectl scale, GET …/scale");
    assert_eq!(
        api.ok(&["scale", "deployment", "web", "--replicas=5", "-n", "demo"]),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(
        api.ok(&["scale", "rs", "rs", "--replicas=4", "-n", "demo"]),
        "replicaset.apps/rs scaled\n"
    );
    let scale = api.json(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/demo/deployments/web/scale",
    ]);
    assert_eq!(
        (
            &scale["kind"],
            &scale["spec"]["replicas"],
            &scale["status"]["selector"]
        ),
        (
            &serde_json::json!("Scale"),
            &serde_json::json!(5),
            &serde_json::json!("app=web")
        ),
        "{scale}"
    );
    let rs = api.json(&["get", "rs", "rs", "-n", "demo", "-o", "json"]);
    assert_eq!(rs["spec"]["replicas"], 4);
    // --current-replicas makes kubectl PUT the Scale with a precondition.
    let out = api.kubectl(&[
        "scale",
        "deployment",
        "web",
        "--current-replicas=2",
        "--replicas=3",
        "-n",
        "demo",
    ]);
    assert!(!out.status.success(), "{out:?}");

    tracing_free_section("status subresource: only status changes, main resource ignores status");
    let status = r#"{"spec":{"replicas":1},"status":{"replicas":5,"readyReplicas":5,"updatedReplicas":5,"availableReplicas":5}}"#;
    api.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "demo",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    let web = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    assert_eq!(
        (&web["spec"]["replicas"], &web["status"]["readyReplicas"]),
        (&serde_json::json!(5), &serde_json::json!(5)),
        "{web}"
    );
    let row = api.ok(&["get", "deployment", "web", "-n", "demo", "--no-headers"]);
    assert!(
        row.split_whitespace().take(4).eq(["web", "5/5", "5", "5"]),
        "{row}"
    );
    api.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":1}}"#,
    ]);
    let web = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    assert_eq!(web["status"]["readyReplicas"], 5, "{web}");
    api.ok(&["patch", "node", "node-1", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],"addresses":[{"type":"InternalIP","address":"10.1.0.1"}]}}"#]);
    let out = api.ok(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let row: Vec<&str> = out.split_whitespace().collect();
    // VERSION is empty (no nodeInfo), so INTERNAL-IP is the fifth word.
    assert_eq!(
        (row[0], row[1], row[2], row[4]),
        ("node-1", "Ready", "worker", "10.1.0.1"),
        "{out}"
    );

    tracing_free_section("pods/binding assigns a node once");
    assert_eq!(
        api.ok(&["run", "p", "--image=nginx", "-n", "demo"]),
        "pod/p created\n"
    );
    let binding = write(
        api.dir.path(),
        "binding.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"node-1"}}"#,
    );
    api.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/demo/pods/p/binding",
        "-f",
        &binding,
    ]);
    let pod = api.json(&["get", "pod", "p", "-n", "demo", "-o", "json"]);
    assert_eq!(pod["spec"]["nodeName"], "node-1", "{pod}");
    assert_eq!(
        (
            &pod["spec"]["containers"][0]["imagePullPolicy"],
            &pod["spec"]["enableServiceLinks"],
            &pod["status"]
        ),
        (
            &serde_json::json!("Always"),
            &serde_json::json!(true),
            &serde_json::json!({"phase": "Pending", "qosClass": "BestEffort"})
        ),
        "{pod}"
    );
    let out = api.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/demo/pods/p/binding",
        "-f",
        &binding,
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already assigned"),
        "{out:?}"
    );

    tracing_free_section("a pod a node runs is deleted gracefully; --force removes it");
    api.ok(&["delete", "pod", "p", "-n", "demo", "--wait=false"]);
    let pod = api.json(&["get", "pod", "p", "-n", "demo", "-o", "json"]);
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30, "{pod}");
    // No kubelet runs node-1: only a forced delete (grace 0) removes it, as upstream.
    api.ok(&[
        "delete",
        "pod",
        "p",
        "-n",
        "demo",
        "--grace-period=0",
        "--force",
    ]);
    let out = api.kubectl(&["get", "pod", "p", "-n", "demo"]);
    assert!(
        stderr(&out).contains("NotFound") || stderr(&out).contains("not found"),
        "{out:?}"
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn verbs(api: &ApiServer) {
    tracing_free_section("JSON patch, label, annotate");
    assert_eq!(
        api.ok(&["patch", "deployment", "web", "-n", "demo", "--type=json", "-p",
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"nginx:1.28"},
                {"op":"test","path":"/spec/replicas","value":5}]"#]),
        "deployment.apps/web patched\n"
    );
    let web = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.28"
    );
    let out = api.kubectl(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/nope","value":1}]"#,
    ]);
    assert!(
        stderr(&out).contains("unable to replace nonexistent key: nope"),
        "{out:?}"
    );

    tracing_free_section("strategic merge patch: env merged by name into the named container");
    assert_eq!(
        api.ok(&["patch", "deployment", "web", "-n", "demo", "--type=strategic", "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"main","env":[{"name":"B","value":"3"}]}]}}}}"#]),
        "deployment.apps/web patched\n"
    );
    let web = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    let main = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (
            web["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            &main["image"],
            &main["env"],
        ),
        (
            Some(1),
            &serde_json::json!("nginx:1.28"),
            &serde_json::json!([{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]),
        ),
        "{web}"
    );
    assert_eq!(
        api.ok(&["label", "deployment", "web", "-n", "demo", "tier=front"]),
        "deployment.apps/web labeled\n"
    );
    assert_eq!(
        api.ok(&["annotate", "deployment", "web", "-n", "demo", "note=hi"]),
        "deployment.apps/web annotated\n"
    );
    let web = api.json(&["get", "deployment", "web", "-n", "demo", "-o", "json"]);
    assert_eq!(
        (
            &web["metadata"]["labels"]["tier"],
            &web["metadata"]["annotations"]["note"]
        ),
        (&serde_json::json!("front"), &serde_json::json!("hi")),
        "{web}"
    );
    assert_eq!(
        api.ok(&["label", "deployment", "web", "-n", "demo", "tier-"]),
        "deployment.apps/web unlabeled\n"
    );

    tracing_free_section("edit with a scripted EDITOR, diff -f, describe");
    api.ok(&[
        "create",
        "configmap",
        "ed",
        "-n",
        "demo",
        "--from-literal=k=before",
    ]);
    let out = api
        .command(&["edit", "configmap", "ed", "-n", "demo"])
        .env("EDITOR", "sed -i s/before/after/")
        .output()
        .expect("kubectl edit");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configmap/ed edited\n",
        "{out:?}"
    );
    let ed = api.json(&["get", "cm", "ed", "-n", "demo", "-o", "json"]);
    assert_eq!(ed["data"]["k"], "after");
    let changed = write(
        api.dir.path(),
        "ed.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ed, namespace: demo}\ndata: {k: diffed}\n",
    );
    let out = api.kubectl(&["diff", "-f", &changed]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text.contains("-  k: after") && text.contains("+  k: diffed"),
        "{text}"
    );
    assert_eq!(
        api.json(&["get", "cm", "ed", "-n", "demo", "-o", "json"])["data"]["k"],
        "after"
    );
    let out = api.ok(&["describe", "deployment", "web", "-n", "demo"]);
    for want in [
        "Name:",
        "web",
        "Namespace:",
        "demo",
        "Selector:",
        "app=web",
        "Replicas:",
        "5 desired",
        "nginx:1.28",
        "note: hi",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }

    tracing_free_section("deletecollection with a label selector");
    for name in ["b1", "b2"] {
        api.ok(&["create", "configmap", name, "-n", "demo"]);
        api.ok(&["label", "configmap", name, "-n", "demo", "batch=x"]);
    }
    let out = api.ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/demo/configmaps?labelSelector=batch%3Dx",
    ]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("a list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
    let names = api.ok(&["get", "cm", "-n", "demo", "-o", "name"]);
    assert!(
        !names.contains("b1") && names.contains("configmap/ed"),
        "{names}"
    );

    tracing_free_section(
        "graceful delete: finalizers hold the object; kubectl delete returns once gone",
    );
    let fin = write(
        api.dir.path(),
        "fin.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fin, namespace: demo, finalizers: [example.com/hold]}\n",
    );
    api.ok(&["apply", "-f", &fin]);
    let mut deleting = api
        .command(&["delete", "cm", "fin", "-n", "demo"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl delete");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        deleting.try_wait().expect("try_wait").is_none(),
        "kubectl delete returned while the finalizer holds the object"
    );
    let held = api.json(&["get", "cm", "fin", "-n", "demo", "-o", "json"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    api.ok(&[
        "patch",
        "cm",
        "fin",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let out = deleting.wait_with_output().expect("wait");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configmap \"fin\" deleted\n",
        "{out:?}"
    );
    assert!(stderr(&api.kubectl(&["get", "cm", "fin", "-n", "demo"])).contains("NotFound"));

    tracing_free_section(
        "deleting a namespace: Terminating (refusing creates) until its contents are gone",
    );
    api.ok(&["create", "namespace", "term"]);
    api.ok(&["create", "configmap", "plain", "-n", "term"]);
    let held = write(
        api.dir.path(),
        "term-held.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: term, finalizers: [example.com/hold]}\n",
    );
    api.ok(&["apply", "-f", &held]);
    api.ok(&["delete", "namespace", "term", "--wait=false"]);
    let row = api.ok(&["get", "namespace", "term", "--no-headers"]);
    assert!(
        row.split_whitespace().nth(1) == Some("Terminating"),
        "{row}"
    );
    let out = api.kubectl(&["create", "configmap", "late", "-n", "term"]);
    assert!(
        stderr(&out).contains(
            "unable to create new content in namespace term because it is being terminated"
        ),
        "{out:?}"
    );
    // The namespace finalizer deletes what it can; the held object waits for its finalizer.
    api.ok(&[
        "wait",
        "--for=delete",
        "configmap/plain",
        "-n",
        "term",
        "--timeout=60s",
    ]);
    let held_obj = api.json(&["get", "cm", "held", "-n", "term", "-o", "json"]);
    assert!(
        held_obj["metadata"]["deletionTimestamp"].is_string(),
        "{held_obj}"
    );
    let ns = api.json(&["get", "namespace", "term", "-o", "json"]);
    assert_eq!(
        (&ns["status"]["phase"], &ns["spec"]["finalizers"]),
        (
            &serde_json::json!("Terminating"),
            &serde_json::json!(["kubernetes"])
        ),
        "{ns}"
    );
    api.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "term",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    api.ok(&["wait", "--for=delete", "namespace/term", "--timeout=60s"]);
    assert!(stderr(&api.kubectl(&["get", "namespace", "term"])).contains("NotFound"));
    assert!(stderr(&api.kubectl(&["get", "cm", "held", "-n", "term"])).contains("NotFound"));
}

fn server_side_apply(api: &ApiServer) {
    tracing_free_section("server-side apply: create, update, conflicts, force, removal");
    let cm = |data: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ssa, namespace: demo}}\ndata: {data}\n"
        )
    };
    let first = write(api.dir.path(), "ssa1.yaml", &cm("{a: \"1\", b: \"2\"}"));
    assert_eq!(
        api.ok(&["apply", "--server-side", "-f", &first]),
        "configmap/ssa serverside-applied\n"
    );
    assert_eq!(
        api.ok(&["apply", "--server-side", "-f", &first]),
        "configmap/ssa serverside-applied\n"
    );
    let obj = api.json(&[
        "get",
        "cm",
        "ssa",
        "-n",
        "demo",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let managed = &obj["metadata"]["managedFields"][0];
    assert_eq!(
        (&managed["manager"], &managed["operation"]),
        (&serde_json::json!("kubectl"), &serde_json::json!("Apply")),
        "{obj}"
    );
    assert_eq!(
        managed["fieldsV1"]["f:data"]["f:a"],
        serde_json::json!({}),
        "{obj}"
    );
    let other = write(api.dir.path(), "ssa2.yaml", &cm("{a: \"changed\"}"));
    let out = api.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &other,
    ]);
    assert!(
        stderr(&out).contains("conflict with \"kubectl\": .data.a"),
        "{out:?}"
    );
    assert_eq!(
        api.json(&["get", "cm", "ssa", "-n", "demo", "-o", "json"])["data"]["a"],
        "1"
    );
    api.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &other,
    ]);
    // kubectl no longer applies b (removed) nor a (now owned by "other": kept).
    let third = write(api.dir.path(), "ssa3.yaml", &cm("{c: \"3\"}"));
    api.ok(&["apply", "--server-side", "-f", &third]);
    let obj = api.json(&["get", "cm", "ssa", "-n", "demo", "-o", "json"]);
    assert_eq!(
        obj["data"],
        serde_json::json!({"a": "changed", "c": "3"}),
        "{obj}"
    );
    let deploy = APP
        .split("---")
        .find(|d| d.contains("kind: Deployment"))
        .expect("a Deployment")
        .replace("name: web", "name: ssa");
    let deploy = write(api.dir.path(), "ssa-deploy.yaml", &deploy);
    assert_eq!(
        api.ok(&["apply", "--server-side", "-f", &deploy]),
        "deployment.apps/ssa serverside-applied\n"
    );
    assert_eq!(
        api.json(&["get", "deployment", "ssa", "-n", "demo", "-o", "json"])["metadata"]["generation"],
        1
    );
}

impl ApiServer {
    /// The bearer token of the kubeconfig the server wrote.
    fn token(&self) -> String {
        let text = std::fs::read_to_string(self.kubeconfig()).expect("kubeconfig");
        text.lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .expect("a token in the kubeconfig")
            .to_string()
    }

    /// `curl` as the admin: (HTTP code, Content-Type, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String, String) {
        let out = Command::new("curl")
            .args(["-sk", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token()))
            .args(["-w", "\n%{content_type}\n%{http_code}"])
            .args(args)
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.rsplitn(3, '\n');
        let code = parts.next().unwrap_or("").trim().parse().unwrap_or(0);
        let content_type = parts.next().unwrap_or("").to_string();
        (code, content_type, parts.next().unwrap_or("").to_string())
    }
}

/// Aggregated discovery v2 with its exact content type, legacy discovery for other clients, and
/// `/openapi/v3` schemas good enough for `kubectl explain`.
fn discovery_and_openapi(api: &ApiServer) {
    tracing_free_section("aggregated discovery v2, legacy discovery, kubectl explain");
    const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    let accept = format!("Accept: {AGGREGATED},application/json");
    let (code, content_type, body) = api.curl(&["-H", &accept], "/apis");
    assert_eq!((code, content_type.as_str()), (200, AGGREGATED), "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list["kind"], "APIGroupDiscoveryList");
    let apps = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["metadata"]["name"] == "apps")
        .unwrap_or_else(|| panic!("no apps group: {body}"));
    let deployments = apps["versions"][0]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["resource"] == "deployments")
        .unwrap_or_else(|| panic!("no deployments: {body}"));
    assert_eq!(
        (
            &deployments["scope"],
            &deployments["responseKind"]["kind"],
            &deployments["subresources"].as_array().map(|s| s
                .iter()
                .map(|s| s["subresource"].clone())
                .collect::<Vec<_>>()),
        ),
        (
            &serde_json::json!("Namespaced"),
            &serde_json::json!("Deployment"),
            &Some(vec![
                serde_json::json!("status"),
                serde_json::json!("scale")
            ]),
        ),
        "{deployments}"
    );
    let (code, content_type, body) = api.curl(&["-H", &accept], "/api");
    assert_eq!((code, content_type.as_str()), (200, AGGREGATED), "{body}");
    assert!(body.contains(r#""resource":"pods""#), "{body}");
    let (code, content_type, body) = api.curl(&["-H", "Accept: application/json"], "/apis");
    assert_eq!(
        (code, content_type.as_str()),
        (200, "application/json"),
        "{body}"
    );
    assert!(body.contains(r#""kind":"APIGroupList""#), "{body}");

    let explain = api.ok(&["explain", "deployment.spec"]);
    for want in [
        "GROUP:      apps",
        "KIND:       Deployment",
        "VERSION:    v1",
        "FIELD: spec <DeploymentSpec>",
        "replicas\t<integer>",
        "Number of desired pods.",
        "template\t<PodTemplateSpec> -required-",
    ] {
        assert!(explain.contains(want), "{want:?} missing from:\n{explain}");
    }
    let explain = api.ok(&["explain", "configmap.data"]);
    assert!(
        explain.contains("KIND:       ConfigMap")
            && explain.contains("FIELD: data <map[string]string>"),
        "{explain}"
    );
    let out = api.kubectl(&["explain", "deployment.spec.nope"]);
    assert!(
        stderr(&out).contains("field \"nope\" does not exist"),
        "{out:?}"
    );
}

/// `/metrics`: kube-apiserver's request counter and latency histogram, by verb and resource.
fn metrics(api: &ApiServer) {
    tracing_free_section("/metrics counts requests by verb, resource and code");
    let text = api.ok(&["get", "--raw", "/metrics"]);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    let labels = r#"group="apps",resource="deployments",subresource="",verb="PATCH",version="v1""#;
    let patches = value(&format!("apiserver_request_total{{code=\"200\",{labels}}}"));
    let count = value(&format!(
        "apiserver_request_duration_seconds_count{{{labels}}}"
    ));
    let sum = value(&format!(
        "apiserver_request_duration_seconds_sum{{{labels}}}"
    ));
    let under_inf = value(&format!(
        "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}}"
    ));
    let not_found = value(
        r#"apiserver_request_total{code="404",group="",resource="configmaps",subresource="",verb="GET",version="v1"}"#,
    );
    let creates = value(
        r#"apiserver_request_total{code="201",group="",resource="configmaps",subresource="",verb="POST",version="v1"}"#,
    );
    let watches = value(
        r#"apiserver_request_total{code="200",group="",resource="configmaps",subresource="",verb="WATCH",version="v1"}"#,
    );
    eprintln!(
        "metrics: {patches} deployment PATCHes (mean {:.1} ms), {creates} configmap creates, {not_found} configmap 404s, {watches} configmap watches",
        sum / count * 1000.0
    );
    assert!(
        patches >= 5.0 && count >= patches && under_inf == count,
        "{text}"
    );
    assert!(
        not_found >= 1.0 && creates >= 3.0 && watches >= 1.0,
        "{text}"
    );
    let conflicts = value(
        r#"apiserver_request_total{code="409",group="",resource="configmaps",subresource="",verb="PUT",version="v1"}"#,
    );
    assert_eq!(
        conflicts, 1.0,
        "the one 409 of the optimistic concurrency check"
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
