//! LimitRanger: the namespace's LimitRanges (`type: Container`) fill in the requests and
//! limits a container leaves out (`defaultRequest`, `default`) and record it in the
//! `kubernetes.io/limit-ranger` annotation; then every `min`, `max` and
//! `maxLimitRequestRatio` of a `Container` or `Pod` item is enforced with upstream's messages
//! (`minimum cpu usage per Container is 100m, but request is 50m`). Pod updates are not
//! checked, as upstream (a pod's containers' resources do not change). Not yet: `Pod` items
//! counting init containers, and the `PersistentVolumeClaim` type.

use serde_json::{Map, Value, json};

use crate::admission::quantity;

/// The annotation naming what the plugin set.
pub const LIMIT_RANGER_ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// The `spec.limits` items of `type` across the namespace's LimitRanges.
fn items<'a>(ranges: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().into_iter().flatten())
        .filter(move |item| item["type"].as_str() == Some(kind))
}

/// Fills in `field` (`requests`/`limits`) of one container from `defaults`; returns the
/// resource names set.
fn fill(container: &mut Value, field: &str, defaults: &Value) -> Vec<String> {
    let Some(defaults) = defaults.as_object() else {
        return Vec::new();
    };
    if !container["resources"].is_object() {
        container["resources"] = json!({});
    }
    if !container["resources"][field].is_object() {
        container["resources"][field] = json!({});
    }
    let mut set = Vec::new();
    for (resource, quantity) in defaults {
        let slot = &mut container["resources"][field];
        if slot.get(resource).is_none_or(Value::is_null) {
            slot[resource] = quantity.clone();
            set.push(resource.clone());
        }
    }
    if container["resources"][field]
        .as_object()
        .is_some_and(Map::is_empty)
        && let Some(resources) = container["resources"].as_object_mut()
    {
        resources.remove(field);
    }
    set.sort();
    set
}

/// Sets the default requests and limits of the first `Container` item that has them.
pub fn set_defaults(pod: &mut Value, ranges: &[Value]) {
    let Some(item) = items(ranges, "Container").next().cloned() else {
        return;
    };
    let mut notes = Vec::new();
    for (key, what) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(containers) = pod["spec"].get_mut(key).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers {
            let name = container["name"].as_str().unwrap_or("").to_string();
            let limits = fill(container, "limits", &item["default"]);
            let requests = fill(container, "requests", &item["defaultRequest"]);
            if !requests.is_empty() {
                notes.push(format!("{} request for {what} {name}", requests.join(", ")));
            }
            if !limits.is_empty() {
                notes.push(format!("{} limit for {what} {name}", limits.join(", ")));
            }
        }
    }
    if notes.is_empty() {
        return;
    }
    if !pod["metadata"]["annotations"].is_object() {
        pod["metadata"]["annotations"] = json!({});
    }
    pod["metadata"]["annotations"][LIMIT_RANGER_ANNOTATION] =
        json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    // The QoS class follows the resources: let the pod's defaults compute it again (upstream's
    // strategy computes it after admission).
    if let Some(status) = pod["status"].as_object_mut() {
        status.remove("qosClass");
    }
}

/// Checks `requests`/`limits` against one item's `min` and `max` for `kind` (`Container` or
/// `Pod`), in upstream's words.
fn check_bounds(
    item: &Value,
    kind: &str,
    requests: &Value,
    limits: &Value,
    errors: &mut Vec<String>,
) {
    let parse = |v: &Value| {
        v.as_str()
            .and_then(quantity::parse)
            .or_else(|| v.as_i64().map(|n| quantity::Milli(i128::from(n) * 1000)))
    };
    let text = |v: &Value| {
        v.as_str()
            .map(String::from)
            .unwrap_or_else(|| v.to_string())
    };
    // (field, word, checked first, checked second): a minimum needs a request and bounds the
    // request, then the limit; a maximum needs a limit and bounds the limit, then the request.
    let rules = [
        ("min", "minimum", ("request", requests), ("limit", limits)),
        ("max", "maximum", ("limit", limits), ("request", requests)),
    ];
    for (field, word, (first_name, first), (second_name, second)) in rules {
        let outside = |value: quantity::Milli, bound: quantity::Milli| {
            if field == "min" {
                value < bound
            } else {
                value > bound
            }
        };
        for (resource, bound_text) in item[field].as_object().into_iter().flatten() {
            let Some(bound) = parse(bound_text) else {
                continue;
            };
            let says = format!("{word} {resource} usage per {kind} is {}", text(bound_text));
            let (given, other) = (&first[resource], &second[resource]);
            match parse(given) {
                None => errors.push(format!("{says}.  No {first_name} is specified")),
                Some(v) if outside(v, bound) => {
                    errors.push(format!("{says}, but {first_name} is {}", text(given)));
                }
                _ => {
                    if parse(other).is_some_and(|v| outside(v, bound)) {
                        errors.push(format!("{says}, but {second_name} is {}", text(other)));
                    }
                }
            }
        }
    }
    for (resource, bound_text) in item["maxLimitRequestRatio"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let Some(bound) = parse(bound_text) else {
            continue;
        };
        let says = format!(
            "{resource} max limit to request ratio per {kind} is {}",
            text(bound_text)
        );
        let request = parse(&requests[resource]).filter(|r| r.0 != 0);
        match (parse(&limits[resource]), request) {
            (None, _) => errors.push(format!("{says}, but no limit is specified")),
            (_, None) => errors.push(format!(
                "{says}, but no request is specified or request is 0"
            )),
            (Some(limit), Some(request)) => {
                let ratio = limit.0 as f64 / request.0 as f64;
                if ratio > bound.0 as f64 / 1000.0 {
                    errors.push(format!("{says}, but provided ratio is {ratio:.6}"));
                }
            }
        }
    }
}

