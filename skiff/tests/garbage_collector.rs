//! Cascading deletion as real processes: a `skiff store`, `skiff apiserver` and
//! `skiff controller-manager --controllers garbagecollector`, driven by kubectl. The API server
//! alone honours `DeleteOptions` (propagation policies from the body or the query, upstream's
//! errors); with the collector running, `kubectl delete` in the background collects
//! dependents and grand-dependents, `--cascade=orphan` keeps them without the reference,
//! `--cascade=foreground` keeps the owner (with its `deletionTimestamp`) until its blocking
//! dependents are gone, a dependent of an owner that never existed is collected, one of two
//! owners going leaves the dependent with the other's reference, and what changed while no
//! collector ran is collected once one starts.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use apiserver::{ApiHome, ApiServer, Backend};
use control_plane::Proc;
use serde_json::{Value, json};

/// How long the collector may take to act on a change.
const GC_TIMEOUT: Duration = Duration::from_secs(30);

/// A `skiff controller-manager` running only the garbage collector.
fn collector(dir: &Path, kubeconfig: &Path) -> Proc {
    Proc::manager_logging(
        dir,
        kubeconfig,
        "controller-manager",
        "info,skiff_controllers=debug",
        &["--leader-elect=false", "--controllers", "garbagecollector"],
    )
}

/// kubectl against one API server as the admin.
struct Kubectl<'a> {
    api: &'a ApiServer,
    kubeconfig: PathBuf,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.api.kubectl(&self.kubeconfig, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        control_plane::kubectl_ok(self.api, &self.kubeconfig, args, String::new)
    }

    /// The ConfigMap `name` in `gc`, or `None` if it is not found.
    fn configmap(&self, name: &str) -> Option<Value> {
        let out = self.run(&["get", "configmap", name, "-n", "gc", "-o", "json"]);
        if out.status.success() {
            return Some(serde_json::from_slice(&out.stdout).expect("kubectl printed JSON"));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("NotFound"), "kubectl get {name}: {stderr}");
        None
    }

    /// Creates the ConfigMap `name` in `gc` owned by `owners` (name, uid), blocking.
    fn create(&self, name: &str, owners: &[(&str, &str)], finalizers: &[&str]) -> String {
        let refs: Vec<Value> = owners
            .iter()
            .map(|(owner, uid)| {
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": uid,
                       "blockOwnerDeletion": true})
            })
            .collect();
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": name, "namespace": "gc"},
                            "data": {"k": "v"}});
        if !refs.is_empty() {
            cm["metadata"]["ownerReferences"] = json!(refs);
        }
        if !finalizers.is_empty() {
            cm["metadata"]["finalizers"] = json!(finalizers);
        }
        let path = self.api.home.join(format!("{name}.json"));
        std::fs::write(&path, cm.to_string()).expect("write manifest");
        // The uid from the create's answer: the collector may delete the object at once.
        let created: Value = serde_json::from_str(&self.ok(&[
            "create",
            "-f",
            &path.to_string_lossy(),
            "-o",
            "json",
        ]))
        .expect("kubectl printed JSON");
        created["metadata"]["uid"]
            .as_str()
            .expect("a uid")
            .to_string()
    }
}

/// Polls `check` until it holds or `timeout` passes.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- controller-manager log ---\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn owner_uids(cm: &Value) -> Vec<String> {
    cm["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_string))
        .collect()
}

fn start_api(store: &Backend, home: &ApiHome) -> ApiServer {
    home.start(&store.endpoints(), &[])
}

