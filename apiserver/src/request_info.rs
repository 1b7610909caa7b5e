//! kube-apiserver's `RequestInfo`: what a request asks for — verb, API prefix, group, version,
//! resource, subresource, namespace, name — read from its method, path and query once, by the
//! first filter, and kept in the request's extensions. Metrics, audit, authentication,
//! authorization, the in-flight limits and the handlers all read it; none parses the URL again.
//!
//! The rules are apiserver's `RequestInfoFactory` (`/api` is the groupless prefix, `/apis`
//! carries a group; `watch` and `proxy` as a first segment are verbs; `status` and `finalize`
//! after `namespaces/<name>` are the namespace's own subresources; a GET without a name is a
//! list or a watch, a DELETE without one a deletecollection; a field selector on
//! `metadata.name` names the object). One addition: skiff also serves `?watch=true` on an
//! object's own URL, so such a GET is a watch too.

use axum::http::Method;

use crate::selector::{raw_query_flag, raw_query_value, required_field_value};

/// The API prefixes of resource requests; `api` is the one without a group.
const API_PREFIX_CORE: &str = "api";
const API_PREFIX_GROUPS: &str = "apis";

/// The parsed request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// The URL path as received.
    pub path: String,
    /// Whether the path addresses a resource (`/api/<v>/…`, `/apis/<g>/<v>/…`) rather than
    /// discovery, health, metrics or OpenAPI.
    pub is_resource_request: bool,
    /// get, list, watch, create, update, patch, delete, deletecollection (or `proxy`); for a
    /// non-resource request the lower-cased HTTP method.
    pub verb: String,
    /// `api` or `apis`; empty for non-resource requests.
    pub api_prefix: String,
    pub api_group: String,
    pub api_version: String,
    /// The namespace named by `namespaces/<ns>` (for a namespace's own URL, its name).
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// The path after the prefix, group, version, special verb and namespace:
    /// `resource/name/subresource/…`.
    pub parts: Vec<String>,
    /// A long-running watch: not counted by the in-flight limits, streamed by the handler.
    pub is_watch: bool,
    /// The path gave the verb (`/api/v1/watch/…`, `/api/v1/proxy/…`): such URLs are not
    /// served.
    pub verb_in_path: bool,
    /// The resource came after `namespaces/<ns>/` (a namespaced URL), rather than being the
    /// namespace object itself.
    pub namespace_prefixed: bool,
}

impl RequestInfo {
    /// Reads a request's method, path and raw query.
    pub fn new(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
        let mut info = RequestInfo {
            path: path.to_string(),
            verb: method.as_str().to_ascii_lowercase(),
            ..RequestInfo::default()
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let rest = match segments.as_slice() {
            [API_PREFIX_CORE, version, rest @ ..] if !rest.is_empty() => {
                info.api_version = version.to_string();
                rest
            }
            [API_PREFIX_GROUPS, group, version, rest @ ..] if !rest.is_empty() => {
                info.api_group = group.to_string();
                info.api_version = version.to_string();
                rest
            }
            _ => return info,
        };
        info.is_resource_request = true;
        info.api_prefix = segments[0].to_string();
        info.read_resource_path(method, rest);
        info.read_collection_verb(method, query);
        info.read_connect_verb();
        info
    }

    /// `pods/exec`, `pods/attach` and `pods/portforward` open a stream into a container, so
    /// they are `create` whatever the method: a WebSocket client upgrades a GET, which
    /// kube-apiserver also authorizes as `create` (its `AuthorizePodWebsocketUpgradeCreate
    /// Permission`, on by default). `pods/log` stays a `get`.
    fn read_connect_verb(&mut self) {
        if self.api_prefix == API_PREFIX_CORE
            && self.resource == "pods"
            && !self.verb_in_path
            && is_pod_connect_subresource(&self.subresource)
        {
            self.verb = "create".into();
        }
    }

    /// `[watch|proxy/][namespaces/<ns>/]<resource>[/<name>[/<subresource>…]]`.
    fn read_resource_path(&mut self, method: &Method, mut rest: &[&str]) {
        match rest {
            [verb @ ("watch" | "proxy"), tail @ ..] if !tail.is_empty() => {
                self.verb = verb.to_string();
                self.verb_in_path = true;
                rest = tail;
            }
            _ => self.verb = http_verb(method).to_string(),
        }
        if let ["namespaces", namespace, tail @ ..] = rest {
            self.namespace = namespace.to_string();
            if !tail.is_empty() && !matches!(tail[0], "status" | "finalize") {
                self.namespace_prefixed = true;
                rest = tail;
            }
        }
        self.parts = rest.iter().map(|s| s.to_string()).collect();
        if rest.len() >= 3 && self.verb != "proxy" {
            self.subresource = rest[2].to_string();
        }
        if rest.len() >= 2 {
            self.name = rest[1].to_string();
        }
        self.resource = rest[0].to_string();
    }

    /// A GET without a name lists or watches; a DELETE without one deletes the collection.
    fn read_collection_verb(&mut self, method: &Method, query: Option<&str>) {
        let watch = raw_query_flag(query, "watch");
        if self.name.is_empty() && self.verb == "get" {
            self.verb = if watch { "watch" } else { "list" }.into();
            if let Some(name) = raw_query_value(query, "fieldSelector")
                .and_then(|s| required_field_value(&s, "metadata.name"))
                .filter(|n| is_path_segment_name(n))
            {
                self.name = name;
            }
        }
        if self.name.is_empty() && self.verb == "delete" {
            self.verb = "deletecollection".into();
        }
        let get = matches!(*method, Method::GET | Method::HEAD);
        self.is_watch = self.verb == "watch" || (get && watch);
        if self.is_watch {
            self.verb = "watch".into();
        }
    }

    /// Whether the request may change state (kube-apiserver's mutating in-flight pool).
    pub fn is_mutating(method: &Method) -> bool {
        matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        )
    }
}

