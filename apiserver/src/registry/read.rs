//! The read verbs: get, list (pages with continue tokens, Tables) and watch (events as
//! kube-apiserver writes them, bookmarks, timeouts).

use super::*;

impl Registry {
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
            let table = t.info.strategy.table(
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
    pub(super) async fn list_objects(
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
        let fields = FieldSelector::parse(
            query.get("fieldSelector").map_or("", |s| s),
            t.info.strategy.field_labels(),
        )
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
            let table =
                t.info
                    .strategy
                    .table(&items, &revision.to_string(), cont.as_deref(), include);
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
        let fields = FieldSelector::parse(&field_sel, info.strategy.field_labels())
            .map_err(ApiError::bad_request)?;
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
        // Decoded objects and event lines are shared with the resource's other watchers
        // (`watch_memo`): each event is decoded and encoded once, whatever their number.
        let decoded = {
            let (registry, info) = (registry.clone(), info.clone());
            move |stored: &Stored| {
                let memo_kind = (info.api_version(), info.kind);
                registry
                    .watch_memo
                    .object(memo_kind, &stored.key, stored.revision, || {
                        registry.decode(&info, stored).ok()
                    })
            }
        };
        let line = {
            let (registry, info, encoder) = (registry.clone(), info.clone(), encoder.clone());
            move |event: &'static str, stored: &Stored, object: &Value| {
                if encoder.table {
                    return encoder.event(event, object);
                }
                let memo_kind = (info.api_version(), info.kind);
                registry
                    .watch_memo
                    .line(memo_kind, &stored.key, stored.revision, event, || {
                        encoder.event(event, object)
                    })
            }
        };
        let events = changes
            .map(move |change| {
                let out: Option<Bytes> = match change {
                    Ok(Change::Progress(revision)) => bookmarks.then(|| encoder.bookmark(revision)),
                    Ok(Change::Put { new, prev }) => {
                        let new_obj = decoded(&new);
                        let old_obj = prev.as_ref().and_then(&decoded);
                        let now_in = new_obj.as_deref().is_some_and(&filter);
                        let was_in = old_obj.as_deref().is_some_and(&filter);
                        match (was_in, now_in, new_obj) {
                            (false, true, Some(o)) => Some(line("ADDED", &new, &o)),
                            (true, true, Some(o)) => Some(line("MODIFIED", &new, &o)),
                            // Left the selection: a DELETED of the new state (whose
                            // resourceVersion is already the put's revision).
                            (true, false, Some(o)) => Some(line("DELETED", &new, &o)),
                            _ => None,
                        }
                    }
                    Ok(Change::Delete { prev }) => decoded(&prev)
                        .filter(|o| filter(o))
                        .map(|o| line("DELETED", &prev, &o)),
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
}

pub(super) fn list_revision(query: &HashMap<String, String>) -> Result<i64, ApiError> {
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
pub(super) fn encode_continue(revision: i64, start: &str) -> String {
    let token = json!({"v": "skiff.v1", "rv": revision, "start": start});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

pub(super) fn decode_continue(token: &str, prefix: &str) -> Result<(String, i64), ApiError> {
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

pub(super) fn too_old(after: i64) -> ApiError {
    ApiError::gone(format!("too old resource version: {after}"))
}

/// Encodes watch events as kube-apiserver does: one JSON object per line.
#[derive(Clone)]
pub(super) struct EventEncoder {
    info: ResourceInfo,
    pub(super) table: bool,
}

impl EventEncoder {
    /// One event line in kube-apiserver's field order: `{"type":…,"object":…}` and a newline.
    pub(super) fn line(kind: &str, object: &[u8]) -> Bytes {
        let mut bytes = Vec::with_capacity(object.len() + kind.len() + 24);
        bytes.extend_from_slice(b"{\"type\":");
        bytes.extend_from_slice(&crate::status::go_json(kind));
        bytes.extend_from_slice(b",\"object\":");
        bytes.extend_from_slice(object);
        bytes.extend_from_slice(b"}\n");
        Bytes::from(bytes)
    }

    pub(super) fn event(&self, kind: &str, obj: &Value) -> Bytes {
        let object = if self.table {
            let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
            self.info
                .strategy
                .table(std::slice::from_ref(obj), rv, None, false)
        } else {
            obj.clone()
        };
        Self::line(kind, &crate::status::go_json(&object))
    }

    pub(super) fn bookmark(&self, revision: i64) -> Bytes {
        let object = json!({"kind": self.info.kind, "apiVersion": self.info.api_version(),
                            "metadata": {"resourceVersion": revision.to_string()}});
        Self::line("BOOKMARK", &crate::status::go_json(&object))
    }

    pub(super) fn error_event(&self, err: &ApiError) -> Bytes {
        Self::line("ERROR", &err.to_status_json())
    }
}

pub(super) fn stream_response(stream: futures::stream::BoxStream<'static, Bytes>) -> Response {
    let body = Body::from_stream(stream.map(Ok::<_, Infallible>));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("static response parts are valid")
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
}
