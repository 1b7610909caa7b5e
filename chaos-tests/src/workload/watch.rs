//! The watch workload: writers change keys under `w/` while watchers follow the prefix.
//!
//! Writers (even workers) do `put` (unique values), `mput` (a Txn putting two keys at one
//! revision, to check atomic delivery) and `delete`. Watchers (odd workers) run *sessions*: a
//! Watch stream on `w/` from a start revision (the first session from revision 1, every later one
//! from one past the last event or progress notification seen — a resume), with `prev_kv` on every
//! other watcher, a progress request every second (unless `--watch-progress off`), ending after
//! 2–8 s, on an error, or when nothing arrives for 3 s. After an ended session the watcher moves to the next member.
//!
//! History: a session is one operation `f = "watch"`, invoked with `{"start": S, "prev-kv": b}`
//! and completed (`ok` when the harness ended it, `fail` with an error otherwise) with
//! `{"start", "prev-kv", "responses": [{"rev": header revision, "events": [[rev, key, type,
//! value, prev-value], ...]} | {"rev": R, "progress": true}]}`. After the run: `final-read`
//! (Range of the prefix, `value` = key → value, `revision` = store revision) and `final-watch`
//! (a session from revision 1 up to that revision) — the reference history the checker compares
//! every session and every acknowledged write against.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, request_op, watch_request,
};
use skiff_proto::mvccpb::event::EventType;

use super::Ctx;
use crate::client::{Proc, channel, event, failure_completion, timed};
use crate::history::{F, OpType, Value};

/// The watched prefix.
pub const PREFIX: &str = "w/";
const RANGE_END: &str = "w0";
const KEYS: u64 = 8;

static NEXT_VALUE: AtomicU64 = AtomicU64::new(1);

/// Requests (create, progress) queued on one watch stream; the workload sends a handful.
const WATCH_REQUEST_QUEUE: usize = 64;

fn unique_value() -> String {
    format!("v{}", NEXT_VALUE.fetch_add(1, Ordering::Relaxed))
}

/// One worker: writers are even, watchers odd.
pub async fn worker(ctx: Ctx, w: usize) {
    if w.is_multiple_of(2) {
        writer(ctx, w).await
    } else {
        watcher(ctx, w).await
    }
}

async fn writer(ctx: Ctx, w: usize) {
    let node = ctx.node_of(w);
    let mut kv = KvClient::new(channel(node));
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (w as u64).wrapping_mul(0x2545_f491));
    let mut p = Proc::new(w, ctx.workers);
    while !ctx.stopped() {
        let roll = rng.random_range(0..10);
        let k1 = format!("{PREFIX}{}", rng.random_range(0..KEYS));
        let (f, value, req): (F, Value, TxnRequest) = if roll < 7 {
            let v = unique_value();
            (F::Put, Value::Str(v.clone()), txn_of(vec![put_op(&k1, &v)]))
        } else if roll < 9 {
            let mut k2 = format!("{PREFIX}{}", rng.random_range(0..KEYS));
            if k2 == k1 {
                k2 = format!(
                    "{PREFIX}{}",
                    (rng.random_range(1..KEYS) + key_index(&k1)) % KEYS
                );
            }
            let (v1, v2) = (unique_value(), unique_value());
            (
                F::from("mput"),
                Value::List(vec![
                    Value::List(vec![Value::Str(k1.clone()), Value::Str(v1.clone())]),
                    Value::List(vec![Value::Str(k2.clone()), Value::Str(v2.clone())]),
                ]),
                txn_of(vec![put_op(&k1, &v1), put_op(&k2, &v2)]),
            )
        } else {
            (
                F::from("delete"),
                Value::Null,
                txn_of(vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: k1.as_bytes().to_vec(),
                            ..Default::default()
                        },
                    )),
                }]),
            )
        };
        let key = if f == F::from("mput") {
            None
        } else {
            Some(k1.as_str())
        };
        ctx.rec.record(event(
            &p,
            OpType::Invoke,
            f.clone(),
            key,
            value.clone(),
            node,
        ));
        match timed(ctx.op_timeout, async { kv.txn(req).await }).await {
            Ok(r) => {
                let r = r.into_inner();
                let value = if f == F::from("delete") {
                    let deleted = r.responses.first().and_then(|x| match &x.response {
                        Some(
                            skiff_proto::etcdserverpb::response_op::Response::ResponseDeleteRange(
                                d,
                            ),
                        ) => Some(d.deleted),
                        _ => None,
                    });
                    Value::Int(deleted.unwrap_or(-1))
                } else {
                    value
                };
                let mut op = event(&p, OpType::Ok, f, key, value, node);
                op.revision = r.header.map(|h| h.revision);
                ctx.rec.record(op);
            }
            Err(e) => {
                let (kind, err) = failure_completion(&e, true);
                ctx.rec
                    .record(event(&p, kind, f, key, value, node).with_error(err));
                if kind == OpType::Info {
                    p.crashed();
                }
            }
        }
        ctx.pace(&mut rng).await;
    }
}

