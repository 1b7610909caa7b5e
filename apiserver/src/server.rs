//! The HTTPS server: configuration, serving certificate (given or generated), the admin
//! kubeconfig, the router (the endpoints wrapped in the filter chain), and [`run`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::auth::{Authenticator, Tokens, User};
use crate::endpoints;
use crate::filters;
use crate::filters::inflight::InFlight;
use crate::registry::kubernetes_service::ApiServerEndpoint;
use crate::registry::service_addresses::ServiceRanges;
use crate::registry::{Registry, resources};
use crate::storage::etcd::{EtcdClient, EtcdConfig};
use crate::storage::{EtcdStorage, Storage};

/// Configuration of `skiff apiserver`; field names follow kube-apiserver's flags.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// `--etcd-servers`: etcd v3 endpoints (a skiff store or etcd).
    pub etcd_servers: Vec<String>,
    /// `--etcd-cafile`: the CA that signed the store's serving certificates (https endpoints).
    pub etcd_cafile: Option<PathBuf>,
    /// `--etcd-certfile` / `--etcd-keyfile`: the client certificate presented to the store.
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    /// `--etcd-prefix`: the key prefix of every object.
    pub etcd_prefix: String,
    /// `--bind-address`.
    pub bind_address: IpAddr,
    /// `--secure-port`.
    pub secure_port: u16,
    /// `--tls-cert-file` / `--tls-private-key-file`; generated into `cert_dir` when absent.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// `--cert-dir`.
    pub cert_dir: PathBuf,
    /// `--token-auth-file`: CSV `token,user,uid,"group1,group2"`.
    pub token_auth_file: Option<PathBuf>,
    /// `--anonymous-auth`.
    pub anonymous_auth: bool,
    /// `--client-ca-file`: client certificates signed by these CAs authenticate (CN = user,
    /// O = groups).
    pub client_ca_file: Option<PathBuf>,
    /// `--authorization-mode`: AlwaysAllow (default) or AlwaysDeny.
    pub authorization_mode: String,
    /// `--grpc-port`: serve the gRPC automation API (`skiff.api.v1.Resources`, health,
    /// reflection) on this port of the bind address, with the same certificate; None = off.
    pub grpc_port: Option<u16>,
    /// `--write-kubeconfig`: write an admin kubeconfig for this server here.
    pub write_kubeconfig: Option<PathBuf>,
    /// `--etcd-compaction-interval`: how often the store is compacted (to the revision it had
    /// one interval earlier, as kube-apiserver does); zero turns compaction off.
    pub etcd_compaction_interval: Duration,
    /// `--max-requests-inflight`: read requests served at once (watches excluded); more get
    /// 429 TooManyRequests. Zero = no limit.
    pub max_requests_inflight: usize,
    /// `--max-mutating-requests-inflight`: the same for create, update, patch and delete.
    pub max_mutating_requests_inflight: usize,
    /// `--encryption-provider-config`: an `EncryptionConfiguration` file; the resources it
    /// names are encrypted in the store (see [`crate::storage::encryption`]).
    pub encryption_provider_config: Option<PathBuf>,
    /// `--audit-log-path`: the audit log (a file, or `-` for stdout); None = no audit log.
    pub audit_log_path: Option<PathBuf>,
    /// `--audit-policy-file`: an audit `Policy`; without one everything is logged at Metadata.
    pub audit_policy_file: Option<PathBuf>,
    /// `--audit-log-maxsize`: megabytes before the audit log is rotated; 0 = never.
    pub audit_log_maxsize: u64,
    /// `--audit-log-maxbackup`: rotated audit logs kept; 0 = all.
    pub audit_log_maxbackup: usize,
    /// `--enable-admission-plugins`: admission plugins to run besides the default-on ones
    /// (they run in upstream's order whatever the order here).
    pub enable_admission_plugins: Vec<String>,
    /// `--disable-admission-plugins`: default-on admission plugins not to run.
    pub disable_admission_plugins: Vec<String>,
    /// `--watch-cache`: serve lists and watches from the watch cache
    /// ([`crate::storage::cacher`]), one store watch per resource; false = every list and
    /// watch goes to the store.
    pub watch_cache: bool,
    /// `--kubelet-client-certificate` / `--kubelet-client-key`: the client certificate the API
    /// server presents to kubelets (node agents) for `pods/log`, `exec`, `attach` and
    /// `portforward`; None = no client certificate.
    pub kubelet_client_certificate: Option<PathBuf>,
    pub kubelet_client_key: Option<PathBuf>,
    /// `--kubelet-certificate-authority`: verify kubelets' serving certificates with this CA;
    /// None = not verified (kube-apiserver's default).
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// `--kubelet-timeout`: bound on connecting to a kubelet and, for requests that do not
    /// stream, on its response headers.
    pub kubelet_timeout: Duration,
    /// `--kubelet-preferred-address-types`: which of a Node's `status.addresses` to reach its
    /// kubelet at, first match wins.
    pub kubelet_preferred_address_types: Vec<String>,
    /// `--service-cluster-ip-range`: the ClusterIPs Services get (k3s's `10.43.0.0/16`); its
    /// first address is the `kubernetes` Service's.
    pub service_cluster_ip_range: String,
    /// `--service-node-port-range`: the NodePorts Services get (`30000-32767`).
    pub service_node_port_range: String,
    /// `--advertise-address`: the address the `kubernetes` Service's Endpoints list for this
    /// server; None = `--bind-address`, or 127.0.0.1 when that is unspecified.
    pub advertise_address: Option<IpAddr>,
}

