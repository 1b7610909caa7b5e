//! `skiff bench`: a load generator for the etcd v3 gRPC API, modelled on etcd's own
//! benchmark tool (`tools/benchmark`), and [`compare`], which runs the same matrix against a
//! skiff cluster and a real etcd cluster side by side.
//!
//! It talks to any etcd v3 endpoint (skiff or etcd) through the tonic clients generated in
//! `skiff-proto`, so it builds without `protoc`. The binary maps its flags onto
//! [`BenchConfig`] / [`compare::CompareConfig`]; this crate has no command-line parsing.
//!
//! Connections and clients work as in etcd's tool: `conns` gRPC connections are opened,
//! connection *i* to endpoint *i mod |endpoints|*, and client *j* sends its requests one at a
//! time over connection *j mod conns*. Operations are numbered; with `--rate` operation *n*
//! starts no earlier than *n / rate* seconds after the start.

pub mod apiserver;
pub mod chart;
pub mod compare;
pub mod controllers;
pub mod failover;
pub mod kube_api;
pub mod pods;
pub mod procfs;
pub mod proxy;
pub mod report;
pub mod scheduler;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::lease_client::LeaseClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, request_op, watch_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub use report::{Latencies, LatencySummary, Report, ServerUsage};

/// Operations run when neither a total nor a duration is given (etcd's default).
pub const DEFAULT_TOTAL: u64 = 10_000;

/// How long `watch` waits for outstanding events after the last put.
const WATCH_DRAIN: Duration = Duration::from_secs(10);

/// What a range reads: linearizable (through the leader's read index) or serializable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Serializable,
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "l" => Ok(Consistency::Linearizable),
            "s" => Ok(Consistency::Serializable),
            other => Err(format!("consistency must be l or s, not {other:?}")),
        }
    }
}

/// The operation a run repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// `Put` of a key from the key space with a `val_size` value.
    Put,
    /// `Range` of `key` (or `[key, end)`), like `benchmark range KEY [END]`.
    Range {
        key: Vec<u8>,
        end: Option<Vec<u8>>,
        consistency: Consistency,
        limit: i64,
        count_only: bool,
    },
    /// A `Txn` whose success branch puts `txn_ops` keys.
    TxnPut { txn_ops: usize },
    /// `watchers` watchers on the whole key space over `streams` watch streams; the clients
    /// put keys (values carry the send time) and each delivered event is one op whose
    /// latency is put-sent → event-received.
    Watch { watchers: usize, streams: usize },
    /// Each client grants a lease and sends keepalives on a `LeaseKeepAlive` stream; one
    /// op = one keepalive round trip.
    LeaseKeepalive,
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range { .. } => "range",
            Workload::TxnPut { .. } => "txn-put",
            Workload::Watch { .. } => "watch",
            Workload::LeaseKeepalive => "lease-keepalive",
        }
    }
}

/// One benchmark run. Field names follow etcd's benchmark flags.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    /// Stop after this many operations (default [`DEFAULT_TOTAL`] when `duration` is unset).
    pub total: Option<u64>,
    /// Stop after this long (whichever of `total` and `duration` comes first).
    pub duration: Option<Duration>,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: u64,
    pub sequential_keys: bool,
    /// Operations per second over all clients; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Connect timeout per connection.
    pub dial_timeout: Duration,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    pub workload: Workload,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            endpoints: vec!["127.0.0.1:2379".to_string()],
            clients: 1,
            conns: 1,
            total: None,
            duration: None,
            key_size: 8,
            val_size: 8,
            key_space_size: 1,
            sequential_keys: false,
            rate: None,
            dial_timeout: Duration::from_secs(5),
            progress: true,
            workload: Workload::Put,
        }
    }
}

