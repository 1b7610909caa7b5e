//! The node side of the simulator: registration (Node, its status through the status
//! subresource, its Lease), one loop renewing every running node's Lease in a batch every
//! 10 s, one refreshing their Ready condition, and one reading the stop file.

use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::config::{LEASE_RENEW_INTERVAL, NODE_STATUS_REFRESH_INTERVAL, STOP_FILE_POLL_INTERVAL};
use crate::objects::{self, NODE_LEASE_NAMESPACE};
use crate::{Error, Sim, api_code, lock};

impl Sim {
    /// Registers every node (concurrently, within the write limit); fails if one cannot be.
    pub(crate) async fn register_all(&self) -> Result<(), Error> {
        let mut results = futures::stream::iter(0..self.nodes.len())
            .map(|i| self.register(i))
            .buffer_unordered(self.config.max_concurrent_writes);
        let mut registered = 0;
        while let Some(res) = results.next().await {
            res?;
            registered += 1;
        }
        tracing::info!(nodes = registered, "simulated nodes registered");
        Ok(())
    }

    /// Creates node `i` (or updates its labels, annotations and taints if it exists), writes
    /// its status through `nodes/{name}/status`, and creates or renews its Lease.
    async fn register(&self, i: usize) -> Result<(), Error> {
        let sim = &self.nodes[i];
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = Timestamp::now();
        let node = objects::node(&self.config, sim, now);
        let post = PostParams::default();
        let created = self
            .write(
                || format!("create node {}", sim.name),
                || nodes.create(&post, &node),
            )
            .await;
        let uid = match created {
            Ok(created) => created.metadata.uid,
            Err(err) if api_code(&err) == Some(409) => {
                // Left by an earlier run: take it over.
                let mut patch = json!({
                    "metadata": {
                        "labels": node.metadata.labels,
                        "annotations": node.metadata.annotations,
                    },
                });
                // Taints only when configured: others (the node lifecycle controller's) stay.
                if let Some(taints) = node.spec.as_ref().and_then(|s| s.taints.clone()) {
                    patch["spec"] = json!({ "taints": taints });
                }
                let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
                let patched = self
                    .write(
                        || format!("update node {}", sim.name),
                        || nodes.patch(&sim.name, &params, &merge),
                    )
                    .await?;
                patched.metadata.uid
            }
            Err(err) => return Err(err),
        };
        lock(&self.node_state)[i] = crate::NodeState {
            uid,
            ready_since: now,
        };
        if !self.is_stopped(&sim.name) {
            self.write_node_status(i).await?;
            self.renew_lease(i).await?;
        }
        Ok(())
    }

    /// Writes node `i`'s status (Ready, heartbeat now) through the status subresource.
    async fn write_node_status(&self, i: usize) -> Result<(), Error> {
        let sim = &self.nodes[i];
        let ready_since = lock(&self.node_state)[i].ready_since;
        let status = objects::node_status(&self.config, sim, ready_since, Timestamp::now());
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({ "status": status });
        let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
        self.write(
            || format!("node {} status", sim.name),
            || nodes.patch_status(&sim.name, &params, &merge),
        )
        .await
        .map(drop)
    }

    /// Renews node `i`'s Lease (`renewTime` now), creating it if it is missing.
    async fn renew_lease(&self, i: usize) -> Result<(), Error> {
        let name = &self.nodes[i].name;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASE_NAMESPACE);
        let now = Timestamp::now();
        let patch = json!({ "spec": objects::lease_spec(name, now) });
        let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
        let renewed = self
            .write(
                || format!("renew lease {name}"),
                || leases.patch(name, &params, &merge),
            )
            .await;
        match renewed {
            Err(err) if api_code(&err) == Some(404) => {
                let uid = lock(&self.node_state)[i].uid.clone();
                let lease = objects::lease(name, uid.as_deref(), now);
                let post = PostParams::default();
                self.write(
                    || format!("create lease {name}"),
                    || leases.create(&post, &lease),
                )
                .await
                .map(drop)
            }
            other => other.map(drop),
        }
    }

    /// The nodes not in the stop file.
    fn running_nodes(&self) -> Vec<usize> {
        let stopped = lock(&self.stopped);
        (0..self.nodes.len())
            .filter(|&i| !stopped.contains(&self.nodes[i].name))
            .collect()
    }

    /// Applies `op` to every running node, `--max-concurrent-writes` at a time; logs failures
    /// once per round.
    async fn for_running_nodes<'a, F, Fut>(&'a self, what: &str, op: F)
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>> + 'a,
    {
        let running = self.running_nodes();
        let total = running.len();
        let failures: Vec<Error> = futures::stream::iter(running)
            .map(op)
            .buffer_unordered(self.config.max_concurrent_writes)
            .filter_map(|res| async move { res.err() })
            .collect()
            .await;
        if let Some(first) = failures.first() {
            tracing::warn!(failed = failures.len(), total, error = %first, "{what} failed");
        }
    }

    /// Every `LEASE_RENEW_INTERVAL`, renews the Lease of every running node.
    pub(crate) async fn lease_loop(&self) {
        let mut tick = tokio::time::interval(LEASE_RENEW_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // registration just renewed them
        loop {
            tick.tick().await;
            self.for_running_nodes("lease renewal", |i| self.renew_lease(i))
                .await;
        }
    }

    /// Every `NODE_STATUS_REFRESH_INTERVAL`, writes the status (heartbeat) of every running node.
    pub(crate) async fn status_loop(&self) {
        let mut tick = tokio::time::interval(NODE_STATUS_REFRESH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.for_running_nodes("node status refresh", |i| self.write_node_status(i))
                .await;
            let pods: usize = lock(&self.ips).iter().map(|ips| ips.len()).sum();
            let stopped = lock(&self.stopped).len();
            tracing::info!(
                nodes = self.nodes.len(),
                stopped,
                pods,
                "node-sim heartbeat"
            );
        }
    }

    /// Every `STOP_FILE_POLL_INTERVAL`, rereads the stop file; a node leaving it is Ready again
    /// at once (status and Lease written).
    pub(crate) async fn stop_file_loop(&self) {
        if self.config.stop_renewing_file.is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(STOP_FILE_POLL_INTERVAL).await;
            for i in self.read_stop_file() {
                lock(&self.node_state)[i].ready_since = Timestamp::now();
                let res = async {
                    self.write_node_status(i).await?;
                    self.renew_lease(i).await
                };
                if let Err(err) = res.await {
                    tracing::warn!(node = %self.nodes[i].name, error = %err, "resuming node failed");
                }
            }
        }
    }

    /// Reads the stop file into `stopped`; returns the nodes that left it. A missing file
    /// stops nothing.
    pub(crate) fn read_stop_file(&self) -> Vec<usize> {
        let Some(path) = &self.config.stop_renewing_file else {
            return Vec::new();
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read stop file");
                return Vec::new();
            }
        };
        let listed = stop_list(&text);
        let mut stopped = lock(&self.stopped);
        for name in listed.difference(&stopped) {
            if self.index.contains_key(name) {
                tracing::info!(node = %name, "node stops renewing its Lease and status");
            }
        }
        let resumed: Vec<usize> = stopped
            .difference(&listed)
            .filter_map(|name| {
                tracing::info!(node = %name, "node resumes renewing its Lease and status");
                self.index.get(name).copied()
            })
            .collect();
        *stopped = listed;
        resumed
    }
}

/// The node names of a stop file: one a line, blanks and `#` comments ignored.
pub(crate) fn stop_list(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(String::from)
        .collect()
}
