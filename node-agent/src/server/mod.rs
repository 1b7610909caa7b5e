//! The agent's HTTPS server: kubelet's port 10250 API for the API server's `pods/log` and
//! `pods/exec` proxies.
//!
//! - `GET /healthz` → `ok` (anyone).
//! - `GET /containerLogs/{namespace}/{pod}/{container}` (see [`logs`]): the CRI log files of
//!   `<logs_dir>/<ns>_<pod>_<uid>/<container>/<attempt>.log`, with kubelet's query parameters.
//! - `GET|POST /exec/{namespace}/{pod}/{container}` (see [`exec`]): `runc exec` in the current
//!   attempt's container over a WebSocket speaking the `*.channel.k8s.io` subprotocols.
//! - `/attach/...`, `/portForward/...`: 501 for now.
//!
//! HTTPS only. Client authentication follows kubelet's `--client-ca-file`: [`acceptor`] asks
//! for (without requiring) a client certificate signed by that CA; a connection that presented
//! one is authenticated and may use everything. Anonymous connections get `/healthz` only (401
//! elsewhere) unless [`ServerConfig::allow_anonymous`] is set.

pub mod exec;
pub mod logs;
mod pods;
mod portforward;
mod query;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::runtime::RuncRuntime;

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tells which containers a pod has (namespace, pod name → container names, `None` for a pod
/// the agent does not run). Optional: it lets the server tell a container that has not started
/// yet (`waiting to start`) from a name the pod does not have (`not available`).
pub type ContainerNames = Arc<dyn Fn(&str, &str) -> Option<Vec<String>> + Send + Sync>;

/// What the server reads and runs.
#[derive(Clone)]
pub struct ServerConfig {
    /// `/var/log/pods`: `<ns>_<pod>_<uid>/<container>/<attempt>.log`.
    pub logs_dir: PathBuf,
    /// The runtime whose containers `exec` enters and whose exit files end `follow`.
    pub runtime: RuncRuntime,
    /// Serve logs and exec to connections without a verified client certificate (kubelet's
    /// `--anonymous-auth` with `AlwaysAllow` authorization). Default false.
    pub allow_anonymous: bool,
    /// Optional container names of the pods the agent runs (see [`ContainerNames`]).
    pub container_names: Option<ContainerNames>,
    /// Rendered on `/metrics` (to authenticated clients).
    pub metrics: Option<skiff_client::metrics::Registry>,
    /// Where the pods' network namespaces are: `<dir>/<prefix><pod uid>` (port-forward).
    pub netns_dir: PathBuf,
    pub netns_prefix: String,
}

impl ServerConfig {
    /// A config with anonymous access off and no container-name lookup.
    pub fn new(logs_dir: PathBuf, runtime: RuncRuntime) -> ServerConfig {
        ServerConfig {
            logs_dir,
            runtime,
            allow_anonymous: false,
            container_names: None,
            metrics: None,
            netns_dir: PathBuf::from("/run/netns"),
            netns_prefix: "skiff-".into(),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("logs_dir", &self.logs_dir)
            .field("runtime", &self.runtime)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("container_names", &self.container_names.is_some())
            .finish()
    }
}

/// Server failures (setup only: per-connection failures are logged).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("tls: {0}")]
    Tls(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Who is on the other end of a connection (set per connection by [`serve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// It presented a client certificate the acceptor's verifier accepted.
    pub authenticated: bool,
}

/// A TLS acceptor for the serving pair `cert` (rustls, ring, TLS 1.2/1.3, ALPN h2 and
/// http/1.1). With `client_ca` (a PEM bundle, kubelet's `--client-ca-file`), client
/// certificates signed by it are asked for and verified; a client may still connect without
/// one (it is then anonymous).
pub fn acceptor(
    cert: &skiff_client::tls::ServingCert,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, ServerError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ServerError::Tls(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("serving certificate", &e))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(
            "serving certificate: no certificate in the PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| bad("serving key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls config", &e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| bad(&format!("client CA {}", path.display()), &e))?;
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(&pem) {
                let ca = ca.map_err(|e| bad(&format!("client CA {}", path.display()), &e))?;
                roots
                    .add(ca)
                    .map_err(|e| bad(&format!("client CA {}", path.display()), &e))?;
            }
            if roots.is_empty() {
                return Err(ServerError::Tls(format!(
                    "client CA {}: no certificate in the PEM",
                    path.display()
                )));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad("client CA verifier", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("serving certificate", &e))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// Shared by every handler.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
}

/// The routes (without the per-connection [`Peer`]: a request without one is anonymous).
pub fn router(config: ServerConfig) -> Router {
    let shared = Arc::new(Shared { config });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::handler),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec::handler).post(exec::handler),
        )
        .route("/attach/{*rest}", any(|| not_implemented("attach")))
        .route("/portForward/{namespace}/{pod}", any(portforward::handler))
        .with_state(shared)
}

/// `/metrics`: the agent's Prometheus text (authenticated clients, as kubelet's).
async fn metrics(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    peer: Option<Extension<Peer>>,
) -> Response {
    if let Some(denied) = deny(&shared, peer) {
        return denied;
    }
    let body = shared
        .config
        .metrics
        .as_ref()
        .map(|r| r.render())
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

async fn not_implemented(what: &'static str) -> Response {
    text(
        StatusCode::NOT_IMPLEMENTED,
        format!("{what} is not implemented by this node agent"),
    )
}

/// A plain-text response (kubelet answers its errors as text).
pub(crate) fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The 401 answer, unless the peer is authenticated or anonymous access is allowed.
pub(crate) fn deny(shared: &Shared, peer: Option<Extension<Peer>>) -> Option<Response> {
    let authenticated = peer.is_some_and(|Extension(p)| p.authenticated);
    if authenticated || shared.config.allow_anonymous {
        None
    } else {
        Some(text(StatusCode::UNAUTHORIZED, "Unauthorized".into()))
    }
}

/// Serves HTTPS (HTTP/1.1 with upgrades for exec, and h2) on `listener` with `acceptor` until
/// `shutdown` resolves; open connections are then closed. A client that does not finish its
/// TLS handshake within 10 s is dropped.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = router(config);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
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
                    tracing::debug!(%addr, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // The verifier accepted whatever certificate the client presented.
            let authenticated = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let app = app.layer(Extension(Peer { authenticated }));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%addr, error = %err, "connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
    Ok(())
}
