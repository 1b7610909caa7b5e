//! The write verbs: create, update and patch — admission (kind, namespace, name, defaults,
//! strict decoding, validation), server-set metadata, and the conditional write.

use super::*;

impl Registry {
    /// Checks kind, name and namespace of a body against the URL; validates and normalises it.
    pub(super) fn admit(
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
        info.strategy.defaults(obj);
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
        let causes = info.strategy.validate(obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(info.kind, info.group, &name, &causes));
        }
        Ok(())
    }

    /// The admission chain on an object the verbs are about to write: the mutating plugins,
    /// then — if they changed it — the kind's defaults, decoding and validation again (upstream's
    /// strategy runs after mutating admission), then the validating plugins.
    pub(super) async fn run_admission(
        &self,
        info: &ResourceInfo,
        attrs: &Attributes<'_>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let before = obj.clone();
        self.admission.mutate(attrs, obj).await?;
        if *obj != before {
            self.admit(info, attrs.namespace, obj, &HashMap::new())?;
        }
        self.admission.validate(attrs, obj).await
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
    pub(super) async fn create_value(
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
        let attrs = attributes(
            info,
            Operation::Create,
            namespace.as_deref(),
            &name,
            None,
            query,
        );
        self.run_admission(info, &attrs, &mut obj).await?;
        if is_dry_run(query) {
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        let key = self.key(info, namespace.as_deref(), &name);
        let allocation = self
            .allocate_service_addresses(info, &mut obj, None)
            .await?;
        let revision = match self.storage.create(&key, Self::encode(&obj)).await {
            Ok(revision) => revision,
            Err(e) => {
                self.release_service_addresses(&allocation.created).await;
                return Err(ApiError::from_storage(e, info.resource, info.group, &name));
            }
        };
        obj["metadata"]["resourceVersion"] = json!(revision.to_string());
        Ok(json_response(StatusCode::CREATED, &obj))
    }

    /// Writes `obj` over `current` if `current` is still at `expected`: keeps the server-set
    /// metadata (and `status` for kinds with a status subresource), bumps `generation` when
    /// `spec` changed.
    // The request's parts, passed through; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn replace(
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
    pub(super) async fn replace_sub(
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
        info.strategy.prepare_for_update(current, &mut obj);
        let causes = info.strategy.validate_update(current, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(info.kind, info.group, name, &causes));
        }
        if info.strategy.has(Subresource::Status) && !status_only {
            obj["status"] = current["status"].clone();
            if obj["status"].is_null()
                && let Some(map) = obj.as_object_mut()
            {
                map.remove("status");
            }
        }
        let attrs = Attributes {
            subresource: sub,
            ..attributes(
                info,
                Operation::Update,
                namespace,
                name,
                Some(current),
                query,
            )
        };
        self.run_admission(info, &attrs, &mut obj).await?;
        if obj.get("spec") != current.get("spec") {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            obj["metadata"]["generation"] = json!(generation + 1);
        }
        if is_dry_run(query) {
            return Ok(obj);
        }
        let key = self.key(info, namespace, name);
        // kube-apiserver's `ShouldDeleteDuringUpdate`: no finalizer left and no grace period
        // running (a gracefully deleted pod stays until its node deletes it with grace 0,
        // whatever status updates come meanwhile).
        let grace_running = obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|g| g > 0);
        if obj["metadata"]["deletionTimestamp"].is_string()
            && !info.strategy.holds_deletion(&obj)
            && !grace_running
        {
            // The last finalizer is gone: the deletion completes now.
            self.storage
                .delete(&key, expected, self.children(info, &obj))
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, name))?;
            return Ok(obj);
        }
        let allocation = if status_only {
            Default::default()
        } else {
            self.allocate_service_addresses(info, &mut obj, Some(current))
                .await?
        };
        let revision = match self
            .storage
            .update(&key, Self::encode(&obj), expected)
            .await
        {
            Ok(revision) => revision,
            Err(e) => {
                self.release_service_addresses(&allocation.created).await;
                return Err(ApiError::from_storage(e, info.resource, info.group, name));
            }
        };
        self.release_service_addresses(&allocation.released).await;
        obj["metadata"]["resourceVersion"] = json!(revision.to_string());
        Ok(obj)
    }

    pub(super) async fn current(
        &self,
        t: &Target<'_>,
        name: &str,
    ) -> Result<(Stored, Value), ApiError> {
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
}

/// Applies a patch document of content type `ct` to `obj`.
pub(super) fn apply_patch(ct: &str, obj: &mut Value, patch_doc: &Value) -> Result<(), ApiError> {
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
                    Reason::Invalid,
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    Ok(())
}

/// What the admission plugins know of a write of `info`'s object `name`.
pub(super) fn attributes<'a>(
    info: &'a ResourceInfo,
    operation: Operation,
    namespace: Option<&'a str>,
    name: &'a str,
    old: Option<&'a Value>,
    query: &HashMap<String, String>,
) -> Attributes<'a> {
    Attributes {
        operation,
        kind: info.kind,
        group: info.group,
        version: info.version,
        resource: info.resource,
        subresource: None,
        namespace,
        name,
        old,
        dry_run: is_dry_run(query),
    }
}

pub(super) fn set_create_metadata(obj: &mut Value) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    meta["uid"] = json!(crate::ids::new_uid());
    meta["creationTimestamp"] = json!(now_rfc3339());
    meta["generation"] = json!(1);
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
    }
}

pub(super) fn is_dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").map(String::as_str) == Some("All")
}
