//! The Kubernetes-like traffic profile (etcd robustness' `kubernetes` traffic): objects under
//! `k/`, written the way kube-apiserver writes them and read the way informers read them.
//!
//! - **Writers** (even workers): `k-get` an object (linearizable Range), then an optimistic
//!   `k-create` (Txn `mod_revision(key) == 0` → put), `k-update` (Txn `mod_revision(key) == seen`
//!   → put) or `k-delete` (same compare → delete); the failure branch reads the key, as
//!   kube-apiserver's GuaranteedUpdate does. Invoke value `{"value", "expect"}`; `ok` when the
//!   compare held (`revision` = header revision), `fail` with no error when it did not (a
//!   conflict, an observation), `info` when the outcome is unknown.
//! - **Informers** (odd workers): `list` the prefix (`ok` value = key → `[value, mod_revision]`,
//!   `revision` = R), then watch from R+1 for 2–6 s applying events to a cache, then list again
//!   at the revision H the cache reached (Range with `revision = H`). Like a reflector, the next
//!   session often resumes from H+1 with the same cache after a short pause instead of listing;
//!   a watch cancelled by compaction makes it relist. One `informer` op per
//!   session: invoke `{"start": R+1}`, completion `{"start", "revision": H, "cache", "list",
//!   "created": count of created responses, "events", "mod-revision-regressions",
//!   "canceled": compact revision or null}`.
//! - Worker 1 (with 4 workers or more) is the **compactor**: every 1–3 s it compacts to 10
//!   revisions behind the current one (`compact`, value = the revision), so resuming informers
//!   meet compaction cancels and relist.
//! - After healing, `final-list` on every member at one revision: the replicas must agree.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest, compare, request_op, watch_request,
};
use skiff_proto::mvccpb::event::EventType;
use tonic::transport::Channel;

use super::Ctx;
use crate::client::{Proc, channel, event, failure_completion, timed};
use crate::history::{F, OpType, Value};

/// The object prefix.
pub const PREFIX: &str = "k/";
const RANGE_END: &str = "k0";
const OBJECTS: u64 = 10;
const WATCH_REQUEST_QUEUE: usize = 8;

type Items = BTreeMap<String, (String, i64)>;

fn items_value(items: &Items) -> Value {
    Value::Map(
        items
            .iter()
            .map(|(k, (v, r))| {
                (
                    k.clone(),
                    Value::List(vec![Value::Str(v.clone()), Value::Int(*r)]),
                )
            })
            .collect(),
    )
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// One worker.
pub async fn worker(ctx: Ctx, w: usize) {
    let node = ctx.node_of(w);
    let mut kv = KvClient::new(channel(node));
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (w as u64).wrapping_mul(0x51ed_2701));
    let mut p = Proc::new(w, ctx.workers);
    let mut n = 0u64;
    let mut informed: Option<(Items, i64)> = None;
    // With at least two informers, worker 1 is the compactor.
    let compactor = w == 1 && ctx.workers >= 4;
    while !ctx.stopped() {
        if w.is_multiple_of(2) {
            n += 1;
            write(&ctx, &mut kv, &mut p, node, &mut rng, w, n).await;
            ctx.pace(&mut rng).await;
        } else if compactor {
            let pause = Duration::from_millis(rng.random_range(1_000..3_000));
            let mut stop = ctx.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            compact(&ctx, &mut kv, &mut p, node).await;
        } else {
            informed = informer(&ctx, &mut kv, &mut p, node, &mut rng, informed.take()).await;
        }
    }
}

fn range(key: &str, end: Option<&str>, revision: i64) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.map(|e| e.as_bytes().to_vec()).unwrap_or_default(),
        revision,
        ..Default::default()
    }
}

async fn list(
    kv: &mut KvClient<Channel>,
    revision: i64,
    limit: Duration,
) -> Result<(Items, i64), String> {
    let req = range(PREFIX, Some(RANGE_END), revision);
    match timed(limit, async { kv.range(req).await }).await {
        Ok(r) => {
            let r = r.into_inner();
            let items = r
                .kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        (
                            String::from_utf8_lossy(&kv.value).into_owned(),
                            kv.mod_revision,
                        ),
                    )
                })
                .collect();
            Ok((items, r.header.map_or(0, |h| h.revision)))
        }
        Err(e) => Err(failure_completion(&e, false).1),
    }
}

