//! The etcd Watch service: many watchers per bidirectional stream.
//!
//! Design: watchers *pull* from the history instead of being pushed events. Each watcher
//! only remembers the next revision it owes the client. Whenever the state machine's
//! revision moves (or a watcher is created), the stream's task reads the changes it still
//! owes from a consistent engine view — the records are keyed by revision — and sends
//! them, a whole revision per response. So events are ordered, unique and gap-free by
//! construction, a slow client only makes its own stream lag (the response queue is
//! bounded in responses and in bytes; nothing else buffers), a watch on a follower sees
//! exactly what that member applied, and resuming from any revision at or above the
//! compaction point replays from the records. A watcher whose next revision was
//! compacted away is cancelled with `compact_revision`, as etcd does.
//!
//! When the member stops, every stream ends at once with `Unavailable` "etcdserver: server
//! stopped" (clients re-establish their watches on another member).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::watch_server::Watch;
use skiff_proto::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request,
};
use skiff_proto::mvccpb::{Event, event};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::grpc::{EtcdApi, requires_leader};
use crate::mvcc::{Change, KeyRange, Mvcc, Revision, read_changes};
use crate::node::StoreNode;

/// Responses queued per stream before the stream's task waits for the client.
pub const WATCH_RESPONSE_QUEUE: usize = 128;
/// ...and their encoded size (KiB): a response larger than this waits for an empty queue.
const QUEUE_BUDGET_KIB: u32 = 4 * 1024;
/// Most watchers on one stream.
pub const MAX_WATCHERS_PER_STREAM: usize = 10_000;
/// etcd's `grpcOverheadBytes`: fragments may reach `--max-request-bytes` plus this.
const FRAGMENT_OVERHEAD_BYTES: usize = 512 * 1024;
/// Event bytes gathered per read pass (a revision is never split across passes), and the
/// size of the responses they are sent in.
const READ_BUDGET_BYTES: usize = 1024 * 1024;
/// Changes gathered per read pass: with `prev_kv` a tombstone's event carries the whole
/// previous value, which the byte budget does not see.
const READ_BUDGET_CHANGES: usize = 1000;
/// Streams that required a leader are cancelled after this many election timeouts
/// without one (etcd's `maxNoLeaderCnt`).
const MAX_NO_LEADER_TICKS: u32 = 3;

const CANCEL_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const CANCEL_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const CANCEL_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

struct Watcher {
    id: i64,
    range: KeyRange,
    /// The next revision this watcher owes the client.
    next: Revision,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
}

impl Watcher {
    fn wants(&self, change: &Change) -> bool {
        if change.revision < self.next {
            return false;
        }
        if (change.deleted && self.no_delete) || (!change.deleted && self.no_put) {
            return false;
        }
        Mvcc::range_contains(&self.range, &change.kv.key)
    }
}

