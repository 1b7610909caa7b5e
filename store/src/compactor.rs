//! etcd's automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`),
//! run by the leader only, through the member's own Compact RPC (so it replicates like a
//! client's compaction).
//!
//! - **periodic** (retention `R`, a duration): the revision is sampled every `R/10`; every
//!   `min(R, 1h)` the store is compacted to the revision it had `R` ago (etcd's
//!   `compactor.Periodic`: the window of history kept is `R`).
//! - **revision** (retention `N`): every [`REVISION_INTERVAL`] (5 minutes, as etcd) the
//!   store is compacted to `current - N`.
//!
//! Nothing is compacted twice: a target at or below the compacted revision is skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_proto::etcdserverpb::{CompactionRequest, kv_server::Kv};
use tokio::sync::watch;

use crate::config::AutoCompaction;
use crate::grpc::EtcdApi;
use crate::mvcc::Revision;
use crate::node::StoreNode;

/// How often revision mode compacts (etcd's `revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Longest wait between two periodic compactions (etcd compacts at least hourly).
pub const MAX_PERIODIC_INTERVAL: Duration = Duration::from_secs(3600);
/// Samples a periodic compactor keeps: one window's worth, at `retention / 10` apart.
pub const PERIODIC_SAMPLES: usize = 11;

/// The revision to compact to in periodic mode: the newest sample at least `retention`
/// old, if any.
pub fn periodic_target(
    samples: &VecDeque<(Instant, Revision)>,
    now: Instant,
    retention: Duration,
) -> Option<Revision> {
    samples
        .iter()
        .rev()
        .find(|(at, _)| now.saturating_duration_since(*at) >= retention)
        .map(|(_, revision)| *revision)
}

/// The revision to compact to in revision mode.
pub fn revision_target(current: Revision, retention: i64) -> Option<Revision> {
    let target = current - retention;
    (target > 0).then_some(target)
}

/// Run the compactor configured in `node.config` until `stop` (nothing if none is).
pub async fn run(node: Arc<StoreNode>, mut stop: watch::Receiver<bool>) {
    let Some(mode) = node.config.auto_compaction else {
        return;
    };
    let api = EtcdApi { node: node.clone() };
    let (tick, compact_every) = match mode {
        AutoCompaction::Periodic(retention) => (
            (retention / 10).max(Duration::from_millis(100)),
            retention.min(MAX_PERIODIC_INTERVAL),
        ),
        AutoCompaction::Revision(_) => (REVISION_INTERVAL, REVISION_INTERVAL),
    };
    let mut samples: VecDeque<(Instant, Revision)> = VecDeque::with_capacity(PERIODIC_SAMPLES);
    let mut last_compaction = Instant::now();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if node.current_leader() != Some(node.id) {
            // A new leader starts its window afresh, as etcd's compactor does on resume.
            samples.clear();
            last_compaction = Instant::now();
            continue;
        }
        let (current, compacted) = {
            let state = node.sm.read();
            (state.mvcc.current_revision(), state.mvcc.compact_revision())
        };
        let now = Instant::now();
        let target = match mode {
            AutoCompaction::Periodic(retention) => {
                if samples.len() == PERIODIC_SAMPLES {
                    samples.pop_front();
                }
                samples.push_back((now, current));
                if now.duration_since(last_compaction) < compact_every {
                    continue;
                }
                periodic_target(&samples, now, retention)
            }
            AutoCompaction::Revision(retention) => revision_target(current, retention),
        };
        let Some(target) = target.filter(|target| *target > compacted) else {
            continue;
        };
        last_compaction = now;
        let request = tonic::Request::new(CompactionRequest {
            revision: target,
            physical: false,
        });
        match api.compact(request).await {
            Ok(_) => tracing::info!(revision = target, ?mode, "auto-compacted"),
            Err(status) => tracing::warn!(
                revision = target,
                error = status.message(),
                "auto-compaction failed; retrying next interval"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_keeps_one_retention_window() {
        let start = Instant::now();
        let samples: VecDeque<_> = (0..5)
            .map(|i| (start + Duration::from_secs(i), 10 * (i as i64 + 1)))
            .collect();
        let now = start + Duration::from_secs(5);
        // Samples 0..=2 s are at least 3 s old; the newest of them is at 2 s (rev 30).
        assert_eq!(
            periodic_target(&samples, now, Duration::from_secs(3)),
            Some(30)
        );
        assert_eq!(
            periodic_target(&samples, now, Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn revision_mode_keeps_n_revisions() {
        assert_eq!(revision_target(1000, 100), Some(900));
        assert_eq!(revision_target(50, 100), None);
    }
}
