//! Server-side apply: field ownership by manager and the conflicts it reports.

use super::*;

impl Registry {
    /// Server-side apply (`application/apply-patch+yaml`): creates the object, or merges the
    /// applied configuration into it. Each apply manager owns the fields it applied
    /// (`managedFields`); setting a field another apply manager owns to a different value is a
    /// 409 conflict unless `force=true`, and fields a manager stops applying are removed.
    pub(super) async fn server_side_apply(
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
                    Err(e) if e.is(Reason::AlreadyExists) => continue,
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
                    Reason::Conflict,
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
                Err(e) if e.is(Reason::Conflict) => continue,
                Err(e) => return Err(e),
                Ok(obj) => return Ok(json_response(StatusCode::OK, &obj)),
            }
        }
        Err(ApiError::conflict(info.resource, info.group, &name))
    }
}
