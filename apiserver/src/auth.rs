//! Authentication beyond bearer tokens (client certificates from `--client-ca-file`, anonymous
//! requests) and the authorization hook (`--authorization-mode`).
//!
//! As in kube-apiserver, a verified client certificate names the user by its subject CommonName
//! and the groups by its Organization entries; the TLS layer verifies the chain against
//! `--client-ca-file` and a certificate is optional (a client without one may still present a
//! bearer token).

use std::sync::Arc;

use axum::http::Method;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::server::User;

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

/// What a request asks to do, for the authorizer (kube-apiserver's request attributes, as far
/// as this server resolves them from the URL).
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub user: &'a User,
    /// get, list, watch, create, update, patch, delete, deletecollection; for non-resource
    /// URLs the lower-cased HTTP method.
    pub verb: String,
    pub path: &'a str,
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

/// The Kubernetes verb of a request: resource requests (`/api/...`, `/apis/...`) map the HTTP
/// method and whether the URL names one object; others use the method.
pub fn verb(method: &Method, path: &str, query: Option<&str>) -> String {
    let watch = crate::selector::raw_query_flag(query, "watch");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/g/v/... → the part after the version.
    let rest: &[&str] = match segments.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return method.as_str().to_ascii_lowercase(),
    };
    if rest.first() == Some(&"watch") {
        return "watch".into();
    }
    // namespaces/NS/RESOURCE[/NAME[/SUB]] or RESOURCE[/NAME[/SUB]].
    let named = match rest {
        ["namespaces", _, _resource, _name, ..] => true,
        ["namespaces", _, _resource] => false,
        [_resource, _name, ..] => true,
        _ => false,
    };
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => return method.as_str().to_ascii_lowercase(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_kube_apiserver() {
        let v = |m: Method, p: &str, q: Option<&str>| verb(&m, p, q);
        assert_eq!(v(Method::GET, "/api/v1/namespaces", None), "list");
        assert_eq!(v(Method::GET, "/api/v1/namespaces/demo", None), "get");
        assert_eq!(
            v(Method::GET, "/api/v1/namespaces/demo/configmaps", None),
            "list"
        );
        assert_eq!(
            v(
                Method::GET,
                "/api/v1/namespaces/demo/configmaps",
                Some("watch=true")
            ),
            "watch"
        );
        assert_eq!(
            v(
                Method::GET,
                "/apis/apps/v1/namespaces/d/deployments/x",
                None
            ),
            "get"
        );
        assert_eq!(v(Method::POST, "/api/v1/namespaces", None), "create");
        assert_eq!(
            v(Method::DELETE, "/api/v1/namespaces/d/configmaps", None),
            "deletecollection"
        );
        assert_eq!(
            v(Method::DELETE, "/api/v1/namespaces/d/configmaps/c", None),
            "delete"
        );
        assert_eq!(v(Method::GET, "/version", None), "get");
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
                verb: "get".into(),
                path: "/api"
            }),
            Decision::Allow
        );
    }
}
