//! Serving certificates for a component's secure port, as k8s.io/apiserver's
//! `SecureServingOptions.MaybeDefaultWithSelfSignedCerts` picks them for kube-scheduler:
//!
//! - `--tls-cert-file` and `--tls-private-key-file` (given together): used as they are;
//! - else, with `--cert-dir`: `<cert-dir>/<pair>.crt` and `<pair>.key` are reused when both
//!   exist, otherwise a self-signed CA and a certificate signed by it are generated and
//!   written there (the `.crt` holds the certificate then the CA; the key is 0600);
//! - else (an empty `--cert-dir`, kube-scheduler's default): generated and kept in memory.
//!
//! A generated certificate is for `localhost`, `127.0.0.1` and the bind address (when it is
//! not `0.0.0.0`/`::`), valid from yesterday for one year, like client-go's
//! `GenerateSelfSignedCertKey`. Everything here is rustls with the ring provider.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
/// The acceptor [`acceptor`] builds, named here so that callers need no TLS crate of their own.
pub use tokio_rustls::TlsAcceptor;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// Where the serving certificate comes from (the `--tls-*` and `--cert-dir` flags).
#[derive(Debug, Clone, Default)]
pub struct ServingCertOptions {
    /// `--tls-cert-file`: PEM certificate (chain).
    pub cert_file: Option<PathBuf>,
    /// `--tls-private-key-file`: its PEM key.
    pub key_file: Option<PathBuf>,
    /// `--cert-dir`: where a generated pair is kept; `None` (or empty) keeps it in memory.
    pub cert_dir: Option<PathBuf>,
    /// File name stem in `cert_dir`, e.g. `kube-scheduler`.
    pub pair_name: String,
    /// The address the port binds (a SAN of a generated certificate unless unspecified).
    pub bind_address: Option<IpAddr>,
}

/// Where the serving pair came from, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `--tls-cert-file`/`--tls-private-key-file`.
    Files,
    /// Reused from `--cert-dir`.
    Reused(PathBuf),
    /// Generated and written to `--cert-dir`.
    Generated(PathBuf),
    /// Generated, in memory only.
    InMemory,
}

/// PEM text of a serving certificate chain and its key.
#[derive(Clone)]
pub struct ServingCert {
    /// Leaf first, then any intermediates/CA.
    pub cert_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
    /// Where it came from.
    pub source: CertSource,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ServingCert")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn tls_err(message: String) -> Error {
    Error::Tls(message)
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| tls_err(format!("read {}: {e}", path.display())))
}