#[test]
fn the_api_server_honours_delete_options() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = start_api(&store, &home);
    let ns = api.send(
        "POST",
        "/api/v1/namespaces",
        &json!({"metadata": {"name": "gc"}}),
    );
    assert_eq!(ns.0, 201, "{ns:?}");
    let path = |name: &str| format!("/api/v1/namespaces/gc/configmaps/{name}");
    let create = |name: &str| {
        let created = api.send(
            "POST",
            "/api/v1/namespaces/gc/configmaps",
            &json!({"metadata": {"name": name}}),
        );
        assert_eq!(created.0, 201, "{created:?}");
    };

    create("orphan");
    let resp = api.send(
        "DELETE",
        &path("orphan"),
        &json!({"propagationPolicy": "Orphan"}),
    );
    assert_eq!(resp.0, 200, "{resp:?}");
    let held = api.admin(&[], &path("orphan"));
    assert_eq!(
        held.1["metadata"]["finalizers"],
        json!(["orphan"]),
        "{held:?}"
    );
    assert!(held.1["metadata"]["deletionTimestamp"].is_string());

    create("fg");
    let resp = api.admin(
        &["-X", "DELETE"],
        &format!("{}?propagationPolicy=Foreground", path("fg")),
    );
    assert_eq!(resp.0, 200, "{resp:?}");
    let held = api.admin(&[], &path("fg"));
    assert_eq!(
        held.1["metadata"]["finalizers"],
        json!(["foregroundDeletion"]),
        "{held:?}"
    );

    create("bg");
    let resp = api.send(
        "DELETE",
        &path("bg"),
        &json!({"propagationPolicy": "Background"}),
    );
    assert_eq!(resp.0, 200, "{resp:?}");
    assert_eq!(api.admin(&[], &path("bg")).0, 404);

    create("bad");
    let resp = api.send(
        "DELETE",
        &path("bad"),
        &json!({"propagationPolicy": "Later"}),
    );
    assert_eq!(apiserver::status_of(&resp), (422, "Invalid"));
    assert_eq!(
        resp.1["message"],
        "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \
         \"Later\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
    );
    let resp = api.send(
        "DELETE",
        &path("bad"),
        &json!({"propagationPolicy": "Orphan", "orphanDependents": true}),
    );
    assert_eq!(apiserver::status_of(&resp), (422, "Invalid"));
    assert_eq!(
        resp.1["message"],
        "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Invalid value: \
         \"Orphan\": orphanDependents and deletionPropagation cannot be both set"
    );
    assert_eq!(
        api.admin(&[], &path("bad")).0,
        200,
        "refused deletes leave it"
    );

    // kubectl sends the policy in the body.
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let kubectl = Kubectl {
        api: &api,
        kubeconfig,
    };
    kubectl.ok(&[
        "delete",
        "configmap",
        "bad",
        "-n",
        "gc",
        "--cascade=orphan",
        "--wait=false",
    ]);
    let held = kubectl
        .configmap("bad")
        .expect("held by the orphan finalizer");
    assert_eq!(held["metadata"]["finalizers"], json!(["orphan"]));
}

