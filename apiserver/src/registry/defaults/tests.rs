use super::*;
use crate::registry::resources::{ResourceInfo, registry};

fn info(kind: &str) -> ResourceInfo {
    registry()
        .into_iter()
        .find(|r| r.kind == kind)
        .expect("served kind")
}

/// Whether everything in `part` is in `whole` (which may have more).
fn contained(part: &Value, whole: &Value) -> bool {
    match (part, whole) {
        (Value::Object(p), Value::Object(w)) => p
            .iter()
            .all(|(k, v)| w.get(k).is_some_and(|wv| contained(v, wv))),
        (Value::Array(p), Value::Array(w)) => {
            p.len() == w.len() && p.iter().zip(w).all(|(p, w)| contained(p, w))
        }
        _ => part == whole,
    }
}

/// Defaults `obj` as `kind`, checks that the typed round trip (what is stored) keeps every
/// default and that defaulting again changes nothing; returns the object.
fn defaulted(kind: &str, mut obj: Value) -> Value {
    let info = info(kind);
    info.strategy.defaults(&mut obj);
    let normalized = (info.normalize)(&obj).expect("decodes");
    assert!(
        contained(&obj, &normalized),
        "the typed round trip drops a default:\n{obj}\n{normalized}"
    );
    let mut again = obj.clone();
    info.strategy.defaults(&mut again);
    assert_eq!(again, obj, "defaults are not idempotent");
    obj
}

/// kube-apiserver v1.33's answer to creating a minimal Pod (`kubectl run p --image=nginx
/// --dry-run=server -o json`), less what admission plugins add (service account, its
/// token volume, tolerations, priority) and server-set metadata.
#[test]
fn a_minimal_pod_gets_upstreams_defaults() {
    let pod = defaulted(
        "Pod",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": [{"name": "p", "image": "nginx"}]}}),
    );
    assert_eq!(
        pod,
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {
                "containers": [{
                    "image": "nginx",
                    "imagePullPolicy": "Always",
                    "name": "p",
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File"
                }],
                "dnsPolicy": "ClusterFirst",
                "enableServiceLinks": true,
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "securityContext": {},
                "terminationGracePeriodSeconds": 30
            },
            "status": {"phase": "Pending", "qosClass": "BestEffort"}
        })
    );
}

/// `kubectl create deployment web --image=nginx:1.27 --dry-run=server -o json` (less
/// metadata and the template's `creationTimestamp: null`).
#[test]
fn a_minimal_deployment_gets_upstreams_defaults() {
    let deploy = defaulted(
        "Deployment",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}}}),
    );
    assert_eq!(
        deploy,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {
                "progressDeadlineSeconds": 600,
                "replicas": 1,
                "revisionHistoryLimit": 10,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                    "type": "RollingUpdate"
                },
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "image": "nginx:1.27",
                            "imagePullPolicy": "IfNotPresent",
                            "name": "nginx",
                            "resources": {},
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File"
                        }],
                        "dnsPolicy": "ClusterFirst",
                        "restartPolicy": "Always",
                        "schedulerName": "default-scheduler",
                        "securityContext": {},
                        "terminationGracePeriodSeconds": 30
                    }
                }
            },
            "status": {}
        })
    );
    // A given strategy keeps its values; only the missing half is filled in.
    let partial = defaulted(
        "Deployment",
        json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 1}}}}),
    );
    assert_eq!(
        partial["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}})
    );
    let recreate = defaulted(
        "Deployment",
        json!({"spec": {"strategy": {"type": "Recreate"}}}),
    );
    assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
}