impl ServingCertOptions {
    /// Checks the flags alone (no file access): the cert and key files go together.
    pub fn validate(&self) -> Result<(), Error> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(tls_err(
                "--tls-cert-file requires --tls-private-key-file".into(),
            )),
            (None, Some(_)) => Err(tls_err(
                "--tls-private-key-file requires --tls-cert-file".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Loads, reuses or generates the serving pair (see the module doc).
    pub fn load(&self) -> Result<ServingCert, Error> {
        self.validate()?;
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            return Ok(ServingCert {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
                source: CertSource::Files,
            });
        }
        let dir = self.cert_dir.as_ref().filter(|d| !d.as_os_str().is_empty());
        let Some(dir) = dir else {
            let (cert_pem, key_pem) = self.generate()?;
            return Ok(ServingCert {
                cert_pem,
                key_pem,
                source: CertSource::InMemory,
            });
        };
        if self.pair_name.is_empty() {
            return Err(tls_err("a pair name is required with a cert dir".into()));
        }
        let cert_path = dir.join(format!("{}.crt", self.pair_name));
        let key_path = dir.join(format!("{}.key", self.pair_name));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                return Ok(ServingCert {
                    cert_pem: read(&cert_path)?,
                    key_pem: read(&key_path)?,
                    source: CertSource::Reused(dir.clone()),
                });
            }
            (true, false) | (false, true) => {
                return Err(tls_err(format!(
                    "{} and {}: certificate and key must be supplied as a pair",
                    cert_path.display(),
                    key_path.display()
                )));
            }
            (false, false) => {}
        }
        let (cert_pem, key_pem) = self.generate()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| tls_err(format!("create {}: {e}", dir.display())))?;
        std::fs::write(&cert_path, &cert_pem)
            .map_err(|e| tls_err(format!("write {}: {e}", cert_path.display())))?;
        write_private(&key_path, &key_pem)?;
        Ok(ServingCert {
            cert_pem,
            key_pem,
            source: CertSource::Generated(dir.clone()),
        })
    }

    /// A CA `localhost-ca@<unix time>` and a certificate `localhost@<unix time>` it signed:
    /// (leaf + CA chain PEM, leaf key PEM).
    fn generate(&self) -> Result<(String, String), Error> {
        let gen_err = |e: rcgen::Error| tls_err(format!("generate a self-signed certificate: {e}"));
        let now = jiff::Timestamp::now();
        let stamp = now.as_second();
        let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
        let yesterday = today.yesterday().unwrap_or(today);
        let in_a_year = today
            .checked_add(jiff::Span::new().years(1))
            .unwrap_or(today);
        let ymd = |d: jiff::civil::Date| {
            rcgen::date_time_ymd(
                i32::from(d.year()),
                d.month().unsigned_abs(),
                d.day().unsigned_abs(),
            )
        };

        let ca_key = KeyPair::generate().map_err(gen_err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("localhost-ca@{stamp}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.not_before = ymd(yesterday);
        ca_params.not_after = ymd(in_a_year);
        let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(gen_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("localhost@{stamp}"));
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        if let Some(bind) = self.bind_address
            && !bind.is_unspecified()
            && !ips.contains(&bind)
        {
            ips.push(bind);
        }
        params
            .subject_alt_names
            .extend(ips.into_iter().map(SanType::IpAddress));
        params.not_before = ymd(yesterday);
        params.not_after = ymd(in_a_year);
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        Ok((
            format!("{}{}", cert.pem(), ca_cert.pem()),
            key.serialize_pem(),
        ))
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| tls_err(format!("write {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| tls_err(format!("write {}: {e}", path.display())))
}

/// A TLS acceptor for `cert` (rustls, ring provider, TLS 1.2 and 1.3, HTTP/1.1 and h2 ALPN, no
/// client certificates).
pub fn acceptor(cert: &ServingCert) -> Result<tokio_rustls::TlsAcceptor, Error> {
    let bad = |e: &dyn std::fmt::Display| tls_err(format!("serving certificate: {e}"));
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(tls_err(
            "serving certificate: no certificate in the PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&e))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: Option<&Path>) -> ServingCertOptions {
        ServingCertOptions {
            cert_dir: dir.map(Path::to_path_buf),
            pair_name: "kube-scheduler".into(),
            bind_address: Some(IpAddr::from([127, 0, 0, 2])),
            ..Default::default()
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "skiff-client-tls-{name}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn in_memory_when_no_cert_dir() {
        for dir in [None, Some(Path::new(""))] {
            let cert = options(dir).load().unwrap();
            assert_eq!(cert.source, CertSource::InMemory);
            assert_eq!(cert.cert_pem.matches("BEGIN CERTIFICATE").count(), 2);
            assert!(acceptor(&cert).is_ok());
        }
    }

    #[test]
    fn generated_into_cert_dir_then_reused() {
        let dir = scratch("dir");
        let first = options(Some(&dir)).load().unwrap();
        assert_eq!(first.source, CertSource::Generated(dir.clone()));
        let key_path = dir.join("kube-scheduler.key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = options(Some(&dir)).load().unwrap();
        assert_eq!(second.source, CertSource::Reused(dir.clone()));
        assert_eq!(second.cert_pem, first.cert_pem);
        assert_eq!(second.key_pem, first.key_pem);

        std::fs::remove_file(&key_path).unwrap();
        let err = options(Some(&dir)).load().unwrap_err().to_string();
        assert!(err.contains("must be supplied as a pair"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn explicit_files_go_together_and_bad_pem_is_an_error() {
        let mut opts = options(None);
        opts.cert_file = Some("/nonexistent.crt".into());
        assert!(
            opts.validate()
                .unwrap_err()
                .to_string()
                .contains("--tls-private-key-file")
        );
        opts.key_file = Some("/nonexistent.key".into());
        assert!(
            opts.load()
                .unwrap_err()
                .to_string()
                .contains("/nonexistent.crt")
        );

        let bogus = ServingCert {
            cert_pem: "not a certificate".into(),
            key_pem: "not a key".into(),
            source: CertSource::Files,
        };
        assert!(acceptor(&bogus).is_err());
    }
}
