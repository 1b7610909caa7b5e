//! The HTTPS client the API server reaches kubelets (node agents) with, kube-apiserver's
//! `KubeletClientConfig`: one HTTP/1.1 connection per request over rustls (ALPN
//! `http/1.1`, upgrades allowed), presenting `--kubelet-client-certificate`/`-key`, verifying
//! the kubelet's serving certificate against `--kubelet-certificate-authority` or — without
//! one, kube-apiserver's default — not at all. `--kubelet-timeout` bounds the connection (TCP
//! and TLS) and, for requests that do not stream, the response headers. Failures carry Go's
//! wording (`dial tcp 10.0.0.1:10250: connect: connection refused`), which clients show.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The kubelet port when a Node does not report `status.daemonEndpoints.kubeletEndpoint`
/// (kube-apiserver's `--kubelet-port` default).
pub const KUBELET_PORT_DEFAULT: u16 = 10250;

/// kube-apiserver's default `--kubelet-timeout`.
pub const KUBELET_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Our default `--kubelet-preferred-address-types`. kube-apiserver's is `Hostname,InternalDNS,
/// InternalIP,ExternalDNS,ExternalIP`; ours puts `InternalIP` first because skiff's node
/// agents and simulated nodes report a `Hostname` address that is just the node name, which
/// need not resolve, while their `InternalIP` is where the kubelet API listens.
pub const KUBELET_PREFERRED_ADDRESS_TYPES_DEFAULT: &[&str] = &[
    "InternalIP",
    "Hostname",
    "InternalDNS",
    "ExternalDNS",
    "ExternalIP",
];

/// The `--kubelet-*` flags' checks: the certificate and key together, known address types.
pub fn check_flags(cert: bool, key: bool, address_types: &[String]) -> Result<(), String> {
    if cert != key {
        return Err(
            "--kubelet-client-certificate and --kubelet-client-key must be given together".into(),
        );
    }
    if address_types.is_empty() {
        return Err("--kubelet-preferred-address-types must name at least one type".into());
    }
    match address_types
        .iter()
        .find(|t| !KUBELET_PREFERRED_ADDRESS_TYPES_DEFAULT.contains(&t.as_str()))
    {
        Some(bad) => Err(format!(
            "--kubelet-preferred-address-types: unknown address type {bad:?} (want one of \
             Hostname, InternalDNS, InternalIP, ExternalDNS, ExternalIP)"
        )),
        None => Ok(()),
    }
}

/// What [`KubeletClient::new`] is built from (the PEM text of the flags' files).
#[derive(Debug, Clone, Default)]
pub struct KubeletClientConfig {
    /// `--kubelet-client-certificate` and `--kubelet-client-key`.
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// `--kubelet-certificate-authority`; None = the kubelet's certificate is not verified.
    pub ca_pem: Option<Vec<u8>>,
    /// `--kubelet-timeout`.
    pub timeout: Duration,
    /// `--kubelet-preferred-address-types`.
    pub preferred_address_types: Vec<String>,
}

/// Where a kubelet listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletAddress {
    pub host: String,
    pub port: u16,
}

impl KubeletAddress {
    /// `host:port`, an IPv6 host in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `https://host:port<path_and_query>`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("https://{}{path_and_query}", self.authority())
    }
}

/// A request to a kubelet that failed before it answered, worded as Go's `net/http` does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KubeletError(pub String);

/// The client; one per API server.
pub struct KubeletClient {
    tls: tokio_rustls::TlsConnector,
    /// `--kubelet-timeout`.
    pub timeout: Duration,
    /// `--kubelet-preferred-address-types`.
    pub preferred_address_types: Vec<String>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("timeout", &self.timeout)
            .field("preferred_address_types", &self.preferred_address_types)
            .finish_non_exhaustive()
    }
}

impl KubeletClientConfig {
    /// Reads the flags' PEM files.
    pub fn read(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        timeout: Duration,
        preferred_address_types: &[String],
    ) -> Result<KubeletClientConfig, String> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()));
        Ok(KubeletClientConfig {
            client_cert_pem: match (cert, key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            },
            ca_pem: ca.map(read).transpose()?,
            timeout,
            preferred_address_types: preferred_address_types.to_vec(),
        })
    }
}

