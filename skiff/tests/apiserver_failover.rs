//! Issue 12, the API server ↔ store half: `skiff apiserver` on a three-member store keeps
//! serving while members are killed (kill -9, then restarted) and paused (SIGSTOP/SIGCONT)
//! under a kube-rs client loop of ~50 requests per second (create/get/list, the client's own
//! retries on 429/503/504 only) with one open watch: no request fails in the end, the watch sees
//! every creation once and no ERROR; `/readyz?verbose` lists the etcd check, stays ok with one
//! member down and turns 500 when every member is gone. And the API server over mutual TLS to a
//! store that requires client certificates (`--etcd-cafile/--etcd-certfile/--etcd-keyfile`).
#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::{ADMIN_TOKEN, ApiHome, ApiServer, bearer};
use common::{Cluster, free_port, skiff_bin};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Requests per second of the client loop.
const RATE: u32 = 50;
/// Requests of the loop in flight at most.
const MAX_IN_FLIGHT: usize = 64;
const NS: &str = "failover";

/// curl as the admin: (HTTP code, body text).
fn curl_text(api: &ApiServer, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(api.ca())
        .args(["-H", &bearer(ADMIN_TOKEN), "-w", "\n%{http_code}"])
        .arg(api.url(path))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn kube_client(api: &ApiServer, path: &Path) -> Client {
    api.write_kubeconfig(path);
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    // kube-rs retries 429/503/504 itself (honouring Retry-After), as client-go does.
    assert!(config.default_retry);
    Client::try_from(config).expect("kube client")
}

fn configmap(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("n".to_string(), name.to_string())])),
        ..Default::default()
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} failed");
}

/// SIGCONTs a paused member even when the test fails.
struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    /// Latency of every request, in milliseconds.
    latencies: Mutex<Vec<u64>>,
    failures: Mutex<Vec<String>>,
    created: Mutex<Vec<String>>,
}

