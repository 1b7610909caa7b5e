//! Delete and deletecollection: `DeleteOptions` (preconditions, `dryRun`, and the garbage
//! collector's propagation policies — `Orphan` and `Foreground` hold the object with the
//! `orphan`/`foregroundDeletion` finalizer, `Background` deletes it at once), finalizers hold a
//! deletion (the object gets a `deletionTimestamp`), the strategy may refuse one or cascade it.

use k8s_openapi::jiff::SignedDuration;
use serde::Deserialize;

use super::*;

/// Tries at deleting one object of a collection that keeps changing under the delete.
pub const DELETE_COLLECTION_ATTEMPTS: u32 = 5;
/// Tries at deleting one object that changes under the delete (kube-apiserver's
/// `GuaranteedUpdate` retries a conflicting update the same way).
pub const DELETE_ATTEMPTS: u32 = 5;
/// The finalizer of an `Orphan` deletion: the garbage collector removes the object's
/// ownerReferences from its dependents, then this finalizer (`metav1.FinalizerOrphanDependents`).
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer of a `Foreground` deletion: the garbage collector deletes the object's
/// dependents, then removes this finalizer (`metav1.FinalizerDeleteDependents`).
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// `DeleteOptions.propagationPolicy` (`metav1.DeletionPropagation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// The dependents are orphaned (their ownerReferences to the object are removed).
    Orphan,
    /// The object goes at once; the garbage collector deletes the dependents afterwards.
    Background,
    /// The object stays (with a `deletionTimestamp`) until its blocking dependents are gone.
    Foreground,
}

/// The `DeleteOptions` the registry honours, from the request body or, when there is none,
/// the query (as kube-apiserver's delete handlers read them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// The legacy `orphanDependents`.
    pub orphan_dependents: Option<bool>,
    /// `propagationPolicy`.
    pub propagation: Option<Propagation>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun: [All]`.
    pub dry_run: bool,
    /// `gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
}

/// `DeleteOptions` as they arrive on the wire.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireOptions {
    orphan_dependents: Option<bool>,
    propagation_policy: Option<String>,
    preconditions: Option<WirePreconditions>,
    dry_run: Option<Vec<String>>,
    grace_period_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WirePreconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

/// Go's `strconv.ParseBool`, which the query parameter codec uses.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

impl DeleteOptions {
    /// Reads the options from `body` if it is not empty, else from the query parameters
    /// (`orphanDependents`, `propagationPolicy`, `dryRun`), then validates them as
    /// kube-apiserver's `ValidateDeleteOptions`: 400 for a body or parameter that does not
    /// decode, 422 for a value it refuses.
    pub fn parse(query: &HashMap<String, String>, body: &Bytes) -> Result<DeleteOptions, ApiError> {
        let wire: WireOptions = if body.is_empty() {
            let orphan_dependents = match query.get("orphanDependents") {
                None => None,
                Some(v) => Some(parse_go_bool(v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "strconv.ParseBool: parsing {v:?}: invalid syntax"
                    ))
                })?),
            };
            let grace_period_seconds = match query.get("gracePeriodSeconds") {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "strconv.ParseInt: parsing {v:?}: invalid syntax"
                    ))
                })?),
            };
            WireOptions {
                orphan_dependents,
                propagation_policy: query.get("propagationPolicy").cloned(),
                preconditions: None,
                dry_run: query.get("dryRun").map(|v| vec![v.clone()]),
                grace_period_seconds,
            }
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        let mut causes = Vec::new();
        if wire.orphan_dependents.is_some()
            && let Some(policy) = &wire.propagation_policy
        {
            causes.push((
                "propagationPolicy".to_string(),
                format!(
                    "Invalid value: {policy:?}: orphanDependents and deletionPropagation cannot \
                     be both set"
                ),
            ));
        }
        let propagation = match wire.propagation_policy.as_deref() {
            None => None,
            Some("Orphan") => Some(Propagation::Orphan),
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some(other) => {
                causes.push((
                    "propagationPolicy".to_string(),
                    format!(
                        "Unsupported value: {other:?}: supported values: \"Foreground\", \
                         \"Background\", \"Orphan\", \"nil\""
                    ),
                ));
                None
            }
        };
        let dry_run = wire.dry_run.unwrap_or_default();
        if dry_run.iter().any(|v| v != "All") {
            let values: Vec<String> = dry_run.iter().map(|v| format!("{v:?}")).collect();
            causes.push((
                "dryRun".to_string(),
                format!(
                    "Unsupported value: []string{{{}}}: supported values: \"All\"",
                    values.join(", ")
                ),
            ));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                &causes,
            ));
        }
        let preconditions = wire.preconditions.unwrap_or_default();
        Ok(DeleteOptions {
            orphan_dependents: wire.orphan_dependents,
            propagation,
            uid: preconditions.uid,
            resource_version: preconditions.resource_version,
            dry_run: !dry_run.is_empty() || is_dry_run(query),
            grace_period_seconds: wire.grace_period_seconds,
        })
    }
}

