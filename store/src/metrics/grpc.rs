//! go-grpc-prometheus's server metrics, as etcd exports them: `grpc_server_started_total`,
//! `grpc_server_handled_total` (by `grpc_code`), `grpc_server_msg_received_total` and
//! `grpc_server_msg_sent_total`, each labelled `grpc_type`, `grpc_service` and
//! `grpc_method`, counted by [`GrpcMetricsLayer`] on the client port.
//!
//! Every method of the services etcd registers before `grpc_prometheus.Register` is
//! listed in [`SERVICES`] with its counters, so its series exist (at 0) from the start, as in
//! etcd; the Lock and Election services etcd registers later appear once called. A call
//! costs a lookup in that table and a few relaxed atomic adds: no lock, no allocation but
//! the response body's wrapper (and the request body's, for client-streaming methods).
//!
//! A call is started when its request arrives and handled when its status is known: from
//! the response headers for a trailers-only answer, from the trailers at the end of the
//! body otherwise (so a stream counts when it ends), or `Canceled` when the body is
//! dropped before its trailers (the client went away). Messages are gRPC frames counted
//! on the bodies; a unary call receives one message and sends one if it succeeds, as
//! go-grpc-prometheus counts them.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, Request, Response};
use hyper::body::{Frame, SizeHint};

/// gRPC's codes by number, named as grpc-go's `codes.Code.String()`.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

const CANCELED: usize = 1;
const UNKNOWN: usize = 2;
const DEADLINE_EXCEEDED: usize = 4;
const UNAVAILABLE: usize = 14;

/// The code number a `grpc-status` value carries (`Unknown` for anything else).
pub fn code_index(grpc_status: &[u8]) -> usize {
    std::str::from_utf8(grpc_status)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|code| *code < CODE_NAMES.len())
        .unwrap_or(UNKNOWN)
}

/// go-grpc-prometheus's `grpc_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    pub fn label(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ClientStream => "client_stream",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }

    fn client_streams(self) -> bool {
        matches!(self, GrpcType::ClientStream | GrpcType::BidiStream)
    }
}

/// One gRPC method's counters.
pub struct GrpcMethod {
    pub name: &'static str,
    pub kind: GrpcType,
    /// A write that goes through Raft (counted in `etcd_server_proposals_*`).
    proposes: bool,
    started: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    handled: [AtomicU64; CODE_NAMES.len()],
}

impl GrpcMethod {
    const fn new(name: &'static str, kind: GrpcType, proposes: bool) -> GrpcMethod {
        GrpcMethod {
            name,
            kind,
            proposes,
            started: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            handled: [const { AtomicU64::new(0) }; CODE_NAMES.len()],
        }
    }

    /// Calls of this method handled with `code` (a [`CODE_NAMES`] index).
    pub fn handled(&self, code: usize) -> u64 {
        self.handled[code].load(Ordering::Relaxed)
    }

