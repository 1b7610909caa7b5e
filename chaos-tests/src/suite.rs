//! Suites: fixed (`ci`) and random (`soak`) lists of workload × nemesis pairs, each run as its own
//! `skiff-chaos run` child process (its own namespaces, its own network namespace switch, its
//! own cleanup), one after the other.
//!
//! The CI list takes about 7 minutes on 2 cores (each pair 20–40 s of workload plus ~5 s of
//! setup, healing, final reads and checking). A pair passes with `valid? true`; a lease pair on a
//! store without leases is reported as skipped, not failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::results::{Results, Validity};

/// One pair of a suite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Workload name.
    pub workload: &'static str,
    /// Nemesis list (`none`, or comma-separated names).
    pub nemesis: String,
    /// Workload seconds.
    pub time_limit: u64,
    /// Members.
    pub nodes: usize,
}

fn pair(workload: &'static str, nemesis: &str, time_limit: u64) -> Pair {
    Pair {
        workload,
        nemesis: nemesis.to_owned(),
        time_limit,
        nodes: 3,
    }
}

/// The CI list.
pub fn ci_pairs() -> Vec<Pair> {
    vec![
        pair("register", "none", 20),
        pair("register", "partition", 40),
        pair("register", "kill,pause", 40),
        pair("register", "member", 40),
        pair("append", "partition,kill", 40),
        pair("append", "loss", 30),
        pair("watch", "kill,partition", 40),
        pair("register", "clock", 30),
        pair("lease", "pause,clock", 30),
        pair("k8s", "pause,partition", 30),
    ]
}

/// A random soak list filling about `duration`: 5 members, 120–300 s per pair, 1–3 fault kinds
/// (`corrupt`, which needs skiff's WAL, only when `skiff` is the target).
pub fn soak_pairs(duration: Duration, seed: u64, skiff: bool) -> Vec<Pair> {
    let mut rng = StdRng::seed_from_u64(seed);
    let workloads = ["register", "append", "watch", "lease", "k8s"];
    let mut kinds: Vec<&str> = crate::nemesis::KINDS.to_vec();
    if skiff {
        kinds.extend(crate::nemesis::SKIFF_KINDS);
    }
    let mut out = Vec::new();
    let mut total = 0u64;
    while total + 120 + 20 <= duration.as_secs().max(140) {
        let t = rng
            .random_range(120..=300u64)
            .min(duration.as_secs().saturating_sub(total + 20).max(120));
        let n = rng.random_range(1..=3);
        let mut chosen: Vec<&str> = kinds.choose_multiple(&mut rng, n).copied().collect();
        chosen.sort_unstable();
        out.push(Pair {
            workload: workloads.choose(&mut rng).copied().unwrap_or("register"),
            nemesis: chosen.join(","),
            time_limit: t,
            nodes: 5,
        });
        total += t + 20;
    }
    out
}

/// Options passed through to every `run`.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// `skiff` or `etcd`.
    pub target: String,
    /// `--skiff-bin`.
    pub skiff_bin: Option<PathBuf>,
    /// `--etcd-bin`.
    pub etcd_bin: Option<PathBuf>,
    /// Results root.
    pub out: PathBuf,
    /// Base seed (pair i uses seed + i).
    pub seed: u64,
    /// Extra `run` arguments.
    pub extra: Vec<String>,
}

/// The outcome of one pair.
#[derive(Debug)]
pub struct PairOutcome {
    /// The pair.
    pub pair: Pair,
    /// `true`/`false`/`unknown`/`skipped`/`error`.
    pub verdict: String,
    /// Seconds it took.
    pub seconds: f64,
    /// The run directory, when known.
    pub dir: Option<PathBuf>,
}

fn newest_run_dir(root: &Path, name: &str) -> Option<PathBuf> {
    let link = root.join(name).join("latest");
    std::fs::read_link(&link)
        .ok()
        .map(|t| root.join(name).join(t))
}