/// The pod subresources that connect to a container's streams through its kubelet.
pub fn is_pod_connect_subresource(subresource: &str) -> bool {
    matches!(subresource, "exec" | "attach" | "portforward")
}

/// Paths served without authentication (kube-apiserver's `system:public-info-viewer`).
pub fn is_health_path(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz"].iter().any(|root| {
        path == *root
            || path
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The verb of a resource request whose path does not give one.
fn http_verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
}

/// apimachinery's `path.IsValidPathSegmentName`.
fn is_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains(['/', '%'])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (verb, prefix, group, version, namespace, resource, subresource, name, parts).
    type Expected<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a [&'a str],
    );

    fn info(method: &str, url: &str) -> RequestInfo {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url, None),
        };
        RequestInfo::new(&method, path, query)
    }

    fn check(method: &str, url: &str, want: Expected<'_>) {
        let i = info(method, url);
        assert!(i.is_resource_request, "{method} {url}");
        let parts: Vec<&str> = i.parts.iter().map(String::as_str).collect();
        let got = (
            i.verb.as_str(),
            i.api_prefix.as_str(),
            i.api_group.as_str(),
            i.api_version.as_str(),
            i.namespace.as_str(),
            i.resource.as_str(),
            i.subresource.as_str(),
            i.name.as_str(),
            parts.as_slice(),
        );
        assert_eq!(got, want, "{method} {url}");
    }

    #[test]
    fn resource_paths() {
        let ns = ("list", "api", "", "v1", "", "namespaces", "", "");
        check(
            "GET",
            "/api/v1/namespaces",
            (
                ns.0,
                ns.1,
                ns.2,
                ns.3,
                ns.4,
                ns.5,
                ns.6,
                ns.7,
                &["namespaces"],
            ),
        );
        check(
            "GET",
            "/api/v1/namespaces/team-a",
            (
                "get",
                "api",
                "",
                "v1",
                "team-a",
                "namespaces",
                "",
                "team-a",
                &["namespaces", "team-a"],
            ),
        );
        check(
            "PATCH",
            "/api/v1/namespaces/fresh",
            (
                "patch",
                "api",
                "",
                "v1",
                "fresh",
                "namespaces",
                "",
                "fresh",
                &["namespaces", "fresh"],
            ),
        );
        for method in ["GET", "HEAD"] {
            check(
                method,
                "/api/v1/namespaces/team-a/configmaps/one",
                (
                    "get",
                    "api",
                    "",
                    "v1",
                    "team-a",
                    "configmaps",
                    "",
                    "one",
                    &["configmaps", "one"],
                ),
            );
            check(
                method,
                "/api/v1/configmaps",
                (
                    "list",
                    "api",
                    "",
                    "v1",
                    "",
                    "configmaps",
                    "",
                    "",
                    &["configmaps"],
                ),
            );
        }
        check(
            "GET",
            "/api/v1/namespaces/team-a/configmaps",
            (
                "list",
                "api",
                "",
                "v1",
                "team-a",
                "configmaps",
                "",
                "",
                &["configmaps"],
            ),
        );
    }

    #[test]
    fn watch_and_proxy_verbs() {
        check(
            "GET",
            "/api/v1/watch/configmaps",
            (
                "watch",
                "api",
                "",
                "v1",
                "",
                "configmaps",
                "",
                "",
                &["configmaps"],
            ),
        );
        check(
            "GET",
            "/api/v1/watch/namespaces/b/secrets",
            (
                "watch",
                "api",
                "",
                "v1",
                "b",
                "secrets",
                "",
                "",
                &["secrets"],
            ),
        );
        check(
            "GET",
            "/api/v1/proxy/namespaces/b/pods/web",
            (
                "proxy",
                "api",
                "",
                "v1",
                "b",
                "pods",
                "",
                "web",
                &["pods", "web"],
            ),
        );
        // A proxy's path after the name is not a subresource.
        check(
            "GET",
            "/api/v1/proxy/namespaces/b/pods/web/x/y",
            (
                "proxy",
                "api",
                "",
                "v1",
                "b",
                "pods",
                "",
                "web",
                &["pods", "web", "x", "y"],
            ),
        );
        for (query, verb) in [
            ("watch=true", "watch"),
            ("watch=1", "watch"),
            ("watch=false", "list"),
            ("watch=0", "list"),
        ] {
            check(
                "GET",
                &format!("/api/v1/nodes?{query}"),
                (verb, "api", "", "v1", "", "nodes", "", "", &["nodes"]),
            );
            check(
                "GET",
                &format!("/api/v1/namespaces/q/pods?{query}"),
                (verb, "api", "", "v1", "q", "pods", "", "", &["pods"]),
            );
        }
        assert!(info("GET", "/api/v1/watch/pods").verb_in_path);
        assert!(info("GET", "/api/v1/pods?watch=true").is_watch);
        assert!(!info("GET", "/api/v1/pods?watch=false").is_watch);
        // skiff streams a watch on an object's own URL as well.
        let named = info("GET", "/api/v1/namespaces/q/pods/p?watch=1");
        assert!(named.is_watch && named.verb == "watch" && named.name == "p");
        assert!(!info("POST", "/api/v1/namespaces/q/pods?watch=1").is_watch);
    }

    #[test]
    fn pod_connect_subresources_are_create() {
        for method in ["GET", "POST"] {
            for sub in ["exec", "attach", "portforward"] {
                let i = info(
                    method,
                    &format!("/api/v1/namespaces/q/pods/p/{sub}?command=ls"),
                );
                assert_eq!((i.verb.as_str(), i.subresource.as_str()), ("create", sub));
            }
            let log = info("GET", "/api/v1/namespaces/q/pods/p/log?follow=true");
            assert_eq!(
                (log.verb.as_str(), log.subresource.as_str()),
                ("get", "log")
            );
        }
        // Only pods' connect subresources.
        let other = info("GET", "/apis/apps/v1/namespaces/q/deployments/d/exec");
        assert_eq!(other.verb, "get");
    }

    #[test]
    fn subresources() {
        check(
            "GET",
            "/api/v1/namespaces/q/pods/p/status",
            (
                "get",
                "api",
                "",
                "v1",
                "q",
                "pods",
                "status",
                "p",
                &["pods", "p", "status"],
            ),
        );
        check(
            "GET",
            "/api/v1/namespaces/q/pods/p/log/extra",
            (
                "get",
                "api",
                "",
                "v1",
                "q",
                "pods",
                "log",
                "p",
                &["pods", "p", "log", "extra"],
            ),
        );
        // `status` and `finalize` after a namespace's name are its own subresources.
        check(
            "PUT",
            "/api/v1/namespaces/q/finalize",
            (
                "update",
                "api",
                "",
                "v1",
                "q",
                "namespaces",
                "finalize",
                "q",
                &["namespaces", "q", "finalize"],
            ),
        );
        check(
            "PUT",
            "/api/v1/namespaces/q/status",
            (
                "update",
                "api",
                "",
                "v1",
                "q",
                "namespaces",
                "status",
                "q",
                &["namespaces", "q", "status"],
            ),
        );
        check(
            "GET",
            "/apis/apps/v1/namespaces/q/deployments/d/scale",
            (
                "get",
                "apis",
                "apps",
                "v1",
                "q",
                "deployments",
                "scale",
                "d",
                &["deployments", "d", "scale"],
            ),
        );
        assert!(!info("PUT", "/api/v1/namespaces/q/status").namespace_prefixed);
        assert!(info("GET", "/api/v1/namespaces/q/pods").namespace_prefixed);
    }

    #[test]
    fn verbs_of_methods() {
        check(
            "PATCH",
            "/api/v1/namespaces/q/pods/p",
            (
                "patch",
                "api",
                "",
                "v1",
                "q",
                "pods",
                "",
                "p",
                &["pods", "p"],
            ),
        );
        check(
            "DELETE",
            "/api/v1/namespaces/q/pods/p",
            (
                "delete",
                "api",
                "",
                "v1",
                "q",
                "pods",
                "",
                "p",
                &["pods", "p"],
            ),
        );
        check(
            "POST",
            "/api/v1/namespaces/q/pods",
            ("create", "api", "", "v1", "q", "pods", "", "", &["pods"]),
        );
        check(
            "PUT",
            "/api/v1/namespaces/q/pods/p",
            (
                "update",
                "api",
                "",
                "v1",
                "q",
                "pods",
                "",
                "p",
                &["pods", "p"],
            ),
        );
        check(
            "DELETE",
            "/api/v1/nodes",
            (
                "deletecollection",
                "api",
                "",
                "v1",
                "",
                "nodes",
                "",
                "",
                &["nodes"],
            ),
        );
        check(
            "DELETE",
            "/api/v1/namespaces",
            (
                "deletecollection",
                "api",
                "",
                "v1",
                "",
                "namespaces",
                "",
                "",
                &["namespaces"],
            ),
        );
        check(
            "DELETE",
            "/apis/batch/v1/namespaces/q/jobs",
            (
                "deletecollection",
                "apis",
                "batch",
                "v1",
                "q",
                "jobs",
                "",
                "",
                &["jobs"],
            ),
        );
        check(
            "POST",
            "/apis/batch/v1beta2/namespaces/q/jobs",
            (
                "create",
                "apis",
                "batch",
                "v1beta2",
                "q",
                "jobs",
                "",
                "",
                &["jobs"],
            ),
        );
        check(
            "OPTIONS",
            "/api/v1/pods/p",
            ("", "api", "", "v1", "", "pods", "", "p", &["pods", "p"]),
        );
        assert!(RequestInfo::is_mutating(&Method::PATCH));
        assert!(!RequestInfo::is_mutating(&Method::HEAD));
    }

    #[test]
    fn non_resource_paths() {
        for path in [
            "",
            "/",
            "/api",
            "/api/",
            "/api/v1",
            "/api/v1/",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/apis/apps/v1/",
            "/apis/v1/pods",
            "/version",
            "/healthz/etcd",
            "/openapi/v3/apis/apps/v1",
            "/metrics",
            "/elsewhere/v1/pods",
        ] {
            let i = info("GET", path);
            assert!(!i.is_resource_request, "{path}");
            assert_eq!((i.verb.as_str(), i.path.as_str()), ("get", path));
            assert_eq!(i.api_version, "", "{path}");
        }
        assert_eq!(info("POST", "/version").verb, "post");
        for path in [
            "/api/v1/pods",
            "/apis/apps/v1/deployments/d/scale",
            "/api/v1/p/n/s/x",
        ] {
            assert!(info("GET", path).is_resource_request, "{path}");
        }
    }

    #[test]
    fn a_name_field_selector_names_the_object() {
        let name = |url: &str| {
            let i = info("GET", url);
            (i.verb, i.name)
        };
        let s = |v: &str, n: &str| (v.to_string(), n.to_string());
        assert_eq!(name("/apis/g/v1/things"), s("list", ""));
        assert_eq!(
            name("/apis/g/v1/things?fieldSelector=metadata.name%3Done"),
            s("list", "one")
        );
        assert_eq!(
            name("/apis/g/v1/things?fieldSelector=metadata.name==one"),
            s("list", "one")
        );
        assert_eq!(
            name("/apis/g/v1/things?watch=true&fieldSelector=metadata.name=one"),
            s("watch", "one")
        );
        assert_eq!(
            name("/apis/g/v1/things?fieldSelector=spec.x=one"),
            s("list", "")
        );
        assert_eq!(
            name("/apis/g/v1/things?fieldSelector=metadata.name!=one"),
            s("list", "")
        );
        // Unparsable selectors name nothing (the handler refuses them with a 400).
        assert_eq!(
            name("/apis/g/v1/things?fieldSelector=metadata.name=one,junk"),
            s("list", "")
        );
        assert_eq!(
            name("/apis/g/v1/things?fieldSelector=metadata.name=one,junk&watch=1"),
            s("watch", "")
        );
        assert_eq!(
            name("/apis/g/v1/things?fieldSelector=metadata.name=..&watch=0"),
            s("list", "")
        );
    }
}
