//! The `skiff-chaos` binary: usage errors, the not-root refusal and offline `check` always run;
//! a real short run (namespaces, a 3-member skiff cluster, kill faults) runs only with
//! `SKIFF_CHAOS=1` (it needs root, iptables and a built `skiff` binary next to `skiff-chaos`, or
//! `SKIFF_BIN`), so plain `cargo test` stays fast.

use std::path::{Path, PathBuf};
use std::process::Command;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_skiff-chaos")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("skiff-chaos-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn bad_usage_exits_2() {
    let out = Command::new(exe())
        .args(["run", "--nemesis", "flood"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown nemesis"), "{err}");
}

#[test]
fn bugcheck_refuses_a_missing_build_or_an_unknown_switch() {
    let out = Command::new(exe())
        .args(["bugcheck", "--skiff-bin", "/nonexistent/skiff-buggy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    if !is_root() {
        assert!(err.contains("needs root"), "{err}");
        return;
    }
    assert!(err.contains("needs a skiff test build"), "{err}");
    // Any existing file passes the first check; the switch name is then refused.
    let out = Command::new(exe())
        .args(["bugcheck", "--skiff-bin", exe(), "--bug", "no-such-switch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such bug switch"), "{err}");
}

#[test]
fn not_root_is_one_line_and_exit_2() {
    let mut cmd = if is_root() {
        // Drop to nobody to see what a non-root user gets.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", exe()]);
        c
    } else {
        Command::new(exe())
    };
    let Ok(out) = cmd.args(["run", "--time-limit", "1"]).output() else {
        eprintln!("setpriv unavailable; skipped");
        return;
    };
    if matches!(out.status.code(), Some(126 | 127)) {
        // nobody cannot execute the binary where it was built (e.g. a private target dir).
        eprintln!("skipped: {}", String::from_utf8_lossy(&out.stderr).trim());
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
}

fn write_run(dir: &Path, history: &str) {
    let run = r#"{"workload":"register","nemesis":[],"target":"skiff","binary":"/x","nodes":3,
        "time_limit_s":1.0,"seed":1,"concurrency":2,"rate":10.0,"op_timeout_ms":1000,
        "recovery_limit_s":30.0,"min_ok_fraction":0.3,"run_id":"0-0"}"#;
    std::fs::write(dir.join("run.json"), run).unwrap();
    std::fs::write(dir.join("history.jsonl"), history).unwrap();
}

const GOOD: &str = r#"{"time":1,"type":"invoke","process":0,"f":"write","key":"r0","value":3}
{"time":2,"type":"ok","process":0,"f":"write","key":"r0","value":3,"revision":2}
{"time":3,"type":"info","process":"nemesis","f":"heal","value":[]}
{"time":4,"type":"info","process":"nemesis","f":"healthy","value":{}}
{"time":5,"type":"invoke","process":1000000,"f":"read","key":"r0","value":null}
{"time":6,"type":"ok","process":1000000,"f":"read","key":"r0","value":3,"revision":2}
"#;

#[test]
fn check_reruns_the_checkers_offline() {
    let dir = tmp("good");
    write_run(&dir, GOOD);
    let out = Command::new(exe()).arg("check").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["valid?"], serde_json::json!(true));

    // The final read misses the acknowledged write: lost write → invalid, exit 1.
    let bad = GOOD.replace(
        r#""f":"read","key":"r0","value":3"#,
        r#""f":"read","key":"r0","value":null"#,
    );
    let dir = tmp("bad");
    write_run(&dir, &bad);
    let out = Command::new(exe()).arg("check").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let anomalies = std::fs::read_to_string(dir.join("anomalies.json")).unwrap();
    assert!(anomalies.contains("not-linearizable"), "{anomalies}");
}

/// One short real run; `SKIFF_CHAOS=1 cargo test -p skiff-chaos-tests --test cli -- --nocapture`.
#[test]
fn short_run_against_skiff() {
    if std::env::var("SKIFF_CHAOS").as_deref() != Ok("1") {
        eprintln!("skipped: set SKIFF_CHAOS=1 to run a real chaos test (needs root)");
        return;
    }
    let out_dir = tmp("run");
    let out = Command::new(exe())
        .args([
            "run",
            "--workload",
            "register",
            "--nemesis",
            "kill,partition-leader",
            "--time-limit",
            "20",
            "--seed",
            "42",
            "--no-progress",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let run = out_dir.join("register-kill+partition-leader-skiff/latest");
    for f in [
        "history.jsonl",
        "results.json",
        "run.json",
        "latency-throughput.png",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["valid?"], serde_json::json!(true));
    assert!(results["checks"]["nemesis"]["installed"].as_u64().unwrap() >= 1);
    let _ = std::fs::remove_dir_all(out_dir);
}