/// One request of the loop: the `n`th; creates, gets of the latest creation and lists in turn.
async fn request(api: Api<ConfigMap>, load: Arc<Load>, n: u64) {
    let started = Instant::now();
    let name = format!("cm-{n}");
    let result: Result<(), String> = match n % 3 {
        0 => api
            .create(&PostParams::default(), &configmap(&name))
            .await
            .map(|_| load.created.lock().unwrap().push(name.clone()))
            .map_err(|e| e.to_string()),
        1 => {
            let last = load.created.lock().unwrap().last().cloned();
            match last {
                None => Ok(()),
                Some(last) => match api.get(&last).await {
                    Ok(cm) if cm.data.as_ref().and_then(|d| d.get("n")) == Some(&last) => Ok(()),
                    Ok(_) => Err(format!("{last} read back with the wrong data")),
                    Err(e) => Err(e.to_string()),
                },
            }
        }
        _ => api
            .list(&ListParams::default().limit(20))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    load.latencies
        .lock()
        .unwrap()
        .push(started.elapsed().as_millis() as u64);
    match result {
        Ok(()) => {
            load.ok.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => load.failures.lock().unwrap().push(format!(
            "request {n} ({}) after {:?}: {e}",
            ["create", "get", "list"][(n % 3) as usize],
            started.elapsed()
        )),
    }
}

/// The client loop: [`RATE`] requests per second whatever their latency (at most
/// [`MAX_IN_FLIGHT`] at once), until `stop`.
async fn client_loop(client: Client, load: Arc<Load>, stop: Arc<AtomicBool>) {
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / RATE);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let permit = permits.clone().acquire_owned().await.expect("open");
        let (api, load) = (api.clone(), load.clone());
        tokio::spawn(async move {
            request(api, load, n).await;
            drop(permit);
        });
        n += 1;
    }
    // Wait for the requests in flight.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

#[derive(Default)]
struct Watched {
    added: Vec<String>,
    other: Vec<String>,
    ended: bool,
}

fn wait_readyz(api: &ApiServer, code: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = curl_text(api, "/readyz?verbose");
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz?verbose stayed {got}, not {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn members_killed_and_paused_under_load_fail_no_request_and_no_watch() {
    let mut cluster = Cluster::start(3);
    let home = ApiHome::new();
    let api = home.start(&cluster.endpoints(), &["--etcd-compaction-interval", "0"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(kube_client(&api, &home.path().join("kubeconfig")));

    // The namespace, and a watch on its ConfigMaps from the revision after it.
    let rv = runtime.block_on(async {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(NS.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let list = Api::<ConfigMap>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await
            .expect("list");
        list.metadata.resource_version.expect("list rv")
    });
    let watched = Arc::new(Mutex::new(Watched::default()));
    {
        let watched = watched.clone();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
        runtime.spawn(async move {
            let mut events = api
                .watch(&WatchParams::default().timeout(280), &rv)
                .await
                .expect("watch")
                .boxed();
            while let Some(event) = events.next().await {
                let mut w = watched.lock().unwrap();
                match event {
                    Ok(WatchEvent::Added(cm)) => w.added.push(cm.metadata.name.unwrap_or_default()),
                    Ok(WatchEvent::Bookmark(_)) => {}
                    Ok(other) => w.other.push(format!("{other:?}")),
                    Err(e) => w.other.push(format!("stream error: {e}")),
                }
            }
            watched.lock().unwrap().ended = true;
        });
    }

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let looping = runtime.spawn(client_loop(client.clone(), load.clone(), stop.clone()));
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    // Each member killed in turn, then restarted; with one down, the API server is ready.
    for i in 0..3 {
        cluster.members[i].kill9();
        std::thread::sleep(Duration::from_secs(2));
        let body = wait_readyz(&api, 200, Duration::from_secs(10));
        assert!(body.contains("[+]etcd ok\n"), "{body}");
        assert!(body.ends_with("readyz check passed\n"), "{body}");
        cluster.restart(i);
        cluster.wait_healthy(Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(1));
    }
    // The leader paused (SIGSTOP) for 10 s — longer than the API server's HTTP/2 keep-alive
    // needs to give up on it — then resumed.
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let child = cluster.members[leader].child.as_ref().expect("running");
    signal(child, "-STOP");
    let paused = Paused(child.id());
    std::thread::sleep(Duration::from_secs(10));
    signal(cluster.members[leader].child.as_ref().unwrap(), "-CONT");
    drop(paused);
    cluster.wait_healthy(Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    runtime.block_on(looping).expect("client loop");

    let ok = load.ok.load(Ordering::Relaxed);
    let failures = load.failures.lock().unwrap().clone();
    let created = load.created.lock().unwrap().clone();
    let mut latencies = load.latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{ok} requests succeeded in {elapsed:?} ({:.0}/s), {} failed, {} ConfigMaps created; \
         latency ms p50 {} p99 {} max {}",
        ok as f64 / elapsed.as_secs_f64(),
        failures.len(),
        created.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    assert!(
        failures.is_empty(),
        "requests failed after the client's retries:\n{}\n--- apiserver log ---\n{}",
        failures.join("\n"),
        api.log()
    );
    let log = api.log();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    eprintln!(
        "apiserver: {} endpoint failures, {} writes re-issued, {} watch resumptions",
        count("etcd endpoint unhealthy"),
        count("re-issuing it"),
        count("re-establishing it on another member")
    );
    assert!(
        ok as f64 / elapsed.as_secs_f64() > 40.0,
        "only {ok} requests in {elapsed:?}"
    );

    // The watch saw every creation exactly once, and nothing else.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let w = watched.lock().unwrap();
        if w.added.len() >= created.len() || Instant::now() > deadline {
            break;
        }
        drop(w);
        std::thread::sleep(Duration::from_millis(100));
    }
    {
        let w = watched.lock().unwrap();
        assert!(w.other.is_empty(), "unexpected watch events: {:?}", w.other);
        assert!(!w.ended, "the watch ended");
        let mut seen = w.added.clone();
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(before, seen.len(), "duplicated ADDED events");
        let mut want = created.clone();
        want.sort();
        assert_eq!(seen, want, "the watch missed or invented creations");
    }

    // Every member gone: not ready (and not live), with kube-apiserver's words.
    for member in &mut cluster.members {
        member.kill9();
    }
    let body = wait_readyz(&api, 500, Duration::from_secs(10));
    assert!(body.starts_with("[+]ping ok\n"), "{body}");
    assert!(body.contains("[-]etcd failed: reason withheld\n"), "{body}");
    assert!(body.ends_with("readyz check failed\n"), "{body}");
    let (code, body) = curl_text(&api, "/livez/etcd");
    assert_eq!(code, 500, "{body}");
    assert!(body.starts_with("internal server error: "), "{body}");
    // Back: ready again.
    for i in 0..3 {
        cluster.restart(i);
    }
    let body = wait_readyz(&api, 200, Duration::from_secs(20));
    assert!(body.contains("[+]etcd ok\n"), "{body}");
    let (code, body) = curl_text(&api, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ok"));
}

/// Three `skiff store` members with https client URLs and `--client-cert-auth`.
struct TlsStore {
    children: Vec<Child>,
    clients: Vec<String>,
}

impl Drop for TlsStore {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tls_store(dir: &Path, pki: &Path) -> TlsStore {
    let names = ["t0", "t1", "t2"];
    let clients: Vec<String> = names
        .iter()
        .map(|_| format!("https://127.0.0.1:{}", free_port()))
        .collect();
    let peers: Vec<String> = names
        .iter()
        .map(|_| format!("https://127.0.0.1:{}", free_port()))
        .collect();
    let initial: Vec<String> = names
        .iter()
        .zip(&peers)
        .map(|(n, p)| format!("{n}={p}"))
        .collect();
    let initial = initial.join(",");
    let mut store = TlsStore {
        children: Vec::new(),
        clients: clients.clone(),
    };
    for (i, name) in names.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(skiff_bin())
            .arg("store")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(dir.join(name))
            .args(["--listen-client-urls", &clients[i]])
            .args(["--advertise-client-urls", &clients[i]])
            .args(["--listen-peer-urls", &peers[i]])
            .args(["--initial-advertise-peer-urls", &peers[i]])
            .args(["--initial-cluster", &initial])
            .args(common::mtls_member_args(pki))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        store.children.push(child);
    }
    store
}

#[test]
fn mutual_tls_to_a_store_that_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new(skiff_bin())
        .args(["pki", "init", "--hosts", "127.0.0.1,localhost", "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = tls_store(dir.path(), &pki);
    let endpoints = store.clients.join(",");
    let file = |name: &str| pki.join(name).display().to_string();

    // With the CA and the client certificate: create and get work (home.start waits for
    // /readyz, whose etcd check goes over mTLS too).
    let home = ApiHome::new();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client-key.pem"));
    let api = home.start(
        &endpoints,
        &[
            "--etcd-cafile",
            &ca,
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &key,
        ],
    );
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "over-mtls"}, "data": {"k": "v"}
    });
    let created = api.send("POST", "/api/v1/namespaces/default/configmaps", &cm);
    assert_eq!(created.0, 201, "{created:?}");
    let got = api.admin(&[], "/api/v1/namespaces/default/configmaps/over-mtls");
    assert_eq!((got.0, &got.1["data"]["k"]), (200, &serde_json::json!("v")));
    let (code, body) = curl_text(&api, "/readyz/etcd");
    assert_eq!((code, body.as_str()), (200, "ok"));

    // https endpoints and no TLS flags: refused at once, saying what is missing.
    let out = Command::new(skiff_bin())
        .args(["apiserver", "--etcd-servers", &endpoints])
        .args(["--bind-address", "127.0.0.1"])
        .args(["--secure-port", &free_port().to_string()])
        .arg("--cert-dir")
        .arg(home.path().join("certs"))
        .output()
        .expect("run skiff apiserver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--etcd-cafile"), "{stderr}");

    // The CA but no client certificate: the store refuses the handshake, and the API server
    // says so in its log (it keeps retrying, as kube-apiserver does).
    let log_path = home.path().join("no-cert.log");
    let mut child = Command::new(skiff_bin())
        .args(["apiserver", "--etcd-servers", &endpoints])
        .args(["--bind-address", "127.0.0.1"])
        .args(["--secure-port", &free_port().to_string()])
        .arg("--cert-dir")
        .arg(home.path().join("certs"))
        .args(["--etcd-cafile", &ca])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn skiff apiserver");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("store not ready") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = log
        .lines()
        .find(|l| l.contains("store not ready"))
        .unwrap_or_else(|| panic!("no error logged:\n{log}"));
    eprintln!("without a client certificate: {line}");
    assert!(
        line.to_lowercase().contains("certificate"),
        "the error does not name the missing certificate: {line}"
    );
}