/// `kubectl create service clusterip web --tcp=80 --dry-run=server -o json`, less the
/// allocated `clusterIP`/`clusterIPs`.
#[test]
fn services_get_upstreams_defaults_and_status() {
    let svc = defaulted(
        "Service",
        json!({"metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    );
    assert_eq!(
        svc,
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "internalTrafficPolicy": "Cluster",
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                "selector": {"app": "web"},
                "sessionAffinity": "None",
                "type": "ClusterIP"
            },
            "status": {"loadBalancer": {}}
        })
    );
    let lb = defaulted(
        "Service",
        json!({"spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP",
                        "ports": [{"port": 443, "targetPort": "https"}]}}),
    );
    let spec = &lb["spec"];
    assert_eq!(spec["externalTrafficPolicy"], "Cluster");
    assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
    assert_eq!(
        spec["sessionAffinityConfig"],
        json!({"clientIP": {"timeoutSeconds": 10800}})
    );
    assert_eq!(spec["ports"][0]["targetPort"], "https");
    let external = defaulted(
        "Service",
        json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}),
    );
    assert!(external["spec"].get("ipFamilyPolicy").is_none());
    assert!(external["spec"].get("internalTrafficPolicy").is_none());
    let headless = defaulted("Service", json!({"spec": {"clusterIP": "None"}}));
    assert_eq!(headless["spec"]["ipFamilyPolicy"], "RequireDualStack");
    assert_eq!(headless["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
}

#[test]
fn namespaces_carry_their_name_label() {
    let ns = defaulted(
        "Namespace",
        json!({"metadata": {"name": "demo", "labels": {"kubernetes.io/metadata.name": "x", "a": "b"}}}),
    );
    assert_eq!(
        ns,
        json!({"metadata": {"name": "demo",
                            "labels": {"kubernetes.io/metadata.name": "demo", "a": "b"}},
               "spec": {"finalizers": ["kubernetes"]},
               "status": {"phase": "Active"}})
    );
    let bare = defaulted("Namespace", json!({"metadata": {"name": "n"}}));
    assert_eq!(
        bare["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "n"})
    );
}

#[test]
fn probes_ports_volumes_and_env_refs() {
    let pod = defaulted(
        "Pod",
        json!({"spec": {
            "hostNetwork": true,
            "containers": [{
                "name": "c", "image": "registry:5000/app",
                "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}],
                "livenessProbe": {"httpGet": {"port": 8080}},
                "readinessProbe": {"grpc": {"port": 9000}, "periodSeconds": 5},
                "lifecycle": {"preStop": {"httpGet": {"port": 80, "path": "/quit"}}},
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}
            }],
            "volumes": [
                {"name": "scratch"},
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "host", "hostPath": {"path": "/x"}},
                {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
            ]
        }}),
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 8080, "hostPort": 8080, "protocol": "TCP"},
               {"containerPort": 53, "hostPort": 53, "protocol": "UDP"}])
    );
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
               "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(
        c["readinessProbe"],
        json!({"grpc": {"port": 9000, "service": ""}, "timeoutSeconds": 1,
               "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(
        c["lifecycle"]["preStop"]["httpGet"],
        json!({"port": 80, "path": "/quit", "scheme": "HTTP"})
    );
    assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "500m", "memory": "128Mi"})
    );
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    let v = &pod["spec"]["volumes"];
    assert_eq!(v[0], json!({"name": "scratch", "emptyDir": {}}));
    assert_eq!(v[1]["configMap"]["defaultMode"], 420);
    assert_eq!(v[2]["hostPath"]["type"], "");
    assert_eq!(v[3]["projected"]["defaultMode"], 420);
    assert_eq!(
        v[3]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3600
    );
    // Templates do not get the Pod-only defaults.
    let rs = defaulted(
        "ReplicaSet",
        json!({"spec": {"template": {"spec": {"hostNetwork": true, "containers": [
            {"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}}}}),
    );
    let spec = &rs["spec"]["template"]["spec"];
    assert!(spec.get("enableServiceLinks").is_none());
    assert!(spec["containers"][0]["ports"][0].get("hostPort").is_none());
    assert_eq!(rs["spec"]["replicas"], 1);
    assert_eq!(rs["status"], json!({"replicas": 0}));
}

#[test]
fn other_kinds_statuses_and_ports() {
    let node = defaulted("Node", json!({"metadata": {"name": "n"}}));
    assert_eq!(
        node["status"]["daemonEndpoints"],
        json!({"kubeletEndpoint": {"Port": 0}})
    );
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "");
    let quota = defaulted("ResourceQuota", json!({"spec": {"hard": {"pods": "1"}}}));
    assert_eq!(quota["status"], json!({}));
    let ep = defaulted(
        "Endpoints",
        json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
    );
    assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], "TCP");
    let slice = defaulted(
        "EndpointSlice",
        json!({"addressType": "IPv4", "endpoints": [], "ports": [{"port": 80}]}),
    );
    assert_eq!(
        slice["ports"],
        json!([{"name": "", "port": 80, "protocol": "TCP"}])
    );
}

#[test]
fn image_pull_policy_follows_the_tag() {
    for (image, want) in [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("docker.io/library/nginx", "Always"),
        ("localhost:5000/app", "Always"),
        ("nginx:1.27", "IfNotPresent"),
        ("registry.example.com:5000/team/app:v2", "IfNotPresent"),
        ("nginx@sha256:0123456789abcdef", "IfNotPresent"),
        ("nginx:latest@sha256:0123456789abcdef", "Always"),
        ("Nginx", "IfNotPresent"),
        ("nginx:", "IfNotPresent"),
        ("", "IfNotPresent"),
    ] {
        assert_eq!(image_pull_policy(image), want, "{image:?}");
    }
}

#[test]
fn quantities_and_qos_classes() {
    for (q, want) in [
        ("1", Some(1_000_000_000)),
        ("100m", Some(100_000_000)),
        ("0.1", Some(100_000_000)),
        ("1Ki", Some(1_024_000_000_000)),
        ("1k", Some(1_000_000_000_000)),
        ("1e3", Some(1_000_000_000_000)),
        ("1n", Some(1)),
        ("0.5n", Some(1)),
        ("-1", Some(-1_000_000_000)),
        ("abc", None),
        ("1Qi", None),
    ] {
        assert_eq!(quantity_nanos(q), want, "{q:?}");
    }
    let qos = |containers: Value| qos_class(&json!({ "containers": containers }));
    assert_eq!(qos(json!([{"name": "a"}])), "BestEffort");
    assert_eq!(
        qos(json!([{"resources": {"requests": {"cpu": "0"}}}])),
        "BestEffort"
    );
    assert_eq!(
        qos(json!([{"resources": {"requests": {"cpu": "100m"}}}])),
        "Burstable"
    );
    assert_eq!(
        qos(
            json!([{"resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                                  "requests": {"cpu": "1000m", "memory": "1073741824"}}}])
        ),
        "Guaranteed"
    );
    assert_eq!(
        qos(
            json!([{"resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                                  "requests": {"cpu": "500m", "memory": "1Gi"}}}])
        ),
        "Burstable"
    );
    assert_eq!(
        qos(
            json!([{"resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                                  "requests": {"cpu": "1", "memory": "1Gi"}}},
                   {"name": "b"}])
        ),
        "Burstable"
    );
}
