//! skiff proxy: kube-proxy's iptables mode. It watches Services and EndpointSlices and, after
//! each change (at most once per `--iptables-min-sync-period`, and every
//! `--iptables-sync-period` regardless), programs the node's rules in one atomic
//! `iptables-restore` batch per table.
//!
//! Layers, each importing only the ones below it:
//! - [`model`]: Services and EndpointSlices → Service ports with their endpoints (pure).
//! - [`iptables`]: Service ports → the batch, kube-proxy's chain layout (pure).
//! - [`apply`]: the batch → the kernel, behind [`apply::RuleWriter`]; `--cleanup`.
//! - this file: informers and the sync loop.

pub mod apply;
pub mod iptables;
pub mod model;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::apply::RuleWriter;
use crate::iptables::Masquerade;

/// What `skiff proxy` runs with.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// `--hostname-override`: the node whose endpoints are local.
    pub node_name: String,
    pub masquerade: Masquerade,
    /// `--iptables-sync-period`: a full sync at least this often.
    pub sync_period: Duration,
    /// `--iptables-min-sync-period`: syncs at most this often.
    pub min_sync_period: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the first sync failed: {0}")]
    FirstSync(apply::ApplyError),
}

/// Runs the proxy until `shutdown` completes. The first sync's failure is an error (the
/// node's iptables cannot take our rules); later ones are logged and retried.
pub async fn run(
    config: ProxyConfig,
    client: Client,
    writer: Arc<dyn RuleWriter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let (services, mut service_events, _s) = skiff_client::informer::reflect(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let (slices, mut slice_events, _e) = skiff_client::informer::reflect(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    );
    // Chains an earlier proxy left: rewritten (or deleted) by the first sync.
    let mut previous = {
        let writer = writer.clone();
        let existing = tokio::task::spawn_blocking(move || writer.existing_chains())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        iptables::Written::unknown(&existing)
    };
    let mut last_full: Option<Instant> = None;
    let (mut services_ready, mut slices_ready) = (false, false);
    let mut dirty = true;
    let mut synced_once = false;
    let mut last_sync: Option<Instant> = None;
    let mut tick = tokio::time::interval(config.min_sync_period.max(Duration::from_millis(10)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            event = service_events.recv() => {
                if matches!(event, Some(watcher::Event::InitDone)) { services_ready = true; }
                dirty = true;
            }
            event = slice_events.recv() => {
                if matches!(event, Some(watcher::Event::InitDone)) { slices_ready = true; }
                dirty = true;
            }
            _ = tick.tick() => {}
        }
        if !(services_ready && slices_ready) {
            continue;
        }
        let due = last_full.is_none_or(|t| t.elapsed() >= config.sync_period);
        let allowed = last_sync.is_none_or(|t| t.elapsed() >= config.min_sync_period);
        if !(allowed && (dirty || due)) {
            continue;
        }
        let started = Instant::now();
        let service_list = services.state();
        let slice_list = slices.state();
        let ports = model::service_ports(
            &service_list.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            &slice_list.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            &config.node_name,
        );
        let batch = iptables::render_since(&ports, &config.masquerade, &previous, due);
        let writer_for_sync = writer.clone();
        let first = !synced_once;
        let written = batch.written.clone();
        let rewritten = batch.rewritten;
        let result = tokio::task::spawn_blocking(move || {
            writer_for_sync.restore(&batch)?;
            if first {
                writer_for_sync.ensure_jumps()?;
            }
            Ok::<_, apply::ApplyError>(())
        })
        .await
        .unwrap_or_else(|e| {
            Err(apply::ApplyError::Failed {
                command: "sync".into(),
                stderr: e.to_string(),
            })
        });
        last_sync = Some(Instant::now());
        match result {
            Ok(()) => {
                previous = written;
                dirty = false;
                if due {
                    last_full = Some(Instant::now());
                }
                let took_ms = started.elapsed().as_millis() as u64;
                if first {
                    info!(
                        service_ports = ports.len(),
                        rewritten, took_ms, "iptables rules synced"
                    );
                } else {
                    tracing::debug!(
                        service_ports = ports.len(),
                        rewritten,
                        full = due,
                        took_ms,
                        "iptables rules synced"
                    );
                }
                synced_once = true;
            }
            Err(e) if first => return Err(ProxyError::FirstSync(e)),
            Err(e) => warn!(error = %e, "syncing iptables rules failed; retrying"),
        }
    }
}