impl KubeletClient {
    pub fn new(config: &KubeletClientConfig) -> Result<KubeletClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &config.ca_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("--kubelet-certificate-authority: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("--kubelet-certificate-authority: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("--kubelet-certificate-authority: no certificate".into());
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider))),
        };
        let mut tls = match &config.client_cert_pem {
            Some((cert, key)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--kubelet-client-certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("--kubelet-client-key: {e}"))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("--kubelet-client-certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            timeout: config.timeout,
            preferred_address_types: config.preferred_address_types.clone(),
        })
    }

    /// Sends `req` (its URI a path and query) to the kubelet at `address` over a new
    /// connection that allows an upgrade. `bounded` also bounds the wait for the response
    /// headers by the timeout (requests that do not stream).
    pub async fn send(
        &self,
        address: &KubeletAddress,
        mut req: Request<Body>,
        bounded: bool,
    ) -> Result<Response<Incoming>, KubeletError> {
        let url = address.url(&req.uri().to_string());
        let method = title_case(req.method().as_str());
        let fail = |why: String| KubeletError(format!("{method} \"{url}\": {why}"));
        let mut sender = tokio::time::timeout(self.timeout, self.connect(address))
            .await
            .map_err(|_| fail(format!("dial tcp {}: i/o timeout", address.authority())))?
            .map_err(fail)?;
        req.headers_mut().insert(
            axum::http::header::HOST,
            address
                .authority()
                .parse()
                .map_err(|_| fail("invalid host".into()))?,
        );
        let response = sender.send_request(req);
        let response = if bounded {
            tokio::time::timeout(self.timeout, response)
                .await
                .map_err(|_| fail("net/http: timeout awaiting response headers".into()))?
        } else {
            response.await
        };
        response.map_err(|e| fail(e.to_string()))
    }

    /// TCP, TLS and the HTTP/1.1 handshake; the connection runs in its own task until the
    /// response (or the upgraded stream) is done with.
    async fn connect(
        &self,
        address: &KubeletAddress,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>, String> {
        let tcp = tokio::net::TcpStream::connect((address.host.as_str(), address.port))
            .await
            .map_err(|e| dial_error(address, &e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(address.host.clone())
            .map_err(|_| format!("invalid server name {:?}", address.host))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "kubelet connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Go's `dial tcp <addr>: connect: connection refused` for a failed connect.
pub fn dial_error(address: &KubeletAddress, err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let why = match err.kind() {
        ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
        ErrorKind::TimedOut => "i/o timeout".to_string(),
        ErrorKind::HostUnreachable => "connect: no route to host".to_string(),
        ErrorKind::NetworkUnreachable => "connect: network is unreachable".to_string(),
        _ => {
            let text = err.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_lowercase(),
                None => text,
            }
        }
    };
    format!("dial tcp {}: {why}", address.authority())
}

/// `GET` → `Get`, as Go's `url.Error` names the method.
fn title_case(method: &str) -> String {
    let lower = method.to_ascii_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => lower,
    }
}

/// The verifier without `--kubelet-certificate-authority`: any certificate is accepted (the
/// signatures of the handshake are still checked), as kube-apiserver's `Insecure` transport.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_dial_errors_read_as_go_writes_them() {
        let v4 = KubeletAddress {
            host: "10.0.0.1".into(),
            port: 10250,
        };
        assert_eq!(
            v4.url("/containerLogs/a/b/c?follow=true"),
            "https://10.0.0.1:10250/containerLogs/a/b/c?follow=true"
        );
        let v6 = KubeletAddress {
            host: "fd00::1".into(),
            port: 10250,
        };
        assert_eq!(v6.authority(), "[fd00::1]:10250");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            dial_error(&v4, &refused),
            "dial tcp 10.0.0.1:10250: connect: connection refused"
        );
        assert_eq!(title_case("GET"), "Get");
        assert_eq!(title_case("POST"), "Post");
    }

    #[test]
    fn flags_are_checked() {
        let ours: Vec<String> = KUBELET_PREFERRED_ADDRESS_TYPES_DEFAULT
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert!(check_flags(true, true, &ours).is_ok());
        assert!(check_flags(true, false, &ours).is_err());
        assert!(check_flags(false, false, &["Bogus".to_string()]).is_err());
        assert!(check_flags(false, false, &[]).is_err());
    }
}