/// How long a stopping server may spend taking itself out of the `kubernetes` Endpoints.
const ENDPOINTS_REMOVAL_BUDGET: Duration = Duration::from_secs(2);

/// kube-apiserver's default `--max-requests-inflight`.
pub const MAX_REQUESTS_INFLIGHT_DEFAULT: usize = 400;
/// kube-apiserver's default `--max-mutating-requests-inflight`.
pub const MAX_MUTATING_REQUESTS_INFLIGHT_DEFAULT: usize = 200;

/// kube-apiserver's default `--etcd-compaction-interval`.
pub const ETCD_COMPACTION_INTERVAL_DEFAULT: Duration = Duration::from_secs(5 * 60);

pub use crate::registry::kubelet::{
    KUBELET_PREFERRED_ADDRESS_TYPES_DEFAULT, KUBELET_TIMEOUT_DEFAULT,
};

/// Parses a Go duration as kube-apiserver's flags take them: `5m`, `1m30s`, `500ms`, `2h`, `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (want e.g. 5m, 30s, 500ms, 0)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(number * seconds).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            etcd_servers: vec!["http://127.0.0.1:2379".into()],
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_prefix: "/registry".into(),
            bind_address: IpAddr::from([0, 0, 0, 0]),
            secure_port: 6443,
            tls_cert_file: None,
            tls_private_key_file: None,
            cert_dir: PathBuf::from("apiserver.local.config/certificates"),
            token_auth_file: None,
            anonymous_auth: false,
            client_ca_file: None,
            authorization_mode: "AlwaysAllow".into(),
            grpc_port: None,
            write_kubeconfig: None,
            etcd_compaction_interval: ETCD_COMPACTION_INTERVAL_DEFAULT,
            max_requests_inflight: MAX_REQUESTS_INFLIGHT_DEFAULT,
            max_mutating_requests_inflight: MAX_MUTATING_REQUESTS_INFLIGHT_DEFAULT,
            encryption_provider_config: None,
            audit_log_path: None,
            audit_policy_file: None,
            audit_log_maxsize: 0,
            audit_log_maxbackup: 0,
            enable_admission_plugins: Vec::new(),
            disable_admission_plugins: Vec::new(),
            watch_cache: true,
            kubelet_client_certificate: None,
            kubelet_client_key: None,
            kubelet_certificate_authority: None,
            kubelet_timeout: KUBELET_TIMEOUT_DEFAULT,
            kubelet_preferred_address_types: KUBELET_PREFERRED_ADDRESS_TYPES_DEFAULT
                .iter()
                .map(|t| t.to_string())
                .collect(),
            service_cluster_ip_range: "10.43.0.0/16".into(),
            service_node_port_range: "30000-32767".into(),
            advertise_address: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

impl ApiServerConfig {
    /// How to reach the store.
    pub fn etcd(&self) -> EtcdConfig {
        EtcdConfig {
            servers: self.etcd_servers.clone(),
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
        }
    }

    /// The Service address ranges of `--service-cluster-ip-range` and
    /// `--service-node-port-range`.
    pub fn service_ranges(&self) -> Result<ServiceRanges, Error> {
        ServiceRanges::parse(
            &self.service_cluster_ip_range,
            &self.service_node_port_range,
        )
        .map_err(Error::Config)
    }

