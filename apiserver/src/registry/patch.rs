//! Patches: RFC 7386 JSON merge patch and RFC 6902 JSON patch (through the `json-patch` crate),
//! and our own Kubernetes strategic merge patch with the directives
//! `kubectl apply` sends (`$setElementOrder/…`, `$patch: delete|replace|merge`, `$retainKeys`,
//! `$deleteFromPrimitiveList/…`, null deletes) and the merge keys of the core and apps kinds.

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch (the `json-patch` crate, as kube-rs uses it).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// How a list field merges under strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// Replaced wholesale (no `patchStrategy` tag).
    Replace,
    /// Merged element by element on this key.
    MergeKey(&'static str),
    /// A set of primitives (`finalizers`).
    PrimitiveMerge,
}

/// The merge strategy of list field `field`, given a sample element to tell container ports
/// (`containerPort`) from service ports (`port`). From the `patchStrategy`/`patchMergeKey` tags
/// of k8s.io/api core/v1 and apps/v1.
fn list_strategy(field: &str, sample: Option<&Value>) -> ListStrategy {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets"
        | "schedulingGates"
        | "resourceClaims" => ListStrategy::MergeKey("name"),
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                ListStrategy::MergeKey("containerPort")
            } else {
                ListStrategy::MergeKey("port")
            }
        }
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "hostAliases" | "podIPs" | "hostIPs" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "conditions" | "addresses" => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "finalizers" => ListStrategy::PrimitiveMerge,
        _ => ListStrategy::Replace,
    }
}

/// Applies a strategic merge patch to `target` (both objects).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    merge_map(target, patch)
}

fn merge_map(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let obj = target.as_object_mut().expect("made an object above");
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        obj.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if key.starts_with('$') && !key.contains('/') {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (obj.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with("$setElementOrder/") {
            continue;
        }
        if value.is_null() {
            obj.remove(key);
            continue;
        }
        match value {
            Value::Object(_) => merge_map(obj.entry(key.clone()).or_insert(Value::Null), value)?,
            Value::Array(items) => {
                let current = obj.entry(key.clone()).or_insert(Value::Array(Vec::new()));
                merge_list(key, current, items)?;
            }
            _ => {
                obj.insert(key.clone(), value.clone());
            }
        }
    }
    for (key, order) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(list)), Some(order)) = (obj.get_mut(field), order.as_array())
        {
            reorder(field, list, order);
        }
    }
    Ok(())
}

fn merge_list(field: &str, current: &mut Value, items: &[Value]) -> Result<(), String> {
    let sample = items.iter().find(|i| i.is_object());
    if let Some(Value::Object(first)) = items.first()
        && first.get("$patch").and_then(Value::as_str) == Some("replace")
    {
        let rest: Vec<Value> = items[1..].to_vec();
        *current = Value::Array(rest);
        return Ok(());
    }
    if !current.is_array() {
        *current = Value::Array(Vec::new());
    }
    let list = current.as_array_mut().expect("made an array above");
    match list_strategy(field, sample.or(list.first())) {
        ListStrategy::Replace => *list = items.to_vec(),
        ListStrategy::PrimitiveMerge => {
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
        }
        ListStrategy::MergeKey(merge_key) => {
            for item in items {
                let Some(key) = item.get(merge_key) else {
                    return Err(format!(
                        "map: {item} does not contain declared merge key: {merge_key}"
                    ));
                };
                let pos = list.iter().position(|e| e.get(merge_key) == Some(key));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(pos) = pos {
                        list.remove(pos);
                    }
                    continue;
                }
                match pos {
                    Some(pos) => merge_map(&mut list[pos], item)?,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        merge_map(&mut fresh, item)?;
                        list.push(fresh);
                    }
                }
            }
        }
    }
    Ok(())
}

