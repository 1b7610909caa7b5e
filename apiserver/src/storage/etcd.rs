//! The etcd client layer under [`crate::storage::EtcdStorage`]: one lazily connecting gRPC
//! channel per `--etcd-servers` endpoint (https with `--etcd-cafile`/`--etcd-certfile`/
//! `--etcd-keyfile`), balanced and failed over as clientv3's balancer does.
//!
//! - **Health.** Every endpoint starts healthy. A transport failure, a timeout or an
//!   `Unavailable` answer marks it unhealthy: requests skip it (unless every endpoint is
//!   unhealthy) and a background prober re-probes it with a quick serializable Range, with
//!   exponential back-off, until it answers again.
//! - **Retries.** A request runs within [`REQUEST_BUDGET`] and [`MAX_ATTEMPTS`], each attempt
//!   bounded by [`ATTEMPT_TIMEOUT`], round-robin over the healthy endpoints. Reads (Range, watch
//!   creation) are idempotent and move on to the next endpoint after any transient failure. A
//!   write is moved on only if it certainly never reached a store (a connect error, `no
//!   leader`); otherwise the caller learns that it may have been applied
//!   ([`CallError::Ambiguous`]) and decides — `EtcdStorage` only ever writes compare-and-swap
//!   txns, which it re-issues and checks against what it wrote, and reports a 504 `Timeout`
//!   when it cannot tell.
//! - **Watches.** [`EtcdClient::watch`] follows the stream and, when the member serving it goes
//!   away (killed, restarted, paused: HTTP/2 keep-alive notices), re-creates it on another member
//!   from the revision after the last one delivered; the consumer sees one gap-free, duplicate-
//!   free stream. Only a compaction (or [`WATCH_RESUME_BUDGET`] without any member) ends it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Time to establish a TCP (and TLS) connection to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One attempt of one unary call (and of a watch creation, until the store confirms it).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// All attempts of one request together.
pub const REQUEST_BUDGET: Duration = Duration::from_secs(10);
/// Attempts of one request at most.
pub const MAX_ATTEMPTS: u32 = 12;
/// Pause after a round in which every endpoint failed: doubling from the first, capped.
pub const ROUND_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_millis(800));
/// How long a failed endpoint is left alone before the next probe: doubling, capped.
pub const MEMBER_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_secs(5));
/// How often the prober looks for endpoints due for a probe.
pub const PROBE_TICK: Duration = Duration::from_millis(100);
/// One probe (a serializable Range of one key).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 PING after this long without a frame from the member while a call or watch is open,
/// and the wait for its answer: a paused or vanished member's connection (and every call and
/// watch on it) fails within their sum. Not below etcd's `--grpc-keepalive-min-time` (5 s),
/// and never on idle connections (etcd refuses pings without streams: `too_many_pings`).
pub const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(3));
/// Requests (create, progress) queued towards one watch stream.
pub const WATCH_REQUEST_QUEUE: usize = 4;
/// Responses queued between a watch's task and its consumer.
pub const WATCH_RESPONSE_QUEUE: usize = 64;
/// How long a broken watch keeps trying to re-establish itself before it ends with an error.
pub const WATCH_RESUME_BUDGET: Duration = Duration::from_secs(30);
/// The whole `/readyz` etcd check.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response accepted (a big list).
pub const MAX_DECODING_MESSAGE_SIZE: usize = 64 << 20;

/// How to reach the store: `--etcd-servers` and the `--etcd-*file` TLS flags.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    pub servers: Vec<String>,
    /// `--etcd-cafile`: verifies the store's serving certificate (needed for https).
    pub ca_file: Option<std::path::PathBuf>,
    /// `--etcd-certfile` / `--etcd-keyfile`: the client certificate presented to the store.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--etcd-servers must name at least one endpoint")]
    NoServers,
    #[error("--etcd-servers {0}: {1}")]
    BadEndpoint(String, String),
    #[error(
        "--etcd-servers {0} is https: give the CA that signed its certificate in --etcd-cafile"
    )]
    HttpsWithoutCa(String),
    #[error("--etcd-certfile and --etcd-keyfile must be given together")]
    HalfIdentity,
    #[error("cannot read {0}: {1}")]
    Read(String, String),
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The store answered with an error that retrying elsewhere would not change.
    Store(tonic::Code, String),
    /// No endpoint took the request within the budget; it was certainly not applied.
    Unavailable(String),
    /// A write may have reached the store and been applied: nobody can tell.
    Ambiguous(String),
}

#[derive(Debug, Default)]
struct Health {
    /// Consecutive failures; 0 = healthy.
    failures: u32,
    /// When the prober may try again.
    probe_at: Option<Instant>,
    last_error: String,
}

