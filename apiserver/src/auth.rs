//! Who a request is and what it may do, without HTTP routing: the [`User`], bearer tokens
//! (`--token-auth-file`), client certificates (`--client-ca-file`), anonymous requests, the
//! [`Authenticator`] that tries them in order, and the authorization hook
//! (`--authorization-mode`). The filters in `crate::filters::{authn, authz}` apply them.
//!
//! As in kube-apiserver, a verified client certificate names the user by its subject CommonName
//! and the groups by its Organization entries; the TLS layer verifies the chain against
//! `--client-ca-file` and a certificate is optional (a client without one may still present a
//! bearer token).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::request_info::RequestInfo;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// Bearer tokens → users (`--token-auth-file`).
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, User>);

impl Tokens {
    /// Parses kube-apiserver's token file: `token,user,uid[,"group1,group2"]` per line.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
                return Err(format!(
                    "token file line {}: want token,user,uid[,groups]",
                    i + 1
                ));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                fields[0].clone(),
                User {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                },
            );
        }
        Ok(Tokens(tokens))
    }

    /// Adds (or replaces) one token.
    pub fn insert(&mut self, token: String, user: User) {
        self.0.insert(token, user);
    }

    pub fn authenticate(&self, token: &str) -> Option<&User> {
        self.0.get(token)
    }

    /// A token for the admin kubeconfig: a `system:masters` member, else any.
    pub fn admin_token(&self) -> Option<String> {
        let mut all: Vec<(&String, &User)> = self.0.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.iter()
            .find(|(_, u)| u.groups.iter().any(|g| g == "system:masters"))
            .or(all.first())
            .map(|(t, _)| (*t).clone())
    }
}

/// Splits one CSV line with double-quoted fields.
fn split_csv(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

/// Who a request is (kube-apiserver's union authenticator in its order): a verified client
/// certificate, else a known bearer token, else anonymous when allowed; None = 401.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    pub tokens: Tokens,
    /// `--anonymous-auth`.
    pub anonymous: bool,
}

impl Authenticator {
    pub fn authenticate(&self, req: &Request) -> Option<User> {
        if let Some(PeerIdentity(Some(user))) = req.extensions().get() {
            return Some(user.clone());
        }
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match token {
            Some(token) => self.tokens.authenticate(token).cloned(),
            None if self.anonymous => Some(anonymous_user()),
            None => None,
        }
    }
}

/// The user a verified client certificate names, attached to every request of its connection.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<User>);

/// The user of an anonymous request (`--anonymous-auth=true`).
pub fn anonymous_user() -> User {
    User {
        name: "system:anonymous".into(),
        uid: String::new(),
        groups: vec!["system:unauthenticated".into()],
    }
}

/// CN → user, every O → a group (plus `system:authenticated`), as kube-apiserver's x509
/// authenticator does. None when the certificate cannot be parsed or has no CommonName.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User {
        name,
        uid: String::new(),
        groups,
    })
}

/// Reads `--client-ca-file` into a rustls client verifier that accepts clients without a
/// certificate (they authenticate by token or anonymously) and verifies those with one.
pub fn client_verifier(
    pem: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("--client-ca-file: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--client-ca-file: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("--client-ca-file: no certificates".into());
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("--client-ca-file: {e}"))
}

/// What a request asks to do, for the authorizer (kube-apiserver's `authorizer.Attributes`):
/// who asks, and the request's [`RequestInfo`] (verb, resource, namespace, name or path).
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub user: &'a User,
    pub request: &'a RequestInfo,
}

/// The authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// The authorization hook (`--authorization-mode`); RBAC will be one more implementation.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, attrs: &Attributes<'_>) -> Decision;
}

/// `--authorization-mode AlwaysAllow`.
pub struct AlwaysAllow;

impl Authorizer for AlwaysAllow {
    fn authorize(&self, _: &Attributes<'_>) -> Decision {
        Decision::Allow
    }
}

/// `--authorization-mode AlwaysDeny`.
pub struct AlwaysDeny;

impl Authorizer for AlwaysDeny {
    fn authorize(&self, _: &Attributes<'_>) -> Decision {
        Decision::Deny(String::new())
    }
}

/// The authorizer of an `--authorization-mode` value.
pub fn authorizer(mode: &str) -> Result<Arc<dyn Authorizer>, String> {
    match mode {
        "AlwaysAllow" => Ok(Arc::new(AlwaysAllow)),
        "AlwaysDeny" => Ok(Arc::new(AlwaysDeny)),
        other => Err(format!(
            "--authorization-mode: unsupported mode {other:?} (AlwaysAllow, AlwaysDeny)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_parses_quoted_groups() {
        let tokens =
            Tokens::parse("# comment\nabc,alice,1,\"system:masters,dev\"\nxyz,bob,2\n").unwrap();
        let alice = tokens.authenticate("abc").unwrap();
        assert_eq!(alice.groups, vec!["system:masters", "dev"]);
        assert!(tokens.authenticate("xyz").unwrap().groups.is_empty());
        assert!(tokens.authenticate("nope").is_none());
        assert_eq!(tokens.admin_token().as_deref(), Some("abc"));
        assert!(Tokens::parse("onlytoken\n").is_err());
    }

    #[test]
    fn certificate_subject_names_user_and_groups() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jane");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "dev");
        let cert = params.self_signed(&key).unwrap();
        let user = user_from_cert(cert.der()).unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, vec!["dev", "system:authenticated"]);
        assert!(authorizer("RBAC").is_err());
        assert_eq!(
            authorizer("AlwaysAllow").unwrap().authorize(&Attributes {
                user: &user,
                request: &RequestInfo::new(&axum::http::Method::GET, "/api", None),
            }),
            Decision::Allow
        );
    }
}
