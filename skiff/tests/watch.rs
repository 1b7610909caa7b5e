//! The etcd Watch service end to end: real `etcdctl watch` against real etcd 3.4, the
//! `etcd-client` crate and raw gRPC streams against skiff (options, filters, IDs, cancel,
//! progress, compaction, fragments, `hasleader`, slow watchers), and a property test on a
//! three-member cluster: concurrent writers, a compaction and a leader kill while watchers on
//! every member record what they get, checked against the MVCC history read back revision
//! by revision.
//!
//! `SKIFF_SLOW_TESTS=1` runs the bigger variants (more writes, more slow-watcher events).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, RealEtcd, etcdctl_ok, etcdctl_stdin, metric};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use skiff_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::watch_create_request::FilterType;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse, request_op, response_op,
};
use skiff_proto::mvccpb::{Event, KeyValue, event::EventType};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn slow_tests() -> bool {
    std::env::var("SKIFF_SLOW_TESTS").is_ok_and(|v| v == "1")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// =======================================================================================
// Real etcdctl, same commands against skiff and real etcd
// =======================================================================================

/// A running `etcdctl watch` whose stdout and stderr are collected by reader threads.
struct EtcdctlWatch {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl EtcdctlWatch {
    fn spawn(endpoint: &str, args: &[&str]) -> EtcdctlWatch {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoint)
            .arg("watch")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl not found");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (pipe, sink) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                out.clone(),
            ),
            (
                Box::new(stderr) as Box<dyn std::io::Read + Send>,
                err.clone(),
            ),
        ] {
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    sink.lock().unwrap().push_str(&line);
                    line.clear();
                }
            }));
        }
        EtcdctlWatch {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            readers,
        }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Wait until stdout holds `needle` at least `count` times.
    fn wait_for(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().matches(needle).count() >= count {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    fn expect(&self, needle: &str, count: usize, what: &str) {
        assert!(
            self.wait_for(needle, count, Duration::from_secs(10)),
            "{what}: {needle:?} did not appear {count} time(s) in etcdctl watch output:\n{}\n--- stderr ---\n{}",
            self.stdout(),
            self.err.lock().unwrap()
        );
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("interactive stdin");
        writeln!(stdin, "{line}").expect("write to etcdctl stdin");
        stdin.flush().expect("flush etcdctl stdin");
    }

    /// Kill the process and return (stdout, stderr).
    fn finish(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let out = self.out.lock().unwrap().clone();
        let err = self.err.lock().unwrap().clone();
        (out, err)
    }

    /// Wait for the process to exit by itself: (exit code, stdout, stderr).
    fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status.code();
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (out, err) = self.finish();
        (code, out, err)
    }
}

/// etcdctl's JSON lines with the server identity zeroed (revisions stay: both servers
/// number revisions the same way from the same command sequence).
fn normalize_json_lines(text: &str) -> String {
    text.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(mut v) => {
                if let Some(h) = v.get_mut("Header") {
                    for field in ["cluster_id", "member_id", "raft_term"] {
                        if let Some(obj) = h.as_object_mut() {
                            obj.remove(field);
                        }
                    }
                }
                v.to_string()
            }
            Err(_) => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const PROBE: &str = "PUT\nab\nprobe\n";

/// Drop the readiness probes (puts of `ab`) a plain watch may have printed first.
fn strip_probes(text: &str) -> String {
    text.replace(PROBE, "")
}

/// One server's run of the etcdctl script.
struct Side {
    name: &'static str,
    endpoint: String,
    probes: usize,
}

impl Side {
    fn ctl(&self, args: &[&str]) -> String {
        etcdctl_ok(&self.endpoint, args)
    }

    fn txn(&self, input: &str) -> String {
        let out = etcdctl_stdin(&self.endpoint, &["txn"], Some(input));
        assert!(
            out.status.success(),
            "{}: txn failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Put probes until every plain (no `--rev`) watch has printed one: then it is
    /// established, and later writes reach it.
    fn establish(&mut self, watches: &[&EtcdctlWatch]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.ctl(&["put", "ab", "probe"]);
            self.probes += 1;
            if watches
                .iter()
                .all(|w| w.wait_for(PROBE, 1, Duration::from_millis(300)))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: etcdctl watch never started",
                self.name
            );
        }
    }
}

#[test]
fn etcdctl_watch_matches_real_etcd() {
    let cluster = Cluster::start(1);
    let etcd = RealEtcd::start();
    let mut sides = [
        Side {
            name: "skiff",
            endpoint: cluster.members[0].endpoint(),
            probes: 0,
        },
        Side {
            name: "etcd",
            endpoint: etcd.endpoint.clone(),
            probes: 0,
        },
    ];
    // History before any watch: revisions 2..=4.
    for side in &sides {
        side.ctl(&["put", "a/1", "v1"]);
        side.ctl(&["put", "a/2", "v2"]);
        side.ctl(&["put", "b", "x"]);
    }
    // Plain watches (from "now"): a prefix one and an interactive one.
    let mut plain = Vec::new();
    for side in &mut sides {
        let prefix = EtcdctlWatch::spawn(&side.endpoint, &["--prefix", "a"]);
        // Interactive lines take the watch flags themselves (the process's are reset).
        let mut interactive = EtcdctlWatch::spawn(&side.endpoint, &["-i"]);
        interactive.send_line("watch --prefix a");
        side.establish(&[&prefix, &interactive]);
        plain.push((prefix, interactive));
    }
    // Same number of probes on both servers, so revisions stay aligned.
    let most = sides.iter().map(|s| s.probes).max().unwrap();
    for side in &mut sides {
        while side.probes < most {
            side.ctl(&["put", "ab", "probe"]);
            side.probes += 1;
        }
    }
    // Watches from explicit revisions: history replay, then live events. Each is waited
    // for until its replay arrived, so replay and live events land in the same responses
    // on both servers.
    let mut historical = Vec::new();
    for side in &sides {
        let prev = EtcdctlWatch::spawn(
            &side.endpoint,
            &["--prefix", "a/", "--rev", "2", "--prev-kv"],
        );
        let range = EtcdctlWatch::spawn(&side.endpoint, &["a/", "a/f", "--rev", "3", "-w", "json"]);
        let all = EtcdctlWatch::spawn(
            &side.endpoint,
            &["--prefix", "a", "--rev", "1", "--prev-kv", "-w", "json"],
        );
        let single = EtcdctlWatch::spawn(&side.endpoint, &["a/1", "--rev", "2", "-w", "json"]);
        prev.expect("a/2", 1, "replay of --rev 2");
        range.expect("YS8y", 1, "replay of --rev 3"); // base64("a/2")
        all.expect("YS8y", 1, "replay of --rev 1");
        single.expect("YS8x", 1, "replay of a/1 --rev 2"); // base64("a/1")
        historical.push((prev, range, all, single));
    }
    // The same writes on both: updates, deletes (single, none, range), txns taking either
    // branch with several ops in one revision, a re-create, and an end marker.
    for side in &sides {
        side.ctl(&["put", "a/1", "v1b"]);
        side.ctl(&["put", "a/3", "v3"]);
        side.ctl(&["del", "a/2"]);
        side.ctl(&["del", "a/nothing"]);
        side.txn("mod(\"a/1\") > \"0\"\n\nput a/4 v4\ndel a/3\nput b y\nput a/0 first\n\nput a/fail 1\n\n");
        side.txn("value(\"a/1\") = \"nope\"\n\nput a/fail 1\n\nput a/6 v6\nput a/5 v5\n\n");
        side.ctl(&["del", "--prefix", "a/"]);
        side.ctl(&["put", "a/1", "again"]);
        side.ctl(&["put", "a/end", "done"]);
    }
    let mut outputs: Vec<BTreeMap<&str, String>> = Vec::new();
    for (((prefix, mut interactive), (prev, range, all, single)), side) in
        plain.into_iter().zip(historical).zip(&sides)
    {
        prefix.expect("a/end", 1, "prefix watch");
        interactive.expect("a/end", 1, "interactive watch");
        prev.expect("a/end", 1, "--prev-kv watch");
        range.expect("YS9lbmQ=", 1, "range watch"); // base64("a/end")
        all.expect("YS9lbmQ=", 1, "--rev 1 watch");
        single.expect("YWdhaW4=", 1, "single-key watch"); // base64("again")
        // `progress` in interactive mode: a progress notification at the current revision.
        interactive.send_line("progress");
        interactive.expect("progress notify:", 1, "interactive progress");
        let mut out = BTreeMap::new();
        out.insert("prefix", strip_probes(&prefix.finish().0));
        out.insert("interactive", strip_probes(&interactive.finish().0));
        out.insert("prev-kv", prev.finish().0);
        out.insert("range json", normalize_json_lines(&range.finish().0));
        out.insert("rev 1 json", normalize_json_lines(&all.finish().0));
        out.insert("single json", normalize_json_lines(&single.finish().0));
        let current = side.ctl(&["get", "a/end", "-w", "json"]);
        let current: Value = serde_json::from_str(&current).unwrap();
        assert!(
            out["interactive"].contains(&format!(
                "progress notify: {}\n",
                current["header"]["revision"]
            )),
            "{}: progress notification not at the current revision:\n{}",
            side.name,
            out["interactive"]
        );
        outputs.push(out);
    }
    // Compaction: a watch from a compacted revision is cancelled (etcdctl exits with its
    // message); one from the compaction revision itself replays from there.
    for (side, out) in sides.iter().zip(outputs.iter_mut()) {
        // At the put of `a/1` (not at a delete: etcd 3.4 drops a tombstone at the compaction
        // revision, 3.5.16+ and skiff keep it; `compaction_keeps_the_delete_at_its_revision`).
        let a1: Value = serde_json::from_str(&side.ctl(&["get", "a/1", "-w", "json"])).unwrap();
        let compact_at = a1["kvs"][0]["mod_revision"].as_i64().unwrap();
        side.ctl(&["compact", &compact_at.to_string()]);
        let old = EtcdctlWatch::spawn(
            &side.endpoint,
            &["--prefix", "a", "--rev", "2", "-w", "json"],
        );
        let (code, stdout, stderr) = old.wait_exit(Duration::from_secs(10));
        out.insert("compacted json", normalize_json_lines(&stdout));
        out.insert("compacted stderr", stderr);
        out.insert("compacted exit", format!("{code:?}"));
        let at = EtcdctlWatch::spawn(
            &side.endpoint,
            &["--prefix", "a/", "--rev", &compact_at.to_string()],
        );
        at.expect("a/end", 1, "watch at the compaction revision");
        out.insert("at compaction", at.finish().0);
    }
    let (ours, theirs) = (&outputs[0], &outputs[1]);
    for (name, expected) in theirs {
        assert_eq!(
            &ours[name], expected,
            "etcdctl watch ({name}) differs between skiff and real etcd\n--- skiff ---\n{}\n--- etcd ---\n{}",
            ours[name], expected
        );
    }
    println!("etcdctl watch outputs identical: {:?}", theirs.keys());
}

// =======================================================================================
// Raw gRPC streams: every response field visible
// =======================================================================================

fn create_req(key: &[u8], range_end: &[u8], start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        start_revision,
        ..Default::default()
    }
}

