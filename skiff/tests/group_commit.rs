//! Group commit, measured: many concurrent proposals share one fsync. The member's
//! `/metrics` counts fsyncs (Raft log syncs plus fsynced engine writes) and applied log
//! entries; under concurrent load the first grows much slower than the second. Also checks `/health`, `/version`
//! and etcd's disk and leadership metrics.
mod common;

use common::{Cluster, client, http_get, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_fsyncs() {
    let cluster = Cluster::start(1);
    let endpoint = cluster.members[0].endpoint();
    let fsyncs_now = || {
        metric(&endpoint, "skiff_log_syncs_total")
            + metric(&endpoint, "skiff_engine_durable_writes_total")
    };
    let fsyncs_before = fsyncs_now();
    let applied_before = metric(&endpoint, "etcd_server_proposals_applied_total");

    let writers = 64;
    let puts_per_writer = 20;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let mut kv = client(&endpoint).await;
            for i in 0..puts_per_writer {
                kv.put(format!("gc/{w}/{i}"), "x", None).await.expect("put");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let fsyncs = fsyncs_now() - fsyncs_before;
    // etcd's disk and leadership metrics, as its dashboards read them: every log sync that
    // wrote something is one WAL fsync observation; the single member became leader once.
    let wal_fsyncs = metric(&endpoint, "etcd_disk_wal_fsync_duration_seconds_count");
    assert!(
        wal_fsyncs > 0.0 && wal_fsyncs <= metric(&endpoint, "skiff_log_syncs_total"),
        "wal fsync histogram: {wal_fsyncs}"
    );
    assert!(
        metric(
            &endpoint,
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"
        ) == wal_fsyncs
    );
    assert!(metric(&endpoint, "etcd_disk_backend_commit_duration_seconds_count") >= 1.0);
    assert_eq!(
        metric(&endpoint, "etcd_server_leader_changes_seen_total"),
        1.0
    );
    let applied = metric(&endpoint, "etcd_server_proposals_applied_total") - applied_before;
    let puts = f64::from(writers * puts_per_writer);
    println!("{puts} puts: {applied} log entries applied, {fsyncs} fsyncs");
    assert!(applied >= 1.0, "no log entry applied");
    assert!(
        fsyncs < puts / 2.0,
        "expected proposals to share fsyncs: {fsyncs} fsyncs for {puts} puts"
    );

    let mut kv = client(&endpoint).await;
    let count = kv
        .get(
            "gc/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count");
    assert_eq!(count.count() as f64, puts);

    assert_eq!(
        http_get(&endpoint, "/health"),
        r#"{"health":"true","reason":""}"#
    );
    let version: serde_json::Value =
        serde_json::from_str(&http_get(&endpoint, "/version")).expect("version json");
    assert_eq!(version["etcdserver"], "3.5.21");
}
