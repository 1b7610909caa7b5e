//! Two `skiff apiserver` replicas on one store (a skiff store, and real etcd): watches see
//! writes made through the other replica, a watcher resumes on the survivor from its last
//! resourceVersion after its replica is killed (no missing or duplicated events), and optimistic
//! concurrency holds across replicas.
#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use apiserver::{ADMIN_TOKEN, ApiHome, ApiServer, Backend, bearer, status_of};
use serde_json::{Value, json};

/// A raw `?watch=true` stream (curl -N), one parsed event per line.
struct Watch {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl Watch {
    fn start(api: &ApiServer, path: &str) -> Watch {
        let mut child = Command::new("curl")
            .args(["-sN", "--cacert"])
            .arg(api.ca())
            .args(["-H", &bearer(ADMIN_TOKEN)])
            .arg(api.url(path))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn curl");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && tx.send(event).is_err()
                {
                    return;
                }
            }
        });
        Watch { child, rx }
    }

    /// The next event; None when the stream ended.
    fn next(&self, timeout: Duration) -> Option<Value> {
        match self.rx.recv_timeout(timeout) {
            Ok(event) => Some(event),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no watch event within {timeout:?}"),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn configmap(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": name}})
}

fn rv_of(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {obj}"))
}

const CMS: &str = "/api/v1/namespaces/ha/configmaps";