/// The pod's summed container requests or limits (for `Pod` items).
fn pod_total(pod: &Value, field: &str) -> Value {
    let mut sums: std::collections::BTreeMap<String, (quantity::Milli, bool)> = Default::default();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (resource, q) in c["resources"][field].as_object().into_iter().flatten() {
            if let Some(text) = q.as_str()
                && let Some(v) = quantity::parse(text)
            {
                let entry = sums.entry(resource.clone()).or_default();
                entry.0.0 += v.0;
                entry.1 |= quantity::is_binary(text);
            }
        }
    }
    Value::Object(
        sums.into_iter()
            .map(|(k, (v, binary))| (k, json!(quantity::format(v, binary))))
            .collect(),
    )
}

/// Enforces every `min`/`max`; the error is the reason the pod is forbidden (several are
/// listed as `[a, b]`, as upstream's aggregate error).
pub fn check(pod: &Value, ranges: &[Value]) -> Result<(), String> {
    let mut errors = Vec::new();
    for item in items(ranges, "Container") {
        for key in ["containers", "initContainers"] {
            for c in pod["spec"][key].as_array().into_iter().flatten() {
                check_bounds(
                    item,
                    "Container",
                    &c["resources"]["requests"],
                    &c["resources"]["limits"],
                    &mut errors,
                );
            }
        }
    }
    let (requests, limits) = (pod_total(pod, "requests"), pod_total(pod, "limits"));
    for item in items(ranges, "Pod") {
        check_bounds(item, "Pod", &requests, &limits, &mut errors);
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Value {
        json!({"spec": {"limits": [{"type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
            "min": {"cpu": "50m"}, "max": {"cpu": "1", "memory": "1Gi"}}]}})
    }

    #[test]
    fn defaults_land_on_containers_and_are_annotated() {
        let mut pod = json!({"metadata": {}, "spec": {"containers": [
            {"name": "web", "resources": {"limits": {"cpu": "800m"}, "requests": {"cpu": "800m"}}}]},
            "status": {"qosClass": "Burstable"}});
        set_defaults(&mut pod, &[range()]);
        let r = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(r["limits"], json!({"cpu": "800m", "memory": "256Mi"}));
        assert_eq!(r["requests"], json!({"cpu": "800m", "memory": "128Mi"}));
        assert_eq!(
            pod["metadata"]["annotations"][LIMIT_RANGER_ANNOTATION],
            "LimitRanger plugin set: memory request for container web; memory limit for container web"
        );
        assert!(pod["status"].get("qosClass").is_none());
        assert!(check(&pod, &[range()]).is_ok());
    }

    #[test]
    fn min_and_max_are_enforced_in_upstream_words() {
        let pod = |req: &str, lim: &str| {
            json!({"spec": {"containers": [{"name": "c",
            "resources": {"requests": {"cpu": req}, "limits": {"cpu": lim, "memory": "2Gi"}}}]}})
        };
        assert_eq!(
            check(&pod("10m", "500m"), &[range()]).unwrap_err(),
            "[minimum cpu usage per Container is 50m, but request is 10m, maximum memory usage per Container is 1Gi, but limit is 2Gi]"
        );
        assert_eq!(
            check(&json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}}), &[range()]).unwrap_err(),
            "[maximum cpu usage per Container is 1.  No limit is specified, maximum memory usage per Container is 1Gi.  No limit is specified]"
        );
        let pod_max = json!({"spec": {"limits": [{"type": "Pod", "max": {"cpu": "1"}}]}});
        let two = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "600m"}}},
            {"name": "b", "resources": {"limits": {"cpu": "600m"}}}]}});
        assert_eq!(
            check(&two, &[pod_max]).unwrap_err(),
            "maximum cpu usage per Pod is 1, but limit is 1200m"
        );
    }
}
