//! The HTTPS client admission webhooks are called with: one HTTP/1.1 POST per call over a
//! fresh rustls connection (the server verified against the configuration's `caBundle`),
//! bounded by the webhook's `timeoutSeconds` and a response size limit.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// The largest webhook response read (kube-apiserver's request body limit).
const MAX_WEBHOOK_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// Why a webhook call failed (before it answered with an AdmissionReview).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("invalid webhook URL {0:?}: must be https://host[:port]/path")]
    Url(String),
    #[error("no caBundle: only webhooks with a caBundle are supported")]
    NoCaBundle,
    #[error("invalid caBundle: {0}")]
    CaBundle(String),
    #[error("failed to call webhook: Post \"{url}\": {why}")]
    Transport { url: String, why: String },
    #[error("failed to call webhook: Post \"{0}\": context deadline exceeded")]
    Timeout(String),
    #[error("failed to call webhook: the server responded with the status code {0}")]
    Status(u16),
}

/// POSTs `body` (JSON) to `url` and returns the response body of a 200.
pub async fn post_json(
    url: &str,
    ca_bundle: Option<&[u8]>,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    match tokio::time::timeout(timeout, post(url, ca_bundle, body)).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Timeout(url.to_string())),
    }
}

async fn post(url: &str, ca_bundle: Option<&[u8]>, body: Vec<u8>) -> Result<Vec<u8>, CallError> {
    let uri: Uri = url.parse().map_err(|_| CallError::Url(url.into()))?;
    let (Some("https"), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(CallError::Url(url.into()));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let transport = |why: String| CallError::Transport {
        url: url.to_string(),
        why,
    };

    let mut roots = rustls::RootCertStore::empty();
    let pem = ca_bundle.ok_or(CallError::NoCaBundle)?;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| CallError::CaBundle(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| CallError::CaBundle(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| transport(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(host.clone()).map_err(|_| CallError::Url(url.into()))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| transport(format!("dial tcp {host}:{port}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| transport(format!("tls: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| transport(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let request = Request::post(path)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Body::from(body))
        .map_err(|e| transport(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_WEBHOOK_RESPONSE_BYTES)
        .await
        .map_err(|e| transport(e.to_string()));
    driver.abort();
    if status != 200 {
        return Err(CallError::Status(status));
    }
    Ok(bytes?.to_vec())
}