/// Why a run could not start or finish. Operation failures are not errors: they are
/// counted in the [`Report`].
#[derive(Debug)]
pub enum Error {
    /// Bad flags or configuration (the binary exits with 2).
    Config(String),
    /// Anything else that stopped the run (cannot connect, cannot start a cluster, IO).
    Run(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) | Error::Run(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

impl BenchConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return bad("--endpoints must name at least one endpoint".into());
        }
        if self.clients == 0 || self.conns == 0 {
            return bad("--clients and --conns must be at least 1".into());
        }
        if self.total == Some(0) {
            return bad("--total must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return bad("--duration must be positive".into());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return bad("--rate must be positive".into());
        }
        if self.key_space_size == 0 {
            return bad("--key-space-size must be at least 1".into());
        }
        let digits = (self.key_space_size - 1).to_string().len();
        if self.key_size < digits {
            return bad(format!(
                "--key-size {} is too small for --key-space-size {} (keys are {digits} decimal digits)",
                self.key_size, self.key_space_size
            ));
        }
        match &self.workload {
            Workload::TxnPut { txn_ops: 0 } => bad("--txn-ops must be at least 1".into()),
            // A txn may not put the same key twice.
            Workload::TxnPut { txn_ops } if *txn_ops as u64 > self.key_space_size => bad(format!(
                "--txn-ops {txn_ops} needs --key-space-size of at least {txn_ops} (a txn may not put a key twice)"
            )),
            Workload::Watch { watchers, streams } if *watchers == 0 || *streams == 0 => {
                bad("--watchers and --streams must be at least 1".into())
            }
            Workload::Range { key, .. } if key.is_empty() => {
                bad("range needs a non-empty KEY".into())
            }
            _ => Ok(()),
        }
    }

    fn effective_total(&self) -> Option<u64> {
        match (self.total, self.duration) {
            (None, None) => Some(DEFAULT_TOTAL),
            (total, _) => total,
        }
    }
}

/// Key *n* of the key space: `n` in decimal, zero-padded to `key_size` bytes.
pub fn key_of(n: u64, key_size: usize) -> Vec<u8> {
    format!("{n:0key_size$}").into_bytes()
}

/// A range end covering every key made by [`key_of`] (all keys are decimal digits).
pub const KEY_SPACE_END: &[u8] = b":";

/// Keys for operation numbers: sequential (`n mod space`) or uniformly random.
#[derive(Debug, Clone)]
struct KeyGen {
    size: usize,
    space: u64,
    sequential: bool,
}

impl KeyGen {
    fn key(&self, op: u64, rng: &mut StdRng) -> Vec<u8> {
        let n = if self.sequential {
            op % self.space
        } else {
            rng.random_range(0..self.space)
        };
        key_of(n, self.size)
    }

    /// `count` distinct keys for operation `op` (a txn): consecutive from `op * count`
    /// (sequential) or from a random start, wrapping around the key space.
    fn keys(&self, op: u64, count: u64, rng: &mut StdRng) -> Vec<Vec<u8>> {
        let first = if self.sequential {
            op.wrapping_mul(count) % self.space
        } else {
            rng.random_range(0..self.space)
        };
        (0..count)
            .map(|j| key_of((first + j) % self.space, self.size))
            .collect()
    }
}

/// The operation counter shared by all clients: hands out operation numbers, applies the
/// rate limit, and stops at the total or the deadline.
struct Pacer {
    start: Instant,
    issued: AtomicU64,
    done: AtomicU64,
    total: Option<u64>,
    deadline: Option<Instant>,
    rate: Option<f64>,
    stop: AtomicBool,
}

impl Pacer {
    fn new(config: &BenchConfig) -> Pacer {
        let start = Instant::now();
        Pacer {
            start,
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            total: config.effective_total(),
            deadline: config.duration.map(|d| start + d),
            rate: config.rate,
            stop: AtomicBool::new(false),
        }
    }

