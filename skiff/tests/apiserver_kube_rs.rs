//! kube-rs (the Rust Kubernetes client) against `skiff apiserver`: typed create/list/get/
//! replace/watch of ConfigMaps, and a `kube::runtime::watcher` that survives a 410 Expired
//! (its apiserver restarts after the store was compacted past its resourceVersion) by relisting,
//! and a deletecollection that leaves nothing behind while other clients update the objects.

/// Watcher events buffered between the watcher task and the test.
const WATCHER_EVENT_QUEUE: usize = 256;

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use apiserver::{ApiHome, ApiServer, Backend};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};

async fn client(api: &ApiServer, path: &Path) -> Client {
    api.write_kubeconfig(path);
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".into(), "kr".into())])),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

async fn create_namespace(client: &Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn api_code(err: &kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("not an API error: {other:?}"),
    }
}

async fn typed_create_list_get_replace_watch(store: &Backend) {
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let client = client(&api, &home.path().join("kubeconfig")).await;
    create_namespace(&client, "kr").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kr");

    let created = cms
        .create(&PostParams::default(), &configmap("one", &[("k", "v")]))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let rv = created.metadata.resource_version.clone().expect("rv");
    let err = cms
        .create(&PostParams::default(), &configmap("one", &[]))
        .await
        .expect_err("exists");
    assert_eq!(api_code(&err), 409);

    let list = cms
        .list(&ListParams::default().labels("app=kr"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    assert_eq!(cms.get("one").await.expect("get").data, created.data);
    assert_eq!(api_code(&cms.get("nope").await.expect_err("missing")), 404);

    // Watch from the create; an update and a second create arrive in order.
    let mut stream = cms
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut changed = created.clone();
    changed.data = Some(BTreeMap::from([("k".into(), "v2".into())]));
    let replaced = cms
        .replace("one", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    // A replace at the old resourceVersion conflicts.
    let stale = cms.replace("one", &PostParams::default(), &changed).await;
    assert_eq!(api_code(&stale.expect_err("stale")), 409);
    cms.create(&PostParams::default(), &configmap("two", &[]))
        .await
        .expect("create two");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.try_next())
            .await
            .expect("an event in time")
            .expect("no error")
            .expect("stream open");
        match event {
            WatchEvent::Modified(cm) => {
                seen.push(("MODIFIED", cm.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Added(cm) => seen.push(("ADDED", cm.metadata.name.unwrap_or_default())),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [("MODIFIED", "one".into()), ("ADDED", "two".into())]);
    drop(api);
}

async fn runtime_watcher_relists_after_410_expired(store: &Backend) {
    let home = ApiHome::new();
    let port = common::free_port();
    let mut a = home.start_on(port, &store.endpoints(), &[]);
    let b = home.start(&store.endpoints(), &[]);
    let client_a = client(&a, &home.path().join("a.kubeconfig")).await;
    let client_b = client(&b, &home.path().join("b.kubeconfig")).await;
    create_namespace(&client_a, "kr").await;
    let via_a: Api<ConfigMap> = Api::namespaced(client_a.clone(), "kr");
    let via_b: Api<ConfigMap> = Api::namespaced(client_b.clone(), "kr");

    // Bounded: the watcher task waits when the test falls behind.
    let (tx, mut rx) = tokio::sync::mpsc::channel(WATCHER_EVENT_QUEUE);
    let stream = watcher(via_a.clone(), watcher::Config::default());
    tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(item) = stream.next().await {
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    let next = async |rx: &mut tokio::sync::mpsc::Receiver<_>| {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a watcher event in time")
            .expect("watcher running")
    };
    // The initial list (empty), then the create as an Apply.
    loop {
        if let Ok(watcher::Event::InitDone) = next(&mut rx).await {
            break;
        }
    }
    via_a
        .create(&PostParams::default(), &configmap("x-0", &[]))
        .await
        .expect("create");
    match next(&mut rx).await {
        Ok(watcher::Event::Apply(cm)) => assert_eq!(cm.metadata.name.as_deref(), Some("x-0")),
        other => panic!("want Apply(x-0), got {other:?}"),
    }

    // A goes away; writes continue through B; the store is compacted past the watcher's
    // resourceVersion; A comes back on the same port.
    a.kill9();
    for i in 1..=5 {
        via_b
            .create(&PostParams::default(), &configmap(&format!("x-{i}"), &[]))
            .await
            .expect("create via B");
    }
    let mut etcd = etcd_client::Client::connect([store.endpoints()], None)
        .await
        .expect("etcd client");
    let revision = etcd
        .get("/registry", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    etcd.compact(revision, None).await.expect("compact");
    let _a = home.start_on(port, &store.endpoints(), &[]);

    // The watcher reports the 410, relists, and its fresh list has all six objects.
    let (mut expired, mut names) = (false, Vec::new());
    loop {
        match next(&mut rx).await {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => expired = true,
            Err(_) => {} // connection refused while A was down
            Ok(watcher::Event::Init) => names.clear(),
            Ok(watcher::Event::InitApply(cm)) => names.push(cm.metadata.name.unwrap_or_default()),
            Ok(watcher::Event::InitDone) => break,
            Ok(other) => panic!("unexpected {other:?} before the relist"),
        }
    }
    assert!(expired, "the watcher never saw 410 Expired");
    names.sort();
    assert_eq!(names, ["x-0", "x-1", "x-2", "x-3", "x-4", "x-5"]);
    // And it keeps watching after the relist.
    via_b
        .create(&PostParams::default(), &configmap("x-6", &[]))
        .await
        .expect("create x-6");
    loop {
        match next(&mut rx).await {
            Ok(watcher::Event::Apply(cm)) => {
                assert_eq!(cm.metadata.name.as_deref(), Some("x-6"));
                break;
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => {}
        }
    }
}

// Each scenario runs on a skiff store and on real etcd (issue 6 acceptance).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_create_list_get_replace_watch_on_a_skiff_store() {
    typed_create_list_get_replace_watch(&Backend::skiff()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_create_list_get_replace_watch_on_real_etcd() {
    typed_create_list_get_replace_watch(&Backend::etcd()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_watcher_relists_after_410_expired_on_a_skiff_store() {
    runtime_watcher_relists_after_410_expired(&Backend::skiff()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_watcher_relists_after_410_expired_on_real_etcd() {
    runtime_watcher_relists_after_410_expired(&Backend::etcd()).await;
}

/// A deletecollection while another client keeps updating the objects: every object that
/// changed under the delete is read again and deleted anyway (kube-apiserver retries), so
/// none is left when the call returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_deletes_objects_updated_meanwhile() {
    use kube::api::{DeleteParams, Patch, PatchParams};
    const OBJECTS: usize = 100;
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let client = client(&api, &home.path().join("kubeconfig")).await;
    create_namespace(&client, "dc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "dc");
    for i in 0..OBJECTS {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("cm-{i}"), &[("n", "0")]),
        )
        .await
        .expect("create");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut updaters = Vec::new();
    for worker in 0..4 {
        let (cms, stop) = (cms.clone(), stop.clone());
        updaters.push(tokio::spawn(async move {
            let mut updates = 0u64;
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                // Walk the objects from the end, towards the deleter.
                for i in (0..OBJECTS).rev().skip(worker) {
                    let patch = serde_json::json!({"data": {"n": round.to_string()}});
                    let name = format!("cm-{i}");
                    if cms
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .is_ok()
                    {
                        updates += 1;
                    }
                }
            }
            updates
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let selector = ListParams::default().labels("app=kr");
    cms.delete_collection(&DeleteParams::default(), &selector)
        .await
        .expect("deletecollection");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut updates = 0;
    for updater in updaters {
        updates += updater.await.expect("updater");
    }
    assert!(updates > 0, "the updaters never got an update in");
    let left = cms.list(&ListParams::default()).await.expect("list");
    let names: Vec<_> = left
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert!(
        names.is_empty(),
        "deletecollection left {} objects updated meanwhile: {names:?}",
        names.len()
    );
}
