//! Volumes with real processes: `skiff controller-manager` running the `persistentvolume-binder`
//! on `skiff apiserver` over a `skiff store`, with `skiff scheduler` and simulated nodes.
//! (a) the default `local-path` StorageClass exists (`kubectl get storageclass` shows it as the
//! default); a static hostPath PV and a claim of class `manual` bind to each other; deleting
//! the claim leaves the `Retain` volume `Released`. (b) a claim without a class gets
//! `local-path` (DefaultStorageClass admission) and waits (`WaitForFirstConsumer`); a pod
//! using it makes the scheduler name a node on the claim, a `pvc-<uid>` volume pinned to that
//! node is provisioned and bound, then the pod is bound there; deleting the claim deletes the
//! volume (`Delete`). A pod whose claim of an `Immediate` class is unbound is not scheduled.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::time::Duration;

use control_plane::{Cluster, wait_for};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

fn pv_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn pvc_phase(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn claim(name: &str, size: &str, class: Option<&str>) -> PersistentVolumeClaim {
    let mut spec = json!({"accessModes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": size}}});
    if let Some(class) = class {
        spec["storageClassName"] = json!(class);
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "metadata": {"name": name}, "spec": spec}))
    .expect("claim")
}

/// Creates a StorageClass from JSON.
async fn create_class(client: &Client, obj: serde_json::Value) {
    let class: k8s_openapi::api::storage::v1::StorageClass =
        serde_json::from_value(obj).expect("storage class");
    Api::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .expect("create storage class");
}