    async fn next(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let op = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.total.is_some_and(|total| op >= total) {
            return None;
        }
        if let Some(rate) = self.rate {
            let at = self.start + Duration::from_secs_f64(op as f64 / rate);
            if self.deadline.is_some_and(|d| at >= d) {
                return None;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) || self.stop.load(Ordering::Relaxed) {
            return None;
        }
        Some(op)
    }

    fn finished_one(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one client (or one watch stream) measured.
#[derive(Default)]
struct ClientStats {
    latencies: Latencies,
    ops: u64,
    errors: u64,
    messages: BTreeMap<String, u64>,
}

impl ClientStats {
    fn ok(&mut self, latency: Duration) {
        self.latencies.record(latency);
        self.ops += 1;
    }

    /// Count a failed operation. `Unimplemented` means every further request fails the
    /// same way: the whole run stops.
    fn failed(&mut self, status: &tonic::Status, pacer: &Pacer) {
        self.error(format!("{:?}: {}", status.code(), status.message()));
        if status.code() == tonic::Code::Unimplemented {
            pacer.stop.store(true, Ordering::Relaxed);
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        *self.messages.entry(message).or_insert(0) += 1;
    }

    fn merge(&mut self, other: ClientStats) {
        self.latencies.merge(&other.latencies);
        self.ops += other.ops;
        self.errors += other.errors;
        for (msg, n) in other.messages {
            *self.messages.entry(msg).or_insert(0) += n;
        }
    }
}

/// `http://` URL of an endpoint given as `host:port` or as a URL.
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Open `conns` connections, connection *i* to endpoint *i mod |endpoints|*.
async fn connect(config: &BenchConfig) -> Result<Vec<Channel>, Error> {
    let mut channels = Vec::with_capacity(config.conns);
    for i in 0..config.conns {
        let endpoint = &config.endpoints[i % config.endpoints.len()];
        channels.push(connect_one(endpoint, config.dial_timeout).await?);
    }
    Ok(channels)
}

/// One gRPC connection to an endpoint.
pub async fn connect_one(endpoint: &str, timeout: Duration) -> Result<Channel, Error> {
    let url = endpoint_url(endpoint);
    tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| Error::Config(format!("bad endpoint {endpoint:?}: {e}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| Error::Run(format!("cannot connect to {url}: {e}")))
}

/// A value of `size` bytes (random, not compressible, fixed for the run).
fn make_value(size: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    (0..size).map(|_| rng.random_range(b'a'..=b'z')).collect()
}

/// Run one benchmark and return its report and latency histogram. Operation errors are
/// counted in the report; only setup failures return `Err`.
pub async fn run(config: &BenchConfig) -> Result<(Report, Latencies), Error> {
    config.validate()?;
    let channels = connect(config).await?;
    let servers = procfs::find_server_processes(&config.endpoints);
    let pids = procfs::pids(&servers);

    let pacer = Arc::new(Pacer::new(config));
    let bar = ProgressBar::start(config, pacer.clone());
    let before = procfs::CpuSample::take(&pids);
    let started = Instant::now();

    let (stats, extra, window) = match &config.workload {
        Workload::Watch { watchers, streams } => {
            run_watch(config, &channels, pacer.clone(), *watchers, *streams).await
        }
        _ => (
            run_clients(config, &channels, pacer.clone(), None).await,
            BTreeMap::new(),
            None,
        ),
    };
    // Watch: events per second over the put phase up to the last delivery, not the setup.
    let elapsed = window.unwrap_or_else(|| started.elapsed());
    let after = procfs::CpuSample::take(&pids);
    bar.finish();

    let report = build_report(config, &stats, elapsed, &servers, &before, &after, extra);
    Ok((report, stats.latencies))
}

fn build_report(
    config: &BenchConfig,
    stats: &ClientStats,
    elapsed: Duration,
    servers: &[procfs::ServerProcess],
    before: &procfs::CpuSample,
    after: &procfs::CpuSample,
    extra: BTreeMap<String, f64>,
) -> Report {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let per_op = |cpu: Duration| {
        if stats.ops == 0 {
            None
        } else {
            Some(cpu.as_secs_f64() * 1e6 / stats.ops as f64)
        }
    };
    let mut usage = Vec::new();
    let mut server_cpu = Duration::ZERO;
    for server in servers {
        let (Some(b), Some(a)) = (
            before.servers.get(&server.pid),
            after.servers.get(&server.pid),
        ) else {
            continue;
        };
        let cpu = a.saturating_sub(*b);
        server_cpu += cpu;
        usage.push(ServerUsage {
            pid: server.pid,
            endpoints: server.endpoints.clone(),
            cpu_s: cpu.as_secs_f64(),
            rss_mb: procfs::process_rss(server.pid).unwrap_or(0) as f64 / (1024.0 * 1024.0),
        });
    }
    let client_cpu = match (before.own, after.own) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let other_cores = match (before.machine, after.machine, client_cpu) {
        (Some(b), Some(a), Some(client)) => Some(
            a.saturating_sub(b)
                .saturating_sub(server_cpu)
                .saturating_sub(client)
                .as_secs_f64()
                / secs,
        ),
        _ => None,
    };
    let found = !usage.is_empty();
    Report {
        command: config.workload.name().to_string(),
        clients: config.clients,
        conns: config.conns,
        endpoints: config.endpoints.clone(),
        ops: stats.ops,
        errors: stats.errors,
        duration_s: secs,
        ops_per_sec: stats.ops as f64 / secs,
        latency_ms: stats.latencies.summary(),
        error_messages: stats.messages.clone(),
        server_cpu_us_per_op: if found { per_op(server_cpu) } else { None },
        client_cpu_us_per_op: client_cpu.and_then(per_op),
        server_rss_mb: found.then(|| usage.iter().map(|u| u.rss_mb).sum()),
        other_cores,
        servers: usage,
        extra,
    }
}

/// Spawn the clients and wait for them. `stamp`: put values carry the send time (watch).
async fn run_clients(
    config: &BenchConfig,
    channels: &[Channel],
    pacer: Arc<Pacer>,
    stamp: Option<Instant>,
) -> ClientStats {
    let value = Arc::new(make_value(config.val_size));
    let keys = Arc::new(KeyGen {
        size: config.key_size,
        space: config.key_space_size,
        sequential: config.sequential_keys,
    });
    let mut tasks = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        let channel = channels[client % channels.len()].clone();
        let pacer = pacer.clone();
        let value = value.clone();
        let keys = keys.clone();
        let workload = config.workload.clone();
        tasks.push(tokio::spawn(async move {
            let rng = StdRng::seed_from_u64(client as u64 + 1);
            let client = Client {
                channel,
                pacer,
                value,
                keys,
                rng,
                stats: ClientStats::default(),
            };
            client.run(workload, stamp).await
        }));
    }
    let mut total = ClientStats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(err) => total.error(format!("client task failed: {err}")),
        }
    }
    total
}

struct Client {
    channel: Channel,
    pacer: Arc<Pacer>,
    value: Arc<Vec<u8>>,
    keys: Arc<KeyGen>,
    rng: StdRng,
    stats: ClientStats,
}

impl Client {
    async fn run(mut self, workload: Workload, stamp: Option<Instant>) -> ClientStats {
        match workload {
            Workload::Put | Workload::Watch { .. } => self.put_loop(stamp).await,
            Workload::Range {
                key,
                end,
                consistency,
                limit,
                count_only,
            } => {
                let request = RangeRequest {
                    key,
                    range_end: end.unwrap_or_default(),
                    limit,
                    count_only,
                    serializable: consistency == Consistency::Serializable,
                    ..Default::default()
                };
                // Like etcd's clients: no limit on the size of a range response.
                let mut kv =
                    KvClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX);
                while let Some(_op) = self.pacer.next().await {
                    let t0 = Instant::now();
                    let result = kv.range(request.clone()).await;
                    self.complete(t0, result.map(|_| ()));
                }
            }
            Workload::TxnPut { txn_ops } => {
                let mut kv = KvClient::new(self.channel.clone());
                while let Some(op) = self.pacer.next().await {
                    let success = self
                        .keys
                        .keys(op, txn_ops as u64, &mut self.rng)
                        .into_iter()
                        .map(|key| RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key,
                                value: self.value.to_vec(),
                                ..Default::default()
                            })),
                        })
                        .collect();
                    let t0 = Instant::now();
                    let result = kv
                        .txn(TxnRequest {
                            success,
                            ..Default::default()
                        })
                        .await;
                    self.complete(t0, result.map(|_| ()));
                }
            }
            Workload::LeaseKeepalive => self.keepalive_loop().await,
        }
        self.stats
    }

    fn complete<T>(&mut self, t0: Instant, result: Result<T, tonic::Status>) {
        match result {
            Ok(_) => self.stats.ok(t0.elapsed()),
            Err(status) => self.stats.failed(&status, &self.pacer),
        }
        self.pacer.finished_one();
    }

    async fn put_loop(&mut self, stamp: Option<Instant>) {
        let mut kv = KvClient::new(self.channel.clone());
        while let Some(op) = self.pacer.next().await {
            let key = self.keys.key(op, &mut self.rng);
            let mut value = self.value.to_vec();
            let t0 = Instant::now();
            if let Some(base) = stamp {
                let nanos = t0.duration_since(base).as_nanos() as u64;
                value[..8].copy_from_slice(&nanos.to_le_bytes());
            }
            let result = kv
                .put(PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await;
            self.complete(t0, result.map(|_| ()));
        }
    }

    async fn keepalive_loop(&mut self) {
        let mut lease = LeaseClient::new(self.channel.clone());
        let mut id = None;
        let mut stream: Option<(
            mpsc::Sender<LeaseKeepAliveRequest>,
            tonic::Streaming<skiff_proto::etcdserverpb::LeaseKeepAliveResponse>,
        )> = None;
        while let Some(_op) = self.pacer.next().await {
            let t0 = Instant::now();
            let lease_id = match id {
                Some(id) => id,
                None => match lease
                    .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                    .await
                {
                    Ok(resp) => {
                        let granted = resp.into_inner().id;
                        id = Some(granted);
                        granted
                    }
                    Err(status) => {
                        self.complete(t0, Err::<(), _>(status));
                        continue;
                    }
                },
            };
            if stream.is_none() {
                // etcd sends response headers only with the first response: queue the first
                // keepalive before awaiting the call.
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.send(LeaseKeepAliveRequest { id: lease_id }).await;
                match lease.lease_keep_alive(ReceiverStream::new(rx)).await {
                    Ok(resp) => {
                        let mut inbound = resp.into_inner();
                        match inbound.message().await {
                            Ok(Some(_)) => {
                                stream = Some((tx, inbound));
                                self.complete(t0, Ok::<(), tonic::Status>(()));
                            }
                            Ok(None) => self.complete(
                                t0,
                                Err::<(), _>(tonic::Status::unavailable("keepalive stream closed")),
                            ),
                            Err(status) => self.complete(t0, Err::<(), _>(status)),
                        }
                    }
                    Err(status) => self.complete(t0, Err::<(), _>(status)),
                }
                continue;
            }
            let Some((tx, inbound)) = stream.as_mut() else {
                continue;
            };
            let result = if tx
                .send(LeaseKeepAliveRequest { id: lease_id })
                .await
                .is_err()
            {
                Err(tonic::Status::unavailable("keepalive stream closed"))
            } else {
                match inbound.message().await {
                    Ok(Some(resp)) if resp.ttl > 0 => Ok(()),
                    Ok(Some(_)) => Err(tonic::Status::not_found("lease expired or revoked")),
                    Ok(None) => Err(tonic::Status::unavailable("keepalive stream closed")),
                    Err(status) => Err(status),
                }
            };
            if result.is_err() {
                stream = None;
            }
            self.complete(t0, result);
        }
        drop(stream);
        if let Some(id) = id {
            let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
        }
    }
}