/// `$setElementOrder`: elements named in `order` first, in that order; the rest after.
fn reorder(field: &str, list: &mut Vec<Value>, order: &[Value]) {
    let key = match list_strategy(field, order.first().or(list.first())) {
        ListStrategy::MergeKey(k) => Some(k),
        ListStrategy::PrimitiveMerge => None,
        ListStrategy::Replace => return,
    };
    let id = |v: &Value| match key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    };
    let mut ordered = Vec::with_capacity(list.len());
    let mut rest = std::mem::take(list);
    for wanted in order {
        let wanted = id(wanted);
        if let Some(pos) = rest.iter().position(|e| id(e) == wanted) {
            ordered.push(rest.remove(pos));
        }
    }
    ordered.extend(rest);
    *list = ordered;
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`) with
/// the `json-patch` crate; all or nothing (applied to a copy, which replaces `target` only
/// when every operation succeeded).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    if !ops.is_array() {
        return Err("a JSON patch must be an array of operations".into());
    }
    let patch: json_patch::Patch =
        serde_json::from_value(ops.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    let mut doc = target.clone();
    json_patch::patch_unsafe(&mut doc, &patch).map_err(|e| upstream_message(&patch, &e))?;
    *target = doc;
    Ok(())
}

/// The error as kube-apiserver words it (evanphx/json-patch, which it uses), from the
/// operation that failed; the crate's own text for anything else.
fn upstream_message(patch: &json_patch::Patch, error: &json_patch::PatchError) -> String {
    use json_patch::{PatchErrorKind, PatchOperation};
    let path = error.path.to_string();
    let key = path.rsplit('/').next().unwrap_or_default().to_string();
    match (patch.0.get(error.operation), &error.kind) {
        (Some(PatchOperation::Replace(_)), PatchErrorKind::InvalidPointer) => {
            format!("unable to replace nonexistent key: {key}")
        }
        (Some(PatchOperation::Remove(_)), PatchErrorKind::InvalidPointer) => {
            format!("unable to remove nonexistent key: {key}: missing value")
        }
        (Some(PatchOperation::Add(_)), PatchErrorKind::InvalidPointer) => {
            format!("add operation does not apply: doc is missing path: {path:?}: missing value")
        }
        (Some(PatchOperation::Test(_)), _) => format!("testing value {path} failed: test failed"),
        _ => error.to_string(),
    }
}

// ---- server-side apply: field sets (`FieldsV1`) ----

/// Metadata fields the server owns; never part of a manager's field set.
const SERVER_META: [&str; 8] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
];

/// The `FieldsV1` set of the fields `applied` sets: `f:<field>` for map keys, `k:{"name":…}`
/// for list items with a `name` merge key, `{}` for leaves.
pub fn fields_of(applied: &Value) -> Value {
    fn walk(v: &Value, top: bool, in_meta: bool) -> Value {
        let mut out = Map::new();
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if (top && (k == "apiVersion" || k == "kind"))
                        || (in_meta && SERVER_META.contains(&k.as_str()))
                    {
                        continue;
                    }
                    let sub = walk(child, false, top && k == "metadata");
                    // An object holding only server-owned fields (metadata: {name}) is no field.
                    if child.as_object().is_some_and(|c| !c.is_empty())
                        && sub.as_object().is_some_and(|m| m.is_empty())
                    {
                        continue;
                    }
                    out.insert(format!("f:{k}"), sub);
                }
            }
            Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i["name"].is_string()) =>
            {
                for item in items {
                    let key = serde_json::json!({"name": item["name"]}).to_string();
                    let mut sub = walk(item, false, false);
                    if let Some(m) = sub.as_object_mut() {
                        m.insert(".".into(), Value::Object(Map::new()));
                    }
                    out.insert(format!("k:{key}"), sub);
                }
            }
            _ => {}
        }
        Value::Object(out)
    }
    walk(applied, true, false)
}

/// The leaf paths of a `FieldsV1` set.
pub fn leaves(fields: &Value) -> Vec<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != ".")
            .collect();
        if children.is_empty() {
            if !path.is_empty() {
                out.push(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(k.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

/// The value at a field path in an object.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        if let Some(field) = seg.strip_prefix("f:") {
            cur = cur.get(field)?;
        } else if let Some(key) = seg.strip_prefix("k:") {
            let key: Value = serde_json::from_str(key).ok()?;
            cur = cur.as_array()?.iter().find(|item| {
                key.as_object()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| item.get(k) == Some(v))
            })?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Removes the field at a path made only of `f:` segments (list items are left alone).
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let Some(field) = seg.strip_prefix("f:") else {
            return;
        };
        match cur.get_mut(field) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let (Some(field), Some(map)) = (last.strip_prefix("f:"), cur.as_object_mut()) {
        map.remove(field);
    }
}

/// A field path as kube-apiserver prints it in apply conflicts: `.spec.replicas`,
/// `.spec.template.spec.containers[name="main"].image`.
pub fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if let Some(field) = seg.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = seg.strip_prefix("k:") {
            let key: Value = serde_json::from_str(key).unwrap_or(Value::Null);
            for (k, v) in key.as_object().into_iter().flatten() {
                out.push_str(&format!("[{k}={v}]"));
            }
        }
    }
    out
}

/// Rebuilds a `FieldsV1` set from leaf paths.
pub fn fields_from_leaves(paths: &[Vec<String>]) -> Value {
    let mut root = Value::Object(Map::new());
    for path in paths {
        let mut cur = &mut root;
        for (i, seg) in path.iter().enumerate() {
            let map = cur.as_object_mut().expect("field sets are objects");
            cur = map
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if seg.starts_with("k:")
                && i + 1 < path.len()
                && let Some(m) = cur.as_object_mut()
            {
                m.entry(".").or_insert_with(|| Value::Object(Map::new()));
            }
        }
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_nulls_delete() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "l": [3]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    /// The body `kubectl apply` sent when the image and one env value changed (kubeapi.md §4.1).
    #[test]
    fn strategic_merge_of_apply_patch() {
        let mut t = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "main", "image": "nginx:1.26", "env": [{"name": "A", "value": "1"}]},
            {"name": "sidecar", "image": "busybox"}]}}}});
        let p = json!({"spec": {"replicas": 4, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "main"}, {"name": "sidecar"}],
            "containers": [{"$setElementOrder/env": [{"name": "A"}],
                "env": [{"name": "A", "value": "2"}], "image": "nginx:1.27", "name": "main"}]}}}});
        strategic_merge_patch(&mut t, &p).unwrap();
        assert_eq!(
            t,
            json!({"spec": {"replicas": 4, "template": {"spec": {"containers": [
                {"name": "main", "image": "nginx:1.27", "env": [{"name": "A", "value": "2"}]},
                {"name": "sidecar", "image": "busybox"}]}}}})
        );
    }

    /// Removing a container, the env list and labels; switching the strategy (kubeapi.md §4.1).
    #[test]
    fn strategic_merge_deletes_and_retains_keys() {
        let mut t = json!({"metadata": {"labels": {"a": "b"}}, "spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {"containers": [
                {"name": "main", "env": [{"name": "A"}]}, {"name": "sidecar"}]}}}});
        let p = json!({"metadata": {"labels": null}, "spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "template": {"spec": {"$setElementOrder/containers": [{"name": "main"}],
                "containers": [{"env": null, "name": "main"}, {"$patch": "delete", "name": "sidecar"}]}}}});
        strategic_merge_patch(&mut t, &p).unwrap();
        assert_eq!(
            t,
            json!({"metadata": {}, "spec": {"strategy": {"type": "Recreate"},
                "template": {"spec": {"containers": [{"name": "main"}]}}}})
        );
    }

    #[test]
    fn strategic_merge_ports_and_order() {
        let mut t = json!({"ports": [{"port": 80, "name": "http"}], "finalizers": ["a"]});
        let p = json!({"ports": [{"port": 443, "name": "https"}],
            "$setElementOrder/ports": [{"port": 443}, {"port": 80}],
            "finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]});
        strategic_merge_patch(&mut t, &p).unwrap();
        assert_eq!(
            t,
            json!({"ports": [{"port": 443, "name": "https"}, {"port": 80, "name": "http"}],
                "finalizers": ["b"]})
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut doc =
            json!({"spec": {"replicas": 1, "list": [1, 2]}, "metadata": {"labels": {"a/b": "x"}}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 2},
                {"op": "add", "path": "/spec/list/-", "value": 3},
                {"op": "remove", "path": "/metadata/labels/a~1b"},
                {"op": "test", "path": "/spec/list/0", "value": 1}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"replicas": 2, "list": [1, 2, 3]}, "metadata": {"labels": {}}})
        );
        assert_eq!(
            json_patch(
                &mut doc,
                &json!([{"op": "replace", "path": "/nope", "value": 1}])
            ),
            Err("unable to replace nonexistent key: nope".to_string())
        );
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "test", "path": "/spec/replicas", "value": 9}])
            )
            .is_err()
        );
        // All or nothing: the first operation is not kept when the second fails.
        let before = doc.clone();
        let err = json_patch(
            &mut doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 7},
                {"op": "remove", "path": "/spec/missing"}
            ]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "unable to remove nonexistent key: missing: missing value"
        );
        assert_eq!(doc, before);
        assert!(json_patch(&mut doc, &json!([{"op": "frobnicate", "path": "/a"}])).is_err());
        assert!(json_patch(&mut doc, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn field_sets() {
        let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "main", "image": "i"}]}}}});
        let fields = fields_of(&applied);
        let mut paths: Vec<String> = leaves(&fields).iter().map(|p| path_string(p)).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                ".metadata.labels.x",
                ".spec.replicas",
                ".spec.template.spec.containers[name=\"main\"].image",
                ".spec.template.spec.containers[name=\"main\"].name",
            ]
        );
        let leaf = leaves(&fields)
            .into_iter()
            .find(|p| path_string(p).ends_with("image"))
            .unwrap();
        assert_eq!(value_at(&applied, &leaf), Some(&json!("i")));
        assert_eq!(fields_from_leaves(&leaves(&fields)), fields);
        let mut obj = applied.clone();
        remove_at(&mut obj, &["f:spec".to_string(), "f:replicas".to_string()]);
        assert!(obj["spec"].get("replicas").is_none());
    }
}
