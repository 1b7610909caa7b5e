//! Delete and deletecollection: finalizers hold a deletion (the object gets a
//! `deletionTimestamp`), the strategy may refuse one or cascade it.

use super::*;

/// Tries at deleting one object of a collection that keeps changing under the delete.
pub const DELETE_COLLECTION_ATTEMPTS: u32 = 5;

impl Registry {
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
        info.strategy.check_delete(&name)?;
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
        let namespace = t.namespace.as_deref();
        let attrs = attributes(info, Operation::Delete, namespace, &name, Some(&obj), query);
        self.admission.validate(&attrs, &obj).await?;
        let obj = self.delete_one(info, &stored, obj, query).await?;
        Ok(json_response(StatusCode::OK, &obj))
    }

    /// Deletes what is in a namespace along with it (same transaction).
    pub(super) fn children(&self, info: &ResourceInfo, name: &str) -> Vec<String> {
        if info.strategy.contains_namespaced() {
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
    pub(super) async fn delete_one(
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
        if info.strategy.holds_deletion(&obj) {
            if obj["metadata"]["deletionTimestamp"].is_string() {
                return Ok(obj);
            }
            let mut marked = obj;
            marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            info.strategy.begin_deletion(&mut marked);
            let revision = self
                .storage
                .update(&stored.key, Self::encode(&marked), stored.revision)
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, &name))?;
            marked["metadata"]["resourceVersion"] = json!(revision.to_string());
            if info.strategy.contains_namespaced() {
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

    /// `DELETE` on a collection: deletes every object the selectors match; one that changes
    /// under the delete is read again and retried, up to [`DELETE_COLLECTION_ATTEMPTS`] times.
    pub async fn delete_collection(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
    ) -> ApiResult {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", |s| s))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(
            query.get("fieldSelector").map_or("", |s| s),
            t.info.strategy.field_labels(),
        )
        .map_err(ApiError::bad_request)?;
        let prefix = self.collection_prefix(t.info, t.namespace.as_deref());
        let page = self
            .storage
            .list(&prefix, "", 0, 0)
            .await
            .map_err(|e| ApiError::from_storage(e, t.info.resource, t.info.group, ""))?;
        let mut deleted = Vec::new();
        for listed in &page.items {
            let mut stored = listed.clone();
            for attempt in 1..=DELETE_COLLECTION_ATTEMPTS {
                let obj = self.decode(t.info, &stored)?;
                let name = obj["metadata"]["name"].as_str().unwrap_or("");
                let protected = t.info.strategy.check_delete(name).is_err();
                if protected || !(labels.matches(&labels_of(&obj)) && fields.matches(&obj)) {
                    break;
                }
                match self.delete_one(t.info, &stored, obj, query).await {
                    Ok(obj) => {
                        deleted.push(obj);
                        break;
                    }
                    // Deleted meanwhile: someone else got there first.
                    Err(e) if e.reason == Reason::NotFound => break,
                    // Changed meanwhile (a status update, say): read it again and delete what
                    // is there now if it still matches, as kube-apiserver's retry loop does.
                    Err(e)
                        if e.reason == Reason::Conflict && attempt < DELETE_COLLECTION_ATTEMPTS =>
                    {
                        match self.storage.get(&stored.key).await {
                            Ok(Some(now)) => stored = now,
                            Ok(None) => break,
                            Err(e) => {
                                return Err(ApiError::from_storage(
                                    e,
                                    t.info.resource,
                                    t.info.group,
                                    "",
                                ));
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let list = json!({"kind": t.info.list_kind, "apiVersion": t.info.api_version(),
                          "metadata": {"resourceVersion": page.revision.to_string()}, "items": deleted});
        Ok(json_response(StatusCode::OK, &list))
    }
}
