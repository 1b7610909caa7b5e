//! `skiff-chaos bugcheck`: proves the checkers are not vacuous. For every bug switch of a skiff
//! test build (`--features chaos-bugs`, switches named in `SKIFF_CHAOS_BUGS`; see
//! `store/src/chaos_bugs.rs`) it runs a short workload × nemesis pair chosen to expose that bug
//! (a `skiff-chaos run` child process, like a suite) and requires `valid? false` with one of the
//! anomaly kinds expected for it. Up to `attempts` seeds per switch. Control runs of the same
//! build with no switch on — under power cuts and failpoints, and the WAL-corruption scenario —
//! must be valid. Exit 0 only if every switch was caught and the controls passed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::results::{Results, Validity};

/// One switch and the run that must catch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BugCase {
    /// The switch (`SKIFF_CHAOS_BUGS` name).
    pub bug: &'static str,
    /// Workload.
    pub workload: &'static str,
    /// Nemesis list.
    pub nemesis: &'static str,
    /// Workload seconds.
    pub time_limit: u64,
    /// Extra `run` arguments.
    pub args: &'static [&'static str],
    /// Anomaly kinds that count as catching the bug.
    pub expected: &'static [&'static str],
}

const LINEARIZABILITY: &[&str] = &["not-linearizable"];
const LIN_OR_REVISIONS: &[&str] = &[
    "not-linearizable",
    "revision-regression",
    "duplicate-write-revision",
    "stale-write-revision",
];
const REVISIONS: &[&str] = &[
    "revision-regression",
    "duplicate-write-revision",
    "stale-write-revision",
];
const WATCH_DIVERGENCE: &[&str] = &[
    "event-mismatch",
    "phantom-event",
    "missed-event",
    "resume-mismatch",
    "final-state-mismatch",
    "aborted-write-visible",
    "wrong-revision",
];
const WATCH_OR_REVISIONS: &[&str] = &[
    "event-mismatch",
    "phantom-event",
    "missed-event",
    "resume-mismatch",
    "final-state-mismatch",
    "aborted-write-visible",
    "wrong-revision",
    "revision-regression",
    "duplicate-write-revision",
    "stale-write-revision",
];

/// A silently truncated WAL: the damaged member starts (the nemesis sees it), and a majority
/// of short logs loses acknowledged writes (stale reads, revisions handed out again).
const WAL_LOSS: &[&str] = &[
    "started-on-corrupt-wal",
    "not-linearizable",
    "revision-regression",
    "duplicate-write-revision",
    "stale-write-revision",
];

/// `run` arguments of the WAL-corruption scenario (the `wal-truncate-silently` case and its
/// control): no Raft snapshot during the run, and the state machine made durable only at
/// elections (`--backend-batch-interval 1h`) instead of every 100 ms, so the WAL is the only
/// durable copy of the writes acknowledged since the last election. A member that silently
/// drops the damaged part of it then starts on a short log (instead of failing to re-apply
/// entries its state machine recorded as committed).
const WAL_SCENARIO_ARGS: &[&str] = &[
    "--snapshot-count",
    "100000",
    "--store-arg=--backend-batch-interval",
    "--store-arg=1h",
];