struct Member {
    url: String,
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    health: Mutex<Health>,
}

impl Member {
    fn healthy(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures
            == 0
    }

    fn failed(&self, error: &str) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.failures = health.failures.saturating_add(1);
        health.probe_at = Some(Instant::now() + backoff(MEMBER_BACKOFF, health.failures));
        if health.failures == 1 {
            tracing::warn!(endpoint = %self.url, error, "etcd endpoint unhealthy");
        }
        health.last_error = error.to_string();
    }

    fn succeeded(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if health.failures > 0 {
            tracing::info!(endpoint = %self.url, "etcd endpoint healthy again");
        }
        *health = Health::default();
    }
}

fn backoff((base, max): (Duration, Duration), n: u32) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max)
}

struct Inner {
    members: Vec<Member>,
    next: AtomicUsize,
}

/// The balanced, failing-over etcd v3 client. Cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Read(path.display().to_string(), e.to_string()))
}

impl EtcdClient {
    /// Channels to every endpoint (`host:port` or URLs), connected lazily; starts the prober
    /// when called inside a Tokio runtime.
    pub fn new(config: &EtcdConfig) -> Result<EtcdClient, ConfigError> {
        if config.servers.is_empty() {
            return Err(ConfigError::NoServers);
        }
        if config.cert_file.is_some() != config.key_file.is_some() {
            return Err(ConfigError::HalfIdentity);
        }
        let mut tls = None;
        if let Some(ca) = &config.ca_file {
            let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            tls = Some(t);
        }
        let mut members = Vec::new();
        for server in &config.servers {
            let url = if server.contains("://") {
                server.clone()
            } else {
                format!("http://{server}")
            };
            let bad = |e: tonic::transport::Error| {
                ConfigError::BadEndpoint(url.clone(), describe_error(&e))
            };
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(bad)?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE.0)
                .keep_alive_timeout(KEEPALIVE.1)
                .keep_alive_while_idle(false);
            if url.starts_with("https://") {
                let Some(tls) = &tls else {
                    return Err(ConfigError::HttpsWithoutCa(url));
                };
                endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
            }
            let channel = endpoint.connect_lazy();
            members.push(Member {
                url,
                kv: KvClient::new(channel.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
                watch: WatchClient::new(channel.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
                maintenance: MaintenanceClient::new(channel),
                health: Mutex::new(Health::default()),
            });
        }
        let inner = Arc::new(Inner {
            members,
            next: AtomicUsize::new(0),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run_prober(Arc::downgrade(&inner)));
        }
        Ok(EtcdClient { inner })
    }

    /// The endpoints, each with whether it is healthy now.
    pub fn endpoints(&self) -> Vec<(String, bool)> {
        self.inner
            .members
            .iter()
            .map(|m| (m.url.clone(), m.healthy()))
            .collect()
    }

    /// The order to try endpoints in for one request: the healthy ones round-robin, then the
    /// unhealthy ones, those due for a probe soonest first.
    fn order(&self) -> Vec<usize> {
        let n = self.inner.members.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (mut healthy, mut sick) = (Vec::with_capacity(n), Vec::new());
        for i in (0..n).map(|k| (start + k) % n) {
            let member = &self.inner.members[i];
            let health = member.health.lock().unwrap_or_else(|p| p.into_inner());
            if health.failures == 0 {
                healthy.push(i);
            } else {
                sick.push((health.probe_at, i));
            }
        }
        sick.sort();
        healthy.extend(sick.into_iter().map(|(_, i)| i));
        healthy
    }

    /// One KV call with failover. `idempotent` calls (reads) move on after any transient
    /// failure; others only when the request certainly never reached a store.
    pub async fn kv<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T, CallError>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + REQUEST_BUDGET;
        let mut attempts = 0;
        let mut round = 0;
        let mut last = String::from("no endpoint tried");
        loop {
            for i in self.order() {
                if attempts >= MAX_ATTEMPTS || Instant::now() >= deadline {
                    return Err(CallError::Unavailable(last));
                }
                attempts += 1;
                let member = &self.inner.members[i];
                let timeout =
                    ATTEMPT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
                let outcome = tokio::time::timeout(timeout, call(member.kv.clone())).await;
                let status = match outcome {
                    Ok(Ok(resp)) => {
                        member.succeeded();
                        return Ok(resp.into_inner());
                    }
                    Ok(Err(status)) => status,
                    Err(_) => {
                        let error = format!("{}: no answer within {timeout:?}", member.url);
                        member.failed(&error);
                        if !idempotent {
                            return Err(CallError::Ambiguous(error));
                        }
                        last = error;
                        continue;
                    }
                };
                match classify(&status) {
                    Kind::Definitive => {
                        // The member answered: it is up.
                        member.succeeded();
                        return Err(CallError::Store(
                            status.code(),
                            status.message().to_string(),
                        ));
                    }
                    kind => {
                        let error = format!("{}: {}", member.url, describe_status(&status));
                        if kind == Kind::MemberDown {
                            member.failed(&error);
                        }
                        if !idempotent && kind != Kind::NotSent && !never_sent(&status) {
                            return Err(CallError::Ambiguous(error));
                        }
                        last = error;
                    }
                }
            }
            round += 1;
            let pause = backoff(ROUND_BACKOFF, round)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    /// The etcd version each member reports (Maintenance Status), `None` for a member that
    /// did not answer within [`HEALTH_CHECK_TIMEOUT`].
    pub async fn server_versions(&self) -> Vec<Option<String>> {
        let calls = self.inner.members.iter().map(|member| {
            let mut client = member.maintenance.clone();
            async move {
                let status = client.status(skiff_proto::etcdserverpb::StatusRequest {});
                match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, status).await {
                    Ok(Ok(resp)) => Some(resp.into_inner().version),
                    _ => None,
                }
            }
        });
        futures::future::join_all(calls).await
    }

    /// The `/readyz` etcd check: a serializable Range on any endpoint (healthy ones first)
    /// answers within [`HEALTH_CHECK_TIMEOUT`]. Fails only when no member answers at all.
    pub async fn check(&self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTH_CHECK_TIMEOUT;
        let mut errors = Vec::new();
        for i in self.order() {
            let member = &self.inner.members[i];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                errors.push(format!("{}: not tried in time", member.url));
                continue;
            }
            match tokio::time::timeout(left.min(PROBE_TIMEOUT), probe(member)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => errors.push(format!("{}: {e}", member.url)),
                Err(_) => errors.push(format!("{}: no answer", member.url)),
            }
        }
        Err(format!("no etcd endpoint answered: {}", errors.join("; ")))
    }

