//! The peer port under attack: random and adversarial frames to every peer RPC and to the
//! raw append stream of a real three-member cluster. No member may abort, panic or propose
//! an invalid command, and the cluster must serve as before.
//!
//! Raft RPCs keep a vote of term 0 in their first bytes (only what follows is mutated): a
//! well-formed AppendEntries from a higher term would be obeyed by design — the peer port
//! trusts its peers, which is why it must never be exposed without peer mTLS.
//! `SKIFF_FUZZ_CASES` (default 100,000) and `SKIFF_FUZZ_SEED` replay a run.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Cluster, etcdctl_ok};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
use skiff_proto::skiffpeer::Blob;
use skiff_proto::skiffpeer::peer_client::PeerClient;
use skiff_store::network::Forwarded;
use skiff_store::types::{Command, Proposal, TypeConfig};
use tonic::transport::Channel;

/// Concurrent calls in flight per member.
const CONCURRENCY: usize = 16;

#[derive(Clone, Copy, Debug)]
enum Target {
    Forward,
    AppendEntries,
    AppendStream,
    Vote,
    InstallSnapshot,
    ReadIndex,
    Members,
    Raw,
}

/// Valid frames to mutate, per target.
fn seeds(target: Target) -> Vec<Vec<u8>> {
    let put = PutRequest {
        key: b"fuzz/key".to_vec(),
        value: b"value".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let txn = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"fuzz/txn".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    }
    .encode_to_vec();
    let enc = |v: &dyn erased::Encode| v.encode();
    let vote0 = Vote::new(0, 0);
    let log_id = |i| LogId::new(CommittedLeaderId::new(0, 0), i);
    let entries = vec![
        Entry::<TypeConfig> {
            log_id: log_id(1),
            payload: EntryPayload::Normal(Proposal::Batch(vec![
                Command::Put(put.clone()),
                Command::Txn(txn.clone()),
            ])),
        },
        Entry::<TypeConfig> {
            log_id: log_id(2),
            payload: EntryPayload::Normal(Proposal::One(Command::DeleteRange(put.clone()))),
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: vote0,
        prev_log_id: Some(log_id(0)),
        entries,
        leader_commit: Some(log_id(2)),
    };
    match target {
        Target::Forward => vec![
            enc(&Forwarded::Write(Command::Put(put.clone()))),
            enc(&Forwarded::Write(Command::Txn(txn))),
            enc(&Forwarded::LeaseKeepAlive(7)),
            nested_batch(3000),
        ],
        Target::AppendEntries | Target::AppendStream | Target::Raw => vec![enc(&append)],
        Target::Vote => vec![enc(&VoteRequest::<u64> {
            vote: vote0,
            last_log_id: Some(log_id(3)),
        })],
        Target::InstallSnapshot => vec![enc(&InstallSnapshotRequest::<TypeConfig> {
            vote: vote0,
            meta: SnapshotMeta::default(),
            offset: 0,
            data: vec![1, 2, 3, 4],
            done: true,
        })],
        Target::ReadIndex | Target::Members => vec![vec![]],
    }
}

/// The message that once overflowed every member's stack: a `Forwarded::Write` holding
/// batches nested `depth` deep.
fn nested_batch(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0u8];
    for _ in 0..depth {
        bytes.extend([5, 1]);
    }
    bytes.extend([0, 0]);
    bytes
}

mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            postcard::to_stdvec(self).expect("encode seed")
        }
    }
}

/// Bytes a Raft RPC's mutations leave alone: its vote (term 0, member 0, not committed).
fn protected_prefix(target: Target) -> usize {
    match target {
        Target::AppendEntries | Target::AppendStream | Target::Raw | Target::Vote => 3,
        Target::InstallSnapshot => 3,
        _ => 0,
    }
}