/// The reasons of the events recorded on an object.
async fn event_reasons(client: &Client, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    events
        .list(&params)
        .await
        .map(|list| {
            list.items
                .into_iter()
                .filter_map(|e| e.reason)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_volumes_bind_and_local_path_volumes_are_provisioned() {
    let cluster = Cluster::start(1).await;
    let manager = cluster.manager(
        "a",
        &[
            "--leader-elect=false",
            "--controllers=persistentvolume-binder,replicaset,deployment",
        ],
    );
    let client = cluster.client.clone();
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let params = PostParams::default();

    // (a) The default class, shown as kubectl shows it.
    let table = wait_for(
        "the local-path StorageClass",
        Duration::from_secs(30),
        async || {
            let out = cluster.kubectl(&["get", "storageclass"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("local-path (default)").then_some(text)
        },
    )
    .await;
    assert!(
        table.contains("PROVISIONER")
            && table.contains("RECLAIMPOLICY")
            && table.contains("VOLUMEBINDINGMODE")
            && table.contains("ALLOWVOLUMEEXPANSION"),
        "{table}"
    );
    assert!(
        table.contains("skiff.io/local-path") && table.contains("WaitForFirstConsumer"),
        "{table}"
    );
    // A class's provisioner cannot change, with upstream's message.
    let refused = cluster.kubectl(&[
        "patch",
        "storageclass",
        "local-path",
        "--type=merge",
        "-p",
        r#"{"provisioner":"example.com/other"}"#,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("provisioner: Forbidden: updates to provisioner are forbidden."),
        "{stderr}"
    );

    // A static volume and a claim of the same class bind to each other.
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "static-pv"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": "manual", "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": "/tmp/static-pv"}}}))
    .expect("pv");
    volumes.create(&params, &pv).await.expect("create pv");
    claims
        .create(&params, &claim("static-claim", "500Mi", Some("manual")))
        .await
        .expect("create pvc");
    let (bound_pv, bound_pvc) = wait_for(
        "the static pair to bind",
        Duration::from_secs(30),
        async || {
            let pv = volumes.get("static-pv").await.ok()?;
            let pvc = claims.get("static-claim").await.ok()?;
            (pv_phase(&pv) == "Bound" && pvc_phase(&pvc) == "Bound").then_some((pv, pvc))
        },
    )
    .await;
    let reference = bound_pv.spec.as_ref().and_then(|s| s.claim_ref.clone());
    let reference = reference.expect("claimRef");
    assert_eq!(reference.name.as_deref(), Some("static-claim"));
    assert_eq!(reference.uid, bound_pvc.metadata.uid);
    assert_eq!(
        bound_pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref()),
        Some("static-pv")
    );
    let annotations = bound_pvc.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("pv.kubernetes.io/bind-completed")
            .map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        annotations
            .get("pv.kubernetes.io/bound-by-controller")
            .map(String::as_str),
        Some("yes")
    );
    let capacity = bound_pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone());
    assert_eq!(capacity.as_deref(), Some("1Gi"));

    // The claim goes: the Retain volume is Released and stays.
    claims
        .delete("static-claim", &DeleteParams::default())
        .await
        .expect("delete pvc");
    wait_for(
        "the static volume to be Released",
        Duration::from_secs(30),
        async || {
            let pv = volumes.get("static-pv").await.ok()?;
            (pv_phase(&pv) == "Released").then_some(())
        },
    )
    .await;

    // (b) A claim without a class gets the default and waits for a consumer.
    let created = claims
        .create(&params, &claim("data", "200Mi", None))
        .await
        .expect("create pvc without class");
    assert_eq!(
        created
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some("local-path")
    );
    let uid = created.metadata.uid.clone().expect("uid");
    wait_for(
        "a WaitForFirstConsumer event",
        Duration::from_secs(30),
        async || {
            event_reasons(&client, "data")
                .await
                .iter()
                .any(|r| r == "WaitForFirstConsumer")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        pvc_phase(&claims.get("data").await.expect("pvc")),
        "Pending"
    );

    // A pod using it is scheduled: the scheduler's VolumeBinding names the node on the
    // claim (PreBind), the volume is provisioned there and bound, then the pod is bound.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}))
    .expect("pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&params, &pod).await.expect("create pod");
    let node = wait_for(
        "the claim to name a node",
        Duration::from_secs(60),
        async || {
            let current = claims.get("data").await.ok()?;
            current
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("volume.kubernetes.io/selected-node"))
                .cloned()
        },
    )
    .await;
    let volume_name = format!("pvc-{uid}");
    let provisioned = wait_for(
        "the provisioned volume to bind",
        Duration::from_secs(30),
        async || {
            let pv = volumes.get(&volume_name).await.ok()?;
            let pvc = claims.get("data").await.ok()?;
            (pv_phase(&pv) == "Bound" && pvc_phase(&pvc) == "Bound").then_some(pv)
        },
    )
    .await;
    let spec = provisioned.spec.clone().expect("spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    let path = spec.host_path.map(|h| h.path).unwrap_or_default();
    assert_eq!(
        path,
        format!("/var/lib/skiff/storage/pvc-{uid}_default_data")
    );
    let affinity = serde_json::to_value(spec.node_affinity).expect("affinity");
    assert_eq!(
        affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
        json!({"key": "kubernetes.io/hostname", "operator": "In", "values": [node]})
    );
    assert_eq!(
        provisioned
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
            .map(String::as_str),
        Some("skiff.io/local-path")
    );
    wait_for(
        "a ProvisioningSucceeded event",
        Duration::from_secs(30),
        async || {
            event_reasons(&client, "data")
                .await
                .iter()
                .any(|r| r == "ProvisioningSucceeded")
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the pod to be bound to the node",
        Duration::from_secs(30),
        async || {
            let pod = pods.get("user").await.ok()?;
            (pod.spec.as_ref()?.node_name.as_deref() == Some(node.as_str())).then_some(())
        },
    )
    .await;

    // A pod whose claim of an Immediate class is unbound is not scheduled, with upstream's
    // reason.
    let now = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "now"}, "provisioner": "example.com/none"});
    create_class(&client, now).await;
    claims
        .create(&params, &claim("waits", "1Gi", Some("now")))
        .await
        .expect("create immediate pvc");
    let stuck: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stuck"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "waits"}}]}}))
    .expect("pod");
    pods.create(&params, &stuck)
        .await
        .expect("create stuck pod");
    let message = wait_for(
        "a FailedScheduling event",
        Duration::from_secs(30),
        async || {
            let events: Api<Event> = Api::namespaced(client.clone(), "default");
            let params = ListParams::default().fields("involvedObject.name=stuck");
            let list = events.list(&params).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
                .and_then(|e| e.message)
        },
    )
    .await;
    assert!(
        message.contains("pod has unbound immediate PersistentVolumeClaims"),
        "{message}"
    );

    // The claim goes: the Delete volume goes too.
    pods.delete("user", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    claims
        .delete("data", &DeleteParams::default())
        .await
        .expect("delete pvc");
    wait_for(
        "the provisioned volume to be deleted",
        Duration::from_secs(30),
        async || matches!(volumes.get_opt(&volume_name).await, Ok(None)).then_some(()),
    )
    .await;
    // The static Retain volume is still there, Released.
    let kept = volumes.get("static-pv").await.expect("static pv");
    assert_eq!(pv_phase(&kept), "Released", "{}", manager.log());
}
