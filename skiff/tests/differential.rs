//! Differential test: the same KV requests go to a single-member skiff cluster and to a real
//! etcd, and every response must be identical (headers' cluster_id, member_id and raft_term
//! aside), errors included: same gRPC code, same message.
//!
//! A fixed list of edge cases runs first, then a seeded random sequence over a small key
//! space. `SKIFF_DIFF_SEED` and `SKIFF_DIFF_OPS` override the seed and the number of random
//! operations; `SKIFF_DIFF_KEEP_GOING=1` logs every mismatch instead of stopping at the
//! first one (the two stores may diverge after a mismatched write); `SKIFF_DIFF_TRACE=1`
//! prints every request with etcd's answer.
//!
//! Watches ride along: the same watch streams (ranges, prev_kv, filters, explicit IDs,
//! historical, future and compacted start revisions) are opened on both servers before and
//! during the sequence, and what they received is compared at the end: control responses
//! exactly, events per watcher in order (response boundaries may differ; skiff must keep a
//! revision's events in one response).
//!
//! Leases too: grants with client-chosen IDs from a small ID space (so grants of existing
//! IDs happen) and TTLs long enough to outlive the run (short ones, raised to the minimum,
//! only in fixed scenarios that revoke them at once), revokes (whose deletes the following
//! ops and the watches see), TimeToLive with keys, Leases, single keep-alives, and puts
//! (plain and in txns) attached to granted, revoked and unknown leases. TimeToLive's
//! remaining TTL depends on when each server started the lease's clock: it only has to
//! agree within `TTL_SLACK` seconds.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use common::{Cluster, RealEtcd};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::lease_client::LeaseClient;
use skiff_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use skiff_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, request_op, response_op,
};
use skiff_proto::mvccpb::KeyValue;
use tonic::transport::Channel;

use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::watch_create_request::FilterType;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use skiff_proto::mvccpb::Event;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

const DEFAULT_SEED: u64 = 0x5c1f_f00d;
const DEFAULT_OPS: usize = 1500;

/// The key space: shared prefixes, NUL bytes (the smallest key, and inside a key), 0xff bytes.
const KEYS: &[&[u8]] = &[
    b"a",
    b"ab",
    b"abc",
    b"abd",
    b"a\xff",
    b"b",
    b"b\0",
    b"ba",
    b"c",
    b"z",
    b"\xff",
    b"\xff\xff",
    b"\0",
];

/// The lease ID space of the random sequence (a negative ID and the largest one are as
/// valid as any other non-zero ID in etcd). At most 16 IDs (`Tracker::leases`).
const LEASE_IDS: &[i64] = &[1, 2, 3, 4, 5, 6, i64::MAX, -3];

/// Stands for the ID a server picked at the last grant with ID 0 (see `Side`).
const AUTO_LEASE: i64 = i64::MIN;

/// etcd's `MaxLeaseTTL`.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How far apart (in seconds) the two servers' remaining TTLs of a lease may be.
const TTL_SLACK: i64 = 3;

#[derive(Clone, Debug)]
enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    LeaseLeases,
    /// One request on the side's keep-alive stream, and its answer.
    LeaseKeepAlive(LeaseKeepAliveRequest),
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Range(_) => "range",
            Op::Put(_) => "put",
            Op::Delete(_) => "delete",
            Op::Txn(_) => "txn",
            Op::Compact(_) => "compact",
            Op::LeaseGrant(_) => "grant",
            Op::LeaseRevoke(_) => "revoke",
            Op::LeaseTimeToLive(_) => "ttl",
            Op::LeaseLeases => "leases",
            Op::LeaseKeepAlive(_) => "keepalive",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    LeaseLeases(LeaseLeasesResponse),
    LeaseKeepAlive(LeaseKeepAliveResponse),
}

impl Reply {
    fn header(&self) -> Option<&ResponseHeader> {
        match self {
            Reply::Range(r) => r.header.as_ref(),
            Reply::Put(r) => r.header.as_ref(),
            Reply::Delete(r) => r.header.as_ref(),
            Reply::Txn(r) => r.header.as_ref(),
            Reply::Compact(r) => r.header.as_ref(),
            Reply::LeaseGrant(r) => r.header.as_ref(),
            Reply::LeaseRevoke(r) => r.header.as_ref(),
            Reply::LeaseTimeToLive(r) => r.header.as_ref(),
            Reply::LeaseLeases(r) => r.header.as_ref(),
            Reply::LeaseKeepAlive(r) => r.header.as_ref(),
        }
    }

    fn header_mut(&mut self) -> Option<&mut ResponseHeader> {
        match self {
            Reply::Range(r) => r.header.as_mut(),
            Reply::Put(r) => r.header.as_mut(),
            Reply::Delete(r) => r.header.as_mut(),
            Reply::Txn(r) => r.header.as_mut(),
            Reply::Compact(r) => r.header.as_mut(),
            Reply::LeaseGrant(r) => r.header.as_mut(),
            Reply::LeaseRevoke(r) => r.header.as_mut(),
            Reply::LeaseTimeToLive(r) => r.header.as_mut(),
            Reply::LeaseLeases(r) => r.header.as_mut(),
            Reply::LeaseKeepAlive(r) => r.header.as_mut(),
        }
    }
}

/// A response, or the gRPC code and message of an error.
type Outcome = Result<Reply, (tonic::Code, String)>;

/// One server's clients, and what the sequence needs to remember about that server.
struct Side {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    /// Opened at the first keep-alive (a server sends nothing, not even headers, before
    /// its first answer); dropped when it fails.
    keep_alive: Option<KeepAliveStream>,
    /// The ID this server picked at the last grant with ID 0: `AUTO_LEASE` in requests
    /// stands for it, and it shows as `AUTO_LEASE` in answers.
    auto_lease: Option<i64>,
}

struct KeepAliveStream {
    requests: tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
    responses: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl Side {
    async fn connect(endpoint: &str) -> Side {
        let channel = Channel::from_shared(format!("http://{endpoint}"))
            .expect("endpoint URL")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
        Side {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel),
            keep_alive: None,
            auto_lease: None,
        }
    }

    /// `AUTO_LEASE` in a request: this server's pick at the last grant with ID 0.
    fn resolve(&self, id: i64) -> i64 {
        match (id, self.auto_lease) {
            (AUTO_LEASE, Some(auto)) => auto,
            _ => id,
        }
    }

    /// This server's pick at the last grant with ID 0, in an answer: `AUTO_LEASE`.
    fn unresolve(&self, id: i64) -> i64 {
        if Some(id) == self.auto_lease {
            AUTO_LEASE
        } else {
            id
        }
    }

    async fn keep_alive(&mut self, req: LeaseKeepAliveRequest) -> Result<Reply, tonic::Status> {
        let unsent = match &self.keep_alive {
            Some(stream) => stream.requests.send(req).await.err().map(|e| e.0),
            None => Some(req),
        };
        if let Some(req) = unsent {
            // No stream yet, or the server ended it: open one with this request queued.
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(req).await.expect("queue keep-alive");
            self.keep_alive = None;
            let responses = self
                .lease
                .lease_keep_alive(ReceiverStream::new(rx))
                .await?
                .into_inner();
            self.keep_alive = Some(KeepAliveStream {
                requests: tx,
                responses,
            });
        }
        let stream = self.keep_alive.as_mut().expect("keep-alive stream");
        let answer = tokio::time::timeout(Duration::from_secs(10), stream.responses.message())
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(
                    "test: no keep-alive answer in 10 s",
                ))
            });
        match answer {
            Ok(Some(response)) => Ok(Reply::LeaseKeepAlive(response)),
            Ok(None) => {
                self.keep_alive = None;
                Err(tonic::Status::unknown("test: keep-alive stream ended"))
            }
            Err(status) => {
                self.keep_alive = None;
                Err(status)
            }
        }
    }
}

async fn exec(side: &mut Side, op: &Op) -> Outcome {
    let client = &mut side.kv;
    let result = match op.clone() {
        Op::Range(r) => client.range(r).await.map(|x| Reply::Range(x.into_inner())),
        Op::Put(r) => client.put(r).await.map(|x| Reply::Put(x.into_inner())),
        Op::Delete(r) => client
            .delete_range(r)
            .await
            .map(|x| Reply::Delete(x.into_inner())),
        Op::Txn(r) => client.txn(r).await.map(|x| Reply::Txn(x.into_inner())),
        Op::Compact(r) => client
            .compact(r)
            .await
            .map(|x| Reply::Compact(x.into_inner())),
        Op::LeaseGrant(r) => {
            let auto = r.id == 0;
            match side.lease.lease_grant(r).await {
                Ok(x) => {
                    let mut response = x.into_inner();
                    // The server's pick must be positive; anything else shows as itself.
                    if auto && response.id > 0 {
                        side.auto_lease = Some(response.id);
                        response.id = AUTO_LEASE;
                    }
                    Ok(Reply::LeaseGrant(response))
                }
                Err(status) => Err(status),
            }
        }
        Op::LeaseRevoke(r) => {
            let req = LeaseRevokeRequest {
                id: side.resolve(r.id),
            };
            side.lease
                .lease_revoke(req)
                .await
                .map(|x| Reply::LeaseRevoke(x.into_inner()))
        }
        Op::LeaseTimeToLive(r) => {
            let req = LeaseTimeToLiveRequest {
                id: side.resolve(r.id),
                ..r
            };
            match side.lease.lease_time_to_live(req).await {
                Ok(x) => {
                    let mut response = x.into_inner();
                    response.id = side.unresolve(response.id);
                    Ok(Reply::LeaseTimeToLive(response))
                }
                Err(status) => Err(status),
            }
        }
        Op::LeaseLeases => match side.lease.lease_leases(LeaseLeasesRequest {}).await {
            Ok(x) => {
                let mut response = x.into_inner();
                for lease in &mut response.leases {
                    lease.id = side.unresolve(lease.id);
                }
                Ok(Reply::LeaseLeases(response))
            }
            Err(status) => Err(status),
        },
        Op::LeaseKeepAlive(r) => {
            let req = LeaseKeepAliveRequest {
                id: side.resolve(r.id),
            };
            match side.keep_alive(req).await {
                Ok(Reply::LeaseKeepAlive(mut response)) => {
                    response.id = side.unresolve(response.id);
                    Ok(Reply::LeaseKeepAlive(response))
                }
                other => other,
            }
        }
    };
    result.map_err(|status| (status.code(), status.message().to_string()))
}

