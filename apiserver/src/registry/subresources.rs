//! The `scale` and `binding` subresources, and the read-modify-write both (and patch) use.

use super::*;

impl Registry {
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
                return Err(ApiError::new(Reason::Conflict,
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
    pub(super) async fn read_modify_write(
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
                Err(e) if e.is(Reason::Conflict) && precondition.is_none() => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(t.info.resource, t.info.group, &name))
    }
}

/// The `autoscaling/v1 Scale` of a Deployment or ReplicaSet.
pub(super) fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
           "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                        "resourceVersion": meta["resourceVersion"],
                        "creationTimestamp": meta["creationTimestamp"]},
           "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
           "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
                      "selector": LabelSelector::from_object(&obj["spec"]["selector"]).to_string_form()}})
}
