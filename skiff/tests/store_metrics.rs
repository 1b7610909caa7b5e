//! `/metrics` exports what etcd's dashboards and alerts read, with etcd's names, types and
//! labels: go-grpc-prometheus's `grpc_server_*` counters per method and code (a stream
//! counted when it ends), each peer's round-trip histogram, leadership, proposals, the
//! backend's size and the process collector's metrics — checked on a 3-member cluster.
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, client, http_get};

/// One series of a family: its labels and value.
type Series = (BTreeMap<String, String>, f64);

/// Every series of `name` in a Prometheus text exposition.
fn series(body: &str, name: &str) -> Vec<Series> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match key.split_once('{') {
                Some((metric, labels)) => (metric, labels.strip_suffix('}')?),
                None => (key, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of the series of `name` carrying all of `labels` (order does not matter).
fn value(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(body, name)
        .iter()
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The `# TYPE` a family is declared with.
fn family_type(body: &str, name: &str) -> String {
    let prefix = format!("# TYPE {name} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no # TYPE for {name}"))
        .to_string()
}

/// The labels of a unary KV method, plus `extra`.
fn kv(
    method: &'static str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut labels = vec![
        ("grpc_type", "unary"),
        ("grpc_service", "etcdserverpb.KV"),
        ("grpc_method", method),
    ];
    labels.extend_from_slice(extra);
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_etcds() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let endpoint = cluster.members[0].endpoint();
    let metrics = |i: usize| http_get(&cluster.members[i].endpoint(), "/metrics");

    let before = metrics(0);
    let put_ok = kv("Put", &[("grpc_code", "OK")]);

    let mut etcd = client(&endpoint).await;
    let puts = 7;
    for i in 0..puts {
        etcd.put(format!("m/{i}"), "v", None).await.expect("put");
    }
    let gets = 3;
    for _ in 0..gets {
        etcd.get("m/0", None).await.expect("get");
    }
    let revision = etcd
        .get("m/0", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    etcd.compact(revision, None).await.expect("compact");
    let compacted = etcd
        .get("m/0", Some(etcd_client::GetOptions::new().with_revision(2)))
        .await
        .expect_err("a read below the compacted revision fails");
    println!("compacted read: {compacted}");

    let mut stream = etcd.watch("m/", None).await.expect("watch");
    let created = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("watch created in time")
        .expect("watch response")
        .expect("watch stream open");
    let watch = [
        ("grpc_type", "bidi_stream"),
        ("grpc_service", "etcdserverpb.Watch"),
        ("grpc_method", "Watch"),
    ];
    let open = metrics(0);
    assert_eq!(value(&open, "grpc_server_started_total", &watch), 1.0);
    assert_eq!(
        value(&open, "grpc_server_handled_total", &watch),
        0.0,
        "a stream counts as handled when it ends"
    );
    stream
        .cancel(created.watch_id())
        .await
        .expect("cancel watch");
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
    drop(stream);
    drop(etcd);

    // The watch stream ends when the client goes away.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = metrics(0);
        if value(&body, "grpc_server_handled_total", &watch) == 1.0 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        value(&body, "grpc_server_handled_total", &watch),
        1.0,
        "watch stream handled once it ended:\n{}",
        body.lines()
            .filter(|l| l.contains("Watch"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let watch_codes: Vec<_> = series(&body, "grpc_server_handled_total")
        .into_iter()
        .filter(|(labels, v)| *v > 0.0 && labels["grpc_method"] == "Watch")
        .map(|(labels, _)| labels["grpc_code"].clone())
        .collect();
    println!("watch stream ended with {watch_codes:?}");
    assert!(value(&body, "grpc_server_msg_received_total", &watch) >= 1.0);

    // Unary calls, by method and code, exactly as sent (since `before`: the cluster's
    // start-up checks call Range and Status too).
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&body, name, labels) - value(&before, name, labels)
    };
    assert_eq!(delta("grpc_server_handled_total", &put_ok), f64::from(puts));
    assert_eq!(
        value(
            &body,
            "grpc_server_handled_total",
            &kv("Range", &[("grpc_code", "OK")])
        ) - value(
            &before,
            "grpc_server_handled_total",
            &kv("Range", &[("grpc_code", "OK")])
        ),
        f64::from(gets + 1)
    );
    assert_eq!(
        value(
            &body,
            "grpc_server_handled_total",
            &kv("Range", &[("grpc_code", "OutOfRange")])
        ) - value(
            &before,
            "grpc_server_handled_total",
            &kv("Range", &[("grpc_code", "OutOfRange")])
        ),
        1.0
    );
    assert_eq!(
        delta("grpc_server_started_total", &kv("Range", &[])),
        f64::from(gets + 2)
    );
    assert_eq!(
        delta("grpc_server_msg_sent_total", &kv("Range", &[])),
        f64::from(gets + 1),
        "a failed unary call sends no message"
    );
    assert_eq!(
        value(
            &body,
            "grpc_server_handled_total",
            &kv("Compact", &[("grpc_code", "OK")])
        ) - value(
            &before,
            "grpc_server_handled_total",
            &kv("Compact", &[("grpc_code", "OK")])
        ),
        1.0
    );
    // Every code of every method etcd registers is exported from the start, at 0.
    let handled = series(&body, "grpc_server_handled_total");
    assert!(handled.len() >= 41 * 17, "{} handled series", handled.len());
    assert!(handled.iter().any(|(labels, v)| *v == 0.0
        && labels["grpc_method"] == "LeaseKeepAlive"
        && labels["grpc_type"] == "bidi_stream"
        && labels["grpc_code"] == "Unavailable"));
    for name in [
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_failed_total",
        "process_cpu_seconds_total",
        "etcd_network_peer_sent_bytes_total",
        "etcd_network_peer_received_bytes_total",
    ] {
        assert_eq!(family_type(&body, name), "counter", "{name}");
    }
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "process_resident_memory_bytes",
    ] {
        assert_eq!(family_type(&body, name), "gauge", "{name}");
    }
    assert_eq!(
        family_type(&body, "etcd_network_peer_round_trip_time_seconds"),
        "histogram"
    );

    // Leadership, proposals, backend and process, on every member.
    let mut ids = Vec::new();
    let mut leaders = 0.0;
    for i in 0..3 {
        let body = metrics(i);
        assert_eq!(
            value(&body, "etcd_server_has_leader", &[]),
            1.0,
            "member {i}"
        );
        leaders += value(&body, "etcd_server_is_leader", &[]);
        assert!(value(&body, "etcd_server_leader_changes_seen_total", &[]) >= 1.0);
        let applied = value(&body, "etcd_server_proposals_applied_total", &[]);
        assert!(applied >= f64::from(puts), "member {i} applied {applied}");
        assert!(value(&body, "etcd_server_proposals_committed_total", &[]) >= applied);
        assert_eq!(value(&body, "etcd_server_proposals_pending", &[]), 0.0);
        assert!(value(&body, "etcd_mvcc_db_total_size_in_bytes", &[]) > 0.0);
        assert!(value(&body, "etcd_mvcc_db_total_size_in_use_in_bytes", &[]) > 0.0);
        assert!(value(&body, "etcd_debugging_mvcc_keys_total", &[]) >= f64::from(puts));
        assert!(value(&body, "process_resident_memory_bytes", &[]) > 0.0);
        assert!(value(&body, "process_cpu_seconds_total", &[]) > 0.0);
        assert!(value(&body, "process_open_fds", &[]) > 0.0);
        assert!(value(&body, "process_max_fds", &[]) > 0.0);
        assert!(value(&body, "process_start_time_seconds", &[]) > 1.6e9);
        let id = series(&body, "etcd_server_id");
        assert_eq!(id.len(), 1, "member {i}: {id:?}");
        ids.push(id[0].0["server_id"].clone());
        assert_eq!(series(&body, "etcd_server_version").len(), 1);
    }
    assert_eq!(leaders, 1.0, "exactly one member leads");

    // The leader measures its round trip to each peer (heartbeats go out constantly).
    let body = metrics(leader);
    for (i, id) in ids.iter().enumerate() {
        let rtt = value(
            &body,
            "etcd_network_peer_round_trip_time_seconds_count",
            &[("To", id.as_str())],
        );
        let inf = value(
            &body,
            "etcd_network_peer_round_trip_time_seconds_bucket",
            &[("To", id.as_str()), ("le", "+Inf")],
        );
        let sent = value(
            &body,
            "etcd_network_peer_sent_bytes_total",
            &[("To", id.as_str())],
        );
        if i == leader {
            assert_eq!(rtt, 0.0, "no round trip to itself");
        } else {
            assert!(rtt > 0.0, "no round-trip samples to member {id}");
            assert_eq!(rtt, inf);
            assert!(sent > 0.0, "no bytes sent to member {id}");
        }
    }
    let bucket_bounds: Vec<String> =
        series(&body, "etcd_network_peer_round_trip_time_seconds_bucket")
            .into_iter()
            .filter(|(labels, _)| labels["To"] != ids[leader])
            .take(17)
            .map(|(labels, _)| labels["le"].clone())
            .collect();
    assert_eq!(bucket_bounds.first().map(String::as_str), Some("0.0001"));
    assert_eq!(bucket_bounds.get(15).map(String::as_str), Some("3.2768"));
    // A follower receives what the leader sends.
    let follower = (leader + 1) % 3;
    let received = value(
        &metrics(follower),
        "etcd_network_peer_received_bytes_total",
        &[("From", ids[leader].as_str())],
    );
    assert!(received > 0.0, "follower received nothing from the leader");
}