/// Make two servers' outcomes comparable: zero the top-level header's server identity and
/// put kvs that tie under a non-key sort target into key order (Go's sort is not stable).
/// Inner headers (inside a Txn) are left untouched: they must match exactly.
fn normalize(op: &Op, mut outcome: Outcome) -> Outcome {
    if let Ok(reply) = &mut outcome {
        if let Some(h) = reply.header_mut() {
            h.cluster_id = 0;
            h.member_id = 0;
            h.raft_term = 0;
        }
        match (op, reply) {
            (Op::Range(req), Reply::Range(resp)) => canon_range(req, resp),
            (Op::Txn(req), Reply::Txn(resp)) => canon_txn(req, resp),
            // etcd lists a lease's keys in map order, and leases by expiry.
            (_, Reply::LeaseTimeToLive(resp)) => resp.keys.sort(),
            (_, Reply::LeaseLeases(resp)) => resp.leases.sort_by_key(|l| l.id),
            _ => {}
        }
    }
    outcome
}

/// A lease's remaining TTL depends on when each server started (or restarted) its clock:
/// two answers within `TTL_SLACK` seconds of each other count as equal. An unknown lease
/// (-1) must be unknown on both.
fn excuse_ttl_drift(ours: &mut Outcome, theirs: &Outcome) {
    if let (Ok(Reply::LeaseTimeToLive(a)), Ok(Reply::LeaseTimeToLive(b))) = (ours, theirs)
        && a.ttl >= 0
        && b.ttl >= 0
        && (a.ttl - b.ttl).abs() <= TTL_SLACK
    {
        a.ttl = b.ttl;
    }
}

fn canon_txn(req: &TxnRequest, resp: &mut TxnResponse) {
    let ops = if resp.succeeded {
        &req.success
    } else {
        &req.failure
    };
    for (op, r) in ops.iter().zip(resp.responses.iter_mut()) {
        match (&op.request, &mut r.response) {
            (
                Some(request_op::Request::RequestRange(q)),
                Some(response_op::Response::ResponseRange(p)),
            ) => canon_range(q, p),
            (
                Some(request_op::Request::RequestTxn(q)),
                Some(response_op::Response::ResponseTxn(p)),
            ) => canon_txn(q, p),
            _ => {}
        }
    }
}

/// The field a range is sorted by, for targets other than KEY.
fn sort_projection(target: SortTarget, kv: &KeyValue) -> (i64, Vec<u8>) {
    match target {
        SortTarget::Version => (kv.version, Vec::new()),
        SortTarget::Create => (kv.create_revision, Vec::new()),
        SortTarget::Mod => (kv.mod_revision, Vec::new()),
        SortTarget::Value => (0, kv.value.clone()),
        SortTarget::Key => (0, kv.key.clone()),
    }
}

fn canon_range(req: &RangeRequest, resp: &mut RangeResponse) {
    let Ok(target) = SortTarget::try_from(req.sort_target) else {
        return;
    };
    if target == SortTarget::Key || resp.kvs.len() < 2 {
        return;
    }
    let kvs = &mut resp.kvs;
    let n = kvs.len();
    let mut i = 0;
    while i < n {
        let p = sort_projection(target, &kvs[i]);
        let mut j = i + 1;
        while j < n && sort_projection(target, &kvs[j]) == p {
            j += 1;
        }
        kvs[i..j].sort_by(|x, y| x.key.cmp(&y.key));
        if j == n && resp.more && j - i > 1 {
            // The limit cut a run of ties: which of them survived is up to the sort.
            for kv in &mut kvs[i..j] {
                *kv = KeyValue {
                    key: b"<one of several ties>".to_vec(),
                    version: if target == SortTarget::Version {
                        kv.version
                    } else {
                        0
                    },
                    create_revision: if target == SortTarget::Create {
                        kv.create_revision
                    } else {
                        0
                    },
                    mod_revision: if target == SortTarget::Mod {
                        kv.mod_revision
                    } else {
                        0
                    },
                    value: if target == SortTarget::Value {
                        kv.value.clone()
                    } else {
                        Vec::new()
                    },
                    lease: 0,
                };
            }
        }
        i = j;
    }
}