fn create_msg(create: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }
}

struct RawWatch {
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl RawWatch {
    /// Open a stream with `first` already queued (etcd sends the response headers with its
    /// first response, so opening a stream waits for one).
    async fn open(
        endpoint: &str,
        require_leader: bool,
        first: WatchCreateRequest,
    ) -> Result<RawWatch, tonic::Status> {
        let mut client = WatchClient::connect(format!("http://{endpoint}"))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel(64);
        tx.send(create_msg(first))
            .await
            .expect("queue the first create");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if require_leader {
            request.metadata_mut().insert(
                "hasleader",
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        let responses = client.watch(request).await?.into_inner();
        Ok(RawWatch {
            requests: tx,
            responses,
        })
    }

    async fn send(&self, union: RequestUnion) {
        self.requests
            .send(WatchRequest {
                request_union: Some(union),
            })
            .await
            .expect("send a watch request");
    }

    async fn create(&self, create: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await
    }

    async fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await
    }

    async fn progress(&self) {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await
    }

    /// The next response within `timeout` (None if none came); a stream error panics.
    async fn next(&mut self, timeout: Duration) -> Option<WatchResponse> {
        match tokio::time::timeout(timeout, self.responses.message()).await {
            Err(_) => None,
            Ok(Ok(Some(response))) => Some(response),
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(status)) => panic!("watch stream failed: {status:?}"),
        }
    }

    async fn expect(&mut self) -> WatchResponse {
        self.next(Duration::from_secs(10))
            .await
            .expect("a watch response within 10s")
    }
}

async fn kv_client(endpoint: &str) -> KvClient<Channel> {
    KvClient::connect(format!("http://{endpoint}"))
        .await
        .expect("connect KV")
        .max_decoding_message_size(64 << 20)
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &[u8]) -> i64 {
    kv.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        ..Default::default()
    })
    .await
    .expect("put")
    .into_inner()
    .header
    .expect("header")
    .revision
}

async fn delete(kv: &mut KvClient<Channel>, key: &str, range_end: &str) -> i64 {
    kv.delete_range(DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.as_bytes().to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete")
    .into_inner()
    .header
    .expect("header")
    .revision
}

async fn compact(kv: &mut KvClient<Channel>, revision: i64) {
    kv.compact(CompactionRequest {
        revision,
        physical: true,
    })
    .await
    .expect("compact");
}

/// `PUT key=value@mod_revision (create,version) prev=...` / `DELETE key@rev prev=...`.
fn show_event(event: &Event) -> String {
    let kv = event.kv.clone().unwrap_or_default();
    let prev = match &event.prev_kv {
        Some(p) => format!(
            " prev={}@{}",
            String::from_utf8_lossy(&p.value),
            p.mod_revision
        ),
        None => String::new(),
    };
    if event.r#type == EventType::Delete as i32 {
        format!(
            "DELETE {}@{}{prev}",
            String::from_utf8_lossy(&kv.key),
            kv.mod_revision
        )
    } else {
        format!(
            "PUT {}={}@{} c{} v{}{prev}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            kv.mod_revision,
            kv.create_revision,
            kv.version
        )
    }
}

// =======================================================================================
// etcd-client crate: options, IDs, cancel, progress
// =======================================================================================