    /// A watch whose responses (created confirmations excluded) arrive in order, each revision
    /// once, across member failures. The first creation is awaited here, so a compacted start
    /// revision is an immediate `Err`. `progress_every` asks the store for progress
    /// notifications that often; each notification of `progress_on_demand` asks for one more
    /// at once (etcd's `WatchProgressRequest`, as kube-apiserver's consistent reads from its
    /// watch cache do).
    pub async fn watch(
        &self,
        create: WatchCreateRequest,
        progress_every: Option<Duration>,
        progress_on_demand: Option<Arc<tokio::sync::Notify>>,
    ) -> Result<mpsc::Receiver<Result<WatchResponse, WatchError>>, WatchError> {
        let opened = self
            .open_watch(&create, Instant::now() + REQUEST_BUDGET, None)
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_RESPONSE_QUEUE);
        let next = create.start_revision;
        tokio::spawn(follow_watch(
            self.clone(),
            create,
            opened,
            next,
            progress_every,
            progress_on_demand,
            tx,
        ));
        Ok(rx)
    }

    async fn open_watch(
        &self,
        create: &WatchCreateRequest,
        deadline: Instant,
        avoid: Option<usize>,
    ) -> Result<OpenWatch, WatchError> {
        let mut round = 0;
        let mut last = String::from("no endpoint tried");
        loop {
            let mut order = self.order();
            if let Some(avoid) = avoid
                && order.len() > 1
                && let Some(pos) = order.iter().position(|&i| i == avoid)
            {
                let i = order.remove(pos);
                order.push(i);
            }
            for i in order {
                if Instant::now() >= deadline {
                    return Err(WatchError::Unavailable(last));
                }
                let member = &self.inner.members[i];
                match tokio::time::timeout(ATTEMPT_TIMEOUT, open_on(member, create)).await {
                    Ok(Ok((requests, responses))) => {
                        member.succeeded();
                        return Ok(OpenWatch {
                            member: i,
                            requests,
                            responses,
                        });
                    }
                    Ok(Err(WatchError::Compacted(rev))) => return Err(WatchError::Compacted(rev)),
                    Ok(Err(e)) => {
                        last = format!("{}: {e}", member.url);
                        member.failed(&last);
                    }
                    Err(_) => {
                        last = format!(
                            "{}: watch not confirmed within {ATTEMPT_TIMEOUT:?}",
                            member.url
                        );
                        member.failed(&last);
                    }
                }
            }
            round += 1;
            let pause = backoff(ROUND_BACKOFF, round)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }
}