    fn finish(&self, code: usize) {
        self.handled[code].fetch_add(1, Ordering::Relaxed);
        if self.proposes {
            PROPOSALS_PENDING.fetch_sub(1, Ordering::Relaxed);
            if matches!(code, CANCELED | DEADLINE_EXCEEDED | UNAVAILABLE) {
                PROPOSALS_FAILED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A gRPC service and its methods.
pub struct GrpcService {
    pub name: &'static str,
    /// Whether etcd registers it before `grpc_prometheus.Register`, so that its series
    /// are exported from the start (the others appear once called).
    preregistered: bool,
    pub methods: &'static [GrpcMethod],
}

const fn unary(name: &'static str) -> GrpcMethod {
    GrpcMethod::new(name, GrpcType::Unary, false)
}

const fn unary_write(name: &'static str) -> GrpcMethod {
    GrpcMethod::new(name, GrpcType::Unary, true)
}

static KV_METHODS: [GrpcMethod; 5] = [
    unary("Range"),
    unary_write("Put"),
    unary_write("DeleteRange"),
    unary_write("Txn"),
    unary_write("Compact"),
];
static WATCH_METHODS: [GrpcMethod; 1] = [GrpcMethod::new("Watch", GrpcType::BidiStream, false)];
static LEASE_METHODS: [GrpcMethod; 5] = [
    unary_write("LeaseGrant"),
    unary_write("LeaseRevoke"),
    GrpcMethod::new("LeaseKeepAlive", GrpcType::BidiStream, false),
    unary("LeaseTimeToLive"),
    unary("LeaseLeases"),
];
static CLUSTER_METHODS: [GrpcMethod; 5] = [
    unary_write("MemberAdd"),
    unary_write("MemberRemove"),
    unary_write("MemberUpdate"),
    unary("MemberList"),
    unary_write("MemberPromote"),
];
static MAINTENANCE_METHODS: [GrpcMethod; 7] = [
    unary_write("Alarm"),
    unary("Status"),
    unary("Defragment"),
    unary("Hash"),
    unary("HashKV"),
    GrpcMethod::new("Snapshot", GrpcType::ServerStream, false),
    unary("MoveLeader"),
];
static AUTH_METHODS: [GrpcMethod; 16] = [
    unary_write("AuthEnable"),
    unary_write("AuthDisable"),
    unary_write("Authenticate"),
    unary_write("UserAdd"),
    unary("UserGet"),
    unary("UserList"),
    unary_write("UserDelete"),
    unary_write("UserChangePassword"),
    unary_write("UserGrantRole"),
    unary_write("UserRevokeRole"),
    unary_write("RoleAdd"),
    unary("RoleGet"),
    unary("RoleList"),
    unary_write("RoleDelete"),
    unary_write("RoleGrantPermission"),
    unary_write("RoleRevokePermission"),
];
static HEALTH_METHODS: [GrpcMethod; 2] = [
    unary("Check"),
    GrpcMethod::new("Watch", GrpcType::ServerStream, false),
];
static LOCK_METHODS: [GrpcMethod; 2] = [unary("Lock"), unary("Unlock")];
static ELECTION_METHODS: [GrpcMethod; 5] = [
    unary("Campaign"),
    unary("Proclaim"),
    unary("Leader"),
    GrpcMethod::new("Observe", GrpcType::ServerStream, false),
    unary("Resign"),
];

/// The client port's services, as etcd serves them.
pub static SERVICES: [GrpcService; 9] = [
    GrpcService {
        name: "etcdserverpb.KV",
        preregistered: true,
        methods: &KV_METHODS,
    },
    GrpcService {
        name: "etcdserverpb.Watch",
        preregistered: true,
        methods: &WATCH_METHODS,
    },
    GrpcService {
        name: "etcdserverpb.Lease",
        preregistered: true,
        methods: &LEASE_METHODS,
    },
    GrpcService {
        name: "etcdserverpb.Cluster",
        preregistered: true,
        methods: &CLUSTER_METHODS,
    },
    GrpcService {
        name: "etcdserverpb.Maintenance",
        preregistered: true,
        methods: &MAINTENANCE_METHODS,
    },
    GrpcService {
        name: "etcdserverpb.Auth",
        preregistered: true,
        methods: &AUTH_METHODS,
    },
    GrpcService {
        name: "grpc.health.v1.Health",
        preregistered: true,
        methods: &HEALTH_METHODS,
    },
    GrpcService {
        name: "v3lockpb.Lock",
        preregistered: false,
        methods: &LOCK_METHODS,
    },
    GrpcService {
        name: "v3electionpb.Election",
        preregistered: false,
        methods: &ELECTION_METHODS,
    },
];

/// Client calls of a Raft-writing method in flight (etcd: `etcd_server_proposals_pending`).
pub static PROPOSALS_PENDING: AtomicU64 = AtomicU64::new(0);
/// Raft-writing calls that ended unavailable, past their deadline or canceled (etcd:
/// `etcd_server_proposals_failed_total`: proposals that timed out or found no leader).
pub static PROPOSALS_FAILED: AtomicU64 = AtomicU64::new(0);

/// The method a request path (`/service/method`) names, if the client port serves it.
pub fn lookup(path: &str) -> Option<(&'static GrpcService, &'static GrpcMethod)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let service = SERVICES.iter().find(|s| s.name == service)?;
    let method = service.methods.iter().find(|m| m.name == method)?;
    Some((service, method))
}

/// Append the four counter families in Prometheus text, series ordered as the Go client
/// orders them (by label values: code, method, service, type).
pub fn render(out: &mut String) {
    let mut methods: Vec<(&GrpcService, &GrpcMethod)> = SERVICES
        .iter()
        .flat_map(|s| s.methods.iter().map(move |m| (s, m)))
        .filter(|(s, m)| s.preregistered || m.started.load(Ordering::Relaxed) > 0)
        .collect();
    methods.sort_by_key(|(s, m)| (m.name, s.name, m.kind.label()));
    let mut codes: Vec<usize> = (0..CODE_NAMES.len()).collect();
    codes.sort_by_key(|c| CODE_NAMES[*c]);
    let family = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&GrpcMethod) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (service, method) in &methods {
            let _ = writeln!(
                out,
                "{name}{{grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
                method.name,
                service.name,
                method.kind.label(),
                value(method)
            );
        }
    };
    let _ = writeln!(
        out,
        "# HELP grpc_server_handled_total Total number of RPCs completed on the server, \
         regardless of success or failure.\n# TYPE grpc_server_handled_total counter"
    );
    for code in codes {
        for (service, method) in &methods {
            let _ = writeln!(
                out,
                "grpc_server_handled_total{{grpc_code=\"{}\",grpc_method=\"{}\",\
                 grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
                CODE_NAMES[code],
                method.name,
                service.name,
                method.kind.label(),
                method.handled(code)
            );
        }
    }
    family(
        out,
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
        &|m| m.received.load(Ordering::Relaxed),
    );
    family(
        out,
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
        &|m| m.sent.load(Ordering::Relaxed),
    );
    family(
        out,
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        &|m| m.started.load(Ordering::Relaxed),
    );
}

/// Counts gRPC messages in a body: each is a 5-byte prefix (flag, big-endian length)
/// and that many bytes, split across data chunks anyhow.
#[derive(Default)]
struct MessageCounter {
    /// Prefix bytes seen of the next message (0..5).
    prefix_seen: u8,
    /// Its length, as far as read.
    length: u32,
    /// Bytes of the current message's payload still to come.
    remaining: u64,
}

impl MessageCounter {
    /// Messages whose prefix is complete in `chunk`.
    fn count(&mut self, mut chunk: &[u8]) -> u64 {
        let mut messages = 0;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                chunk = &chunk[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            if self.prefix_seen > 0 {
                self.length = (self.length << 8) | u32::from(chunk[0]);
            }
            self.prefix_seen += 1;
            chunk = &chunk[1..];
            if self.prefix_seen == 5 {
                messages += 1;
                self.remaining = u64::from(self.length);
                self.prefix_seen = 0;
                self.length = 0;
            }
        }
        messages
    }
}

/// Counts the client port's gRPC calls (see the module docs); other requests pass as
/// they are.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] makes.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for GrpcMetrics<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Unpin,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = GrpcMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = if crate::http::is_grpc(&request) {
            lookup(request.uri().path()).map(|(_, method)| method)
        } else {
            None
        };
        let Some(method) = method else {
            return GrpcMetricsFuture {
                inner: self.inner.call(request),
                method: None,
            };
        };
        method.started.fetch_add(1, Ordering::Relaxed);
        if method.proposes {
            PROPOSALS_PENDING.fetch_add(1, Ordering::Relaxed);
        }
        let request = if method.kind.client_streams() {
            request.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    method,
                    side: Side::Request,
                    messages: MessageCounter::default(),
                    open: false,
                })
            })
        } else {
            method.received.fetch_add(1, Ordering::Relaxed);
            request
        };
        GrpcMetricsFuture {
            inner: self.inner.call(request),
            method: Some(method),
        }
    }
}