#[test]
fn client_watch_options_ids_cancel_and_progress() {
    use etcd_client::{EventType as CEventType, WatchFilterType, WatchOptions};
    let cluster = Cluster::start(1);
    let ep = cluster.members[0].endpoint();
    runtime().block_on(async {
        let mut client = common::client(&ep).await;
        // History: revisions 2..=5.
        client.put("p/a", "1", None).await.unwrap();
        client.put("p/b", "1", None).await.unwrap();
        client.put("p/k", "1", None).await.unwrap();
        let h = client
            .delete("p/a", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        assert_eq!(h, 5);

        let specs: Vec<(&str, &str, WatchOptions)> = vec![
            ("single key", "p/k", WatchOptions::new()),
            (
                "prefix + prev_kv",
                "p/",
                WatchOptions::new().with_prefix().with_prev_key(),
            ),
            (
                "range [p/b, p/d)",
                "p/b",
                WatchOptions::new().with_range("p/d"),
            ),
            ("from key p/c", "p/c", WatchOptions::new().with_from_key()),
            (
                "NOPUT",
                "p/",
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoPut]),
            ),
            (
                "NODELETE",
                "p/",
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoDelete]),
            ),
            (
                "from revision 3",
                "p/",
                WatchOptions::new().with_prefix().with_start_revision(3),
            ),
            (
                "future revision",
                "p/",
                WatchOptions::new().with_prefix().with_start_revision(h + 4),
            ),
            (
                "revision 2 + prev_kv",
                "p/",
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
            ("all keys", "", WatchOptions::new().with_all_keys()),
        ];
        let mut specs = specs.into_iter();
        let (_, key, options) = specs.next().unwrap();
        let mut stream = client.watch(key, Some(options)).await.unwrap();
        for (_, key, options) in specs.by_ref() {
            stream.watch(key, Some(options)).await.unwrap();
        }
        // Exactly one `created` per create, in order, IDs from zero, at the current revision.
        let mut events: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        let mut created = Vec::new();
        while created.len() < 10 {
            let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("created responses")
                .unwrap()
                .unwrap();
            if response.created() {
                assert!(!response.canceled(), "{response:?}");
                assert_eq!(response.header().unwrap().revision(), h);
                created.push(response.watch_id());
            }
            for event in response.events() {
                events
                    .entry(response.watch_id())
                    .or_default()
                    .push(show_client_event(event));
            }
        }
        assert_eq!(created, (0..10).collect::<Vec<i64>>());

        // Live writes: an update, a create, a txn in non-key order, a range delete, a
        // re-create, a key outside the prefix, and an end marker.
        let mut kv = kv_client(&ep).await;
        put(&mut kv, "p/k", b"2").await; // 6
        put(&mut kv, "p/c", b"1").await; // 7
        let txn = TxnRequest {
            compare: vec![],
            success: vec![r_put("p/z", "1"), r_del("p/b", ""), r_put("p/c", "2")],
            failure: vec![],
        };
        kv.txn(txn).await.unwrap(); // 8
        delete(&mut kv, "p/c", "p/d").await; // 9
        put(&mut kv, "p/b", b"2").await; // 10
        put(&mut kv, "q/out", b"1").await; // 11
        let end = put(&mut kv, "p/end", b"1").await; // 12
        assert_eq!(end, h + 7);
        // A progress request answers with watch ID -1 once every event before it is out.
        stream.request_progress().await.unwrap();
        let bookmark = loop {
            let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("progress response")
                .unwrap()
                .unwrap();
            assert!(!response.created() && !response.canceled(), "{response:?}");
            if response.watch_id() == -1 {
                assert!(response.events().is_empty());
                break response.header().unwrap().revision();
            }
            for event in response.events() {
                assert!(
                    event.kv().unwrap().mod_revision() <= response.header().unwrap().revision()
                );
                events
                    .entry(response.watch_id())
                    .or_default()
                    .push(show_client_event(event));
            }
        };
        let delivered = events
            .values()
            .flatten()
            .map(|e| {
                e.rsplit_once('@')
                    .unwrap()
                    .1
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            })
            .max()
            .unwrap();
        assert!(
            bookmark >= delivered && bookmark >= end,
            "bookmark {bookmark} < {delivered}"
        );

        let all_p = [
            "PUT p/k=2@6 c4 v2",
            "PUT p/c=1@7 c7 v1",
            "PUT p/z=1@8 c8 v1",
            "DELETE p/b@8",
            "PUT p/c=2@8 c7 v2",
            "DELETE p/c@9",
            "PUT p/b=2@10 c10 v1",
            "PUT p/end=1@12 c12 v1",
        ];
        let with_prev = [
            "PUT p/k=2@6 c4 v2 prev=1@4",
            "PUT p/c=1@7 c7 v1",
            "PUT p/z=1@8 c8 v1",
            "DELETE p/b@8 prev=1@3",
            "PUT p/c=2@8 c7 v2 prev=1@7",
            "DELETE p/c@9 prev=2@8",
            "PUT p/b=2@10 c10 v1",
            "PUT p/end=1@12 c12 v1",
        ];
        let pick = |filter: &dyn Fn(&str) -> bool| -> Vec<String> {
            all_p
                .iter()
                .filter(|e| filter(e))
                .map(|e| e.to_string())
                .collect()
        };
        let key_of = |e: &str| {
            e.split_whitespace()
                .nth(1)
                .unwrap()
                .split(['=', '@'])
                .next()
                .unwrap()
                .to_string()
        };
        let mut expected: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        expected.insert(0, pick(&|e| key_of(e) == "p/k"));
        expected.insert(1, with_prev.iter().map(|e| e.to_string()).collect());
        expected.insert(
            2,
            pick(&|e| {
                let k = key_of(e);
                k.as_str() >= "p/b" && k.as_str() < "p/d"
            }),
        );
        let mut from_key = pick(&|e| key_of(e).as_str() >= "p/c");
        from_key.insert(5, "PUT q/out=1@11 c11 v1".to_string());
        expected.insert(3, from_key);
        expected.insert(4, pick(&|e| e.starts_with("DELETE")));
        expected.insert(5, pick(&|e| e.starts_with("PUT")));
        let mut from3 = vec![
            "PUT p/b=1@3 c3 v1".to_string(),
            "PUT p/k=1@4 c4 v1".to_string(),
            "DELETE p/a@5".to_string(),
        ];
        from3.extend(pick(&|_| true));
        expected.insert(6, from3);
        expected.insert(
            7,
            pick(&|e| e.contains("@9") || e.contains("@10") || e.contains("@12")),
        );
        let mut from2 = vec![
            "PUT p/a=1@2 c2 v1".to_string(),
            "PUT p/b=1@3 c3 v1".to_string(),
            "PUT p/k=1@4 c4 v1".to_string(),
            "DELETE p/a@5 prev=1@2".to_string(),
        ];
        from2.extend(with_prev.iter().map(|e| e.to_string()));
        expected.insert(8, from2);
        let mut everything = pick(&|_| true);
        everything.insert(7, "PUT q/out=1@11 c11 v1".to_string());
        expected.insert(9, everything);
        for (id, want) in &expected {
            let got = events.get(id).cloned().unwrap_or_default();
            assert_eq!(&got, want, "watcher {id}");
        }

        // Cancel: answered with `canceled` for that ID; no more events for it.
        stream.cancel(0).await.unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            response.canceled() && response.watch_id() == 0,
            "{response:?}"
        );
        put(&mut kv, "p/k", b"3").await; // 13
        let mut seen = BTreeSet::new();
        while seen.len() < 7 {
            let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_ne!(response.watch_id(), 0, "event after cancel: {response:?}");
            assert!(
                response
                    .events()
                    .iter()
                    .all(|e| e.event_type() == CEventType::Put)
            );
            seen.insert(response.watch_id());
        }
        // Watchers 1, 3 (from p/c: p/k included), 5, 6, 7, 8, 9 get it; 2 and 4 do not.
        assert_eq!(seen, BTreeSet::from([1, 3, 5, 6, 7, 8, 9]));

        // Explicit IDs: accepted, and a taken one is refused with ID -1, like an empty range.
        let mut second = client
            .watch("x", Some(WatchOptions::new().with_watch_id(100)))
            .await
            .unwrap();
        second
            .watch("x", Some(WatchOptions::new().with_watch_id(100)))
            .await
            .unwrap();
        second
            .watch("x", Some(WatchOptions::new().with_range("a")))
            .await
            .unwrap();
        second.watch("x", None).await.unwrap();
        let mut answers = Vec::new();
        while answers.len() < 4 {
            let r = tokio::time::timeout(Duration::from_secs(10), second.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            answers.push((
                r.watch_id(),
                r.created(),
                r.canceled(),
                r.cancel_reason().to_string(),
            ));
        }
        assert_eq!(
            answers,
            vec![
                (100, true, false, String::new()),
                (
                    -1,
                    true,
                    true,
                    "mvcc: duplicate watch ID provided on the WatchStream".into()
                ),
                (-1, true, true, "mvcc: watcher range is empty".into()),
                (0, true, false, String::new()),
            ]
        );
    });
}

fn show_client_event(event: &etcd_client::Event) -> String {
    let kv = event.kv().unwrap();
    let prev = match event.prev_kv() {
        Some(p) => format!(
            " prev={}@{}",
            String::from_utf8_lossy(p.value()),
            p.mod_revision()
        ),
        None => String::new(),
    };
    match event.event_type() {
        etcd_client::EventType::Delete => format!(
            "DELETE {}@{}{prev}",
            String::from_utf8_lossy(kv.key()),
            kv.mod_revision()
        ),
        etcd_client::EventType::Put => format!(
            "PUT {}={}@{} c{} v{}{prev}",
            String::from_utf8_lossy(kv.key()),
            String::from_utf8_lossy(kv.value()),
            kv.mod_revision(),
            kv.create_revision(),
            kv.version()
        ),
    }
}

fn r_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn r_del(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: range_end.as_bytes().to_vec(),
                ..Default::default()
            },
        )),
    }
}

// =======================================================================================
// Raw streams, the same scenario against skiff and real etcd
// =======================================================================================

fn show_response(r: &WatchResponse) -> String {
    let mut s = format!(
        "id={} rev={}",
        r.watch_id,
        r.header.as_ref().map_or(-99, |h| h.revision)
    );
    for (flag, name) in [
        (r.created, " created"),
        (r.canceled, " canceled"),
        (r.fragment, " fragment"),
    ] {
        if flag {
            s.push_str(name);
        }
    }
    if r.compact_revision != 0 {
        s.push_str(&format!(" compact={}", r.compact_revision));
    }
    if !r.cancel_reason.is_empty() {
        s.push_str(&format!(" reason={:?}", r.cancel_reason));
    }
    for event in &r.events {
        s.push_str(" | ");
        s.push_str(&show_event(event));
    }
    s
}

/// Collect responses until none arrives for `quiet`.
async fn drain(watch: &mut RawWatch, quiet: Duration, out: &mut Vec<String>) {
    while let Some(response) = watch.next(quiet).await {
        out.push(show_response(&response));
    }
}

