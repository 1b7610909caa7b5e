//! `/healthz`, `/livez` and `/readyz` as kube-apiserver's `healthz` package serves them: a named
//! list of checks (`ping`, `log`, `etcd`), `?verbose` prints each (`[+]etcd ok`) and
//! `readyz check passed`; a failure prints `[-]etcd failed: reason withheld` and
//! `readyz check failed` with 500 (verbose or not; the reason goes to the log only);
//! `?exclude=<check>` skips one; `/readyz/<check>` runs one (`ok`, or 500
//! `internal server error: <reason>`). The `etcd` check really asks the store
//! ([`EtcdClient::check`]): it fails only when no member answers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::storage::etcd::EtcdClient;

/// The checks every endpoint runs, in order.
pub const CHECKS: [&str; 3] = ["ping", "log", "etcd"];

pub use crate::request_info::is_health_path;

async fn run(check: &str, etcd: &EtcdClient) -> Result<(), String> {
    match check {
        "etcd" => etcd.check().await,
        _ => Ok(()),
    }
}

fn text(code: StatusCode, body: String) -> Response {
    let mut response = (code, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn decode(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/healthz`, `/livez` or `/readyz` (`endpoint` without the slash).
pub async fn root(endpoint: &str, query: Option<&str>, etcd: &EtcdClient) -> Response {
    let mut verbose = false;
    let mut excluded: Vec<String> = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(name).as_str() {
            "verbose" => verbose = true,
            "exclude" => excluded.push(decode(value)),
            _ => {}
        }
    }
    let mut out = String::new();
    let mut failed = Vec::new();
    for check in CHECKS {
        if excluded.iter().any(|e| e == check) {
            excluded.retain(|e| e != check);
            out.push_str(&format!("[+]{check} excluded: ok\n"));
            continue;
        }
        match run(check, etcd).await {
            Ok(()) => out.push_str(&format!("[+]{check} ok\n")),
            Err(reason) => {
                // The endpoint is public: the reason goes to the log only.
                out.push_str(&format!("[-]{check} failed: reason withheld\n"));
                failed.push(format!("[-]{check} failed: {reason}"));
            }
        }
    }
    if !excluded.is_empty() {
        excluded.sort();
        excluded.dedup();
        let quoted: Vec<String> = excluded.iter().map(|e| format!("{e:?}")).collect();
        out.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            quoted.join(", ")
        ));
    }
    if !failed.is_empty() {
        tracing::warn!(endpoint, checks = %failed.join("; "), "health check failed");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{out}{endpoint} check failed\n"),
        );
    }
    if !verbose {
        return text(StatusCode::OK, "ok".into());
    }
    text(StatusCode::OK, format!("{out}{endpoint} check passed\n"))
}

/// `/<endpoint>/<check>`: one check.
pub async fn single(endpoint: &str, check: &str, etcd: &EtcdClient) -> Response {
    if !CHECKS.contains(&check) {
        return crate::status::ApiError::new(
            crate::status::Reason::NotFound,
            "the server could not find the requested resource",
        )
        .into_response();
    }
    match run(check, etcd).await {
        Ok(()) => text(StatusCode::OK, "ok".into()),
        Err(reason) => {
            tracing::warn!(endpoint, check, reason, "health check failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal server error: {reason}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: Response) -> (u16, String) {
        let code = response.status().as_u16();
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .unwrap();
        (code, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn health_paths() {
        assert!(is_health_path("/readyz"));
        assert!(is_health_path("/livez/etcd"));
        assert!(!is_health_path("/readyzz"));
        assert!(!is_health_path("/api"));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(decode("poststarthook%2Fx"), "poststarthook/x");
        assert_eq!(decode("a+b"), "a b");
        assert_eq!(decode("100%"), "100%");
    }

    #[tokio::test]
    async fn output_matches_kube_apiserver() {
        // Nothing listens on the port: the etcd check fails quickly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let etcd = EtcdClient::new(&crate::storage::etcd::EtcdConfig {
            servers: vec![format!("127.0.0.1:{port}")],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            body(root("readyz", Some("verbose"), &etcd).await),
            (
                500,
                "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\nreadyz check failed\n"
                    .into()
            )
        );
        assert_eq!(
            body(root("livez", Some("exclude=etcd&verbose=1"), &etcd).await),
            (
                200,
                "[+]ping ok\n[+]log ok\n[+]etcd excluded: ok\nlivez check passed\n".into()
            )
        );
        assert_eq!(
            body(root("healthz", Some("exclude=etcd"), &etcd).await),
            (200, "ok".into())
        );
        assert_eq!(
            body(root("readyz", Some("verbose&exclude=etcd&exclude=nope"), &etcd).await).1,
            "[+]ping ok\n[+]log ok\n[+]etcd excluded: ok\nwarn: some health checks cannot be \
             excluded: no matches for \"nope\"\nreadyz check passed\n"
        );
        assert_eq!(
            body(single("readyz", "ping", &etcd).await),
            (200, "ok".into())
        );
        let (code, text) = body(single("readyz", "etcd", &etcd).await);
        assert_eq!(code, 500);
        assert!(
            text.starts_with("internal server error: no etcd endpoint answered"),
            "{text}"
        );
        assert_eq!(body(single("readyz", "nope", &etcd).await).0, 404);
    }
}