async fn write(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    p: &mut Proc,
    node: usize,
    rng: &mut StdRng,
    w: usize,
    n: u64,
) {
    let key = format!("{PREFIX}{}", rng.random_range(0..OBJECTS));
    // The read an update starts from (kube-apiserver's cached or quorum Get).
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::from("k-get"),
        Some(&key),
        Value::Null,
        node,
    ));
    let seen = match timed(ctx.op_timeout, async {
        kv.range(range(&key, None, 0)).await
    })
    .await
    {
        Ok(r) => {
            let r = r.into_inner();
            let mr = r.kvs.first().map_or(0, |kv| kv.mod_revision);
            let mut op = event(
                p,
                OpType::Ok,
                F::from("k-get"),
                Some(&key),
                Value::Int(mr),
                node,
            );
            op.revision = r.header.map(|h| h.revision);
            ctx.rec.record(op);
            mr
        }
        Err(e) => {
            let (kind, err) = failure_completion(&e, false);
            ctx.rec.record(
                event(p, kind, F::from("k-get"), Some(&key), Value::Null, node).with_error(err),
            );
            return;
        }
    };
    let value = format!("o{w}-{n}");
    let (f, op) = if seen == 0 {
        (
            "k-create",
            request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            }),
        )
    } else if rng.random_bool(0.8) {
        (
            "k-update",
            request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            }),
        )
    } else {
        (
            "k-delete",
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }),
        )
    };
    let arg = map(vec![
        ("value", Value::Str(value)),
        ("expect", Value::Int(seen)),
    ]);
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::from(f),
        Some(&key),
        arg.clone(),
        node,
    ));
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(seen)),
            ..Default::default()
        }],
        success: vec![RequestOp { request: Some(op) }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(range(&key, None, 0))),
        }],
    };
    match timed(ctx.op_timeout, async { kv.txn(req).await }).await {
        Ok(r) => {
            let r = r.into_inner();
            let kind = if r.succeeded {
                OpType::Ok
            } else {
                OpType::Fail
            };
            let mut op = event(p, kind, F::from(f), Some(&key), arg, node);
            op.revision = r.header.map(|h| h.revision);
            ctx.rec.record(op);
        }
        Err(e) => {
            let (kind, err) = failure_completion(&e, true);
            ctx.rec
                .record(event(p, kind, F::from(f), Some(&key), arg, node).with_error(err));
            if kind == OpType::Info {
                p.crashed();
            }
        }
    }
}

async fn compact(ctx: &Ctx, kv: &mut KvClient<Channel>, p: &mut Proc, node: usize) {
    let Ok((_, current)) = list(kv, 0, ctx.op_timeout).await else {
        return;
    };
    let target = current - 10;
    if target <= 1 {
        return;
    }
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::from("compact"),
        None,
        Value::Int(target),
        node,
    ));
    let req = CompactionRequest {
        revision: target,
        physical: false,
    };
    match timed(ctx.op_timeout, async { kv.compact(req).await }).await {
        Ok(_) => {
            ctx.rec.record(event(
                p,
                OpType::Ok,
                F::from("compact"),
                None,
                Value::Int(target),
                node,
            ));
        }
        Err(e) => {
            let (kind, err) = failure_completion(&e, true);
            ctx.rec.record(
                event(p, kind, F::from("compact"), None, Value::Int(target), node).with_error(err),
            );
            if kind == OpType::Info {
                p.crashed();
            }
        }
    }
}

