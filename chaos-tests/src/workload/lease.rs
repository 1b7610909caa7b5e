//! The lease workload: TTL keys kept alive for a while, revoked, or left to expire.
//!
//! Each worker repeats: `grant` a lease (TTL 2–4 s), `put` key `l/<worker>-<n>` attached to it,
//! then either keeps it alive (`keepalive` every 0.5 s over the KeepAlive stream, for 0–6 s) or
//! `revoke`s it, reading the key (`lread`) in between and afterwards. History values: `grant`
//! invoke = TTL, ok = `{"id", "ttl"}`; `put` key + `{"value", "lease"}`; `keepalive` / `revoke`
//! value = lease id (a keepalive's ok value is the TTL it returned); `lread` ok value = the value
//! or null. After the run every key is read again once every lease must have expired
//! (`final-lread`).
//!
//! [`supported`] probes `LeaseGrant` first: a store that answers `Unimplemented` makes the run
//! skip the workload with a note instead of failing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::lease_client::LeaseClient;
use skiff_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
};
use tonic::Code;
use tonic::transport::Channel;

use super::Ctx;
use crate::client::{Proc, channel, event, failure_completion, timed};
use crate::history::{F, OpType, Value};

/// Whether the store implements leases: `Ok(())`, or `Err(note)` when it answers Unimplemented.
pub async fn supported(node: usize) -> Result<(), String> {
    let mut c = LeaseClient::new(channel(node));
    for _ in 0..20 {
        match timed(Duration::from_secs(2), async {
            c.lease_grant(LeaseGrantRequest { ttl: 5, id: 0 }).await
        })
        .await
        {
            Ok(r) => {
                let id = r.into_inner().id;
                let _ = timed(Duration::from_secs(2), async {
                    c.lease_revoke(LeaseRevokeRequest { id }).await
                })
                .await;
                return Ok(());
            }
            Err(Some(s)) if s.code() == Code::Unimplemented => {
                return Err(format!(
                    "the store does not implement leases: {}",
                    s.message()
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    Err("cannot tell whether the store implements leases: LeaseGrant never answered".into())
}

/// Keys written so far.
#[derive(Debug, Default)]
pub struct LeaseKeys(Mutex<Vec<String>>);

impl LeaseKeys {
    fn add(&self, k: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(k.to_owned());
    }

    /// Every key written (or attempted).
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Keep-alive requests queued on one stream (one is outstanding at a time).
const KEEPALIVE_REQUEST_QUEUE: usize = 8;

async fn lread(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    p: &Proc,
    node: usize,
    key: &str,
    f: &str,
) -> bool {
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::from(f),
        Some(key),
        Value::Null,
        node,
    ));
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    match timed(ctx.op_timeout, async { kv.range(req).await }).await {
        Ok(r) => {
            let r = r.into_inner();
            let v = r.kvs.first().map_or(Value::Null, |kv| {
                Value::Str(String::from_utf8_lossy(&kv.value).into_owned())
            });
            let mut op = event(p, OpType::Ok, F::from(f), Some(key), v, node);
            op.revision = r.header.map(|h| h.revision);
            ctx.rec.record(op);
            true
        }
        Err(e) => {
            let (_, err) = failure_completion(&e, false);
            ctx.rec.record(
                event(p, OpType::Fail, F::from(f), Some(key), Value::Null, node).with_error(err),
            );
            false
        }
    }
}

/// One worker.
pub async fn worker(ctx: Ctx, w: usize, keys: std::sync::Arc<LeaseKeys>) {
    let node = ctx.node_of(w);
    let ch = channel(node);
    let mut kv = KvClient::new(ch.clone());
    let mut lc = LeaseClient::new(ch);
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (w as u64).wrapping_mul(0x7f4a_7c15));
    let mut p = Proc::new(w, ctx.workers);
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        let ttl = rng.random_range(2..=4i64);
        // grant
        ctx.rec.record(event(
            &p,
            OpType::Invoke,
            F::from("grant"),
            None,
            Value::Int(ttl),
            node,
        ));
        let id = match timed(ctx.op_timeout, async {
            lc.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await
        })
        .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let v = Value::Map(BTreeMap::from([
                    ("id".to_owned(), Value::Int(r.id)),
                    ("ttl".to_owned(), Value::Int(r.ttl)),
                ]));
                let mut op = event(&p, OpType::Ok, F::from("grant"), None, v, node);
                op.revision = r.header.map(|h| h.revision);
                ctx.rec.record(op);
                r.id
            }
            Err(e) => {
                let (kind, err) = failure_completion(&e, true);
                ctx.rec.record(
                    event(&p, kind, F::from("grant"), None, Value::Int(ttl), node).with_error(err),
                );
                if kind == OpType::Info {
                    p.crashed();
                }
                ctx.pace(&mut rng).await;
                continue;
            }
        };
        // put
        let key = format!("l/{w}-{n}");
        keys.add(&key);
        let pv = Value::Map(BTreeMap::from([
            ("value".to_owned(), Value::Str(format!("{w}-{n}"))),
            ("lease".to_owned(), Value::Int(id)),
        ]));
        ctx.rec.record(event(
            &p,
            OpType::Invoke,
            F::Put,
            Some(&key),
            pv.clone(),
            node,
        ));
        let req = PutRequest {
            key: key.as_bytes().to_vec(),
            value: format!("{w}-{n}").into_bytes(),
            lease: id,
            ..Default::default()
        };
        match timed(ctx.op_timeout, async { kv.put(req).await }).await {
            Ok(r) => {
                let mut op = event(&p, OpType::Ok, F::Put, Some(&key), pv, node);
                op.revision = r.into_inner().header.map(|h| h.revision);
                ctx.rec.record(op);
            }
            Err(e) => {
                let (kind, err) = failure_completion(&e, true);
                ctx.rec
                    .record(event(&p, kind, F::Put, Some(&key), pv, node).with_error(err));
                if kind == OpType::Info {
                    p.crashed();
                }
            }
        }
        lread(&ctx, &mut kv, &p, node, &key, "lread").await;
        if rng.random_bool(0.6) {
            // keep alive for a while, reading the key now and then
            let until = Instant::now() + Duration::from_millis(rng.random_range(0..6_000));
            // One request is outstanding at a time, so a small bound never blocks.
            let (mut tx, rx) =
                futures::channel::mpsc::channel::<LeaseKeepAliveRequest>(KEEPALIVE_REQUEST_QUEUE);
            let stream = timed(Duration::from_secs(2), async {
                lc.lease_keep_alive(rx).await
            })
            .await;
            if let Ok(stream) = stream {
                let mut stream = stream.into_inner();
                while Instant::now() < until && !ctx.stopped() {
                    ctx.rec.record(event(
                        &p,
                        OpType::Invoke,
                        F::from("keepalive"),
                        None,
                        Value::Int(id),
                        node,
                    ));
                    let _ = tx.try_send(LeaseKeepAliveRequest { id });
                    match timed(ctx.op_timeout, async {
                        stream.message().await.map(|m| m.map(|m| m.ttl))
                    })
                    .await
                    {
                        Ok(Some(ttl)) => {
                            ctx.rec.record(event(
                                &p,
                                OpType::Ok,
                                F::from("keepalive"),
                                None,
                                Value::Int(ttl),
                                node,
                            ));
                        }
                        Ok(None) => {
                            ctx.rec.record(
                                event(
                                    &p,
                                    OpType::Fail,
                                    F::from("keepalive"),
                                    None,
                                    Value::Int(id),
                                    node,
                                )
                                .with_error("stream closed"),
                            );
                            break;
                        }
                        Err(e) => {
                            // A keepalive only extends; an unknown outcome is harmless to record as fail.
                            let (_, err) = failure_completion(&e, false);
                            ctx.rec.record(
                                event(
                                    &p,
                                    OpType::Fail,
                                    F::from("keepalive"),
                                    None,
                                    Value::Int(id),
                                    node,
                                )
                                .with_error(err),
                            );
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    lread(&ctx, &mut kv, &p, node, &key, "lread").await;
                }
            }
        } else {
            ctx.rec.record(event(
                &p,
                OpType::Invoke,
                F::from("revoke"),
                None,
                Value::Int(id),
                node,
            ));
            match timed(ctx.op_timeout, async {
                lc.lease_revoke(LeaseRevokeRequest { id }).await
            })
            .await
            {
                Ok(r) => {
                    let mut op = event(
                        &p,
                        OpType::Ok,
                        F::from("revoke"),
                        None,
                        Value::Int(id),
                        node,
                    );
                    op.revision = r.into_inner().header.map(|h| h.revision);
                    ctx.rec.record(op);
                }
                Err(e) => {
                    let (kind, err) = failure_completion(&e, true);
                    ctx.rec.record(
                        event(&p, kind, F::from("revoke"), None, Value::Int(id), node)
                            .with_error(err),
                    );
                    if kind == OpType::Info {
                        p.crashed();
                    }
                }
            }
            lread(&ctx, &mut kv, &p, node, &key, "lread").await;
        }
        ctx.pace(&mut rng).await;
    }
}

/// After healing and once every lease must have expired: reads every key on every member.
pub async fn final_reads(ctx: &Ctx, nodes: &[usize], keys: &LeaseKeys, limit: Duration) {
    let all = keys.all();
    let tasks = nodes.iter().enumerate().map(|(i, &node)| {
        let ctx = ctx.clone();
        let all = all.clone();
        async move {
            let mut kv = KvClient::new(channel(node));
            let p = Proc::new(1_000_000 + i, nodes.len());
            let deadline = Instant::now() + limit;
            for key in all {
                while !lread(&ctx, &mut kv, &p, node, &key, "final-lread").await {
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
