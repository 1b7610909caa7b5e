//! skiff's cluster DNS (CoreDNS with its `kubernetes` plugin, as k3s ships it): the names of
//! Services, headless Services' endpoints, named ports (SRV) and pods under
//! `--cluster-domain`, served on UDP and TCP; everything else forwarded to the node's
//! resolvers. Run one per node on the address pods are given as their nameserver (the node
//! agent's `--cluster-dns`).
//!
//! Layers, each importing only the ones below it:
//! - [`zone`]: Services and EndpointSlices → names and answers (pure).
//! - [`wire`]: query bytes → response bytes or "forward" (pure, hickory-proto).
//! - [`server`]: sockets, forwarding, bounds.
//! - this file: informers keeping the zone current.

pub mod server;
pub mod wire;
pub mod zone;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::info;

use crate::server::Resolver;
use crate::zone::Zone;

/// What `skiff dns` runs with.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// `--cluster-domain`.
    pub domain: String,
    /// Where other names are forwarded, in order.
    pub upstreams: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// How often the zone may be rebuilt while changes keep coming.
const REBUILD_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The nameservers of a resolv.conf text, port 53, without `skip` (this server's own).
pub fn upstreams_from_resolv_conf(text: &str, skip: SocketAddr) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|a| *a != skip)
        .collect()
}

/// Binds UDP and TCP on `address` (port 0: one free port for both).
pub async fn bind(address: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let listen_error = |source| DnsError::Listen { address, source };
    let tcp = TcpListener::bind(address).await.map_err(listen_error)?;
    let bound = tcp.local_addr().map_err(listen_error)?;
    let udp = UdpSocket::bind(bound).await.map_err(listen_error)?;
    Ok((udp, tcp))
}

/// Serves until `shutdown` completes.
pub async fn run(
    config: DnsConfig,
    client: Client,
    sockets: (UdpSocket, TcpListener),
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let (services, mut service_events, _s) = skiff_client::informer::reflect(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let (slices, mut slice_events, _e) = skiff_client::informer::reflect(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    );
    let (zone_tx, zone_rx) = watch::channel(Arc::new(Zone::build(&config.domain, &[], &[])));
    let address = sockets.1.local_addr().ok();
    let resolver = Resolver {
        zone: zone_rx,
        upstreams: Arc::new(config.upstreams.clone()),
    };
    let server = tokio::spawn(server::serve(sockets.0, sockets.1, resolver));
    info!(address = ?address, upstreams = ?config.upstreams, domain = %config.domain, "serving cluster DNS");
    let keep_current = async {
        let (mut services_ready, mut slices_ready) = (false, false);
        loop {
            tokio::select! {
                event = service_events.recv() => {
                    if matches!(event, Some(watcher::Event::InitDone)) { services_ready = true; }
                }
                event = slice_events.recv() => {
                    if matches!(event, Some(watcher::Event::InitDone)) { slices_ready = true; }
                }
            }
            if !(services_ready && slices_ready) {
                continue;
            }
            tokio::time::sleep(REBUILD_MIN_INTERVAL).await;
            // Take what queued meanwhile; one rebuild covers it.
            while service_events.try_recv().is_ok() || slice_events.try_recv().is_ok() {}
            let service_list = services.state();
            let slice_list = slices.state();
            let zone = Zone::build(
                &config.domain,
                &service_list.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
                &slice_list.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            );
            let _ = zone_tx.send(Arc::new(zone));
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = keep_current => {}
    }
    server.abort();
    Ok(())
}
