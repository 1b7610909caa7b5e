//! CI smoke of `skiff bench`: a short put run against one real member must finish, print a
//! parsable JSON last line, succeed on every request and attribute server CPU to the
//! member. No timing thresholds: CI machines are shared.
mod common;

use std::process::Command;

use common::{Cluster, skiff_bin};

fn bench(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(skiff_bin())
        .arg("bench")
        .args(args)
        .output()
        .expect("run skiff bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "skiff bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("some output");
    let json = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}\n{stdout}"));
    (json, stdout)
}

#[test]
fn bench_put_reports_json_with_no_errors() {
    let cluster = Cluster::start(1);
    let endpoint = cluster.members[0].endpoint();
    let (report, text) = bench(&[
        "put",
        "--endpoints",
        &endpoint,
        "--total",
        "2000",
        "--clients",
        "8",
        "--json",
    ]);
    assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["ops"], 2000, "{report}");
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_ms"][key].is_number(), "{key}: {report}");
    }
    // The member was found through its listening port: CPU and RSS are reported.
    let servers = report["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{report}");
    assert_eq!(
        servers[0]["pid"].as_u64(),
        cluster.members[0].child.as_ref().map(|c| c.id() as u64)
    );
    assert!(report["server_rss_mb"].as_f64().unwrap() > 0.0, "{report}");
    assert!(text.contains("Latency distribution"), "{text}");

    // The keys are readable; a serializable range of one of them succeeds too.
    let (range, _) = bench(&[
        "range",
        "00000000",
        "--consistency",
        "s",
        "--endpoints",
        &endpoint,
        "--total",
        "200",
        "--json",
    ]);
    assert_eq!(range["errors"], 0, "{range}");
}

#[test]
fn bench_rejects_bad_flags_with_exit_code_2() {
    let out = Command::new(skiff_bin())
        .args(["bench", "put", "--clients", "0"])
        .output()
        .expect("run skiff bench");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(skiff_bin())
        .args(["bench", "range", "k", "--consistency", "x"])
        .output()
        .expect("run skiff bench");
    assert_eq!(out.status.code(), Some(2));
}