    /// The address this server is listed at in the `kubernetes` Service's Endpoints.
    pub fn advertised(&self, port: u16) -> ApiServerEndpoint {
        let address = self
            .advertise_address
            .unwrap_or(if self.bind_address.is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                self.bind_address
            });
        ApiServerEndpoint { address, port }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.etcd_servers.is_empty() {
            return Err(Error::Config("--etcd-servers must be set".into()));
        }
        if self.etcd_certfile.is_some() != self.etcd_keyfile.is_some() {
            return Err(Error::Config(
                "--etcd-certfile and --etcd-keyfile must be given together".into(),
            ));
        }
        if let Some(https) = self
            .etcd_servers
            .iter()
            .find(|s| s.starts_with("https://"))
            .filter(|_| self.etcd_cafile.is_none())
        {
            return Err(Error::Config(format!(
                "--etcd-servers {https} is https: give the CA that signed its certificate in \
                 --etcd-cafile (and --etcd-certfile/--etcd-keyfile if it wants a client certificate)"
            )));
        }
        crate::admission::plugins_from_flags(
            &self.enable_admission_plugins,
            &self.disable_admission_plugins,
        )
        .map_err(Error::Config)?;
        self.service_ranges()?;
        if !self.etcd_prefix.starts_with('/') {
            return Err(Error::Config("--etcd-prefix must start with '/'".into()));
        }
        if self.tls_cert_file.is_some() != self.tls_private_key_file.is_some() {
            return Err(Error::Config(
                "--tls-cert-file and --tls-private-key-file must be given together".into(),
            ));
        }
        crate::auth::authorizer(&self.authorization_mode).map_err(Error::Config)?;
        crate::registry::kubelet::check_flags(
            self.kubelet_client_certificate.is_some(),
            self.kubelet_client_key.is_some(),
            &self.kubelet_preferred_address_types,
        )
        .map_err(Error::Config)?;
        if self.audit_policy_file.is_some() && self.audit_log_path.is_none() {
            return Err(Error::Config(
                "--audit-policy-file needs --audit-log-path (the only audit backend)".into(),
            ));
        }
        Ok(())
    }
}

struct AppState {
    registry: Arc<Registry>,
    /// The client of `pods/log`, `exec`, `attach`, `portforward`.
    kubelet: Arc<crate::registry::kubelet::KubeletClient>,
    /// For the health checks' `etcd` check.
    etcd: EtcdClient,
    metrics: crate::metrics::Metrics,
    authenticator: Arc<Authenticator>,
    authorizer: Arc<dyn crate::auth::Authorizer>,
    /// `--audit-log-path`.
    audit: Option<Arc<crate::audit::Auditor>>,
}

type Shared = Arc<AppState>;

fn router(state: Shared, limits: InFlight) -> Router {
    let handlers = Arc::new(endpoints::Handlers {
        registry: state.registry.clone(),
        etcd: state.etcd.clone(),
        kubelet: state.kubelet.clone(),
    });
    endpoints::routes(handlers)
        .route(
            "/metrics",
            get(crate::metrics::serve).with_state(state.metrics.clone()),
        )
        // Layers run outermost first: the last added is the first filter (see `filters`).
        .layer(axum::middleware::from_fn(filters::yaml::yaml_bodies))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            filters::inflight::limit_inflight,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.authorizer.clone(),
            filters::authz::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.authenticator.clone(),
            filters::authn::authenticate,
        ))
        .layer(DefaultBodyLimit::max(crate::limits::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(
            filters::status_errors::status_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            filters::audit::AuditFilter {
                auditor: state.audit.clone(),
                authenticator: state.authenticator.clone(),
            },
            filters::audit::audit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            filters::metrics::observe,
        ))
        .layer(axum::middleware::from_fn(
            filters::request_info::with_request_info,
        ))
}

/// PEM text of the serving certificate chain, its key, and the CA that signed it (for
/// kubeconfigs); the CA is None when the certificate was given.
struct ServingCert {
    cert_pem: String,
    key_pem: String,
    ca_pem: Option<String>,
}

fn io_err(what: &str, path: &Path, err: impl std::fmt::Display) -> Error {
    Error::Io(format!("{what} {}: {err}", path.display()))
}

