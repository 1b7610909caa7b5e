//! Workloads: what the client workers do during a run, and the final reads after healing.
//!
//! - [`register`]: per-key read / write / compare-and-set registers (Txn on the value), checked for
//!   linearizability;
//! - [`append`]: list-append transactions over a few hot keys (reads plus appends guarded by
//!   `mod_revision` compares), checked Elle-style;
//! - [`watch`]: writers plus watchers that reconnect and resume from the next revision, checked
//!   against the complete event history read at the end;
//! - [`lease`]: TTL keys with keepalives and revokes (skipped with a note when the store answers
//!   `Unimplemented`);
//! - [`k8s`]: the Kubernetes-like traffic profile (optimistic writes guarded by `mod_revision`,
//!   informers that list, watch from the next revision and relist after compaction).
//!
//! Every worker is pinned to one member and paced so the whole run does about `rate` operations
//! per second. Nothing is retried: each attempt is its own operation in the history.

pub mod append;
pub mod k8s;
pub mod lease;
pub mod register;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::client::Recorder;

/// Which workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Linearizable registers.
    Register,
    /// List-append transactions.
    Append,
    /// Watches.
    Watch,
    /// Leases.
    Lease,
    /// Kubernetes-like traffic.
    K8s,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 5] = [
        Workload::Register,
        Workload::Append,
        Workload::Watch,
        Workload::Lease,
        Workload::K8s,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Append => "append",
            Workload::Watch => "watch",
            Workload::Lease => "lease",
            Workload::K8s => "k8s",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?} (register, append, watch, lease, k8s)"))
    }
}

/// What every worker gets.
#[derive(Clone)]
pub struct Ctx {
    /// The history.
    pub rec: Arc<Recorder>,
    /// Member slots at the start (workers are pinned to them round-robin).
    pub nodes: Vec<usize>,
    /// Number of workers.
    pub workers: usize,
    /// Per-request timeout.
    pub op_timeout: Duration,
    /// Target operations per second, all workers together.
    pub rate: f64,
    /// Run seed.
    pub seed: u64,
    /// Becomes true when the workload phase ends.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Watchers request progress notifications.
    pub watch_progress: bool,
}

impl Ctx {
    /// The node worker `w` is pinned to.
    pub fn node_of(&self, w: usize) -> usize {
        self.nodes[w % self.nodes.len()]
    }

    /// Whether the workload phase is over.
    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps a random pause (mean `workers / rate`), returning early when the phase ends.
    pub async fn pace(&self, rng: &mut StdRng) {
        let mean = self.workers as f64 / self.rate.max(0.1);
        let d = Duration::from_secs_f64(rng.random_range(0.0..2.0 * mean));
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Parses an integer register value stored as decimal text.
pub fn parse_int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}
