//! Patches: JSON merge patch (RFC 7386) and Kubernetes strategic merge patch with the directives
//! `kubectl apply` sends (`$setElementOrder/…`, `$patch: delete|replace|merge`, `$retainKeys`,
//! `$deleteFromPrimitiveList/…`, null deletes) and the merge keys of the core and apps kinds.

use serde_json::{Map, Value};

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
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
}
