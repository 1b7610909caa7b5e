//! The REST verbs over [`Storage`]: URL parsing, get/list/watch/create/update/patch/delete,
//! server-set metadata, NamespaceLifecycle, and the JSON/Table encodings.

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

use crate::patch;
use crate::resources::{self, ResourceInfo};
use crate::selector::{FieldSelector, LabelSelector, escape_field_value, labels_of, query_flag};
use crate::status::ApiError;
use crate::storage::{Change, Storage, StorageError, Stored};

/// Largest request body accepted (kube-apiserver's limit).
pub const MAX_BODY_BYTES: usize = 3 << 20;
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

/// What the handlers share.
pub struct Registry {
    pub storage: Arc<dyn Storage>,
    /// The key prefix (`--etcd-prefix`), without a trailing slash.
    pub prefix: String,
    pub resources: Vec<ResourceInfo>,
    /// Wakes [`Registry::run_namespace_finalizer`] when a namespace starts terminating.
    namespace_kick: tokio::sync::Notify,
}

pub type ApiResult = Result<Response, ApiError>;

/// A parsed resource URL.
#[derive(Debug)]
pub struct Target<'a> {
    pub info: &'a ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status`, `scale` or `binding`.
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
                ApiError::new(415, "UnsupportedMediaType", e)
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
    pub fn new(storage: Arc<dyn Storage>, prefix: &str, resources: Vec<ResourceInfo>) -> Registry {
        Registry {
            storage,
            prefix: prefix.trim_end_matches('/').to_string(),
            resources,
            namespace_kick: tokio::sync::Notify::new(),
        }
    }

    pub fn find(&self, group: &str, version: &str, resource: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.resource == resource)
    }

    /// Parses the path after `/api/v1` or `/apis/<g>/<v>`.
    pub fn target<'a>(
        &'a self,
        group: &str,
        version: &str,
        rest: &[&str],
    ) -> Result<Target<'a>, ApiError> {
        let not_found = ApiError::path_not_found;
        let (namespace, resource, name, sub) = match rest {
            [res] => (None, *res, None, None),
            // `/api/v1/namespaces/<name>/status`: the namespace's own subresource.
            ["namespaces", name, sub]
                if group.is_empty() && self.find(group, version, sub).is_none() =>
            {
                (None, "namespaces", Some(*name), Some(*sub))
            }
            ["namespaces", ns, res] => (Some(*ns), *res, None, None),
            ["namespaces", ns, res, name] => (Some(*ns), *res, Some(*name), None),
            ["namespaces", ns, res, name, sub] => (Some(*ns), *res, Some(*name), Some(*sub)),
            [res, name] => (None, *res, Some(*name), None),
            [res, name, sub] => (None, *res, Some(*name), Some(*sub)),
            _ => return Err(not_found()),
        };
        let info = self.find(group, version, resource).ok_or_else(not_found)?;
        if let Some(sub) = sub
            && !crate::discovery::subresources(info)
                .iter()
                .any(|(s, ..)| *s == sub)
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
            namespace: namespace.map(String::from),
            name: name.map(String::from),
            subresource: sub.map(String::from),
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

    /// Creates the namespaces every cluster has, if missing.
    pub async fn seed(&self) -> Result<(), StorageError> {
        let info = self
            .resources
            .iter()
            .find(|r| r.kind == "Namespace")
            .expect("namespaces are served");
        for name in resources::INITIAL_NAMESPACES {
            let mut obj = json!({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}});
            set_create_metadata(&mut obj);
            resources::apply_defaults(info, &mut obj);
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

    // ---- reads ----

    pub async fn get(&self, t: &Target<'_>, headers: &HeaderMap) -> ApiResult {
        let name = t.name.as_deref().unwrap_or_default();
        let key = self.key(t.info, t.namespace.as_deref(), name);
        let stored = self
            .storage
            .get(&key)
            .await
            .map_err(|e| ApiError::from_storage(e, t.info.resource, t.info.group, name))?
            .ok_or_else(|| ApiError::not_found(t.info.resource, t.info.group, name))?;
        let obj = self.decode(t.info, &stored)?;
        if wants_table(headers) {
            let table = resources::table(
                t.info.printer,
                std::slice::from_ref(&obj),
                &stored.revision.to_string(),
                None,
                false,
            );
            return Ok(json_response(StatusCode::OK, &table));
        }
        Ok(json_response(StatusCode::OK, &obj))
    }

    /// Reads matching objects from `start`, at `revision`, until `limit` match (0 = all).
    /// Returns them, the revision read at, and the key to continue from.
    async fn list_objects(
        &self,
        info: &ResourceInfo,
        prefix: &str,
        mut start: String,
        limit: usize,
        mut revision: i64,
        filter: &(dyn Fn(&Value) -> bool + Sync),
    ) -> Result<(Vec<Value>, i64, Option<String>, i64), ApiError> {
        let mut items = Vec::new();
        loop {
            let want = if limit == 0 {
                0
            } else {
                (limit - items.len()) as i64
            };
            let page = self
                .storage
                .list(prefix, &start, want, revision)
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, ""))?;
            revision = page.revision;
            let last_key = page.items.last().map(|s| s.key.clone());
            for stored in &page.items {
                let obj = self.decode(info, stored)?;
                if filter(&obj) {
                    items.push(obj);
                }
            }
            match last_key {
                Some(last) if page.remaining > 0 => {
                    start = format!("{last}\0");
                    if limit != 0 && items.len() >= limit {
                        return Ok((items, revision, Some(start), page.remaining));
                    }
                }
                _ => return Ok((items, revision, None, 0)),
            }
        }
    }

    pub async fn list(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> ApiResult {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", |s| s))
            .map_err(ApiError::bad_request)?;
        let fields =
            FieldSelector::parse(query.get("fieldSelector").map_or("", |s| s), t.info.kind)
                .map_err(ApiError::bad_request)?;
        let limit: usize = query
            .get("limit")
            .map(|l| {
                l.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))
            })
            .transpose()?
            .unwrap_or(0);
        let prefix = self.collection_prefix(t.info, t.namespace.as_deref());
        let continuing = query.get("continue").filter(|c| !c.is_empty());
        let (start, revision) = match continuing {
            Some(token) => decode_continue(token, &prefix)?,
            None => (String::new(), list_revision(query)?),
        };
        let filter = |obj: &Value| labels.matches(&labels_of(obj)) && fields.matches(obj);
        let (items, revision, next, remaining) = self
            .list_objects(t.info, &prefix, start, limit, revision, &filter)
            .await
            .map_err(|e| match e.code {
                // An exact resourceVersion the store has compacted (kube-apiserver's message).
                410 if continuing.is_none() => {
                    ApiError::gone("The resourceVersion for the provided list is too old.")
                }
                _ => e,
            })?;
        let cont = next.map(|start| encode_continue(revision, &start));
        if wants_table(headers) {
            let include = query.get("includeObject").map(String::as_str) == Some("Object");
            let table = resources::table(
                t.info.printer,
                &items,
                &revision.to_string(),
                cont.as_deref(),
                include,
            );
            return Ok(json_response(StatusCode::OK, &table));
        }
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(cont) = cont {
            metadata["continue"] = json!(cont);
            metadata["remainingItemCount"] = json!(remaining);
        }
        let list = json!({"kind": t.info.list_kind, "apiVersion": t.info.api_version(),
                          "metadata": metadata, "items": items});
        Ok(json_response(StatusCode::OK, &list))
    }

    // ---- watch ----

    pub async fn watch(
        self: Arc<Self>,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> ApiResult {
        let info = t.info.clone();
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", |s| s))
            .map_err(ApiError::bad_request)?;
        let mut field_sel = query.get("fieldSelector").cloned().unwrap_or_default();
        if let Some(name) = &t.name {
            // A watch on one object is a watch on its collection with a name selector.
            field_sel = format!("metadata.name={},{field_sel}", escape_field_value(name));
        }
        let fields = FieldSelector::parse(&field_sel, info.kind).map_err(ApiError::bad_request)?;
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(WATCH_TIMEOUT_DEFAULT);
        let bookmarks = query_flag(query, "allowWatchBookmarks");
        let table = wants_table(headers);
        let prefix = self.collection_prefix(&info, t.namespace.as_deref());
        let rv = query.get("resourceVersion").cloned().unwrap_or_default();
        let matcher =
            Arc::new(move |obj: &Value| labels.matches(&labels_of(obj)) && fields.matches(obj));
        let filter = matcher.clone();
        let filter = move |obj: &Value| filter(obj);

        // "" and "0": the current state as ADDED events, then changes after it.
        let (initial, after) = if rv.is_empty() || rv == "0" {
            let (items, revision, _, _) = self
                .list_objects(&info, &prefix, String::new(), 0, 0, &*matcher)
                .await?;
            (items, revision)
        } else {
            let after = rv
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
            (Vec::new(), after)
        };
        let encoder = EventEncoder {
            info: info.clone(),
            table,
        };
        let mut lines: Vec<Bytes> = initial.iter().map(|o| encoder.event("ADDED", o)).collect();
        let changes = match self.storage.watch(&prefix, after, bookmarks).await {
            Ok(changes) => changes,
            Err(StorageError::Compacted(_)) => {
                lines.push(encoder.error_event(&too_old(after)));
                return Ok(stream_response(futures::stream::iter(lines).boxed()));
            }
            Err(e) => return Err(ApiError::from_storage(e, info.resource, info.group, "")),
        };
        let registry = self.clone();
        let events = changes
            .map(move |change| {
                let out: Option<Bytes> = match change {
                    Ok(Change::Progress(revision)) => bookmarks.then(|| encoder.bookmark(revision)),
                    Ok(Change::Put { new, prev }) => {
                        let new_obj = registry.decode(&info, &new).ok();
                        let old_obj = prev.and_then(|p| registry.decode(&info, &p).ok());
                        let now_in = new_obj.as_ref().is_some_and(&filter);
                        let was_in = old_obj.as_ref().is_some_and(&filter);
                        match (was_in, now_in, new_obj) {
                            (false, true, Some(o)) => Some(encoder.event("ADDED", &o)),
                            (true, true, Some(o)) => Some(encoder.event("MODIFIED", &o)),
                            (true, false, Some(mut o)) => {
                                // Left the selection: a DELETED of the new state.
                                o["metadata"]["resourceVersion"] = json!(new.revision.to_string());
                                Some(encoder.event("DELETED", &o))
                            }
                            _ => None,
                        }
                    }
                    Ok(Change::Delete { prev }) => registry
                        .decode(&info, &prev)
                        .ok()
                        .filter(&filter)
                        .map(|o| encoder.event("DELETED", &o)),
                    Err(StorageError::Compacted(_)) => Some(encoder.error_event(&too_old(after))),
                    Err(e) => Some(encoder.error_event(&ApiError::from_storage(
                        e,
                        info.resource,
                        info.group,
                        "",
                    ))),
                };
                futures::stream::iter(out)
            })
            .flatten();
        let stream = futures::stream::iter(lines)
            .chain(events)
            .take_until(tokio::time::sleep(timeout))
            .boxed();
        Ok(stream_response(stream))
    }

    // ---- writes ----

    async fn check_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        let info = self
            .resources
            .iter()
            .find(|r| r.kind == "Namespace")
            .expect("namespaces are served");
        let stored = self
            .storage
            .get(&self.key(info, None, namespace))
            .await
            .map_err(|e| ApiError::from_storage(e, "namespaces", "", namespace))?;
        match stored {
            None => Err(ApiError::not_found("namespaces", "", namespace)),
            Some(s) => {
                let ns: Value = serde_json::from_slice(&s.value).unwrap_or(Value::Null);
                if ns["metadata"]["deletionTimestamp"].is_string() {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "unable to create new content in namespace {namespace} because it is being terminated"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Checks kind, name and namespace of a body against the URL; validates and normalises it.
    fn admit(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        obj: &mut Value,
        query: &HashMap<String, String>,
    ) -> Result<(), ApiError> {
        if let Some(kind) = obj["kind"].as_str()
            && kind != info.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                info.kind
            )));
        }
        if let Some(av) = obj["apiVersion"].as_str()
            && av != info.api_version()
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                info.api_version()
            )));
        }
        obj["apiVersion"] = json!(info.api_version());
        obj["kind"] = json!(info.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if info.namespaced {
            let ns = namespace.unwrap_or("default");
            match obj["metadata"]["namespace"].as_str() {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => obj["metadata"]["namespace"] = json!(ns),
            }
        } else if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if let Some(message) = resources::validate_name(info, &name) {
            return Err(ApiError::invalid(
                info.kind,
                info.group,
                &name,
                &[(
                    "metadata.name".into(),
                    format!("Invalid value: {name:?}: {message}"),
                )],
            ));
        }
        resources::apply_defaults(info, obj);
        let normalized = (info.normalize)(obj).map_err(|e| {
            ApiError::bad_request(format!("error decoding {} {name:?}: {e}", info.kind))
        })?;
        if query.get("fieldValidation").map(String::as_str) == Some("Strict") {
            let mut unknown = Vec::new();
            resources::unknown_fields(obj, &normalized, "", &mut unknown);
            if !unknown.is_empty() {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
        }
        *obj = normalized;
        let causes = resources::validate(info, obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(info.kind, info.group, &name, &causes));
        }
        Ok(())
    }

    pub async fn create(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> ApiResult {
        let obj = parse_json_body(headers, body)?;
        self.create_value(t, query, obj).await
    }

    /// Creates `obj` (already decoded) in `t`'s collection.
    async fn create_value(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        mut obj: Value,
    ) -> ApiResult {
        let info = t.info;
        if obj["metadata"]["name"].as_str().unwrap_or("").is_empty()
            && let Some(base) = obj["metadata"]["generateName"].as_str()
        {
            let suffix: String = (0..5)
                .map(|_| b"bcdfghjklmnpqrstvwxz2456789"[rand::random_range(0..27)] as char)
                .collect();
            obj["metadata"]["name"] = json!(format!("{base}{suffix}"));
        }
        set_create_metadata(&mut obj);
        self.admit(info, t.namespace.as_deref(), &mut obj, query)?;
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let namespace = obj["metadata"]["namespace"].as_str().map(String::from);
        if info.namespaced {
            self.check_namespace(namespace.as_deref().unwrap_or("default"))
                .await?;
        }
        if is_dry_run(query) {
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        let key = self.key(info, namespace.as_deref(), &name);
        let revision = self
            .storage
            .create(&key, Self::encode(&obj))
            .await
            .map_err(|e| ApiError::from_storage(e, info.resource, info.group, &name))?;
        obj["metadata"]["resourceVersion"] = json!(revision.to_string());
        Ok(json_response(StatusCode::CREATED, &obj))
    }

    /// Writes `obj` over `current` if `current` is still at `expected`: keeps the server-set
    /// metadata (and `status` for kinds with a status subresource), bumps `generation` when
    /// `spec` changed.
    // The request's parts, passed through; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        current: &Value,
        obj: Value,
        expected: i64,
        query: &HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        self.replace_sub(info, namespace, name, current, obj, expected, query, None)
            .await
    }

    /// [`Self::replace`] for a subresource: `Some("status")` writes only `status` (and keeps
    /// everything else of `current`).
    #[allow(clippy::too_many_arguments)]
    async fn replace_sub(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        current: &Value,
        mut obj: Value,
        expected: i64,
        query: &HashMap<String, String>,
        sub: Option<&str>,
    ) -> Result<Value, ApiError> {
        let status_only = sub == Some("status");
        if status_only {
            let mut merged = current.clone();
            merged["status"] = obj["status"].clone();
            obj = merged;
        }
        self.admit(info, namespace, &mut obj, query)?;
        if obj["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        for field in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match current["metadata"].get(field) {
                Some(v) => obj["metadata"][field] = v.clone(),
                None => {
                    if let Some(meta) = obj["metadata"].as_object_mut() {
                        meta.remove(field);
                    }
                }
            }
        }
        if info.kind == "Namespace" {
            // As kube-apiserver's namespace strategy: only the namespace finalizer changes
            // `spec.finalizers` (through the store, below this layer).
            match current["spec"].get("finalizers") {
                Some(f) => obj["spec"]["finalizers"] = f.clone(),
                None => {
                    if let Some(spec) = obj["spec"].as_object_mut() {
                        spec.remove("finalizers");
                    }
                }
            }
        }
        if resources::has_status(info) && !status_only {
            obj["status"] = current["status"].clone();
            if obj["status"].is_null()
                && let Some(map) = obj.as_object_mut()
            {
                map.remove("status");
            }
        }
        if obj.get("spec") != current.get("spec") {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            obj["metadata"]["generation"] = json!(generation + 1);
        }
        if is_dry_run(query) {
            return Ok(obj);
        }
        let key = self.key(info, namespace, name);
        if obj["metadata"]["deletionTimestamp"].is_string() && !holds_deletion(info, &obj) {
            // The last finalizer is gone: the deletion completes now.
            self.storage
                .delete(&key, expected, self.children(info, name))
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, name))?;
            return Ok(obj);
        }
        let revision = self
            .storage
            .update(&key, Self::encode(&obj), expected)
            .await
            .map_err(|e| ApiError::from_storage(e, info.resource, info.group, name))?;
        obj["metadata"]["resourceVersion"] = json!(revision.to_string());
        Ok(obj)
    }

    async fn current(&self, t: &Target<'_>, name: &str) -> Result<(Stored, Value), ApiError> {
        let key = self.key(t.info, t.namespace.as_deref(), name);
        let stored = self
            .storage
            .get(&key)
            .await
            .map_err(|e| ApiError::from_storage(e, t.info.resource, t.info.group, name))?
            .ok_or_else(|| ApiError::not_found(t.info.resource, t.info.group, name))?;
        let obj = self.decode(t.info, &stored)?;
        Ok((stored, obj))
    }

    pub async fn update(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> ApiResult {
        let name = t.name.clone().unwrap_or_default();
        let obj = parse_json_body(headers, body)?;
        let (stored, current) = self.current(t, &name).await?;
        let expected = match obj["metadata"]["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() => rv
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
            _ => stored.revision,
        };
        let obj = self
            .replace_sub(
                t.info,
                t.namespace.as_deref(),
                &name,
                &current,
                obj,
                expected,
                query,
                t.subresource.as_deref(),
            )
            .await?;
        Ok(json_response(StatusCode::OK, &obj))
    }

    pub async fn patch(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> ApiResult {
        let ct = content_type(headers);
        if ct == "application/apply-patch+yaml" && t.subresource.is_none() {
            return self.server_side_apply(t, query, body).await;
        }
        let patch_doc: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let precondition = patch_doc["metadata"]["resourceVersion"]
            .as_str()
            .map(String::from);
        let obj = self
            .read_modify_write(
                t,
                query,
                precondition.as_deref(),
                t.subresource.as_deref(),
                |current| {
                    let mut obj = current.clone();
                    apply_patch(&ct, &mut obj, &patch_doc)?;
                    Ok(obj)
                },
            )
            .await?;
        Ok(json_response(StatusCode::OK, &obj))
    }

    /// Server-side apply (`application/apply-patch+yaml`): creates the object, or merges the
    /// applied configuration into it. Each apply manager owns the fields it applied
    /// (`managedFields`); setting a field another apply manager owns to a different value is a
    /// 409 conflict unless `force=true`, and fields a manager stops applying are removed.
    async fn server_side_apply(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        body: &Bytes,
    ) -> ApiResult {
        let info = t.info;
        let name = t.name.clone().unwrap_or_default();
        let manager = query
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request("PATCH, application/apply-patch+yaml requires fieldManager")
            })?;
        let force = query_flag(query, "force");
        // kubectl sends JSON, which is YAML too; YAML-only syntax is not parsed here.
        let applied: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "error decoding apply configuration (JSON is supported): {e}"
            ))
        })?;
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "the apply configuration must be an object",
            ));
        }
        if let Some(n) = applied["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let fields = patch::fields_of(&applied);
        let entry = |fields: Value| {
            json!({"manager": manager, "operation": "Apply", "apiVersion": info.api_version(),
                   "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields})
        };
        for _ in 0..PATCH_RETRIES_MAX {
            let key = self.key(info, t.namespace.as_deref(), &name);
            let stored = self
                .storage
                .get(&key)
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, &name))?;
            let Some(stored) = stored else {
                let mut obj = applied.clone();
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["managedFields"] = json!([entry(fields.clone())]);
                match self.create_value(t, query, obj).await {
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    other => return other,
                }
            };
            let current = self.decode(info, &stored)?;
            let mine = patch::leaves(&fields);
            let mut managed: Vec<Value> = current["metadata"]["managedFields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // Conflicts: fields another apply manager owns that this apply sets differently.
            let mut conflicts = Vec::new();
            for other in managed.iter_mut().filter(|m| {
                m["manager"].as_str() != Some(manager.as_str())
                    && m["operation"].as_str() == Some("Apply")
            }) {
                let owned = patch::leaves(&other["fieldsV1"]);
                let (lost, kept): (Vec<_>, Vec<_>) = owned.into_iter().partition(|p| {
                    mine.contains(p) && patch::value_at(&applied, p) != patch::value_at(&current, p)
                });
                for p in &lost {
                    conflicts.push(format!(
                        "conflict with \"{}\": {}",
                        other["manager"].as_str().unwrap_or(""),
                        patch::path_string(p)
                    ));
                }
                if force {
                    other["fieldsV1"] = patch::fields_from_leaves(&kept);
                }
            }
            if !conflicts.is_empty() && !force {
                let n = conflicts.len();
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {n} conflict{}: {}",
                        if n == 1 { "" } else { "s" },
                        conflicts.join("\n")
                    ),
                ));
            }
            let mut obj = current.clone();
            // Fields this manager applied before, no longer applies, and nobody else owns.
            let previous = managed
                .iter()
                .find(|m| {
                    m["manager"].as_str() == Some(manager.as_str()) && m["operation"] == "Apply"
                })
                .map(|m| patch::leaves(&m["fieldsV1"]))
                .unwrap_or_default();
            let others: Vec<Vec<String>> = managed
                .iter()
                .filter(|m| m["manager"].as_str() != Some(manager.as_str()))
                .flat_map(|m| patch::leaves(&m["fieldsV1"]))
                .collect();
            for p in previous
                .iter()
                .filter(|p| !mine.contains(p) && !others.contains(p))
            {
                patch::remove_at(&mut obj, p);
            }
            let mut doc = applied.clone();
            if let Some(meta) = doc["metadata"].as_object_mut() {
                meta.remove("managedFields");
                meta.remove("resourceVersion");
            }
            patch::strategic_merge_patch(&mut obj, &doc).map_err(ApiError::bad_request)?;
            managed.retain(|m| {
                let mine =
                    m["manager"].as_str() == Some(manager.as_str()) && m["operation"] == "Apply";
                let owns_nothing = patch::leaves(&m["fieldsV1"]).is_empty();
                !mine && !owns_nothing
            });
            managed.push(entry(fields.clone()));
            obj["metadata"]["managedFields"] = json!(managed);
            if let Some(meta) = obj["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            match self
                .replace(
                    info,
                    t.namespace.as_deref(),
                    &name,
                    &current,
                    obj,
                    stored.revision,
                    query,
                )
                .await
            {
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
                Ok(obj) => return Ok(json_response(StatusCode::OK, &obj)),
            }
        }
        Err(ApiError::conflict(info.resource, info.group, &name))
    }

    /// `GET …/scale`: the object's `autoscaling/v1 Scale`.
    pub async fn get_scale(&self, t: &Target<'_>) -> ApiResult {
        let name = t.name.clone().unwrap_or_default();
        let (_, obj) = self.current(t, &name).await?;
        Ok(json_response(StatusCode::OK, &scale_of(&obj)))
    }

    /// `PUT`/`PATCH …/scale`: sets `spec.replicas` from the (patched) Scale.
    pub async fn write_scale(
        &self,
        t: &Target<'_>,
        method: &Method,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> ApiResult {
        let name = t.name.clone().unwrap_or_default();
        let put = method == Method::PUT;
        let doc = if put {
            parse_json_body(headers, body)?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
        };
        let precondition = doc["metadata"]["resourceVersion"]
            .as_str()
            .filter(|rv| !rv.is_empty())
            .map(String::from);
        let ct = content_type(headers);
        let obj = self
            .read_modify_write(t, query, precondition.as_deref(), None, |current| {
                let scale = if put {
                    doc.clone()
                } else {
                    let mut scale = scale_of(current);
                    apply_patch(&ct, &mut scale, &doc)?;
                    scale
                };
                let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0);
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        "Scale",
                        "autoscaling",
                        &name,
                        &[(
                            "spec.replicas".into(),
                            format!(
                                "Invalid value: {replicas}: must be greater than or equal to 0"
                            ),
                        )],
                    ));
                }
                let mut obj = current.clone();
                obj["spec"]["replicas"] = json!(replicas);
                Ok(obj)
            })
            .await?;
        Ok(json_response(StatusCode::OK, &scale_of(&obj)))
    }

    /// `POST …/pods/<name>/binding`: assigns the pod to `target.name` once.
    /// `POST …/pods/<name>/binding`: assigns the pod to `target.name` once.
    pub async fn bind(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> ApiResult {
        let name = t.name.clone().unwrap_or_default();
        let binding = parse_json_body(headers, body)?;
        let node = binding["target"]["name"].as_str().unwrap_or("");
        if node.is_empty() {
            return Err(ApiError::invalid(
                "Binding",
                "",
                &name,
                &[("target.name".into(), "Required value".into())],
            ));
        }
        self.read_modify_write(t, query, None, None, |current| {
            if let Some(assigned) = current["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
            {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{assigned}\""
                    ),
                ));
            }
            let mut obj = current.clone();
            obj["spec"]["nodeName"] = json!(node);
            Ok(obj)
        })
        .await?;
        Ok(crate::status::success(201))
    }

    /// Read-modify-write of the object `t` names: reads it, checks the client's `precondition`
    /// resourceVersion, lets `modify` derive the new object from the current one, and writes it
    /// conditionally on the revision read (through [`Self::replace_sub`] with `sub`). A write
    /// that loses a race is retried up to [`PATCH_RETRIES_MAX`] times, unless the client gave a
    /// precondition: then the lost race is the client's 409.
    async fn read_modify_write(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        precondition: Option<&str>,
        sub: Option<&str>,
        modify: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let name = t.name.clone().unwrap_or_default();
        for _ in 0..PATCH_RETRIES_MAX {
            let (stored, current) = self.current(t, &name).await?;
            if let Some(rv) = precondition
                && rv != stored.revision.to_string()
            {
                return Err(ApiError::conflict(t.info.resource, t.info.group, &name));
            }
            let mut obj = modify(&current)?;
            if let Some(meta) = obj["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            match self
                .replace_sub(
                    t.info,
                    t.namespace.as_deref(),
                    &name,
                    &current,
                    obj,
                    stored.revision,
                    query,
                    sub,
                )
                .await
            {
                Err(e) if e.reason == "Conflict" && precondition.is_none() => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(t.info.resource, t.info.group, &name))
    }

    pub async fn delete(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        body: &Bytes,
    ) -> ApiResult {
        let info = t.info;
        let name = t.name.clone().unwrap_or_default();
        let options: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        if info.kind == "Namespace"
            && ["default", "kube-system", "kube-public"].contains(&name.as_str())
        {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            ));
        }
        let (stored, obj) = self.current(t, &name).await?;
        if let Some(rv) = options["preconditions"]["resourceVersion"].as_str()
            && rv != stored.revision.to_string()
        {
            return Err(ApiError::conflict(info.resource, info.group, &name));
        }
        if let Some(uid) = options["preconditions"]["uid"].as_str()
            && Some(uid) != obj["metadata"]["uid"].as_str()
        {
            return Err(ApiError::conflict(info.resource, info.group, &name));
        }
        let obj = self.delete_one(info, &stored, obj, query).await?;
        Ok(json_response(StatusCode::OK, &obj))
    }

    /// Deletes what is in a namespace along with it (same transaction).
    fn children(&self, info: &ResourceInfo, name: &str) -> Vec<String> {
        if info.kind == "Namespace" {
            self.resources
                .iter()
                .filter(|r| r.namespaced)
                .map(|r| self.collection_prefix(r, Some(name)))
                .collect()
        } else {
            Vec::new()
        }
    }

    /// Deletes one object; one with finalizers only gets a `deletionTimestamp` (a namespace
    /// turns `Terminating`) and goes when its last finalizer is removed.
    async fn delete_one(
        &self,
        info: &ResourceInfo,
        stored: &Stored,
        obj: Value,
        query: &HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if is_dry_run(query) {
            return Ok(obj);
        }
        if holds_deletion(info, &obj) {
            if obj["metadata"]["deletionTimestamp"].is_string() {
                return Ok(obj);
            }
            let mut marked = obj;
            marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if info.kind == "Namespace" {
                marked["status"]["phase"] = json!("Terminating");
            }
            let revision = self
                .storage
                .update(&stored.key, Self::encode(&marked), stored.revision)
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, &name))?;
            marked["metadata"]["resourceVersion"] = json!(revision.to_string());
            if info.kind == "Namespace" {
                self.namespace_kick.notify_one();
            }
            return Ok(marked);
        }
        self.storage
            .delete(&stored.key, stored.revision, self.children(info, &name))
            .await
            .map_err(|e| ApiError::from_storage(e, info.resource, info.group, &name))?;
        Ok(obj)
    }

    /// The namespace finalizer (kube-controller-manager's namespace controller, run by every
    /// replica): empties each `Terminating` namespace, then drops its `kubernetes` finalizer, so
    /// that it goes once its contents are gone. Every step is a conditional write, so replicas
    /// running it at once do no harm. Runs until the process ends.
    pub async fn run_namespace_finalizer(self: Arc<Self>) {
        loop {
            if let Err(e) = self.finalize_namespaces().await {
                tracing::debug!(error = %e.message, "namespace finalizer pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(NAMESPACE_SWEEP_INTERVAL) => {}
                _ = self.namespace_kick.notified() => {}
            }
        }
    }

    /// One pass of the namespace finalizer over every `Terminating` namespace.
    async fn finalize_namespaces(&self) -> Result<(), ApiError> {
        let ns_info = self.namespace_info();
        let prefix = self.collection_prefix(ns_info, None);
        let page = self
            .storage
            .list(&prefix, "", 0, 0)
            .await
            .map_err(|e| ApiError::from_storage(e, "namespaces", "", ""))?;
        for stored in &page.items {
            let ns = self.decode(ns_info, stored)?;
            if ns["metadata"]["deletionTimestamp"].is_string() {
                self.finalize_namespace(stored, ns).await?;
            }
        }
        Ok(())
    }

    /// Deletes everything in one terminating namespace (objects with finalizers get their
    /// `deletionTimestamp` and stay until those are removed); when nothing is left, removes the
    /// `kubernetes` finalizer, which deletes the namespace unless `metadata.finalizers` hold it.
    async fn finalize_namespace(&self, stored: &Stored, mut ns: Value) -> Result<(), ApiError> {
        let name = ns["metadata"]["name"].as_str().unwrap_or("").to_string();
        let none = HashMap::new();
        let mut left = 0;
        for info in self.resources.iter().filter(|r| r.namespaced) {
            let prefix = self.collection_prefix(info, Some(&name));
            let page = self
                .storage
                .list(&prefix, "", 0, 0)
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, ""))?;
            for item in &page.items {
                let obj = self.decode(info, item)?;
                match self.delete_one(info, item, obj, &none).await {
                    Ok(obj) if obj["metadata"]["deletionTimestamp"].is_string() => left += 1,
                    Ok(_) => {}
                    Err(e) if matches!(e.reason, "Conflict" | "NotFound") => left += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        let finalizers = ns["spec"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if left > 0 || !finalizers.iter().any(|f| f == NAMESPACE_FINALIZER) {
            return Ok(());
        }
        let kept: Vec<Value> = finalizers
            .into_iter()
            .filter(|f| f != NAMESPACE_FINALIZER)
            .collect();
        ns["spec"]["finalizers"] = json!(kept);
        let info = self.namespace_info();
        let written = if holds_deletion(info, &ns) {
            self.storage
                .update(&stored.key, Self::encode(&ns), stored.revision)
                .await
        } else {
            self.storage
                .delete(&stored.key, stored.revision, self.children(info, &name))
                .await
        };
        match written {
            // Changed meanwhile (e.g. a new finalizer pass elsewhere): the next pass decides.
            Ok(_) | Err(StorageError::Conflict | StorageError::NotFound) => Ok(()),
            Err(e) => Err(ApiError::from_storage(e, "namespaces", "", &name)),
        }
    }

    fn namespace_info(&self) -> &ResourceInfo {
        self.resources
            .iter()
            .find(|r| r.kind == "Namespace")
            .expect("namespaces are served")
    }

    /// `DELETE` on a collection: deletes every object the selectors match.
    pub async fn delete_collection(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
    ) -> ApiResult {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", |s| s))
            .map_err(ApiError::bad_request)?;
        let fields =
            FieldSelector::parse(query.get("fieldSelector").map_or("", |s| s), t.info.kind)
                .map_err(ApiError::bad_request)?;
        let prefix = self.collection_prefix(t.info, t.namespace.as_deref());
        let page = self
            .storage
            .list(&prefix, "", 0, 0)
            .await
            .map_err(|e| ApiError::from_storage(e, t.info.resource, t.info.group, ""))?;
        let mut deleted = Vec::new();
        for stored in &page.items {
            let obj = self.decode(t.info, stored)?;
            let protected = t.info.kind == "Namespace"
                && ["default", "kube-system", "kube-public"]
                    .contains(&obj["metadata"]["name"].as_str().unwrap_or(""));
            if protected || !(labels.matches(&labels_of(&obj)) && fields.matches(&obj)) {
                continue;
            }
            match self.delete_one(t.info, stored, obj, query).await {
                Ok(obj) => deleted.push(obj),
                // Changed or deleted meanwhile: someone else got there first.
                Err(e) if matches!(e.reason, "Conflict" | "NotFound") => {}
                Err(e) => return Err(e),
            }
        }
        let list = json!({"kind": t.info.list_kind, "apiVersion": t.info.api_version(),
                          "metadata": {"resourceVersion": page.revision.to_string()}, "items": deleted});
        Ok(json_response(StatusCode::OK, &list))
    }
}

/// Applies a patch document of content type `ct` to `obj`.
fn apply_patch(ct: &str, obj: &mut Value, patch_doc: &Value) -> Result<(), ApiError> {
    match ct {
        "application/merge-patch+json" => patch::merge_patch(obj, patch_doc),
        "application/strategic-merge-patch+json" => {
            patch::strategic_merge_patch(obj, patch_doc).map_err(ApiError::bad_request)?
        }
        "application/json-patch+json" => {
            // kube-apiserver's `maxJSONPatchOperations` (checked before the patch is applied).
            if let Some(n) = patch_doc.as_array().map(Vec::len)
                && n > MAX_JSON_PATCH_OPERATIONS
            {
                return Err(ApiError::request_entity_too_large(&format!(
                    "The allowed maximum operations in a JSON patch is \
                     {MAX_JSON_PATCH_OPERATIONS}, got {n}"
                )));
            }
            patch::json_patch(obj, patch_doc).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    Ok(())
}

/// The `autoscaling/v1 Scale` of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
           "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                        "resourceVersion": meta["resourceVersion"],
                        "creationTimestamp": meta["creationTimestamp"]},
           "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
           "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
                      "selector": LabelSelector::from_object(&obj["spec"]["selector"]).to_string_form()}})
}

fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// Whether a deletion must wait: finalizers in `metadata`, or for a namespace the
/// `spec.finalizers` (`kubernetes`: its contents are not deleted yet).
fn holds_deletion(info: &ResourceInfo, obj: &Value) -> bool {
    has_finalizers(obj)
        || (info.kind == "Namespace"
            && obj["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty()))
}

fn set_create_metadata(obj: &mut Value) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    meta["uid"] = json!(resources::new_uid());
    meta["creationTimestamp"] = json!(now_rfc3339());
    meta["generation"] = json!(1);
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
    }
}

fn is_dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").map(String::as_str) == Some("All")
}

fn list_revision(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
    if rv.is_empty() || rv == "0" || !exact {
        return Ok(0);
    }
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))
}

/// The opaque continue token: the revision of the first page and the key to go on from.
fn encode_continue(revision: i64, start: &str) -> String {
    let token = json!({"v": "skiff.v1", "rv": revision, "start": start});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(String, i64), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let start = v["start"].as_str().ok_or_else(bad)?.to_string();
    let rv = v["rv"].as_i64().ok_or_else(bad)?;
    if !start.starts_with(prefix) {
        return Err(bad());
    }
    Ok((start, rv))
}

fn too_old(after: i64) -> ApiError {
    ApiError::gone(format!("too old resource version: {after}"))
}

