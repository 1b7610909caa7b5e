//! Damage on a stopped member's disk: bytes flipped in its WAL (a record's header, the
//! middle of the log, its last synced record) and in its redb file. The member either
//! refuses to start, naming the damaged file, or starts with every acknowledged write; it
//! never starts silently short. After the damage is undone it rejoins and catches up.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Cluster, etcdctl_ok};

/// The member's WAL segments, oldest first.
fn wal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("member/wal"))
        .expect("wal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments
}

/// Offsets of the records of a segment (header `[len u32][crc u32]`, zero length ends them).
fn record_offsets(data: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || at + 8 + len > data.len() {
            break;
        }
        offsets.push(at);
        at += 8 + len;
    }
    offsets
}

/// How many `acked/` keys the member at `endpoint` serves (`s`: from its own state).
fn acked_keys(endpoint: &str, consistency: &str) -> usize {
    etcdctl_ok(
        endpoint,
        &[
            "get",
            "acked/",
            "--prefix",
            "--keys-only",
            &format!("--consistency={consistency}"),
        ],
    )
    .lines()
    .filter(|l| l.starts_with("acked/"))
    .count()
}

/// Wait for the member's process to exit; `None` if it is still running after `wait`.
fn exit_within(
    cluster: &mut Cluster,
    i: usize,
    wait: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        let child = cluster.members[i].child.as_mut().expect("child");
        if let Some(status) = child.try_wait().expect("try_wait") {
            cluster.members[i].child = None;
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_member_with_damaged_files_refuses_to_start_or_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    for i in 0..300 {
        etcdctl_ok(
            &endpoints,
            &["put", &format!("acked/{i:04}"), &format!("v{i}")],
        );
    }
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let victim = (leader + 1) % 3;
    // Let the victim apply everything, then stop it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while etcdctl_ok(
        &cluster.members[victim].endpoint(),
        &["get", "acked/0299", "--consistency=s", "--print-value-only"],
    )
    .trim()
        != "v299"
    {
        assert!(Instant::now() < deadline, "victim never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.members[victim].kill9();
    let data_dir = cluster.members[victim].data_dir.clone();
    let segment = wal_segments(&data_dir).pop().expect("a wal segment");
    let pristine_wal = std::fs::read(&segment).expect("read wal");
    let records = record_offsets(&pristine_wal);
    assert!(records.len() > 10, "{} records", records.len());
    let redb = data_dir.join("member/store.redb");
    // The member's data is its owner's only (etcd's modes): 0700 dirs, 0600 files.
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    };
    for dir in [
        data_dir.clone(),
        data_dir.join("member"),
        data_dir.join("member/wal"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for file in [
        redb.clone(),
        segment.clone(),
        data_dir.join("member/wal/sync-mark"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let pristine_redb = std::fs::read(&redb).expect("read redb");

    let cases: Vec<(&str, &PathBuf, &Vec<u8>, usize)> = vec![
        (
            "wal: header of the first record",
            &segment,
            &pristine_wal,
            records[0] + 1,
        ),
        (
            "wal: middle record's payload",
            &segment,
            &pristine_wal,
            records[records.len() / 2] + 12,
        ),
        (
            "wal: last record's crc",
            &segment,
            &pristine_wal,
            records[records.len() - 1] + 5,
        ),
        (
            "wal: last record's payload",
            &segment,
            &pristine_wal,
            records[records.len() - 1] + 9,
        ),
        (
            "redb: a quarter in",
            &redb,
            &pristine_redb,
            pristine_redb.len() / 4,
        ),
        (
            "redb: the middle",
            &redb,
            &pristine_redb,
            pristine_redb.len() / 2,
        ),
        (
            "redb: near the end",
            &redb,
            &pristine_redb,
            pristine_redb.len() * 7 / 8,
        ),
    ];
    let mut refused = 0;
    for (what, path, pristine, at) in cases {
        let mut damaged = pristine.clone();
        damaged[at] ^= 0x41;
        std::fs::write(path, &damaged).expect("damage");
        let log_before = std::fs::metadata(&cluster.members[victim].log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        cluster.restart(victim);
        match exit_within(&mut cluster, victim, Duration::from_secs(8)) {
            Some(status) => {
                assert!(!status.success(), "{what}: exited with success");
                let log =
                    std::fs::read_to_string(&cluster.members[victim].log_path).expect("member log");
                let new = &log[log_before as usize..];
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .expect("file name");
                assert!(
                    new.contains(name),
                    "{what}: the refusal does not name {name}:\n{new}"
                );
                assert!(!new.contains("panicked"), "{what}: panicked:\n{new}");
                println!("{what}: refused ({})", new.lines().last().unwrap_or(""));
                refused += 1;
            }
            None => {
                // It started: it must hold every acknowledged write.
                let endpoint = cluster.members[victim].endpoint();
                assert_eq!(acked_keys(&endpoint, "s"), 300, "{what}: started short");
                println!("{what}: started with every acknowledged write");
                cluster.members[victim].kill9();
            }
        }
        std::fs::write(path, pristine).expect("undo the damage");
    }
    assert!(refused >= 4, "only {refused} damaged starts refused");
    // Undamaged again: it rejoins and serves every write.
    cluster.restart(victim);
    cluster.wait_healthy(Duration::from_secs(30));
    etcdctl_ok(&endpoints, &["put", "acked/after", "x"]);
    assert_eq!(acked_keys(&cluster.members[victim].endpoint(), "l"), 301);
}