/// Whether deleting an object of `info` orphans its dependents when neither the options nor
/// its finalizers say (kube-apiserver's `DefaultGarbageCollectionPolicy`): batch/v1 Jobs and
/// v1 ReplicationControllers, for backwards compatibility; every other kind deletes them.
fn orphans_by_default(info: &ResourceInfo) -> bool {
    matches!(
        (info.group, info.version, info.kind),
        ("batch", "v1", "Job") | ("", "v1", "ReplicationController")
    )
}

/// The finalizers an object holding `current` gets when deleted with `options`, if they change
/// (kube-apiserver's `deletionFinalizersForGarbageCollection`): the options decide, else the
/// object's own `orphan`/`foregroundDeletion` finalizer, else the kind's default.
pub fn finalizers_for_deletion(
    current: &[String],
    options: &DeleteOptions,
    default_orphan: bool,
) -> Option<Vec<String>> {
    let held = current
        .iter()
        .find(|f| *f == FINALIZER_ORPHAN || *f == FINALIZER_FOREGROUND)
        .map(String::as_str);
    let orphan = match (options.orphan_dependents, options.propagation, held) {
        (Some(orphan), _, _) => orphan,
        (None, Some(policy), _) => policy == Propagation::Orphan,
        (None, None, Some(held)) => held == FINALIZER_ORPHAN,
        (None, None, None) => default_orphan,
    };
    let foreground = match (options.orphan_dependents, options.propagation, held) {
        (Some(_), _, _) => false,
        (None, Some(policy), _) => policy == Propagation::Foreground,
        (None, None, held) => held == Some(FINALIZER_FOREGROUND),
    };
    let mut wanted: Vec<String> = current
        .iter()
        .filter(|f| *f != FINALIZER_ORPHAN && *f != FINALIZER_FOREGROUND)
        .cloned()
        .collect();
    if orphan {
        wanted.push(FINALIZER_ORPHAN.to_string());
    }
    if foreground {
        wanted.push(FINALIZER_FOREGROUND.to_string());
    }
    let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    (set(current) != set(&wanted)).then_some(wanted)
}

/// A failed precondition, in kube-apiserver's words (`rest.BeforeDelete`, which names the
/// kind where the resource usually goes).
fn precondition_failed(info: &ResourceInfo, name: &str, why: String) -> ApiError {
    ApiError {
        message: format!(
            "Operation cannot be fulfilled on {} {name:?}: {why}",
            crate::status::qualified(info.kind, info.group)
        ),
        ..ApiError::conflict(info.kind, info.group, name)
    }
}