/// Run `scenario` against a fresh single-member skiff and a fresh real etcd (each started
/// with `flags`) and require identical transcripts.
fn same_on_skiff_and_etcd<F, Fut>(flags: &[&str], scenario: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let cluster = Cluster::start_with(1, flags);
    let etcd = RealEtcd::start_with(flags);
    let rt = runtime();
    let ours = rt.block_on(scenario(cluster.members[0].endpoint()));
    let theirs = rt.block_on(scenario(etcd.endpoint.clone()));
    assert_eq!(
        ours,
        theirs,
        "skiff and etcd differ\n--- skiff ---\n{}\n--- etcd ---\n{}",
        ours.join("\n"),
        theirs.join("\n")
    );
    println!("identical on skiff and etcd:\n  {}", theirs.join("\n  "));
}

#[test]
fn compaction_cancels_like_etcd() {
    same_on_skiff_and_etcd(&[], |ep| async move {
        let mut kv = kv_client(&ep).await;
        let mut out = Vec::new();
        put(&mut kv, "c/a", b"1").await; // 2
        put(&mut kv, "c/b", b"1").await; // 3
        delete(&mut kv, "c/a", "").await; // 4
        put(&mut kv, "c/b", b"2").await; // 5
        put(&mut kv, "c/c", b"1").await; // 6
        compact(&mut kv, 5).await;
        // At the compaction revision: history from there; no prev_kv from before it.
        let mut at = RawWatch::open(
            &ep,
            false,
            WatchCreateRequest {
                prev_kv: true,
                ..create_req(b"c/", b"c0", 5)
            },
        )
        .await
        .unwrap();
        drain(&mut at, Duration::from_millis(500), &mut out).await;
        // Below it: created, then cancelled with the compact revision; the ID stays taken
        // until the client cancels it, and that cancel is answered.
        let mut old = RawWatch::open(&ep, false, create_req(b"c/", b"c0", 4))
            .await
            .unwrap();
        drain(&mut old, Duration::from_millis(500), &mut out).await;
        old.create(WatchCreateRequest {
            watch_id: 0,
            ..create_req(b"c/a", b"", 0)
        })
        .await;
        drain(&mut old, Duration::from_millis(300), &mut out).await;
        old.cancel(0).await;
        drain(&mut old, Duration::from_millis(300), &mut out).await;
        put(&mut kv, "c/a", b"2").await; // 7
        drain(&mut old, Duration::from_millis(300), &mut out).await;
        // A progress request: watch ID -1 at the current revision.
        old.progress().await;
        drain(&mut old, Duration::from_millis(300), &mut out).await;
        out
    });
}

/// etcd 3.4 drops a tombstone that sits exactly at the compaction revision, so a watch
/// from there misses that delete; etcd 3.5.16+ (#18089) and skiff keep it.
#[test]
fn compaction_keeps_the_delete_at_its_revision() {
    let cluster = Cluster::start(1);
    let ep = cluster.members[0].endpoint();
    runtime().block_on(async {
        let mut kv = kv_client(&ep).await;
        put(&mut kv, "t/a", b"1").await; // 2
        put(&mut kv, "t/b", b"1").await; // 3
        let del_rev = delete(&mut kv, "t/", "t0").await; // 4: both keys
        put(&mut kv, "t/c", b"1").await; // 5
        compact(&mut kv, del_rev).await;
        let mut watch = RawWatch::open(&ep, false, WatchCreateRequest {
            prev_kv: true,
            ..create_req(b"t/", b"t0", del_rev)
        })
        .await
        .unwrap();
        let mut out = Vec::new();
        drain(&mut watch, Duration::from_millis(500), &mut out).await;
        assert_eq!(
            out,
            vec![
                "id=0 rev=5 created".to_string(),
                "id=0 rev=5 | DELETE t/a@4 | DELETE t/b@4 | PUT t/c=1@5 c5 v1".to_string(),
            ]
        );
        // A negative start revision is refused like a compacted one (etcd 3.5.24+/3.6;
        // 3.4 replays from the first revision).
        watch.create(create_req(b"t/", b"t0", -1)).await;
        let refused = watch.expect().await;
        assert_eq!(
            show_response(&refused),
            "id=-1 rev=5 created canceled reason=\"etcdserver: mvcc: required revision has been compacted\""
        );
        // After a restart (index rebuilt from the records) too.
        drop(watch);
    });
    let mut cluster = cluster;
    cluster.members[0].kill9();
    cluster.restart(0);
    cluster.wait_healthy(Duration::from_secs(30));
    runtime().block_on(async {
        let mut watch = RawWatch::open(&ep, false, create_req(b"t/", b"t0", 4))
            .await
            .unwrap();
        let mut out = Vec::new();
        drain(&mut watch, Duration::from_millis(500), &mut out).await;
        assert_eq!(
            out[1],
            "id=0 rev=5 | DELETE t/a@4 | DELETE t/b@4 | PUT t/c=1@5 c5 v1"
        );
    });
}

#[test]
fn progress_notify_interval_like_etcd() {
    let flags = ["--experimental-watch-progress-notify-interval", "200ms"];
    same_on_skiff_and_etcd(&flags, |ep| async move {
        let mut kv = kv_client(&ep).await;
        put(&mut kv, "n/x", b"1").await; // 2
        let mut watch = RawWatch::open(
            &ep,
            false,
            WatchCreateRequest {
                progress_notify: true,
                ..create_req(b"n/x", b"", 0)
            },
        )
        .await
        .unwrap();
        watch.create(create_req(b"n/y", b"", 0)).await; // no progress_notify
        let mut out = Vec::new();
        let collect = |out: &mut Vec<String>, r: WatchResponse| {
            let line = show_response(&r);
            // The number of notifications depends on timing: count distinct lines.
            if out.last() != Some(&line) {
                out.push(line);
            }
        };
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut progress = 0;
        while Instant::now() < deadline {
            if let Some(r) = watch.next(Duration::from_millis(100)).await {
                if r.events.is_empty() && !r.created {
                    progress += 1;
                }
                collect(&mut out, r);
            }
        }
        assert!(
            progress >= 2,
            "{progress} progress notifications in 1.5s at 200ms"
        );
        put(&mut kv, "n/x", b"2").await; // 3
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            if let Some(r) = watch.next(Duration::from_millis(100)).await {
                collect(&mut out, r);
            }
        }
        out
    });
}

#[test]
fn fragments_like_etcd() {
    same_on_skiff_and_etcd(&[], |ep| async move {
        let mut kv = kv_client(&ep).await;
        let big = vec![b'v'; 600 * 1024];
        for i in 1..=4 {
            put(&mut kv, &format!("f/{i}"), &big).await; // 2..=5
        }
        let mut fragmented = RawWatch::open(
            &ep,
            false,
            WatchCreateRequest {
                prev_kv: true,
                fragment: true,
                ..create_req(b"f/", b"f0", 0)
            },
        )
        .await
        .unwrap();
        let mut whole = RawWatch::open(
            &ep,
            false,
            WatchCreateRequest {
                prev_kv: true,
                ..create_req(b"f/", b"f0", 0)
            },
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        drain(&mut fragmented, Duration::from_millis(300), &mut out).await;
        drain(&mut whole, Duration::from_millis(300), &mut out).await;
        // One revision, four deletes with 600 KiB prev_kvs: over --max-request-bytes.
        delete(&mut kv, "f/", "f0").await; // 6
        drain(&mut fragmented, Duration::from_millis(500), &mut out).await;
        drain(&mut whole, Duration::from_millis(500), &mut out).await;
        // Values are long: keep their length only.
        out.iter()
            .map(|l| l.replace(&"v".repeat(600 * 1024), "<600KiB>"))
            .collect()
    });
}

#[test]
fn half_closed_stream_keeps_delivering_like_etcd() {
    same_on_skiff_and_etcd(&[], |ep| async move {
        let mut kv = kv_client(&ep).await;
        let mut watch = RawWatch::open(&ep, false, create_req(b"h", b"", 0))
            .await
            .unwrap();
        let mut out = Vec::new();
        drain(&mut watch, Duration::from_millis(300), &mut out).await;
        // The client closes its sending side (e.g. a dropped request sender): the server
        // keeps the stream and its watchers.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut watch.requests, closed));
        tokio::time::sleep(Duration::from_millis(200)).await;
        put(&mut kv, "h", b"1").await;
        drain(&mut watch, Duration::from_millis(500), &mut out).await;
        out
    });
}

// =======================================================================================
// hasleader: streams that require a leader end when the member loses it
// =======================================================================================

/// Watch on `target` with and without `hasleader`, kill every other member, and time how
/// long until the `hasleader` stream ends with etcd's "no leader" error.
fn lose_quorum(cluster: &mut Cluster, target: usize, election: Duration) -> Duration {
    let ep = cluster.members[target].endpoint();
    let rt = runtime();
    let (mut strict, mut lenient) = rt.block_on(async {
        let strict = RawWatch::open(&ep, true, create_req(b"l", b"", 0))
            .await
            .unwrap();
        let lenient = RawWatch::open(&ep, false, create_req(b"l", b"", 0))
            .await
            .unwrap();
        (strict, lenient)
    });
    rt.block_on(async {
        assert!(strict.expect().await.created);
        assert!(lenient.expect().await.created);
    });
    for i in 0..cluster.members.len() {
        if i != target {
            cluster.members[i].kill9();
        }
    }
    let killed = Instant::now();
    let status = rt.block_on(async {
        match tokio::time::timeout(election * 20, strict.responses.message()).await {
            Ok(Err(status)) => status,
            other => panic!("hasleader stream not cancelled: {other:?}"),
        }
    });
    let took = killed.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "etcdserver: no leader");
    rt.block_on(async {
        // The stream without `hasleader` stays open.
        assert!(lenient.next(Duration::from_millis(300)).await.is_none());
        // A new `hasleader` stream is refused at once.
        match RawWatch::open(&ep, true, create_req(b"l", b"", 0)).await {
            Err(status) => assert_eq!(status.message(), "etcdserver: no leader"),
            Ok(mut w) => {
                match tokio::time::timeout(Duration::from_secs(5), w.responses.message()).await {
                    Ok(Err(status)) => assert_eq!(status.message(), "etcdserver: no leader"),
                    other => panic!("new hasleader stream accepted without a leader: {other:?}"),
                }
            }
        }
    });
    for i in 0..cluster.members.len() {
        if i != target {
            cluster.restart(i);
        }
    }
    cluster.wait_healthy(Duration::from_secs(30));
    took
}