fn two_replicas_share_watches_resume_and_conflicts(store: &Backend) {
    let home = ApiHome::new();
    let mut a = home.start(&store.endpoints(), &[]);
    let b = home.start(&store.endpoints(), &[]);
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ha"}});
    assert_eq!(a.send("POST", "/api/v1/namespaces", &ns).0, 201);

    eprintln!("--- a watch on B sees creates made through A");
    let rv = rv_of(&b.admin(&[], CMS).1);
    let watch = Watch::start(&b, &format!("{CMS}?watch=true&resourceVersion={rv}"));
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        assert_eq!(a.send("POST", CMS, &configmap(&format!("a-{i}"))).0, 201);
    }
    for i in 0..5 {
        let event = watch.next(Duration::from_secs(20)).expect("an event");
        assert_eq!(event["type"], "ADDED", "{event}");
        assert_eq!(event["object"]["metadata"]["name"], format!("a-{i}"));
    }
    drop(watch);

    eprintln!("--- two updates at one resourceVersion, through A and through B: one 409");
    let current = a.admin(&[], &format!("{CMS}/a-0")).1;
    let (mut via_a, mut via_b) = (current.clone(), current);
    via_a["data"]["writer"] = "a".into();
    via_b["data"]["writer"] = "b".into();
    let path = format!("{CMS}/a-0");
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.send("PUT", &path, &via_a));
        let tb = s.spawn(|| b.send("PUT", &path, &via_b));
        (ta.join().expect("a"), tb.join().expect("b"))
    });
    let mut codes = [ra.0, rb.0];
    codes.sort();
    assert_eq!(codes, [200, 409], "{ra:?} {rb:?}");
    let conflict = if ra.0 == 409 { &ra } else { &rb };
    assert_eq!(status_of(conflict), (409, "Conflict"));

    eprintln!("--- kill A mid-stream; the watcher resumes on B from its last resourceVersion");
    const N: usize = 30;
    let rv = rv_of(&a.admin(&[], CMS).1);
    let watch = Watch::start(&a, &format!("{CMS}?watch=true&resourceVersion={rv}"));
    std::thread::sleep(Duration::from_millis(300));
    let mut seen: Vec<(String, i64)> = Vec::new();
    std::thread::scope(|s| {
        let b = &b;
        let writer = s.spawn(move || {
            for i in 0..N {
                let resp = b.send("POST", CMS, &configmap(&format!("w-{i:02}")));
                assert_eq!(resp.0, 201, "{resp:?}");
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        while seen.len() < 10 {
            let event = watch
                .next(Duration::from_secs(20))
                .expect("an event from A");
            seen.push((
                event["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .into(),
                rv_of(&event["object"]),
            ));
        }
        a.kill9();
        // Whatever A had already sent, then the end of the stream.
        while let Some(event) = watch.next(Duration::from_secs(20)) {
            seen.push((
                event["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .into(),
                rv_of(&event["object"]),
            ));
        }
        let on_a = seen.len();
        let last = seen.last().expect("events").1;
        let resumed = Watch::start(b, &format!("{CMS}?watch=true&resourceVersion={last}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < N {
            assert!(
                Instant::now() < deadline,
                "only {} events: {seen:?}",
                seen.len()
            );
            let event = resumed
                .next(Duration::from_secs(20))
                .expect("an event from B");
            assert_eq!(event["type"], "ADDED", "{event}");
            seen.push((
                event["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .into(),
                rv_of(&event["object"]),
            ));
        }
        writer.join().expect("writer");
        eprintln!(
            "{on_a} events from A before and after its kill, {} from B",
            N - on_a
        );
        assert!(
            on_a < N,
            "A was killed after the writer finished; the test proves nothing"
        );
        // Nothing more arrives on B: no duplicates after the last create.
        assert!(
            resumed.rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "an extra event"
        );
    });
    let names: Vec<String> = seen.iter().map(|(n, _)| n.clone()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("w-{i:02}")).collect();
    assert_eq!(names, want, "missing, duplicated or reordered events");
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "{seen:?}");
    // B keeps serving.
    assert_eq!(
        b.admin(&[], CMS).1["items"].as_array().map(Vec::len),
        Some(5 + N)
    );
}

/// `--etcd-compaction-interval`: replicas compact the store (coordinated through
/// `compact_rev_key`, as kube-apiserver) to the revision it had one interval earlier, so a list
/// or watch at an old resourceVersion then gets 410 Expired, while current reads go on.
fn periodic_compaction_expires_old_resource_versions(store: &Backend) {
    let home = ApiHome::new();
    let fast = ["--etcd-compaction-interval", "1s"];
    let a = home.start(&store.endpoints(), &fast);
    let _b = home.start(&store.endpoints(), &fast);
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ha"}});
    assert_eq!(a.send("POST", "/api/v1/namespaces", &ns).0, 201);
    assert_eq!(a.send("POST", CMS, &configmap("old-1")).0, 201);
    assert_eq!(a.send("POST", CMS, &configmap("old-2")).0, 201);
    let rv0 = rv_of(&a.admin(&[], CMS).1);
    // A paginated list started now: its continue token pins revision rv0.
    let first_page = a.admin(&[], &format!("{CMS}?limit=1"));
    let token = first_page.1["metadata"]["continue"]
        .as_str()
        .unwrap_or_else(|| panic!("no continue token: {first_page:?}"))
        .to_string();

    eprintln!("--- writes go on until a list at resourceVersion {rv0} is 410 Expired");
    let old_list = format!("{CMS}?resourceVersion={rv0}&resourceVersionMatch=Exact");
    let started = Instant::now();
    let mut writes = 0;
    loop {
        let resp = a.send("POST", CMS, &configmap(&format!("w-{writes}")));
        assert_eq!(resp.0, 201, "{resp:?}");
        writes += 1;
        let resp = a.admin(&[], &old_list);
        if resp.0 != 200 {
            assert_eq!(status_of(&resp), (410, "Expired"), "{resp:?}");
            assert_eq!(
                resp.1["message"],
                "The resourceVersion for the provided list is too old."
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the store was never compacted past {rv0}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "a list at resourceVersion {rv0} expired after {writes} writes, {:.1}s with a 1s interval",
        started.elapsed().as_secs_f64()
    );
    let rest = a.admin(&[], &format!("{CMS}?limit=1&continue={token}"));
    assert_eq!(status_of(&rest), (410, "Expired"), "{rest:?}");
    let watch = Watch::start(&a, &format!("{CMS}?watch=true&resourceVersion={rv0}"));
    let event = watch.next(Duration::from_secs(20)).expect("an event");
    assert_eq!(
        (event["type"].as_str(), event["object"]["code"].as_i64()),
        (Some("ERROR"), Some(410)),
        "{event}"
    );
    let now = a.admin(&[], CMS);
    assert_eq!(
        (now.0, now.1["items"].as_array().map(Vec::len)),
        (200, Some(writes + 2))
    );
    let out = common::etcdctl(
        &store.endpoints(),
        &["get", "compact_rev_key", "--print-value-only"],
    );
    let recorded: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("compact_rev_key: {out:?}"));
    assert!(recorded >= rv0, "compact_rev_key {recorded} < {rv0}");
}

// Each scenario runs on a skiff store and on real etcd (issue 6 acceptance).

#[test]
fn periodic_compaction_expires_old_resource_versions_on_a_skiff_store() {
    periodic_compaction_expires_old_resource_versions(&Backend::skiff());
}

#[test]
fn periodic_compaction_expires_old_resource_versions_on_real_etcd() {
    periodic_compaction_expires_old_resource_versions(&Backend::etcd());
}

#[test]
fn two_replicas_share_watches_resume_and_conflicts_on_a_skiff_store() {
    two_replicas_share_watches_resume_and_conflicts(&Backend::skiff());
}

#[test]
fn two_replicas_share_watches_resume_and_conflicts_on_real_etcd() {
    two_replicas_share_watches_resume_and_conflicts(&Backend::etcd());
}
