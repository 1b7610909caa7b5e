//! The list-append workload (Jepsen etcd's `append`, for Elle-style checking).
//!
//! A transaction is 1–4 micro-operations over a few hot keys: `["r", k, null]` reads the list
//! stored at `k`, `["append", k, x]` appends the unique integer `x` to it. It executes as:
//! 1. one read-only Txn ranging every key it touches (a consistent snapshot at one revision);
//! 2. if it appends: one Txn whose compares require every touched key's `mod_revision` to be
//!    unchanged since the snapshot, and whose success branch puts the new lists. A false compare
//!    completes the transaction `fail` (it definitely did not happen) — it is **not** retried.
//!
//! The commit is therefore atomic at the second Txn's revision, with the reads taken from a state
//! equal to the one it commits on. Lists are stored as space-separated decimals. Keys rotate after
//! `appends_per_key` appends so lists stay short. History: `f` = `txn`, `value` = the micro-ops,
//! with the read lists filled in on `ok`; final reads are read-only transactions per key.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op, response_op,
};
use tonic::transport::Channel;

use super::Ctx;
use crate::client::{Proc, channel, event, failure_completion, timed};
use crate::history::{F, OpType, Value};

/// Key rotation and unique elements.
#[derive(Debug)]
pub struct AppendKeys {
    inner: Mutex<(Vec<(u64, usize)>, u64)>,
    per_key: usize,
    next_elem: AtomicI64,
}

impl AppendKeys {
    /// `active` hot keys, each retired after `per_key` appends.
    pub fn new(active: usize, per_key: usize) -> AppendKeys {
        AppendKeys {
            inner: Mutex::new(((0..active as u64).map(|k| (k, 0)).collect(), active as u64)),
            per_key,
            next_elem: AtomicI64::new(1),
        }
    }

    fn pick(&self, rng: &mut StdRng, appending: bool) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let i = rng.random_range(0..g.0.len());
        let (k, n) = g.0[i];
        if appending {
            if n + 1 >= self.per_key {
                let next = g.1;
                g.1 += 1;
                g.0[i] = (next, 0);
            } else {
                g.0[i].1 = n + 1;
            }
        }
        k
    }

    fn elem(&self) -> i64 {
        self.next_elem.fetch_add(1, Ordering::Relaxed)
    }

    /// Every key used so far.
    pub fn used(&self) -> Vec<u64> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (0..g.1).collect()
    }
}

/// The key name.
pub fn key_name(k: u64) -> String {
    format!("a{k}")
}

/// Encodes a list.
pub fn encode(list: &[i64]) -> Vec<u8> {
    list.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
        .into_bytes()
}

/// Decodes a list (`None` if the bytes are not a list).
pub fn decode(bytes: &[u8]) -> Option<Vec<i64>> {
    let s = std::str::from_utf8(bytes).ok()?;
    s.split_whitespace().map(|t| t.parse().ok()).collect()
}

/// A micro-op as `(is_append, key, element)`.
type Micro = (bool, String, i64);

fn micro_value(ops: &[Micro], reads: Option<&[Option<Vec<i64>>]>) -> Value {
    Value::List(
        ops.iter()
            .enumerate()
            .map(|(i, (append, key, x))| {
                let third = if *append {
                    Value::Int(*x)
                } else {
                    match reads.and_then(|r| r[i].as_ref()) {
                        Some(l) => Value::List(l.iter().map(|&e| Value::Int(e)).collect()),
                        None => Value::Null,
                    }
                };
                Value::List(vec![
                    Value::Str(if *append { "append" } else { "r" }.into()),
                    Value::Str(key.clone()),
                    third,
                ])
            })
            .collect(),
    )
}