/// The switches and their scenarios. About 10 minutes in all on 2 cores when each is caught at
/// its first attempt.
pub fn cases() -> Vec<BugCase> {
    let case = |bug, workload, nemesis, time_limit, args, expected| BugCase {
        bug,
        workload,
        nemesis,
        time_limit,
        args,
        expected,
    };
    vec![
        // A member cut off from the others keeps answering "linearizable" reads.
        case(
            "read-local",
            "register",
            "partition-one,partition-leader",
            20,
            &[],
            LINEARIZABILITY,
        ),
        // Acknowledged Puts of an isolated leader never commit.
        case(
            "ack-before-commit",
            "register",
            "partition-leader",
            20,
            &[],
            LIN_OR_REVISIONS,
        ),
        // An isolated leader applies (and its watchers see) entries that are later truncated.
        case(
            "apply-before-commit",
            "watch",
            "partition-leader",
            20,
            &[],
            WATCH_OR_REVISIONS,
        ),
        // Nothing reaches the disk: a power cut of every member loses acknowledged writes.
        case(
            "skip-fsync",
            "register",
            "power-loss-all",
            15,
            &[],
            LIN_OR_REVISIONS,
        ),
        // Concurrent CAS on few keys: two both see the old value locally and both succeed.
        case(
            "cas-before-replication",
            "register",
            "none",
            15,
            &["--concurrency", "12", "--rate", "300"],
            LINEARIZABILITY,
        ),
        // A restarted member hands out revisions again.
        case(
            "revision-regress",
            "register",
            "kill-one,kill-leader",
            20,
            &[],
            REVISIONS,
        ),
        case(
            "watch-drop",
            "watch",
            "none",
            15,
            &[],
            // Drops hit the reference history too: an acknowledged write missing from it counts.
            &[
                "missed-event",
                "resume-mismatch",
                "lost-write",
                "final-state-mismatch",
            ],
        ),
        case("watch-dup", "watch", "none", 15, &[], &["duplicate-event"]),
        case("watch-split", "watch", "none", 15, &[], &["split-revision"]),
        case(
            "watch-resume-late",
            "watch",
            "none",
            20,
            &[],
            &["resume-mismatch", "missed-event"],
        ),
        // Keep-alives answered but not honoured: kept-alive keys vanish early.
        case(
            "lease-no-recheck",
            "lease",
            "none",
            20,
            &[],
            &["early-expiry"],
        ),
        // A member isolated long enough to need a snapshot installs one without its last
        // revision; its replica session misses that event.
        case(
            "snapshot-off-by-one",
            "watch",
            "partition-one",
            25,
            &[
                "--snapshot-count",
                "20",
                "--store-arg=--snapshot-catchup-entries",
                "--store-arg=5",
            ],
            WATCH_DIVERGENCE,
        ),
        // Every member SIGKILLed; the leader and one other get bytes flipped near the end of
        // their synced WAL records and restart first. With the switch on, both drop their logs
        // from the damage on, start, and elect one of themselves (the intact member is still
        // down): the writes acknowledged after the damage are gone, new writes get their
        // revisions again, and the intact member's longer log is overwritten when it returns.
        case(
            "wal-truncate-silently",
            "register",
            "corrupt-majority",
            20,
            WAL_SCENARIO_ARGS,
            WAL_LOSS,
        ),
    ]
}

/// Options of a bugcheck.
#[derive(Clone, Debug)]
pub struct BugcheckOptions {
    /// The test build of skiff (with `chaos-bugs`).
    pub skiff_bin: PathBuf,
    /// Results root (each switch under `<out>/bugcheck/<switch>/`).
    pub out: PathBuf,
    /// Base seed.
    pub seed: u64,
    /// Seeds tried per switch before it counts as not caught.
    pub attempts: u32,
    /// Only these switches (all when empty).
    pub only: Vec<String>,
}

/// The outcome for one switch.
#[derive(Clone, Debug)]
pub struct BugOutcome {
    /// The case.
    pub case: BugCase,
    /// Caught with an expected anomaly.
    pub caught: bool,
    /// The expected kinds found (or, if not caught, what the run reported).
    pub found: Vec<String>,
    /// Seconds over all attempts.
    pub seconds: f64,
    /// Attempts made.
    pub attempts: u32,
    /// The last run directory.
    pub dir: Option<PathBuf>,
}

fn anomaly_kinds(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dir.join("anomalies.json")) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return Vec::new();
    };
    let mut kinds: Vec<String> = items
        .iter()
        .filter_map(|a| a.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .collect();
    kinds.dedup();
    kinds
}

/// Whether a run's verdict and anomalies catch `case`; returns the matching kinds.
pub fn judge(case: &BugCase, valid: Validity, kinds: &[String]) -> Option<Vec<String>> {
    if valid != Validity::False {
        return None;
    }
    let mut hits: Vec<String> = kinds
        .iter()
        .filter(|k| case.expected.contains(&k.as_str()))
        .cloned()
        .collect();
    hits.sort();
    hits.dedup();
    (!hits.is_empty()).then_some(hits)
}

