//! Starting a store member: open the data directory, find out who we are (restart, new
//! cluster or joining an existing one), start Raft, serve peers and clients, and stop
//! cleanly when the shutdown future completes.
//!
//! Stopping is bounded whatever clients and peers do: a leader first hands leadership to
//! its most up-to-date voter (at most [`STOP_HANDOFF_BUDGET`], still serving); open streams (watch, lease
//! keep-alive, peer append streams) end at once with `Unavailable` "etcdserver: server
//! stopped" (raw append streams close); requests in flight get [`STOP_SERVE_GRACE`];
//! then Raft shuts down and the WAL and the engine are made durable. A stop that overruns
//! [`STOP_DEADLINE`] returns an error naming what was still open (the process exits anyway).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::cluster_server::ClusterServer;
use skiff_proto::etcdserverpb::kv_server::KvServer;
use skiff_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use skiff_proto::skiffpeer::Blob;
use skiff_proto::skiffpeer::peer_server::{Peer, PeerServer};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::config::{ClusterState, StoreConfig, socket_addr};
use crate::engine::{
    CoalescingEngine, CountingEngine, Durability, Engine, EngineError, RedbEngine, Table,
    WriteBatch,
};
use crate::error::Error;
use crate::grpc::{EtcdApi, PeerApi};
use crate::network::{Network, PEER_MAX_MESSAGE_BYTES, PeerChannels};
use crate::node::{StoreNode, hash_id, initial_member_id};
use crate::raft_log::{LogStore, decode, encode};
use crate::read_index::{ReadIndexBatcher, ReadIndexKind};
use crate::state_machine::StateMachineStore;
use crate::types::{Command, Member, MemberAttrs, MemberId, Raft};

const KEY_IDENTITY: &[u8] = b"identity";
/// Present while Raft still has to be initialised with this membership: written with the
/// identity of a new cluster's member, removed once Raft is initialised (so a crash in
/// between initialises on restart).
const KEY_BOOTSTRAP: &[u8] = b"bootstrap_members";
/// gRPC receive limit: the request limit plus etcd's 512 KiB of slack.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// When a stop begins, open streams end at once and requests in flight get this long to
/// finish; servers still busy then are abandoned (their connections close as the process
/// exits). etcd waits its request timeout, then closes its transports.
pub const STOP_SERVE_GRACE: Duration = Duration::from_secs(2);
/// Raft's core gets this long to stop.
const STOP_RAFT_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this long (and at most openraft's lease plus half an election timeout) for a stopping leader to hand
/// leadership over before it stops (see [`crate::transfer::hand_off_before_stop`]).
pub const STOP_HANDOFF_BUDGET: Duration = Duration::from_secs(3);
/// A stop returns within this long whatever clients, peers or the disk do; what was still
/// open then is logged and returned as the error.
pub const STOP_DEADLINE: Duration = Duration::from_secs(4);

/// Who this member is; written once, before Raft starts, and never changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) member_id: MemberId,
    pub(crate) cluster_id: u64,
    pub(crate) name: String,
}

/// A new cluster's initial members, from `--initial-cluster`.
pub(crate) type InitialMembers = BTreeMap<MemberId, Member>;

/// The identity of this member of a NEW cluster and the cluster's initial members: IDs
/// derived from the peer URLs and the cluster token, so every member computes the same.
pub(crate) fn new_cluster_identity(config: &StoreConfig) -> (Identity, InitialMembers) {
    let mut members = BTreeMap::new();
    for (name, urls) in &config.initial_cluster {
        members.insert(
            initial_member_id(urls, &config.initial_cluster_token),
            Member {
                name: name.clone(),
                peer_urls: urls.clone(),
            },
        );
    }
    let own = initial_member_id(
        &config.initial_advertise_peer_urls,
        &config.initial_cluster_token,
    );
    let mut id_bytes = Vec::new();
    for id in members.keys() {
        id_bytes.extend(id.to_be_bytes());
    }
    let identity = Identity {
        member_id: own,
        cluster_id: hash_id(&[&id_bytes, config.initial_cluster_token.as_bytes()]),
        name: config.name.clone(),
    };
    (identity, members)
}