#[test]
fn the_garbage_collector_cascades_kubectl_deletes() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = start_api(&store, &home);
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let kubectl = Kubectl {
        api: &api,
        kubeconfig: kubeconfig.clone(),
    };
    kubectl.ok(&["create", "namespace", "gc"]);
    let cm = collector(home.path(), &kubeconfig);
    let log = || cm.log();
    let gone = |name: &str| kubectl.configmap(name).is_none();

    // A live owner keeps its dependent all along.
    let keeper = kubectl.create("keeper", &[], &[]);
    kubectl.create("kept", &[("keeper", &keeper)], &[]);

    // Background (kubectl's default): dependents and grand-dependents go.
    let owner = kubectl.create("bg-owner", &[], &[]);
    let dep = kubectl.create("bg-dep", &[("bg-owner", &owner)], &[]);
    kubectl.create("bg-dep2", &[("bg-owner", &owner)], &[]);
    kubectl.create("bg-grand", &[("bg-dep", &dep)], &[]);
    kubectl.ok(&["delete", "configmap", "bg-owner", "-n", "gc"]);
    assert!(gone("bg-owner"));
    wait_for(
        "background: dependents collected",
        GC_TIMEOUT,
        || gone("bg-dep") && gone("bg-dep2") && gone("bg-grand"),
        log,
    );

    // Orphan: the owner goes once its dependents lost the reference; they stay.
    let owner = kubectl.create("or-owner", &[], &[]);
    let other = kubectl.create("or-other", &[], &[]);
    kubectl.create("or-dep", &[("or-owner", &owner), ("or-other", &other)], &[]);
    kubectl.create("or-dep2", &[("or-owner", &owner)], &[]);
    kubectl.ok(&[
        "delete",
        "configmap",
        "or-owner",
        "-n",
        "gc",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    assert!(gone("or-owner"));
    let dep = kubectl.configmap("or-dep").expect("orphaned, not deleted");
    assert_eq!(owner_uids(&dep), vec![other.clone()], "{dep}");
    let dep2 = kubectl.configmap("or-dep2").expect("orphaned, not deleted");
    assert!(dep2["metadata"]["ownerReferences"].is_null(), "{dep2}");

    // Foreground: the owner stays, being deleted, until its blocking dependents are gone. The
    // grand-dependent holds a finalizer, so the chain waits for it deterministically.
    let owner = kubectl.create("fg-owner", &[], &[]);
    let dep = kubectl.create("fg-dep", &[("fg-owner", &owner)], &[]);
    kubectl.create("fg-grand", &[("fg-dep", &dep)], &["example.com/hold"]);
    kubectl.ok(&[
        "delete",
        "configmap",
        "fg-owner",
        "-n",
        "gc",
        "--cascade=foreground",
        "--wait=false",
    ]);
    wait_for(
        "foreground: the grand-dependent is being deleted",
        GC_TIMEOUT,
        || {
            kubectl
                .configmap("fg-grand")
                .is_some_and(|g| g["metadata"]["deletionTimestamp"].is_string())
        },
        log,
    );
    let held = kubectl
        .configmap("fg-owner")
        .expect("waits for its dependents");
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    assert_eq!(
        held["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    let mid = kubectl
        .configmap("fg-dep")
        .expect("waits for its dependent");
    assert!(mid["metadata"]["deletionTimestamp"].is_string(), "{mid}");
    kubectl.ok(&[
        "patch",
        "configmap",
        "fg-grand",
        "-n",
        "gc",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    wait_for(
        "foreground: the chain goes, then the owner",
        GC_TIMEOUT,
        || gone("fg-owner"),
        log,
    );
    assert!(gone("fg-dep") && gone("fg-grand"));

    // An owner that never existed.
    kubectl.create(
        "ghost-dep",
        &[("ghost", "00000000-0000-0000-0000-00000000dead")],
        &[],
    );
    wait_for(
        "a dependent of an owner that never existed is collected",
        GC_TIMEOUT,
        || gone("ghost-dep"),
        log,
    );

    // Two owners, one deleted: the dependent lives on with the other's reference.
    let a = kubectl.create("two-a", &[], &[]);
    let b = kubectl.create("two-b", &[], &[]);
    kubectl.create("two-dep", &[("two-a", &a), ("two-b", &b)], &[]);
    kubectl.ok(&["delete", "configmap", "two-a", "-n", "gc"]);
    wait_for(
        "the deleted owner's reference is removed",
        GC_TIMEOUT,
        || {
            kubectl
                .configmap("two-dep")
                .is_some_and(|d| owner_uids(&d) == vec![b.clone()])
        },
        log,
    );

    let kept = kubectl
        .configmap("kept")
        .expect("a live owner's dependent stays");
    assert_eq!(owner_uids(&kept), vec![keeper], "{kept}");
    assert!(kubectl.configmap("two-dep").is_some());

    // What changed while no collector ran is found by the next one's initial lists.
    drop(cm);
    let owner = kubectl.create("down-owner", &[], &[]);
    kubectl.create("down-dep", &[("down-owner", &owner)], &[]);
    kubectl.ok(&["delete", "configmap", "down-owner", "-n", "gc"]);
    let cm = collector(home.path(), &kubeconfig);
    wait_for(
        "a dependent orphaned while the collector was down is collected",
        GC_TIMEOUT,
        || gone("down-dep"),
        || cm.log(),
    );
    assert!(kubectl.configmap("kept").is_some());
}
