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

/// Every member's view of the leader (member id), from `endpoint status` on each.
fn leaders_seen(cluster: &Cluster) -> Vec<Option<u64>> {
    cluster
        .members
        .iter()
        .map(|m| {
            let out = etcdctl(&m.endpoint(), &["endpoint", "status", "-w", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v[0]["Status"]["leader"].as_u64()
        })
        .collect()
}

fn raft_term(cluster: &Cluster, i: usize) -> u64 {
    let out = etcdctl_ok(
        &cluster.members[i].endpoint(),
        &["endpoint", "status", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    v[0]["Status"]["raftTerm"].as_u64().expect("raft term")
}

/// Twenty moves in a row, each to a different member than the last: every one succeeds at
/// the first attempt (no retry), every member then names the target as leader, and the
/// leadership stays there (the next move starts from it; after the last, 3 s of watching).
fn twenty_moves(n: usize) {
    let cluster = Cluster::start(n);
    let mut leader = cluster.wait_leader(Duration::from_secs(10));
    let ids: Vec<String> = (0..n).map(|i| member_id_hex(&cluster, i)).collect();
    let id_of = |i: usize| u64::from_str_radix(&ids[i], 16).expect("hex id");
    for k in 0..20 {
        let target = (leader + 1 + k % (n - 1)) % n;
        let out = etcdctl(&cluster.endpoints(), &["move-leader", &ids[target]]);
        assert!(
            out.status.success(),
            "move {k} of 20 ({n} members, {} -> {}) failed: {}",
            ids[leader],
            ids[target],
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "Leadership transferred from {} to {}\n",
                ids[leader], ids[target]
            )
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let seen = leaders_seen(&cluster);
            if seen.iter().all(|l| *l == Some(id_of(target))) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "after move {k} ({n} members) the members name {seen:?}, not {}",
                id_of(target)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if k % 5 == 4 {
            assert_eq!(
                etcdctl_ok(&cluster.endpoints(), &["put", "moves", &k.to_string()]),
                "OK\n"
            );
        }
        leader = target;
    }
    let term = raft_term(&cluster, leader);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        leaders_seen(&cluster)
            .iter()
            .all(|l| *l == Some(id_of(leader))),
        "leadership moved away from the last target by itself"
    );
    assert_eq!(raft_term(&cluster, leader), term, "an election happened");
    for member in &cluster.members {
        assert_eq!(
            etcdctl_ok(&member.endpoint(), &["get", "moves", "--print-value-only"]),
            "19\n"
        );
    }
}

#[test]
fn twenty_moves_in_a_row_with_3_members() {
    twenty_moves(3);
}

#[test]
fn twenty_moves_in_a_row_with_4_members() {
    twenty_moves(4);
}

#[test]
fn twenty_moves_in_a_row_with_5_members() {
    twenty_moves(5);
}

/// A leader stopped with SIGTERM hands leadership over before it goes (as etcd's does):
/// the others have a leader at once, one term later, without waiting out an election.
#[test]
fn a_stopping_leader_hands_leadership_over() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let term = raft_term(&cluster, leader);
    let child = cluster.members[leader].child.take().expect("leader runs");
    let mut child = child;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exited = child.wait().expect("wait");
    assert_eq!(exited.code(), Some(0));
    let log = cluster.log_tail(&format!("m{leader}"));
    assert!(
        log.contains("leadership transferred"),
        "no hand-off in the stopping leader's log:\n{log}"
    );
    // Right after the exit a survivor leads, in the next term: no election timeout passed.
    let new_leader = cluster
        .leader()
        .expect("a leader right after the old one exited");
    assert_ne!(new_leader, leader);
    assert_eq!(raft_term(&cluster, new_leader), term + 1);
    assert_eq!(
        etcdctl_ok(&cluster.endpoints(), &["put", "after-stop", "1"]),
        "OK\n"
    );
}
