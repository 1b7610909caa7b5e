//! The generic registry (kube-apiserver's `genericregistry.Store`): the REST verbs written once
//! over [`Storage`], asking each kind's [`strategy::Strategy`] for what differs. A request's
//! [`RequestInfo`] becomes a [`Target`] (a served resource, scope and subresource), then
//! [`dispatch`] picks the verb:
//!
//! - `read`: get, list (continue tokens, Tables), watch (events, bookmarks, timeouts).
//! - `write`: admission (kind, namespace, name, defaults, strict decoding, validation),
//!   server-set metadata, the admission chain (`crate::admission`), create, update, patch.
//! - `apply`: server-side apply. `subresources`: scale, binding (and the read-modify-write).
//! - `delete`: delete, deletecollection, finalizers. `namespace`: the namespace finalizer.
//! - `watch_memo`: watch events decoded and encoded once for all watchers of a resource.
//! - `node_proxy`: `pods/log`, `exec`, `attach`, `portforward`, proxied to the pod's kubelet
//!   through the `kubelet` client.
//! - [`resources`]: the served kinds; [`strategy`]: what each does differently; [`defaults`],
//!   [`table`], [`patch`]: defaulting, Tables, and the patch formats the verbs use.

mod apply;
pub mod defaults;
mod delete;
#[cfg(test)]
mod fake_storage;
pub mod kubelet;
pub mod kubernetes_service;
mod namespace;
pub mod node_proxy;
pub mod patch;
mod read;
pub mod resources;
pub mod service_addresses;
pub mod strategy;
mod subresources;
pub mod table;
pub mod watch_memo;
mod write;

use self::write::{apply_patch, attributes, is_dry_run, set_create_metadata};

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::admission::{Admission, Attributes, Operation, Plugin};
use crate::registry::resources::ResourceInfo;
use crate::registry::strategy::Subresource;
use crate::request_info::RequestInfo;
use crate::selector::{FieldSelector, LabelSelector, escape_field_value, labels_of, query_flag};
use crate::status::{ApiError, Reason};
use crate::storage::{Change, Storage, StorageError, Stored};

/// The most operations a JSON patch may have (kube-apiserver's `maxJSONPatchOperations`).
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// How many times a patch is retried when the object changes underneath it.
const PATCH_RETRIES_MAX: usize = 5;
/// A watch without `timeoutSeconds` is closed after this long (kube: 30–60 minutes).
const WATCH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1800);
/// How often the namespace finalizer looks for `Terminating` namespaces to empty (it also runs
/// at once when this replica marks a namespace for deletion).
const NAMESPACE_SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// The finalizer kube-apiserver puts in every namespace's `spec.finalizers`: the namespace goes
/// only after everything in it is deleted.
const NAMESPACE_FINALIZER: &str = "kubernetes";

impl ApiError {
    /// A storage error as the API answers it, for the object `name` of `resource` (as
    /// kube-apiserver's `storeerr.Interpret*Error`).
    pub fn from_storage(err: StorageError, resource: &str, group: &str, name: &str) -> ApiError {
        match err {
            StorageError::NotFound => ApiError::not_found(resource, group, name),
            StorageError::Exists => ApiError::already_exists(resource, group, name),
            StorageError::Conflict => ApiError::conflict(resource, group, name),
            StorageError::Compacted(_) => ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            ),
            // Not retryable, so not the 503 below; etcd's words, without the gRPC text.
            StorageError::TooLarge => {
                ApiError::request_entity_too_large("etcdserver: request is too large")
            }
            // Nothing was applied: clients retry after the Retry-After header.
            StorageError::Unavailable(msg) => ApiError::new(
                Reason::ServiceUnavailable,
                format!("storage unavailable: {msg}"),
            )
            .retry_after(1),
            // `apierrors.NewTimeoutError`: the write's fate is unknown.
            StorageError::Timeout(msg) => ApiError::new(
                Reason::Timeout,
                format!("Timeout: request did not complete within requested timeout - {msg}"),
            )
            .retry_after(1),
            StorageError::Internal(msg) => ApiError::internal(msg),
        }
    }
}

/// What the handlers share.
pub struct Registry {
    pub storage: Arc<dyn Storage>,
    /// The key prefix (`--etcd-prefix`), without a trailing slash.
    pub prefix: String,
    pub resources: Vec<ResourceInfo>,
    /// The admission chain every create, update and delete passes.
    pub admission: Admission,
    /// Wakes [`Registry::run_namespace_finalizer`] when a namespace starts terminating.
    namespace_kick: tokio::sync::Notify,
    /// Watch events decoded and encoded once for all watchers.
    pub watch_memo: watch_memo::WatchMemo,
    /// The ClusterIP and NodePort ranges Services are given.
    pub service_ranges: service_addresses::ServiceRanges,
}

pub type ApiResult = Result<Response, ApiError>;

/// A parsed resource URL.
#[derive(Debug)]
pub struct Target<'a> {
    pub info: &'a ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status`, `scale`, `binding`, or one of the kubelet's (`log`, `exec`, …).
    pub subresource: Option<String>,
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, axum::Json(value)).into_response()
}