/// One worker.
pub async fn worker(ctx: Ctx, w: usize, keys: std::sync::Arc<AppendKeys>) {
    let node = ctx.node_of(w);
    let mut kv = KvClient::new(channel(node));
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (w as u64).wrapping_mul(0x51_7cc1_b727));
    let mut p = Proc::new(w, ctx.workers);
    while !ctx.stopped() {
        let n = rng.random_range(1..=4);
        let ops: Vec<Micro> = (0..n)
            .map(|_| {
                let append = rng.random_bool(0.5);
                let k = keys.pick(&mut rng, append);
                let x = if append { keys.elem() } else { 0 };
                (append, key_name(k), x)
            })
            .collect();
        txn(&ctx, &mut kv, &mut p, node, &ops).await;
        ctx.pace(&mut rng).await;
    }
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// Runs one transaction; returns whether it completed `ok`.
pub async fn txn(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    p: &mut Proc,
    node: usize,
    ops: &[Micro],
) -> bool {
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::from("txn"),
        None,
        micro_value(ops, None),
        node,
    ));
    let mut touched: Vec<String> = ops.iter().map(|(_, k, _)| k.clone()).collect();
    touched.sort();
    touched.dedup();
    // 1. Snapshot.
    let snap_req = TxnRequest {
        compare: vec![],
        success: touched.iter().map(|k| range_op(k)).collect(),
        failure: vec![],
    };
    let snap = match timed(ctx.op_timeout, async { kv.txn(snap_req).await }).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            // Nothing was written yet: a definite failure whatever the error.
            let (_, err) = failure_completion(&e, false);
            ctx.rec.record(
                event(
                    p,
                    OpType::Fail,
                    F::from("txn"),
                    None,
                    micro_value(ops, None),
                    node,
                )
                .with_error(format!("snapshot: {err}")),
            );
            return false;
        }
    };
    let mut state: BTreeMap<String, (Vec<i64>, i64)> = BTreeMap::new();
    for (k, resp) in touched.iter().zip(&snap.responses) {
        let (list, mod_rev) = match &resp.response {
            Some(response_op::Response::ResponseRange(r)) => match r.kvs.first() {
                Some(kv) => (decode(&kv.value).unwrap_or_default(), kv.mod_revision),
                None => (Vec::new(), 0),
            },
            _ => (Vec::new(), 0),
        };
        state.insert(k.clone(), (list, mod_rev));
    }
    // Apply the micro-ops locally.
    let mut reads: Vec<Option<Vec<i64>>> = Vec::with_capacity(ops.len());
    let mut written: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (append, k, x) in ops {
        let cur = written
            .get(k)
            .cloned()
            .unwrap_or_else(|| state[k].0.clone());
        if *append {
            let mut l = cur;
            l.push(*x);
            written.insert(k.clone(), l);
            reads.push(None);
        } else {
            reads.push(Some(cur));
        }
    }
    if written.is_empty() {
        let mut op = event(
            p,
            OpType::Ok,
            F::from("txn"),
            None,
            micro_value(ops, Some(&reads)),
            node,
        );
        op.revision = snap.header.map(|h| h.revision);
        ctx.rec.record(op);
        return true;
    }
    // 2. Commit guarded by mod revisions.
    let commit = TxnRequest {
        compare: touched
            .iter()
            .map(|k| Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: k.as_bytes().to_vec(),
                target_union: Some(compare::TargetUnion::ModRevision(state[k].1)),
                ..Default::default()
            })
            .collect(),
        success: written
            .iter()
            .map(|(k, l)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: encode(l),
                    ..Default::default()
                })),
            })
            .collect(),
        failure: vec![],
    };
    match timed(ctx.op_timeout, async { kv.txn(commit).await }).await {
        Ok(r) => {
            let r = r.into_inner();
            let kind = if r.succeeded {
                OpType::Ok
            } else {
                OpType::Fail
            };
            let value = if r.succeeded {
                micro_value(ops, Some(&reads))
            } else {
                micro_value(ops, None)
            };
            let mut op = event(p, kind, F::from("txn"), None, value, node);
            op.revision = r.header.map(|h| h.revision);
            if !r.succeeded {
                op.error = Some("conflict".into());
            }
            ctx.rec.record(op);
            r.succeeded
        }
        Err(e) => {
            let (kind, err) = failure_completion(&e, true);
            ctx.rec.record(
                event(p, kind, F::from("txn"), None, micro_value(ops, None), node).with_error(err),
            );
            if kind == OpType::Info {
                p.crashed();
            }
            false
        }
    }
}

/// After healing: a read-only transaction of every used key on every member, retried until it
/// succeeds or `limit` passes.
pub async fn final_reads(ctx: &Ctx, nodes: &[usize], keys: &AppendKeys, limit: Duration) {
    let used = keys.used();
    let tasks = nodes.iter().enumerate().map(|(i, &node)| {
        let ctx = ctx.clone();
        let used = used.clone();
        async move {
            let mut kv = KvClient::new(channel(node));
            let mut p = Proc::new(1_000_000 + i, nodes.len());
            let deadline = Instant::now() + limit;
            for k in used {
                let ops = vec![(false, key_name(k), 0)];
                while !txn(&ctx, &mut kv, &mut p, node, &ops).await {
                    if Instant::now() >= deadline {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    });
    futures::future::join_all(tasks).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        assert_eq!(decode(&encode(&[1, 22, 3])), Some(vec![1, 22, 3]));
        assert_eq!(decode(b""), Some(vec![]));
        assert_eq!(decode(b"x"), None);
    }

    #[test]
    fn micro_ops_render_like_elle() {
        let ops = vec![(false, "a1".to_owned(), 0), (true, "a1".to_owned(), 7)];
        let v = micro_value(&ops, Some(&[Some(vec![1, 2]), None]));
        assert_eq!(v.to_string(), r#"[["r","a1",[1,2]],["append","a1",7]]"#);
        assert_eq!(
            micro_value(&ops, None).to_string(),
            r#"[["r","a1",null],["append","a1",7]]"#
        );
    }
}