/// Persist the identity (and, for a new cluster, the membership Raft must be initialised
/// with) in one durable write.
pub(crate) fn write_identity(
    engine: &dyn Engine,
    identity: &Identity,
    bootstrap: Option<&InitialMembers>,
) -> Result<(), Error> {
    let mut batch = WriteBatch::new();
    batch.put(Table::RaftMeta, KEY_IDENTITY, encode(identity));
    if let Some(members) = bootstrap {
        batch.put(Table::RaftMeta, KEY_BOOTSTRAP, encode(members));
    }
    engine.write(batch, Durability::Durable)?;
    Ok(())
}

fn read_bootstrap(engine: &dyn Engine) -> Result<Option<InitialMembers>, Error> {
    let view = engine.read()?;
    match view.get(Table::RaftMeta, KEY_BOOTSTRAP)? {
        Some(raw) => Ok(Some(decode(&raw)?)),
        None => Ok(None),
    }
}

/// The redb file of a member's data dir.
pub fn engine_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("member").join("store.redb")
}

/// A started member: its handle plus the tasks serving it.
pub struct RunningStore {
    pub node: Arc<StoreNode>,
    /// Each task with what it does, for the log when a stop overruns.
    tasks: Vec<(String, tokio::task::JoinHandle<()>)>,
    stop: tokio::sync::watch::Sender<bool>,
    engine: Arc<dyn Engine>,
    wal_dir: PathBuf,
}

/// How far a stop got, for the log line when it overruns [`STOP_DEADLINE`].
#[derive(Default)]
struct StopProgress(std::sync::Mutex<String>);

