//! The metrics filter: labels every request from its [`RequestInfo`] (kube-apiserver's
//! `CleanVerb` for the verb) and records its code and latency in [`Metrics`].

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::{Metrics, RequestLabels};
use crate::request_info::RequestInfo;

/// The labels of a request: group, version, resource and subresource from its
/// [`RequestInfo`]; the verb is the HTTP method, except `LIST`, `WATCH`, `DELETECOLLECTION`
/// and `APPLY` (a server-side apply patch), as kube-apiserver's `CleanVerb` names them.
pub fn classify(info: &RequestInfo, method: &Method, content_type: &str) -> RequestLabels {
    let verb = match (method.as_str(), info.verb.as_str()) {
        ("GET", _) if info.is_watch => "WATCH",
        ("GET", "list") => "LIST",
        ("DELETE", "deletecollection") => "DELETECOLLECTION",
        ("PATCH", _) if content_type.starts_with("application/apply-patch") => "APPLY",
        (m, _) => m,
    };
    RequestLabels {
        verb: verb.to_string(),
        group: info.api_group.clone(),
        version: info.api_version.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
    }
}

/// The filter: counts every request and observes how long it took until the response head
/// (for a watch: until the stream started).
pub async fn observe(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let labels = match req.extensions().get::<RequestInfo>() {
        Some(info) => classify(info, req.method(), content_type),
        None => classify(&RequestInfo::default(), req.method(), content_type),
    };
    let start = Instant::now();
    let response = next.run(req).await;
    metrics.record(
        labels,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(method: &Method, url: &str, ct: &str) -> RequestLabels {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url, None),
        };
        classify(&RequestInfo::new(method, path, query), method, ct)
    }

    fn verb(method: Method, path: &str, query: Option<&str>, ct: &str) -> (String, String, String) {
        let url = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let l = labels(&method, &url, ct);
        (l.verb, l.resource, l.subresource)
    }

    #[test]
    fn requests_are_classified_like_kube_apiserver() {
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            verb(Method::GET, "/api/v1/namespaces/d/configmaps", None, ""),
            s("LIST", "configmaps", "")
        );
        assert_eq!(
            verb(Method::GET, "/api/v1/configmaps", Some("watch=true"), ""),
            s("WATCH", "configmaps", "")
        );
        assert_eq!(
            verb(
                Method::GET,
                "/apis/apps/v1/namespaces/d/deployments/w/scale",
                None,
                ""
            ),
            s("GET", "deployments", "scale")
        );
        assert_eq!(
            verb(
                Method::PATCH,
                "/api/v1/namespaces/d/configmaps/c",
                None,
                "application/apply-patch+yaml"
            ),
            s("APPLY", "configmaps", "")
        );
        assert_eq!(
            verb(Method::DELETE, "/api/v1/namespaces/d/configmaps", None, ""),
            s("DELETECOLLECTION", "configmaps", "")
        );
        assert_eq!(
            verb(Method::GET, "/api/v1/namespaces/d", None, ""),
            s("GET", "namespaces", "")
        );
        assert_eq!(verb(Method::GET, "/version", None, ""), s("GET", "", ""));
    }
}