/// One informer session: list (or, like a reflector re-watching, resume from the cache of the
/// previous session after a pause), watch from the next revision, list again where the cache
/// is. Returns the cache to resume from, or `None` to relist (after an error or a compaction
/// cancel).
async fn informer(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    p: &mut Proc,
    node: usize,
    rng: &mut StdRng,
    previous: Option<(Items, i64)>,
) -> Option<(Items, i64)> {
    let (mut cache, listed_at) = match previous {
        Some(prev) if rng.random_bool(0.6) => {
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
            prev
        }
        _ => {
            ctx.rec.record(event(
                p,
                OpType::Invoke,
                F::from("list"),
                None,
                Value::Null,
                node,
            ));
            match list(kv, 0, ctx.op_timeout).await {
                Ok((items, rev)) => {
                    let mut op = event(
                        p,
                        OpType::Ok,
                        F::from("list"),
                        None,
                        items_value(&items),
                        node,
                    );
                    op.revision = Some(rev);
                    ctx.rec.record(op);
                    (items, rev)
                }
                Err(err) => {
                    ctx.rec.record(
                        event(p, OpType::Fail, F::from("list"), None, Value::Null, node)
                            .with_error(err),
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return None;
                }
            }
        }
    };

    let start = listed_at + 1;
    ctx.rec.record(event(
        p,
        OpType::Invoke,
        F::from("informer"),
        None,
        map(vec![("start", Value::Int(start))]),
        node,
    ));
    let until = Instant::now() + Duration::from_millis(rng.random_range(2_000..6_000));
    let (mut tx, rx) = futures::channel::mpsc::channel::<WatchRequest>(WATCH_REQUEST_QUEUE);
    let _ = tx.try_send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: PREFIX.as_bytes().to_vec(),
                range_end: RANGE_END.as_bytes().to_vec(),
                start_revision: start,
                ..Default::default()
            },
        )),
    });
    let mut high = listed_at;
    let mut created = 0i64;
    let mut events = 0i64;
    let mut regressions = 0i64;
    let mut canceled = Value::Null;
    let mut error: Option<String> = None;
    let mut client = WatchClient::new(channel(node));
    match timed(Duration::from_secs(2), async { client.watch(rx).await }).await {
        Err(e) => {
            error = Some(match e {
                None => "timeout opening the stream".into(),
                Some(s) => crate::client::error_label(&s),
            })
        }
        Ok(s) => {
            let stream = s.into_inner();
            futures::pin_mut!(stream);
            let mut stop = ctx.stop.clone();
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        None => { error = Some("stream closed".into()); break; }
                        Some(Err(s)) => { error = Some(crate::client::error_label(&s)); break; }
                        Some(Ok(resp)) => {
                            if resp.created {
                                created += 1;
                            }
                            if resp.canceled {
                                canceled = Value::Int(resp.compact_revision);
                                break;
                            }
                            for e in &resp.events {
                                let kv = e.kv.clone().unwrap_or_default();
                                let key = String::from_utf8_lossy(&kv.key).into_owned();
                                events += 1;
                                if cache.get(&key).is_some_and(|(_, r)| *r >= kv.mod_revision) {
                                    regressions += 1;
                                }
                                high = high.max(kv.mod_revision);
                                if e.r#type == EventType::Delete as i32 {
                                    cache.remove(&key);
                                } else {
                                    cache.insert(key, (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision));
                                }
                            }
                        }
                    },
                    _ = tokio::time::sleep_until(until.into()) => break,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
    }
    drop(tx);
    let mut fields = vec![
        ("start", Value::Int(start)),
        ("revision", Value::Int(high)),
        ("created", Value::Int(created)),
        ("events", Value::Int(events)),
        ("mod-revision-regressions", Value::Int(regressions)),
        ("canceled", canceled.clone()),
    ];
    if let Some(err) = error {
        ctx.rec.record(
            event(
                p,
                OpType::Fail,
                F::from("informer"),
                None,
                map(fields),
                node,
            )
            .with_error(err),
        );
        return None;
    }
    if canceled.is_null() {
        // What the cache must equal: the list at the revision it reached.
        match list(kv, high, ctx.op_timeout).await {
            Ok((at_high, _)) => {
                fields.push(("cache", items_value(&cache)));
                fields.push(("list", items_value(&at_high)));
            }
            Err(err) => {
                ctx.rec.record(
                    event(
                        p,
                        OpType::Fail,
                        F::from("informer"),
                        None,
                        map(fields),
                        node,
                    )
                    .with_error(err),
                );
                return None;
            }
        }
    }
    ctx.rec.record(event(
        p,
        OpType::Ok,
        F::from("informer"),
        None,
        map(fields),
        node,
    ));
    canceled.is_null().then_some((cache, high))
}

/// After healing: the prefix listed on every member at one revision (the first member's), each
/// attempt recorded as `final-list`.
pub async fn final_lists(ctx: &Ctx, nodes: &[usize], limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut at = 0i64;
    for (i, &node) in nodes.iter().enumerate() {
        let mut kv = KvClient::new(channel(node));
        let p = Proc::new(3_000_000 + i, nodes.len());
        loop {
            ctx.rec.record(event(
                &p,
                OpType::Invoke,
                F::from("final-list"),
                None,
                Value::Null,
                node,
            ));
            match list(&mut kv, at, ctx.op_timeout).await {
                Ok((items, rev)) => {
                    if at == 0 {
                        at = rev;
                    }
                    let mut op = event(
                        &p,
                        OpType::Ok,
                        F::from("final-list"),
                        None,
                        items_value(&items),
                        node,
                    );
                    op.revision = Some(at);
                    ctx.rec.record(op);
                    break;
                }
                Err(err) => {
                    ctx.rec.record(
                        event(
                            &p,
                            OpType::Fail,
                            F::from("final-list"),
                            None,
                            Value::Null,
                            node,
                        )
                        .with_error(err),
                    );
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
}
