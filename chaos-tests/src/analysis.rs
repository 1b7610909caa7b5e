//! Turns a run directory's history into `results.json`: runs every checker that applies to the
//! workload, plus the run-level checks — `stats`, `availability` (enough operations succeeded,
//! the cluster was healthy again and served every final read within the recovery bound after
//! healing), `nemesis` (every requested fault was actually installed at least once),
//! `corruption` (when WALs were damaged: every damaged member refused to start) and `crash`
//! (no member exited on its own, no panic in a member's log). `skiff-chaos check DIR` re-runs
//! exactly this offline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use crate::checker::{self, CheckOptions, Verdict};
use crate::history::{History, Op, OpType, Process, Value};
use crate::nemesis::{ALL_MODES, NemesisSpec};
use crate::results::{CheckResult, Results, RunInfo, Validity};

/// First process id of the final-phase readers (workers are numbered below it).
pub const FINAL_PROCESS_BASE: u64 = 1_000_000;

/// Checks a history; `logs` is the run's `nodes/` directory (when present).
pub fn analyze(
    history: &History,
    info: &RunInfo,
    logs: Option<&Path>,
    lin_timeout: Duration,
) -> Results {
    let mut checks: BTreeMap<String, CheckResult> = BTreeMap::new();
    checks.insert("stats".into(), stats(history));
    if info.notes.iter().any(|n| n.starts_with("skipped")) {
        checks.insert(
            info.workload.clone(),
            CheckResult::new(Validity::Unknown).with("reason", info.notes.join("; ")),
        );
    } else {
        match info.workload.as_str() {
            "register" => {
                checks.insert("linearizable".into(), linearizable(history, lin_timeout));
            }
            "append" => {
                checks.insert("append".into(), checker::append::check(history));
            }
            "watch" => {
                checks.insert("watch".into(), checker::watch::check(history));
            }
            "lease" => {
                checks.insert("lease".into(), checker::lease::check(history));
            }
            "k8s" => {
                checks.insert("k8s".into(), checker::k8s::check(history));
            }
            _ => {}
        }
        checks.insert("revisions".into(), checker::revisions::check(history));
        checks.insert("availability".into(), availability(history, info));
    }
    checks.insert("nemesis".into(), nemesis(history, info));
    if let Some(c) = crate::nemesis::corrupt::check(history) {
        checks.insert("corruption".into(), c);
    }
    checks.insert("crash".into(), crash(history, logs));
    Results::new(info.clone(), checks)
}

fn stats(history: &History) -> CheckResult {
    let ops = history.ops();
    let mut by_f: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let (mut ok, mut fail, mut info) = (0, 0, 0);
    for op in ops.iter().filter(|o| o.process.is_client()) {
        let slot = match op.kind {
            OpType::Ok => 0,
            OpType::Fail => 1,
            OpType::Info => 2,
            OpType::Invoke => continue,
        };
        match slot {
            0 => ok += 1,
            1 => fail += 1,
            _ => info += 1,
        }
        by_f.entry(op.f.to_string()).or_default()[slot] += 1;
    }
    let by_f: BTreeMap<String, serde_json::Value> = by_f
        .into_iter()
        .map(|(f, [o, fl, i])| (f, serde_json::json!({"ok": o, "fail": fl, "info": i})))
        .collect();
    CheckResult::new(Validity::True)
        .with("ops", ok + fail + info)
        .with("ok", ok)
        .with("fail", fail)
        .with("info", info)
        .with("by-f", by_f)
}