/// Encodes watch events as kube-apiserver does: one JSON object per line.
#[derive(Clone)]
struct EventEncoder {
    info: ResourceInfo,
    table: bool,
}

impl EventEncoder {
    /// One event line in kube-apiserver's field order: `{"type":…,"object":…}` and a newline.
    fn line(kind: &str, object: &[u8]) -> Bytes {
        let mut bytes = Vec::with_capacity(object.len() + kind.len() + 24);
        bytes.extend_from_slice(b"{\"type\":");
        bytes.extend_from_slice(&crate::status::go_json(kind));
        bytes.extend_from_slice(b",\"object\":");
        bytes.extend_from_slice(object);
        bytes.extend_from_slice(b"}\n");
        Bytes::from(bytes)
    }

    fn event(&self, kind: &str, obj: &Value) -> Bytes {
        let object = if self.table {
            let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
            resources::table(
                self.info.printer,
                std::slice::from_ref(obj),
                rv,
                None,
                false,
            )
        } else {
            obj.clone()
        };
        Self::line(kind, &crate::status::go_json(&object))
    }

    fn bookmark(&self, revision: i64) -> Bytes {
        let object = json!({"kind": self.info.kind, "apiVersion": self.info.api_version(),
                            "metadata": {"resourceVersion": revision.to_string()}});
        Self::line("BOOKMARK", &crate::status::go_json(&object))
    }

