//! `etcdctl move-leader`: leadership moves to the chosen member and the cluster keeps
//! serving; a non-voter target is refused with etcd's error.
mod common;

use std::time::Duration;

use common::{Cluster, etcdctl, etcdctl_ok};

fn member_id_hex(cluster: &Cluster, i: usize) -> String {
    let out = etcdctl_ok(
        &cluster.members[i].endpoint(),
        &["endpoint", "status", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    format!(
        "{:x}",
        v[0]["Status"]["header"]["member_id"]
            .as_u64()
            .expect("member id")
    )
}

/// Move leadership; a transfer is best effort (as in etcd), so on a loaded machine an
/// attempt may time out with etcd's error: allow a second and third attempt.
fn move_leader(cluster: &Cluster, to: &str) -> String {
    for _ in 0..3 {
        let out = etcdctl(&cluster.endpoints(), &["move-leader", to]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("leader transfer took too long"),
            "move-leader failed for another reason: {stderr}"
        );
    }
    panic!("leadership never moved to {to}");
}

#[test]
fn move_leader_transfers_to_the_target() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let target = (leader + 1) % 3;
    let (from, to) = (
        member_id_hex(&cluster, leader),
        member_id_hex(&cluster, target),
    );
    assert_eq!(
        etcdctl_ok(&cluster.endpoints(), &["put", "before", "1"]),
        "OK\n"
    );

    let out = move_leader(&cluster, &to);
    assert_eq!(out, format!("Leadership transferred from {from} to {to}\n"));
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)), target);

    // The cluster keeps serving through every member, and nothing was lost.
    assert_eq!(
        etcdctl_ok(&cluster.endpoints(), &["put", "after", "2"]),
        "OK\n"
    );
    for member in &cluster.members {
        assert_eq!(
            etcdctl_ok(&member.endpoint(), &["get", "before", "--print-value-only"]),
            "1\n"
        );
    }

    // And back again, to show elections were resumed everywhere.
    let out = move_leader(&cluster, &from);
    assert_eq!(out, format!("Leadership transferred from {to} to {from}\n"));
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)), leader);

    // An unknown member is not a valid transferee.
    let bad = etcdctl(&cluster.endpoints(), &["move-leader", "1234"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("etcdserver: bad leader transferee"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
