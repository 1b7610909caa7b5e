//! kube-apiserver's defaulting, applied to an object's JSON on every create and update before
//! it is decoded into its k8s-openapi type: the `SetDefaults_*` functions of
//! k8s.io/kubernetes/pkg/apis/{core,apps,discovery}/v1 (and their declarative `+default`
//! markers), the namespace label and service IP-family fields the strategies set, and the
//! `status` each kind has when created (e.g. a Service's `status: {loadBalancer: {}}`).
//!
//! Defaults only fill what is missing (the namespace label excepted), so applying them again
//! changes nothing: a re-apply or `kubectl diff` of an unchanged manifest stays quiet.

use serde_json::{Map, Value, json};

/// `v1.DefaultTerminationGracePeriodSeconds`.
const TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// The mode of secret, configMap, downwardAPI and projected volumes (0644).
const VOLUME_DEFAULT_MODE: i64 = 0o644;
/// `v1.DefaultClientIPServiceAffinitySeconds` (3 hours).
const CLIENT_IP_AFFINITY_SECONDS: i64 = 10_800;
/// The label every namespace carries, with its own name as value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Sets `key` of the object `v` to `default` if absent or null (a non-object `v` is left
/// alone: validation reports it).
fn set_default(v: &mut Value, key: &str, default: Value) {
    if let Some(map) = v.as_object_mut() {
        let slot = map.entry(key.to_string()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = default;
        }
    }
}

/// Like [`set_default`], and also when the value is an empty string (Go's zero value of a
/// string field is indistinguishable from unset).
fn set_default_str(v: &mut Value, key: &str, default: &str) {
    if v.get(key).is_some_and(|s| s.as_str() == Some("")) {
        v[key] = json!(default);
    }
    set_default(v, key, json!(default));
}

/// Like [`set_default`], and also when the value is 0 (an `int32` field without a pointer).
fn set_default_int(v: &mut Value, key: &str, default: i64) {
    if v.get(key).is_some_and(|n| n.as_i64() == Some(0)) {
        v[key] = json!(default);
    }
    set_default(v, key, json!(default));
}

/// The elements of the array at `v[key]`, if it is one.
fn each<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

// Each kind's defaults (its strategy's `defaults`; the object is a JSON object).

pub fn replica_set(obj: &mut Value) {
    let spec = spec_of(obj);
    set_default(spec, "replicas", json!(1));
    pod_template(spec);
    set_default(obj, "status", json!({}));
    set_default(&mut obj["status"], "replicas", json!(0));
}

pub fn endpoints(obj: &mut Value) {
    for subset in each(obj, "subsets") {
        for port in each(subset, "ports") {
            set_default_str(port, "protocol", "TCP");
        }
    }
}

pub fn endpoint_slice(obj: &mut Value) {
    for port in each(obj, "ports") {
        set_default(port, "name", json!(""));
        set_default(port, "protocol", json!("TCP"));
    }
}

pub fn persistent_volume(obj: &mut Value) {
    let spec = spec_of(obj);
    set_default_str(spec, "persistentVolumeReclaimPolicy", "Retain");
    set_default(spec, "volumeMode", json!("Filesystem"));
    set_default(obj, "status", json!({}));
    set_default_str(&mut obj["status"], "phase", "Pending");
}

pub fn persistent_volume_claim(obj: &mut Value) {
    set_default(spec_of(obj), "volumeMode", json!("Filesystem"));
    set_default(obj, "status", json!({}));
    set_default_str(&mut obj["status"], "phase", "Pending");
}

pub fn resource_quota(obj: &mut Value) {
    set_default(obj, "status", json!({}));
}

/// `SetDefaults_PriorityClass`.
pub fn priority_class(obj: &mut Value) {
    set_default_str(obj, "preemptionPolicy", "PreemptLowerPriority");
}

/// `SetDefaults_StorageClass`: `reclaimPolicy: Delete`, `volumeBindingMode: Immediate`.
pub fn storage_class(obj: &mut Value) {
    set_default_str(obj, "reclaimPolicy", "Delete");
    set_default_str(obj, "volumeBindingMode", "Immediate");
}

