//! Clients of the store under test and the history recorder they write to.
//!
//! Rules (chaos.md §1.3, §7.1):
//! - a worker talks to **one** member over its own gRPC channel: no balancer, no leader seeking
//!   (stale reads must not be hidden) and **no retries** of any request;
//! - every request runs under the operation timeout; a timeout, or any error that does not prove
//!   the request had no effect, completes a mutation as `info` (indeterminate). Only errors that
//!   prove it ([`definite_failure`]) complete it as `fail`;
//! - time is taken on the harness side only, from one `Instant`, inside the recorder's lock, and an
//!   invocation is recorded before its request is sent and a completion after its response
//!   arrives, so the order of events in the history is a real-time order.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::history::{F, History, Op, OpType, Process, Value};
use crate::net::Topology;

/// The client port every member listens on.
pub const CLIENT_PORT: u16 = 2379;
/// The peer port every member listens on.
pub const PEER_PORT: u16 = 2380;

/// Client URL of node slot `slot`.
pub fn client_url(slot: usize) -> String {
    format!("http://{}:{CLIENT_PORT}", Topology::node_ip(slot))
}

/// Peer URL of node slot `slot`.
pub fn peer_url(slot: usize) -> String {
    format!("http://{}:{PEER_PORT}", Topology::node_ip(slot))
}

/// A lazily connecting channel to node slot `slot` (connect timeout 1 s).
pub fn channel(slot: usize) -> Channel {
    Endpoint::from_shared(client_url(slot))
        .expect("static URL")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// Whether an error proves the request had no effect (so a mutation may complete as `fail`).
///
/// Validation errors and refusals are decided before anything is proposed; a refused TCP
/// connection means the request was never sent. Everything else — timeouts, "request timed out",
/// "leader changed", broken connections — may hide an effect.
pub fn definite_failure(status: &Status) -> bool {
    match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::Unimplemented => true,
        Code::Unavailable => {
            let text = format!("{status:?}");
            text.contains("Connection refused") || text.contains("No route to host")
        }
        _ => false,
    }
}

/// A short error label for the history.
pub fn error_label(status: &Status) -> String {
    let msg = status.message();
    let msg = if msg.len() > 120 { &msg[..120] } else { msg };
    if definite_failure(status) && status.code() == Code::Unavailable {
        return "connection-refused".to_owned();
    }
    format!("{:?}: {msg}", status.code())
}

/// Runs `fut` under `timeout`; `Err(None)` = timed out.
pub async fn timed<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Option<Status>> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(s)) => Err(Some(s)),
        Err(_) => Err(None),
    }
}

/// How a failed call completes an operation: `(type, error)`.
pub fn failure_completion(err: &Option<Status>, mutation: bool) -> (OpType, String) {
    match err {
        None => (
            if mutation { OpType::Info } else { OpType::Fail },
            "timeout".to_owned(),
        ),
        Some(s) if !mutation || definite_failure(s) => (OpType::Fail, error_label(s)),
        Some(s) => (OpType::Info, error_label(s)),
    }
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Completed operations.
    pub ok: AtomicU64,
    /// Failed operations.
    pub fail: AtomicU64,
    /// Indeterminate operations.
    pub info: AtomicU64,
}

/// The shared, append-only history of a run.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
    /// Live counters.
    pub counters: Counters,
}

impl Recorder {
    /// A recorder whose time zero is now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            history: Mutex::new(History::new()),
            counters: Counters::default(),
        }
    }

    /// The recorder's time zero.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Nanoseconds since time zero.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Appends an event stamped with the current time; returns the time.
    pub fn record(&self, mut op: Op) -> u64 {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.now_ns();
        op.time = Some(t);
        if op.process.is_client() {
            let c = match op.kind {
                OpType::Ok => Some(&self.counters.ok),
                OpType::Fail => Some(&self.counters.fail),
                OpType::Info => Some(&self.counters.info),
                OpType::Invoke => None,
            };
            if let Some(c) = c {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        h.push(op);
        t
    }

    /// Records a nemesis (or harness) event: an `info` event of process `nemesis`.
    pub fn nemesis(&self, f: &str, value: Value) -> u64 {
        self.record(Op::new(Process::nemesis(), OpType::Info, F::from(f), value))
    }

    /// Records an event of a named process (e.g. `harness`).
    pub fn named(&self, process: &str, f: &str, value: Value) -> u64 {
        self.record(Op::new(
            Process::Named(process.to_owned()),
            OpType::Info,
            F::from(f),
            value,
        ))
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.history.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

/// A worker's logical process: after an indeterminate completion the worker continues as a new
/// process (`id + stride`), so every process's history stays sequential (Jepsen's convention).
#[derive(Clone, Copy, Debug)]
pub struct Proc {
    /// The current process id.
    pub id: u64,
    stride: u64,
}

impl Proc {
    /// Worker `worker` of `workers`.
    pub fn new(worker: usize, workers: usize) -> Proc {
        Proc {
            id: worker as u64,
            stride: workers.max(1) as u64,
        }
    }

    /// The process after an `info` completion.
    pub fn crashed(&mut self) {
        self.id += self.stride;
    }

    /// The process as a history `Process`.
    pub fn process(&self) -> Process {
        Process::Client(self.id)
    }
}

/// Builds an event of a worker.
pub fn event(p: &Proc, kind: OpType, f: F, key: Option<&str>, value: Value, node: usize) -> Op {
    let mut op = Op::new(p.process(), kind, f, value);
    op.key = key.map(str::to_owned);
    op.node = Some(format!("n{node}"));
    op
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_conservative() {
        let refused = Status::unavailable("tcp connect error: Connection refused (os error 111)");
        assert!(definite_failure(&refused));
        assert_eq!(error_label(&refused), "connection-refused");
        let timed_out = Status::unavailable("etcdserver: request timed out");
        assert!(!definite_failure(&timed_out));
        assert!(definite_failure(&Status::invalid_argument(
            "etcdserver: key is not provided"
        )));
        assert_eq!(failure_completion(&None, true).0, OpType::Info);
        assert_eq!(failure_completion(&None, false).0, OpType::Fail);
        assert_eq!(
            failure_completion(&Some(timed_out.clone()), true).0,
            OpType::Info
        );
        assert_eq!(failure_completion(&Some(timed_out), false).0, OpType::Fail);
        assert_eq!(failure_completion(&Some(refused), true).0, OpType::Fail);
    }

    #[test]
    fn processes_move_on_after_info() {
        let mut p = Proc::new(2, 6);
        assert_eq!(p.id, 2);
        p.crashed();
        assert_eq!(p.id, 8);
    }

    #[test]
    fn recorder_orders_and_counts() {
        let r = Recorder::new();
        let p = Proc::new(0, 1);
        r.record(event(
            &p,
            OpType::Invoke,
            F::Read,
            Some("k"),
            Value::Null,
            1,
        ));
        r.record(event(&p, OpType::Ok, F::Read, Some("k"), Value::Null, 1));
        r.nemesis("start-partition", Value::Null);
        let h = r.snapshot();
        assert_eq!(h.len(), 3);
        assert!(h.ops()[0].time <= h.ops()[1].time);
        assert_eq!(r.counters.ok.load(Ordering::Relaxed), 1);
        assert_eq!(h.pairs().unwrap().len(), 1);
    }
}