/// Loads `--tls-cert-file`/`--tls-private-key-file`, or reuses/generates a self-signed CA and a
/// serving certificate (SANs: localhost, 127.0.0.1, the bind address) in `--cert-dir`.
fn serving_cert(config: &ApiServerConfig) -> Result<ServingCert, Error> {
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_private_key_file) {
        return Ok(ServingCert {
            cert_pem: std::fs::read_to_string(cert).map_err(|e| io_err("read", cert, e))?,
            key_pem: std::fs::read_to_string(key).map_err(|e| io_err("read", key, e))?,
            ca_pem: None,
        });
    }
    let dir = &config.cert_dir;
    let (ca_path, cert_path, key_path) = (
        dir.join("apiserver-ca.crt"),
        dir.join("apiserver.crt"),
        dir.join("apiserver.key"),
    );
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| io_err("read", p, e));
        return Ok(ServingCert {
            cert_pem: read(&cert_path)?,
            key_pem: read(&key_path)?,
            ca_pem: Some(read(&ca_path)?),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
    let gen_err = |e: rcgen::Error| Error::Config(format!("generate serving certificate: {e}"));
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "skiff-apiserver-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ])
    .map_err(gen_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "skiff-apiserver");
    // kube-apiserver's self-signed certificate names its service IP (the `kubernetes`
    // Service's ClusterIP) and its advertised address too.
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    let service_ip = config
        .service_ranges()
        .ok()
        .map(|r| IpAddr::V4(r.first_ip()));
    for ip in [
        Some(config.bind_address),
        config.advertise_address,
        service_ip,
    ]
    .into_iter()
    .flatten()
    {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    let serving = ServingCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: Some(ca_cert.pem()),
    };
    std::fs::write(&ca_path, ca_cert.pem()).map_err(|e| io_err("write", &ca_path, e))?;
    std::fs::write(&cert_path, &serving.cert_pem).map_err(|e| io_err("write", &cert_path, e))?;
    write_private(&key_path, &serving.key_pem)?;
    info!(dir = %dir.display(), "generated a self-signed serving certificate");
    Ok(serving)
}

fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).map_err(|e| io_err("write", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("chmod", path, e))
}