/// Why a watch could not be (re-)established or ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The start revision is compacted; the store's compact revision.
    #[error("required revision has been compacted (compact revision {0})")]
    Compacted(i64),
    #[error("{0}")]
    Unavailable(String),
}

struct OpenWatch {
    member: usize,
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

async fn open_on(
    member: &Member,
    create: &WatchCreateRequest,
) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>), WatchError> {
    let (tx, rx) = mpsc::channel(WATCH_REQUEST_QUEUE);
    tx.try_send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create.clone())),
    })
    .map_err(|_| WatchError::Unavailable("watch request queue full".into()))?;
    let unavailable = |s: tonic::Status| WatchError::Unavailable(describe_status(&s));
    let mut responses = member
        .watch
        .clone()
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(unavailable)?
        .into_inner();
    let first = responses
        .message()
        .await
        .map_err(unavailable)?
        .ok_or_else(|| WatchError::Unavailable("watch stream ended".into()))?;
    if first.canceled {
        return Err(if first.compact_revision > 0 {
            WatchError::Compacted(first.compact_revision)
        } else {
            WatchError::Unavailable(format!("watch canceled: {}", first.cancel_reason))
        });
    }
    Ok((tx, responses))
}

/// Forwards a watch's responses, re-creating it on another member from `next` (the revision
/// after the last one delivered) whenever its stream breaks.
async fn follow_watch(
    client: EtcdClient,
    mut create: WatchCreateRequest,
    mut open: OpenWatch,
    mut next: i64,
    progress_every: Option<Duration>,
    progress_on_demand: Option<Arc<tokio::sync::Notify>>,
    tx: mpsc::Sender<Result<WatchResponse, WatchError>>,
) {
    let mut ticker = progress_every.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let tick = async {
            match &mut ticker {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        let asked = async {
            match &progress_on_demand {
                Some(notify) => notify.notified().await,
                None => std::future::pending().await,
            }
        };
        let broken = tokio::select! {
            _ = tx.closed() => return,
            _ = asked => {
                let _ = open.requests.try_send(WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                });
                continue;
            }
            _ = tick => {
                // etcd's own progress notifications come every 10 minutes; ask more often.
                // A full queue means requests are already waiting: skip this one.
                let _ = open.requests.try_send(WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                });
                continue;
            }
            message = open.responses.message() => match message {
                Ok(Some(resp)) if resp.canceled && resp.compact_revision > 0 => {
                    let _ = tx.send(Err(WatchError::Compacted(resp.compact_revision))).await;
                    return;
                }
                Ok(Some(resp)) if resp.canceled => format!("watch canceled: {}", resp.cancel_reason),
                Ok(Some(resp)) if resp.created => continue,
                Ok(Some(resp)) => {
                    if let Some(last) = resp.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision).max() {
                        next = next.max(last + 1);
                    } else if let Some(header) = &resp.header {
                        // A progress notification: everything up to here was delivered.
                        next = next.max(header.revision + 1);
                    }
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => "watch stream ended".to_string(),
                Err(status) => describe_status(&status),
            },
        };
        let member = &client.inner.members[open.member];
        let error = format!("{}: {broken}", member.url);
        member.failed(&error);
        tracing::info!(
            error,
            next,
            "etcd watch broken; re-establishing it on another member"
        );
        create.start_revision = next;
        let failed = open.member;
        open = match client
            .open_watch(&create, Instant::now() + WATCH_RESUME_BUDGET, Some(failed))
            .await
        {
            Ok(open) => open,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
    }
}

/// Probes one member with a serializable Range.
async fn probe(member: &Member) -> Result<(), String> {
    let req = RangeRequest {
        key: b"health".to_vec(),
        serializable: true,
        limit: 1,
        keys_only: true,
        ..Default::default()
    };
    match member.kv.clone().range(req).await {
        Ok(_) => Ok(()),
        Err(status) if classify(&status) == Kind::Definitive => Ok(()),
        Err(status) => Err(describe_status(&status)),
    }
}