/// One case: a mutated seed, pure noise, a huge length, or deep nesting.
fn case(rng: &mut StdRng, target: Target, seeds: &[Vec<u8>]) -> Vec<u8> {
    let keep = protected_prefix(target);
    let seed = &seeds[rng.random_range(0..seeds.len())];
    let mut bytes = seed.clone();
    match rng.random_range(0..10u32) {
        // Flip a few bytes.
        0..=3 => {
            for _ in 0..rng.random_range(1..6) {
                if bytes.len() > keep {
                    let at = rng.random_range(keep..bytes.len());
                    bytes[at] = rng.random();
                }
            }
        }
        // Cut short.
        4 => {
            let len = rng.random_range(keep..=bytes.len());
            bytes.truncate(len);
        }
        // Append noise.
        5 => {
            let extra: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            bytes.extend(extra);
        }
        // A huge length varint where a length belongs.
        6 => {
            if bytes.len() > keep {
                let at = rng.random_range(keep..bytes.len());
                bytes.splice(
                    at..at,
                    [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                );
            }
        }
        // Deep nesting of batches (a Forward) or of entries' payloads.
        7 => {
            let depth = rng.random_range(2..20_000);
            if keep == 0 {
                bytes = nested_batch(depth);
            } else {
                bytes.truncate(keep);
                bytes.extend([0, 1, 0, 0, 1, 1, 0]);
                for _ in 0..depth {
                    bytes.extend([5, 1]);
                }
            }
        }
        // Noise after the protected prefix.
        _ => {
            bytes.truncate(keep);
            let noise: Vec<u8> = (0..rng.random_range(0..512))
                .map(|_| rng.random())
                .collect();
            bytes.extend(noise);
        }
    }
    bytes
}

async fn send(client: &mut PeerClient<Channel>, target: Target, data: Vec<u8>) {
    let blob = Blob { data };
    // Errors are the expected answer to most cases; only the members' survival counts.
    let _ = match target {
        Target::Forward => client.forward(blob).await.map(drop),
        Target::AppendEntries => client.append_entries(blob).await.map(drop),
        Target::Vote => client.vote(blob).await.map(drop),
        Target::InstallSnapshot => client.install_snapshot(blob).await.map(drop),
        Target::ReadIndex => client.read_index(blob).await.map(drop),
        Target::Members => client.members(blob).await.map(drop),
        Target::AppendStream => {
            let frames = tokio_stream::iter(vec![blob.clone(), blob]);
            match client.append_stream(frames).await {
                Ok(response) => {
                    let mut answers = response.into_inner();
                    while let Ok(Some(_)) = answers.message().await {}
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Target::Raw => unreachable!("raw frames go over TCP"),
    };
}

/// One raw append stream exchange: MAGIC, then a length-prefixed frame (sometimes with a
/// length that lies).
fn send_raw(addr: &str, data: &[u8], rng: &mut StdRng) {
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let len: u32 = match rng.random_range(0..8u32) {
        0 => u32::MAX,
        1 => rng.random(),
        _ => data.len() as u32,
    };
    let mut frame = b"SKIFFAE1".to_vec();
    frame.extend(len.to_le_bytes());
    frame.extend(data);
    if conn.write_all(&frame).is_ok() {
        // The member sees the end of the stream at once when the length lied.
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut answer = [0u8; 256];
        let _ = conn.read(&mut answer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_peer_frames_never_crash_a_member() {
    let cases: usize = std::env::var("SKIFF_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("SKIFF_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("peer fuzz: {cases} cases, SKIFF_FUZZ_SEED={seed}");
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    etcdctl_ok(&endpoints, &["put", "before", "fuzz"]);
    let peers: Vec<String> = cluster.members.iter().map(|m| m.peer_url.clone()).collect();

    // The exact regression first: 3,000 nested batches to the leader, 20,000 to a follower.
    let leader = cluster.wait_leader(Duration::from_secs(10));
    for (i, peer) in peers.iter().enumerate() {
        let depth = if i == leader { 3000 } else { 20_000 };
        let mut client = PeerClient::connect(peer.clone()).await.expect("connect");
        let answer = client.forward(Blob {
            data: nested_batch(depth),
        });
        let status = answer.await.expect_err("a nested batch is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    let targets = [
        (Target::Forward, 30),
        (Target::AppendEntries, 20),
        (Target::AppendStream, 5),
        (Target::Vote, 10),
        (Target::InstallSnapshot, 10),
        (Target::ReadIndex, 2),
        (Target::Members, 3),
        (Target::Raw, 20),
    ];
    let total_weight: usize = targets.iter().map(|(_, w)| w).sum();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut rng = StdRng::seed_from_u64(seed);
    for (target, weight) in targets {
        let n = cases * weight / total_weight;
        let seeds = seeds(target);
        let frames: Vec<Vec<u8>> = (0..n).map(|_| case(&mut rng, target, &seeds)).collect();
        if let Target::Raw = target {
            let addrs: Vec<String> = peers
                .iter()
                .map(|p| p.trim_start_matches("http://").to_string())
                .collect();
            let sub_seed = rng.random::<u64>();
            tokio::task::spawn_blocking(move || {
                let mut rng = StdRng::seed_from_u64(sub_seed);
                for (i, frame) in frames.iter().enumerate() {
                    send_raw(&addrs[i % addrs.len()], frame, &mut rng);
                }
            })
            .await
            .expect("raw frames");
        } else {
            let mut tasks = Vec::new();
            let per_task = n.div_ceil(CONCURRENCY * peers.len()).max(1);
            for (i, chunk) in frames.chunks(per_task).enumerate() {
                let peer = peers[i % peers.len()].clone();
                let chunk = chunk.to_vec();
                tasks.push(tokio::spawn(async move {
                    let mut client = PeerClient::connect(peer)
                        .await
                        .expect("connect")
                        .max_decoding_message_size(64 * 1024 * 1024);
                    for frame in chunk {
                        send(&mut client, target, frame).await;
                    }
                }));
            }
            for task in tasks {
                task.await.expect("fuzz task");
            }
        }
        sent += n;
        for member in &mut cluster.members {
            let child = member.child.as_mut().expect("member process");
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "member {} exited during {target:?} frames (seed {seed})",
                member.name
            );
        }
        println!(
            "  {target:?}: {n} cases, {sent} so far, {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    // Every member still serves, the cluster still writes and reads, and nothing panicked.
    cluster.wait_healthy(Duration::from_secs(60));
    etcdctl_ok(&endpoints, &["put", "after", "fuzz"]);
    assert_eq!(
        etcdctl_ok(&endpoints, &["get", "before", "--print-value-only"]).trim(),
        "fuzz"
    );
    for member in &cluster.members {
        let log = std::fs::read_to_string(&member.log_path).unwrap_or_default();
        assert!(
            !log.contains("panicked") && !log.contains("overflowed its stack"),
            "member {} logged a panic (seed {seed}):\n{}",
            member.name,
            cluster.log_tail(&member.name)
        );
        // Nothing invalid was proposed: every key in the store is one a client could write.
        let keys = etcdctl_ok(
            &member.endpoint(),
            &["get", "", "--from-key", "--keys-only"],
        );
        assert!(keys.lines().all(|k| k.is_empty() || !k.trim().is_empty()));
    }
    println!(
        "peer fuzz: {sent} cases in {:.1} s; every member alive and serving",
        started.elapsed().as_secs_f64()
    );
}