/// `SetDefaults_LimitRangeItem`: a `Container` item's `default` (limit) falls back to `max`,
/// its `defaultRequest` to `default`, then to `min`, resource by resource.
pub fn limit_range(obj: &mut Value) {
    for item in each(spec_of(obj), "limits") {
        if item["type"].as_str() != Some("Container") {
            continue;
        }
        for (fallback, field) in [
            ("max", "default"),
            ("default", "defaultRequest"),
            ("min", "defaultRequest"),
        ] {
            let Some(from) = item[fallback].as_object().cloned() else {
                continue;
            };
            set_default(item, field, json!({}));
            for (resource, quantity) in from {
                set_default(&mut item[field], &resource, quantity);
            }
        }
    }
}

/// `SetDefaults_{Mutating,Validating}Webhook` and `SetDefaults_Rule`: `failurePolicy: Fail`,
/// `matchPolicy: Equivalent`, empty selectors, `timeoutSeconds: 10`, rules' `scope: "*"` (and
/// a mutating webhook's `reinvocationPolicy: Never`, told apart by the kind).
pub fn webhook_configuration(obj: &mut Value) {
    let mutating = obj["kind"].as_str() == Some("MutatingWebhookConfiguration");
    for webhook in each(obj, "webhooks") {
        set_default_str(webhook, "failurePolicy", "Fail");
        set_default_str(webhook, "matchPolicy", "Equivalent");
        set_default(webhook, "namespaceSelector", json!({}));
        set_default(webhook, "objectSelector", json!({}));
        set_default(webhook, "timeoutSeconds", json!(10));
        if mutating {
            set_default_str(webhook, "reinvocationPolicy", "Never");
        }
        for rule in each(webhook, "rules") {
            set_default_str(rule, "scope", "*");
        }
    }
}

/// Kinds without defaults.
pub fn none(_: &mut Value) {}

/// `obj.spec`, created as `{}` if missing.
fn spec_of(obj: &mut Value) -> &mut Value {
    set_default(obj, "spec", json!({}));
    &mut obj["spec"]
}

