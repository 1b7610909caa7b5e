//! The admission chain of `skiff apiserver`, driven by kube-rs on a skiff store and on real
//! etcd: a LimitRange's defaults land on a pod (and its max refuses one), a PriorityClass
//! resolves onto `spec.priority`, pods get the default service account and the NoExecute
//! tolerations, a pod in a terminating namespace is refused, and a ResourceQuota holds under
//! 200 concurrent creates spread over two API servers on one store: exactly `hard` pods are
//! admitted, the rest refused with upstream's message, and `status.used` matches the pods that
//! exist. Admission webhooks: a real HTTPS webhook (a small Python server) adds a label and
//! denies with its message; with the webhook down, `failurePolicy: Fail` refuses and `Ignore`
//! admits.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ApiHome, ApiServer, Backend};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, Pod, ResourceQuota};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

/// Pods created at once in the quota test, and the quota's limit (so some are refused).
const CONCURRENT_CREATES: usize = 200;
const QUOTA_PODS: usize = 150;

async fn client(api: &ApiServer, path: &Path) -> Client {
    api.write_kubeconfig(path);
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a typed object")
}

async fn create_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": name}})),
        )
        .await
        .expect("create namespace");
}

fn pod(name: &str, spec_extra: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    for (k, v) in spec_extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    from(json!({"metadata": {"name": name}, "spec": spec}))
}

/// The `Status` of a refused request: (code, message).
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("not refused by the API: {other:?}"),
    }
}

async fn defaults_priority_and_lifecycle(client: &Client) {
    create_namespace(client, "adm").await;
    Api::<LimitRange>::namespaced(client.clone(), "adm")
        .create(
            &PostParams::default(),
            &from(
                json!({"metadata": {"name": "defaults"}, "spec": {"limits": [{"type": "Container",
                "default": {"cpu": "500m", "memory": "256Mi"},
                "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                "max": {"cpu": "1"}}]}}),
            ),
        )
        .await
        .expect("create a LimitRange");
    Api::<PriorityClass>::all(client.clone())
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "high"}, "value": 1000, "description": "test"})),
        )
        .await
        .expect("create a PriorityClass");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "adm");

    // LimitRanger, ServiceAccount, DefaultTolerationSeconds, Priority (no class: 0).
    let made = pods
        .create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .expect("create a plain pod");
    let made = serde_json::to_value(&made).unwrap();
    let resources = &made["spec"]["containers"][0]["resources"];
    assert_eq!(
        resources["requests"],
        json!({"cpu": "100m", "memory": "128Mi"})
    );
    assert_eq!(
        resources["limits"],
        json!({"cpu": "500m", "memory": "256Mi"})
    );
    assert_eq!(
        made["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    assert_eq!(made["status"]["qosClass"], "Burstable");
    assert_eq!(made["spec"]["serviceAccountName"], "default");
    let tolerations = made["spec"]["tolerations"].as_array().expect("tolerations");
    assert_eq!(tolerations.len(), 2, "{tolerations:?}");
    assert!(tolerations.iter().all(|t| t["tolerationSeconds"] == 300));
    assert_eq!(made["spec"]["priority"], 0);

    let (code, message) = refusal(
        pods.create(
            &PostParams::default(),
            &pod(
                "big",
                json!({"containers": [{"name": "c", "image": "busybox",
                                           "resources": {"limits": {"cpu": "2"}}}]}),
            ),
        )
        .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (
            403,
            "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
        )
    );

    for (name, class, priority) in [
        ("high", "high", 1000),
        ("critical", "system-node-critical", 2_000_001_000),
    ] {
        let made = pods
            .create(
                &PostParams::default(),
                &pod(name, json!({"priorityClassName": class})),
            )
            .await
            .expect("create a pod with a class");
        let spec = made.spec.expect("spec");
        assert_eq!(spec.priority, Some(priority));
        assert_eq!(
            spec.preemption_policy.as_deref(),
            Some("PreemptLowerPriority")
        );
    }
    let (code, message) = refusal(
        pods.create(
            &PostParams::default(),
            &pod("lost", json!({"priorityClassName": "nope"})),
        )
        .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (
            403,
            "pods \"lost\" is forbidden: no PriorityClass with name nope was found"
        )
    );

    // NamespaceLifecycle: a finalizer keeps the namespace Terminating.
    create_namespace(client, "term").await;
    Api::<ConfigMap>::namespaced(client.clone(), "term")
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})),
        )
        .await
        .expect("create a held configmap");
    Api::<Namespace>::all(client.clone())
        .delete("term", &DeleteParams::default())
        .await
        .expect("delete the namespace");
    let (code, message) = refusal(
        Api::<Pod>::namespaced(client.clone(), "term")
            .create(&PostParams::default(), &pod("late", json!({})))
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (
            403,
            "pods \"late\" is forbidden: unable to create new content in namespace term because it is being terminated"
        )
    );
    let (code, _) = refusal(
        Api::<Pod>::namespaced(client.clone(), "never")
            .create(&PostParams::default(), &pod("x", json!({})))
            .await,
    );
    assert_eq!(code, 404);
}