/// Watchers, then puts; each delivered event is one op.
async fn run_watch(
    config: &BenchConfig,
    channels: &[Channel],
    pacer: Arc<Pacer>,
    watchers: usize,
    streams: usize,
) -> (ClientStats, BTreeMap<String, f64>, Option<Duration>) {
    let config = &BenchConfig {
        // Values carry the 8-byte send time.
        val_size: config.val_size.max(8),
        ..config.clone()
    };
    let streams = streams.min(watchers);
    let base = pacer.start;
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut total = ClientStats::default();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut created = 0usize;
    let first_key = key_of(0, config.key_size);
    for s in 0..streams {
        let count = watchers / streams + usize::from(s < watchers % streams);
        let (tx, rx) = mpsc::channel(count.max(1));
        for _ in 0..count {
            let _ = tx
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(
                        WatchCreateRequest {
                            key: first_key.clone(),
                            range_end: KEY_SPACE_END.to_vec(),
                            ..Default::default()
                        },
                    )),
                })
                .await;
        }
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        let mut inbound = match client.watch(ReceiverStream::new(rx)).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                total.failed(&status, &pacer);
                continue;
            }
        };
        // Wait until every watcher of the stream is created.
        let mut ready = 0usize;
        let mut early = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut ok = true;
        while ready < count {
            match tokio::time::timeout_at(deadline, inbound.message()).await {
                Ok(Ok(Some(resp))) => {
                    if resp.created {
                        ready += 1;
                    }
                    if resp.canceled {
                        total.error(format!("watch canceled: {}", resp.cancel_reason));
                        ok = false;
                        break;
                    }
                    early.push(resp);
                }
                Ok(Ok(None)) => {
                    total.error("watch stream closed before the watchers were created".into());
                    ok = false;
                    break;
                }
                Ok(Err(status)) => {
                    total.failed(&status, &pacer);
                    ok = false;
                    break;
                }
                Err(_) => {
                    total.error("watchers not created within 10 s".into());
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        created += count;
        senders.push(tx);
        let delivered = delivered.clone();
        let mut stop = stop_rx.clone();
        receivers.push(tokio::spawn(async move {
            let mut stats = ClientStats::default();
            let record = |resp: &skiff_proto::etcdserverpb::WatchResponse,
                          stats: &mut ClientStats| {
                let now = base.elapsed().as_nanos() as u64;
                for event in &resp.events {
                    let Some(kv) = &event.kv else { continue };
                    if kv.value.len() >= 8 {
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&kv.value[..8]);
                        let sent = u64::from_le_bytes(sent);
                        stats.ok(Duration::from_nanos(now.saturating_sub(sent)));
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            };
            for resp in &early {
                record(resp, &mut stats);
            }
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    message = inbound.message() => match message {
                        Ok(Some(resp)) => {
                            if resp.canceled {
                                stats.error(format!("watch canceled: {}", resp.cancel_reason));
                            }
                            record(&resp, &mut stats);
                        }
                        Ok(None) => {
                            stats.error("watch stream closed by the server".into());
                            break;
                        }
                        Err(status) => {
                            stats.error(format!("{:?}: {}", status.code(), status.message()));
                            break;
                        }
                    }
                }
            }
            stats
        }));
    }

    let mut extra = BTreeMap::new();
    extra.insert("watchers".to_string(), created as f64);
    if created == 0 {
        // No watcher: puts would measure nothing. Report the setup errors.
        return (total, extra, None);
    }
    let put_started = Instant::now();
    let puts = run_clients(config, channels, pacer.clone(), Some(base)).await;
    let put_secs = put_started.elapsed().as_secs_f64().max(1e-9);
    let expected = puts.ops * created as u64;
    // Wait for outstanding events: until all arrived, or no progress for WATCH_DRAIN.
    let mut last = delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > WATCH_DRAIN {
            break;
        }
    }
    // From the first put to the last delivery seen (within the 5 ms poll).
    let window = last_progress.duration_since(put_started);
    let _ = stop_tx.send(true);
    drop(senders);
    for receiver in receivers {
        match receiver.await {
            Ok(stats) => total.merge(stats),
            Err(err) => total.error(format!("watch task failed: {err}")),
        }
    }
    let missing = expected.saturating_sub(total.ops);
    if missing > 0 {
        total.errors += missing;
        *total
            .messages
            .entry("watch events not delivered".into())
            .or_insert(0) += missing;
    }
    // Put failures count as errors too; their latencies are not event latencies.
    total.errors += puts.errors;
    for (msg, n) in puts.messages {
        *total.messages.entry(format!("put: {msg}")).or_insert(0) += n;
    }
    extra.insert("puts".to_string(), puts.ops as f64);
    extra.insert("puts_per_sec".to_string(), puts.ops as f64 / put_secs);
    extra.insert("put_p99_ms".to_string(), puts.latencies.summary().p99);
    (total, extra, Some(window))
}