/// One `skiff-chaos run` child for `case` (with the switch `bug` on, or none): the verdict, the
/// anomaly kinds, the run directory and the exit code.
fn run_pair(
    exe: &Path,
    skiff_bin: &Path,
    case: &BugCase,
    seed: u64,
    bug: Option<&str>,
    out: &Path,
) -> (Validity, Vec<String>, Option<PathBuf>, Option<i32>) {
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .args(["--workload", case.workload])
        .args(["--nemesis", case.nemesis])
        .args(["--nodes", "3"])
        .args(["--time-limit", &case.time_limit.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--lin-timeout", "30"])
        .arg("--skiff-bin")
        .arg(skiff_bin)
        .arg("--out")
        .arg(out)
        .arg("--no-progress")
        .args(case.args);
    if let Some(bug) = bug {
        cmd.arg("--store-env")
            .arg(format!("SKIFF_CHAOS_BUGS={bug}"));
    }
    let status = cmd.status();
    let name = format!("{}-{}-skiff", case.workload, case.nemesis.replace(',', "+"));
    let dir = std::fs::read_link(out.join(&name).join("latest"))
        .ok()
        .map(|t| out.join(&name).join(t));
    let results: Option<Results> = dir.as_ref().and_then(|d| {
        std::fs::read_to_string(d.join("results.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    });
    let kinds = dir.as_deref().map(anomaly_kinds).unwrap_or_default();
    let valid = results.as_ref().map_or(Validity::Unknown, |r| r.valid);
    (valid, kinds, dir, status.ok().and_then(|s| s.code()))
}

/// The controls: the same test build with no switch on must be valid (no acknowledged write
/// lost, every check passing) under power cuts and failpoints, and in the WAL-corruption
/// scenario (every damaged member refuses to start; its original bytes are put back).
pub fn control_cases() -> Vec<BugCase> {
    vec![
        BugCase {
            bug: "none (control)",
            workload: "register",
            nemesis: "power-loss,failpoints",
            time_limit: 30,
            args: &[],
            expected: &[],
        },
        BugCase {
            bug: "none (control, wal)",
            workload: "register",
            nemesis: "corrupt-majority",
            time_limit: 20,
            args: WAL_SCENARIO_ARGS,
            expected: &[],
        },
    ]
}

/// The controls to run: all of them for a full bugcheck, else those sharing a scenario
/// (workload and nemesis) with a selected case.
pub fn selected_controls(selected: &[BugCase], full: bool) -> Vec<BugCase> {
    control_cases()
        .into_iter()
        .filter(|c| {
            full || selected
                .iter()
                .any(|s| s.workload == c.workload && s.nemesis == c.nemesis)
        })
        .collect()
}

/// Runs every selected case; prints the table; returns the exit code (0 = all caught).
pub fn run_bugcheck(opts: &BugcheckOptions) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skiff-chaos: cannot find own executable: {e}");
            return 2;
        }
    };
    if !opts.skiff_bin.exists() {
        eprintln!(
            "skiff-chaos: bugcheck needs a skiff test build at {} (cargo build -p skiff --features chaos-bugs, copied to skiff-buggy)",
            opts.skiff_bin.display()
        );
        return 2;
    }
    let selected: Vec<BugCase> = cases()
        .into_iter()
        .filter(|c| opts.only.is_empty() || opts.only.iter().any(|o| o == c.bug))
        .collect();
    if selected.is_empty() {
        eprintln!("skiff-chaos: no such bug switch: {}", opts.only.join(", "));
        return 2;
    }
    let total = Instant::now();
    let mut outcomes = Vec::new();
    for (i, case) in selected.iter().enumerate() {
        let t = Instant::now();
        let mut outcome = BugOutcome {
            case: case.clone(),
            caught: false,
            found: Vec::new(),
            seconds: 0.0,
            attempts: 0,
            dir: None,
        };
        let out = opts.out.join("bugcheck").join(case.bug);
        for attempt in 0..opts.attempts.max(1) {
            let seed = opts
                .seed
                .wrapping_add(1000 * i as u64)
                .wrapping_add(attempt as u64);
            eprintln!(
                "=== bugcheck [{}/{}] {} (attempt {}): {} × {} {} s, seed {seed}",
                i + 1,
                selected.len(),
                case.bug,
                attempt + 1,
                case.workload,
                case.nemesis,
                case.time_limit
            );
            outcome.attempts = attempt + 1;
            let (valid, kinds, dir, code) =
                run_pair(&exe, &opts.skiff_bin, case, seed, Some(case.bug), &out);
            outcome.dir = dir;
            match judge(case, valid, &kinds) {
                Some(hits) => {
                    outcome.caught = true;
                    outcome.found = hits;
                    break;
                }
                None => {
                    outcome.found = if kinds.is_empty() {
                        vec![format!(
                            "valid? {} (exit {})",
                            valid.label(),
                            code.unwrap_or(-1)
                        )]
                    } else {
                        kinds
                    };
                }
            }
        }
        outcome.seconds = t.elapsed().as_secs_f64();
        eprintln!(
            "=== bugcheck {}: {} ({}) in {:.0} s",
            case.bug,
            if outcome.caught {
                "caught"
            } else {
                "NOT caught"
            },
            outcome.found.join(", "),
            outcome.seconds
        );
        outcomes.push(outcome);
    }
    // The controls (only those of the selected scenarios when some switches were asked for).
    let mut controls = Vec::new();
    for case in selected_controls(&selected, opts.only.is_empty()) {
        eprintln!(
            "=== bugcheck control: {} × {} {} s with no switch on, must be valid",
            case.workload, case.nemesis, case.time_limit
        );
        let t = Instant::now();
        let (valid, kinds, dir, _) = run_pair(
            &exe,
            &opts.skiff_bin,
            &case,
            opts.seed,
            None,
            &opts.out.join("bugcheck").join("control"),
        );
        eprintln!(
            "=== bugcheck control: valid? {} in {:.0} s",
            valid.label(),
            t.elapsed().as_secs_f64()
        );
        controls.push((case, valid, kinds, t.elapsed().as_secs_f64(), dir));
    }
    println!(
        "bugcheck: {} switches in {:.0} s ({})",
        outcomes.len(),
        total.elapsed().as_secs_f64(),
        opts.skiff_bin.display()
    );
    println!(
        "  {:<24} {:<42} {:<8} {:>6} {:>3}  anomaly",
        "switch", "workload × nemesis", "caught?", "time", "try"
    );
    for o in &outcomes {
        println!(
            "  {:<24} {:<42} {:<8} {:>5.0}s {:>3}  {}",
            o.case.bug,
            format!("{} × {}", o.case.workload, o.case.nemesis),
            if o.caught { "yes" } else { "NO" },
            o.seconds,
            o.attempts,
            o.found.join(", ")
        );
    }
    let mut control_ok = true;
    for (case, valid, kinds, secs, dir) in &controls {
        let ok = *valid == Validity::True;
        control_ok &= ok;
        println!(
            "  {:<24} {:<42} {:<8} {:>5.0}s {:>3}  valid? {}{}",
            case.bug,
            format!("{} × {}", case.workload, case.nemesis),
            if ok { "valid" } else { "INVALID" },
            secs,
            1,
            valid.label(),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            }
        );
        if !ok {
            println!(
                "  the control run is not valid: {}",
                dir.as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    let missed: Vec<&BugOutcome> = outcomes.iter().filter(|o| !o.caught).collect();
    for o in &missed {
        println!(
            "  not caught: {} (last run: {})",
            o.case.bug,
            o.dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        );
    }
    println!(
        "{} of {} caught",
        outcomes.len() - missed.len(),
        outcomes.len()
    );
    if missed.is_empty() && control_ok {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::NemesisSpec;
    use crate::workload::Workload;

    #[test]
    fn every_switch_has_a_valid_scenario_within_budget() {
        let cases = cases();
        let names = [
            "read-local",
            "ack-before-commit",
            "apply-before-commit",
            "skip-fsync",
            "cas-before-replication",
            "revision-regress",
            "watch-drop",
            "watch-dup",
            "watch-split",
            "watch-resume-late",
            "lease-no-recheck",
            "snapshot-off-by-one",
            "wal-truncate-silently",
        ];
        assert_eq!(cases.len(), names.len());
        for n in names {
            assert!(cases.iter().any(|c| c.bug == n), "{n}");
        }
        for c in &cases {
            Workload::parse(c.workload).unwrap();
            NemesisSpec::parse(c.nemesis).unwrap();
            assert!(!c.expected.is_empty());
            assert!(
                !c.expected.iter().any(|k| k.contains("availability")),
                "{}",
                c.bug
            );
        }
        // Workload time plus ~25 s of setup, healing and checking each, the controls included.
        let controls = control_cases();
        for c in &controls {
            NemesisSpec::parse(c.nemesis).unwrap();
            assert!(c.expected.is_empty());
        }
        let secs: u64 = cases
            .iter()
            .chain(controls.iter())
            .map(|c| c.time_limit + 25)
            .sum();
        assert!(secs <= 12 * 60, "{secs} s");
        // Asking for one switch runs the controls of its scenario only.
        let wal: Vec<BugCase> = cases
            .iter()
            .filter(|c| c.bug == "wal-truncate-silently")
            .cloned()
            .collect();
        let picked = selected_controls(&wal, false);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].nemesis, "corrupt-majority");
        assert_eq!(picked[0].args, wal[0].args);
        assert_eq!(selected_controls(&wal, true).len(), controls.len());
    }

    #[test]
    fn judging_needs_invalid_and_an_expected_kind() {
        let c = cases().into_iter().find(|c| c.bug == "watch-dup").unwrap();
        let kinds = vec!["slow-recovery".to_owned(), "duplicate-event".to_owned()];
        assert_eq!(
            judge(&c, Validity::False, &kinds),
            Some(vec!["duplicate-event".to_owned()])
        );
        assert_eq!(judge(&c, Validity::True, &kinds), None);
        assert_eq!(judge(&c, Validity::Unknown, &kinds), None);
        assert_eq!(
            judge(&c, Validity::False, &["slow-recovery".to_owned()]),
            None
        );
    }
}
