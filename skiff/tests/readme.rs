//! The README as a newcomer runs it: every ```sh block, in order, in one bash session (so
//! background jobs and exports carry over, as in one terminal), with `set -e`: a command
//! that fails fails the test. A block preceded by `<!-- not run by tests: REASON -->` is
//! skipped (long benchmarks); the test fails if nothing is left to run.
//!
//! The session runs in a scratch directory (data dirs, `kubeconfig` and certificates land
//! there, not in the checkout) holding a link to the checkout's `examples/` and `scripts/`,
//! with the `skiff` under test first on PATH; `cargo run --release -p skiff -- ARGS` execs
//! that `skiff ARGS` (what it builds; `cargo run` execs its binary too, so `kill %1` stops
//! the member itself). It uses the README's own fixed ports (2379–2384,
//! 6443, 6444, 10257, 10259): they must be free. Everything the session starts is killed at its end by
//! process group.
mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SKIP_MARK: &str = "<!-- not run by tests:";
const SESSION_LIMIT: Duration = Duration::from_secs(600);

/// The README's ```sh blocks, each with whether it is skipped.
fn sh_blocks(readme: &str) -> Vec<(bool, String)> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines().peekable();
    let mut previous = "";
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let skip = previous.trim_start().starts_with(SKIP_MARK);
            let mut body = String::new();
            for line in lines.by_ref() {
                if line.trim() == "```" {
                    break;
                }
                body.push_str(line);
                body.push('\n');
            }
            blocks.push((skip, body));
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    blocks
}

#[test]
fn block_extraction_sees_skips_and_bodies() {
    let text = "x\n```sh\necho a\n```\n<!-- not run by tests: slow -->\n\n```sh\necho b\n```\n";
    assert_eq!(
        sh_blocks(text),
        vec![
            (false, "echo a\n".to_string()),
            (true, "echo b\n".to_string())
        ]
    );
}

#[test]
fn every_readme_command_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    let blocks = sh_blocks(&readme);
    let run: Vec<&String> = blocks.iter().filter(|(s, _)| !s).map(|(_, b)| b).collect();
    assert!(run.len() >= 3, "too few runnable blocks: {blocks:?}");
    for port in [2379, 2380, 2381, 2382, 2383, 2384, 6443, 6444, 10257, 10259] {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use: the README's commands need it"
        );
    }

    let scratch = tempfile::tempdir().expect("tempdir");
    for dir in ["examples", "scripts"] {
        std::os::unix::fs::symlink(repo.join(dir), scratch.path().join(dir)).expect("symlink");
    }
    let bin_dir = common::skiff_bin().parent().expect("bin dir").to_path_buf();
    let mut script = String::from(
        "set -euo pipefail\n\
         cargo() { if [[ \"$*\" == 'run --release -p skiff -- '* ]]; then shift 5; exec skiff \"$@\"; else command cargo \"$@\"; fi; }\n\
         trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT\n",
    );
    for (i, block) in run.iter().enumerate() {
        script.push_str(&format!("echo '### README block {}' >&2\n", i + 1));
        script.push_str(block);
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(scratch.path())
        .env("PATH", path)
        .env_remove("KUBECONFIG")
        .env_remove("ETCDCTL_ENDPOINTS")
        .env("SKIFF_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run bash");
    let pgid = child.id();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > SESSION_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Whatever is left of the session (its background jobs included): our process group.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => {}
        Some(status) => {
            panic!("the README's commands failed ({status}):\n{out}\n--- stderr:\n{err}")
        }
        None => panic!(
            "the README's commands did not finish within {SESSION_LIMIT:?}:\n{out}\n--- stderr:\n{err}"
        ),
    }
    // What the README says the commands print.
    assert!(out.contains("OK"), "{out}");
    assert!(out.contains("Server Version: v1.33.0"), "{out}");
    assert!(out.contains("pod/web condition met"), "{out}");
}
