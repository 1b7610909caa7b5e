//! The watch cache under load: two `skiff apiserver` replicas on one 3-member skiff store,
//! 1,000 kube-rs pod watchers spread over both, then creates, updates and deletes. Every
//! watcher sees every event exactly once and in order; the store serves a handful of watches
//! (one per cached resource per replica), not one per client; a consistent list (no
//! resourceVersion) right after a write through the other replica includes it.

/// Client watches opened (half on each API server).
const WATCHERS: usize = 1000;
/// Pods written: each is created, updated and deleted (three events).
const PODS: usize = 20;
/// Resources each API server may cache (one store watch each): `resources::registry()`.
const CACHED_RESOURCES: usize = 20;
/// Events queued between a watcher task and the collector (per watcher).
const WATCHER_EVENT_QUEUE: usize = 4 * PODS;

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use apiserver::{ApiHome, ApiServer};
use common::{Cluster, metric};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

const NS: &str = "wc";

async fn client(api: &ApiServer, path: &Path) -> Client {
    api.write_kubeconfig(path);
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"gen": "0"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .expect("a pod")
}

fn rv(pod: &Pod) -> i64 {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("a resourceVersion")
}

/// Open store watchers over every member (`etcd_debugging_mvcc_watcher_total`).
fn store_watchers(cluster: &Cluster) -> i64 {
    cluster
        .members
        .iter()
        .map(|m| metric(&m.endpoint(), "etcd_debugging_mvcc_watcher_total") as i64)
        .sum()
}

/// A metric of an API server's `/metrics`, as the admin.
fn api_metric(api: &ApiServer, series: &str) -> f64 {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert"])
        .arg(api.ca())
        .args(["-H", &apiserver::bearer(apiserver::ADMIN_TOKEN)])
        .arg(api.url("/metrics"))
        .output()
        .expect("curl /metrics");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
}

/// What a watcher saw: (type, pod name, resourceVersion).
type Seen = (String, String, i64);

/// Watches pods from `from` until `want` events arrived, watching again from the last
/// resourceVersion whenever the stream ends. Returns the events and how often it re-watched.
async fn watch_pods(
    api: Api<Pod>,
    from: i64,
    want: usize,
    opened: tokio::sync::mpsc::Sender<()>,
) -> (Vec<Seen>, usize) {
    let mut seen: Vec<Seen> = Vec::with_capacity(want);
    let mut last = from;
    let mut rewatches = 0;
    let mut first = true;
    while seen.len() < want {
        let params = WatchParams::default().timeout(290);
        let mut stream = match api.watch(&params, &last.to_string()).await {
            Ok(stream) => stream.boxed(),
            Err(e) => panic!("watch from {last}: {e}"),
        };
        if first {
            first = false;
            let _ = opened.send(()).await;
        } else {
            rewatches += 1;
        }
        while let Some(event) = stream.next().await {
            let event = event.unwrap_or_else(|e| panic!("watch stream error: {e}"));
            let (kind, pod) = match event {
                WatchEvent::Added(p) => ("ADDED", p),
                WatchEvent::Modified(p) => ("MODIFIED", p),
                WatchEvent::Deleted(p) => ("DELETED", p),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watch error event: {e:?}"),
            };
            last = rv(&pod);
            seen.push((kind.into(), pod.metadata.name.unwrap_or_default(), last));
            if seen.len() >= want {
                break;
            }
        }
    }
    (seen, rewatches)
}

