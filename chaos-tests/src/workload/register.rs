//! The register workload (Jepsen etcd's `register`): independent integer registers, each used for
//! at most `ops_per_key` operations before a fresh key takes its place, with reads (linearizable
//! Range), writes (Put) and compare-and-sets (Txn: `value(key) == from` → put `to`) of small
//! values 0–4, so stale and lost values are visible.
//!
//! History: `f` = `read` / `write` / `cas`, `key` = `r<n>`, `value` = the value / `[from, to]`;
//! a cas whose compare is false completes `fail` with no error (an observation). `revision` holds
//! the response header's revision. After the run every key is read on every member until a read
//! succeeds (each attempt recorded), so a lost acknowledged write shows up in the check.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op,
};
use tonic::transport::Channel;

use super::{Ctx, parse_int};
use crate::client::{Proc, channel, event, failure_completion, timed};
use crate::history::{F, OpType, Value};

/// Hands out keys: `active` keys at a time, each retired after `per_key` operations.
#[derive(Debug)]
pub struct Keys {
    inner: Mutex<KeysInner>,
    per_key: usize,
}

#[derive(Debug)]
struct KeysInner {
    active: Vec<(u64, usize)>,
    next: u64,
}

impl Keys {
    /// `active` concurrent keys, `per_key` operations each.
    pub fn new(active: usize, per_key: usize) -> Keys {
        let active = active.max(1);
        Keys {
            inner: Mutex::new(KeysInner {
                active: (0..active as u64).map(|k| (k, 0)).collect(),
                next: active as u64,
            }),
            per_key,
        }
    }

    /// A key for the next operation.
    pub fn pick(&self, rng: &mut StdRng) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let i = rng.random_range(0..g.active.len());
        let (key, n) = g.active[i];
        if n + 1 >= self.per_key {
            let next = g.next;
            g.next += 1;
            g.active[i] = (next, 0);
        } else {
            g.active[i].1 = n + 1;
        }
        key
    }

    /// Every key handed out so far.
    pub fn used(&self) -> Vec<u64> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (0..g.next).collect()
    }
}

/// The register key name.
pub fn key_name(k: u64) -> String {
    format!("r{k}")
}

/// One worker.
pub async fn worker(ctx: Ctx, w: usize, keys: std::sync::Arc<Keys>) {
    let node = ctx.node_of(w);
    let mut kv = KvClient::new(channel(node));
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (w as u64).wrapping_mul(0x9e37_79b9));
    let mut p = Proc::new(w, ctx.workers);
    while !ctx.stopped() {
        let key = key_name(keys.pick(&mut rng));
        match rng.random_range(0..3) {
            0 => {
                read(&ctx, &mut kv, &mut p, node, &key).await;
            }
            1 => {
                let v = rng.random_range(0..5);
                write(&ctx, &mut kv, &mut p, node, &key, v).await;
            }
            _ => {
                let from = rng.random_range(0..5);
                let to = rng.random_range(0..5);
                cas(&ctx, &mut kv, &mut p, node, &key, from, to).await;
            }
        }
        ctx.pace(&mut rng).await;
    }
}

/// A linearizable read; returns whether it succeeded.
pub async fn read(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    p: &mut Proc,
    node: usize,
    key: &str,
) -> bool {
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::Read,
        Some(key),
        Value::Null,
        node,
    ));
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let r = timed(ctx.op_timeout, async { kv.range(req).await }).await;
    match r {
        Ok(resp) => {
            let resp = resp.into_inner();
            let value = resp
                .kvs
                .first()
                .map(|kv| parse_int(&kv.value).map_or(Value::Str("?".into()), Value::Int))
                .unwrap_or(Value::Null);
            let mut op = event(p, OpType::Ok, F::Read, Some(key), value, node);
            op.revision = resp.header.map(|h| h.revision);
            ctx.rec.record(op);
            true
        }
        Err(e) => {
            let (kind, err) = failure_completion(&e, false);
            ctx.rec
                .record(event(p, kind, F::Read, Some(key), Value::Null, node).with_error(err));
            false
        }
    }
}

async fn write(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    p: &mut Proc,
    node: usize,
    key: &str,
    v: i64,
) {
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::Write,
        Some(key),
        Value::Int(v),
        node,
    ));
    let req = PutRequest {
        key: key.as_bytes().to_vec(),
        value: v.to_string().into_bytes(),
        ..Default::default()
    };
    let r = timed(ctx.op_timeout, async { kv.put(req).await }).await;
    match r {
        Ok(resp) => {
            let mut op = event(p, OpType::Ok, F::Write, Some(key), Value::Int(v), node);
            op.revision = resp.into_inner().header.map(|h| h.revision);
            ctx.rec.record(op);
        }
        Err(e) => {
            let (kind, err) = failure_completion(&e, true);
            ctx.rec
                .record(event(p, kind, F::Write, Some(key), Value::Int(v), node).with_error(err));
            if kind == OpType::Info {
                p.crashed();
            }
        }
    }
}

async fn cas(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    p: &mut Proc,
    node: usize,
    key: &str,
    from: i64,
    to: i64,
) {
    let arg = Value::List(vec![Value::Int(from), Value::Int(to)]);
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::Cas,
        Some(key),
        arg.clone(),
        node,
    ));
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(compare::TargetUnion::Value(from.to_string().into_bytes())),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: to.to_string().into_bytes(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let r = timed(ctx.op_timeout, async { kv.txn(req).await }).await;
    match r {
        Ok(resp) => {
            let resp = resp.into_inner();
            let kind = if resp.succeeded {
                OpType::Ok
            } else {
                OpType::Fail
            };
            let mut op = event(p, kind, F::Cas, Some(key), arg, node);
            op.revision = resp.header.map(|h| h.revision);
            ctx.rec.record(op);
        }
        Err(e) => {
            let (kind, err) = failure_completion(&e, true);
            ctx.rec
                .record(event(p, kind, F::Cas, Some(key), arg, node).with_error(err));
            if kind == OpType::Info {
                p.crashed();
            }
        }
    }
}

/// After healing: reads every used key on every member, retrying each until it succeeds or
/// `limit` passes (every attempt is recorded, by processes numbered from `first_process`).
pub async fn final_reads(ctx: &Ctx, nodes: &[usize], keys: &Keys, limit: Duration) {
    let used = keys.used();
    let tasks = nodes.iter().enumerate().map(|(i, &node)| {
        let ctx = ctx.clone();
        let used = used.clone();
        async move {
            let mut kv = KvClient::new(channel(node));
            let mut p = Proc::new(1_000_000 + i, nodes.len());
            let deadline = Instant::now() + limit;
            for k in used {
                let key = key_name(k);
                while !read(&ctx, &mut kv, &mut p, node, &key).await {
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
    fn keys_rotate_after_per_key_ops() {
        let keys = Keys::new(2, 3);
        let mut rng = StdRng::seed_from_u64(1);
        let picks: Vec<u64> = (0..12).map(|_| keys.pick(&mut rng)).collect();
        let mut counts = std::collections::BTreeMap::new();
        for k in &picks {
            *counts.entry(*k).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&n| n <= 3), "{counts:?}");
        assert!(keys.used().len() as u64 > *picks.iter().max().unwrap());
        assert!(keys.used().len() >= 4);
    }
}
