//! Process-wide metrics that etcd's dashboards and alerts read, kept where they happen
//! (the WAL's fsync, the backend's commit, leadership changes) and rendered by
//! [`crate::http`] in Prometheus text: `etcd_disk_wal_fsync_duration_seconds`,
//! `etcd_disk_backend_commit_duration_seconds` (histograms with etcd's buckets) and
//! `etcd_server_leader_changes_seen_total`.
//!
//! A histogram is a fixed array of atomic counters: recording never allocates or locks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// etcd's buckets for disk latencies: 1 ms doubling to 4.096 s (`prometheus.ExponentialBuckets(0.001, 2, 13)`).
const DISK_BUCKETS: usize = 13;

/// A Prometheus histogram of durations over etcd's disk buckets.
pub struct DiskHistogram {
    buckets: [AtomicU64; DISK_BUCKETS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl DiskHistogram {
    const fn new() -> DiskHistogram {
        DiskHistogram {
            buckets: [const { AtomicU64::new(0) }; DISK_BUCKETS],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn bound(i: usize) -> f64 {
        0.001 * f64::from(1u32 << i)
    }

    /// Count one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = (0..DISK_BUCKETS).find(|i| seconds <= Self::bound(*i)) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Append the histogram in Prometheus text format.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                Self::bound(i)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Latency of the WAL's fdatasyncs (etcd: `etcd_disk_wal_fsync_duration_seconds`).
pub static WAL_FSYNC: DiskHistogram = DiskHistogram::new();
/// Latency of durable backend commits (etcd: `etcd_disk_backend_commit_duration_seconds`).
pub static BACKEND_COMMIT: DiskHistogram = DiskHistogram::new();
/// Leader changes this member has seen (etcd: `etcd_server_leader_changes_seen_total`).
pub static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);

/// Count leader changes as this member's Raft metrics report them, until `stop`.
pub async fn watch_leader_changes(
    raft: crate::types::Raft,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    let mut leader = metrics.borrow().current_leader;
    loop {
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now = metrics.borrow().current_leader;
        if now != leader {
            if now.is_some() {
                LEADER_CHANGES.fetch_add(1, Ordering::Relaxed);
            }
            leader = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = DiskHistogram::new();
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
}
