//! `skiff pki init`: a cluster CA plus server, peer and client certificates (rcgen), and
//! the TLS settings built from etcd's certificate flags.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::Error;

/// Files written by [`init`], relative to its directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// Certificates `skiff pki init` creates: (file stem, extended key usages).
const LEAVES: [(&str, &[ExtendedKeyUsagePurpose]); 3] = [
    (
        "server",
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    ),
    (
        "peer",
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    ),
    ("client", &[ExtendedKeyUsagePurpose::ClientAuth]),
];

fn pki_err(what: &str, err: impl std::fmt::Display) -> Error {
    Error::Config(format!("{what}: {err}"))
}

/// Create `dir/{ca,server,peer,client}.pem` and their `-key.pem` files. `hosts` are the
/// DNS names and IP addresses the server and peer certificates are valid for.
/// Returns the paths written.
pub fn init(dir: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|e| pki_err(&format!("create {}", dir.display()), e))?;
    let ca_key = KeyPair::generate().map_err(|e| pki_err("generate CA key", e))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_err("CA params", e))?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "skiff cluster CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| pki_err("self-sign CA", e))?;
    let mut written = Vec::new();
    let mut write = |name: &str, contents: &str, private: bool| -> Result<(), Error> {
        let path = dir.join(name);
        std::fs::write(&path, contents)
            .map_err(|e| pki_err(&format!("write {}", path.display()), e))?;
        if private {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| pki_err(&format!("chmod {}", path.display()), e))?;
        }
        written.push(path);
        Ok(())
    };
    write(CA_CERT, &ca_cert.pem(), false)?;
    write(CA_KEY, &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca_params, ca_key);
    for (stem, usages) in LEAVES {
        let sans: Vec<String> = if stem == "client" {
            Vec::new()
        } else {
            hosts.to_vec()
        };
        let mut params =
            CertificateParams::new(sans).map_err(|e| pki_err(&format!("{stem} params"), e))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("skiff {stem}"));
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().map_err(|e| pki_err(&format!("generate {stem} key"), e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| pki_err(&format!("sign {stem} certificate"), e))?;
        write(&format!("{stem}.pem"), &cert.pem(), false)?;
        write(&format!("{stem}-key.pem"), &key.serialize_pem(), true)?;
    }
    Ok(written)
}

/// One side's TLS files, as etcd's flags name them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cert-file` / `--peer-cert-file`.
    pub cert_file: Option<PathBuf>,
    /// `--key-file` / `--peer-key-file`.
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`: require a certificate signed by
    /// the trusted CA from every connecting client.
    pub client_cert_auth: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Config(format!("read {}: {e}", path.display())))
}

impl TlsFiles {
    pub fn is_configured(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Check the combination of flags (`flag` names the side, e.g. "" or "peer-").
    pub fn validate(&self, flag: &str) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(format!(
                    "--{flag}cert-file and --{flag}key-file must be given together"
                ));
            }
            _ => {}
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(format!(
                "--{flag}client-cert-auth needs --{flag}trusted-ca-file"
            ));
        }
        if self.client_cert_auth && !self.is_configured() {
            return Err(format!(
                "--{flag}client-cert-auth needs --{flag}cert-file and --{flag}key-file"
            ));
        }
        for path in [&self.cert_file, &self.key_file, &self.trusted_ca_file]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                return Err(format!("{}: no such file", path.display()));
            }
        }
        Ok(())
    }

    /// The server side of a listener.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, Error> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            return Ok(None);
        };
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if self.client_cert_auth
            && let Some(ca) = &self.trusted_ca_file
        {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(config))
    }

    /// The client side, for connecting to peers: trust the CA, present our certificate.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, Error> {
        if !self.is_configured() && self.trusted_ca_file.is_none() {
            return Ok(None);
        }
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.trusted_ca_file {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_ca_and_three_leaf_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let written = init(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert_eq!(written.len(), 8);
        let server = std::fs::read_to_string(dir.path().join("server.pem")).unwrap();
        assert!(server.starts_with("-----BEGIN CERTIFICATE-----"));
        let files = TlsFiles {
            cert_file: Some(dir.path().join("server.pem")),
            key_file: Some(dir.path().join("server-key.pem")),
            trusted_ca_file: Some(dir.path().join(CA_CERT)),
            client_cert_auth: true,
        };
        files.validate("").unwrap();
        assert!(files.server_config().unwrap().is_some());
        assert!(files.client_config().unwrap().is_some());
        let half = TlsFiles {
            cert_file: Some(dir.path().join("server.pem")),
            ..Default::default()
        };
        assert!(
            half.validate("peer-")
                .unwrap_err()
                .contains("--peer-key-file")
        );
    }
}