/// Runs the pairs one after the other; returns the suite's exit code (0 all passed, 1 some
/// invalid, 2 otherwise).
pub fn run_suite(pairs: &[Pair], opts: &SuiteOptions) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skiff-chaos: cannot find own executable: {e}");
            return 2;
        }
    };
    let total = Instant::now();
    let mut outcomes = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let seed = opts.seed.wrapping_add(i as u64);
        eprintln!(
            "=== [{}/{}] {} × {} ({} nodes, {} s, seed {seed}, target {})",
            i + 1,
            pairs.len(),
            p.workload,
            p.nemesis,
            p.nodes,
            p.time_limit,
            opts.target
        );
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .args(["--workload", p.workload])
            .args(["--nemesis", &p.nemesis])
            .args(["--nodes", &p.nodes.to_string()])
            .args(["--time-limit", &p.time_limit.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--target", &opts.target])
            .arg("--out")
            .arg(&opts.out)
            .args(&opts.extra);
        if let Some(b) = &opts.skiff_bin {
            cmd.arg("--skiff-bin").arg(b);
        }
        if let Some(b) = &opts.etcd_bin {
            cmd.arg("--etcd-bin").arg(b);
        }
        let t = Instant::now();
        let status = cmd.status();
        let seconds = t.elapsed().as_secs_f64();
        let name = format!(
            "{}-{}-{}",
            p.workload,
            p.nemesis.replace(',', "+"),
            opts.target
        );
        let dir = newest_run_dir(&opts.out, &name);
        let results: Option<Results> = dir.as_ref().and_then(|d| {
            std::fs::read_to_string(d.join("results.json"))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
        });
        let verdict = match (&status, &results) {
            (_, Some(r)) if r.run.notes.iter().any(|n| n.starts_with("skipped")) => {
                "skipped".to_owned()
            }
            (Ok(s), Some(r)) if s.code() == Some(r.valid.exit_code()) => r.valid.label().to_owned(),
            (Ok(s), Some(r)) if r.valid == Validity::False && s.code() == Some(1) => {
                "false".to_owned()
            }
            (Ok(s), _) => format!("error (exit {})", s.code().unwrap_or(-1)),
            (Err(e), _) => format!("error ({e})"),
        };
        eprintln!(
            "=== {} × {}: valid? {verdict} in {seconds:.0} s",
            p.workload, p.nemesis
        );
        outcomes.push(PairOutcome {
            pair: p.clone(),
            verdict,
            seconds,
            dir,
        });
    }
    println!(
        "suite: {} pairs in {:.0} s (target {})",
        outcomes.len(),
        total.elapsed().as_secs_f64(),
        opts.target
    );
    for o in &outcomes {
        println!(
            "  {:<8} {:<9} {:<16} {:>4.0} s  {}",
            o.verdict,
            o.pair.workload,
            o.pair.nemesis,
            o.seconds,
            o.dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        );
    }
    let failed: Vec<&PairOutcome> = outcomes.iter().filter(|o| o.verdict == "false").collect();
    for o in &failed {
        println!(
            "  reproduce: skiff-chaos run --workload {} --nemesis {} --nodes {} --time-limit {} --target {} (seed in {})",
            o.pair.workload,
            o.pair.nemesis,
            o.pair.nodes,
            o.pair.time_limit,
            opts.target,
            o.dir
                .as_ref()
                .map(|d| d.join("run.json").display().to_string())
                .unwrap_or_default()
        );
    }
    let passed = outcomes
        .iter()
        .filter(|o| o.verdict == "true" || o.verdict == "skipped")
        .count();
    println!("{passed} passed, {} failed", outcomes.len() - passed);
    if !failed.is_empty() {
        1
    } else if passed == outcomes.len() {
        0
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::NemesisSpec;
    use crate::workload::Workload;

    #[test]
    fn ci_list_is_valid_and_fits() {
        let pairs = ci_pairs();
        let secs: u64 = pairs.iter().map(|p| p.time_limit + 20).sum();
        assert!(secs <= 15 * 60, "{secs} s");
        for p in &pairs {
            Workload::parse(p.workload).unwrap();
            NemesisSpec::parse(&p.nemesis).unwrap();
        }
        // Every fault kind appears somewhere.
        for k in crate::nemesis::KINDS {
            assert!(pairs.iter().any(|p| p.nemesis.contains(k)), "{k}");
        }
    }

    #[test]
    fn soak_list_fills_the_duration() {
        let pairs = soak_pairs(Duration::from_secs(7200), 3, true);
        let secs: u64 = pairs.iter().map(|p| p.time_limit + 20).sum();
        assert!(secs <= 7200 && secs > 6000, "{secs}");
        assert_eq!(pairs, soak_pairs(Duration::from_secs(7200), 3, true));
        for p in &pairs {
            NemesisSpec::parse(&p.nemesis).unwrap();
        }
        // Against etcd, no skiff-only kind.
        for seed in 0..20 {
            for p in soak_pairs(Duration::from_secs(7200), seed, false) {
                assert!(!p.nemesis.contains("corrupt"), "{p:?}");
            }
        }
        assert!(
            (0..20)
                .flat_map(|seed| soak_pairs(Duration::from_secs(7200), seed, true))
                .any(|p| p.nemesis.contains("corrupt"))
        );
    }
}
