//! `skiff node-agent` as a real process with real runc, CNI plugins and a local registry, under
//! `skiff store` + `skiff apiserver` + `skiff scheduler` + `skiff controller-manager`:
//! a Deployment of busybox httpd pods becomes Running and Ready (readiness httpGet), a pod
//! reaches another pod's IP, a crashing container shows CrashLoopBackOff with a growing
//! back-off, an over-limit one `OOMKilled`, a liveness failure restarts a container, a
//! configMap volume follows its ConfigMap, hostPort answers, deletions honour the grace
//! period, a missing image shows ErrImagePull then ImagePullBackOff with the registry's words,
//! a missing command shows runc's message; after a kill -9 of the agent running containers
//! are re-adopted (same PID) and one that exited meanwhile is restarted with its exit code
//! kept; an imported image runs with `imagePullPolicy: Never`.

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
use std::time::{Duration, Instant};

use control_plane::Cluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use node_agent::{Agent, ChildGuard, Registry, STUB_RESOLVER};

/// A pod from its JSON manifest.
fn pod_from(json: &str) -> Pod {
    serde_json::from_str(json).expect("pod JSON")
}

fn status_of<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == container)
}

fn waiting_reason(pod: &Pod, container: &str) -> Option<String> {
    status_of(pod, container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

struct Env {
    cluster: Cluster,
    registry: Registry,
    agent: Agent,
    pods: Api<Pod>,
    _pki: tempfile::TempDir,
}

impl Env {
    async fn start(subnet: u8) -> Env {
        let registry = Registry::start(&["1.36"]);
        // One CA: the agent's serving certificate (for its node IP) and the API server's
        // client certificate for the agent (`--client-ca-file`).
        let pki = tempfile::tempdir().unwrap();
        let node_ip = format!("10.{subnet}.77.1");
        let out = Command::new(common::skiff_bin())
            .args(["pki", "init", "--hosts", &format!("{node_ip},127.0.0.1")])
            .arg("--dir")
            .arg(pki.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "skiff pki init: {out:?}");
        let file = |name: &str| pki.path().join(name).to_string_lossy().to_string();
        let mut cluster = Cluster::api_only(&[
            "--kubelet-client-certificate",
            &file("client.pem"),
            "--kubelet-client-key",
            &file("client-key.pem"),
            "--kubelet-certificate-authority",
            &file("ca.pem"),
        ])
        .await;
        cluster.start_scheduler();
        cluster.start_manager(&[
            "--controllers",
            "deployment,replicaset,garbagecollector,endpointslice",
        ]);
        let mirror = format!("docker.io=http://{}", registry.host());
        let insecure_host = registry.host();
        let registries_path = pki.path().join("registries.yaml");
        std::fs::write(
            &registries_path,
            format!(
                "mirrors:\n  docker.io:\n    endpoint:\n      - \"http://{0}\"\nconfigs:\n  \"{0}\":\n    tls:\n      insecure_skip_verify: true\n",
                registry.host()
            ),
        )
        .unwrap();
        let registries_yaml = registries_path.to_string_lossy().to_string();
        let agent = Agent::start(
            &cluster.kubeconfig,
            "worker-1",
            subnet,
            &[
                // The local registry: as flags on one node, as k3s's registries.yaml on the
                // others.
                if subnet % 2 == 1 {
                    "--insecure-registry"
                } else {
                    "--private-registry"
                },
                if subnet % 2 == 1 {
                    &insecure_host
                } else {
                    &registries_yaml
                },
                if subnet % 2 == 1 {
                    "--registry-mirror"
                } else {
                    "--node-labels"
                },
                if subnet % 2 == 1 {
                    &mirror
                } else {
                    "registries=yaml"
                },
                "--crash-loop-backoff-initial",
                "1s",
                "--crash-loop-backoff-max",
                "8s",
                "--tls-cert-file",
                &file("server.pem"),
                "--tls-private-key-file",
                &file("server-key.pem"),
                "--client-ca-file",
                &file("ca.pem"),
                "--port",
                &common::free_port().to_string(),
                "--cluster-dns",
                &node_ip,
            ],
        );
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
        let env = Env {
            cluster,
            registry,
            agent,
            pods,
            _pki: pki,
        };
        env.wait("the node Ready", Duration::from_secs(60), async || {
            let node = env.cluster.kubectl(&[
                "get",
                "node",
                "worker-1",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            (String::from_utf8_lossy(&node.stdout) == "True").then_some(())
        })
        .await;
        env
    }

    fn diagnostics(&self) -> String {
        let pods = self.cluster.kubectl(&["get", "pods", "-o", "wide"]);
        format!(
            "pods:\n{}\nagent log (tail):\n{}\n{}",
            String::from_utf8_lossy(&pods.stdout),
            self.agent.log_tail(60),
            self.cluster.diagnostics()
        )
    }

    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        control_plane::poll_until(
            what,
            timeout,
            Duration::from_millis(250),
            || self.diagnostics(),
            check,
        )
        .await
    }

    async fn create(&self, json: &str) -> Pod {
        let pod = pod_from(json);
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let what = format!("pod {name}: {what}");
        self.wait(&what, timeout, async || {
            let pod = self.pods.get_opt(name).await.ok().flatten()?;
            check(&pod).then_some(pod)
        })
        .await
    }

    async fn delete_all_and_wait(&self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "deployment", "--all", "--wait=false"]);
        let _ = self.cluster.kubectl(&[
            "delete",
            "pods",
            "--all",
            "--grace-period=1",
            "--wait=false",
        ]);
        self.wait("every pod gone", Duration::from_secs(60), async || {
            let list = self.pods.list(&ListParams::default()).await.ok()?;
            list.items.is_empty().then_some(())
        })
        .await;
    }
}

fn busybox_pod(name: &str, command: &str, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},
           "spec":{{"terminationGracePeriodSeconds":3{extra_spec},
             "containers":[{{"name":"main","image":"busybox:1.36","command":["sh","-c",{command:?}]}}]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_restart_probe_and_network_for_real() {
    let env = Env::start(91).await;

    // A Deployment of three busybox httpd pods, Ready through an httpGet readiness probe.
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "httpd", "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo hello-from-$(hostname) > /www/index.html; exec httpd -f -p 8080 -h /www"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}
                }]}
            }
        }
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(env.cluster.client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    let started = Instant::now();
    let web = env
        .wait(
            "3/3 web pods Running and Ready",
            Duration::from_secs(120),
            async || {
                let list = env
                    .pods
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .ok()?;
                let ready: Vec<Pod> = list
                    .items
                    .into_iter()
                    .filter(|p| phase(p) == "Running" && is_ready(p))
                    .collect();
                (ready.len() == 3).then_some(ready)
            },
        )
        .await;
    println!("3/3 Ready after {:.1}s", started.elapsed().as_secs_f64());
    let ips: Vec<String> = web
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    for ip in &ips {
        assert!(
            ip.starts_with("10.91.77."),
            "pod IP {ip} from the node's pod CIDR"
        );
    }
    let status = status_of(&web[0], "httpd").unwrap();
    assert!(
        status
            .container_id
            .as_deref()
            .unwrap()
            .starts_with("runc://")
    );
    assert!(
        status.image_id.contains("@sha256:"),
        "imageID {}",
        status.image_id
    );
    // The node reaches a pod.
    let body = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://{}:8080/index.html", ips[0]),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body.stdout).starts_with("hello-from-web-"),
        "{body:?}"
    );

    // One pod reaches another pod's IP.
    env.create(&busybox_pod(
        "client",
        &format!("wget -qO- http://{}:8080/index.html", ips[1]),
        r#","restartPolicy":"Never""#,
    ))
    .await;
    let client = env
        .wait_pod("client", "Succeeded", Duration::from_secs(60), |p| {
            phase(p) == "Succeeded" || phase(p) == "Failed"
        })
        .await;
    assert_eq!(phase(&client), "Succeeded", "{}", env.diagnostics());
    let uid = client.metadata.uid.clone().unwrap();
    assert!(
        env.agent
            .container_log("default", "client", &uid, "main", 0)
            .starts_with("hello-from-web-")
    );

    // A crashing container: CrashLoopBackOff with a growing back-off and the exit code kept.
    env.create(&busybox_pod("crasher", "echo boom; exit 3", ""))
        .await;
    let crasher = env
        .wait_pod("crasher", "3 restarts", Duration::from_secs(60), |p| {
            status_of(p, "main").is_some_and(|s| s.restart_count >= 3)
        })
        .await;
    let crash = env
        .wait_pod(
            "crasher",
            "CrashLoopBackOff",
            Duration::from_secs(30),
            |p| waiting_reason(p, "main").as_deref() == Some("CrashLoopBackOff"),
        )
        .await;
    let s = status_of(&crash, "main").unwrap();
    let message = s
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(
        message.starts_with("back-off ")
            && message.contains("restarting failed container=main pod=crasher_default"),
        "{message}"
    );
    let last = s.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let uid = crasher.metadata.uid.clone().unwrap();
    assert_eq!(
        env.agent
            .container_log("default", "crasher", &uid, "main", 0),
        "boom",
        "log of the first attempt"
    );
    // The delays grow: 1 s, 2 s, 4 s between attempts (read off the attempts' start times).
    let starts: Vec<std::time::SystemTime> = (0..4)
        .filter_map(|n| {
            let path = env
                .agent
                .logs
                .join(format!("default_crasher_{uid}"))
                .join("main")
                .join(format!("{n}.log"));
            std::fs::metadata(path).ok()?.created().ok()
        })
        .collect();
    assert!(starts.len() >= 3, "attempt logs {starts:?}");
    let gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default().as_secs_f64())
        .collect();
    println!("crash loop gaps: {gaps:?}");
    // Each gap is the back-off plus the time the agent took to notice the exit (it reads
    // exit files once a second): 1–2.5 s, 2–3.5 s, 4–5.5 s.
    for (gap, backoff) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(
            *gap >= backoff && *gap <= backoff + 1.5,
            "back-off grows 1 s, 2 s, 4 s: {gaps:?}"
        );
    }

    // Over its memory limit: OOMKilled.
    env.create(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hog"},"spec":{"restartPolicy":"Never",
            "containers":[{"name":"main","image":"busybox:1.36","command":["sh","-c","head -c 200m /dev/zero | tail"],
            "resources":{"limits":{"memory":"16Mi"}}}]}}"#,
    )
    .await;
    let hog = env
        .wait_pod("hog", "Failed", Duration::from_secs(60), |p| {
            phase(p) == "Failed"
        })
        .await;
    let t = status_of(&hog, "main")
        .unwrap()
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!((t.reason.as_deref(), t.exit_code), (Some("OOMKilled"), 137));

    // A liveness failure restarts the container.
    env.create(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"unhealthy"},"spec":{"terminationGracePeriodSeconds":1,
            "containers":[{"name":"main","image":"busybox:1.36","command":["sh","-c","touch /tmp/alive; sleep 3; rm /tmp/alive; sleep 1000"],
            "livenessProbe":{"exec":{"command":["test","-f","/tmp/alive"]},"periodSeconds":1,"failureThreshold":2}}]}}"#,
    )
    .await;
    env.wait_pod(
        "unhealthy",
        "restarted by liveness",
        Duration::from_secs(60),
        |p| status_of(p, "main").is_some_and(|s| s.restart_count >= 1),
    )
    .await;

    // A configMap volume follows its ConfigMap.
    let cms: Api<ConfigMap> = Api::namespaced(env.cluster.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "conf"}, "data": {"greeting": "first"}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let watcher = env
        .create(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"reader"},"spec":{"terminationGracePeriodSeconds":1,
                "volumes":[{"name":"conf","configMap":{"name":"conf"}}],
                "containers":[{"name":"main","image":"busybox:1.36","command":["sh","-c","while true; do cat /conf/greeting; echo; sleep 1; done"],
                "volumeMounts":[{"name":"conf","mountPath":"/conf"}]}]}}"#,
        )
        .await;
    let uid = watcher.metadata.uid.clone().unwrap();
    env.wait(
        "the reader sees 'first'",
        Duration::from_secs(60),
        async || {
            env.agent
                .container_log("default", "reader", &uid, "main", 0)
                .contains("first")
                .then_some(())
        },
    )
    .await;
    cms.patch(
        "conf",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"greeting": "second"}})),
    )
    .await
    .unwrap();
    env.wait(
        "the reader sees 'second'",
        Duration::from_secs(90),
        async || {
            env.agent
                .container_log("default", "reader", &uid, "main", 0)
                .contains("second")
                .then_some(())
        },
    )
    .await;

    // hostPort answers on the node's address.
    env.create(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hostport"},"spec":{"terminationGracePeriodSeconds":1,
            "containers":[{"name":"main","image":"busybox:1.36","command":["sh","-c","echo via-hostport > /www/index.html; exec httpd -f -p 8080 -h /www"],
            "ports":[{"containerPort":8080,"hostPort":18091}]}]}}"#,
    )
    .await;
    env.wait_pod("hostport", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    let url = format!("http://{}:18091/index.html", env.agent.node_ip);
    env.wait("hostPort answers", Duration::from_secs(20), async || {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "2", &url])
            .output()
            .ok()?;
        (String::from_utf8_lossy(&out.stdout).trim() == "via-hostport").then_some(())
    })
    .await;

    // A missing image: ErrImagePull, then ImagePullBackOff, with the registry's words.
    let missing = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"noimage"}},"spec":{{"containers":[{{"name":"main","image":"{}/library/nosuch:1"}}]}}}}"#,
        env.registry.host()
    );
    env.create(&missing).await;
    let pulled = env
        .wait_pod("noimage", "ErrImagePull", Duration::from_secs(30), |p| {
            matches!(
                waiting_reason(p, "main").as_deref(),
                Some("ErrImagePull") | Some("ImagePullBackOff")
            )
        })
        .await;
    let message = status_of(&pulled, "main")
        .unwrap()
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap_or_default();
    assert!(message.contains("nosuch"), "{message}");
    assert!(
        message.to_lowercase().contains("unknown") || message.to_lowercase().contains("not found"),
        "{message}"
    );
    env.wait_pod(
        "noimage",
        "ImagePullBackOff",
        Duration::from_secs(30),
        |p| waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff"),
    )
    .await;

    // A command that does not exist: runc's message, exit 128.
    env.create(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"nocommand"},"spec":{"restartPolicy":"Never",
            "containers":[{"name":"main","image":"busybox:1.36","command":["/no/such/binary"]}]}}"#,
    )
    .await;
    let nocommand = env
        .wait_pod("nocommand", "Failed", Duration::from_secs(60), |p| {
            phase(p) == "Failed"
        })
        .await;
    let t = status_of(&nocommand, "main")
        .unwrap()
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(t.exit_code, 128);
    assert!(
        t.message
            .as_deref()
            .unwrap_or_default()
            .contains("no such file or directory"),
        "{t:?}"
    );

    // Deletion honours the grace period: TERM is handled (the container says so), and a
    // container ignoring TERM is killed after the grace period.
    let graceful = env
        .create(&busybox_pod(
            "graceful",
            "trap 'echo got-TERM; exit 0' TERM; while true; do sleep 0.2; done",
            "",
        ))
        .await;
    env.create(&busybox_pod(
        "stubborn",
        "trap '' TERM; while true; do sleep 0.2; done",
        "",
    ))
    .await;
    env.wait_pod("graceful", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    env.wait_pod("stubborn", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    env.pods
        .delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    env.pods
        .delete("graceful", &DeleteParams::default())
        .await
        .unwrap();
    let mut graceful_gone = None;
    env.wait("both deleted", Duration::from_secs(30), async || {
        if graceful_gone.is_none() && env.pods.get_opt("graceful").await.ok()?.is_none() {
            graceful_gone = Some(t0.elapsed());
        }
        env.pods
            .get_opt("stubborn")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let stubborn_gone = t0.elapsed();
    let graceful_gone = graceful_gone.unwrap_or(stubborn_gone);
    println!("graceful gone after {graceful_gone:?}, stubborn after {stubborn_gone:?}");
    assert!(
        stubborn_gone >= Duration::from_secs(3),
        "killed only after its 3 s grace: {stubborn_gone:?}"
    );
    assert!(
        graceful_gone < Duration::from_secs(3),
        "TERM handled at once: {graceful_gone:?}"
    );
    let uid = graceful.metadata.uid.clone().unwrap();
    assert!(
        env.agent
            .container_log("default", "graceful", &uid, "main", 0)
            .contains("got-TERM")
    );

    env.delete_all_and_wait().await;
    // Nothing of the pods is left: no runc container, no netns.
    let listed = env.agent.runc(&["list", "-q"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "containers left: {:?}",
        listed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_readopts_containers_and_imported_images_run_offline() {
    let mut env = Env::start(92).await;

    // An image imported offline (a docker-archive tar) runs with imagePullPolicy Never.
    let tar = env.agent.root.parent().unwrap().join("offline.tar");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1.36", env.registry.layout.display()))
        .arg(format!("docker-archive:{}:offline/tools:7", tar.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(common::skiff_bin())
        .args(["images", "import"])
        .arg(&tar)
        .arg("--root-dir")
        .arg(&env.agent.root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skiff images import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = Command::new(common::skiff_bin())
        .args(["images", "list", "--root-dir"])
        .arg(&env.agent.root)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("docker.io/offline/tools:7"),
        "{listed:?}"
    );
    env.create(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"offline"},"spec":{"restartPolicy":"Never",
            "containers":[{"name":"main","image":"offline/tools:7","imagePullPolicy":"Never","command":["sh","-c","cat /etc/motd"]}]}}"#,
    )
    .await;
    env.wait_pod("offline", "Succeeded", Duration::from_secs(60), |p| {
        phase(p) == "Succeeded"
    })
    .await;

    // Kill -9 the agent: a running container keeps running and is re-adopted (same PID);
    // one that exits while the agent is down is restarted per policy, its exit code kept.
    let long = env
        .create(&busybox_pod("long", "while true; do sleep 1; done", ""))
        .await;
    let short = env
        .create(&busybox_pod(
            "short",
            "sleep 4; exit 7",
            r#","restartPolicy":"OnFailure""#,
        ))
        .await;
    env.wait_pod("long", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    env.wait_pod("short", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    let long_id = format!("{}_main_0", long.metadata.uid.as_ref().unwrap());
    let short_id = format!("{}_main_0", short.metadata.uid.as_ref().unwrap());
    let pid_before = env.agent.container_pid(&long_id).expect("long runs");
    env.agent.kill9();
    // The short one exits meanwhile.
    let exits = env
        .agent
        .root
        .join("run/runtime/exits")
        .join(format!("{short_id}.json"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exits.exists() {
        assert!(
            Instant::now() < deadline,
            "the short container's exit was not recorded with the agent down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        env.agent.container_pid(&long_id),
        Some(pid_before),
        "kept running with the agent down"
    );
    env.agent.restart();
    let short = env
        .wait_pod(
            "short",
            "restarted once with exit 7 kept",
            Duration::from_secs(60),
            |p| {
                status_of(p, "main").is_some_and(|s| {
                    s.restart_count == 1
                        && s.last_state
                            .as_ref()
                            .and_then(|l| l.terminated.as_ref())
                            .is_some_and(|t| t.exit_code == 7)
                })
            },
        )
        .await;
    assert_eq!(phase(&short), "Running");
    let long = env
        .wait_pod("long", "still Running", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await;
    assert_eq!(
        status_of(&long, "main").unwrap().restart_count,
        0,
        "re-adopted, not restarted"
    );
    assert_eq!(
        env.agent.container_pid(&long_id),
        Some(pid_before),
        "same PID after the restart"
    );
    assert!(
        env.agent.log().contains("re-adopted a running container"),
        "{}",
        env.agent.log_tail(40)
    );

    env.delete_all_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_go_through_the_api_server_to_the_agent() {
    let env = Env::start(93).await;
    let talker = env
        .create(&busybox_pod(
            "talker",
            "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done",
            "",
        ))
        .await;
    env.wait_pod("talker", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kubectl logs, --tail, --timestamps.
    let logs = env
        .cluster
        .kubectl_ok_with(&["logs", "talker"], || env.diagnostics());
    assert!(logs.starts_with("line-0\nline-1\n"), "{logs}");
    let tail = env
        .cluster
        .kubectl_ok_with(&["logs", "talker", "--tail=1"], || env.diagnostics());
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let stamped = env
        .cluster
        .kubectl_ok_with(&["logs", "talker", "--timestamps", "--tail=1"], || {
            env.diagnostics()
        });
    let (stamp, text) = stamped
        .trim_end()
        .split_once(' ')
        .expect("timestamp and text");
    assert!(
        stamp.parse::<k8s_openapi::jiff::Timestamp>().is_ok() && text.starts_with("line-"),
        "{stamped}"
    );

    // kubectl logs -f keeps streaming.
    let mut follow = env
        .cluster
        .api
        .kubectl_command(&env.cluster.kubeconfig, &["logs", "-f", "talker"]);
    let mut child = follow
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&out.stdout).to_string();
    let last = followed
        .lines()
        .last()
        .unwrap_or_default()
        .trim_start_matches("line-")
        .parse::<u32>()
        .unwrap_or(0);
    let first_tail = tail
        .trim()
        .trim_start_matches("line-")
        .parse::<u32>()
        .unwrap_or(0);
    assert!(
        last >= first_tail + 5,
        "logs -f streamed new lines: last {last}, before {first_tail}"
    );

    // kubectl logs --previous shows the attempt before the current one.
    env.create(&busybox_pod(
        "flaky",
        "echo attempt-$(date +%s%N); exit 1",
        "",
    ))
    .await;
    let flaky = env
        .wait_pod("flaky", "2 restarts", Duration::from_secs(60), |p| {
            status_of(p, "main").is_some_and(|s| s.restart_count >= 2)
        })
        .await;
    let previous = env
        .cluster
        .kubectl_ok_with(&["logs", "flaky", "--previous"], || env.diagnostics());
    let uid = flaky.metadata.uid.clone().unwrap();
    let restarts = status_of(&flaky, "main").unwrap().restart_count as u32;
    let candidates: Vec<String> = (restarts.saturating_sub(2)..=restarts)
        .map(|n| env.agent.container_log("default", "flaky", &uid, "main", n))
        .collect();
    assert!(
        previous.starts_with("attempt-") && candidates.iter().any(|c| c.trim() == previous.trim()),
        "{previous:?} vs {candidates:?}"
    );

    // kubectl exec: output, stdin, and the exit code propagated.
    let out = env
        .cluster
        .kubectl(&["exec", "talker", "--", "sh", "-c", "echo from-exec; exit 3"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "from-exec",
        "{out:?}\n{}",
        env.diagnostics()
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "kubectl exec exit code: {out:?}"
    );
    let mut cat = env.cluster.api.kubectl_command(
        &env.cluster.kubeconfig,
        &["exec", "-i", "talker", "--", "cat"],
    );
    let mut child = cat
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl exec -i");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"through-stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through-stdin\n",
        "{out:?}"
    );
    assert!(out.status.success());

    // kubectl exec -it: the command runs on a terminal (kubectl itself runs under `script`,
    // which gives it one).
    let line = format!(
        "KUBECONFIG={} kubectl exec -it talker -- sh -c 'tty; [ -t 0 ] && [ -t 1 ] && echo on-a-tty'",
        env.cluster.kubeconfig.display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("/dev/pts/") && text.contains("on-a-tty"),
        "kubectl exec -it: {out:?}\n{}",
        env.diagnostics()
    );
    let plain = env.cluster.kubectl_ok_with(
        &[
            "exec",
            "talker",
            "--",
            "sh",
            "-c",
            "[ -t 1 ] || echo no-tty",
        ],
        || env.diagnostics(),
    );
    assert_eq!(plain.trim(), "no-tty", "without -t there is no terminal");

    // kubectl cp (tar over exec) both ways.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("note.txt");
    std::fs::write(&local, "copied-in\n").unwrap();
    env.cluster.kubectl_ok_with(
        &["cp", local.to_str().unwrap(), "talker:/tmp/note.txt"],
        || env.diagnostics(),
    );
    let inside = env
        .cluster
        .kubectl_ok_with(&["exec", "talker", "--", "cat", "/tmp/note.txt"], || {
            env.diagnostics()
        });
    assert_eq!(inside, "copied-in\n");
    let back = dir.path().join("back.txt");
    env.cluster.kubectl_ok_with(
        &["cp", "talker:/tmp/note.txt", back.to_str().unwrap()],
        || env.diagnostics(),
    );
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied-in\n");

    // kubectl port-forward serves a request (kubectl tries a WebSocket tunnel first and falls
    // back to SPDY, which the agent serves).
    env.create(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},"spec":{"terminationGracePeriodSeconds":1,
            "containers":[{"name":"main","image":"busybox:1.36","command":["sh","-c","echo forwarded > /www/index.html; exec httpd -f -p 127.0.0.1:8080 -h /www"]}]}}"#,
    )
    .await;
    env.wait_pod("web", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    let local_port = common::free_port();
    let mut forward = env.cluster.api.kubectl_command(
        &env.cluster.kubeconfig,
        &["port-forward", "pod/web", &format!("{local_port}:8080")],
    );
    let mut forwarder = forward
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let url = format!("http://127.0.0.1:{local_port}/index.html");
    let served = env
        .wait("port-forward serves", Duration::from_secs(20), async || {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "3", &url])
                .output()
                .ok()?;
            let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!body.is_empty()).then_some(body)
        })
        .await;
    let _ = forwarder.kill();
    let _ = forwarder.wait();
    assert_eq!(served, "forwarded");

    // The agent's /metrics, with kubelet's names, to a client with a certificate.
    let pki = env._pki.path();
    let metrics = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg("--cacert")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("client.pem"))
        .arg("--key")
        .arg(pki.join("client-key.pem"))
        .arg(format!(
            "https://{}:{}/metrics",
            env.agent.node_ip,
            env.agent.port()
        ))
        .output()
        .unwrap();
    let metrics = format!(
        "{}{}",
        String::from_utf8_lossy(&metrics.stdout),
        String::from_utf8_lossy(&metrics.stderr)
    );
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        value("kubelet_started_containers_total{container_type=\"container\"}") >= 3.0,
        "{metrics}"
    );
    assert!(value("kubelet_running_pods") >= 2.0, "{metrics}");
    assert!(
        value("kubelet_pod_start_duration_seconds_count") >= 2.0,
        "{metrics}"
    );

    // Without the API server's client certificate the agent answers nobody.
    let port = env.agent.port();
    let anonymous = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!(
            "https://{}:{port}/containerLogs/default/talker/main",
            env.agent.node_ip
        ))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&anonymous.stdout).to_string();
    assert!(
        code == "000" || code == "401" || code == "403",
        "anonymous call to the agent answered {code}"
    );
    let _ = talker;
    env.delete_all_and_wait().await;
}

/// A burst of 40 pods created and deleted at once: every sandbox is torn down by the agent
/// (not dropped by the API server when a status update lands in the grace period), so no
/// per-pod iptables rule of the node's subnet is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pods_is_torn_down_completely() {
    let env = Env::start(94).await;
    for i in 0..40 {
        env.create(&busybox_pod(&format!("b{i}"), "sleep 3600", ""))
            .await;
    }
    env.wait("40 pods Running", Duration::from_secs(180), async || {
        let list = env.pods.list(&ListParams::default()).await.ok()?;
        (list.items.iter().filter(|p| phase(p) == "Running").count() == 40).then_some(())
    })
    .await;
    env.delete_all_and_wait().await;
    let saved = Command::new("iptables-save").output().unwrap();
    let text = String::from_utf8_lossy(&saved.stdout).to_string();
    let left: Vec<&str> = text.lines().filter(|l| l.contains("10.94.77.")).collect();
    assert!(
        left.is_empty(),
        "{} rules left:\n{}",
        left.len(),
        left.join("\n")
    );
    let torn_down = env.agent.log().matches("sandbox torn down").count();
    assert_eq!(torn_down, 40, "every sandbox torn down by the agent");
}

/// The Service range routed to the node's pod bridge for the test, so that a packet to a
/// ClusterIP no rule rewrites stays on this machine (it would follow the default route out);
/// removed, with the proxy's rules, when the test ends however it ends.
struct ProxyRules {
    route: Vec<String>,
}

impl ProxyRules {
    fn route_services_to(&mut self, bridge: &str) {
        let route: Vec<String> = ["10.43.0.0/16", "dev", bridge]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = Command::new("ip")
            .args(["route", "replace"])
            .args(&route)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip route: {out:?}");
        self.route = route;
    }
}

impl Drop for ProxyRules {
    fn drop(&mut self) {
        let _ = Command::new(common::skiff_bin())
            .args(["proxy", "--cleanup"])
            .output();
        let _ = Command::new("ip")
            .args(["route", "del"])
            .args(&self.route)
            .output();
    }
}

/// `curl` from this machine (the node) to `url`: the body, or None.
fn fetch(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "2", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Which pod answered each of `n` requests to `url`.
fn spread(url: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = fetch(url).unwrap_or_else(|| "<failed>".into());
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

/// `skiff proxy` on the agent's node: a 3-replica httpd Deployment behind a NodePort Service
/// answers on its ClusterIP from the node and from a pod, 300 requests spread over all three
/// (each ≥ 15%), the NodePort answers on the node's address, a pod turned not ready gets no
/// more requests, the rules outlive a kill -9 of the proxy and a new proxy takes them over,
/// and `--cleanup` leaves no KUBE- chain. With `skiff dns` on the node's address (the pods'
/// nameserver): the Service by its full and short names, a headless Service listing every
/// pod, and a name outside the cluster answered by the upstream resolver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_their_pods_by_cluster_ip_node_port_and_name() {
    let env = Env::start(95).await;
    // Dropped after the proxies (declared before them): their rules go when they are gone.
    let mut rules = ProxyRules { route: Vec::new() };
    let proxy_args = [
        "--hostname-override",
        "worker-1",
        "--cluster-cidr",
        "10.95.77.0/24",
        "--iptables-min-sync-period",
        "100ms",
    ];
    let home = env.cluster.home.path().to_path_buf();
    let mut proxy = control_plane::Proc::start(
        &home,
        "proxy",
        "proxy",
        &env.cluster.kubeconfig,
        "info",
        &proxy_args,
    );
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "httpd", "image": "busybox:1.36",
              "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /www"],
              "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                 "periodSeconds": 1, "failureThreshold": 1}}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(env.cluster.client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    env.cluster.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "--type=NodePort",
    ]);
    env.create(&busybox_pod("client", "sleep 3600", "")).await;
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    env.wait("3 web pods ready", Duration::from_secs(120), async || {
        let list = env
            .pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        (list.items.iter().filter(|p| ready(p)).count() == 3).then_some(())
    })
    .await;
    env.wait_pod("client", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    rules.route_services_to(&env.agent.bridge);
    let ip = env
        .cluster
        .kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = env.cluster.kubectl_ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let url = format!("http://{ip}/");
    env.wait(
        "the ClusterIP answering",
        Duration::from_secs(30),
        async || fetch(&url).filter(|b| b.starts_with("web-")),
    )
    .await;

    // 300 requests from the node, spread over the three pods.
    let counts = spread(&url, 300);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (pod, n) in &counts {
        assert!(pod.starts_with("web-") && *n >= 45, "{counts:?}");
    }
    // From a pod on the same bridge.
    let out = env.cluster.kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c", // (This busybox's wget crashes with -T.)
        &format!("wget -qO- {url}"),
    ]);
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(counts.contains_key(&body), "{out:?}");
    // The NodePort on the node's address.
    let node_url = format!("http://10.95.77.1:{node_port}/");
    let via_node_port = fetch(&node_url).unwrap_or_default();
    assert!(counts.contains_key(&via_node_port), "{via_node_port:?}");

    // Cluster DNS on the node's address, other names forwarded to a stub resolver that
    // answers 192.0.2.44 for anything (on loopback: no query leaves the machine).
    let stub_port = common::free_port();
    let stub_script = home.join("stub-resolver.py");
    std::fs::write(&stub_script, STUB_RESOLVER).unwrap();
    let _stub = ChildGuard(
        Command::new("python3")
            .arg(&stub_script)
            .arg(stub_port.to_string())
            .spawn()
            .expect("python3"),
    );
    let _dns = control_plane::Proc::start(
        &home,
        "dns",
        "dns",
        &env.cluster.kubeconfig,
        "info",
        &[
            "--listen",
            "10.95.77.1:53",
            "--upstream",
            &format!("127.0.0.1:{stub_port}"),
        ],
    );
    env.cluster.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web-headless",
        "--cluster-ip=None",
        "--port=8080",
    ]);
    let in_client = |script: &str| {
        let out = env
            .cluster
            .kubectl(&["exec", "client", "--", "sh", "-c", script]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for name in ["web.default.svc.cluster.local", "web"] {
        let script = format!("wget -qO- http://{name}/");
        env.wait(
            &format!("http://{name}/ from the client pod"),
            Duration::from_secs(30),
            async || {
                let body = in_client(&script);
                counts.contains_key(body.trim()).then_some(())
            },
        )
        .await;
    }
    let pod_ips: Vec<String> = env
        .pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(pod_ips.len(), 3);
    env.wait(
        "the headless Service listing every pod",
        Duration::from_secs(30),
        async || {
            let out = in_client("nslookup web-headless.default.svc.cluster.local");
            pod_ips
                .iter()
                .all(|ip| out.contains(ip.as_str()))
                .then_some(())
        },
    )
    .await;
    let outside = in_client("nslookup outside.test");
    assert!(outside.contains("192.0.2.44"), "{outside}");

    // One pod turns not ready: once its endpoint is not ready, it gets nothing.
    let gone = counts.keys().next().unwrap().clone();
    env.cluster
        .kubectl_ok(&["exec", &gone, "--", "rm", "/tmp/ready"]);
    env.wait(
        "the not-ready pod out of the rules",
        Duration::from_secs(30),
        async || {
            let c = spread(&url, 30);
            (!c.contains_key(&gone) && c.len() == 2).then_some(())
        },
    )
    .await;
    let after = spread(&url, 60);
    assert!(!after.contains_key(&gone) && after.len() == 2, "{after:?}");

    // kill -9: the rules stay and keep serving; a new proxy takes them over.
    proxy.kill9();
    let during = spread(&url, 20);
    assert_eq!(during.values().sum::<usize>(), 20);
    assert!(!during.contains_key("<failed>"), "{during:?}");
    let proxy = control_plane::Proc::start(
        &home,
        "proxy-2",
        "proxy",
        &env.cluster.kubeconfig,
        "info",
        &proxy_args,
    );
    env.wait(
        "the new proxy's first sync",
        Duration::from_secs(30),
        async || proxy.log().contains("iptables rules synced").then_some(()),
    )
    .await;
    let again = spread(&url, 30);
    assert!(
        !again.contains_key("<failed>") && !again.contains_key(&gone),
        "{again:?}"
    );
    drop(proxy);

    // --cleanup removes every chain.
    let out = Command::new(common::skiff_bin())
        .args(["proxy", "--cleanup"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let saved = Command::new("iptables-save").output().unwrap();
    let text = String::from_utf8_lossy(&saved.stdout).to_string();
    let left: Vec<&str> = text.lines().filter(|l| l.contains("KUBE-")).collect();
    assert!(left.is_empty(), "left after --cleanup: {left:?}");
    assert!(fetch(&url).is_none(), "the ClusterIP answers without rules");
    env.delete_all_and_wait().await;
}