fn linearizable(history: &History, timeout: Duration) -> CheckResult {
    let sub = History::from_ops(
        history
            .ops()
            .iter()
            .filter(|o| o.process.is_client() && matches!(o.f.as_str(), "read" | "write" | "cas"))
            .cloned()
            .collect(),
    );
    let options = CheckOptions::with_timeout(timeout);
    let report = match checker::check_report(&sub, &options) {
        Ok(r) => r,
        Err(e) => {
            return CheckResult::new(Validity::Unknown).with("reason", e.to_string());
        }
    };
    let mut res = CheckResult::new(match report.verdict.valid() {
        Some(true) => Validity::True,
        Some(false) => Validity::False,
        None => Validity::Unknown,
    })
    .with("keys", report.keys.len())
    .with("check-s", report.elapsed.as_secs_f64());
    let unknown: Vec<String> = report
        .keys
        .iter()
        .filter(|k| k.verdict.valid().is_none())
        .filter_map(|k| k.key.clone())
        .take(10)
        .collect();
    res.set("unknown-keys", unknown);
    match &report.verdict {
        Verdict::NotLinearizable { counterexample } => {
            let mut wanted: HashSet<u64> = HashSet::new();
            for s in counterexample
                .prefix_tail
                .iter()
                .chain(std::iter::once(&counterexample.stuck))
                .chain(&counterexample.concurrent)
            {
                wanted.insert(s.invoke_index);
                if let Some(c) = s.complete_index {
                    wanted.insert(c);
                }
            }
            let ops: Vec<Op> = sub
                .ops()
                .iter()
                .filter(|o| o.index.is_some_and(|i| wanted.contains(&i)))
                .cloned()
                .collect();
            res.anomaly(
                "linearizable",
                "not-linearizable",
                counterexample.to_string(),
                ops,
            );
        }
        Verdict::Unknown { reason } => res.set("reason", reason.clone()),
        Verdict::Linearizable => {}
    }
    res
}

fn time_s(op: &Op) -> f64 {
    op.time.unwrap_or(0) as f64 / 1e9
}

fn availability(history: &History, info: &RunInfo) -> CheckResult {
    let ops = history.ops();
    let heal = ops
        .iter()
        .position(|o| o.process == Process::nemesis() && o.f.as_str() == "heal");
    let workload_end = heal.unwrap_or(ops.len());
    let (mut ok, mut total) = (0usize, 0usize);
    for op in &ops[..workload_end] {
        if let Process::Client(p) = op.process
            && p < FINAL_PROCESS_BASE
            && op.kind != OpType::Invoke
        {
            total += 1;
            // Served: ok, or a definite answer such as a false compare (fail without error).
            if op.kind == OpType::Ok || (op.kind == OpType::Fail && op.error.is_none()) {
                ok += 1;
            }
        }
    }
    let fraction = if total == 0 {
        0.0
    } else {
        ok as f64 / total as f64
    };
    let mut res = CheckResult::new(Validity::True)
        .with("ok-fraction", (fraction * 1000.0).round() / 1000.0)
        .with("min-ok-fraction", info.min_ok_fraction);
    if fraction < info.min_ok_fraction {
        res.anomaly(
            "availability",
            "low-availability",
            format!(
                "only {ok} of {total} operations during the workload were served ({:.1} %, below {:.0} %)",
                fraction * 100.0,
                info.min_ok_fraction * 100.0
            ),
            vec![],
        );
    }
    let Some(heal) = heal else {
        res.valid = Validity::Unknown;
        res.set("reason", "the run never reached the heal phase");
        return res;
    };
    let t_heal = time_s(&ops[heal]);
    if let Some(u) = ops[heal..]
        .iter()
        .find(|o| o.process == Process::nemesis() && o.f.as_str() == "unhealthy")
    {
        res.anomaly(
            "availability",
            "no-recovery",
            format!(
                "members did not agree on a leader within {} s of healing",
                info.recovery_limit_s
            ),
            vec![ops[heal].clone(), u.clone()],
        );
    }
    // Recovery: from `heal` to the members agreeing on a leader (`healthy`), and to the first
    // successful client operation.
    if let Some(h) = ops[heal..]
        .iter()
        .find(|o| o.process == Process::nemesis() && o.f.as_str() == "healthy")
    {
        let s = time_s(h) - t_heal;
        res.set("recovery-s", (s * 100.0).round() / 100.0);
        if s > info.recovery_limit_s {
            res.anomaly(
                "availability",
                "slow-recovery",
                format!("the members agreed on a leader only {s:.1} s after healing"),
                vec![ops[heal].clone(), h.clone()],
            );
        }
    }
    match ops[heal..]
        .iter()
        .find(|o| o.process.is_client() && o.kind == OpType::Ok)
    {
        Some(o) => res.set(
            "first-ok-after-heal-s",
            ((time_s(o) - t_heal) * 100.0).round() / 100.0,
        ),
        None => res.anomaly(
            "availability",
            "no-recovery",
            "no operation succeeded after healing".into(),
            vec![ops[heal].clone()],
        ),
    }
    let mut last: HashMap<u64, &Op> = HashMap::new();
    for op in &ops[heal..] {
        if let Process::Client(p) = op.process
            && p >= FINAL_PROCESS_BASE
            && op.kind != OpType::Invoke
        {
            last.insert(p, op);
        }
    }
    let failed: Vec<&&Op> = last.values().filter(|o| o.kind != OpType::Ok).collect();
    res.set("final-readers", last.len());
    if let Some(f) = failed.first() {
        res.anomaly(
            "availability",
            "final-read-failed",
            format!(
                "{} final reader(s) gave up: a member did not serve reads within {} s of healing ({})",
                failed.len(),
                info.recovery_limit_s,
                f.error.clone().unwrap_or_default()
            ),
            vec![(**f).clone()],
        );
    }
    res
}

