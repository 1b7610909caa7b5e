//! Process-wide metrics that etcd's dashboards and alerts read, kept where they happen
//! and rendered by [`crate::http`] in Prometheus text with etcd's names, types, labels and
//! buckets: the WAL's fsync and the backend's commit
//! (`etcd_disk_wal_fsync_duration_seconds`, `etcd_disk_backend_commit_duration_seconds`),
//! leadership changes (`etcd_server_leader_changes_seen_total`), each peer's round trip
//! and bytes ([`PeerMetrics`]: `etcd_network_peer_round_trip_time_seconds`,
//! `etcd_network_peer_sent_bytes_total`, `etcd_network_peer_received_bytes_total`), the
//! client port's gRPC calls ([`grpc`]), open watches (`etcd_debugging_mvcc_watcher_total`,
//! `etcd_debugging_mvcc_watch_stream_total`, kept by [`crate::watch`]) and the process
//! ([`process`]).
//!
//! A histogram is a fixed array of atomic counters: recording never allocates or locks.

pub mod grpc;
pub mod process;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::types::MemberId;

/// A Prometheus histogram of durations: `N` upper bounds in seconds, each with its label
/// as the Go client prints it.
pub struct Histogram<const N: usize> {
    bounds: &'static [(f64, &'static str); N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// etcd's buckets for disk latencies: 1 ms doubling to 4.096 s (`prometheus.ExponentialBuckets(0.001, 2, 13)`).
const DISK_BUCKETS: [(f64, &str); 13] = [
    (0.001, "0.001"),
    (0.002, "0.002"),
    (0.004, "0.004"),
    (0.008, "0.008"),
    (0.016, "0.016"),
    (0.032, "0.032"),
    (0.064, "0.064"),
    (0.128, "0.128"),
    (0.256, "0.256"),
    (0.512, "0.512"),
    (1.024, "1.024"),
    (2.048, "2.048"),
    (4.096, "4.096"),
];

/// etcd's buckets for peer round trips: 0.1 ms doubling to 3.2768 s
/// (`prometheus.ExponentialBuckets(0.0001, 2, 16)`).
const RTT_BUCKETS: [(f64, &str); 16] = [
    (0.0001, "0.0001"),
    (0.0002, "0.0002"),
    (0.0004, "0.0004"),
    (0.0008, "0.0008"),
    (0.0016, "0.0016"),
    (0.0032, "0.0032"),
    (0.0064, "0.0064"),
    (0.0128, "0.0128"),
    (0.0256, "0.0256"),
    (0.0512, "0.0512"),
    (0.1024, "0.1024"),
    (0.2048, "0.2048"),
    (0.4096, "0.4096"),
    (0.8192, "0.8192"),
    (1.6384, "1.6384"),
    (3.2768, "3.2768"),
];

/// A histogram over etcd's disk buckets.
pub type DiskHistogram = Histogram<13>;
/// A histogram over etcd's peer round-trip buckets.
pub type RttHistogram = Histogram<16>;

impl<const N: usize> Histogram<N> {
    const fn new(bounds: &'static [(f64, &'static str); N]) -> Histogram<N> {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Count one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|(bound, _)| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Append the histogram in Prometheus text format.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// Append this histogram's series, each labelled `labels` (`To="…",` or empty)
    /// before `le`.
    pub fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for ((_, bound), bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let labels = labels.trim_end_matches(',');
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{labels} {sum}\n{name}_count{labels} {count}"
        );
    }
}

/// Latency of the WAL's fdatasyncs (etcd: `etcd_disk_wal_fsync_duration_seconds`).
pub static WAL_FSYNC: DiskHistogram = Histogram::new(&DISK_BUCKETS);
/// Latency of durable backend commits (etcd: `etcd_disk_backend_commit_duration_seconds`).
pub static BACKEND_COMMIT: DiskHistogram = Histogram::new(&DISK_BUCKETS);
/// Leader changes this member has seen (etcd: `etcd_server_leader_changes_seen_total`).
pub static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);

/// Watchers open on this process's watch streams (etcd: `etcd_debugging_mvcc_watcher_total`).
pub static WATCHERS: AtomicI64 = AtomicI64::new(0);
/// Watch streams open on this process (etcd: `etcd_debugging_mvcc_watch_stream_total`).
pub static WATCH_STREAMS: AtomicI64 = AtomicI64::new(0);