impl StopProgress {
    fn set(&self, step: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = step.to_string();
    }

    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl RunningStore {
    /// Stop: end open streams, let requests in flight finish (at most
    /// [`STOP_SERVE_GRACE`]), shut Raft down, make the WAL and the engine durable. Returns
    /// within [`STOP_DEADLINE`]; an error says what was still under way then.
    pub async fn shutdown(self) -> Result<(), Error> {
        let progress = StopProgress::default();
        let node = self.node.clone();
        // A leader hands over first (as etcd's does), still serving meanwhile.
        let budget = (crate::campaign::openraft_lease(&node.config)
            + node.config.election_timeout / 2)
            .min(STOP_HANDOFF_BUDGET);
        crate::transfer::hand_off_before_stop(&node, budget).await;
        match tokio::time::timeout(STOP_DEADLINE, self.stop_in_steps(&progress)).await {
            Ok(()) => Ok(()),
            Err(_) => {
                let (watches, keep_alives) = node.open_streams.counts();
                let still = format!(
                    "still {} ({watches} watch and {keep_alives} keep-alive streams open)",
                    progress.get()
                );
                tracing::error!(
                    "shutdown did not finish within {}s: {still}; exiting anyway",
                    STOP_DEADLINE.as_secs()
                );
                Err(Error::Internal(format!(
                    "shutdown did not finish within {}s: {still}",
                    STOP_DEADLINE.as_secs()
                )))
            }
        }
    }

    async fn stop_in_steps(self, progress: &StopProgress) {
        let RunningStore {
            node,
            tasks,
            stop,
            engine,
            wal_dir,
        } = self;
        progress.set("ending open streams and stopping the servers");
        let _ = stop.send(true);
        let grace = tokio::time::Instant::now() + STOP_SERVE_GRACE;
        let mut busy = Vec::new();
        for (name, mut task) in tasks {
            if tokio::time::timeout_at(grace, &mut task).await.is_err() {
                task.abort();
                busy.push(name);
            }
        }
        if !busy.is_empty() {
            let (watches, keep_alives) = node.open_streams.counts();
            tracing::warn!(
                still_busy = %busy.join(", "),
                watch_streams = watches,
                keep_alive_streams = keep_alives,
                "requests still in flight {}s after the stop began; abandoned (their connections close as the process exits)",
                STOP_SERVE_GRACE.as_secs()
            );
        }
        progress.set("shutting Raft down");
        match tokio::time::timeout(STOP_RAFT_TIMEOUT, node.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("raft shutdown: {e}"),
            Err(_) => tracing::warn!(
                "raft did not stop within {}s; going on",
                STOP_RAFT_TIMEOUT.as_secs()
            ),
        }
        progress.set("making the WAL and the engine durable");
        let flushed = crate::raft_log::run_blocking(move || {
            sync_wal_segments(&wal_dir)?;
            engine.write(WriteBatch::new(), Durability::Durable)
        })
        .await;
        match flushed {
            Ok(()) => tracing::info!("stopped; the WAL and the engine are durable"),
            Err(e) => tracing::error!("stopped; the final flush failed: {e}"),
        }
    }
}

/// fsync every WAL segment of `dir` (an fsync covers the file, whichever descriptor asks
/// for it). Called once Raft is down: nothing appends any more.
fn sync_wal_segments(dir: &Path) -> Result<(), EngineError> {
    let io = |path: &Path, e: std::io::Error| EngineError::Io(format!("{}: {e}", path.display()));
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        if path.extension().is_some_and(|ext| ext == "wal") {
            std::fs::File::open(&path)
                .and_then(|file| file.sync_data())
                .map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

/// Run a member until `shutdown` completes (also while it is still starting).
pub async fn run(config: StoreConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut shutdown = std::pin::pin!(shutdown);
    let running = tokio::select! {
        running = start(config) => running?,
        () = &mut shutdown => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    tokio::spawn(watch_own_removal(running.node.clone()));
    let mut removed = running.node.channels.removed();
    let outcome = tokio::select! {
        () = &mut shutdown => Ok(()),
        _ = removed.wait_for(|removed| *removed) => {
            tracing::error!("{}", Error::MemberRemoved);
            Err(Error::MemberRemoved)
        }
    };
    tracing::info!("shutting down");
    let stopped = running.shutdown().await;
    outcome.and(stopped)
}

/// A member that has been part of the configuration and then disappears from it was
/// removed: tell `run` to stop (the peers also tell it, if it asks them for votes).
async fn watch_own_removal(node: Arc<StoreNode>) {
    let mut metrics = node.raft.metrics();
    let mut seen_self = false;
    loop {
        let included = metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&node.id)
            .is_some();
        if included {
            seen_self = true;
        } else if seen_self {
            node.channels.mark_removed();
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

async fn bind_all(urls: &[String]) -> Result<Vec<TcpListener>, Error> {
    let mut listeners = Vec::new();
    for url in urls {
        let addr = socket_addr(url).map_err(|e| Error::Config(e.0))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("listen on {url}: {e}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn read_identity(engine: &dyn Engine) -> Result<Option<Identity>, Error> {
    let view = engine.read()?;
    match view.get(Table::RaftMeta, KEY_IDENTITY)? {
        Some(raw) => Ok(Some(decode(&raw)?)),
        None => Ok(None),
    }
}

fn raft_config(config: &StoreConfig) -> Result<openraft::Config, Error> {
    let heartbeat = config.heartbeat_interval.as_millis() as u64;
    // openraft's election timer is off: crate::campaign runs elections (with pre-vote).
    let (election_timeout_min, election_timeout_max) = crate::campaign::openraft_timeouts(config);
    let raft_config = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: heartbeat,
        election_timeout_min,
        election_timeout_max,
        // With --pre-vote, crate::campaign runs elections; otherwise openraft's timer does.
        enable_elect: !config.pre_vote,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
        // Bounded queues: at most this many entries per AppendEntries, chunks of 4 MiB.
        max_payload_entries: 64,
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    raft_config
        .validate()
        .map_err(|e| Error::Config(format!("raft configuration: {e}")))
}

/// Find our member ID in an existing cluster by asking the peers we were told about.
async fn join_existing(config: &StoreConfig, channels: &PeerChannels) -> Result<Identity, Error> {
    let mut own_urls = config.initial_advertise_peer_urls.clone();
    own_urls.sort();
    let peers: Vec<String> = config
        .initial_cluster
        .values()
        .flatten()
        .filter(|url| !own_urls.contains(url))
        .cloned()
        .collect();
    if peers.is_empty() {
        return Err(Error::Config(
            "--initial-cluster-state=existing needs at least one other member in --initial-cluster"
                .into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // A peer may not list us yet (it has not applied the `member add`) or any more (it
    // was itself removed and still runs): ask every peer, and give up on "not a member"
    // only after no reachable peer has listed us for a while.
    let mut refused_since: Option<tokio::time::Instant> = None;
    loop {
        let mut answered = false;
        for url in &peers {
            let Ok(info) = channels.cluster_info(url, Duration::from_secs(2)).await else {
                continue;
            };
            answered = true;
            let found = info.members.iter().find(|(_, member)| {
                let mut urls = member.peer_urls.clone();
                urls.sort();
                urls == own_urls
            });
            if let Some((id, _)) = found {
                return Ok(Identity {
                    member_id: *id,
                    cluster_id: info.cluster_id,
                    name: config.name.clone(),
                });
            }
        }
        let now = tokio::time::Instant::now();
        if answered && now > *refused_since.get_or_insert(now) + Duration::from_secs(5) {
            return Err(Error::Config(format!(
                "member with peer URLs {} is not in the cluster; add it first with `etcdctl member add`",
                own_urls.join(",")
            )));
        }
        if now > deadline {
            return Err(Error::Config(format!(
                "could not reach any existing member ({})",
                peers.join(",")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Start a member and return once it serves peers and clients.
pub async fn start(config: StoreConfig) -> Result<RunningStore, Error> {
    config.validate().map_err(|e| Error::Config(e.0))?;
    let member_dir = config.data_dir.join("member");
    for dir in [&config.data_dir, &member_dir] {
        // etcd's words; the error names the path (a read-only data dir is a config error).
        crate::fsutil::touch_private_dir(dir)
            .map_err(|e| Error::Config(format!("cannot access data directory: {e}")))?;
    }
    let engine: Arc<dyn Engine> = Arc::new(CountingEngine::new(CoalescingEngine::new(
        open_engine(&member_dir)?,
    )));
    #[cfg(feature = "chaos-bugs")]
    crate::chaos_bugs::init();
    #[cfg(feature = "chaos-bugs")]
    let engine = crate::chaos_bugs::choose_engine(engine, &member_dir)?;
    let channels = PeerChannels::new(config.peer_tls.client_config()?);
    // Peers must be reachable before we initialise or join.
    let peer_listeners = bind_all(&config.listen_peer_urls).await?;
    let client_listeners = bind_all(&config.listen_client_urls).await?;
    let metrics_listeners = bind_all(&config.listen_metrics_urls).await?;

    let (identity, bootstrap) = match read_identity(engine.as_ref())? {
        Some(identity) => {
            tracing::info!(member_id = %format!("{:x}", identity.member_id), "restarting member from its data dir");
            // A crash before the first initialise: initialise now.
            (identity, read_bootstrap(engine.as_ref())?)
        }
        None => {
            let (identity, members) = match config.initial_cluster_state {
                ClusterState::New => {
                    let (identity, members) = new_cluster_identity(&config);
                    (identity, Some(members))
                }
                ClusterState::Existing => (join_existing(&config, &channels).await?, None),
            };
            write_identity(engine.as_ref(), &identity, members.as_ref())?;
            tracing::info!(member_id = %format!("{:x}", identity.member_id), cluster_id = %format!("{:x}", identity.cluster_id), "new member");
            (identity, members)
        }
    };

    let raft_config = Arc::new(raft_config(&config)?);
    let sm = StateMachineStore::open(engine.clone())?;
    #[cfg(feature = "chaos-bugs")]
    crate::chaos_bugs::register_state_machine(&sm);
    let log = LogStore::with_wal_every(
        engine.clone(),
        &member_dir.join("wal"),
        config.backend_batch_interval,
    )
    .and_then(|log| log.for_member(identity.member_id))
    .map_err(|e| Error::Config(format!("cannot open the raft log: {e}")))?;
    let log_sync = log.log_sync();
    let sm = sm
        .with_log_sync(log_sync.clone())
        .with_token_ttl(config.auth.token_ttl);
    let log_syncs = log.sync_counter();
    let restored_leader = log
        .restored_leader_floor(identity.member_id)
        .map_err(|e| Error::Internal(format!("read raft state: {e}")))?;
    let network = Network {
        channels: channels.clone(),
        log_sync: Some(log_sync.clone()),
    };
    let raft = Raft::new(identity.member_id, raft_config, network, log, sm.clone())
        .await
        .map_err(|e| Error::Internal(format!("start raft: {e}")))?;
    if let Some(members) = bootstrap {
        // Every member of a new cluster initialises with the same membership; openraft
        // treats that as one and the same initial configuration. "Not allowed" means Raft
        // already has a vote or log (initialised before a crash): nothing left to do.
        match raft.initialize(members).await {
            Ok(()) => {}
            Err(openraft::error::RaftError::APIError(e)) => tracing::debug!("initialize: {e}"),
            Err(openraft::error::RaftError::Fatal(e)) => {
                return Err(Error::Internal(format!("initialize raft: {e}")));
            }
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::RaftMeta, KEY_BOOTSTRAP);
        engine.write(batch, Durability::Durable)?;
    }
    let config = Arc::new(config);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (reads, reads_queue) = ReadIndexBatcher::new(ReadIndexKind::Local);
    let (leader_reads, leader_reads_queue) = ReadIndexBatcher::new(ReadIndexKind::AsLeader);
    let node = Arc::new(StoreNode {
        id: identity.member_id,
        cluster_id: identity.cluster_id,
        proposer: crate::proposer::Proposer::start(raft.clone()),
        raft,
        sm,
        config: config.clone(),
        channels,
        leases: crate::lease::Primary::default(),
        restored_leader,
        log_syncs,
        reads,
        leader_reads,
        stop: stop_rx.clone(),
        open_streams: Default::default(),
        election_hold: Default::default(),
    });
    reads_queue.spawn(Arc::downgrade(&node));
    leader_reads_queue.spawn(Arc::downgrade(&node));

    let mut tasks = Vec::new();
    let peer_tls = config.peer_tls.server_config()?;
    for (listener, url) in peer_listeners.into_iter().zip(&config.listen_peer_urls) {
        let tls = if url.starts_with("https://") {
            peer_tls.clone()
        } else {
            None
        };
        tasks.push((
            format!("peer server on {url}"),
            tokio::spawn(serve_peer(node.clone(), listener, tls, stop_rx.clone())),
        ));
    }
    let client_tls = config.client_tls.server_config()?;
    for (listener, url) in client_listeners.into_iter().zip(&config.listen_client_urls) {
        let tls = if url.starts_with("https://") {
            client_tls.clone()
        } else {
            None
        };
        tasks.push((
            format!("client server on {url}"),
            tokio::spawn(serve_client(node.clone(), listener, tls, stop_rx.clone())),
        ));
    }
    for (listener, url) in metrics_listeners
        .into_iter()
        .zip(&config.listen_metrics_urls)
    {
        let router = crate::http::routes(node.clone());
        let mut stop_rx = stop_rx.clone();
        tasks.push((
            format!("metrics server on {url}"),
            tokio::spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    })
                    .await;
            }),
        ));
    }
    tasks.push((
        "commit heartbeats".into(),
        tokio::spawn(send_commit_when_synced(
            node.raft.clone(),
            log_sync,
            stop_rx.clone(),
        )),
    ));
    if config.pre_vote {
        tasks.push((
            "election timer".into(),
            tokio::spawn(crate::campaign::run(node.clone(), stop_rx.clone())),
        ));
    }
    tasks.push((
        "lease expiry".into(),
        crate::lease::start(node.clone(), stop_rx.clone()),
    ));
    tasks.push((
        "leader change count".into(),
        tokio::spawn(crate::metrics::watch_leader_changes(
            node.raft.clone(),
            stop_rx.clone(),
        )),
    ));
    tasks.push((
        "auto-compaction".into(),
        tokio::spawn(crate::compactor::run(node.clone(), stop_rx.clone())),
    ));
    tasks.push((
        "memory trim".into(),
        tokio::spawn(crate::memory::trim_after_compactions(
            node.clone(),
            stop_rx.clone(),
        )),
    ));
    tasks.push((
        "attribute publishing".into(),
        tokio::spawn(publish_attributes(node.clone(), stop_rx)),
    ));
    tracing::info!(
        name = %config.name,
        client_urls = %config.advertise_client_urls.join(","),
        "ready to serve client requests"
    );
    Ok(RunningStore {
        node,
        tasks,
        stop,
        engine,
        wal_dir: member_dir.join("wal"),
    })
}

/// After the leader clamped the commit index it sent to the durable part of its log,
/// send a heartbeat as soon as the flusher catches up, so followers learn the full commit
/// index now instead of with the next write or heartbeat (see [`crate::log_sync`]).
async fn send_commit_when_synced(
    raft: Raft,
    log_sync: Arc<crate::log_sync::LogSync>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = log_sync.caught_up() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

fn open_engine(member_dir: &Path) -> Result<RedbEngine, Error> {
    RedbEngine::open(&member_dir.join("store.redb"))
        .map_err(|e| Error::Config(format!("open data dir: {e}")))
}

/// A tonic server builder, with TLS when the listener's URL is https.
fn server_builder(tls: Option<ServerTlsConfig>) -> Option<Server> {
    // TCP_NODELAY is set on the accepted sockets by `TcpIncoming` (the builder's own
    // setting does not apply to `serve_with_incoming`).
    let builder = Server::builder();
    match tls {
        None => Some(builder),
        Some(tls) => match builder.tls_config(tls) {
            Ok(builder) => Some(builder),
            Err(e) => {
                tracing::error!("TLS configuration refused: {e}");
                None
            }
        },
    }
}

async fn serve_peer(
    node: Arc<StoreNode>,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = PeerServer::new(StoppingPeer(PeerApi { node: node.clone() }))
        .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES);
    let plain = tls.is_none();
    let Some(mut builder) = server_builder(tls) else {
        return;
    };
    let router = builder.add_service(service);
    let shutdown = {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    };
    let result = if plain {
        // Raw append streams are served beside gRPC on a plain-text peer port.
        let (grpc, accepted) = tokio::sync::mpsc::channel(crate::peer_stream::PEER_ACCEPT_QUEUE);
        tokio::spawn(crate::peer_stream::accept_loop(
            node,
            listener,
            grpc,
            stop.clone(),
        ));
        router
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(accepted),
                shutdown,
            )
            .await
    } else {
        router
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    };
    if let Err(e) = result {
        tracing::error!("peer server: {e}");
    }
}

/// The peer service as served: an open append stream ends when this member stops, with
/// `Unavailable` "etcdserver: server stopped" (the sender stops using it); every other
/// call is [`PeerApi`]'s.
#[derive(Clone)]
struct StoppingPeer(PeerApi);

#[tonic::async_trait]
impl Peer for StoppingPeer {
    type AppendStreamStream = <PeerApi as Peer>::AppendStreamStream;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<Blob>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        use futures::StreamExt;
        let responses = self.0.append_stream(request).await?.into_inner();
        let node = self.0.node.clone();
        let stopped: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(async move { node.stopped().await });
        let until_stopped =
            futures::stream::unfold(Some((responses, stopped)), |state| async move {
                let (mut responses, mut stopped) = state?;
                tokio::select! {
                    item = responses.next() => {
                        item.map(|item| (item, Some((responses, stopped))))
                    }
                    () = &mut stopped => Some((Err(Error::Stopped.into()), None)),
                }
            });
        Ok(Response::new(Box::pin(until_stopped)))
    }

    async fn append_entries(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.0.append_entries(request).await
    }

    async fn vote(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.0.vote(request).await
    }

    async fn install_snapshot(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.0.install_snapshot(request).await
    }

    async fn forward(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.0.forward(request).await
    }

    async fn read_index(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.0.read_index(request).await
    }

    async fn members(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.0.members(request).await
    }
}

async fn serve_client(
    node: Arc<StoreNode>,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let api = EtcdApi { node: node.clone() };
    let limit = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let routes = Routes::new(KvServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(
            skiff_proto::etcdserverpb::watch_server::WatchServer::new(api.clone())
                .max_decoding_message_size(limit),
        )
        .add_service(
            skiff_proto::etcdserverpb::lease_server::LeaseServer::new(crate::lease::LeaseApi {
                node: node.clone(),
                stop: stop.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(MaintenanceServer::new(api).max_decoding_message_size(limit))
        // etcd's optional Lock and Election services (crate::lock, crate::election).
        .add_service(
            skiff_proto::v3lockpb::lock_server::LockServer::new(crate::lock::LockApi {
                recipe: crate::lock::Recipe::new(node.clone(), stop.clone()),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            skiff_proto::v3electionpb::election_server::ElectionServer::new(
                crate::election::ElectionApi {
                    recipe: crate::lock::Recipe::new(node.clone(), stop.clone()),
                },
            )
            .max_decoding_message_size(limit),
        )
        .add_service(
            skiff_proto::etcdserverpb::auth_server::AuthServer::new(crate::auth_grpc::AuthApi {
                node: node.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(health_service);
    // Who calls, and admin-only RPCs, once auth is on (see crate::auth_grpc).
    let grpc = routes
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            crate::auth_grpc::gate,
        ));
    // Only HTTP/2 with a gRPC content type reaches the gRPC services (see crate::http).
    let router = crate::http::client_port(grpc, crate::http::routes(node))
        .layer(axum::middleware::map_response(etcd_receive_limit_status))
        // etcd's grpc_server_* counters, on each call's final status (crate::metrics::grpc).
        .layer(crate::metrics::grpc::GrpcMetricsLayer);
    let Some(builder) = server_builder(tls) else {
        return;
    };
    let result = builder
        .accept_http1(true)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
        )
        .await;
    if let Err(e) = result {
        tracing::error!("client server: {e}");
    }
}

/// A request over the gRPC receive limit: tonic answers `OutOfRange` "Error, decoded message
/// length too large: found N bytes, the limit is: M bytes"; etcd (grpc-go) answers
/// `ResourceExhausted` "grpc: received message larger than max (N vs. M)". Rewrite tonic's
/// trailers-only error into etcd's.
async fn etcd_receive_limit_status(
    mut response: axum::response::Response,
) -> axum::response::Response {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != tonic::Code::OutOfRange {
        return response;
    }
    let Some((found, limit)) = status
        .message()
        .strip_prefix("Error, decoded message length too large: found ")
        .and_then(|rest| rest.strip_suffix(" bytes"))
        .and_then(|rest| rest.split_once(" bytes, the limit is: "))
    else {
        return response;
    };
    let etcd = tonic::Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ));
    let _ = etcd.add_header(response.headers_mut());
    response
}

/// Publish our name and client URLs through Raft once a leader exists (like etcd).
async fn publish_attributes(node: Arc<StoreNode>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let attrs = MemberAttrs {
        name: node.config.name.clone(),
        client_urls: node.config.advertise_client_urls.clone(),
    };
    loop {
        if node.sm.read().attrs.get(&node.id) == Some(&attrs) {
            return;
        }
        let command = Command::PublishMember {
            id: node.id,
            attrs: attrs.clone(),
        };
        let attempt = tokio::select! {
            result = node.write(command, true) => result,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        if attempt.is_ok() && node.sm.read().attrs.get(&node.id) == Some(&attrs) {
            tracing::info!("published member attributes");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