#[test]
fn hasleader_streams_end_without_a_leader() {
    let election = Duration::from_millis(500);
    let mut cluster = Cluster::start_with(
        3,
        &["--election-timeout", "500", "--heartbeat-interval", "100"],
    );
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = (leader + 1) % 3;
    let on_follower = lose_quorum(&mut cluster, follower, election);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let on_leader = lose_quorum(&mut cluster, leader, election);
    println!(
        "hasleader stream cancelled {on_follower:?} after a follower lost quorum, \
         {on_leader:?} after the leader did (election timeout {election:?})"
    );
    // etcd: up to an election timeout (randomised up to 2x) to notice, then three
    // election-timeout ticks without a leader; plus slack for a loaded machine.
    let bound = election * 6 + Duration::from_secs(2);
    assert!(on_follower <= bound, "{on_follower:?} > {bound:?}");
    assert!(on_leader <= bound, "{on_leader:?} > {bound:?}");
}

// =======================================================================================
// Slow watchers: bounded memory, nothing lost
// =======================================================================================

/// `count` puts of distinct keys `{prefix}{i:08}`, `per_txn` to a txn (one revision), with
/// `concurrency` requests in flight.
async fn write_many(
    ep: &str,
    prefix: &str,
    count: usize,
    value: &[u8],
    per_txn: usize,
    concurrency: usize,
) {
    let kv = kv_client(ep).await;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut kv = kv.clone();
        let next = next.clone();
        let prefix = prefix.to_string();
        let value = String::from_utf8(value.to_vec()).unwrap();
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(per_txn, Ordering::Relaxed);
                if first >= count {
                    return;
                }
                let ops = (first..(first + per_txn).min(count))
                    .map(|i| r_put(&format!("{prefix}{i:08}"), &value))
                    .collect();
                kv.txn(TxnRequest {
                    compare: vec![],
                    success: ops,
                    failure: vec![],
                })
                .await
                .expect("txn");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
}

/// Read `count` events from `watch` (after its `created`), checking they are in revision
/// order without gaps; returns how long that took.
async fn read_all(watch: &mut RawWatch, count: usize, first_revision: i64) -> Duration {
    let started = Instant::now();
    let mut seen = 0usize;
    let mut last = (first_revision - 1, Vec::new());
    while seen < count {
        let response = watch
            .next(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("only {seen} of {count} events arrived"));
        assert!(!response.canceled, "{}", show_response(&response));
        assert!(
            prost::Message::encoded_len(&response) <= 4 << 20,
            "a {} byte response ({} events)",
            prost::Message::encoded_len(&response),
            response.events.len()
        );
        for event in &response.events {
            let kv = event.kv.as_ref().unwrap();
            // Revisions go up by one (every write here changes something); within one
            // revision keys go up (each txn puts increasing keys).
            let here = (kv.mod_revision, kv.key.clone());
            assert!(
                (here.0 == last.0 && here.1 > last.1) || here.0 == last.0 + 1,
                "gap or reordering at event {seen}: {:?} after {:?}",
                here.0,
                last.0
            );
            last = here;
            seen += 1;
        }
    }
    started.elapsed()
}

#[test]
fn slow_watcher_is_bounded_and_gets_everything() {
    let count = if slow_tests() { 100_000 } else { 20_000 };
    let value = vec![b'x'; 2048];
    let cluster = Cluster::start(1);
    let ep = cluster.members[0].endpoint();
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    runtime().block_on(async {
        let rss = || mib(metric(&ep, "process_resident_memory_bytes"));
        write_many(&ep, "slow/", count, &value, 20, 8).await;
        let mut kv = kv_client(&ep).await;
        let first = put(&mut kv, "mark", b"").await + 1;
        // The deletes' events carry the 2 KiB values as prev_kv: memory the server would
        // have to hold for a watcher that does not read, while the deletes themselves add
        // little (tombstones).
        let with_prev = WatchCreateRequest {
            prev_kv: true,
            ..create_req(b"slow/", b"slow0", 0)
        };
        let mut slow = RawWatch::open(&ep, false, with_prev.clone()).await.unwrap();
        let mut fast = RawWatch::open(&ep, false, with_prev).await.unwrap();
        assert!(fast.expect().await.created);
        let reader = tokio::spawn(async move { read_all(&mut fast, count, first).await });
        let before = rss();
        let began = Instant::now();
        delete_many(&ep, "slow/", count, 20, 8).await;
        let wrote = began.elapsed();
        let after = rss();
        let fast_took = reader.await.unwrap();
        let grew = after - before;
        println!(
            "{count} deletes with {} B prev_kv: RSS {before:.0} MiB -> {after:.0} MiB (+{grew:.0}) \
             with a watcher not reading; deletes took {wrote:?}, the reading watcher had all \
             {count} after {fast_took:?}",
            value.len()
        );
        // Buffering every event for the slow watcher would add ~count x value bytes.
        let unbounded = mib((count * value.len()) as f64);
        assert!(
            grew < unbounded / 2.0,
            "RSS grew {grew:.0} MiB with a watcher not reading (buffering everything: ~{unbounded:.0} MiB)"
        );
        // Once it reads, the slow watcher gets every event, in order, no gap, in responses
        // a client with the default 4 MiB message limit accepts.
        assert!(slow.expect().await.created);
        let took = read_all(&mut slow, count, first).await;
        println!("the slow watcher then read all {count} events in {took:?}");
        // A watcher replaying those deletes through the etcd-client crate (4 MiB limit).
        let mut client = common::client(&ep).await;
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(first);
        let mut stream = client.watch("slow/", Some(options)).await.unwrap();
        let mut replayed = 0;
        while replayed < count {
            let response = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("replay in time")
                .expect("replay responses fit the client's message limit")
                .expect("stream open");
            replayed += response.events().len();
        }
        assert_eq!(replayed, count);
    });
}

/// Delete keys `{prefix}{i:08}`, `per_txn` to a txn, `concurrency` requests in flight.
async fn delete_many(ep: &str, prefix: &str, count: usize, per_txn: usize, concurrency: usize) {
    let kv = kv_client(ep).await;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut kv = kv.clone();
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(per_txn, Ordering::Relaxed);
                if first >= count {
                    return;
                }
                let ops = (first..(first + per_txn).min(count))
                    .map(|i| r_del(&format!("{prefix}{i:08}"), ""))
                    .collect();
                kv.txn(TxnRequest {
                    compare: vec![],
                    success: ops,
                    failure: vec![],
                })
                .await
                .expect("txn");
            }
        }));
    }
    for task in tasks {
        task.await.expect("delete task");
    }
}

// =======================================================================================
// Property test: three members, concurrent writers, a compaction and a leader kill
// =======================================================================================

const KEY_COUNT: u8 = 16;

fn pkey(i: u8) -> String {
    format!("k/{}", (b'a' + i) as char)
}