fn key_index(k: &str) -> u64 {
    k.trim_start_matches(PREFIX).parse().unwrap_or(0)
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn txn_of(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    }
}

/// How a session ended.
struct Session {
    responses: Vec<Value>,
    /// Highest revision known delivered (last event or progress notification).
    high: i64,
    /// Highest event revision received.
    high_event: i64,
    error: Option<String>,
}

/// Runs one watch session on `node` from `start` until `until` (or an error, a 3 s stall, or
/// `done_at` = stop once an event at or above this revision arrived). With `progress`, a progress
/// notification is requested every second.
async fn session(
    node: usize,
    start: i64,
    prev_kv: bool,
    progress: bool,
    until: Instant,
    done_at: Option<i64>,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> Session {
    let mut out = Session {
        responses: Vec::new(),
        high: start - 1,
        high_event: start - 1,
        error: None,
    };
    let (mut tx, rx) = futures::channel::mpsc::channel::<WatchRequest>(WATCH_REQUEST_QUEUE);
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: PREFIX.as_bytes().to_vec(),
                range_end: RANGE_END.as_bytes().to_vec(),
                start_revision: start,
                prev_kv,
                ..Default::default()
            },
        )),
    };
    let _ = tx.try_send(create);
    let mut client = WatchClient::new(channel(node));
    let stream = match timed(Duration::from_secs(2), async { client.watch(rx).await }).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            out.error = Some(match e {
                None => "timeout opening the stream".into(),
                Some(s) => crate::client::error_label(&s),
            });
            return out;
        }
    };
    futures::pin_mut!(stream);
    let mut last_msg = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stop = stop;
    loop {
        if Instant::now() >= until {
            break;
        }
        if let Some(d) = done_at
            && out.high_event >= d
        {
            break;
        }
        if stop.as_ref().is_some_and(|s| *s.borrow()) {
            break;
        }
        // Without progress requests an idle stream is normal: only a silent stream that owes
        // events (done_at not reached) counts as stalled then, after 5 s.
        let stall = if progress { 3 } else { 5 };
        if last_msg.elapsed() > Duration::from_secs(stall) && (progress || done_at.is_some()) {
            out.error = Some(format!("stalled: nothing for {stall} s"));
            break;
        }
        let stop_fut = async {
            match stop.as_mut() {
                Some(s) => {
                    let _ = s.wait_for(|v| *v).await;
                }
                None => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            msg = stream.next() => {
                match msg {
                    None => { out.error = Some("stream closed".into()); break; }
                    Some(Err(s)) => { out.error = Some(crate::client::error_label(&s)); break; }
                    Some(Ok(resp)) => {
                        last_msg = Instant::now();
                        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
                        if resp.canceled {
                            out.error = Some(format!("canceled: {} (compact revision {})", resp.cancel_reason, resp.compact_revision));
                            break;
                        }
                        if resp.created && resp.events.is_empty() {
                            continue;
                        }
                        if resp.events.is_empty() {
                            out.high = out.high.max(rev);
                            out.responses.push(Value::Map(BTreeMap::from([
                                ("rev".to_owned(), Value::Int(rev)),
                                ("progress".to_owned(), Value::Bool(true)),
                            ])));
                            continue;
                        }
                        let events: Vec<Value> = resp.events.iter().map(|e| {
                            let kv = e.kv.clone().unwrap_or_default();
                            out.high = out.high.max(kv.mod_revision);
                            out.high_event = out.high_event.max(kv.mod_revision);
                            let kind = if e.r#type == EventType::Delete as i32 { "delete" } else { "put" };
                            let prev = e.prev_kv.as_ref().map_or(Value::Null, |p| Value::Str(String::from_utf8_lossy(&p.value).into_owned()));
                            Value::List(vec![
                                Value::Int(kv.mod_revision),
                                Value::Str(String::from_utf8_lossy(&kv.key).into_owned()),
                                Value::Str(kind.into()),
                                if kind == "put" { Value::Str(String::from_utf8_lossy(&kv.value).into_owned()) } else { Value::Null },
                                prev,
                            ])
                        }).collect();
                        out.responses.push(Value::Map(BTreeMap::from([
                            ("rev".to_owned(), Value::Int(rev)),
                            ("events".to_owned(), Value::List(events)),
                        ])));
                    }
                }
            }
            _ = tick.tick(), if progress => {
                let _ = tx.try_send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
                });
            }
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = stop_fut => {}
        }
    }
    out
}

fn session_value(start: i64, prev_kv: bool, s: Option<&Session>) -> Value {
    let mut m = BTreeMap::from([
        ("start".to_owned(), Value::Int(start)),
        ("prev-kv".to_owned(), Value::Bool(prev_kv)),
    ]);
    if let Some(s) = s {
        m.insert("responses".into(), Value::List(s.responses.clone()));
    }
    Value::Map(m)
}

