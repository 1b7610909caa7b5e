//! Pre-vote (`--pre-vote`, etcd's flag): a member cut off from the leader does not raise
//! its term, so when it hears from the cluster again the healthy leader stays leader.
//!
//! The cut is an iptables rule on loopback that drops every packet to the isolated
//! member's peer port (only this test's port): it hears no heartbeat and no vote answer
//! reaches it over a connection the others open, while its own requests still reach them —
//! the case where, without pre-vote, its higher term deposes the leader. Needs root (as
//! the chaos suite does); skipped with a message otherwise.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, etcdctl, etcdctl_ok};

/// Drops packets to one loopback port until dropped itself.
struct Cut {
    port: u16,
}

impl Cut {
    fn rule(port: u16) -> Vec<String> {
        [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn new(port: u16) -> Cut {
        let out = Command::new("iptables")
            .args(["-w", "-I"])
            .args(Self::rule(port))
            .output()
            .expect("run iptables (the test command installs it)");
        assert!(
            out.status.success(),
            "iptables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cut { port }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "-D"])
            .args(Self::rule(self.port))
            .output();
    }
}

fn status(cluster: &Cluster, i: usize) -> serde_json::Value {
    let out = etcdctl_ok(
        &cluster.members[i].endpoint(),
        &["endpoint", "status", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    v[0]["Status"].clone()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

#[test]
fn a_cut_off_member_rejoining_does_not_depose_the_leader() {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: cutting a member off needs root (iptables), as the chaos suite");
        return;
    }
    let cluster = Cluster::start_with(3, &["--pre-vote"]);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let isolated = (leader + 1) % 3;
    let leader_endpoint = cluster.members[leader].endpoint();
    let term = status(&cluster, leader)["raftTerm"].as_u64().expect("term");
    let leader_id = status(&cluster, leader)["header"]["member_id"]
        .as_u64()
        .expect("id");

    {
        let _cut = Cut::new(port_of(&cluster.members[isolated].peer_url));
        // Five election timeouts and more, with writes going on without it.
        let until = Instant::now() + Duration::from_secs(6);
        let mut n = 0;
        while Instant::now() < until {
            assert_eq!(
                etcdctl_ok(&leader_endpoint, &["put", "during-cut", &n.to_string()]),
                "OK\n"
            );
            n += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        let cut_off = status(&cluster, isolated);
        assert_eq!(
            cut_off["raftTerm"].as_u64(),
            Some(term),
            "the cut-off member raised its term: {cut_off}"
        );
    }

    // Healed: it catches up, and nobody was deposed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = etcdctl(
            &cluster.members[isolated].endpoint(),
            &["get", "during-cut", "--print-value-only", "--consistency=s"],
        );
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let latest = etcdctl_ok(
            &leader_endpoint,
            &["get", "during-cut", "--print-value-only"],
        );
        if value == latest.trim() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the member never caught up ({value:?} vs {latest:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        let s = status(&cluster, i);
        assert_eq!(s["leader"].as_u64(), Some(leader_id), "member {i}: {s}");
        assert_eq!(s["raftTerm"].as_u64(), Some(term), "member {i}: {s}");
    }
}