#[tonic::async_trait]
impl Watch for EtcdApi {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = requires_leader(&request);
        if require_leader && !has_leader(&self.node) {
            return Err(Error::NoLeader.into());
        }
        let (tx, rx) = mpsc::channel(WATCH_RESPONSE_QUEUE);
        let stream = WatchStream {
            node: self.node.clone(),
            tx,
            queued: Arc::new(Semaphore::new(QUEUE_BUDGET_KIB as usize)),
            watchers: BTreeMap::new(),
            compacted_ids: BTreeSet::new(),
            next_auto_id: 0,
            synced: 0,
            caller: crate::auth_grpc::caller(&request),
            counted_watchers: 0,
        };
        crate::metrics::WATCH_STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node = self.node.clone();
        let stopped = stream.tx.clone();
        tokio::spawn(async move {
            let _open = node.open_streams.watch();
            tokio::select! {
                () = stream.run(request.into_inner(), require_leader) => {}
                // The member stops: the stream ends wherever it waited (on the client, on
                // the queue) with etcd's status for a stopped server, which clients retry
                // on another member. A client that reads nothing has a full queue: its
                // stream ends when the transport closes.
                () = node.stopped() => {
                    let _ = stopped.try_send((Err(Error::Stopped.into()), None));
                }
            }
        });
        // A response's share of the byte budget is released when the transport takes it.
        let responses = ReceiverStream::new(rx).map(|(response, _permit)| response);
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Whether this member sees a leader, for `hasleader` streams. openraft leaders do not step
/// down when they lose their quorum (etcd's leaders do: CheckQuorum), so a leader that has
/// not heard from a quorum for an election timeout counts as none; and a follower keeps
/// naming a dead leader while its pre-votes fail, so one silent for an election timeout
/// counts as none too (see [`crate::campaign`]).
fn has_leader(node: &StoreNode) -> bool {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    match metrics.current_leader {
        None => false,
        Some(leader) if leader == node.id => metrics
            .millis_since_quorum_ack
            .is_some_and(|ms| u128::from(ms) <= node.config.election_timeout.as_millis()),
        Some(_) => !node.election_hold.leader_silent(),
    }
}

/// etcd's `IsCreateEvent`: a put whose key was created at that revision.
fn is_create(change: &Change) -> bool {
    !change.deleted && change.kv.create_revision == change.revision
}

/// A queued response and its share of the stream's byte budget.
type Queued = (Result<WatchResponse, Status>, Option<OwnedSemaphorePermit>);

/// One client stream and its watchers.
struct WatchStream {
    node: Arc<StoreNode>,
    tx: mpsc::Sender<Queued>,
    /// The byte budget of responses queued and not yet taken by the transport.
    queued: Arc<Semaphore>,
    watchers: BTreeMap<i64, Watcher>,
    /// Watchers cancelled by compaction: like etcd, their IDs stay taken until the client
    /// cancels them (and that cancel is answered).
    compacted_ids: BTreeSet<i64>,
    next_auto_id: i64,
    /// Every watcher has been sent every event up to this revision.
    synced: Revision,
    /// Who opened the stream (auth on), for the read check of each watch.
    caller: Option<crate::auth_grpc::Caller>,
    /// This stream's share of [`crate::metrics::WATCHERS`].
    counted_watchers: i64,
}

impl WatchStream {
    /// Brings this stream's share of the open-watcher gauge up to date.
    fn count_watchers(&mut self) {
        let now = self.watchers.len() as i64;
        if now != self.counted_watchers {
            crate::metrics::WATCHERS.fetch_add(
                now - self.counted_watchers,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.counted_watchers = now;
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        crate::metrics::WATCHERS.fetch_sub(self.counted_watchers, Relaxed);
        crate::metrics::WATCH_STREAMS.fetch_sub(1, Relaxed);
    }
}

/// The stream ended (client gone or the stream was cancelled).
struct Closed;

impl WatchStream {
    async fn run(mut self, mut requests: Streaming<WatchRequest>, require_leader: bool) {
        let mut revisions = self.node.sm.subscribe();
        let progress_interval = self.node.config.watch_progress_notify_interval;
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + progress_interval,
            progress_interval,
        );
        let mut leader_check = tokio::time::interval(self.node.config.election_timeout);
        // After the task waited on a slow client, ticks must not fire in a burst: three
        // leaderless ticks in a row have to span three election timeouts.
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut no_leader_ticks = 0u32;
        // Like etcd, a client that closes its sending side keeps the stream and its
        // watchers; the stream ends when the client goes away (the response side closes).
        let mut requests_open = true;
        loop {
            let synced = self.sync().await;
            self.count_watchers();
            if synced.is_err() {
                return;
            }
            let step = tokio::select! {
                message = requests.message(), if requests_open => match message {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) => {
                        requests_open = false;
                        Ok(())
                    }
                    // The transport failed.
                    Err(_) => Err(Closed),
                },
                _ = self.tx.closed() => Err(Closed),
                changed = revisions.changed() => match changed {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Closed),
                },
                _ = progress.tick() => self.periodic_progress().await,
                _ = leader_check.tick(), if require_leader => {
                    if has_leader(&self.node) {
                        no_leader_ticks = 0;
                        Ok(())
                    } else {
                        no_leader_ticks += 1;
                        if no_leader_ticks >= MAX_NO_LEADER_TICKS {
                            self.fail(Error::NoLeader).await;
                            Err(Closed)
                        } else {
                            Ok(())
                        }
                    }
                }
            };
            self.count_watchers();
            if step.is_err() {
                return;
            }
        }
    }

    /// Queue a response once the queue's byte budget has room for it.
    async fn send(&self, response: WatchResponse) -> Result<(), Closed> {
        let kib = (response.encoded_len() / 1024 + 1).min(QUEUE_BUDGET_KIB as usize) as u32;
        let permit = self
            .queued
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send((Ok(response), Some(permit)))
            .await
            .map_err(|_| Closed)
    }

    /// End the stream with an error status.
    async fn fail(&self, err: Error) {
        let _ = self.tx.send((Err(err.into()), None)).await;
    }