async fn watcher(ctx: Ctx, w: usize) {
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (w as u64).wrapping_mul(0x1234_5679));
    let p = Proc::new(w, ctx.workers);
    let prev_kv = (w / 2).is_multiple_of(2);
    let mut next = 1i64;
    let mut node_i = w;
    while !ctx.stopped() {
        let node = ctx.node_of(node_i);
        ctx.rec.record(event(
            &p,
            OpType::Invoke,
            F::from("watch"),
            None,
            session_value(next, prev_kv, None),
            node,
        ));
        let until = Instant::now() + Duration::from_millis(rng.random_range(2_000..8_000));
        let s = session(
            node,
            next,
            prev_kv,
            ctx.watch_progress,
            until,
            None,
            Some(ctx.stop.clone()),
        )
        .await;
        let kind = if s.error.is_some() {
            OpType::Fail
        } else {
            OpType::Ok
        };
        let mut op = event(
            &p,
            kind,
            F::from("watch"),
            None,
            session_value(next, prev_kv, Some(&s)),
            node,
        );
        op.error = s.error.clone();
        ctx.rec.record(op);
        next = next.max(s.high + 1);
        if s.error.is_some() {
            node_i += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// After healing: the final Range of the prefix and the complete event history from revision 1,
/// from the first member that can give both within `limit`.
pub async fn final_history(ctx: &Ctx, nodes: &[usize], limit: Duration) {
    let deadline = Instant::now() + limit;
    let p = Proc::new(2_000_000, 1);
    let mut i = 0;
    while Instant::now() < deadline {
        let node = nodes[i % nodes.len()];
        i += 1;
        let mut kv = KvClient::new(channel(node));
        ctx.rec.record(event(
            &p,
            OpType::Invoke,
            F::from("final-read"),
            None,
            Value::Null,
            node,
        ));
        let req = RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: RANGE_END.as_bytes().to_vec(),
            ..Default::default()
        };
        let r = match timed(ctx.op_timeout, async { kv.range(req).await }).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                let (_, err) = failure_completion(&e, false);
                ctx.rec.record(
                    event(
                        &p,
                        OpType::Fail,
                        F::from("final-read"),
                        None,
                        Value::Null,
                        node,
                    )
                    .with_error(err),
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        let rev = r.header.map_or(0, |h| h.revision);
        let map: BTreeMap<String, Value> = r
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    Value::Str(String::from_utf8_lossy(&kv.value).into_owned()),
                )
            })
            .collect();
        let mut op = event(
            &p,
            OpType::Ok,
            F::from("final-read"),
            None,
            Value::Map(map),
            node,
        );
        op.revision = Some(rev);
        ctx.rec.record(op);
        ctx.rec.record(event(
            &p,
            OpType::Invoke,
            F::from("final-watch"),
            None,
            session_value(1, true, None),
            node,
        ));
        let until = Instant::now() + Duration::from_secs(20).min(deadline - Instant::now());
        // Done on events only: a progress notification is what is being checked, not trusted.
        let s = session(node, 1, true, false, until, Some(rev), None).await;
        let complete = s.high_event >= rev || rev <= 1;
        let kind = if complete { OpType::Ok } else { OpType::Fail };
        let mut op = event(
            &p,
            kind,
            F::from("final-watch"),
            None,
            session_value(1, true, Some(&s)),
            node,
        );
        op.revision = Some(rev);
        if !complete {
            op.error = Some(
                s.error
                    .unwrap_or_else(|| format!("incomplete: reached {} of {rev}", s.high_event)),
            );
        }
        ctx.rec.record(op);
        if complete {
            replica_sessions(ctx, nodes, node, rev, deadline).await;
            return;
        }
    }
}

/// After the reference history: one more session from revision 1 up to `rev` on every other
/// member, recorded as an ordinary `watch`, so every replica's history is checked against the
/// reference (a member whose records diverge — a lost or extra revision — is caught even if no
/// session happened to cover the gap during the run).
async fn replica_sessions(ctx: &Ctx, nodes: &[usize], done: usize, rev: i64, deadline: Instant) {
    for (i, &node) in nodes.iter().filter(|&&n| n != done).enumerate() {
        let p = Proc::new(2_000_001 + i, 1);
        ctx.rec.record(event(
            &p,
            OpType::Invoke,
            F::from("watch"),
            None,
            session_value(1, true, None),
            node,
        ));
        let left = deadline.saturating_duration_since(Instant::now());
        let until = Instant::now() + Duration::from_secs(10).min(left);
        let s = session(node, 1, true, false, until, Some(rev), None).await;
        let complete = s.high_event >= rev || rev <= 1;
        let kind = if complete { OpType::Ok } else { OpType::Fail };
        let mut op = event(
            &p,
            kind,
            F::from("watch"),
            None,
            session_value(1, true, Some(&s)),
            node,
        );
        if !complete {
            op.error = Some(
                s.error
                    .unwrap_or_else(|| format!("incomplete: reached {} of {rev}", s.high_event)),
            );
        }
        ctx.rec.record(op);
    }
}