#[derive(Clone, Debug)]
enum WriteOp {
    Put(String, String),
    /// `[key, range_end)`, or the key alone when `range_end` is empty.
    Del(String, String),
}

/// An acknowledged write that changed something: its revision and the ops that ran, in order.
#[derive(Clone, Debug)]
struct Ack {
    revision: i64,
    ops: Vec<WriteOp>,
}

fn op_request(op: &WriteOp) -> RequestOp {
    match op {
        WriteOp::Put(k, v) => r_put(k, v),
        WriteOp::Del(k, end) => r_del(k, end),
    }
}

/// A branch of distinct keys: single-key puts/deletes, sometimes a range delete over three
/// keys with the other ops outside it (etcd refuses overlapping keys in one txn).
fn random_branch(rng: &mut StdRng, writer: usize, n: &mut u64) -> Vec<WriteOp> {
    let mut ops = Vec::new();
    let mut used = BTreeSet::new();
    if rng.random_bool(0.2) {
        let from = rng.random_range(0..KEY_COUNT - 3);
        ops.push(WriteOp::Del(pkey(from), pkey(from + 3)));
        used.extend(from..from + 3);
    }
    for _ in 0..rng.random_range(1..=3) {
        let k = rng.random_range(0..KEY_COUNT);
        if !used.insert(k) {
            continue;
        }
        if rng.random_bool(0.7) {
            *n += 1;
            ops.push(WriteOp::Put(pkey(k), format!("w{writer}-{n}")));
        } else {
            ops.push(WriteOp::Del(pkey(k), String::new()));
        }
    }
    ops
}

