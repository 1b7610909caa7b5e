//! Stopping a `skiff store` member with SIGTERM (issue 12 item 2): with an API server, ten
//! watch streams and a lease keep-alive stream open on it, the process exits with status 0
//! within 5 s, every stream ends (`Unavailable` "etcdserver: server stopped" or a closed
//! stream, never a hang), and the member restarts on the same data dir at once and rejoins.
//! A client that reads nothing makes the stop wait out its grace period: a second SIGTERM
//! then exits at once (status 1), and a single one still ends with status 0 within 5 s.
#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use apiserver::ApiHome;
use common::{Cluster, etcdctl, etcdctl_ok};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::mpsc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

/// The child's exit status if it exits within `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a client stream ended, seen by the client.
#[derive(Debug)]
enum Ended {
    Closed,
    Status(tonic::Code, String),
    Other(String),
}

fn ended_from(result: Result<(), etcd_client::Error>) -> Ended {
    match result {
        Ok(()) => Ended::Closed,
        Err(etcd_client::Error::GRpcStatus(status)) => {
            Ended::Status(status.code(), status.message().to_string())
        }
        Err(other) => Ended::Other(other.to_string()),
    }
}

/// Wait until `key` reads back as `value` from `endpoint` alone (a serializable read: what
/// that member itself has applied).
fn wait_local_value(endpoint: &str, key: &str, value: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = etcdctl(
            endpoint,
            &["get", key, "--print-value-only", "--consistency=s"],
        );
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} not readable on {endpoint}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restart member `i` and wait until it answers `endpoint health` (within 15 s: the
/// data-dir lock must be free at once).
fn restart_healthy(cluster: &mut Cluster, i: usize) -> Duration {
    let started = Instant::now();
    cluster.restart(i);
    let endpoint = cluster.members[i].endpoint();
    loop {
        let out = etcdctl(&endpoint, &["endpoint", "health"]);
        if out.status.success() {
            return started.elapsed();
        }
        if let Some(child) = cluster.members[i].child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "restarted member exited ({status}):\n{}",
                cluster.log_tail(&cluster.members[i].name)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "restarted member not healthy: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.log_tail(&cluster.members[i].name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_ends_every_stream_exits_zero_and_the_member_rejoins() {
    let mut cluster = Cluster::start(3);
    let endpoint = cluster.members[0].endpoint();
    let home = ApiHome::new();
    let api = home.start(&endpoint, &[]);
    let rt = runtime();

    // Ten watch streams and a keep-alive stream on member 0; each reports how it ended.
    let (ended_tx, mut ended_rx) = mpsc::channel::<(String, Ended)>(16);
    let mut client = rt.block_on(common::client(&endpoint));
    for i in 0..10 {
        let mut stream = rt
            .block_on(client.watch(format!("watched/{i}"), None))
            .expect("watch");
        let ended_tx = ended_tx.clone();
        rt.spawn(async move {
            let result = loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let _ = ended_tx
                .send((format!("watch {i}"), ended_from(result)))
                .await;
        });
    }
    let lease = rt
        .block_on(client.lease_grant(60, None))
        .expect("lease grant")
        .id();
    let (mut keeper, mut keep_alives) = rt
        .block_on(client.lease_keep_alive(lease))
        .expect("keep-alive");
    rt.block_on(keeper.keep_alive()).expect("send keep-alive");
    let first = rt
        .block_on(keep_alives.message())
        .expect("keep-alive answer");
    assert!(first.is_some_and(|r| r.ttl() > 0));
    {
        let ended_tx = ended_tx.clone();
        rt.spawn(async move {
            let result = loop {
                match keep_alives.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            // Keep the sending side open until the stream ends.
            drop(keeper);
            let _ = ended_tx
                .send(("keep-alive".to_string(), ended_from(result)))
                .await;
        });
    }
    drop(ended_tx);
    // Some traffic through the API server, so its store connection is in use.
    let (code, _) = api.curl(
        &["-H", &apiserver::bearer(apiserver::ADMIN_TOKEN)],
        "/api/v1/namespaces",
    );
    assert_eq!(code, 200);

    let mut child = cluster.members[0].child.take().expect("member 0 runs");
    let signalled = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    let took = signalled.elapsed();
    let log = cluster.log_tail("m0");
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("member 0 still runs 5 s after SIGTERM:\n{log}");
    };
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{log}");
    eprintln!("member 0 exited with {status} {took:?} after SIGTERM");
    assert!(
        log.contains("the WAL and the engine are durable"),
        "no clean stop in the log:\n{log}"
    );

    // Every stream ended by itself, with the stopped status or a closed stream.
    let ended: Vec<(String, Ended)> = rt.block_on(async {
        let mut ended = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while ended.len() < 11 {
            match tokio::time::timeout_at(deadline, ended_rx.recv()).await {
                Ok(Some(one)) => ended.push(one),
                _ => break,
            }
        }
        ended
    });
    eprintln!("streams ended: {ended:?}");
    assert_eq!(ended.len(), 11, "streams still open: {ended:?}");
    for (name, how) in &ended {
        match how {
            Ended::Closed => {}
            Ended::Status(tonic::Code::Unavailable, _) => {}
            Ended::Other(error) => panic!("{name} ended with an error: {error}"),
            other => panic!("{name} ended with {other:?}"),
        }
    }
    let stopped_status = ended.iter().any(|(_, how)| {
        matches!(how, Ended::Status(tonic::Code::Unavailable, m) if m == "etcdserver: server stopped")
    });
    assert!(
        stopped_status,
        "no stream saw etcd's stopped status: {ended:?}"
    );

    // A write while it is down; it restarts on the same data dir at once and catches up.
    let others = format!(
        "{},{}",
        cluster.members[1].endpoint(),
        cluster.members[2].endpoint()
    );
    etcdctl_ok(&others, &["put", "written-while-down", "yes"]);
    let took = restart_healthy(&mut cluster, 0);
    eprintln!("member 0 healthy {took:?} after its restart");
    let log = cluster.log_tail("m0");
    assert!(!log.contains("Cannot acquire lock"), "{log}");
    wait_local_value(
        &endpoint,
        "written-while-down",
        "yes",
        Duration::from_secs(10),
    );
    drop(api);
}

/// Put `count` values of `size` bytes under `prefix` on `endpoint`.
async fn put_big_values(endpoint: &str, prefix: &str, count: usize, size: usize) {
    let mut kv = KvClient::connect(format!("http://{endpoint}"))
        .await
        .expect("connect kv");
    for i in 0..count {
        kv.put(PutRequest {
            key: format!("{prefix}{i:03}").into_bytes(),
            value: vec![b'x'; size],
            ..Default::default()
        })
        .await
        .expect("put");
    }
}

/// A watch from revision 1 over `prefix` whose client never reads: the server's response
/// queue and the connection's flow-control window fill up, so the connection cannot close
/// gracefully. The returned values keep it open.
async fn stalled_watch(
    endpoint: &str,
    prefix: &str,
) -> (
    mpsc::Sender<WatchRequest>,
    tonic::Streaming<skiff_proto::etcdserverpb::WatchResponse>,
) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .expect("connect");
    let (requests, rx) = mpsc::channel(4);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix),
                start_revision: 1,
                ..Default::default()
            })),
        })
        .await
        .expect("queue create");
    let responses = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    (requests, responses)
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