    fn response(&self, watch_id: i64, revision: Revision) -> WatchResponse {
        WatchResponse {
            header: Some(self.node.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) => {
                let known = self.watchers.remove(&watch_id).is_some()
                    || self.compacted_ids.remove(&watch_id);
                if known {
                    let current = self.node.sm.read().mvcc.current_revision();
                    let mut response = self.response(watch_id, current);
                    response.canceled = true;
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every watcher has everything up to `synced` (sync runs before each
                // request is handled), so this is a valid stream-wide bookmark.
                let response = self.response(-1, self.synced);
                self.send(response).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Closed> {
        #[cfg(feature = "chaos-bugs")]
        let create = WatchCreateRequest {
            start_revision: crate::chaos_bugs::watch_start_revision(create.start_revision),
            ..create
        };
        let (current, compacted) = {
            let state = self.node.sm.read();
            (state.mvcc.current_revision(), state.mvcc.compact_revision())
        };
        let refuse = |this: &Self, watch_id: i64, reason: &str| {
            let mut response = this.response(watch_id, current);
            response.created = true;
            response.canceled = true;
            response.cancel_reason = reason.to_string();
            response
        };
        if create.start_revision < 0 {
            let response = refuse(self, -1, CANCEL_COMPACTED);
            return self.send(response).await;
        }
        if self.watchers.len() + self.compacted_ids.len() >= MAX_WATCHERS_PER_STREAM {
            let response = refuse(self, -1, "etcdserver: too many watchers on this stream");
            return self.send(response).await;
        }
        let key = if create.key.is_empty() {
            vec![0]
        } else {
            create.key.clone()
        };
        // etcd's `watchStream.Watch`: a range whose end is not above its key (from-key
        // `"\0"` aside) is refused, as is a taken ID; both answer with watch ID -1.
        if !create.range_end.is_empty() && create.range_end != [0] && key >= create.range_end {
            let response = refuse(self, -1, CANCEL_EMPTY_RANGE);
            return self.send(response).await;
        }
        if let Err(err) =
            crate::auth_grpc::check_watch(&self.node, self.caller.as_ref(), &key, &create.range_end)
        {
            let response = refuse(self, -1, &err.to_string());
            return self.send(response).await;
        }
        let taken = |this: &Self, id: i64| {
            this.watchers.contains_key(&id) || this.compacted_ids.contains(&id)
        };
        let id = if create.watch_id != 0 {
            if taken(self, create.watch_id) {
                let response = refuse(self, -1, CANCEL_DUPLICATE_ID);
                return self.send(response).await;
            }
            create.watch_id
        } else {
            while taken(self, self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        };
        if create.watch_id == 0 {
            self.next_auto_id += 1;
        }
        let filters = &create.filters;
        let watcher = Watcher {
            id,
            range: KeyRange::new(&key, &create.range_end),
            next: if create.start_revision == 0 {
                current + 1
            } else {
                create.start_revision
            },
            no_put: filters.contains(&(watch_create_request::FilterType::Noput as i32)),
            no_delete: filters.contains(&(watch_create_request::FilterType::Nodelete as i32)),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            fragment: create.fragment,
        };
        let mut created = self.response(id, current);
        created.created = true;
        self.send(created).await?;
        if compacted > 0 && watcher.next < compacted {
            return self.cancel_compacted(id, compacted).await;
        }
        self.watchers.insert(id, watcher);
        Ok(())
    }

    /// Tell the client its watcher fell behind the compaction point. etcd's response
    /// carries only the compact revision and `canceled` (no reason, header revision 0);
    /// the ID stays taken until the client cancels it.
    async fn cancel_compacted(&mut self, id: i64, compacted: Revision) -> Result<(), Closed> {
        self.watchers.remove(&id);
        self.compacted_ids.insert(id);
        let mut response = self.response(id, 0);
        response.canceled = true;
        response.compact_revision = compacted;
        self.send(response).await
    }

    async fn periodic_progress(&mut self) -> Result<(), Closed> {
        let ids: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.progress_notify)
            .map(|w| w.id)
            .collect();
        for id in ids {
            let response = self.response(id, self.synced);
            self.send(response).await?;
        }
        Ok(())
    }

    /// Send every watcher what it is owed up to the current revision.
    async fn sync(&mut self) -> Result<(), Closed> {
        let engine = Arc::clone(self.node.sm.engine());
        loop {
            let (view, current, compacted) = {
                let state = self.node.sm.read();
                let current = state.mvcc.current_revision();
                // Nothing owed: no engine view (every apply wakes every stream).
                if self.watchers.values().all(|w| w.next > current) {
                    drop(state);
                    self.synced = current;
                    return Ok(());
                }
                (engine.read(), current, state.mvcc.compact_revision())
            };
            let view = match view {
                Ok(view) => view,
                Err(err) => {
                    self.fail(Error::Storage(err.to_string())).await;
                    return Err(Closed);
                }
            };
            // Watchers that fell behind the compaction point are cancelled (after the view
            // is released: no engine read transaction is held while waiting on the client).
            let behind: Vec<i64> = self
                .watchers
                .values()
                .filter(|w| compacted > 0 && w.next < compacted)
                .map(|w| w.id)
                .collect();
            for id in &behind {
                self.watchers.remove(id);
            }
            let Some(from) = self
                .watchers
                .values()
                .map(|w| w.next)
                .filter(|next| *next <= current)
                .min()
            else {
                drop(view);
                for id in behind {
                    self.cancel_compacted(id, compacted).await?;
                }
                self.synced = current;
                return Ok(());
            };
            // Read one budget's worth of whole revisions.
            let mut changes: Vec<Change> = Vec::new();
            let mut bytes = 0usize;
            let mut last_complete = current;
            let read = read_changes(view.as_ref(), from, current, &mut |change| {
                if (bytes >= READ_BUDGET_BYTES || changes.len() >= READ_BUDGET_CHANGES)
                    && changes
                        .last()
                        .is_some_and(|c| c.revision != change.revision)
                {
                    last_complete = change.revision - 1;
                    return false;
                }
                bytes += change.size();
                changes.push(change);
                true
            });
            drop(view);
            if let Err(err) = read {
                self.fail(Error::Storage(err.to_string())).await;
                return Err(Closed);
            }
            for id in behind {
                self.cancel_compacted(id, compacted).await?;
            }
            self.deliver(&changes, last_complete).await?;
            if last_complete >= current {
                self.synced = current;
                return Ok(());
            }
        }
    }

    /// Send each watcher its events among `changes` (all revisions up to `upto` complete)
    /// and advance it past `upto`.
    async fn deliver(&mut self, changes: &[Change], upto: Revision) -> Result<(), Closed> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(watcher) = self.watchers.get(&id) else {
                continue;
            };
            if watcher.next > upto {
                continue;
            }
            let events: Vec<Event> = {
                let state = self.node.sm.read();
                changes
                    .iter()
                    .filter(|change| watcher.wants(change))
                    .map(|change| Event {
                        r#type: if change.deleted {
                            event::EventType::Delete as i32
                        } else {
                            event::EventType::Put as i32
                        },
                        kv: Some(change.kv.clone()),
                        // Like etcd, a put that creates its key gets no prev_kv, even when
                        // the same txn deleted an earlier version first.
                        prev_kv: if watcher.prev_kv && !is_create(change) {
                            state.mvcc.value_before(&change.kv.key, change.revision)
                        } else {
                            None
                        },
                    })
                    .collect()
            };
            let fragment = watcher.fragment;
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.next = upto + 1;
            }
            // Responses of about the read budget, prev_kvs included, whole revisions each.
            let mut part: Vec<Event> = Vec::new();
            let mut size = 0usize;
            for event in events {
                let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                let boundary = part
                    .last()
                    .and_then(|e| e.kv.as_ref())
                    .is_some_and(|kv| kv.mod_revision != revision);
                if size >= READ_BUDGET_BYTES && boundary {
                    self.send_events(id, upto, std::mem::take(&mut part), fragment)
                        .await?;
                    size = 0;
                }
                size += event.encoded_len();
                part.push(event);
            }
            if !part.is_empty() {
                self.send_events(id, upto, part, fragment).await?;
            }
        }
        Ok(())
    }

    async fn send_events(
        &self,
        id: i64,
        revision: Revision,
        events: Vec<Event>,
        fragment: bool,
    ) -> Result<(), Closed> {
        #[cfg(feature = "chaos-bugs")]
        if !fragment && crate::chaos_bugs::watch_delivery_bug() {
            for part in crate::chaos_bugs::mangle_watch_events(events) {
                let mut response = self.response(id, revision);
                response.events = part;
                self.send(response).await?;
            }
            return Ok(());
        }
        if !fragment {
            let mut response = self.response(id, revision);
            response.events = events;
            return self.send(response).await;
        }
        // etcd's `sendFragments`: a response of at least `--max-request-bytes` plus the
        // gRPC overhead allowance (encoded size) with two or more events is split; each
        // part takes events until adding one more would reach the limit, and all but the
        // last carry `fragment = true` for the client to join them.
        let limit = self.node.config.max_request_bytes + FRAGMENT_OVERHEAD_BYTES;
        let base = WatchResponse {
            fragment: true,
            ..self.response(id, revision)
        }
        .encoded_len();
        let field_len = |event: &Event| {
            let len = event.encoded_len();
            1 + prost::encoding::encoded_len_varint(len as u64) + len
        };
        let mut parts: Vec<Vec<Event>> = vec![Vec::new()];
        let mut size = base;
        for event in events {
            let event_size = field_len(&event);
            if size + event_size >= limit && parts.last().is_some_and(|p| !p.is_empty()) {
                parts.push(Vec::new());
                size = base;
            }
            size += event_size;
            if let Some(part) = parts.last_mut() {
                part.push(event);
            }
        }
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let mut response = self.response(id, revision);
            response.events = part;
            response.fragment = i != last;
            self.send(response).await?;
        }
        Ok(())
    }
}

/// How often progress notifications go to watchers that asked for them (etcd's default).
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