    fn error_event(&self, err: &ApiError) -> Bytes {
        Self::line("ERROR", &err.to_status_json())
    }
}

fn stream_response(stream: futures::stream::BoxStream<'static, Bytes>) -> Response {
    let body = Body::from_stream(stream.map(Ok::<_, Infallible>));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("static response parts are valid")
}

/// Dispatches one request under `/api/v1` or `/apis/<g>/<v>` to a verb.
#[allow(clippy::too_many_arguments)]
pub async fn dispatch(
    registry: Arc<Registry>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult {
    let t = registry.target(group, version, rest)?;
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
    let watching = query_flag(query, "watch");
    match (method.as_str(), t.name.is_some()) {
        ("GET", _) if watching => registry.clone().watch(&t, query, headers).await,
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
        ("DELETE", false) => registry.delete_collection(&t, query).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_are_checked() {
        let token = encode_continue(42, "/registry/pods/default/b\0");
        assert_eq!(
            decode_continue(&token, "/registry/pods/").unwrap(),
            ("/registry/pods/default/b\0".to_string(), 42)
        );
        assert!(decode_continue(&token, "/registry/secrets/").is_err());
        assert!(decode_continue("garbage!", "/registry/pods/").is_err());
    }

    /// Watch lines as kube-apiserver writes them: `type` first, an ERROR's object the Status
    /// bytes of a response body.
    #[test]
    fn watch_events_are_written_in_kube_apiservers_order() {
        let info = resources::registry()
            .into_iter()
            .find(|r| r.kind == "ConfigMap")
            .unwrap();
        let encoder = EventEncoder { info, table: false };
        assert_eq!(
            encoder.event("ADDED", &json!({"metadata": {"name": "a<b"}})),
            Bytes::from(
                "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\\u003cb\"}}}\n"
            )
        );
        assert_eq!(
            encoder.error_event(&too_old(5)),
            Bytes::from(
                "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\
                 \"metadata\":{},\"status\":\"Failure\",\"message\":\"too old resource version: 5\",\
                 \"reason\":\"Expired\",\"code\":410}}\n"
            )
        );
    }

    #[test]
    fn uids_look_like_uuids() {
        let uid = resources::new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
    }
}