/// The response future of [`GrpcMetrics`].
pub struct GrpcMetricsFuture<F> {
    inner: F,
    method: Option<&'static GrpcMethod>,
}

/// The status code in a trailers-only answer's headers, or in trailers.
fn status_code(headers: &HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")
        .map(|status| code_index(status.as_bytes()))
}

impl<F, E> std::future::Future for GrpcMetricsFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, E>> + Unpin,
{
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        let Some(method) = self.method.take() else {
            return Poll::Ready(result);
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                method.finish(UNKNOWN);
                return Poll::Ready(Err(e));
            }
        };
        if let Some(code) = status_code(response.headers()) {
            // Trailers-only: the call is over.
            method.finish(code);
            return Poll::Ready(Ok(response));
        }
        Poll::Ready(Ok(response.map(|body| {
            Body::new(CountedBody {
                inner: body,
                method,
                side: Side::Response,
                messages: MessageCounter::default(),
                open: true,
            })
        })))
    }
}

impl<F> Drop for GrpcMetricsFuture<F> {
    fn drop(&mut self) {
        // Dropped before the handler answered: the client went away.
        if let Some(method) = self.method.take() {
            method.finish(CANCELED);
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// A body whose gRPC messages are counted; a response body also reports the call's
/// status when its trailers pass (or `Canceled` if it is dropped before).
struct CountedBody {
    inner: Body,
    method: &'static GrpcMethod,
    side: Side,
    messages: MessageCounter,
    /// A response body whose call has not been counted as handled yet.
    open: bool,
}

impl CountedBody {
    fn finish(&mut self, code: usize) {
        if std::mem::take(&mut self.open) {
            self.method.finish(code);
        }
    }
}

impl hyper::body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, axum::Error>>> {
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let messages = self.messages.count(data);
                    if messages > 0 {
                        let counter = match self.side {
                            Side::Request => &self.method.received,
                            Side::Response => &self.method.sent,
                        };
                        counter.fetch_add(messages, Ordering::Relaxed);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(UNKNOWN);
                    self.finish(code);
                }
            }
            Some(Err(_)) => self.finish(UNKNOWN),
            // The body ended without trailers: no status, which grpc-go reads as Unknown.
            None => self.finish(UNKNOWN),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        // Dropped before its trailers: the client went away (reset the stream).
        self.finish(CANCELED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn codes_are_named_as_grpc_go_names_them() {
        let name = |status: &str| CODE_NAMES[code_index(status.as_bytes())];
        assert_eq!(name("0"), "OK");
        assert_eq!(name("1"), "Canceled");
        assert_eq!(name("4"), "DeadlineExceeded");
        assert_eq!(name("5"), "NotFound");
        assert_eq!(name("8"), "ResourceExhausted");
        assert_eq!(name("9"), "FailedPrecondition");
        assert_eq!(name("11"), "OutOfRange");
        assert_eq!(name("14"), "Unavailable");
        assert_eq!(name("16"), "Unauthenticated");
        assert_eq!(name("17"), "Unknown");
        assert_eq!(name("x"), "Unknown");
        assert_eq!(name(""), "Unknown");
        // The numbers are tonic's (whose names differ: `Ok`, `Cancelled`).
        for (code, name) in [
            (tonic::Code::Ok, "OK"),
            (tonic::Code::Cancelled, "Canceled"),
            (tonic::Code::OutOfRange, "OutOfRange"),
            (tonic::Code::Unavailable, "Unavailable"),
            (tonic::Code::Unauthenticated, "Unauthenticated"),
            (tonic::Code::DataLoss, "DataLoss"),
        ] {
            assert_eq!(CODE_NAMES[code as usize], name);
        }
    }

    #[test]
    fn paths_find_their_method() {
        let (service, method) = lookup("/etcdserverpb.KV/Put").expect("Put");
        assert_eq!((service.name, method.name), ("etcdserverpb.KV", "Put"));
        assert_eq!(method.kind, GrpcType::Unary);
        let (_, watch) = lookup("/etcdserverpb.Watch/Watch").expect("Watch");
        assert_eq!(watch.kind, GrpcType::BidiStream);
        let (_, health) = lookup("/grpc.health.v1.Health/Watch").expect("health Watch");
        assert_eq!(health.kind, GrpcType::ServerStream);
        assert!(lookup("/etcdserverpb.KV/Nope").is_none());
        assert!(lookup("/metrics").is_none());
        assert!(lookup("etcdserverpb.KV/Put").is_none());
        let preregistered: usize = SERVICES
            .iter()
            .filter(|s| s.preregistered)
            .map(|s| s.methods.len())
            .sum();
        // etcd 3.4 exports 41 methods x 17 codes.
        assert_eq!(preregistered, 41);
    }

    #[test]
    fn messages_are_counted_across_chunks() {
        let mut counter = MessageCounter::default();
        let message = |len: u32| {
            let mut m = vec![0u8];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend(std::iter::repeat_n(7u8, len as usize));
            m
        };
        let mut all = message(3);
        all.extend(message(0));
        all.extend(message(300));
        assert_eq!(counter.count(&all), 3);
        let big = message(1000);
        assert_eq!(counter.count(&big[..2]), 0);
        assert_eq!(counter.count(&big[2..5]), 1);
        assert_eq!(counter.count(&big[5..600]), 0);
        let mut rest = big[600..].to_vec();
        rest.extend(message(1));
        assert_eq!(counter.count(&rest), 1);
    }

    fn grpc_request(path: &str) -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri(path)
            .version(axum::http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .expect("request")
    }

    #[tokio::test]
    async fn trailers_only_and_trailing_statuses_are_counted() {
        // Hash is used by no other test in this process, so its counters start at 0.
        let (_, hash) = lookup("/etcdserverpb.Maintenance/Hash").expect("Hash");
        let service = tower::service_fn(|request: Request<Body>| {
            Box::pin(async move {
                let response = if request.headers().contains_key("fail") {
                    Response::builder()
                        .header("grpc-status", "5")
                        .body(Body::empty())
                } else {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().expect("value"));
                    let frames = futures::stream::iter([
                        Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(
                            &[0, 0, 0, 0, 1, 9],
                        ))),
                        Ok(Frame::trailers(trailers)),
                    ]);
                    Response::builder().body(Body::new(http_body_util_stream(frames)))
                };
                Ok::<_, std::convert::Infallible>(response.expect("response"))
            })
        });
        let mut metrics = GrpcMetricsLayer.layer(service);
        let mut failing = grpc_request("/etcdserverpb.Maintenance/Hash");
        failing
            .headers_mut()
            .insert("fail", "1".parse().expect("value"));
        let response = metrics.ready().await.expect("ready").call(failing).await;
        drop(response);
        assert_eq!(hash.handled(5), 1);
        assert_eq!(hash.started.load(Ordering::Relaxed), 1);
        let response = metrics
            .ready()
            .await
            .expect("ready")
            .call(grpc_request("/etcdserverpb.Maintenance/Hash"))
            .await
            .expect("response");
        assert_eq!(hash.handled(0), 0, "not over before its trailers");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(body.len(), 6);
        assert_eq!(hash.handled(0), 1);
        assert_eq!(hash.sent.load(Ordering::Relaxed), 1);
        assert_eq!(hash.received.load(Ordering::Relaxed), 2);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains(
            "grpc_server_handled_total{grpc_code=\"NotFound\",grpc_method=\"Hash\",\
             grpc_service=\"etcdserverpb.Maintenance\",grpc_type=\"unary\"} 1\n"
        ));
        assert!(!out.contains("v3lockpb.Lock"), "not called yet");
    }

    /// A body made of a stream of frames.
    fn http_body_util_stream<S>(
        frames: S,
    ) -> impl hyper::body::Body<Data = bytes::Bytes, Error = std::convert::Infallible> + Send + 'static
    where
        S: futures::Stream<Item = Result<Frame<bytes::Bytes>, std::convert::Infallible>>
            + Unpin
            + Send
            + 'static,
    {
        struct Frames<S>(S);
        impl<S> hyper::body::Body for Frames<S>
        where
            S: futures::Stream<Item = Result<Frame<bytes::Bytes>, std::convert::Infallible>>
                + Unpin,
        {
            type Data = bytes::Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
                futures::Stream::poll_next(Pin::new(&mut self.0), cx)
            }
        }
        Frames(frames)
    }
}