#[test]
fn a_client_that_reads_nothing_delays_the_stop_and_a_second_sigterm_exits_at_once() {
    let mut cluster = Cluster::start(1);
    let endpoint = cluster.members[0].endpoint();
    let rt = runtime();
    // 16 × 900 KiB: far more than the stream's queue and window hold.
    rt.block_on(put_big_values(&endpoint, "big/", 16, 900 * 1024));

    // A second SIGTERM while the stop waits for the stalled connection: exit at once, 1.
    let stalled = rt.block_on(stalled_watch(&endpoint, "big/"));
    std::thread::sleep(Duration::from_millis(500));
    let mut child = cluster.members[0].child.take().expect("member runs");
    sigterm(&child);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the stop was not slowed down by the stalled client: {}",
        cluster.log_tail("m0")
    );
    let again = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(2));
    let log = cluster.log_tail("m0");
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("a second SIGTERM did not exit at once:\n{log}");
    };
    eprintln!("second SIGTERM: {status} after {:?}", again.elapsed());
    assert!(again.elapsed() < Duration::from_secs(1), "{log}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("while stopping; exiting at once"), "{log}");
    drop(stalled);

    // After that forced exit the member restarts at once on its data dir.
    let took = restart_healthy(&mut cluster, 0);
    eprintln!("healthy {took:?} after the restart");
    wait_local_value(
        &endpoint,
        "big/000",
        &"x".repeat(900 * 1024),
        Duration::from_secs(5),
    );

    // A single SIGTERM with the stalled client: the grace period runs out, the stop goes
    // on, and the process exits cleanly within 5 s.
    let stalled = rt.block_on(stalled_watch(&endpoint, "big/"));
    std::thread::sleep(Duration::from_millis(500));
    let mut child = cluster.members[0].child.take().expect("member runs");
    let signalled = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    let log = cluster.log_tail("m0");
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("member still runs 5 s after SIGTERM with a stalled client:\n{log}");
    };
    eprintln!(
        "single SIGTERM with a stalled client: {status} after {:?}",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("abandoned"), "{log}");
    drop(stalled);
    restart_healthy(&mut cluster, 0);
}
