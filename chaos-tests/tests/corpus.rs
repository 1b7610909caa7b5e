//! The linearizability checker against the Porcupine corpus (`testdata/linearizability-histories`):
//! every file listed in `expected.tsv` must get its expected verdict, decided within
//! [`PER_FILE`] — a file that hits the deadline is reported `unknown` and fails the test.
//!
//! The summary line (decided/total, matches, total and worst time) is written straight to stderr,
//! so it shows without `--nocapture`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_chaos_tests::checker::{CheckOptions, Verdict, check_report};
use skiff_chaos_tests::history::History;
use skiff_chaos_tests::parse::load_history;

/// Time bound for one history.
const PER_FILE: Duration = Duration::from_secs(10);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/linearizability-histories")
}

/// `(relative path, expected linearizable?)` for every line of `expected.tsv`.
fn expected() -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(corpus_dir().join("expected.tsv")).expect("expected.tsv");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (file, verdict) = line.split_once('\t').expect("FILE<TAB>VERDICT");
            let verdict = match verdict.trim() {
                "true" => true,
                "false" => false,
                other => panic!("bad verdict {other:?} for {file}"),
            };
            (file.to_owned(), verdict)
        })
        .collect()
}

fn load(file: &str) -> History {
    load_history(corpus_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn corpus_verdicts_match_expected() {
    let cases = expected();
    assert_eq!(
        cases.len(),
        108,
        "expected.tsv lists 102 etcd logs and 6 kv files"
    );
    let options = CheckOptions::with_timeout(PER_FILE);
    let start = Instant::now();
    let mut decided = 0;
    let mut matched = 0;
    let mut worst = (Duration::ZERO, String::new());
    let mut problems = Vec::new();
    let mut example: Option<String> = None;
    for (file, linearizable) in &cases {
        let history = load(file);
        let report = check_report(&history, &options).unwrap_or_else(|e| panic!("{file}: {e}"));
        if report.elapsed > worst.0 {
            worst = (report.elapsed, file.clone());
        }
        match report.verdict.valid() {
            None => problems.push(format!("{file}: {}", report.verdict)),
            Some(valid) => {
                decided += 1;
                if valid == *linearizable {
                    matched += 1;
                } else {
                    problems.push(format!(
                        "{file}: expected linearizable={linearizable}, got {}",
                        report.verdict
                    ));
                }
            }
        }
        if let Verdict::NotLinearizable { counterexample } = &report.verdict {
            assert!(
                counterexample.prefix_tail.len() <= options.excerpt_ops,
                "{file}"
            );
            assert!(
                counterexample.concurrent.len() <= options.excerpt_ops,
                "{file}"
            );
            if example.is_none() {
                example = Some(format!("{file}: {counterexample}"));
            }
        }
    }
    let total = start.elapsed();
    let summary = format!(
        "linearizability corpus: {decided}/{} decided, {matched} match expected.tsv, total {:.2} s, \
         worst {:.3} s ({}), bound {} s per file",
        cases.len(),
        total.as_secs_f64(),
        worst.0.as_secs_f64(),
        worst.1,
        PER_FILE.as_secs()
    );
    let mut err = std::io::stderr();
    let _ = writeln!(err, "{summary}");
    println!("{summary}");
    if let Some(example) = example {
        println!("example counterexample — {example}");
    }
    assert!(problems.is_empty(), "{summary}\n{}", problems.join("\n"));
}

#[test]
fn corpus_histories_round_trip_through_jsonl() {
    for (file, _) in expected() {
        let history = load(&file);
        assert!(!history.is_empty(), "{file}");
        let mut buf = Vec::new();
        history.write_jsonl(&mut buf).expect("write");
        let back = History::read_jsonl(&buf[..]).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(back, history, "{file}");
    }
}