/// Append the open-watch gauges in Prometheus text, as etcd 3.4 names them.
pub fn render_watches(out: &mut String) {
    for (name, help, value) in [
        (
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
            &WATCH_STREAMS,
        ),
        (
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            &WATCHERS,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
}

/// Count leader changes as this member's Raft metrics report them, until `stop`: as in
/// etcd, every time a leader becomes known that is not the one last known (the first
/// leader counts, even one already known when this starts).
pub async fn watch_leader_changes(
    raft: crate::types::Raft,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    let mut leader = None;
    loop {
        let now = metrics.borrow_and_update().current_leader;
        if now != leader {
            if now.is_some() {
                LEADER_CHANGES.fetch_add(1, Ordering::Relaxed);
            }
            leader = now;
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// What this member measured of its traffic with one peer.
pub struct PeerMetrics {
    pub id: MemberId,
    /// AppendEntries round trips without entries (heartbeats), etcd's
    /// `etcd_network_peer_round_trip_time_seconds{To}`: the network's share of a
    /// round trip, no disk write in it.
    pub round_trip: RttHistogram,
    /// Raft message bytes sent to it (`etcd_network_peer_sent_bytes_total{To}`).
    pub sent_bytes: AtomicU64,
    /// Raft message bytes received from it (`etcd_network_peer_received_bytes_total{From}`).
    pub received_bytes: AtomicU64,
}

/// Every peer seen so far, in the order first seen (a handful: looked up once per
/// connection, not per message).
static PEERS: Mutex<Vec<Arc<PeerMetrics>>> = Mutex::new(Vec::new());

/// The metrics of peer `id`, registered on first use.
pub fn peer(id: MemberId) -> Arc<PeerMetrics> {
    let mut peers = PEERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(peer) = peers.iter().find(|p| p.id == id) {
        return peer.clone();
    }
    let peer = Arc::new(PeerMetrics {
        id,
        round_trip: Histogram::new(&RTT_BUCKETS),
        sent_bytes: AtomicU64::new(0),
        received_bytes: AtomicU64::new(0),
    });
    peers.push(peer.clone());
    peer
}

/// Append the peer families in Prometheus text; a peer appears in a family once it has
/// something in it, as in etcd. Member IDs are printed in hex, as etcd prints them.
pub fn render_peers(out: &mut String) {
    let mut peers = PEERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    peers.sort_by_key(|p| format!("{:x}", p.id));
    let counter =
        |out: &mut String, name: &str, help: &str, label: &str, pick: fn(&PeerMetrics) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for peer in &peers {
                let value = pick(peer);
                if value > 0 {
                    let _ = writeln!(out, "{name}{{{label}=\"{:x}\"}} {value}", peer.id);
                }
            }
        };
    counter(
        out,
        "etcd_network_peer_received_bytes_total",
        "The total number of bytes received from peers.",
        "From",
        |p| p.received_bytes.load(Ordering::Relaxed),
    );
    const RTT: &str = "etcd_network_peer_round_trip_time_seconds";
    let _ = writeln!(
        out,
        "# HELP {RTT} Round-Trip-Time histogram between peers\n# TYPE {RTT} histogram"
    );
    for peer in &peers {
        if peer.round_trip.count() > 0 {
            let labels = format!("To=\"{:x}\",", peer.id);
            peer.round_trip.render_series(out, RTT, &labels);
        }
    }
    counter(
        out,
        "etcd_network_peer_sent_bytes_total",
        "The total number of bytes sent to peers.",
        "To",
        |p| p.sent_bytes.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = DiskHistogram::new(&DISK_BUCKETS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("# TYPE x histogram"));
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.002\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.004\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"4.096\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
        assert!(out.contains("x_sum 10.0035\n"));
    }

    #[test]
    fn peers_are_labelled_by_hex_id() {
        let peer = peer(0xbdae9bbc11dd390d);
        peer.round_trip.observe(Duration::from_micros(150));
        peer.sent_bytes.fetch_add(42, Ordering::Relaxed);
        assert!(Arc::ptr_eq(&peer, &super::peer(0xbdae9bbc11dd390d)));
        let mut out = String::new();
        render_peers(&mut out);
        let rtt = "etcd_network_peer_round_trip_time_seconds";
        assert!(out.contains(&format!(
            "{rtt}_bucket{{To=\"bdae9bbc11dd390d\",le=\"0.0001\"}} 0\n"
        )));
        assert!(out.contains(&format!(
            "{rtt}_bucket{{To=\"bdae9bbc11dd390d\",le=\"0.0002\"}} 1\n"
        )));
        assert!(out.contains(&format!(
            "{rtt}_bucket{{To=\"bdae9bbc11dd390d\",le=\"3.2768\"}} 1\n"
        )));
        assert!(out.contains(&format!("{rtt}_count{{To=\"bdae9bbc11dd390d\"}} 1\n")));
        assert!(out.contains("etcd_network_peer_sent_bytes_total{To=\"bdae9bbc11dd390d\"} 42\n"));
        assert!(
            !out.contains("From=\"bdae9bbc11dd390d\""),
            "nothing received yet"
        );
    }
}