#[test]
fn thousand_watchers_share_one_store_watch_per_resource() {
    let started = Instant::now();
    let cluster = Cluster::start(3);
    let home = ApiHome::new();
    let a = home.start(&cluster.endpoints(), &[]);
    let b = home.start(&cluster.endpoints(), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let client_a = client(&a, &dir.path().join("a")).await;
        let client_b = client(&b, &dir.path().join("b")).await;
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": NS}})).expect("a namespace");
        Api::<Namespace>::all(client_a.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the namespace");
        let pods_a: Api<Pod> = Api::namespaced(client_a.clone(), NS);
        let pods_b: Api<Pod> = Api::namespaced(client_b.clone(), NS);
        // Both replicas build their pod caches.
        let from = pods_a
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata;
        let from_b = pods_b
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata;
        // The later of the two lists: each replica's cache window starts at or before it
        // (the API servers write to the store in between — their `kubernetes` Endpoints
        // leases — so the two lists may be at different revisions).
        let list_rv = |m: kube::api::ListMeta| {
            m.resource_version
                .and_then(|v| v.parse::<i64>().ok())
                .expect("a list resourceVersion")
        };
        let from: i64 = list_rv(from).max(list_rv(from_b));
        let baseline = store_watchers(&cluster);
        eprintln!("store watchers before the client watches: {baseline}");

        let want = 3 * PODS;
        let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(WATCHER_EVENT_QUEUE);
        let mut tasks = Vec::with_capacity(WATCHERS);
        for i in 0..WATCHERS {
            let api = if i % 2 == 0 {
                pods_a.clone()
            } else {
                pods_b.clone()
            };
            tasks.push(tokio::spawn(watch_pods(api, from, want, opened_tx.clone())));
        }
        drop(opened_tx);
        let opening = Instant::now();
        for _ in 0..WATCHERS {
            tokio::time::timeout(Duration::from_secs(60), opened_rx.recv())
                .await
                .expect("every watch opens within 60 s")
                .expect("a watcher task");
        }
        eprintln!("{WATCHERS} watches open in {:?}", opening.elapsed());
        let during = store_watchers(&cluster);
        let registered: f64 = [&a, &b]
            .iter()
            .map(|api| {
                api_metric(
                    api,
                    "apiserver_registered_watchers{group=\"\",kind=\"Pod\",version=\"v1\"}",
                )
            })
            .sum();
        eprintln!(
            "store watchers with {WATCHERS} client watches open: {during} (baseline {baseline}); \
             pod watchers registered on the API servers: {registered}"
        );
        assert_eq!(registered as usize, WATCHERS);
        // One store watch per cached resource per API server: at most 2 × 20, and the client
        // watches add none (their caches were built before).
        assert!(
            during <= (2 * CACHED_RESOURCES) as i64,
            "{during} store watchers for 2 API servers"
        );
        assert!(
            during <= baseline,
            "client watches reached the store: {baseline} -> {during}"
        );

        eprintln!("--- {PODS} pods created, updated, deleted, alternating replicas");
        let writing = Instant::now();
        let mut expected: Vec<(String, String, Option<i64>)> = Vec::new();
        for i in 0..PODS {
            let name = format!("p{i}");
            let api = if i % 2 == 0 { &pods_a } else { &pods_b };
            let made = api
                .create(&PostParams::default(), &pod(&name))
                .await
                .expect("create a pod");
            expected.push(("ADDED".into(), name, Some(rv(&made))));
        }
        for i in 0..PODS {
            let name = format!("p{i}");
            let api = if i % 2 == 0 { &pods_b } else { &pods_a };
            let mut current = api.get(&name).await.expect("get a pod");
            current
                .metadata
                .labels
                .get_or_insert_default()
                .insert("gen".into(), "1".into());
            let replaced = api
                .replace(&name, &PostParams::default(), &current)
                .await
                .expect("update a pod");
            expected.push(("MODIFIED".into(), name, Some(rv(&replaced))));
        }
        for i in 0..PODS {
            let name = format!("p{i}");
            let api = if i % 2 == 0 { &pods_a } else { &pods_b };
            api.delete(&name, &DeleteParams::default())
                .await
                .expect("delete a pod");
            expected.push(("DELETED".into(), name, None));
        }
        eprintln!("{} writes in {:?}", expected.len(), writing.elapsed());

        let delivering = Instant::now();
        let mut rewatches = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let (seen, again) = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .unwrap_or_else(|_| panic!("watcher {i} did not see {want} events in time"))
                .expect("watcher task");
            rewatches += again;
            assert_eq!(seen.len(), expected.len(), "watcher {i}");
            let mut previous = from;
            for (n, ((kind, name, rv), (want_kind, want_name, want_rv))) in
                seen.iter().zip(&expected).enumerate()
            {
                assert_eq!(
                    (kind, name),
                    (want_kind, want_name),
                    "watcher {i}, event {n}"
                );
                if let Some(want_rv) = want_rv {
                    assert_eq!(rv, want_rv, "watcher {i}, event {n}");
                }
                assert!(*rv > previous, "watcher {i}: event {n} out of order");
                previous = *rv;
            }
        }
        eprintln!(
            "every watcher saw all {} events exactly once, in order ({:?} after the writes; \
             {rewatches} re-watches after a stream ended)",
            expected.len(),
            delivering.elapsed()
        );
        let after = store_watchers(&cluster);
        eprintln!("store watchers after the writes: {after}");
        // The writes' admission may have started a few more caches (limit ranges, quotas,
        // service accounts): still one store watch per cached resource per API server.
        assert!(
            after <= (2 * CACHED_RESOURCES) as i64,
            "{after} store watchers for 2 API servers"
        );

        eprintln!("--- a consistent list right after a write through the other replica");
        for i in 0..20 {
            let name = format!("c{i}");
            let (writer, reader) = if i % 2 == 0 {
                (&pods_a, &pods_b)
            } else {
                (&pods_b, &pods_a)
            };
            let made = writer
                .create(&PostParams::default(), &pod(&name))
                .await
                .expect("create a pod");
            let list = reader.list(&ListParams::default()).await.expect("list");
            assert!(
                list.items
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(name.as_str())),
                "{name} (rv {}) missing from a list at {:?}",
                rv(&made),
                list.metadata.resource_version
            );
        }
        let lists: f64 = [&a, &b]
            .iter()
            .map(|api| {
                api_metric(
                    api,
                    "apiserver_cache_list_total{index=\"\",resource_prefix=\"/pods\"}",
                )
            })
            .sum();
        eprintln!("pod lists served from the watch caches: {lists}");
        assert!(lists >= 20.0, "{lists}");
    });
    eprintln!("done in {:?}", started.elapsed());
}