fn nemesis(history: &History, info: &RunInfo) -> CheckResult {
    let mut installed: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    for op in history.ops() {
        if op.process != Process::nemesis() {
            continue;
        }
        let Value::Map(m) = &op.value else { continue };
        let Some(Value::Str(mode)) = m.get("mode") else {
            continue;
        };
        let is_start = ALL_MODES
            .iter()
            .any(|md| md.name() == mode && md.event_names().0 == op.f.as_str());
        if !is_start {
            continue;
        }
        if let Some(Value::Str(e)) = m.get("error") {
            errors.push(format!("{mode}: {e}"));
        } else {
            *installed.entry(mode.clone()).or_default() += 1;
        }
    }
    let missing: Vec<String> = info
        .nemesis
        .iter()
        .filter(|name| {
            !installed.keys().any(|mode| {
                ALL_MODES
                    .iter()
                    .find(|m| m.name() == mode)
                    .is_some_and(|m| NemesisSpec::covers(name, *m))
            })
        })
        .cloned()
        .collect();
    let mut res = CheckResult::new(Validity::True)
        .with("installed", installed.values().sum::<usize>())
        .with("coverage", &installed)
        .with("missing", &missing);
    if !errors.is_empty() {
        res.set("not-installed", errors.iter().take(10).collect::<Vec<_>>());
    }
    if !missing.is_empty() {
        res.anomaly(
            "nemesis",
            "missing-fault",
            format!(
                "requested fault(s) never installed: {} (run longer, or see not-installed)",
                missing.join(", ")
            ),
            vec![],
        );
    }
    res
}

/// Patterns that mean a member crashed in a way the nemesis did not cause.
const CRASH_PATTERNS: [&str; 4] = [
    "panicked at",
    "\npanic: ",
    "\"level\":\"fatal\"",
    "\"level\":\"panic\"",
];