fn tls_acceptor(
    serving: &ServingCert,
    client_ca_pem: Option<&[u8]>,
) -> Result<tokio_rustls::TlsAcceptor, Error> {
    let bad = |e: &dyn std::fmt::Display| Error::Config(format!("serving certificate: {e}"));
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?;
    let builder = match client_ca_pem {
        Some(pem) => builder.with_client_cert_verifier(
            crate::auth::client_verifier(pem, provider).map_err(Error::Config)?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(certs, key).map_err(|e| bad(&e))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// The admin kubeconfig, as k3s writes it: the CA and a bearer token.
fn kubeconfig(server: &str, ca_pem: Option<&str>, token: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let ca_line = match ca_pem {
        Some(ca) => format!("    certificate-authority-data: {}\n", b64.encode(ca)),
        None => "    insecure-skip-tls-verify: true\n".to_string(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n{ca_line}\
         users:\n- name: admin\n  user:\n    token: {token}\n\
         contexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\n\
         current-context: skiff\npreferences: {{}}\n"
    )
}

/// Runs the API server until `shutdown` completes.
pub async fn run(config: ApiServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    config.validate()?;
    let encryption = match &config.encryption_provider_config {
        Some(path) => Some(
            crate::storage::encryption::EncryptionConfig::load(path)
                .map_err(|e| Error::Config(e.to_string()))?,
        ),
        None => None,
    };
    let audit_policy = match &config.audit_policy_file {
        Some(path) => {
            Some(crate::audit::Policy::load(path).map_err(|e| Error::Config(e.to_string()))?)
        }
        None => None,
    };
    // The audit log opens before anything is served (a bad path is a startup error).
    let metrics = crate::metrics::Metrics::new(resources::registry().iter().map(|r| {
        (
            r.group.to_string(),
            r.version.to_string(),
            r.resource.to_string(),
        )
    }));
    let audit = match &config.audit_log_path {
        Some(path) => {
            let audit_config = crate::audit::AuditConfig {
                log_path: path.clone(),
                policy: audit_policy,
                max_size_mb: config.audit_log_maxsize,
                max_backups: config.audit_log_maxbackup,
            };
            let auditor = crate::audit::Auditor::start(&audit_config, metrics.audit())
                .map_err(|e| Error::Config(e.to_string()))?;
            info!(path = %path.display(), "writing the audit log");
            Some(Arc::new(auditor))
        }
        None => None,
    };
    let mut tokens = match &config.token_auth_file {
        Some(path) => {
            Tokens::parse(&std::fs::read_to_string(path).map_err(|e| io_err("read", path, e))?)
                .map_err(Error::Config)?
        }
        None => Tokens::default(),
    };
    let serving = serving_cert(&config)?;
    let client_ca = match &config.client_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| io_err("read", path, e))?),
        None => None,
    };
    let acceptor = tls_acceptor(&serving, client_ca.as_deref())?;
    let authorizer = crate::auth::authorizer(&config.authorization_mode).map_err(Error::Config)?;
    let addr = SocketAddr::new(config.bind_address, config.secure_port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("bind {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("local address: {e}")))?;

    if let Some(path) = &config.write_kubeconfig {
        let token = match tokens.admin_token() {
            Some(token) => token,
            None => {
                // No token file: an admin token of our own, valid for this process.
                let b: [u8; 24] = rand::random();
                let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
                tokens.insert(
                    token.clone(),
                    User {
                        name: "admin".into(),
                        uid: "admin".into(),
                        groups: vec!["system:masters".into()],
                    },
                );
                token
            }
        };
        let host = if config.bind_address.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            config.bind_address.to_string()
        };
        let server = format!(
            "https://{}",
            SocketAddr::new(host.parse().unwrap_or(config.bind_address), local.port())
        );
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_err("create", parent, e))?;
        }
        write_private(
            path,
            &kubeconfig(&server, serving.ca_pem.as_deref(), &token),
        )?;
        info!(path = %path.display(), "wrote admin kubeconfig");
    }

    let etcd = EtcdStorage::connect(&config.etcd()).map_err(Error::Config)?;
    let etcd_client = etcd.client().clone();
    let mut storage: Arc<dyn Storage> = Arc::new(etcd.clone());
    if let Some(encryption) = &encryption {
        let encrypted = crate::storage::encryption::EncryptedStorage::new(
            storage,
            &config.etcd_prefix,
            encryption,
            &resources::registry()
                .iter()
                .map(|r| (r.group, r.resource))
                .collect::<Vec<_>>(),
        );
        info!(resources = ?encrypted.encrypted_resources(), "encrypting at rest");
        storage = Arc::new(encrypted);
    }
    if config.watch_cache {
        // Outside the encryption layer: the cache holds plaintext, in memory only.
        let resources = resources::registry()
            .iter()
            .map(|info| {
                crate::storage::cacher::CachedResource::new(
                    &config.etcd_prefix,
                    info.group,
                    info.version,
                    info.kind,
                    info.resource,
                )
            })
            .collect::<Vec<_>>();
        // Consistent lists come from the cache only once every store member answers with
        // a version whose requested progress notifications are ordered (kube-apiserver's
        // RequestWatchProgress check); etcd 3.4.23, say, keeps them on the store.
        let consistent_lists = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(check_watch_progress_support(
            etcd_client.clone(),
            consistent_lists.clone(),
        ));
        storage = Arc::new(
            crate::storage::cacher::Cacher::new(storage, resources, &metrics.watch_cache())
                .with_consistent_lists(consistent_lists),
        );
    }
    let (admission_plugins, unimplemented) = crate::admission::plugins_from_flags(
        &config.enable_admission_plugins,
        &config.disable_admission_plugins,
    )
    .map_err(Error::Config)?;
    if !unimplemented.is_empty() {
        warn!(plugins = ?unimplemented, "admission plugins named in flags are not implemented; ignored");
    }
    info!(plugins = ?admission_plugins.iter().map(|p| p.name()).collect::<Vec<_>>(), "admission chain");
    let registry = Arc::new(
        Registry::new(
            storage,
            &config.etcd_prefix,
            resources::registry(),
            admission_plugins,
        )
        .with_service_ranges(config.service_ranges()?),
    );
    // Seed the initial namespaces; wait for the store if it is not up yet. A TLS store that
    // wants client certificates may close the connection without a readable alert: say what
    // is likely missing.
    let hint = if config.etcd_certfile.is_none()
        && config
            .etcd_servers
            .iter()
            .any(|s| s.starts_with("https://"))
    {
        "no --etcd-certfile/--etcd-keyfile: a store started with --client-cert-auth refuses \
         clients without a certificate"
    } else {
        ""
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match registry.seed().await {
            Ok(()) => break,
            Err(e) => {
                warn!(error = %e, hint, "store not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    let _compactor = (!config.etcd_compaction_interval.is_zero()).then(|| {
        AbortOnDrop(tokio::spawn(
            etcd.run_compactor(config.etcd_compaction_interval),
        ))
    });
    // The `kubernetes` Service and this server's place in its Endpoints.
    let me = config.advertised(local.port());
    let mut delay = Duration::from_millis(100);
    while let Err(e) = registry.ensure_kubernetes_service(local.port()).await {
        warn!(error = %e.message, "could not create the kubernetes Service; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    let _endpoint_reconciler =
        AbortOnDrop(tokio::spawn(registry.clone().run_endpoint_reconciler(me)));
    let _namespace_finalizer =
        AbortOnDrop(tokio::spawn(registry.clone().run_namespace_finalizer()));
    let kubelet = Arc::new(kubelet_client(&config)?);
    let state = Arc::new(AppState {
        metrics,
        registry,
        kubelet,
        etcd: etcd_client,
        authenticator: Arc::new(Authenticator {
            tokens,
            anonymous: config.anonymous_auth,
        }),
        authorizer,
        audit,
    });
    let limits = InFlight::new(
        config.max_requests_inflight,
        config.max_mutating_requests_inflight,
        state.metrics.clone(),
    );
    let app = router(state.clone(), limits);
    let _grpc = match config.grpc_port {
        Some(port) => {
            let api = crate::endpoints::grpc::GrpcApi::new(app.clone(), state.registry.clone());
            let tls = crate::endpoints::grpc::GrpcTls {
                cert_pem: serving.cert_pem.clone(),
                key_pem: serving.key_pem.clone(),
                client_ca_pem: client_ca.clone(),
            };
            let addr = SocketAddr::new(config.bind_address, port);
            let (local, task) = crate::endpoints::grpc::serve(addr, tls, api)
                .await
                .map_err(Error::Io)?;
            info!(address = %local, "serving the gRPC automation API");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    info!(address = %local, "serving the Kubernetes API over HTTPS");
    serve(listener, acceptor, app, shutdown).await;
    drop(_endpoint_reconciler);
    let leaving = state.registry.remove_from_endpoints(me);
    if tokio::time::timeout(ENDPOINTS_REMOVAL_BUDGET, leaving)
        .await
        .is_err()
    {
        warn!("could not remove this server from the kubernetes endpoints in time");
    }
    Ok(())
}

/// The kubelet client of the `--kubelet-*` flags.
fn kubelet_client(
    config: &ApiServerConfig,
) -> Result<crate::registry::kubelet::KubeletClient, Error> {
    let client = crate::registry::kubelet::KubeletClientConfig::read(
        config.kubelet_client_certificate.as_deref(),
        config.kubelet_client_key.as_deref(),
        config.kubelet_certificate_authority.as_deref(),
        config.kubelet_timeout,
        &config.kubelet_preferred_address_types,
    )
    .map_err(Error::Io)?;
    crate::registry::kubelet::KubeletClient::new(&client).map_err(Error::Config)
}

/// Aborts a background task when dropped (the gRPC server, the compactor and the namespace
/// finalizer end with [`run`]).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            // The user of a verified client certificate, for every request on this connection.
            let peer_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| crate::auth::user_from_cert(leaf));
            let app = tower::ServiceExt::map_request(
                app,
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(crate::auth::PeerIdentity(peer_user.clone()));
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                },
            );
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
}

/// Sets `allowed` once every store member reports a version that orders requested progress
/// notifications ([`crate::storage::etcd::supports_watch_progress`]); asks again every few
/// seconds while a member does not answer.
async fn check_watch_progress_support(
    client: crate::storage::etcd::EtcdClient,
    allowed: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let versions = client.server_versions().await;
        if versions.iter().all(Option::is_some) {
            let versions: Vec<String> = versions.into_iter().flatten().collect();
            let supported = versions
                .iter()
                .all(|v| crate::storage::etcd::supports_watch_progress(v));
            allowed.store(supported, std::sync::atomic::Ordering::Relaxed);
            if supported {
                info!(?versions, "consistent lists served from the watch cache");
            } else {
                info!(
                    ?versions,
                    "the store's version may send progress notifications ahead of events \
                     (etcd-io/etcd#15220, fixed in 3.4.31 and 3.5.13): consistent lists \
                     are served by the store, watches by the cache"
                );
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod node_proxy_tests;

#[cfg(test)]
mod tests;