async fn quota_holds_across_replicas(first: &Client, second: &Client) {
    create_namespace(first, "quota").await;
    Api::<ResourceQuota>::namespaced(first.clone(), "quota")
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "pods-max"},
                         "spec": {"hard": {"pods": QUOTA_PODS.to_string()}}})),
        )
        .await
        .expect("create the quota");
    let creates = (0..CONCURRENT_CREATES).map(|i| {
        let client = if i % 2 == 0 { first } else { second };
        let pods: Api<Pod> = Api::namespaced(client.clone(), "quota");
        async move {
            pods.create(&PostParams::default(), &pod(&format!("p{i}"), json!({})))
                .await
        }
    });
    let results = futures::future::join_all(creates).await;
    let mut admitted = 0;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(_) => admitted += 1,
            Err(kube::Error::Api(status)) => assert_eq!(
                (status.code, status.message.as_str()),
                (
                    403,
                    format!(
                        "pods \"p{i}\" is forbidden: exceeded quota: pods-max, requested: pods=1, \
                         used: pods={QUOTA_PODS}, limited: pods={QUOTA_PODS}"
                    )
                    .as_str()
                )
            ),
            Err(other) => panic!("create p{i}: {other:?}"),
        }
    }
    assert_eq!(admitted, QUOTA_PODS);
    let listed = Api::<Pod>::namespaced(second.clone(), "quota")
        .list(&ListParams::default())
        .await
        .expect("list pods");
    assert_eq!(listed.items.len(), QUOTA_PODS);
    let quota = Api::<ResourceQuota>::namespaced(second.clone(), "quota")
        .get("pods-max")
        .await
        .expect("get the quota");
    let used = quota.status.and_then(|s| s.used).expect("status.used");
    assert_eq!(used["pods"].0, QUOTA_PODS.to_string());
}