fn crash(history: &History, logs: Option<&Path>) -> CheckResult {
    let mut res = CheckResult::new(Validity::True);
    for op in history.ops() {
        if op.process == Process::Named("harness".into()) && op.f.as_str() == "node-exited" {
            res.anomaly(
                "crash",
                "unexpected-exit",
                format!(
                    "a member exited without being killed by the nemesis: {}",
                    op.value
                ),
                vec![op.clone()],
            );
        }
    }
    let mut scanned = 0;
    if let Some(dir) = logs
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        let mut files: Vec<_> = entries
            .flatten()
            .flat_map(|e| {
                ["stdout", "stderr"]
                    .into_iter()
                    .map(move |f| e.path().join(f))
            })
            .filter(|p| p.exists())
            .collect();
        files.sort();
        for f in files {
            scanned += 1;
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            let text = format!("\n{text}");
            for pat in CRASH_PATTERNS {
                if let Some(at) = text.find(pat) {
                    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                    let line: String = text[line_start..]
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(300)
                        .collect();
                    res.anomaly(
                        "crash",
                        "panic-in-log",
                        format!("{}: {line}", f.display()),
                        vec![],
                    );
                    break;
                }
            }
        }
    }
    res.set("logs-scanned", scanned);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::F;

    fn info(nemesis: &[&str]) -> RunInfo {
        RunInfo {
            workload: "register".into(),
            nemesis: nemesis.iter().map(|s| s.to_string()).collect(),
            target: "skiff".into(),
            binary: "/x".into(),
            nodes: 3,
            time_limit_s: 10.0,
            seed: 1,
            concurrency: 2,
            rate: 10.0,
            op_timeout_ms: 1000,
            recovery_limit_s: 30.0,
            min_ok_fraction: 0.3,
            run_id: "1-0".into(),
            notes: vec![],
            plan: vec![],
        }
    }

    fn nem(f: &str, mode: &str, error: Option<&str>) -> Op {
        let mut m = BTreeMap::from([("mode".to_owned(), Value::Str(mode.into()))]);
        if let Some(e) = error {
            m.insert("error".into(), Value::Str(e.into()));
        }
        Op::new(Process::nemesis(), OpType::Info, F::from(f), Value::Map(m))
    }

    #[test]
    fn coverage_counts_installed_faults_only() {
        let h = History::from_ops(vec![
            nem("kill", "kill-leader", None),
            nem("start", "kill-leader", None),
            nem("start-partition", "partition-one", Some("no leader")),
        ]);
        let r = nemesis(&h, &info(&["kill", "partition"]));
        assert_eq!(r.valid, Validity::False);
        assert_eq!(r.details["missing"], serde_json::json!(["partition"]));
        let r = nemesis(&h, &info(&["kill-leader"]));
        assert_eq!(r.valid, Validity::True);
    }

    #[test]
    fn a_clean_register_run_is_valid() {
        let c = Process::Client;
        let mut h = History::new();
        let w = |h: &mut History, p, t| {
            h.push(
                Op::new(c(p), OpType::Invoke, F::Write, Value::Int(1))
                    .with_key("r0")
                    .at(t),
            );
            let mut o = Op::new(c(p), OpType::Ok, F::Write, Value::Int(1))
                .with_key("r0")
                .at(t + 1);
            o.revision = Some(t as i64 + 2);
            h.push(o);
        };
        w(&mut h, 0, 1_000);
        w(&mut h, 1, 2_000);
        h.push(nem("heal", "", None).at(3_000));
        h.push(nem("healthy", "", None).at(3_500));
        h.push(
            Op::new(c(FINAL_PROCESS_BASE), OpType::Invoke, F::Read, Value::Null)
                .with_key("r0")
                .at(4_000),
        );
        let mut o = Op::new(c(FINAL_PROCESS_BASE), OpType::Ok, F::Read, Value::Int(1))
            .with_key("r0")
            .at(4_001);
        o.revision = Some(2_002);
        h.push(o);
        let r = analyze(&h, &info(&[]), None, Duration::from_secs(5));
        assert_eq!(r.valid, Validity::True, "{}", r.summary());
        assert_eq!(
            r.checks["availability"].details["final-readers"],
            serde_json::json!(1)
        );
        // A lost write: the final read sees nothing.
        let mut ops = h.ops().to_vec();
        ops.last_mut().unwrap().value = Value::Null;
        let r = analyze(
            &History::from_ops(ops),
            &info(&[]),
            None,
            Duration::from_secs(5),
        );
        assert_eq!(r.checks["linearizable"].valid, Validity::False);
        assert_eq!(r.valid, Validity::False);
    }
}