/// Re-probes unhealthy endpoints when their back-off has passed; ends with the client.
async fn run_prober(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_TICK).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<usize> = (0..inner.members.len())
            .filter(|&i| {
                let health = inner.members[i]
                    .health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                health.failures > 0 && health.probe_at.is_none_or(|at| at <= now)
            })
            .collect();
        for i in due {
            let member = &inner.members[i];
            // Not due again until this probe's back-off passes, whatever it answers.
            match tokio::time::timeout(PROBE_TIMEOUT, probe(member)).await {
                Ok(Ok(())) => member.succeeded(),
                Ok(Err(e)) => member.failed(&e),
                Err(_) => member.failed("probe not answered"),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The store's own answer (not found, compacted, too large, ...).
    Definitive,
    /// The member is unreachable or broken: try another.
    MemberDown,
    /// A member answered that it did not take the request (no leader): try another.
    NotSent,
    /// Transient, member seems fine (e.g. `leader changed`, `request timed out`).
    Transient,
}

fn classify(status: &tonic::Status) -> Kind {
    use tonic::Code;
    let message = status.message();
    match status.code() {
        Code::Unavailable if message.starts_with("etcdserver: no leader") => Kind::NotSent,
        Code::Unavailable if message.starts_with("etcdserver: not leader") => Kind::NotSent,
        // The member is shutting down.
        Code::Unavailable if message.starts_with("etcdserver: server stopped") => Kind::MemberDown,
        Code::Unavailable if message.starts_with("etcdserver:") => Kind::Transient,
        // "required revision is a future revision": a member behind the others.
        Code::OutOfRange if message.contains("future revision") => Kind::Transient,
        Code::Unavailable
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted => Kind::MemberDown,
        _ => Kind::Definitive,
    }
}

/// A connect error (TCP or TLS handshake): the request never left this process.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A status with its whole source chain (where a TLS alert or `connection refused` is).
pub fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = err.source();
    }
    text
}

fn describe_error(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// Whether an etcd of `version` orders requested progress notifications after the events
/// they cover (etcd-io/etcd#15220, fixed in 3.4.31 and 3.5.13): kube-apiserver's
/// `RequestWatchProgress` check, which gates its consistent reads from the watch cache.
pub fn supports_watch_progress(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    match (major, minor) {
        (3, 4) => patch >= 31,
        (3, 5) => patch >= 13,
        (3, minor) => minor >= 6,
        (major, _) => major > 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff(b, 1), Duration::from_millis(100));
        assert_eq!(backoff(b, 2), Duration::from_millis(200));
        assert_eq!(backoff(b, 4), Duration::from_millis(800));
        assert_eq!(backoff(b, 5), Duration::from_secs(1));
        assert_eq!(backoff(b, 1000), Duration::from_secs(1));
    }

    #[test]
    fn store_answers_are_not_retried_and_no_leader_was_never_applied() {
        use tonic::{Code, Status};
        let kind = |c, m: &str| classify(&Status::new(c, m));
        assert_eq!(
            kind(Code::Unavailable, "etcdserver: no leader"),
            Kind::NotSent
        );
        assert_eq!(
            kind(Code::Unavailable, "etcdserver: request timed out"),
            Kind::Transient
        );
        assert_eq!(
            kind(Code::Unavailable, "tcp connect error"),
            Kind::MemberDown
        );
        assert_eq!(
            kind(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            Kind::Definitive
        );
        assert_eq!(
            kind(Code::InvalidArgument, "etcdserver: request is too large"),
            Kind::Definitive
        );
        assert!(!never_sent(&Status::unavailable("tcp connect error")));
    }

    #[tokio::test]
    async fn unreachable_endpoints_fail_over_and_are_marked() {
        // Two closed ports: every attempt is a connect error, retried within the budget.
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            })
            .collect();
        let client = EtcdClient::new(&EtcdConfig {
            servers: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            ..Default::default()
        })
        .unwrap();
        let started = Instant::now();
        let err = client
            .kv(false, |mut kv| async move {
                kv.range(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })
                .await
            })
            .await
            .unwrap_err();
        // A write that never left is not ambiguous.
        assert!(matches!(err, CallError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() <= REQUEST_BUDGET + Duration::from_secs(1));
        assert!(client.endpoints().iter().all(|(_, healthy)| !healthy));
        assert!(client.check().await.is_err());
    }

    #[test]
    fn https_needs_a_ca() {
        let err = EtcdClient::new(&EtcdConfig {
            servers: vec!["https://127.0.0.1:2379".into()],
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(matches!(err, ConfigError::HttpsWithoutCa(_)));
    }

    #[test]
    fn watch_progress_support_follows_kube_apiservers_versions() {
        for (version, supported) in [
            ("3.4.23", false),
            ("3.4.31", true),
            ("3.5.0", false),
            ("3.5.12", false),
            ("3.5.13", true),
            ("3.5.21", true),
            ("3.6.0", true),
            ("4.0.0", true),
            ("3.5", false),
            ("garbage", false),
        ] {
            assert_eq!(supports_watch_progress(version), supported, "{version}");
        }
    }
}