impl Registry {
    pub async fn delete(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        body: &Bytes,
    ) -> ApiResult {
        let info = t.info;
        let name = t.name.clone().unwrap_or_default();
        let options = DeleteOptions::parse(query, body)?;
        info.strategy.check_delete(&name)?;
        let mut attempt = 1;
        loop {
            let (stored, obj) = self.current(t, &name).await?;
            if let Some(uid) = &options.uid {
                let record = obj["metadata"]["uid"].as_str().unwrap_or("");
                if uid != record {
                    return Err(precondition_failed(
                        info,
                        &name,
                        format!(
                            "the UID in the precondition ({uid}) does not match the UID in \
                             record ({record}). The object might have been deleted and then \
                             recreated"
                        ),
                    ));
                }
            }
            if let Some(rv) = &options.resource_version {
                let record = stored.revision.to_string();
                if *rv != record {
                    return Err(precondition_failed(
                        info,
                        &name,
                        format!(
                            "the ResourceVersion in the precondition ({rv}) does not match the \
                             ResourceVersion in record ({record}). The object might have been \
                             modified"
                        ),
                    ));
                }
            }
            let namespace = t.namespace.as_deref();
            let attrs = attributes(info, Operation::Delete, namespace, &name, Some(&obj), query);
            self.admission.validate(&attrs, &obj).await?;
            match self.delete_with(info, &stored, obj, &options).await {
                // 202 when the object stays and the client asked for cascading with the legacy
                // `orphanDependents: false` (kube-apiserver's delete handler).
                Ok((obj, deleted)) => {
                    let code = if !deleted && options.orphan_dependents == Some(false) {
                        StatusCode::ACCEPTED
                    } else {
                        StatusCode::OK
                    };
                    return Ok(json_response(code, &obj));
                }
                // Changed between the read and the write (a controller's update): read it again.
                Err(e) if e.reason == Reason::Conflict && attempt < DELETE_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// What goes with `obj` in the transaction that deletes it: a namespace's contents, a
    /// Service's address allocations.
    pub(super) fn children(&self, info: &ResourceInfo, obj: &Value) -> Vec<String> {
        if info.strategy.contains_namespaced() {
            let name = obj["metadata"]["name"].as_str().unwrap_or("");
            self.resources
                .iter()
                .filter(|r| r.namespaced)
                .map(|r| self.collection_prefix(r, Some(name)))
                .collect()
        } else {
            self.service_address_keys(info, obj)
        }
    }

    /// Deletes one object with the default options (the namespace finalizer's deletes); see
    /// [`Registry::delete_with`].
    pub(super) async fn delete_one(
        &self,
        info: &ResourceInfo,
        stored: &Stored,
        obj: Value,
        query: &HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        let options = DeleteOptions {
            dry_run: is_dry_run(query),
            ..DeleteOptions::default()
        };
        Ok(self.delete_with(info, stored, obj, &options).await?.0)
    }

    /// Deletes one object as `options` ask (kube-apiserver's `Store.Delete` for kinds without
    /// graceful deletion): the propagation policy adds or removes the `orphan` and
    /// `foregroundDeletion` finalizers; an object with finalizers then only gets a
    /// `deletionTimestamp` (a namespace turns `Terminating`) and goes when its last finalizer is
    /// removed; one without is deleted at once. An object already being deleted may still have
    /// its garbage-collector finalizers changed by a second delete, as upstream allows; a
    /// terminating namespace is left as it is. Returns the object and whether it was deleted.
    pub(super) async fn delete_with(
        &self,
        info: &ResourceInfo,
        stored: &Stored,
        obj: Value,
        options: &DeleteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let deleting = obj["metadata"]["deletionTimestamp"].is_string();
        if deleting && info.strategy.contains_namespaced() {
            return Ok((obj, false));
        }
        if let Some(grace) = info
            .strategy
            .grace_period(&obj, options.grace_period_seconds)
            && grace > 0
        {
            return self
                .delete_gracefully(info, stored, obj, grace, options)
                .await;
        }
        let current: Vec<String> = obj["metadata"]["finalizers"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut marked = obj.clone();
        if let Some(finalizers) =
            finalizers_for_deletion(&current, options, orphans_by_default(info))
        {
            if finalizers.is_empty() {
                if let Some(meta) = marked["metadata"].as_object_mut() {
                    meta.remove("finalizers");
                }
            } else {
                marked["metadata"]["finalizers"] = json!(finalizers);
            }
        }
        if info.strategy.holds_deletion(&marked) {
            if !deleting {
                // kube-apiserver's `markAsDeleting`.
                if let Some(generation) = marked["metadata"]["generation"].as_i64()
                    && generation > 0
                {
                    marked["metadata"]["generation"] = json!(generation + 1);
                }
                marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                info.strategy.begin_deletion(&mut marked);
            } else if marked["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .is_some_and(|g| g > 0)
            {
                // kube-apiserver's `BeforeDelete`: a grace-0 delete of an object in its grace
                // period shortens it to now; its finalizers still hold it, and it goes with
                // the last of them.
                marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            if marked == obj || options.dry_run {
                return Ok((marked, false));
            }
            let revision = self
                .storage
                .update(&stored.key, Self::encode(&marked), stored.revision)
                .await
                .map_err(|e| ApiError::from_storage(e, info.resource, info.group, &name))?;
            marked["metadata"]["resourceVersion"] = json!(revision.to_string());
            if info.strategy.contains_namespaced() {
                self.namespace_kick.notify_one();
            }
            return Ok((marked, false));
        }
        if options.dry_run {
            return Ok((obj, true));
        }
        self.storage
            .delete(&stored.key, stored.revision, self.children(info, &obj))
            .await
            .map_err(|e| ApiError::from_storage(e, info.resource, info.group, &name))?;
        Ok((obj, true))
    }

    /// Marks an object for deletion in `grace` seconds (kube-apiserver's `BeforeDelete` for
    /// graceful kinds): `deletionTimestamp` = now + grace, `deletionGracePeriodSeconds` =
    /// grace. A second delete may only shorten the period; a longer one changes nothing.
    async fn delete_gracefully(
        &self,
        info: &ResourceInfo,
        stored: &Stored,
        obj: Value,
        grace: i64,
        options: &DeleteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let deleting = obj["metadata"]["deletionTimestamp"].is_string();
        let current = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if deleting && current.is_some_and(|c| c <= grace) {
            return Ok((obj, false));
        }
        let mut marked = obj.clone();
        if !deleting
            && let Some(generation) = marked["metadata"]["generation"].as_i64()
            && generation > 0
        {
            marked["metadata"]["generation"] = json!(generation + 1);
        }
        let at = resources::now()
            .saturating_add(SignedDuration::from_secs(grace))
            .unwrap_or_else(|_| resources::now());
        marked["metadata"]["deletionTimestamp"] =
            json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if options.dry_run {
            return Ok((marked, false));
        }
        let revision = self
            .storage
            .update(&stored.key, Self::encode(&marked), stored.revision)
            .await
            .map_err(|e| ApiError::from_storage(e, info.resource, info.group, &name))?;
        marked["metadata"]["resourceVersion"] = json!(revision.to_string());
        Ok((marked, false))
    }

    /// `DELETE` on a collection: deletes every object the selectors match; one that changes
    /// under the delete is read again and retried, up to [`DELETE_COLLECTION_ATTEMPTS`] times.
    /// Each object is deleted with the request's `DeleteOptions` (propagation policy, dry run).
    pub async fn delete_collection(
        &self,
        t: &Target<'_>,
        query: &HashMap<String, String>,
        body: &Bytes,
    ) -> ApiResult {
        let options = DeleteOptions::parse(query, body)?;
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
                match self.delete_with(t.info, &stored, obj, &options).await {
                    Ok((obj, _)) => {
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

#[cfg(test)]
mod tests;