/// `SetDefaults_Namespace` (the name label, always set, so a user cannot change or remove
/// it), the `kubernetes` finalizer and `SetDefaults_NamespaceStatus`.
pub fn namespace(obj: &mut Value) {
    set_default(spec_of(obj), "finalizers", json!(["kubernetes"]));
    if let Some(name) = obj["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(String::from)
    {
        if !obj["metadata"]["labels"].is_object() {
            obj["metadata"]["labels"] = json!({});
        }
        obj["metadata"]["labels"][NAMESPACE_NAME_LABEL] = json!(name);
    }
    let phase = if obj["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else {
        "Active"
    };
    obj["status"] = json!({ "phase": phase });
}

/// `SetDefaults_Secret`; `stringData` is write-only: merged into `data` (base64), not stored.
pub fn secret(obj: &mut Value) {
    set_default_str(obj, "type", "Opaque");
    if let Some(Value::Object(plain)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        use base64::Engine as _;
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in plain {
            let text = v.as_str().unwrap_or("").as_bytes().to_vec();
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

/// `SetDefaults_Service`, the IP-family fields the service REST storage fills in (a
/// single-stack IPv4 cluster), and the `status: {loadBalancer: {}}` every Service has.
pub fn service(obj: &mut Value) {
    let spec = spec_of(obj);
    set_default_str(spec, "sessionAffinity", "None");
    match spec["sessionAffinity"].as_str() {
        Some("None") => {
            if let Some(map) = spec.as_object_mut() {
                map.remove("sessionAffinityConfig");
            }
        }
        Some("ClientIP")
            if spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"].is_null() =>
        {
            spec["sessionAffinityConfig"] =
                json!({"clientIP": {"timeoutSeconds": CLIENT_IP_AFFINITY_SECONDS}});
        }
        _ => {}
    }
    set_default_str(spec, "type", "ClusterIP");
    for port in each(spec, "ports") {
        set_default_str(port, "protocol", "TCP");
        let target = &port["targetPort"];
        if target.is_null() || target.as_i64() == Some(0) || target.as_str() == Some("") {
            port["targetPort"] = port["port"].clone();
        }
    }
    let kind = spec["type"].as_str().unwrap_or_default().to_string();
    let external_ips = spec["externalIPs"]
        .as_array()
        .is_some_and(|ips| !ips.is_empty());
    let externally_accessible = matches!(kind.as_str(), "LoadBalancer" | "NodePort")
        || (kind == "ClusterIP" && external_ips);
    if externally_accessible {
        set_default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if kind != "ExternalName" {
        // A headless service without a selector may have both families; the rest one.
        let headless = spec["clusterIP"].as_str() == Some("None");
        let selectorless = spec["selector"].as_object().is_none_or(Map::is_empty);
        let policy = if headless && selectorless {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        set_default(spec, "ipFamilyPolicy", json!(policy));
        let families = if spec["ipFamilyPolicy"] == "SingleStack" || !(headless && selectorless) {
            json!(["IPv4"])
        } else {
            json!(["IPv4", "IPv6"])
        };
        if spec["ipFamilies"].as_array().is_none_or(Vec::is_empty) {
            spec["ipFamilies"] = families;
        }
    }
    set_default(obj, "status", json!({}));
    set_default(&mut obj["status"], "loadBalancer", json!({}));
}

/// `SetDefaults_Deployment` and the pod template's defaults; a new Deployment's `status: {}`.
pub fn deployment(obj: &mut Value) {
    let spec = spec_of(obj);
    set_default(spec, "replicas", json!(1));
    set_default(spec, "strategy", json!({}));
    let strategy = &mut spec["strategy"];
    set_default_str(strategy, "type", "RollingUpdate");
    if strategy["type"] == "RollingUpdate" {
        set_default(strategy, "rollingUpdate", json!({}));
        let rolling = &mut strategy["rollingUpdate"];
        set_default(rolling, "maxUnavailable", json!("25%"));
        set_default(rolling, "maxSurge", json!("25%"));
    }
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    pod_template(spec);
    set_default(obj, "status", json!({}));
}

/// The defaults of `spec.template.spec` (a pod template gets `SetDefaults_PodSpec` and the
/// container defaults, not the Pod-only ones).
fn pod_template(spec: &mut Value) {
    if let Some(pod_spec) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .filter(|s| s.is_object())
    {
        pod_spec_defaults(pod_spec);
    }
}

/// `SetDefaults_Pod` (requests from limits, `enableServiceLinks`, host ports of host-network
/// pods), the pod spec's defaults, and a new pod's `status: {phase: Pending, qosClass: …}`.
pub fn pod(obj: &mut Value) {
    let spec = spec_of(obj);
    for key in ["containers", "initContainers"] {
        for c in each(spec, key) {
            requests_from_limits(c);
        }
    }
    set_default(spec, "enableServiceLinks", json!(true));
    if spec["hostNetwork"].as_bool() == Some(true) {
        for key in ["containers", "initContainers"] {
            for c in each(spec, key) {
                for port in each(c, "ports") {
                    if port["hostPort"].as_i64().unwrap_or(0) == 0 {
                        port["hostPort"] = port["containerPort"].clone();
                    }
                }
            }
        }
    }
    pod_spec_defaults(spec);
    let qos = qos_class(&obj["spec"]);
    set_default(obj, "status", json!({}));
    set_default_str(&mut obj["status"], "phase", "Pending");
    set_default_str(&mut obj["status"], "qosClass", qos);
}

/// Requests default to the limits a container sets without requesting.
fn requests_from_limits(container: &mut Value) {
    let Some(limits) = container["resources"]["limits"].as_object().cloned() else {
        return;
    };
    if !container["resources"]["requests"].is_object() {
        container["resources"]["requests"] = json!({});
    }
    for (name, quantity) in limits {
        set_default(&mut container["resources"]["requests"], &name, quantity);
    }
}

/// `SetDefaults_PodSpec` and the defaults of everything in a pod spec: containers (all three
/// kinds), their ports, probes, lifecycle hooks and env, and volumes.
fn pod_spec_defaults(spec: &mut Value) {
    set_default_str(spec, "dnsPolicy", "ClusterFirst");
    set_default_str(spec, "restartPolicy", "Always");
    set_default(spec, "securityContext", json!({}));
    set_default(
        spec,
        "terminationGracePeriodSeconds",
        json!(TERMINATION_GRACE_PERIOD_SECONDS),
    );
    set_default_str(spec, "schedulerName", "default-scheduler");
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in each(spec, key) {
            container(c);
        }
    }
    for v in each(spec, "volumes") {
        volume(v);
    }
}

/// `SetDefaults_Container` (pull policy by tag, termination message), the ports' protocol,
/// `resources: {}` (a struct in Go, always written), probes, hooks and env field refs.
fn container(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    let image = c["image"].as_str().unwrap_or_default().to_string();
    set_default_str(c, "imagePullPolicy", image_pull_policy(&image));
    set_default_str(c, "terminationMessagePath", "/dev/termination-log");
    set_default_str(c, "terminationMessagePolicy", "File");
    set_default(c, "resources", json!({}));
    for port in each(c, "ports") {
        set_default_str(port, "protocol", "TCP");
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(key).filter(|p| p.is_object()) {
            set_default_int(probe, "timeoutSeconds", 1);
            set_default_int(probe, "periodSeconds", 10);
            set_default_int(probe, "successThreshold", 1);
            set_default_int(probe, "failureThreshold", 3);
            handler(probe);
            if let Some(grpc) = probe.get_mut("grpc").filter(|g| g.is_object()) {
                set_default(grpc, "service", json!(""));
            }
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = c
            .get_mut("lifecycle")
            .and_then(|l| l.get_mut(hook))
            .filter(|h| h.is_object())
        {
            handler(h);
        }
    }
    for env in each(c, "env") {
        if let Some(field_ref) = env.get_mut("valueFrom").and_then(|v| v.get_mut("fieldRef")) {
            set_default_str(field_ref, "apiVersion", "v1");
        }
    }
}

/// `SetDefaults_HTTPGetAction` of a probe's or hook's `httpGet`.
fn handler(h: &mut Value) {
    if let Some(get) = h.get_mut("httpGet").filter(|g| g.is_object()) {
        set_default_str(get, "path", "/");
        set_default_str(get, "scheme", "HTTP");
    }
}

/// `SetDefaults_Volume` (no source: an `emptyDir`) and the defaults of its source.
fn volume(v: &mut Value) {
    let Some(map) = v.as_object_mut() else {
        return;
    };
    if !map.iter().any(|(k, v)| k != "name" && !v.is_null()) {
        map.insert("emptyDir".into(), json!({}));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(source).filter(|s| s.is_object()) {
            set_default(s, "defaultMode", json!(VOLUME_DEFAULT_MODE));
        }
    }
    if let Some(downward) = v.get_mut("downwardAPI") {
        field_refs(downward);
    }
    if let Some(host_path) = v.get_mut("hostPath").filter(|h| h.is_object()) {
        set_default(host_path, "type", json!(""));
    }
    if let Some(projected) = v.get_mut("projected") {
        for source in each(projected, "sources") {
            if let Some(token) = source
                .get_mut("serviceAccountToken")
                .filter(|t| t.is_object())
            {
                set_default(token, "expirationSeconds", json!(3600));
            }
            if let Some(downward) = source.get_mut("downwardAPI") {
                field_refs(downward);
            }
        }
    }
    if let Some(claim_spec) = v
        .get_mut("ephemeral")
        .and_then(|e| e.get_mut("volumeClaimTemplate"))
        .and_then(|t| t.get_mut("spec"))
        .filter(|s| s.is_object())
    {
        set_default(claim_spec, "volumeMode", json!("Filesystem"));
    }
}

/// `SetDefaults_ObjectFieldSelector` of a downward API's items.
fn field_refs(downward: &mut Value) {
    for item in each(downward, "items") {
        if let Some(field_ref) = item.get_mut("fieldRef").filter(|f| f.is_object()) {
            set_default_str(field_ref, "apiVersion", "v1");
        }
    }
}

/// `Always` for an image tagged `latest` or not tagged (nor pinned by digest), else
/// `IfNotPresent` (an unparseable reference included), as `parsers.ParseImageName` decides.
pub fn image_pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry's port).
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    let tag = last_segment.rsplit_once(':').map(|(_, tag)| tag);
    let repository = match tag {
        Some(tag) => &name[..name.len() - tag.len() - 1],
        None => name,
    };
    // Docker references have lower-case repositories; anything else fails to parse.
    let path = repository
        .split_once('/')
        .map_or(repository, |(first, rest)| {
            if first.contains(['.', ':']) || first == "localhost" {
                rest
            } else {
                repository
            }
        });
    let valid = !path.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        && tag.is_none_or(|t| !t.is_empty());
    match (valid, tag, digest) {
        (false, ..) => "IfNotPresent",
        (true, Some("latest"), _) | (true, None, None) => "Always",
        _ => "IfNotPresent",
    }
}

/// A Kubernetes quantity in billionths (`100m` = 100_000_000, `1Ki` = 1024e9), rounded up;
/// None if it does not parse or is out of range.
pub fn quantity_nanos(q: &str) -> Option<i128> {
    let q = q.trim();
    let (sign, q) = match q.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, q.strip_prefix('+').unwrap_or(q)),
    };
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || whole.len() + fraction.len() > 30 {
        return None;
    }
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    // value = digits * 10^-fraction.len() * multiplier
    let (base2, exp10): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        s if s.starts_with(['e', 'E']) => (0, s[1..].parse().ok()?),
        _ => return None,
    };
    let scaled = digits.checked_mul(1i128.checked_shl(base2)?)?;
    let exp = exp10 + 9 - fraction.len() as i32;
    let value = if exp >= 0 {
        scaled.checked_mul(10i128.checked_pow(exp.try_into().ok()?)?)?
    } else {
        let div = 10i128.checked_pow((-exp).try_into().ok()?)?;
        (scaled + div - 1) / div
    };
    Some(sign * value)
}

/// The pod's QoS class, as `qos.ComputePodQOS`: BestEffort without cpu/memory requests or
/// limits; Guaranteed when every container limits both and requests equal limits; else
/// Burstable.
pub fn qos_class(spec: &Value) -> &'static str {
    use std::collections::BTreeMap;
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    let containers = ["containers", "initContainers"]
        .into_iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten());
    for c in containers {
        let positive = |list: &'static str| {
            c["resources"][list]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(name, _)| matches!(name.as_str(), "cpu" | "memory"))
                .filter_map(|(name, q)| {
                    let n = quantity_nanos(q.as_str()?)
                        .or_else(|| q.as_i64().map(|i| i128::from(i) * 1_000_000_000))?;
                    (n > 0).then_some((name.as_str(), n))
                })
                .collect::<Vec<_>>()
        };
        for (name, n) in positive("requests") {
            *requests.entry(name).or_default() += n;
        }
        let found = positive("limits");
        for (name, n) in &found {
            *limits.entry(name).or_default() += n;
        }
        let has = |r: &str| found.iter().any(|(name, _)| *name == r);
        if !(has("cpu") && has("memory")) {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(name, r)| limits.get(name) == Some(r))
    {
        return "Guaranteed";
    }
    "Burstable"
}

/// `SetDefaults_NodeStatus` (allocatable = capacity) and the status a new Node has: the
/// `daemonEndpoints` and `nodeInfo` structs Go always writes.
pub fn node(obj: &mut Value) {
    spec_of(obj);
    set_default(obj, "status", json!({}));
    let status = &mut obj["status"];
    if status["allocatable"].is_null() && status["capacity"].is_object() {
        status["allocatable"] = status["capacity"].clone();
    }
    set_default(status, "daemonEndpoints", json!({}));
    set_default(&mut status["daemonEndpoints"], "kubeletEndpoint", json!({}));
    set_default(
        &mut status["daemonEndpoints"]["kubeletEndpoint"],
        "Port",
        json!(0),
    );
    set_default(status, "nodeInfo", json!({}));
    for field in [
        "architecture",
        "bootID",
        "containerRuntimeVersion",
        "kernelVersion",
        "kubeProxyVersion",
        "kubeletVersion",
        "machineID",
        "operatingSystem",
        "osImage",
        "systemUUID",
    ] {
        set_default(&mut status["nodeInfo"], field, json!(""));
    }
}

#[cfg(test)]
mod tests;