/// One writer: puts, deletes (single and ranges) and multi-op txns taking either branch,
/// through `endpoints[writer]` (moving on to the next member when that one fails).
async fn writer_loop(
    writer: usize,
    endpoints: Vec<String>,
    ops: usize,
    seed: u64,
    acks: Arc<Mutex<Vec<Ack>>>,
    done: Arc<AtomicUsize>,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ (writer as u64).wrapping_mul(0x9e37_79b9));
    let mut member = writer % endpoints.len();
    let mut kv: Option<KvClient<Channel>> = None;
    let mut n = 0u64;
    let mut failures = 0usize;
    for _ in 0..ops {
        if kv.is_none() {
            kv = KvClient::connect(format!("http://{}", endpoints[member]))
                .await
                .ok();
        }
        let Some(client) = kv.as_mut() else {
            member = (member + 1) % endpoints.len();
            failures += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let roll = rng.random_range(0..100);
        let (request, branches): (TxnRequest, [Vec<WriteOp>; 2]) = if roll < 60 {
            // A single op, sent as a one-op txn (same revision rules as Put/DeleteRange).
            let op = if roll < 40 {
                n += 1;
                WriteOp::Put(
                    pkey(rng.random_range(0..KEY_COUNT)),
                    format!("w{writer}-{n}"),
                )
            } else if roll < 52 {
                WriteOp::Del(pkey(rng.random_range(0..KEY_COUNT)), String::new())
            } else {
                let from = rng.random_range(0..KEY_COUNT - 2);
                WriteOp::Del(pkey(from), pkey(from + rng.random_range(1..=2)))
            };
            let txn = TxnRequest {
                compare: vec![],
                success: vec![op_request(&op)],
                failure: vec![],
            };
            (txn, [vec![op], vec![]])
        } else {
            let success = random_branch(&mut rng, writer, &mut n);
            let failure = random_branch(&mut rng, writer, &mut n);
            let compare = Compare {
                key: pkey(rng.random_range(0..KEY_COUNT)).into_bytes(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Greater as i32,
                target_union: Some(TargetUnion::Version(rng.random_range(0..3))),
                range_end: vec![],
            };
            let txn = TxnRequest {
                compare: vec![compare],
                success: success.iter().map(op_request).collect(),
                failure: failure.iter().map(op_request).collect(),
            };
            (txn, [success, failure])
        };
        match tokio::time::timeout(Duration::from_secs(5), client.txn(request)).await {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                let ops = if response.succeeded {
                    branches[0].clone()
                } else {
                    branches[1].clone()
                };
                let changed =
                    ops.iter()
                        .zip(&response.responses)
                        .any(|(op, r)| match (op, &r.response) {
                            (WriteOp::Put(..), _) => true,
                            (
                                WriteOp::Del(..),
                                Some(response_op::Response::ResponseDeleteRange(d)),
                            ) => d.deleted > 0,
                            _ => false,
                        });
                if changed {
                    let revision = response.header.unwrap().revision;
                    acks.lock().unwrap().push(Ack { revision, ops });
                }
            }
            // Unknown outcome (timeout, member down, no leader): not acknowledged; the
            // history read back is the oracle, acks only cross-check it.
            _ => {
                failures += 1;
                kv = None;
                member = (member + 1) % endpoints.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    failures
}

#[derive(Clone, Debug)]
struct Spec {
    name: &'static str,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    /// 0: from "now" (resolved from the `created` header).
    start: i64,
}

impl Spec {
    fn new(name: &'static str, key: &str, range_end: &str, start: i64) -> Spec {
        Spec {
            name,
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            prev_kv: false,
            no_put: false,
            no_delete: false,
            start,
        }
    }

    fn prev(mut self) -> Spec {
        self.prev_kv = true;
        self
    }

    fn request(&self, start: i64) -> WatchCreateRequest {
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(FilterType::Noput as i32);
        }
        if self.no_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            start_revision: start,
            prev_kv: self.prev_kv,
            filters,
            ..Default::default()
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else if self.range_end == [0] {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.range_end.as_slice()
        }
    }
}

/// What one watcher received, across reconnects.
#[derive(Default)]
struct WatchLog {
    /// The first revision it owes (its start revision, resolved).
    start: Option<i64>,
    /// Every event with the sequence number of the response that carried it.
    events: Vec<(u64, Event)>,
    /// Everything up to here has been received (events or a progress response).
    bookmark: i64,
    reconnects: usize,
    problems: Vec<String>,
}

enum StreamCmd {
    Disconnect,
}

/// One stream carrying `specs` (created in order on every (re)connect); on failure it
/// resumes every watcher from its bookmark + 1 on the next member.
async fn stream_loop(
    specs: Vec<Spec>,
    logs: Vec<Arc<Mutex<WatchLog>>>,
    endpoints: Vec<String>,
    mut member: usize,
    mut commands: mpsc::Receiver<StreamCmd>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let starts: Vec<i64> = specs
            .iter()
            .zip(&logs)
            .map(|(spec, log)| {
                let log = log.lock().unwrap();
                if log.start.is_some() {
                    log.bookmark + 1
                } else {
                    spec.start
                }
            })
            .collect();
        let opened = tokio::time::timeout(
            Duration::from_secs(5),
            RawWatch::open(&endpoints[member], false, specs[0].request(starts[0])),
        )
        .await;
        let Ok(Ok(mut watch)) = opened else {
            member = (member + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for (spec, start) in specs.iter().zip(&starts).skip(1) {
            let _ = watch.requests.send(create_msg(spec.request(*start))).await;
        }
        let mut created = 0usize;
        let mut stream_bookmark = i64::MIN;
        let mut progress = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                message = watch.responses.message() => {
                    let Ok(Some(r)) = message else { break };
                    seq += 1;
                    let revision = r.header.as_ref().map_or(0, |h| h.revision);
                    if r.canceled || r.compact_revision != 0 {
                        for log in &logs {
                            log.lock().unwrap().problems.push(format!("unexpected: {}", show_response(&r)));
                        }
                        continue;
                    }
                    if r.created {
                        if r.watch_id != created as i64 {
                            logs[0].lock().unwrap().problems.push(format!(
                                "created #{created} answered with ID {}", r.watch_id
                            ));
                        }
                        if let Some(log) = logs.get(created) {
                            let mut log = log.lock().unwrap();
                            if log.start.is_none() {
                                let start = if specs[created].start == 0 { revision + 1 } else { specs[created].start };
                                log.start = Some(start);
                                log.bookmark = start - 1;
                            }
                        }
                        created += 1;
                        continue;
                    }
                    if r.watch_id == -1 {
                        stream_bookmark = revision;
                        for log in &logs {
                            let mut log = log.lock().unwrap();
                            log.bookmark = log.bookmark.max(revision);
                        }
                        continue;
                    }
                    let Some(log) = logs.get(r.watch_id as usize) else { continue };
                    let mut log = log.lock().unwrap();
                    for event in r.events {
                        let at = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                        if at <= stream_bookmark {
                            log.problems.push(format!(
                                "event at {at} after a progress response at {stream_bookmark}"
                            ));
                        }
                        log.bookmark = log.bookmark.max(at);
                        log.events.push((seq, event));
                    }
                }
                Some(StreamCmd::Disconnect) = commands.recv() => break,
                _ = progress.tick() => {
                    let request = WatchRequest {
                        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                    };
                    if watch.requests.send(request).await.is_err() {
                        break;
                    }
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        for log in &logs {
            log.lock().unwrap().reconnects += 1;
        }
        member = (member + 1) % endpoints.len();
    }
}

/// The key space's state at every revision, read back with Range at that revision.
type States = BTreeMap<i64, BTreeMap<Vec<u8>, KeyValue>>;

async fn read_states(endpoint: &str, from: i64, to: i64, states: &mut States) {
    let mut kv = kv_client(endpoint).await;
    for revision in from..=to {
        if states.contains_key(&revision) {
            continue;
        }
        let response = kv
            .range(RangeRequest {
                key: b"k/".to_vec(),
                range_end: b"k0".to_vec(),
                revision,
                serializable: true,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("range at {revision}: {e:?}"))
            .into_inner();
        states.insert(
            revision,
            response
                .kvs
                .into_iter()
                .map(|kv| (kv.key.clone(), kv))
                .collect(),
        );
    }
}

/// The events at `revision` (sorted by key) derived from the states before and after.
fn changes_at(states: &States, revision: i64) -> Vec<Event> {
    let (before, after) = (&states[&(revision - 1)], &states[&revision]);
    let keys: BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    let mut events = Vec::new();
    for key in keys {
        match (before.get(key), after.get(key)) {
            (prev, Some(kv)) if kv.mod_revision == revision => events.push(Event {
                r#type: EventType::Put as i32,
                kv: Some(kv.clone()),
                prev_kv: prev.cloned(),
            }),
            (Some(prev), None) => events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: key.clone(),
                    mod_revision: revision,
                    ..Default::default()
                }),
                prev_kv: Some(prev.clone()),
            }),
            _ => {}
        }
    }
    events
}

/// Check one watcher against the history: per revision, all its events in one response,
/// revisions strictly increasing from its start to `end`, exactly the history's events
/// for its range and filters (prev_kv included), in the order the writes made them.
fn check_watcher(
    spec: &Spec,
    log: &WatchLog,
    states: &States,
    order: &BTreeMap<i64, Vec<Vec<u8>>>,
    end: i64,
) -> Result<usize, String> {
    if !log.problems.is_empty() {
        return Err(format!("{}: {:?}", spec.name, log.problems));
    }
    let start = log.start.ok_or(format!("{}: never created", spec.name))?;
    let mut got: BTreeMap<i64, (u64, Vec<Event>)> = BTreeMap::new();
    let mut last = start - 1;
    for (seq, event) in &log.events {
        let at = event.kv.as_ref().unwrap().mod_revision;
        if at < last {
            return Err(format!(
                "{}: revision {at} after {last} (reordered or duplicate)",
                spec.name
            ));
        }
        last = at;
        let entry = got.entry(at).or_insert((*seq, Vec::new()));
        if entry.0 != *seq {
            return Err(format!(
                "{}: revision {at} split over two responses",
                spec.name
            ));
        }
        entry.1.push(event.clone());
    }
    let mut total = 0;
    for revision in start..=end {
        let mut want: Vec<Event> = changes_at(states, revision)
            .into_iter()
            .filter(|e| spec.contains(&e.kv.as_ref().unwrap().key))
            .filter(|e| {
                let delete = e.r#type == EventType::Delete as i32;
                !(delete && spec.no_delete || !delete && spec.no_put)
            })
            .map(|mut e| {
                if !spec.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect();
        let mut have = got.remove(&revision).map(|(_, e)| e).unwrap_or_default();
        // The order within a revision is the order of the txn's ops (known for acked writes).
        if let Some(keys) = order.get(&revision) {
            let keys_have: Vec<&Vec<u8>> =
                have.iter().map(|e| &e.kv.as_ref().unwrap().key).collect();
            let keys_want: Vec<&Vec<u8>> = keys.iter().filter(|k| keys_have.contains(k)).collect();
            if keys_have != keys_want {
                return Err(format!(
                    "{}: at {revision} events in order {keys_have:?}, the txn wrote {keys_want:?}",
                    spec.name
                ));
            }
        }
        have.sort_by(|a, b| a.kv.as_ref().unwrap().key.cmp(&b.kv.as_ref().unwrap().key));
        want.sort_by(|a, b| a.kv.as_ref().unwrap().key.cmp(&b.kv.as_ref().unwrap().key));
        if have != want {
            return Err(format!(
                "{}: at revision {revision}\n  got  {:?}\n  want {:?}",
                spec.name,
                have.iter().map(show_event).collect::<Vec<_>>(),
                want.iter().map(show_event).collect::<Vec<_>>()
            ));
        }
        total += have.len();
    }
    if let Some((revision, _)) = got.into_iter().next() {
        return Err(format!(
            "{}: events at {revision}, outside {start}..={end}",
            spec.name
        ));
    }
    Ok(total)
}

/// Wait until every log's bookmark reaches `revision`.
async fn wait_bookmarks(logs: &[(Spec, Arc<Mutex<WatchLog>>)], revision: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: Vec<String> = logs
            .iter()
            .filter_map(|(spec, log)| {
                let log = log.lock().unwrap();
                (log.bookmark < revision).then(|| format!("{} at {}", spec.name, log.bookmark))
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: watchers behind {revision}: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn current_revision(endpoints: &[String]) -> (i64, usize) {
    for _ in 0..100 {
        for (i, ep) in endpoints.iter().enumerate() {
            let Ok(Ok(mut kv)) = tokio::time::timeout(
                Duration::from_secs(2),
                KvClient::connect(format!("http://{ep}")),
            )
            .await
            else {
                continue;
            };
            let request = RangeRequest {
                key: b"k/".to_vec(),
                range_end: b"k0".to_vec(),
                count_only: true,
                ..Default::default()
            };
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), kv.range(request)).await
            {
                return (r.into_inner().header.unwrap().revision, i);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no member answers a linearizable range");
}

#[test]
fn watchers_see_exact_history_through_compaction_and_leader_kill() {
    let ops_per_writer = if slow_tests() { 1500 } else { 250 };
    let seed: u64 = std::env::var("SKIFF_WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_3a7c);
    println!(
        "watch property test: seed {seed} (SKIFF_WATCH_SEED), 3 writers x {ops_per_writer} ops"
    );
    let mut cluster = Cluster::start(3);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let total_ops = 3 * ops_per_writer;

    // Watchers on every member, several per stream, different ranges and options.
    let mut nodelete = Spec::new("prefix NODELETE @m1", "k/", "k0", 0);
    nodelete.no_delete = true;
    let mut noput = Spec::new("prefix NOPUT @m2 (disconnects)", "k/", "k0", 0);
    noput.no_put = true;
    let mut range_nodelete = Spec::new("[k/b,k/e) prev NODELETE @m1", "k/b", "k/e", 0).prev();
    range_nodelete.no_delete = true;
    let streams: Vec<(usize, Vec<Spec>)> = vec![
        (
            0,
            vec![
                Spec::new("all from 1 prev @m0", "k/", "k0", 1).prev(),
                Spec::new("[k/c,k/h) @m0", "k/c", "k/h", 0),
            ],
        ),
        (
            1,
            vec![
                Spec::new("k/a prev @m1", "k/a", "", 0).prev(),
                nodelete,
                Spec::new("from k/m prev from 5 @m1", "k/m", "\0", 5).prev(),
            ],
        ),
        (
            2,
            vec![noput, Spec::new("prefix prev @m2", "k/", "k0", 0).prev()],
        ),
        (1, vec![range_nodelete]),
    ];
    let mut all_logs: Vec<(Spec, Arc<Mutex<WatchLog>>)> = Vec::new();
    let mut stream_members = Vec::new();
    let mut commands = Vec::new();
    let mut tasks = Vec::new();
    for (member, specs) in streams {
        let logs: Vec<Arc<Mutex<WatchLog>>> = specs.iter().map(|_| Arc::default()).collect();
        all_logs.extend(specs.iter().cloned().zip(logs.iter().cloned()));
        let (tx, rx) = mpsc::channel(4);
        commands.push(tx);
        stream_members.push((member, logs.clone()));
        tasks.push(rt.spawn(stream_loop(
            specs,
            logs,
            endpoints.clone(),
            member,
            rx,
            stop.clone(),
        )));
    }
    // Let every watcher be created before the writers start.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while all_logs
            .iter()
            .any(|(_, l)| l.lock().unwrap().start.is_none())
        {
            assert!(Instant::now() < deadline, "watchers not created");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let started = Instant::now();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            rt.spawn(writer_loop(
                w,
                endpoints.clone(),
                ops_per_writer,
                seed,
                acks.clone(),
                done.clone(),
            ))
        })
        .collect();
    let wait_done = |fraction: f64| {
        let target = (total_ops as f64 * fraction) as usize;
        while done.load(Ordering::Relaxed) < target {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Revision 1 is the empty store; "revision 0" is before it, empty too.
    let mut states = States::from([(0, BTreeMap::new())]);

    // Compaction: at a revision every watcher has passed, after reading the history up to
    // it (the oracle for everything before).
    wait_done(0.25);
    let compacted_at = rt.block_on(async {
        let (revision, member) = current_revision(&endpoints).await;
        wait_bookmarks(&all_logs, revision, "before compaction").await;
        read_states(&endpoints[member], 1, revision, &mut states).await;
        compact(&mut kv_client(&endpoints[member]).await, revision).await;
        // Below the compaction point: created, then cancelled with the compact revision.
        let mut old = RawWatch::open(
            &endpoints[member],
            false,
            create_req(b"k/", b"k0", revision - 1),
        )
        .await
        .unwrap();
        assert!(old.expect().await.created);
        let cancel = old.expect().await;
        assert!(
            cancel.canceled && cancel.compact_revision == revision && cancel.events.is_empty(),
            "{}",
            show_response(&cancel)
        );
        revision
    });
    println!("compacted at {compacted_at} after {:?}", started.elapsed());
    // A watcher from exactly the compaction revision (replayed from the kept records).
    {
        let spec = Spec::new("prefix from compaction @m2", "k/", "k0", compacted_at);
        let log: Arc<Mutex<WatchLog>> = Arc::default();
        all_logs.push((spec.clone(), log.clone()));
        let (tx, rx) = mpsc::channel(4);
        commands.push(tx);
        stream_members.push((2, vec![log.clone()]));
        tasks.push(rt.spawn(stream_loop(
            vec![spec],
            vec![log],
            endpoints.clone(),
            2,
            rx,
            stop.clone(),
        )));
    }

    // A client-side disconnect midway: resume on another member from bookmark + 1.
    wait_done(0.45);
    rt.block_on(commands[2].send(StreamCmd::Disconnect))
        .unwrap();

    // Kill the leader, restart it while the writers go on.
    wait_done(0.55);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    cluster.members[leader].kill9();
    let killed_at = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.restart(leader);
    println!("killed leader m{leader} at {killed_at:?}, restarted it");

    let failures: usize = rt.block_on(async {
        let mut failures = 0;
        for writer in writers {
            failures += writer.await.unwrap();
        }
        failures
    });
    cluster.wait_healthy(Duration::from_secs(30));
    let (end, member) = rt.block_on(current_revision(&endpoints));
    rt.block_on(wait_bookmarks(&all_logs, end, "at the end"));
    stop.store(true, Ordering::Relaxed);
    drop(commands);
    for task in tasks {
        task.abort();
    }
    rt.block_on(read_states(
        &endpoints[member],
        compacted_at,
        end,
        &mut states,
    ));
    let elapsed = started.elapsed();

    // The acknowledged writes agree with the history read back, and give each revision's
    // op order.
    let acks = acks.lock().unwrap().clone();
    let mut order: BTreeMap<i64, Vec<Vec<u8>>> = BTreeMap::new();
    for ack in &acks {
        assert!(
            !order.contains_key(&ack.revision),
            "two acks at revision {}",
            ack.revision
        );
        let (before, after) = (&states[&(ack.revision - 1)], &states[&ack.revision]);
        let mut keys = Vec::new();
        for op in &ack.ops {
            match op {
                WriteOp::Put(k, v) => {
                    let kv = after
                        .get(k.as_bytes())
                        .unwrap_or_else(|| panic!("acked put {k} missing at {}", ack.revision));
                    assert_eq!(
                        (kv.value.as_slice(), kv.mod_revision),
                        (v.as_bytes(), ack.revision)
                    );
                    keys.push(k.as_bytes().to_vec());
                }
                WriteOp::Del(k, end) => {
                    let deleted: Vec<Vec<u8>> = before
                        .keys()
                        .filter(|key| {
                            if end.is_empty() {
                                key.as_slice() == k.as_bytes()
                            } else {
                                key.as_slice() >= k.as_bytes() && key.as_slice() < end.as_bytes()
                            }
                        })
                        .cloned()
                        .collect();
                    for key in &deleted {
                        assert!(
                            !after.contains_key(key),
                            "acked delete of {key:?} at {}",
                            ack.revision
                        );
                    }
                    keys.extend(deleted);
                }
            }
        }
        order.insert(ack.revision, keys);
    }

    let mut report = Vec::new();
    let mut errors = Vec::new();
    for (spec, log) in &all_logs {
        let log = log.lock().unwrap();
        match check_watcher(spec, &log, &states, &order, end) {
            Ok(n) => report.push(format!(
                "{}: {n} events from {} ({} reconnects)",
                spec.name,
                log.start.unwrap(),
                log.reconnects
            )),
            Err(e) => errors.push(e),
        }
    }
    // Streams on members that stayed up and were not told to disconnect never broke:
    // watchers on followers carried on across the leader change.
    for (i, (member, logs)) in stream_members.iter().enumerate() {
        let reconnects = logs[0].lock().unwrap().reconnects;
        if *member != leader && i != 2 {
            assert_eq!(reconnects, 0, "stream {i} on m{member} (alive) reconnected");
        }
    }
    println!(
        "watch property test: {} writes acknowledged, {failures} failed/unknown, revisions \
         1..={end}, compacted at {compacted_at}, leader m{leader} killed; {elapsed:?}\n  {}",
        acks.len(),
        report.join("\n  ")
    );
    assert!(
        errors.is_empty(),
        "watchers disagree with the history:\n{}",
        errors.join("\n")
    );
}

/// A follower frozen (SIGSTOP) while writes go on falls behind the leader's log purge, so
/// it catches up by installing a snapshot; the stream open on it must still deliver every
/// event exactly once, in order.
#[test]
fn follower_watch_survives_snapshot_install() {
    let cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-count",
            "40",
            "--snapshot-catchup-entries",
            "5",
            "--log-level",
            "info,openraft=info",
        ],
    );
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = (leader + 1) % 3;
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let rt = runtime();
    let spec = Spec::new("prefix prev on the frozen follower", "k/", "k0", 0).prev();
    let log: Arc<Mutex<WatchLog>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (_commands, rx) = mpsc::channel(1);
    let task = rt.spawn(stream_loop(
        vec![spec.clone()],
        vec![log.clone()],
        endpoints.clone(),
        follower,
        rx,
        stop.clone(),
    ));
    rt.block_on(async {
        while log.lock().unwrap().start.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let pid = cluster.members[follower]
        .child
        .as_ref()
        .unwrap()
        .id()
        .to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let t0 = Instant::now();
    let leader_ep = endpoints[leader].clone();
    rt.block_on(async {
        let mut kv = kv_client(&leader_ep).await;
        let mut rng = StdRng::seed_from_u64(7);
        for i in 0..300 {
            let key = pkey(rng.random_range(0..KEY_COUNT));
            if rng.random_bool(0.8) {
                put(&mut kv, &key, format!("v{i}").as_bytes()).await;
            } else {
                delete(&mut kv, &key, "").await;
            }
        }
    });
    signal("-CONT");
    let wrote = t0.elapsed();
    let (end, _) = rt.block_on(current_revision(&endpoints[leader..=leader]));
    let pair = [(spec.clone(), log.clone())];
    rt.block_on(wait_bookmarks(&pair, end, "after the snapshot install"));
    stop.store(true, Ordering::Relaxed);
    task.abort();
    let mut states = States::from([(0, BTreeMap::new())]);
    rt.block_on(read_states(&leader_ep, 1, end, &mut states));
    let log = log.lock().unwrap();
    let events = check_watcher(&spec, &log, &states, &BTreeMap::new(), end)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.reconnects, 0, "the stream on the follower broke");
    let member_log = std::fs::read_to_string(&cluster.members[follower].log_path).unwrap();
    assert!(
        member_log.contains("install_full_snapshot"),
        "the follower caught up without a snapshot; log tail:\n{}",
        cluster.log_tail(&cluster.members[follower].name)
    );
    println!(
        "{events} events through a snapshot install on m{follower}, revisions up to {end}; \
         writes with it frozen {wrote:?}, caught up {:?} later",
        t0.elapsed() - wrote
    );
}
