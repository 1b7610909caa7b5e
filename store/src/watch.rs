//! The etcd Watch service: many watchers per bidirectional stream.
//!
//! Design: watchers *pull* from the history instead of being pushed events. Each watcher
//! only remembers the next revision it owes the client. Whenever the state machine's
//! revision moves (or a watcher is created), the stream's task reads the changes it still
//! owes from a consistent engine view — the records are keyed by revision — and sends
//! them, a whole revision per response. So events are ordered, unique and gap-free by
//! construction, a slow client only makes its own stream lag (the response queue is
//! bounded; nothing else buffers), a watch on a follower sees exactly what that member
//! applied, and resuming from any revision at or above the compaction point replays
//! from the records. A watcher whose next revision was compacted away is cancelled with
//! `compact_revision`, as etcd does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::watch_server::Watch;
use skiff_proto::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request,
};
use skiff_proto::mvccpb::{Event, event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::grpc::{EtcdApi, requires_leader};
use crate::mvcc::{Change, KeyRange, Mvcc, Revision, read_changes};
use crate::node::StoreNode;

/// Responses queued per stream before the stream's task waits for the client.
pub const WATCH_RESPONSE_QUEUE: usize = 128;
/// Most watchers on one stream.
pub const MAX_WATCHERS_PER_STREAM: usize = 10_000;
/// Event bytes gathered per read pass (a revision is never split across passes).
const READ_BUDGET_BYTES: usize = 1024 * 1024;
/// Streams that required a leader are cancelled after this many election timeouts
/// without one (etcd's `maxNoLeaderCnt`).
const MAX_NO_LEADER_TICKS: u32 = 3;

const CANCEL_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

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
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = requires_leader(&request);
        if require_leader && self.node.current_leader().is_none() {
            return Err(Error::NoLeader.into());
        }
        let (tx, rx) = mpsc::channel(WATCH_RESPONSE_QUEUE);
        let stream = WatchStream {
            node: self.node.clone(),
            tx,
            watchers: BTreeMap::new(),
            next_auto_id: 0,
            synced: 0,
        };
        tokio::spawn(stream.run(request.into_inner(), require_leader));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One client stream and its watchers.
struct WatchStream {
    node: Arc<StoreNode>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
    /// Every watcher has been sent every event up to this revision.
    synced: Revision,
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
        let mut no_leader_ticks = 0u32;
        loop {
            if self.sync().await.is_err() {
                return;
            }
            let step = tokio::select! {
                message = requests.message() => match message {
                    Ok(Some(request)) => self.handle(request).await,
                    // Client closed its side, or the transport failed.
                    Ok(None) | Err(_) => Err(Closed),
                },
                changed = revisions.changed() => match changed {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Closed),
                },
                _ = progress.tick() => self.periodic_progress().await,
                _ = leader_check.tick(), if require_leader => {
                    if self.node.current_leader().is_some() {
                        no_leader_ticks = 0;
                        Ok(())
                    } else {
                        no_leader_ticks += 1;
                        if no_leader_ticks >= MAX_NO_LEADER_TICKS {
                            let _ = self.tx.send(Err(Error::NoLeader.into())).await;
                            Err(Closed)
                        } else {
                            Ok(())
                        }
                    }
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Closed> {
        self.tx.send(Ok(response)).await.map_err(|_| Closed)
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
                if self.watchers.remove(&watch_id).is_some() {
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
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            let response = refuse(self, -1, "etcdserver: too many watchers on this stream");
            return self.send(response).await;
        }
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                let response = refuse(
                    self,
                    create.watch_id,
                    "mvcc: duplicate watch ID provided on the WatchStream",
                );
                return self.send(response).await;
            }
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        };
        if create.watch_id == 0 {
            self.next_auto_id += 1;
        }
        let key = if create.key.is_empty() {
            vec![0]
        } else {
            create.key.clone()
        };
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
            let mut response = self.response(id, current);
            response.canceled = true;
            response.compact_revision = compacted;
            response.cancel_reason = CANCEL_COMPACTED.to_string();
            return self.send(response).await;
        }
        self.watchers.insert(id, watcher);
        Ok(())
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
        loop {
            let (view, current, compacted) = {
                let state = self.node.sm.read();
                let view = match self.node.sm.engine().read() {
                    Ok(view) => view,
                    Err(err) => {
                        drop(state);
                        let _ = self
                            .tx
                            .send(Err(Error::Storage(err.to_string()).into()))
                            .await;
                        return Err(Closed);
                    }
                };
                (
                    view,
                    state.mvcc.current_revision(),
                    state.mvcc.compact_revision(),
                )
            };
            // Watchers that fell behind the compaction point are cancelled.
            let behind: Vec<i64> = self
                .watchers
                .values()
                .filter(|w| compacted > 0 && w.next < compacted)
                .map(|w| w.id)
                .collect();
            for id in behind {
                self.watchers.remove(&id);
                let mut response = self.response(id, current);
                response.canceled = true;
                response.compact_revision = compacted;
                response.cancel_reason = CANCEL_COMPACTED.to_string();
                self.send(response).await?;
            }
            let Some(from) = self
                .watchers
                .values()
                .map(|w| w.next)
                .filter(|next| *next <= current)
                .min()
            else {
                self.synced = current;
                return Ok(());
            };
            // Read one budget's worth of whole revisions.
            let mut changes: Vec<Change> = Vec::new();
            let mut bytes = 0usize;
            let mut last_complete = current;
            let read = read_changes(view.as_ref(), from, current, &mut |change| {
                if bytes >= READ_BUDGET_BYTES
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
                let _ = self
                    .tx
                    .send(Err(Error::Storage(err.to_string()).into()))
                    .await;
                return Err(Closed);
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
                        prev_kv: if watcher.prev_kv {
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
            if events.is_empty() {
                continue;
            }
            self.send_events(id, upto, events, fragment).await?;
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
        let limit = self.node.config.max_request_bytes;
        if !fragment {
            let mut response = self.response(id, revision);
            response.events = events;
            return self.send(response).await;
        }
        // Fragmenting: split into responses under the request limit; all but the last
        // carry `fragment = true` and the client joins them.
        let mut parts: Vec<Vec<Event>> = vec![Vec::new()];
        let mut size = 0usize;
        for event in events {
            let event_size = event
                .kv
                .as_ref()
                .map_or(0, |kv| kv.key.len() + kv.value.len())
                + event
                    .prev_kv
                    .as_ref()
                    .map_or(0, |kv| kv.key.len() + kv.value.len())
                + 64;
            if size + event_size > limit && parts.last().is_some_and(|p| !p.is_empty()) {
                parts.push(Vec::new());
                size = 0;
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