/// Debug output with byte lists shown as escaped byte strings.
fn show<T: Debug>(value: &T) -> String {
    let raw = format!("{value:?}");
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw.as_str();
    while let Some(pos) = rest.find('[') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let converted = after.find(']').and_then(|end| {
            let inner = &after[..end];
            if inner.is_empty() {
                return None;
            }
            let bytes: Option<Vec<u8>> = inner.split(", ").map(|n| n.parse::<u8>().ok()).collect();
            bytes.map(|b| (end, b))
        });
        match converted {
            Some((end, bytes)) => {
                out.push_str(&format!("b\"{}\"", bytes.escape_ascii()));
                rest = &after[end + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn show_outcome(outcome: &Outcome) -> String {
    match outcome {
        Ok(reply) => show(reply),
        Err((code, msg)) => format!("error {code:?}: {msg:?}"),
    }
}

/// Whether, within one branch (nested txns included), an ignore_value/ignore_lease put falls
/// inside a from-key delete (`range_end == "\0"`).
fn ignore_put_in_from_key_delete(ops: &[RequestOp]) -> bool {
    fn collect(ops: &[RequestOp], starts: &mut Vec<Vec<u8>>, puts: &mut Vec<Vec<u8>>) {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestDeleteRange(d)) if d.range_end == [0] => {
                    starts.push(d.key.clone())
                }
                Some(request_op::Request::RequestPut(p)) if p.ignore_value || p.ignore_lease => {
                    puts.push(p.key.clone())
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    collect(&t.success, starts, puts);
                    collect(&t.failure, starts, puts);
                }
                _ => {}
            }
        }
    }
    let (mut starts, mut puts) = (Vec::new(), Vec::new());
    collect(ops, &mut starts, &mut puts);
    puts.iter().any(|k| starts.iter().any(|s| k >= s))
}

/// Requests on which skiff deliberately differs from etcd 3.4, with the outcome skiff must
/// give; they are not sent to the real etcd (which would crash on some of them).
///
/// * etcd 3.4 does not validate `sort_order`/`sort_target`: an unknown order is ignored,
///   and an unknown target with a sort order panics the server (nil sorter). etcd 3.5
///   added `ErrGRPCInvalidSortOption` to `checkRangeRequest`; skiff reports 3.5 and does
///   the same.
/// * etcd's duplicate-key check takes a from-key delete `[k, "\0")` literally (it overlaps
///   nothing), so a txn may delete from `k` and then put a key above `k`. If that put has
///   ignore_value/ignore_lease and the delete removed its key, etcd panics mid-apply
///   ("unexpected error during txn: etcdserver: key not found"). skiff refuses such txns
///   up front as "duplicate key given in txn request" (plain puts stay accepted, as in etcd).
fn expected_divergence(op: &Op) -> Option<Outcome> {
    fn bad_sort(r: &RangeRequest) -> bool {
        SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err()
    }
    fn txn_bad_sort(t: &TxnRequest) -> bool {
        t.success
            .iter()
            .chain(t.failure.iter())
            .any(|op| match &op.request {
                Some(request_op::Request::RequestRange(r)) => bad_sort(r),
                Some(request_op::Request::RequestTxn(t)) => txn_bad_sort(t),
                _ => false,
            })
    }
    let invalid_sort = Err((
        tonic::Code::InvalidArgument,
        "etcdserver: invalid sort option".to_string(),
    ));
    match op {
        Op::Range(r) if !r.key.is_empty() && bad_sort(r) => Some(invalid_sort),
        Op::Txn(t) if txn_bad_sort(t) => Some(invalid_sort),
        Op::Txn(t)
            if ignore_put_in_from_key_delete(&t.success)
                || ignore_put_in_from_key_delete(&t.failure) =>
        {
            Some(Err((
                tonic::Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request".to_string(),
            )))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Request builders.

fn range(key: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn put(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn del(key: &[u8], end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

fn r_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

fn r_put(r: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(r)),
    }
}

fn r_del(r: DeleteRangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(r)),
    }
}

fn r_txn(r: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(r)),
    }
}

fn cmp(key: &[u8], target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        key: key.to_vec(),
        target: target as i32,
        result: result as i32,
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

fn compact(revision: i64) -> CompactionRequest {
    CompactionRequest {
        revision,
        physical: false,
    }
}

/// etcd's `GetPrefixRangeEnd`.
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// What the generators need to know about the store (taken from etcd's answers).
#[derive(Clone, Copy, Debug)]
struct Tracker {
    current: i64,
    compacted: i64,
    /// Which of `LEASE_IDS` are granted (bit i for `LEASE_IDS[i]`).
    leases: u16,
}

impl Tracker {
    fn observe(&mut self, op: &Op, outcome: &Outcome) {
        if let Ok(reply) = outcome {
            if let Some(h) = reply.header() {
                self.current = self.current.max(h.revision);
            }
            match op {
                Op::Compact(c) => self.compacted = self.compacted.max(c.revision),
                Op::LeaseGrant(g) => self.leases |= lease_bit(g.id),
                Op::LeaseRevoke(r) => self.leases &= !lease_bit(r.id),
                _ => {}
            }
        }
    }

    /// The IDs of `LEASE_IDS` that are granted (`live`) or not.
    fn leases(&self, live: bool) -> Vec<i64> {
        LEASE_IDS
            .iter()
            .copied()
            .filter(|id| (self.leases & lease_bit(*id) != 0) == live)
            .collect()
    }
}

fn lease_bit(id: i64) -> u16 {
    LEASE_IDS
        .iter()
        .position(|x| *x == id)
        .map_or(0, |i| 1 << i)
}

/// A named edge case whose request is built from the tracked revisions.
type Scenario = (&'static str, Box<dyn Fn(Tracker) -> Op>);

/// The fixed edge-case scenarios, run before the random sequence.
fn fixed_scenarios() -> Vec<Scenario> {
    use CompareResult as R;
    use CompareTarget as T;
    let mut v: Vec<Scenario> = Vec::new();
    macro_rules! add {
        ($name:expr, |$t:ident| $body:expr) => {
            v.push((
                $name,
                Box::new(move |$t: Tracker| {
                    let _ = $t;
                    $body
                }),
            ));
        };
    }
    // Compaction of a fresh store.
    add!("compact -1 on a fresh store", |t| Op::Compact(compact(-1)));
    add!("compact 0 on a fresh store", |t| Op::Compact(compact(0)));
    add!("compact 0 again", |t| Op::Compact(compact(0)));
    add!("compact 2 on a fresh store (future)", |t| Op::Compact(
        compact(2)
    ));
    // Empty keys everywhere.
    add!("put empty key", |t| Op::Put(put(b"", b"v")));
    add!("range empty key", |t| Op::Range(range(b"", b"")));
    add!("range empty key with end", |t| Op::Range(range(b"", b"z")));
    add!("delete empty key", |t| Op::Delete(del(b"", b"")));
    add!("txn compare empty key", |t| Op::Txn(txn(
        vec![cmp(b"", T::Version, R::Equal, TargetUnion::Version(0))],
        vec![],
        vec![]
    )));
    add!("txn put empty key", |t| Op::Txn(txn(
        vec![],
        vec![r_put(put(b"", b"v"))],
        vec![]
    )));
    add!("txn range empty key in failure", |t| Op::Txn(txn(
        vec![],
        vec![],
        vec![r_range(range(b"", b""))]
    )));
    add!("txn empty request op", |t| Op::Txn(txn(
        vec![],
        vec![RequestOp { request: None }],
        vec![]
    )));
    // Put flag validation.
    add!("put ignore_value missing key", |t| Op::Put(PutRequest {
        ignore_value: true,
        ..put(b"a", b"")
    }));
    add!("put ignore_value with value", |t| Op::Put(PutRequest {
        ignore_value: true,
        ..put(b"a", b"x")
    }));
    add!("put ignore_lease with lease", |t| Op::Put(PutRequest {
        ignore_lease: true,
        lease: 5,
        ..put(b"a", b"x")
    }));
    add!("put unknown lease", |t| Op::Put(PutRequest {
        lease: 5,
        ..put(b"a", b"x")
    }));
    // Sort option validation.
    add!("range sort_order 7", |t| Op::Range(RangeRequest {
        sort_order: 7,
        ..range(b"a", b"")
    }));
    add!("range sort_target 9", |t| Op::Range(RangeRequest {
        sort_order: 1,
        sort_target: 9,
        ..range(b"a", b"")
    }));
    add!("txn range sort_target 9", |t| Op::Txn(txn(
        vec![],
        vec![r_range(RangeRequest {
            sort_order: 1,
            sort_target: 9,
            ..range(b"a", b"")
        })],
        vec![]
    )));
    add!("range empty key and sort_order 7", |t| Op::Range(
        RangeRequest {
            sort_order: 7,
            ..range(b"", b"")
        }
    ));
    // Populate.
    for (k, val) in [
        (&b"a"[..], &b"1"[..]),
        (b"ab", b"2"),
        (b"abc", b"1"),
        (b"b", b""),
        (b"c", b"3"),
    ] {
        add!("populate", |t| Op::Put(put(k, val)));
    }
    add!("put same key again with prev_kv", |t| Op::Put(PutRequest {
        prev_kv: true,
        ..put(b"ab", b"22")
    }));
    add!("put ignore_value existing", |t| Op::Put(PutRequest {
        ignore_value: true,
        prev_kv: true,
        ..put(b"abc", b"")
    }));
    add!("put ignore_lease existing", |t| Op::Put(PutRequest {
        ignore_lease: true,
        prev_kv: true,
        ..put(b"abc", b"11")
    }));
    add!("range_end < key", |t| Op::Range(range(b"b", b"a")));
    add!("range_end == key", |t| Op::Range(range(b"b", b"b")));
    add!("range all from \\0", |t| Op::Range(range(b"\0", b"\0")));
    add!("range limit more", |t| Op::Range(RangeRequest {
        limit: 2,
        ..range(b"a", b"\0")
    }));
    add!("range limit exact", |t| Op::Range(RangeRequest {
        limit: 5,
        ..range(b"a", b"\0")
    }));
    add!("range negative limit", |t| Op::Range(RangeRequest {
        limit: -1,
        ..range(b"a", b"\0")
    }));
    add!("range count_only limit", |t| Op::Range(RangeRequest {
        limit: 1,
        count_only: true,
        ..range(b"a", b"\0")
    }));
    add!("range keys_only prefix", |t| Op::Range(RangeRequest {
        keys_only: true,
        ..range(b"a", b"b")
    }));
    add!("range sort target mod, order none, limit", |t| Op::Range(
        RangeRequest {
            limit: 2,
            sort_target: SortTarget::Mod as i32,
            ..range(b"a", b"\0")
        }
    ));
    add!("range sort target create descend, limit", |t| Op::Range(
        RangeRequest {
            limit: 2,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Create as i32,
            ..range(b"a", b"\0")
        }
    ));
    add!("range sort key descend limit", |t| Op::Range(
        RangeRequest {
            limit: 3,
            sort_order: SortOrder::Descend as i32,
            ..range(b"a", b"\0")
        }
    ));
    add!("range filters with limit", |t| Op::Range(RangeRequest {
        limit: 1,
        min_mod_revision: 4,
        max_create_revision: t.current,
        ..range(b"a", b"\0")
    }));
    add!("range future revision", |t| Op::Range(RangeRequest {
        revision: t.current + 1,
        ..range(b"a", b"")
    }));
    add!("range revision -1", |t| Op::Range(RangeRequest {
        revision: -1,
        ..range(b"a", b"")
    }));
    add!("range old revision", |t| Op::Range(RangeRequest {
        revision: 2,
        ..range(b"a", b"\0")
    }));
    // Deletes.
    add!("delete nothing", |t| Op::Delete(del(b"zz", b"")));
    add!("delete nothing range", |t| Op::Delete(DeleteRangeRequest {
        prev_kv: true,
        ..del(b"d", b"y")
    }));
    add!("delete range_end < key", |t| Op::Delete(del(b"c", b"a")));
    add!("delete prefix prev_kv", |t| Op::Delete(
        DeleteRangeRequest {
            prev_kv: true,
            ..del(b"ab", &prefix_end(b"ab"))
        }
    ));
    add!("range deleted key at old revision", |t| Op::Range(
        RangeRequest {
            revision: t.current - 1,
            ..range(b"ab", b"")
        }
    ));
    // Txns.
    add!("read-only txn", |t| Op::Txn(txn(
        vec![cmp(b"a", T::Version, R::Greater, TargetUnion::Version(0))],
        vec![r_range(range(b"a", b"\0"))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("read-only empty txn", |t| Op::Txn(txn(
        vec![],
        vec![],
        vec![]
    )));
    add!("txn read-your-writes", |t| Op::Txn(txn(
        vec![],
        vec![
            r_range(range(b"x", b"")),
            r_put(PutRequest {
                prev_kv: true,
                ..put(b"x", b"1")
            }),
            r_range(range(b"x", b"")),
            r_range(range(b"a", b"\0")),
        ],
        vec![]
    )));
    add!("txn delete then range", |t| Op::Txn(txn(
        vec![],
        vec![
            r_del(DeleteRangeRequest {
                prev_kv: true,
                ..del(b"x", b"")
            }),
            r_range(range(b"x", b"")),
            r_put(put(b"y", b"2")),
        ],
        vec![]
    )));
    add!("txn delete nothing only", |t| Op::Txn(txn(
        vec![],
        vec![r_del(del(b"nothing", b""))],
        vec![]
    )));
    add!(
        "txn range then put then range at old revision",
        |t| Op::Txn(txn(
            vec![],
            vec![
                r_range(range(b"a", b"")),
                r_put(put(b"a", b"new")),
                r_range(RangeRequest {
                    revision: t.current,
                    ..range(b"a", b"")
                }),
            ],
            vec![]
        ))
    );
    add!("nested txn headers", |t| Op::Txn(txn(
        vec![cmp(
            b"a",
            T::Value,
            R::Equal,
            TargetUnion::Value(b"new".to_vec())
        )],
        vec![
            r_put(put(b"q", b"new")),
            r_txn(txn(
                vec![cmp(
                    b"q",
                    T::Value,
                    R::Equal,
                    TargetUnion::Value(b"new".to_vec())
                )],
                vec![r_range(range(b"q", b"")), r_put(put(b"q2", b"then"))],
                vec![r_range(range(b"q", b"")), r_put(put(b"q2", b"else"))],
            )),
            r_txn(txn(vec![], vec![], vec![])),
            r_range(range(b"q", b"\0")),
        ],
        vec![]
    )));
    add!("nested read-only txn", |t| Op::Txn(txn(
        vec![],
        vec![r_txn(txn(vec![], vec![r_range(range(b"a", b""))], vec![]))],
        vec![]
    )));
    add!("txn compare target/union mismatch", |t| Op::Txn(txn(
        vec![cmp(
            b"a",
            T::Version,
            R::Equal,
            TargetUnion::Value(b"new".to_vec())
        )],
        vec![r_range(range(b"a", b""))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("txn compare on missing key value", |t| Op::Txn(txn(
        vec![cmp(
            b"missing",
            T::Value,
            R::NotEqual,
            TargetUnion::Value(b"x".to_vec())
        )],
        vec![r_range(range(b"a", b""))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("txn compare with range_end", |t| Op::Txn(txn(
        vec![Compare {
            range_end: b"b".to_vec(),
            ..cmp(b"a", T::Version, R::Greater, TargetUnion::Version(0))
        }],
        vec![r_range(range(b"a", b""))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("txn compare with from-key range_end", |t| Op::Txn(txn(
        vec![Compare {
            range_end: vec![0],
            ..cmp(
                b"a",
                T::Mod,
                R::Less,
                TargetUnion::ModRevision(t.current + 1)
            )
        }],
        vec![r_range(range(b"a", b""))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("txn compare unknown target", |t| Op::Txn(txn(
        vec![Compare {
            target: 7,
            ..cmp(b"a", T::Version, R::Equal, TargetUnion::Version(12345))
        }],
        vec![r_range(range(b"a", b""))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("txn compare unknown target, missing key", |t| Op::Txn(txn(
        vec![Compare {
            target: 7,
            ..cmp(
                b"missing",
                T::Version,
                R::Equal,
                TargetUnion::Version(12345)
            )
        }],
        vec![r_range(range(b"a", b""))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("txn compare unknown result", |t| Op::Txn(txn(
        vec![Compare {
            result: 9,
            ..cmp(b"a", T::Version, R::Equal, TargetUnion::Version(12345))
        }],
        vec![r_range(range(b"a", b""))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("txn compare unknown result on a missing key's value", |t| {
        Op::Txn(txn(
            vec![Compare {
                result: 9,
                ..cmp(
                    b"missing",
                    T::Value,
                    R::Equal,
                    TargetUnion::Value(b"x".to_vec()),
                )
            }],
            vec![r_range(range(b"a", b""))],
            vec![r_range(range(b"b", b""))],
        ))
    });
    add!("txn compare without a target union", |t| Op::Txn(txn(
        vec![Compare {
            target_union: None,
            ..cmp(b"a", T::Value, R::Greater, TargetUnion::Version(0))
        }],
        vec![r_range(range(b"a", b""))],
        vec![r_range(range(b"b", b""))]
    )));
    add!("txn with 128 ops", |t| Op::Txn(txn(
        vec![],
        (0..128).map(|_| r_range(range(b"a", b""))).collect(),
        vec![]
    )));
    add!("txn with 129 ops", |t| Op::Txn(txn(
        vec![],
        (0..129).map(|_| r_range(range(b"a", b""))).collect(),
        vec![]
    )));
    add!("txn with 129 compares", |t| Op::Txn(txn(
        (0..129)
            .map(|_| cmp(b"a", T::Version, R::Greater, TargetUnion::Version(0)))
            .collect(),
        vec![],
        vec![]
    )));
    add!("nested txn within the op budget", |t| Op::Txn(txn(
        vec![],
        (0..99)
            .map(|_| r_range(range(b"a", b"")))
            .chain([r_txn(txn(
                vec![],
                (0..28).map(|_| r_range(range(b"a", b""))).collect(),
                vec![]
            ))])
            .collect(),
        vec![]
    )));
    add!("nested txn over the op budget", |t| Op::Txn(txn(
        vec![],
        (0..99)
            .map(|_| r_range(range(b"a", b"")))
            .chain([r_txn(txn(
                vec![],
                (0..29).map(|_| r_range(range(b"a", b""))).collect(),
                vec![]
            ))])
            .collect(),
        vec![]
    )));
    add!("txn compare lease", |t| Op::Txn(txn(
        vec![cmp(b"a", T::Lease, R::Equal, TargetUnion::Lease(0))],
        vec![r_range(range(b"a", b""))],
        vec![]
    )));
    add!("txn range future revision", |t| Op::Txn(txn(
        vec![],
        vec![r_range(RangeRequest {
            revision: t.current + 1,
            ..range(b"a", b"")
        })],
        vec![]
    )));
    add!("write txn range future revision", |t| Op::Txn(txn(
        vec![],
        vec![
            r_put(put(b"w", b"1")),
            r_range(RangeRequest {
                revision: t.current + 1,
                ..range(b"a", b"")
            })
        ],
        vec![]
    )));
    add!("txn range revision -1", |t| Op::Txn(txn(
        vec![],
        vec![r_range(RangeRequest {
            revision: -1,
            ..range(b"a", b"")
        })],
        vec![]
    )));
    add!("txn put ignore_value missing key", |t| Op::Txn(txn(
        vec![],
        vec![r_put(PutRequest {
            ignore_value: true,
            ..put(b"missing", b"")
        })],
        vec![]
    )));
    add!(
        "txn put ignore_value missing key in branch not taken",
        |t| Op::Txn(txn(
            vec![],
            vec![],
            vec![r_put(PutRequest {
                ignore_value: true,
                ..put(b"missing", b"")
            })]
        ))
    );
    // Duplicate keys.
    add!("dup: put twice", |t| Op::Txn(txn(
        vec![],
        vec![r_put(put(b"a", b"1")), r_put(put(b"a", b"2"))],
        vec![]
    )));
    add!("dup: delete prefix then put", |t| Op::Txn(txn(
        vec![],
        vec![r_del(del(b"a", b"b")), r_put(put(b"ab", b"2"))],
        vec![]
    )));
    add!("dup: delete single then put", |t| Op::Txn(txn(
        vec![],
        vec![r_put(put(b"a", b"2")), r_del(del(b"a", b""))],
        vec![]
    )));
    add!("dup: from-key delete then put", |t| Op::Txn(txn(
        vec![],
        vec![r_del(del(b"a", b"\0")), r_put(put(b"b", b"2"))],
        vec![]
    )));
    add!(
        "from-key delete, then ignore_value put above it (etcd panics)",
        |t| Op::Txn(txn(
            vec![],
            vec![
                r_del(del(b"b", b"\0")),
                r_put(PutRequest {
                    ignore_value: true,
                    ..put(b"c", b"")
                })
            ],
            vec![]
        ))
    );
    add!(
        "nested from-key delete, ignore_lease put (etcd panics)",
        |t| Op::Txn(txn(
            vec![],
            vec![],
            vec![
                r_txn(txn(vec![], vec![r_del(del(b"a", b"\0"))], vec![])),
                r_put(PutRequest {
                    ignore_lease: true,
                    ..put(b"c", b"x")
                })
            ]
        ))
    );
    add!("from-key delete, ignore_value put below it", |t| Op::Txn(
        txn(
            vec![],
            vec![
                r_del(del(b"y", b"\0")),
                r_put(PutRequest {
                    ignore_value: true,
                    prev_kv: true,
                    ..put(b"b", b"")
                })
            ],
            vec![]
        )
    ));
    add!("dup: put at range end is fine", |t| Op::Txn(txn(
        vec![],
        vec![r_del(del(b"a", b"b")), r_put(put(b"b", b"2"))],
        vec![]
    )));
    add!("dup: twice in the failure branch", |t| Op::Txn(txn(
        vec![],
        vec![],
        vec![r_put(put(b"a", b"1")), r_put(put(b"a", b"2"))]
    )));
    add!("dup: nested then/else same key ok", |t| Op::Txn(txn(
        vec![],
        vec![r_txn(txn(
            vec![],
            vec![r_put(put(b"n", b"then"))],
            vec![r_put(put(b"n", b"else"))]
        ))],
        vec![]
    )));
    add!("dup: nested and outer put", |t| Op::Txn(txn(
        vec![],
        vec![
            r_put(put(b"n", b"outer")),
            r_txn(txn(vec![], vec![r_put(put(b"n", b"then"))], vec![]))
        ],
        vec![]
    )));
    add!("dup: sibling nested then/else", |t| Op::Txn(txn(
        vec![],
        vec![
            r_txn(txn(vec![], vec![r_put(put(b"n", b"1"))], vec![])),
            r_txn(txn(
                vec![],
                vec![r_put(put(b"n", b"2"))],
                vec![r_put(put(b"n", b"3"))]
            )),
        ],
        vec![]
    )));
    add!("dup: sibling nested else only", |t| Op::Txn(txn(
        vec![],
        vec![
            r_txn(txn(vec![], vec![r_put(put(b"n", b"1"))], vec![])),
            r_txn(txn(vec![], vec![], vec![r_put(put(b"n", b"3"))])),
        ],
        vec![]
    )));
    add!("dup: nested delete, outer put", |t| Op::Txn(txn(
        vec![],
        vec![
            r_txn(txn(vec![], vec![r_del(del(b"n", b""))], vec![])),
            r_put(put(b"n", b"outer")),
        ],
        vec![]
    )));
    add!("dup: outer delete, nested put", |t| Op::Txn(txn(
        vec![],
        vec![
            r_del(del(b"m", b"o")),
            r_txn(txn(vec![], vec![r_put(put(b"n", b"inner"))], vec![])),
        ],
        vec![]
    )));
    add!("dup: nested delete then sibling nested put", |t| Op::Txn(
        txn(
            vec![],
            vec![
                r_txn(txn(vec![], vec![r_del(del(b"n", b""))], vec![])),
                r_txn(txn(vec![], vec![r_put(put(b"n", b"x"))], vec![])),
            ],
            vec![]
        )
    ));
    add!("dup: nested put then sibling nested delete", |t| Op::Txn(
        txn(
            vec![],
            vec![
                r_txn(txn(vec![], vec![r_put(put(b"n", b"x"))], vec![])),
                r_txn(txn(vec![], vec![r_del(del(b"n", b""))], vec![])),
            ],
            vec![]
        )
    ));
    add!("dup: two deletes overlap fine", |t| Op::Txn(txn(
        vec![],
        vec![r_del(del(b"a", b"c")), r_del(del(b"ab", b""))],
        vec![]
    )));
    add!("nested txn compares see the pre-txn state", |t| Op::Txn(
        txn(
            vec![],
            vec![
                r_put(put(b"p", b"fresh")),
                r_txn(txn(
                    vec![cmp(
                        b"p",
                        T::Value,
                        R::Equal,
                        TargetUnion::Value(b"fresh".to_vec())
                    )],
                    vec![r_range(range(b"p", b""))],
                    vec![r_range(range(b"p", b"")), r_put(put(b"p2", b"else"))],
                )),
            ],
            vec![]
        )
    ));
    add!(
        "nested txn: check uses pre-txn state for ignore_value",
        |t| Op::Txn(txn(
            vec![],
            vec![r_txn(txn(
                vec![cmp(
                    b"missing",
                    T::Version,
                    R::Equal,
                    TargetUnion::Version(0)
                )],
                vec![r_put(PutRequest {
                    ignore_value: true,
                    ..put(b"missing", b"")
                })],
                vec![]
            ))],
            vec![]
        ))
    );
    // Compaction.
    add!("compact future", |t| Op::Compact(compact(t.current + 1)));
    add!("compact -1", |t| Op::Compact(compact(-1)));
    add!("compact", |t| Op::Compact(compact(t.current - 5)));
    add!("compact again same", |t| Op::Compact(compact(t.compacted)));
    add!("compact older", |t| Op::Compact(compact(t.compacted - 1)));
    add!("range at compacted - 1", |t| Op::Range(RangeRequest {
        revision: t.compacted - 1,
        ..range(b"a", b"\0")
    }));
    add!("range at compacted", |t| Op::Range(RangeRequest {
        revision: t.compacted,
        ..range(b"a", b"\0")
    }));
    add!("range at compacted + 1", |t| Op::Range(RangeRequest {
        revision: t.compacted + 1,
        ..range(b"\0", b"\0")
    }));
    add!("txn range at compacted - 1", |t| Op::Txn(txn(
        vec![],
        vec![r_range(RangeRequest {
            revision: t.compacted - 1,
            ..range(b"a", b"")
        })],
        vec![]
    )));
    add!("write txn range at compacted - 1", |t| Op::Txn(txn(
        vec![],
        vec![
            r_range(RangeRequest {
                revision: t.compacted - 1,
                ..range(b"a", b"")
            }),
            r_put(put(b"w", b"2"))
        ],
        vec![]
    )));
    add!("compact physical to current", |t| Op::Compact(
        CompactionRequest {
            revision: t.current,
            physical: true,
        }
    ));
    add!("range after full compaction", |t| Op::Range(range(
        b"\0", b"\0"
    )));
    // Leases (IDs outside `LEASE_IDS`; all revoked again before the random sequence).
    let grant = |id: i64, ttl: i64| Op::LeaseGrant(LeaseGrantRequest { ttl, id });
    let revoke = |id: i64| Op::LeaseRevoke(LeaseRevokeRequest { id });
    let ttl_of = |id: i64, keys: bool| Op::LeaseTimeToLive(LeaseTimeToLiveRequest { id, keys });
    let keep_alive = |id: i64| Op::LeaseKeepAlive(LeaseKeepAliveRequest { id });
    let leased = |key: &[u8], value: &[u8], lease: i64| PutRequest {
        lease,
        ..put(key, value)
    };
    add!("leases: none yet", |t| Op::LeaseLeases);
    add!("lease ttl: unknown", |t| ttl_of(100, true));
    add!("lease ttl: unknown, no keys", |t| ttl_of(100, false));
    add!("lease ttl: ID 0", |t| ttl_of(0, true));
    add!("lease keep-alive: unknown", |t| keep_alive(100));
    add!("lease keep-alive: ID 0", |t| keep_alive(0));
    add!("lease revoke: unknown", |t| revoke(100));
    add!("lease revoke: ID 0", |t| revoke(0));
    // TTLs below the minimum are raised to it; revoked at once, before they can expire.
    add!("lease grant: TTL 1", |t| grant(101, 1));
    add!("lease ttl: the raised TTL", |t| ttl_of(101, true));
    add!("lease revoke: no keys, no new revision", |t| revoke(101));
    add!("lease grant: TTL 0", |t| grant(102, 0));
    add!("lease revoke: TTL 0", |t| revoke(102));
    add!("lease grant: negative TTL", |t| grant(103, -10));
    add!("lease revoke: negative TTL", |t| revoke(103));
    add!("lease grant: TTL above the maximum", |t| grant(
        104,
        MAX_LEASE_TTL + 1
    ));
    add!("lease ttl: refused grant", |t| ttl_of(104, true));
    add!("lease grant: the maximum TTL", |t| grant(
        104,
        MAX_LEASE_TTL
    ));
    add!("lease ttl: maximum TTL", |t| ttl_of(104, true));
    add!("lease keep-alive: maximum TTL", |t| keep_alive(104));
    add!("lease grant: an ID that exists", |t| grant(104, 600));
    add!("lease grant: the server picks the ID", |t| grant(0, 700));
    add!("lease ttl: picked ID", |t| ttl_of(AUTO_LEASE, true));
    add!("lease keep-alive: picked ID", |t| keep_alive(AUTO_LEASE));
    add!("leases: picked ID", |t| Op::LeaseLeases);
    add!("lease revoke: picked ID", |t| revoke(AUTO_LEASE));
    add!("lease grant: negative ID", |t| grant(-105, 900));
    add!("lease grant: largest ID", |t| grant(i64::MAX - 1, 900));
    add!("leases: three", |t| Op::LeaseLeases);
    // Attaching, moving and detaching keys.
    add!("put: unknown lease", |t| Op::Put(leased(b"l1", b"x", 106)));
    add!("put: with lease", |t| Op::Put(leased(b"l1", b"1", 104)));
    add!("put: second key, same lease", |t| Op::Put(PutRequest {
        prev_kv: true,
        ..leased(b"l2", b"2", 104)
    }));
    add!("put: attach a key to the negative ID", |t| Op::Put(leased(
        b"l3", b"3", -105
    )));
    add!("lease ttl: two keys", |t| ttl_of(104, true));
    add!("lease ttl: keys not asked for", |t| ttl_of(104, false));
    add!("put: move a key to another lease", |t| Op::Put(
        PutRequest {
            prev_kv: true,
            ..leased(b"l1", b"1", -105)
        }
    ));
    add!("put: ignore_lease keeps the lease", |t| Op::Put(
        PutRequest {
            ignore_lease: true,
            prev_kv: true,
            ..put(b"l1", b"11")
        }
    ));
    add!("put: no lease detaches", |t| Op::Put(put(b"l3", b"33")));
    add!("lease ttl: moved and detached", |t| ttl_of(-105, true));
    add!("lease keep-alive: with keys", |t| keep_alive(-105));
    add!("range: lease fields", |t| Op::Range(range(b"l", b"m")));
    add!("txn: put with unknown lease fails the txn", |t| Op::Txn(
        txn(
            vec![],
            vec![
                r_put(leased(b"l4", b"4", 104)),
                r_put(leased(b"l5", b"5", 106))
            ],
            vec![]
        )
    ));
    add!("txn: unknown lease in the branch not taken", |t| Op::Txn(
        txn(
            vec![cmp(b"l1", T::Lease, R::Equal, TargetUnion::Lease(-105))],
            vec![
                r_put(leased(b"l4", b"4", 104)),
                r_put(PutRequest {
                    ignore_lease: true,
                    prev_kv: true,
                    ..put(b"l1", b"111")
                }),
            ],
            vec![r_put(leased(b"l5", b"5", 106))]
        )
    ));
    add!("txn: compare lease on a key without one", |t| Op::Txn(txn(
        vec![cmp(b"l3", T::Lease, R::Greater, TargetUnion::Lease(0))],
        vec![r_put(leased(b"l5", b"5", 104))],
        vec![r_put(leased(b"l3", b"3", 104)), r_range(range(b"l", b"m"))]
    )));
    add!("txn: delete detaches", |t| Op::Txn(txn(
        vec![],
        vec![
            r_del(del(b"l2", b"")),
            r_put(leased(b"l6", b"6", i64::MAX - 1))
        ],
        vec![]
    )));
    add!("lease ttl: after the txns", |t| ttl_of(104, true));
    add!("delete: detaches", |t| Op::Delete(del(b"l4", b"")));
    add!("lease ttl: after the delete", |t| ttl_of(104, true));
    add!("put: reattach", |t| Op::Put(leased(b"l2", b"2", 104)));
    add!(
        "lease revoke: deletes its keys in one revision",
        |t| revoke(104)
    );
    add!("range: after the revoke", |t| Op::Range(range(b"l", b"m")));
    add!("range: before the revoke", |t| Op::Range(RangeRequest {
        revision: t.current - 1,
        ..range(b"l", b"m")
    }));
    add!("lease ttl: revoked", |t| ttl_of(104, true));
    add!("lease keep-alive: revoked", |t| keep_alive(104));
    add!("lease revoke: again", |t| revoke(104));
    add!("put: revoked lease", |t| Op::Put(leased(b"l2", b"2", 104)));
    add!("txn: put with revoked lease", |t| Op::Txn(txn(
        vec![],
        vec![r_put(leased(b"l2", b"2", 104))],
        vec![]
    )));
    add!("lease grant: a revoked ID again", |t| grant(104, 800));
    add!("lease ttl: granted again, no keys", |t| ttl_of(104, true));
    add!("lease revoke: granted again", |t| revoke(104));
    add!("lease revoke: negative ID", |t| revoke(-105));
    add!("lease revoke: largest ID", |t| revoke(i64::MAX - 1));
    add!("range: after all revokes", |t| Op::Range(range(b"l", b"m")));
    add!("leases: all revoked", |t| Op::LeaseLeases);
    // Nested txns, one op per level, at every depth around etcd's op budget (128 levels
    // with `--max-txn-ops` 128) and past prost's own recursion limit (~49 levels): writes
    // (alternating branches, a compare at every level) and reads.
    for depth in 1..=130usize {
        let name: &'static str =
            Box::leak(format!("nested txn put at depth {depth}").into_boxed_str());
        add!(name, |t| Op::Txn(nested_txn(depth, false)));
    }
    for depth in [1usize, 48, 49, 50, 51, 100, 127, 128, 129, 200] {
        let name: &'static str =
            Box::leak(format!("nested txn range at depth {depth}").into_boxed_str());
        add!(name, |t| Op::Txn(nested_txn(depth, true)));
    }
    v
}

/// A txn nested `depth` levels deep: each level compares `z`'s version with 0 and holds
/// the next level in its success branch (even levels) or its failure branch (odd ones);
/// the innermost puts `z` (or reads `a`..`z` when `read`).
fn nested_txn(depth: usize, read: bool) -> TxnRequest {
    use CompareResult as R;
    use CompareTarget as T;
    let mut inner = if read {
        r_range(range(b"a", b"z"))
    } else {
        r_put(put(b"z", format!("depth {depth}").as_bytes()))
    };
    for level in 0..depth {
        let compare = vec![cmp(b"z", T::Version, R::Greater, TargetUnion::Version(0))];
        let txn = if level % 2 == 0 {
            txn(compare, vec![inner], vec![])
        } else {
            txn(compare, vec![], vec![inner])
        };
        inner = r_txn(txn);
    }
    match inner.request {
        Some(request_op::Request::RequestTxn(txn)) => txn,
        _ => unreachable!("depth >= 1"),
    }
}

// ---------------------------------------------------------------------------------------
// Random generation.

fn clear_ignore_flags(txn: &mut TxnRequest) {
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match &mut op.request {
            Some(request_op::Request::RequestPut(p)) => {
                p.ignore_value = false;
                p.ignore_lease = false;
            }
            Some(request_op::Request::RequestTxn(t)) => clear_ignore_flags(t),
            _ => {}
        }
    }
}

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn p(&mut self, probability: f64) -> bool {
        self.rng.random_bool(probability)
    }

    fn key(&mut self) -> Vec<u8> {
        KEYS[self.rng.random_range(0..KEYS.len())].to_vec()
    }

    fn key_or_empty(&mut self) -> Vec<u8> {
        if self.p(0.005) {
            Vec::new()
        } else {
            self.key()
        }
    }

    fn value(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..10) {
            0 => Vec::new(),
            1..=6 => format!("v{}", self.rng.random_range(0..4)).into_bytes(),
            _ => {
                let len = self.rng.random_range(1..4);
                (0..len).map(|_| self.rng.random::<u8>()).collect()
            }
        }
    }

    /// A non-empty range end for `key`.
    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.random_range(0..5) {
            0 => vec![0],
            1 | 2 => prefix_end(key),
            // Any key: may be below `key` (an empty interval).
            _ => self.key(),
        }
    }

    /// A revision to read at: mostly "current", else negative ones, ones around the
    /// compaction point, recent history or anything up to current+2.
    fn revision(&mut self, t: Tracker) -> i64 {
        match self.rng.random_range(0..100) {
            0..=64 => 0,
            65..=71 => self.rng.random_range(-3..=-1),
            72..=79 if t.compacted > 0 => self.rng.random_range(t.compacted - 1..=t.compacted + 1),
            72..=89 => self
                .rng
                .random_range((t.current - 20).max(-1)..=t.current + 2),
            _ => self.rng.random_range(-1..=t.current + 2),
        }
    }

    /// A revision to compare against: mostly recent ones, so EQUAL sometimes holds.
    fn cmp_revision(&mut self, t: Tracker) -> i64 {
        match self.rng.random_range(0..10) {
            0..=1 => 0,
            2..=6 => self
                .rng
                .random_range((t.current - 15).max(0)..=t.current + 1),
            _ => self.rng.random_range(0..=t.current + 1),
        }
    }

    fn range_req(&mut self, t: Tracker, in_txn: bool) -> RangeRequest {
        let key = self.key_or_empty();
        let range_end = if self.p(0.35) {
            Vec::new()
        } else {
            self.range_end(&key)
        };
        let limit = match self.rng.random_range(0..20) {
            0..=9 => 0,
            10..=17 => self.rng.random_range(1..=3),
            18 => -1,
            _ => 100,
        };
        let revision = if in_txn && self.p(0.8) {
            0
        } else {
            self.revision(t)
        };
        let sort_order = match self.rng.random_range(0..200) {
            0 if !in_txn => 7,
            0 => SortOrder::None as i32,
            1..=139 => SortOrder::None as i32,
            140..=169 => SortOrder::Ascend as i32,
            _ => SortOrder::Descend as i32,
        };
        let sort_target = match self.rng.random_range(0..200) {
            0 if !in_txn => 9,
            0 => SortTarget::Key as i32,
            1..=99 => SortTarget::Key as i32,
            _ => self.rng.random_range(1..=4),
        };
        let filter = |g: &mut Gen| {
            if g.p(0.08) {
                g.rng.random_range(-1..=t.current + 1)
            } else {
                0
            }
        };
        RangeRequest {
            key,
            range_end,
            limit,
            revision,
            sort_order,
            sort_target,
            serializable: self.p(0.3),
            keys_only: self.p(0.15),
            count_only: self.p(0.1),
            min_mod_revision: filter(self),
            max_mod_revision: filter(self),
            min_create_revision: filter(self),
            max_create_revision: filter(self),
        }
    }

    fn put_req(&mut self, t: Tracker, key: Vec<u8>) -> PutRequest {
        let mut req = PutRequest {
            key,
            value: self.value(),
            prev_kv: self.p(0.4),
            ..Default::default()
        };
        if self.p(0.1) {
            req.ignore_value = true;
            if self.p(0.9) {
                req.value.clear();
            }
        }
        if self.p(0.05) {
            req.ignore_lease = true;
        }
        if self.p(0.45) {
            req.lease = self.lease_id(t);
        }
        req
    }

    /// A lease ID from `LEASE_IDS`: mostly a granted one, else one never granted or
    /// revoked.
    fn lease_id(&mut self, t: Tracker) -> i64 {
        let live = t.leases(true);
        if !live.is_empty() && self.p(0.85) {
            live[self.rng.random_range(0..live.len())]
        } else {
            LEASE_IDS[self.rng.random_range(0..LEASE_IDS.len())]
        }
    }

    fn lease_op(&mut self, t: Tracker) -> Op {
        match self.rng.random_range(0..20) {
            0..=5 => {
                // Mostly an ID not granted yet; now and then one that is.
                let free = t.leases(false);
                let id = if !free.is_empty() && self.p(0.8) {
                    free[self.rng.random_range(0..free.len())]
                } else {
                    LEASE_IDS[self.rng.random_range(0..LEASE_IDS.len())]
                };
                // Long enough to outlive the run; now and then the largest allowed or
                // one above it.
                let ttl = match self.rng.random_range(0..30) {
                    0 => MAX_LEASE_TTL,
                    1 => MAX_LEASE_TTL + 1,
                    _ => self.rng.random_range(600..=3600),
                };
                Op::LeaseGrant(LeaseGrantRequest { ttl, id })
            }
            6..=9 => Op::LeaseRevoke(LeaseRevokeRequest {
                id: if self.p(0.03) { 0 } else { self.lease_id(t) },
            }),
            10..=13 => Op::LeaseTimeToLive(LeaseTimeToLiveRequest {
                id: self.lease_id(t),
                keys: self.p(0.8),
            }),
            14..=15 => Op::LeaseLeases,
            _ => Op::LeaseKeepAlive(LeaseKeepAliveRequest {
                id: self.lease_id(t),
            }),
        }
    }

    fn delete_req(&mut self, key: Vec<u8>) -> DeleteRangeRequest {
        let range_end = match self.rng.random_range(0..10) {
            0..=3 => Vec::new(),
            4..=5 => prefix_end(&key),
            6 => vec![0],
            _ => self.key(),
        };
        let key = if range_end == [0] && self.p(0.3) {
            vec![0]
        } else {
            key
        };
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.p(0.5),
        }
    }

    fn compare(&mut self, t: Tracker) -> Compare {
        let key = self.key_or_empty();
        let range_end = if self.p(0.2) {
            self.range_end(&key)
        } else {
            Vec::new()
        };
        // Now and then an unknown target or result (etcd: "equal", resp. "holds").
        let target = if self.p(0.01) {
            7
        } else {
            self.rng.random_range(0..5)
        };
        let result = if self.p(0.01) {
            9
        } else {
            self.rng.random_range(0..4)
        };
        // Now and then a union that does not match the target.
        let union_kind = if self.p(0.03) {
            self.rng.random_range(0..5)
        } else {
            target
        };
        let union = match union_kind {
            0 => TargetUnion::Version(self.rng.random_range(0..=4)),
            1 => TargetUnion::CreateRevision(self.cmp_revision(t)),
            2 => TargetUnion::ModRevision(self.cmp_revision(t)),
            3 => TargetUnion::Value(self.value()),
            _ => TargetUnion::Lease(if self.p(0.3) { 0 } else { self.lease_id(t) }),
        };
        Compare {
            result,
            target,
            key,
            range_end,
            target_union: (!self.p(0.01)).then_some(union),
        }
    }

    /// A key for a write inside a txn branch: usually one not written yet in the branch.
    fn fresh_key(&mut self, used: &mut BTreeSet<Vec<u8>>) -> Vec<u8> {
        let mut key = self.key();
        if self.p(0.9) {
            for _ in 0..8 {
                if !used.contains(&key) {
                    break;
                }
                key = self.key();
            }
        }
        used.insert(key.clone());
        key
    }

    fn branch(&mut self, t: Tracker, depth: u32, used: &mut BTreeSet<Vec<u8>>) -> Vec<RequestOp> {
        let n = self.rng.random_range(0..=4);
        (0..n)
            .map(|_| match self.rng.random_range(0..20) {
                0..=5 => r_range(self.range_req(t, true)),
                6..=12 => {
                    let key = self.fresh_key(used);
                    r_put(self.put_req(t, key))
                }
                13..=16 => {
                    let key = self.fresh_key(used);
                    let mut req = self.delete_req(key);
                    if self.p(0.7) {
                        req.range_end.clear();
                    }
                    r_del(req)
                }
                _ if depth < 2 => r_txn(self.txn_req(t, depth + 1, used)),
                _ => r_range(self.range_req(t, true)),
            })
            .collect()
    }

    fn txn_req(&mut self, t: Tracker, depth: u32, used: &mut BTreeSet<Vec<u8>>) -> TxnRequest {
        let n = match self.rng.random_range(0..10) {
            0 => 0,
            1..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        let compare = (0..n).map(|_| self.compare(t)).collect();
        let success = self.branch(t, depth, used);
        let failure = if depth == 0 {
            let mut used_else = BTreeSet::new();
            self.branch(t, depth, &mut used_else)
        } else {
            self.branch(t, depth, used)
        };
        TxnRequest {
            compare,
            success,
            failure,
        }
    }

    fn op(&mut self, t: Tracker) -> Op {
        if self.p(0.1) {
            return self.lease_op(t);
        }
        match self.rng.random_range(0..100) {
            0..=29 => Op::Range(self.range_req(t, false)),
            30..=54 => {
                let key = self.key_or_empty();
                Op::Put(self.put_req(t, key))
            }
            55..=66 => {
                let key = self.key_or_empty();
                Op::Delete(self.delete_req(key))
            }
            67..=96 => {
                let mut txn = self.txn_req(t, 0, &mut BTreeSet::new());
                // Keep clear of the txns that crash etcd (see `expected_divergence`).
                if ignore_put_in_from_key_delete(&txn.success)
                    || ignore_put_in_from_key_delete(&txn.failure)
                {
                    clear_ignore_flags(&mut txn);
                }
                Op::Txn(txn)
            }
            _ => {
                let revision = match self.rng.random_range(0..10) {
                    0..=6 if t.current > t.compacted => {
                        // Mostly small steps so history stays around to read.
                        let low = t.compacted + 1;
                        let high = t.current.min(low + 30);
                        self.rng.random_range(low..=high)
                    }
                    7 | 8 => self
                        .rng
                        .random_range((t.compacted - 2).max(-1)..=t.compacted),
                    _ => self.rng.random_range(t.current + 1..=t.current + 3),
                };
                Op::Compact(CompactionRequest {
                    revision,
                    physical: self.p(0.3),
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    by_kind: BTreeMap<String, (usize, usize)>,
    errors: BTreeMap<String, usize>,
    txn_succeeded: (usize, usize),
    /// Revokes that deleted keys, and the keys TimeToLive listed.
    revokes_with_keys: usize,
    ttl_keys: usize,
}

impl Stats {
    /// `before`: the tracker before the op.
    fn record(&mut self, op: &Op, outcome: &Outcome, before: Tracker) {
        let entry = self.by_kind.entry(op.kind().to_string()).or_default();
        match outcome {
            Ok(reply) => {
                entry.0 += 1;
                match reply {
                    Reply::Txn(t) if t.succeeded => self.txn_succeeded.0 += 1,
                    Reply::Txn(_) => self.txn_succeeded.1 += 1,
                    Reply::LeaseRevoke(_)
                        if reply.header().map_or(0, |h| h.revision) > before.current =>
                    {
                        self.revokes_with_keys += 1
                    }
                    Reply::LeaseTimeToLive(t) => self.ttl_keys += t.keys.len(),
                    _ => {}
                }
            }
            Err((_, msg)) => {
                entry.1 += 1;
                *self.errors.entry(msg.clone()).or_default() += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Watch: the same streams on both servers.

/// One watch stream on one server; a task collects its responses.
struct WatchTap {
    requests: tokio::sync::mpsc::Sender<WatchRequest>,
    responses: Arc<Mutex<Vec<WatchResponse>>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl WatchTap {
    async fn open(endpoint: &str, creates: &[WatchCreateRequest]) -> WatchTap {
        let mut client = WatchClient::connect(format!("http://{endpoint}"))
            .await
            .expect("connect Watch");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for create in creates {
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create.clone())),
            })
            .await
            .expect("queue create");
        }
        let mut stream = client
            .watch(ReceiverStream::new(rx))
            .await
            .expect("open watch stream")
            .into_inner();
        let responses = Arc::new(Mutex::new(Vec::new()));
        let failure = Arc::new(Mutex::new(None));
        let (sink, fail) = (responses.clone(), failure.clone());
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(response)) => sink.lock().unwrap().push(response),
                    Ok(None) => return,
                    Err(status) => {
                        *fail.lock().unwrap() = Some(format!("{status:?}"));
                        return;
                    }
                }
            }
        });
        WatchTap {
            requests: tx,
            responses,
            failure,
        }
    }

    fn count(&self, what: impl Fn(&WatchResponse) -> bool) -> usize {
        self.responses
            .lock()
            .unwrap()
            .iter()
            .filter(|r| what(r))
            .count()
    }

    fn len(&self) -> usize {
        self.responses.lock().unwrap().len()
    }
}

/// The same stream on skiff and on etcd.
struct WatchPair {
    label: String,
    skiff: WatchTap,
    etcd: WatchTap,
}

impl WatchPair {
    /// Open on both and wait until both answered every create, so the creates land at the
    /// same revision on both servers.
    async fn open(
        label: String,
        skiff: &str,
        etcd: &str,
        creates: Vec<WatchCreateRequest>,
    ) -> WatchPair {
        let pair = WatchPair {
            skiff: WatchTap::open(skiff, &creates).await,
            etcd: WatchTap::open(etcd, &creates).await,
            label,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for tap in [&pair.skiff, &pair.etcd] {
            while tap.count(|r| r.created) < creates.len() {
                assert!(
                    Instant::now() < deadline,
                    "{}: creates not answered",
                    pair.label
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        pair
    }
}

fn wcreate(key: &[u8], range_end: &[u8], start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        start_revision,
        ..Default::default()
    }
}

fn with_prev(mut c: WatchCreateRequest) -> WatchCreateRequest {
    c.prev_kv = true;
    c
}

fn with_filter(mut c: WatchCreateRequest, filter: FilterType) -> WatchCreateRequest {
    c.filters.push(filter as i32);
    c
}

/// Streams opened before anything else: ranges, options, refused creates, explicit IDs.
fn initial_watches() -> Vec<(String, Vec<WatchCreateRequest>)> {
    let all = || wcreate(b"\0", b"\0", 0);
    vec![
        (
            "live".to_string(),
            vec![
                with_prev(all()),
                wcreate(b"a", b"b", 0),
                wcreate(b"b", b"", 0),
                with_prev(wcreate(b"b", b"\0", 0)),
                with_prev(with_filter(wcreate(b"ab", b"b\0", 0), FilterType::Noput)),
                with_filter(all(), FilterType::Nodelete),
                wcreate(b"", b"\0", 0),
                // Refused: an empty range; a taken explicit ID. Then auto IDs skip 7.
                wcreate(b"b", b"a", 0),
                WatchCreateRequest {
                    watch_id: 7,
                    ..wcreate(b"c", b"", 0)
                },
                WatchCreateRequest {
                    watch_id: 7,
                    ..wcreate(b"z", b"", 0)
                },
                wcreate(b"\xff", b"", 0),
                WatchCreateRequest {
                    fragment: true,
                    ..with_prev(all())
                },
            ],
        ),
        (
            "from revision 1".to_string(),
            vec![with_prev(wcreate(b"\0", b"\0", 1))],
        ),
    ]
}

/// Streams opened mid-sequence from revisions relative to the current and compacted ones.
///
/// Deliberate differences from etcd 3.4, tested on skiff alone in `tests/watch.rs`: never
/// exactly at the compaction revision (3.4 drops a tombstone there; 3.5.16+ and skiff keep
/// it), and no negative start revision (3.4 replays from the start; 3.5.24+/3.6 and skiff
/// refuse it like a compacted revision).
fn midway_watches(t: Tracker) -> Vec<WatchCreateRequest> {
    let floor = t.compacted.max(0) + 1;
    let mut creates = vec![
        with_prev(wcreate(b"a", b"b", (t.current - 20).max(floor))),
        wcreate(b"\0", b"\0", (t.current - 60).max(floor)),
        with_prev(wcreate(b"b", b"\0", t.current)),
        with_prev(wcreate(b"\0", b"\0", t.current + 5)),
    ];
    if t.compacted >= 2 {
        creates.push(wcreate(b"\0", b"\0", t.compacted - 1));
    }
    creates
}

/// A response with the server identity zeroed.
fn normalized(r: &WatchResponse) -> WatchResponse {
    let mut r = r.clone();
    if let Some(h) = r.header.as_mut() {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
    r
}

/// Control responses (created, canceled, compaction, progress) in order, and each
/// watcher's events in order.
type WatchTranscript = (Vec<WatchResponse>, BTreeMap<i64, Vec<Event>>);

fn transcript(tap: &WatchTap) -> WatchTranscript {
    let mut control = Vec::new();
    let mut events: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for r in tap.responses.lock().unwrap().iter() {
        if r.events.is_empty() {
            control.push(normalized(r));
        } else {
            events
                .entry(r.watch_id)
                .or_default()
                .extend(r.events.iter().cloned());
        }
    }
    (control, events)
}

/// skiff's own guarantees: `created` before a watcher's events, a revision's events in one
/// response (no fragment here), header revision at or above every event's.
fn check_skiff_stream(label: &str, tap: &WatchTap) -> Vec<String> {
    let mut problems = Vec::new();
    let mut created = BTreeSet::new();
    let mut last_revision: BTreeMap<i64, i64> = BTreeMap::new();
    for (i, r) in tap.responses.lock().unwrap().iter().enumerate() {
        if r.created {
            created.insert(r.watch_id);
        }
        if r.events.is_empty() {
            continue;
        }
        if !created.contains(&r.watch_id) {
            problems.push(format!(
                "{label}: events for {} before its created",
                r.watch_id
            ));
        }
        let header = r.header.as_ref().map_or(0, |h| h.revision);
        let last = last_revision.entry(r.watch_id).or_insert(0);
        for e in &r.events {
            let at = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            if at > header {
                problems.push(format!(
                    "{label}: response {i} header {header} < event {at}"
                ));
            }
            if at < *last {
                problems.push(format!(
                    "{label}: watcher {} revision {at} after {last}",
                    r.watch_id
                ));
            }
            *last = at;
        }
        // The next response for this watcher must start above this one's last revision.
        *last += 1;
        if r.fragment {
            problems.push(format!("{label}: unexpected fragment"));
        }
    }
    problems
}

/// Wait until no stream on either server received anything for `quiet`.
async fn settle(pairs: &[WatchPair], quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let total = || -> usize { pairs.iter().map(|p| p.skiff.len() + p.etcd.len()).sum() };
    let mut seen = total();
    let mut since = Instant::now();
    while since.elapsed() < quiet && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = total();
        if now != seen {
            seen = now;
            since = Instant::now();
        }
    }
}

/// Compare every stream: returns the mismatches and the number of events compared.
async fn compare_watches(pairs: &[WatchPair]) -> (Vec<String>, usize) {
    settle(pairs, Duration::from_millis(1500)).await;
    // A progress request on every stream: answered (watch ID -1) at the final revision.
    for pair in pairs {
        for tap in [&pair.skiff, &pair.etcd] {
            let _ = tap
                .requests
                .send(WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                })
                .await;
        }
    }
    settle(pairs, Duration::from_millis(500)).await;
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for pair in pairs {
        for (side, tap) in [("skiff", &pair.skiff), ("etcd", &pair.etcd)] {
            if let Some(failure) = tap.failure.lock().unwrap().as_ref() {
                mismatches.push(format!(
                    "watch {}: {side} stream failed: {failure}",
                    pair.label
                ));
            }
        }
        mismatches.extend(check_skiff_stream(&pair.label, &pair.skiff));
        let (ours, theirs) = (transcript(&pair.skiff), transcript(&pair.etcd));
        if ours.0 != theirs.0 {
            mismatches.push(format!(
                "watch {}: control responses differ\n  skiff: {}\n  etcd:  {}",
                pair.label,
                show(&ours.0),
                show(&theirs.0)
            ));
        }
        let ids: BTreeSet<&i64> = ours.1.keys().chain(theirs.1.keys()).collect();
        for id in ids {
            let (a, b) = (ours.1.get(id), theirs.1.get(id));
            if a != b {
                let (a, b) = (
                    a.cloned().unwrap_or_default(),
                    b.cloned().unwrap_or_default(),
                );
                let first = a
                    .iter()
                    .zip(&b)
                    .position(|(x, y)| x != y)
                    .unwrap_or(a.len().min(b.len()));
                mismatches.push(format!(
                    "watch {} watcher {id}: {} vs {} events, first difference at #{first}\n  skiff: {}\n  etcd:  {}",
                    pair.label,
                    a.len(),
                    b.len(),
                    show(&a.get(first)),
                    show(&b.get(first))
                ));
            }
            compared += a.map_or(0, |v| v.len());
        }
    }
    (mismatches, compared)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

#[test]
fn skiff_matches_real_etcd() {
    let seed: u64 = env_or("SKIFF_DIFF_SEED", DEFAULT_SEED);
    let ops: usize = env_or("SKIFF_DIFF_OPS", DEFAULT_OPS);
    let keep_going = std::env::var("SKIFF_DIFF_KEEP_GOING").is_ok_and(|v| v == "1");
    let trace = std::env::var("SKIFF_DIFF_TRACE").is_ok_and(|v| v == "1");
    println!("differential: seed {seed} (SKIFF_DIFF_SEED), {ops} random ops (SKIFF_DIFF_OPS)");

    let cluster = Cluster::start(1);
    let etcd = RealEtcd::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut skiff = Side::connect(&cluster.members[0].endpoint()).await;
        let mut reference = Side::connect(&etcd.endpoint).await;

        let mut tracker = Tracker {
            current: 1,
            compacted: 0,
            leases: 0,
        };
        let mut stats = Stats::default();
        let mut history: Vec<String> = Vec::new();
        let mut mismatches = 0usize;
        let mut generator = Gen {
            rng: StdRng::seed_from_u64(seed),
        };
        let fixed = fixed_scenarios();
        let fixed_len = fixed.len();
        let skiff_ep = cluster.members[0].endpoint();
        let mut watches = Vec::new();
        for (label, creates) in initial_watches() {
            watches.push(WatchPair::open(label, &skiff_ep, &etcd.endpoint, creates).await);
        }
        let midway: BTreeSet<usize> = [fixed_len + ops / 4, fixed_len + ops / 2, fixed_len + 3 * ops / 4]
            .into_iter()
            .collect();
        for i in 0..fixed_len + ops {
            if midway.contains(&i) {
                let creates = midway_watches(tracker);
                let label = format!("midway at op {i} ({tracker:?})");
                watches.push(WatchPair::open(label, &skiff_ep, &etcd.endpoint, creates).await);
                // etcd replays history to new watchers every 100 ms: let it catch up before
                // a compaction could overtake it.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let (label, op) = if let Some((name, build)) = fixed.get(i) {
                (name.to_string(), build(tracker))
            } else {
                (format!("random #{}", i - fixed_len), generator.op(tracker))
            };
            if let Op::Compact(_) = op {
                // Watch responses carry prev_kv looked up when they are sent: let the
                // streams deliver the last write before its history can be compacted.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let expected = expected_divergence(&op);
            let theirs = match &expected {
                Some(outcome) => outcome.clone(),
                None => normalize(&op, exec(&mut reference, &op).await),
            };
            if let Err((tonic::Code::Unavailable, msg)) = &theirs {
                let log = std::fs::read_to_string(etcd.dir.path().join("etcd.log"))
                    .unwrap_or_default();
                // The panic message, then the end of the log.
                let mut tail: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("panic") || l.contains(" C | ") || l.contains("\"C\""))
                    .take(5)
                    .collect();
                let end: Vec<&str> = log.lines().rev().take(20).collect();
                tail.push("...");
                tail.extend(end.into_iter().rev());
                panic!(
                    "real etcd failed at op {i} ({label}): {msg}\nrequest: {}\n--- etcd log ---\n{}",
                    show(&op),
                    tail.join("\n")
                );
            }
            let mut ours = normalize(&op, exec(&mut skiff, &op).await);
            excuse_ttl_drift(&mut ours, &theirs);
            if ours != theirs {
                mismatches += 1;
                let report = format!(
                    "MISMATCH at op {i} ({label}), seed {seed}\n\
                     request: {}\n\
                     skiff:   {}\n\
                     etcd:    {}\n\
                     previous ops (newest last):\n  {}",
                    show(&op),
                    show_outcome(&ours),
                    show_outcome(&theirs),
                    history.join("\n  "),
                );
                if keep_going {
                    eprintln!("{report}\n");
                } else {
                    panic!("{report}");
                }
            }
            if trace {
                println!("{i} ({label}): {}\n  => {}", show(&op), show_outcome(&theirs));
            }
            stats.record(&op, &theirs, tracker);
            tracker.observe(&op, &theirs);
            history.push(format!(
                "{i} ({label}): {} => {}",
                show(&op),
                show_outcome(&theirs)
            ));
            if history.len() > 8 {
                history.remove(0);
            }
        }
        println!(
            "differential: {} ops ({fixed_len} fixed + {ops} random), final revision {}, \
             compacted {}",
            fixed_len + ops,
            tracker.current,
            tracker.compacted
        );
        for (kind, (ok, err)) in &stats.by_kind {
            println!("  {kind:8} ok {ok:5}  error {err:5}");
        }
        println!(
            "  txn succeeded {} / failed {}",
            stats.txn_succeeded.0, stats.txn_succeeded.1
        );
        println!(
            "  lease: {} revokes deleted keys, TimeToLive listed {} keys",
            stats.revokes_with_keys, stats.ttl_keys
        );
        for (msg, n) in &stats.errors {
            println!("  {n:5} × {msg}");
        }
        assert_eq!(mismatches, 0, "{mismatches} mismatches (seed {seed})");
        let (watch_mismatches, events) = compare_watches(&watches).await;
        println!(
            "  watch: {} streams, {events} events compared",
            watches.len()
        );
        assert!(
            watch_mismatches.is_empty(),
            "watch streams differ (seed {seed}):\n{}",
            watch_mismatches.join("\n")
        );
    });
}
