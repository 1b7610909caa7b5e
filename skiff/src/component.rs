//! What the Kubernetes-side components (`skiff scheduler`, `skiff controller-manager`) share
//! on the command line: log setup, the secure port's certificate (files, or self-signed as
//! kube-scheduler and kube-controller-manager make one) and its `/healthz`, `/livez`,
//! `/readyz` and `/metrics` server.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use skiff_client::tls::{CertSource, ServingCertOptions};

use crate::cli::shutdown_signal;

/// Logs to stderr with a tracing EnvFilter; colours only on a terminal.
pub(crate) fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// The secure port's TLS acceptor (`None` when the port is 0), read or made before anything
/// starts so that a bad certificate stops the start. Errors are printed; the exit code is
/// returned.
pub(crate) fn serving_acceptor(
    serving: &ServingCertOptions,
    secure_port: u16,
) -> Result<Option<skiff_client::tls::TlsAcceptor>, ExitCode> {
    if let Err(err) = serving.validate() {
        eprintln!("skiff: {err}");
        return Err(ExitCode::from(crate::cli::EXIT_USAGE));
    }
    if secure_port == 0 {
        return Ok(None);
    }
    let loaded = serving
        .load()
        .and_then(|cert| Ok((skiff_client::tls::acceptor(&cert)?, cert.source)));
    match loaded {
        Ok((acceptor, source)) => {
            match source {
                CertSource::Files => {}
                CertSource::Reused(dir) => {
                    tracing::info!(dir = %dir.display(), "reusing the serving certificate")
                }
                CertSource::Generated(dir) => tracing::info!(
                    dir = %dir.display(),
                    "generated a self-signed serving certificate"
                ),
                CertSource::InMemory => {
                    tracing::info!("generated a self-signed serving certificate in memory")
                }
            }
            Ok(Some(acceptor))
        }
        Err(err) => {
            eprintln!("skiff: {err}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Binds the secure port and serves health and metrics on it until the process is told to
/// stop (nothing when `acceptor` is `None`).
pub(crate) async fn spawn_health_server(
    bind_address: IpAddr,
    secure_port: u16,
    acceptor: Option<skiff_client::tls::TlsAcceptor>,
    registry: skiff_client::metrics::Registry,
) -> Result<(), skiff_client::Error> {
    let Some(acceptor) = acceptor else {
        return Ok(());
    };
    let addr = SocketAddr::new(bind_address, secure_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(skiff_client::Error::Io)?;
    tracing::info!(%addr, "serving /healthz, /livez, /readyz and /metrics (HTTPS)");
    let health = skiff_client::serve::Health::default();
    tokio::spawn(async move {
        if let Err(err) =
            skiff_client::serve::serve_tls(listener, acceptor, health, registry, shutdown_signal())
                .await
        {
            tracing::error!(error = %err, "health server failed");
        }
    });
    Ok(())
}