fn now_rfc3339() -> String {
    resources::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn parse_json_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    if ct == "application/vnd.kubernetes.protobuf" {
        return crate::protobuf::decode(body).map_err(|e| {
            if e.contains("not supported") {
                ApiError::new(Reason::UnsupportedMediaType, e)
            } else {
                ApiError::bad_request(format!("error decoding protobuf body: {e}"))
            }
        });
    }
    if ct != "application/json" && ct != "*/*" && !ct.is_empty() {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

impl Registry {
    pub fn new(
        storage: Arc<dyn Storage>,
        prefix: &str,
        resources: Vec<ResourceInfo>,
        admission_plugins: Vec<Plugin>,
    ) -> Registry {
        Registry {
            admission: Admission::new(storage.clone(), prefix, admission_plugins),
            storage,
            prefix: prefix.trim_end_matches('/').to_string(),
            resources,
            namespace_kick: tokio::sync::Notify::new(),
            watch_memo: watch_memo::WatchMemo::new(),
            service_ranges: service_addresses::ServiceRanges::default(),
        }
    }

    /// The registry with Services given addresses from `ranges` (default: k3s's).
    pub fn with_service_ranges(mut self, ranges: service_addresses::ServiceRanges) -> Registry {
        self.service_ranges = ranges;
        self
    }

    /// The namespaces (every registry serves them).
    pub fn namespaces(&self) -> &ResourceInfo {
        self.find("", "v1", "namespaces")
            .expect("namespaces are served")
    }

    pub fn find(&self, group: &str, version: &str, resource: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.resource == resource)
    }

    /// The served resource a request's [`RequestInfo`] addresses: 404 for a resource, scope
    /// or subresource that is not served, and for paths beyond `<resource>/<name>/<sub>`.
    pub fn target<'a>(&'a self, request: &RequestInfo) -> Result<Target<'a>, ApiError> {
        let not_found = ApiError::path_not_found;
        if !request.is_resource_request || request.verb_in_path || request.parts.len() > 3 {
            return Err(not_found());
        }
        let (group, version) = (&request.api_group, &request.api_version);
        let info = self
            .find(group, version, &request.resource)
            .ok_or_else(not_found)?;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let namespace = if request.namespace_prefixed {
            some(&request.namespace)
        } else {
            None
        };
        let name = some(&request.name).filter(|_| request.parts.len() >= 2);
        let sub = some(&request.subresource);
        if let Some(sub) = sub.as_deref()
            && !info.strategy.subresources().iter().any(|s| s.name() == sub)
        {
            return Err(not_found());
        }
        if namespace.is_some() && !info.namespaced {
            return Err(not_found());
        }
        if namespace.is_none() && info.namespaced && name.is_some() {
            return Err(not_found());
        }
        Ok(Target {
            info,
            namespace,
            name,
            subresource: sub,
        })
    }

    fn key(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if info.namespaced => format!("{}/{}/{ns}/{name}", self.prefix, info.resource),
            _ => format!("{}/{}/{name}", self.prefix, info.resource),
        }
    }

    fn collection_prefix(&self, info: &ResourceInfo, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{}/{}/{ns}/", self.prefix, info.resource),
            None => format!("{}/{}/", self.prefix, info.resource),
        }
    }

    /// A stored value as the API returns it: resourceVersion = the key's mod revision.
    fn decode(&self, info: &ResourceInfo, stored: &Stored) -> Result<Value, ApiError> {
        let mut obj: Value = serde_json::from_slice(&stored.value).map_err(|e| {
            ApiError::internal(format!("stored object {} is not JSON: {e}", stored.key))
        })?;
        obj["apiVersion"] = json!(info.api_version());
        obj["kind"] = json!(info.kind);
        obj["metadata"]["resourceVersion"] = json!(stored.revision.to_string());
        Ok(obj)
    }

    fn encode(obj: &Value) -> Vec<u8> {
        let mut obj = obj.clone();
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
            meta.remove("selfLink");
        }
        serde_json::to_vec(&obj).expect("a serde_json::Value always encodes")
    }

    /// Creates the namespaces and the built-in PriorityClasses every cluster has, if missing.
    pub async fn seed(&self) -> Result<(), StorageError> {
        let mut seeds = Vec::new();
        for name in resources::INITIAL_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}});
            seeds.push((self.namespaces(), name, obj));
        }
        if let Some(info) = self.find("scheduling.k8s.io", "v1", "priorityclasses") {
            for (name, value, description) in crate::admission::priority::SYSTEM_PRIORITY_CLASSES {
                let obj =
                    crate::admission::priority::system_priority_class(name, value, description);
                seeds.push((info, name, obj));
            }
        }
        for (info, name, mut obj) in seeds {
            set_create_metadata(&mut obj);
            info.strategy.defaults(&mut obj);
            match self
                .storage
                .create(&self.key(info, None, name), Self::encode(&obj))
                .await
            {
                Ok(_) | Err(StorageError::Exists) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Dispatches one resource request to a verb.
pub async fn dispatch(
    registry: Arc<Registry>,
    request: &RequestInfo,
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult {
    let t = registry.target(request)?;
    if let Some(sub) = t.subresource.as_deref() {
        return match (sub, method.as_str()) {
            ("status", "GET") => registry.get(&t, headers).await,
            ("status", "PUT") => registry.update(&t, query, headers, body).await,
            ("status", "PATCH") => registry.patch(&t, query, headers, body).await,
            ("scale", "GET") => registry.get_scale(&t).await,
            ("scale", "PUT" | "PATCH") => {
                registry.write_scale(&t, method, query, headers, body).await
            }
            ("binding", "POST") => registry.bind(&t, query, headers, body).await,
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    match (method.as_str(), t.name.is_some()) {
        ("GET", _) if request.is_watch => registry.clone().watch(&t, query, headers).await,
        ("GET", true) => registry.get(&t, headers).await,
        ("GET", false) => registry.list(&t, query, headers).await,
        ("POST", false) => {
            if t.namespace.is_none() && t.info.namespaced {
                return Err(ApiError::method_not_allowed());
            }
            registry.create(&t, query, headers, body).await
        }
        ("PUT", true) => registry.update(&t, query, headers, body).await,
        ("PATCH", true) => registry.patch(&t, query, headers, body).await,
        ("DELETE", true) => registry.delete(&t, query, body).await,
        ("DELETE", false) => registry.delete_collection(&t, query, body).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}