/// The webhook server: `/mutate` adds the label `hooked=yes`, `/validate` denies pods whose
/// name starts with `deny`.
const WEBHOOK_SERVER: &str = r#"
import base64, http.server, json, ssl, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        request = review['request']
        answer = {'uid': request['uid'], 'allowed': True}
        if self.path.startswith('/mutate'):
            if (request['object']['metadata'].get('labels')):
                patch = [{'op': 'add', 'path': '/metadata/labels/hooked', 'value': 'yes'}]
            else:
                patch = [{'op': 'add', 'path': '/metadata/labels', 'value': {'hooked': 'yes'}}]
            answer['patchType'] = 'JSONPatch'
            answer['patch'] = base64.b64encode(json.dumps(patch).encode()).decode()
        elif request['name'].startswith('deny'):
            answer = {'uid': request['uid'], 'allowed': False,
                      'status': {'code': 403, 'message': 'pods named deny-* are not allowed'}}
        body = json.dumps({'apiVersion': 'admission.k8s.io/v1', 'kind': 'AdmissionReview',
                           'response': answer}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// A running webhook server (killed by PID on drop).
struct WebhookServer {
    child: Child,
    port: u16,
    /// The CA that signed its certificate (PEM), for `caBundle`.
    ca_pem: String,
}

impl WebhookServer {
    fn start(dir: &Path) -> WebhookServer {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "webhook-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let cert = params.signed_by(&key, &issuer).expect("serving cert");
        let (cert_path, key_path, script): (PathBuf, PathBuf, PathBuf) = (
            dir.join("webhook.crt"),
            dir.join("webhook.key"),
            dir.join("webhook.py"),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        std::fs::write(&script, WEBHOOK_SERVER).expect("write");
        let port = common::free_port();
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&cert_path)
            .arg(&key_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the webhook server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the webhook server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        WebhookServer {
            child,
            port,
            ca_pem: ca.pem(),
        }
    }

    fn webhook(&self, name: &str, path: &str, failure_policy: &str) -> Value {
        // `caBundle` is base64, as k8s-openapi's `ByteString` serializes.
        let ca_bundle =
            serde_json::to_value(k8s_openapi::ByteString(self.ca_pem.clone().into_bytes()))
                .expect("base64");
        json!({"name": name, "failurePolicy": failure_policy, "timeoutSeconds": 5,
               "sideEffects": "None", "admissionReviewVersions": ["v1"],
               "clientConfig": {"url": format!("https://127.0.0.1:{}{path}", self.port),
                                "caBundle": ca_bundle},
               "namespaceSelector": {"matchLabels": {"webhooks": "on"}},
               "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                          "resources": ["pods"]}]})
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn webhooks_mutate_deny_and_fail(client: &Client, dir: &Path) {
    let mut server = WebhookServer::start(dir);
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "hooks", "labels": {"webhooks": "on"}}})),
        )
        .await
        .expect("create namespace");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "label"},
                         "webhooks": [server.webhook("label.example.com", "/mutate", "Ignore")]})),
        )
        .await
        .expect("create the mutating configuration");
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    validating
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "deny"},
                         "webhooks": [server.webhook("deny.example.com", "/validate", "Fail")]})),
        )
        .await
        .expect("create the validating configuration");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "hooks");
    let made = pods
        .create(&PostParams::default(), &pod("ok", json!({})))
        .await
        .expect("create a pod the webhooks admit");
    let labels = made.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("hooked").map(String::as_str), Some("yes"));
    let (code, message) = refusal(
        pods.create(&PostParams::default(), &pod("deny-me", json!({})))
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (
            403,
            "admission webhook \"deny.example.com\" denied the request: pods named deny-* are not allowed"
        )
    );
    // Pods elsewhere are not sent to the webhooks (namespaceSelector).
    let elsewhere = Api::<Pod>::namespaced(client.clone(), "adm")
        .create(&PostParams::default(), &pod("deny-elsewhere", json!({})))
        .await
        .expect("a pod outside the selected namespace");
    assert!(
        !elsewhere
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("hooked")
    );

    // The webhook goes away: the mutating one is ignored, the validating one fails closed...
    server.stop();
    let (code, message) = refusal(
        pods.create(&PostParams::default(), &pod("down-1", json!({})))
            .await,
    );
    assert_eq!(code, 500, "{message}");
    assert!(
        message.contains("failed calling webhook \"deny.example.com\""),
        "{message}"
    );
    // ...until it is set to Ignore.
    let ignore = json!({"webhooks": [server.webhook("deny.example.com", "/validate", "Ignore")]});
    validating
        .patch("deny", &PatchParams::default(), &Patch::Merge(&ignore))
        .await
        .expect("set failurePolicy Ignore");
    let made = pods
        .create(&PostParams::default(), &pod("down-2", json!({})))
        .await
        .expect("admitted with the webhooks down and ignored");
    assert!(
        !made
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("hooked")
    );
}

async fn admission_chain(store: &Backend) {
    let home = ApiHome::new();
    // ResourceQuota is not in the default chain yet (see `Plugin::default_on`).
    let quota = ["--enable-admission-plugins", "ResourceQuota"];
    let first = home.start(&store.endpoints(), &quota);
    let second = home.start(&store.endpoints(), &quota);
    let client_one = client(&first, &home.path().join("kubeconfig-1")).await;
    let client_two = client(&second, &home.path().join("kubeconfig-2")).await;
    defaults_priority_and_lifecycle(&client_one).await;
    // kubectl's generator (a protobuf body) makes a PriorityClass too.
    let kubeconfig = home.path().join("kubeconfig-1");
    let out = first.kubectl(
        &kubeconfig,
        &[
            "create",
            "priorityclass",
            "from-kubectl",
            "--value=500",
            "--description=made by kubectl",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let made = Api::<PriorityClass>::all(client_one.clone())
        .get("from-kubectl")
        .await
        .expect("get the PriorityClass");
    assert_eq!(
        (made.value, made.description.as_deref()),
        (500, Some("made by kubectl"))
    );
    webhooks_mutate_deny_and_fail(&client_one, home.path()).await;
    quota_holds_across_replicas(&client_one, &client_two).await;
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_chain_on_a_skiff_store() {
    admission_chain(&Backend::skiff()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_chain_on_real_etcd() {
    admission_chain(&Backend::etcd()).await;
}