/// The progress bar: on stderr when it is a terminal, hidden otherwise.
struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressBar {
    fn start(config: &BenchConfig, pacer: Arc<Pacer>) -> ProgressBar {
        use std::io::IsTerminal;
        if !config.progress || !std::io::stderr().is_terminal() {
            return ProgressBar {
                bar: None,
                ticker: None,
            };
        }
        let by_count = config
            .effective_total()
            .filter(|_| config.duration.is_none());
        let bar = match by_count {
            Some(total) => indicatif::ProgressBar::new(total),
            None => indicatif::ProgressBar::new(
                config.duration.map(|d| d.as_millis() as u64).unwrap_or(1),
            ),
        };
        let template = if by_count.is_some() {
            "{prefix} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})"
        } else {
            "{prefix} [{bar:40}] {msg} ({elapsed} of the duration)"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(config.workload.name());
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let done = pacer.done.load(Ordering::Relaxed);
                if by_count.is_some() {
                    ticking.set_position(done);
                } else {
                    ticking.set_position(pacer.start.elapsed().as_millis() as u64);
                    ticking.set_message(format!("{done} ops"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ProgressBar {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Run a benchmark on a fresh runtime and print the report to stdout (text, then the JSON
/// line if `json`). What the `skiff bench` subcommands call.
pub fn run_and_print(config: BenchConfig, json: bool) -> Result<Report, Error> {
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Run(format!("cannot start runtime: {e}")))?;
    let (report, latencies) = runtime.block_on(run(&config))?;
    print!("{}", report.render_text(Some(&latencies)));
    if json {
        println!("{}", report.to_json());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width_decimal_inside_the_key_space_range() {
        assert_eq!(key_of(42, 8), b"00000042".to_vec());
        let keys = KeyGen {
            size: 6,
            space: 1000,
            sequential: true,
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(keys.key(1001, &mut rng), b"000001".to_vec());
        assert_eq!(
            keys.keys(333, 4, &mut rng),
            [
                b"000332".to_vec(),
                b"000333".to_vec(),
                b"000334".to_vec(),
                b"000335".to_vec()
            ]
        );
        let keys = KeyGen {
            sequential: false,
            ..keys
        };
        for op in 0..100 {
            let key = keys.key(op, &mut rng);
            assert_eq!(key.len(), 6);
            assert!(key.as_slice() >= key_of(0, 6).as_slice() && key.as_slice() < KEY_SPACE_END);
            assert!(key.as_slice() < key_of(1000, 6).as_slice());
        }
    }

    #[test]
    fn validation_rejects_bad_flags() {
        let ok = BenchConfig::default();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.effective_total(), Some(DEFAULT_TOTAL));
        for bad in [
            BenchConfig {
                clients: 0,
                ..ok.clone()
            },
            BenchConfig {
                total: Some(0),
                ..ok.clone()
            },
            BenchConfig {
                key_space_size: 1_000_000_000,
                ..ok.clone()
            },
            BenchConfig {
                rate: Some(0.0),
                ..ok.clone()
            },
            BenchConfig {
                workload: Workload::TxnPut { txn_ops: 0 },
                ..ok.clone()
            },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Config(_))), "{bad:?}");
        }
        let timed = BenchConfig {
            duration: Some(Duration::from_secs(1)),
            ..ok
        };
        assert_eq!(timed.effective_total(), None);
    }

    #[tokio::test]
    async fn pacer_stops_at_the_total_and_applies_the_rate() {
        let config = BenchConfig {
            total: Some(5),
            rate: Some(100.0),
            ..BenchConfig::default()
        };
        let pacer = Pacer::new(&config);
        let mut ops = Vec::new();
        while let Some(op) = pacer.next().await {
            ops.push(op);
        }
        assert_eq!(ops, vec![0, 1, 2, 3, 4]);
        // Operation 4 may start no earlier than 40 ms after the start.
        assert!(pacer.start.elapsed() >= Duration::from_millis(40));
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_run_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let config = BenchConfig {
            endpoints: vec![format!("127.0.0.1:{port}")],
            dial_timeout: Duration::from_millis(500),
            progress: false,
            ..BenchConfig::default()
        };
        assert!(matches!(run(&config).await, Err(Error::Run(_))));
    }
}
