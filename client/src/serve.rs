//! `/healthz`, `/livez`, `/readyz` and `/metrics` for a component on an injected listener:
//! over HTTPS ([`serve_tls`], what kube-scheduler serves on `--secure-port`) or plain HTTP
//! ([`serve`], for components that have no secure port yet). No route asks for credentials:
//! kube-scheduler lets anyone read the health checks too, but authorizes `/metrics` through
//! the API server, which skiff does not do yet.
//! `/healthz` also reports `leaderElection` unhealthy when the component is the leader on paper
//! but its lease renewals have stopped — the caller decides that through `Health`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Registry;

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Health state a component flips; cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    unhealthy: Arc<AtomicBool>,
}

impl Health {
    /// Marks the component (un)healthy.
    pub fn set_healthy(&self, healthy: bool) {
        self.unhealthy.store(!healthy, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }
}

/// The routes, shared by both transports.
fn router(health: Health, registry: Registry) -> Router {
    let check = move || {
        let health = health.clone();
        async move {
            if health.healthy() {
                (StatusCode::OK, "ok")
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy")
            }
        }
    };
    Router::new()
        .route("/healthz", get(check.clone()))
        .route("/livez", get(check.clone()))
        .route("/readyz", get(check))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { registry.render() }
            }),
        )
}

/// Serves plain HTTP until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    axum::serve(listener, router(health, registry))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Serves HTTPS (HTTP/1.1 and h2 by ALPN) with `acceptor` until `shutdown` resolves; open
/// connections are then closed. A client that does not complete a TLS handshake (plain HTTP,
/// or nothing within 10 s) is dropped without a response.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    health: Health,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    serve_router_tls(listener, acceptor, router(health, registry), shutdown).await
}

/// Serves `app` over HTTPS (HTTP/1.1 with upgrades, e.g. WebSockets, and h2 by ALPN) with
/// `acceptor` until `shutdown` resolves; open connections are then closed. A client that does
/// not complete a TLS handshake (plain HTTP, or nothing within 10 s) is dropped without a
/// response.
pub async fn serve_router_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ServingCertOptions, acceptor};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start_tls() -> (std::net::SocketAddr, CertificateDer<'static>, Health) {
        let cert = ServingCertOptions::default().load().unwrap();
        // The generated chain is leaf then CA: trust the CA.
        let ca = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .last()
            .unwrap()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Health::default();
        let registry = Registry::default();
        let served = health.clone();
        tokio::spawn(serve_tls(
            listener,
            acceptor(&cert).unwrap(),
            served,
            registry,
            std::future::pending(),
        ));
        (addr, ca, health)
    }

    async fn https_get(
        addr: std::net::SocketAddr,
        ca: CertificateDer<'static>,
        path: &str,
    ) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        let _ = tls.read_to_string(&mut raw).await;
        raw
    }

    #[tokio::test]
    async fn healthz_over_tls_and_plain_http_is_refused() {
        let (addr, ca, health) = start_tls().await;
        let ok = https_get(addr, ca.clone(), "/healthz").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("ok"), "{ok}");
        health.set_healthy(false);
        let bad = https_get(addr, ca.clone(), "/readyz").await;
        assert!(bad.starts_with("HTTP/1.1 500"), "{bad}");
        let metrics = https_get(addr, ca, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");

        // Plain HTTP on the TLS port: no HTTP response, the connection is dropped.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = tcp.read_to_end(&mut raw).await;
        assert!(!String::from_utf8_lossy(&raw).contains("200 OK"), "{raw:?}");
    }
}
