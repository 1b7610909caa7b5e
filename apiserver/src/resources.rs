//! The registry of served resources, built from k8s-openapi types: names, scope, typed
//! validation (decode into the k8s-openapi struct; `fieldValidation=Strict` rejects fields the
//! struct does not know), per-kind validation and defaulting, and server-side Table columns.

use std::any::TypeId;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::schemars::{JsonSchema, Schema, SchemaGenerator};
use k8s_openapi::{ListableResource, NamespaceResourceScope, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::selector::LabelSelector;

/// The current wall-clock time (second precision, as Kubernetes timestamps have).
/// A random (version 4) UUID: object UIDs and audit IDs.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

pub fn now() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Which Table printer a kind uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Printer {
    Namespace,
    ConfigMap,
    Secret,
    Service,
    Pod,
    Deployment,
    Node,
    Event,
    Endpoints,
    ReplicaSet,
    PersistentVolume,
    PersistentVolumeClaim,
    ResourceQuota,
    ServiceAccount,
    Lease,
    EndpointSlice,
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    /// The plural, lower-case URL segment ("deployments").
    pub resource: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub singular: &'static str,
    pub printer: Printer,
    /// Decode into the k8s-openapi type and encode back: the normalised object, with fields the
    /// type does not know dropped. Errors are decode errors.
    pub normalize: fn(&Value) -> Result<Value, String>,
    /// Adds the kind's OpenAPI schema (and every schema it refers to) to the generator's
    /// definitions; returns the `$ref` to it.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

fn normalize<K: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, String> {
    let typed: K = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn info<K>(
    short_names: &'static [&'static str],
    singular: &'static str,
    printer: Printer,
) -> ResourceInfo
where
    K: Resource + ListableResource + DeserializeOwned + Serialize + JsonSchema + 'static,
    K::Scope: 'static,
{
    ResourceInfo {
        group: K::GROUP,
        version: K::VERSION,
        resource: K::URL_PATH_SEGMENT,
        kind: K::KIND,
        list_kind: K::LIST_KIND,
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        short_names,
        singular,
        printer,
        normalize: normalize::<K>,
        schema: |generator| generator.subschema_for::<K>(),
    }
}

/// Every resource this server serves.
pub fn registry() -> Vec<ResourceInfo> {
    vec![
        info::<Namespace>(&["ns"], "namespace", Printer::Namespace),
        info::<ConfigMap>(&["cm"], "configmap", Printer::ConfigMap),
        info::<Secret>(&[], "secret", Printer::Secret),
        info::<Service>(&["svc"], "service", Printer::Service),
        info::<Pod>(&["po"], "pod", Printer::Pod),
        info::<Deployment>(&["deploy"], "deployment", Printer::Deployment),
        info::<Node>(&["no"], "node", Printer::Node),
        info::<Event>(&["ev"], "event", Printer::Event),
        info::<Endpoints>(&["ep"], "endpoints", Printer::Endpoints),
        info::<ReplicaSet>(&["rs"], "replicaset", Printer::ReplicaSet),
        info::<PersistentVolume>(&["pv"], "persistentvolume", Printer::PersistentVolume),
        info::<PersistentVolumeClaim>(
            &["pvc"],
            "persistentvolumeclaim",
            Printer::PersistentVolumeClaim,
        ),
        info::<ResourceQuota>(&["quota"], "resourcequota", Printer::ResourceQuota),
        info::<ServiceAccount>(&["sa"], "serviceaccount", Printer::ServiceAccount),
        info::<Lease>(&[], "lease", Printer::Lease),
        info::<EndpointSlice>(&[], "endpointslice", Printer::EndpointSlice),
    ]
}

/// The namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Fields present in `given` (non-null) but absent from the normalised `known`: the paths
/// `fieldValidation=Strict` rejects, e.g. `spec.foo`.
pub fn unknown_fields(given: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown_fields(value, kv, &sub, out),
                    None if value.is_null() => {}
                    // Empty maps and lists may be dropped by the typed encoding.
                    None if value.as_object().is_some_and(|m| m.is_empty())
                        || value.as_array().is_some_and(|a| a.is_empty()) => {}
                    None => out.push(sub),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                unknown_fields(gv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a name as kube-apiserver does for `info`: DNS-1123 labels for namespaces and
/// services, DNS-1123 subdomains for the rest.
pub fn validate_name(info: &ResourceInfo, name: &str) -> Option<String> {
    if matches!(info.printer, Printer::Namespace | Printer::Service) {
        if !is_dns1123_label(name) {
            return Some(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
                 '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or \
                 '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                    .to_string(),
            );
        }
        return None;
    }
    if name.is_empty() || name.len() > 253 || !name.split('.').all(is_dns1123_label) {
        return Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .to_string(),
        );
    }
    None
}

fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<(String, String)>) {
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if containers.is_empty() {
        causes.push((format!("{path}.containers"), "Required value".into()));
    }
    for (i, c) in containers.iter().enumerate() {
        if c["name"].as_str().unwrap_or("").is_empty() {
            causes.push((
                format!("{path}.containers[{i}].name"),
                "Required value".into(),
            ));
        }
        if c["image"].as_str().unwrap_or("").is_empty() {
            causes.push((
                format!("{path}.containers[{i}].image"),
                "Required value".into(),
            ));
        }
    }
}

/// Kind-specific validation (the subset of kube-apiserver's this slice enforces).
pub fn validate(info: &ResourceInfo, obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    match info.printer {
        Printer::Pod => validate_pod_spec(&obj["spec"], "spec", &mut causes),
        Printer::Deployment | Printer::ReplicaSet => {
            let selector = &obj["spec"]["selector"];
            if !selector.is_object() {
                causes.push(("spec.selector".into(), "Required value".into()));
            } else {
                let labels = crate::selector::labels_of(&obj["spec"]["template"]);
                if !LabelSelector::from_object(selector).matches(&labels) {
                    causes.push((
                        "spec.template.metadata.labels".into(),
                        "Invalid value: `selector` does not match template `labels`".into(),
                    ));
                }
            }
            validate_pod_spec(
                &obj["spec"]["template"]["spec"],
                "spec.template.spec",
                &mut causes,
            );
        }
        Printer::Service => {
            for (i, port) in obj["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let p = port["port"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&p) {
                    causes.push((
                        format!("spec.ports[{i}].port"),
                        format!("Invalid value: {p}: must be between 1 and 65535, inclusive"),
                    ));
                }
            }
        }
        _ => {}
    }
    causes
}

/// Fills in kube-apiserver's defaults (see [`crate::defaults`]).
pub fn apply_defaults(info: &ResourceInfo, obj: &mut Value) {
    crate::defaults::apply(info.printer, obj);
}

/// Whether this kind has a `status` that the main resource's writes must not change.
pub fn has_status(info: &ResourceInfo) -> bool {
    matches!(
        info.printer,
        Printer::Pod
            | Printer::Deployment
            | Printer::Service
            | Printer::Node
            | Printer::ReplicaSet
            | Printer::PersistentVolume
            | Printer::PersistentVolumeClaim
            | Printer::ResourceQuota
            | Printer::Namespace
    )
}

// ---- Tables ----

fn column(name: &str, kind: &str, format: &str, priority: i32) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": "", "priority": priority})
}

pub fn columns(printer: Printer) -> Vec<Value> {
    let name = column("Name", "string", "name", 0);
    let age = column("Age", "string", "", 0);
    let s = |n: &str, p: i32| column(n, "string", "", p);
    match printer {
        Printer::Namespace => vec![name, s("Status", 0), age],
        Printer::ConfigMap => vec![name, column("Data", "integer", "", 0), age],
        Printer::Secret => vec![name, s("Type", 0), column("Data", "integer", "", 0), age],
        Printer::Service => vec![
            name,
            s("Type", 0),
            s("Cluster-IP", 0),
            s("External-IP", 0),
            s("Port(s)", 0),
            age,
            s("Selector", 1),
        ],
        Printer::Pod => vec![
            name,
            s("Ready", 0),
            s("Status", 0),
            column("Restarts", "string", "", 0),
            age,
            s("IP", 1),
            s("Node", 1),
            s("Nominated Node", 1),
            s("Readiness Gates", 1),
        ],
        Printer::Deployment => [
            vec![
                name,
                s("Ready", 0),
                column("Up-to-date", "integer", "", 0),
                column("Available", "integer", "", 0),
                age,
            ],
            workload_columns(),
        ]
        .concat(),
        Printer::Node => vec![
            name,
            s("Status", 0),
            s("Roles", 0),
            age,
            s("Version", 0),
            s("Internal-IP", 1),
            s("External-IP", 1),
            s("OS-Image", 1),
            s("Kernel-Version", 1),
            s("Container-Runtime", 1),
        ],
        Printer::Event => vec![
            s("Last Seen", 0),
            s("Type", 0),
            s("Reason", 0),
            s("Object", 0),
            s("Subobject", 1),
            s("Source", 1),
            s("Message", 0),
            s("First Seen", 1),
            column("Count", "integer", "", 1),
            column("Name", "string", "name", 1),
        ],
        Printer::Endpoints => vec![name, s("Endpoints", 0), age],
        Printer::ReplicaSet => [
            vec![
                name,
                column("Desired", "integer", "", 0),
                column("Current", "integer", "", 0),
                column("Ready", "integer", "", 0),
                age,
            ],
            workload_columns(),
        ]
        .concat(),
        Printer::PersistentVolume => vec![
            name,
            s("Capacity", 0),
            s("Access Modes", 0),
            s("Reclaim Policy", 0),
            s("Status", 0),
            s("Claim", 0),
            s("StorageClass", 0),
            s("VolumeAttributesClass", 0),
            s("Reason", 0),
            age,
            s("VolumeMode", 1),
        ],
        Printer::PersistentVolumeClaim => vec![
            name,
            s("Status", 0),
            s("Volume", 0),
            s("Capacity", 0),
            s("Access Modes", 0),
            s("StorageClass", 0),
            s("VolumeAttributesClass", 0),
            age,
            s("VolumeMode", 1),
        ],
        Printer::ResourceQuota => vec![name, age, s("Request", 0), s("Limit", 0)],
        Printer::ServiceAccount => vec![name, column("Secrets", "string", "", 0), age],
        Printer::Lease => vec![name, s("Holder", 0), age],
        Printer::EndpointSlice => vec![
            name,
            s("AddressType", 0),
            s("Ports", 0),
            s("Endpoints", 0),
            age,
        ],
    }
}

/// The `-o wide` columns Deployments and ReplicaSets share (kube-apiserver's printers).
fn workload_columns() -> Vec<Value> {
    ["Containers", "Images", "Selector"]
        .into_iter()
        .map(|n| column(n, "string", "", 1))
        .collect()
}

/// The cells of [`workload_columns`]: container names, images, and the selector.
fn workload_cells(spec: &Value) -> Vec<Value> {
    let tpl = &spec["template"]["spec"];
    vec![
        json!(join_containers(tpl, "name")),
        json!(join_containers(tpl, "image")),
        json!(none_if_empty(
            LabelSelector::from_object(&spec["selector"]).to_string_form()
        )),
    ]
}

/// An empty string as `<unset>` (kubectl's VOLUMEATTRIBUTESCLASS column).
fn unset_if_empty(s: String) -> String {
    if s.is_empty() { "<unset>".into() } else { s }
}

fn access_modes(v: &Value) -> String {
    let modes: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    modes.join(",")
}

/// Up to three `ip:port` endpoints, then "+ N more..." as kube-apiserver prints them.
fn endpoint_list(addresses: Vec<String>) -> String {
    if addresses.is_empty() {
        return "<none>".into();
    }
    let mut out = addresses
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if addresses.len() > 3 {
        out.push_str(&format!(" + {} more...", addresses.len() - 3));
    }
    out
}

/// kube's `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let mins = secs / 60;
    if mins < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{mins}m")
        } else {
            format!("{mins}m{s}s")
        };
    }
    if mins < 180 {
        return format!("{mins}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = mins % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if days < 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    format!("{}y", days / 365)
}

fn age(obj: &Value, now: Timestamp) -> String {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|created| human_duration(now.as_second() - created.as_second()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn count(v: &Value) -> usize {
    v.as_object().map(|m| m.len()).unwrap_or(0)
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn join_containers(spec: &Value, field: &str) -> String {
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c[field].as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The cells of one object's row.
pub fn cells(printer: Printer, obj: &Value, now: Timestamp) -> Vec<Value> {
    let name = json!(obj["metadata"]["name"].as_str().unwrap_or(""));
    let age = json!(age(obj, now));
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_string();
    match printer {
        Printer::Namespace => vec![name, json!(str_of(&obj["status"]["phase"])), age],
        Printer::ConfigMap => {
            vec![
                name,
                json!(count(&obj["data"]) + count(&obj["binaryData"])),
                age,
            ]
        }
        Printer::Secret => {
            vec![
                name,
                json!(str_of(&obj["type"])),
                json!(count(&obj["data"])),
                age,
            ]
        }
        Printer::Service => {
            let spec = &obj["spec"];
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect();
            let selector: Vec<String> = spec["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            let external: Vec<String> = spec["externalIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            vec![
                name,
                json!(str_of(&spec["type"])),
                json!(none_if_empty(str_of(&spec["clusterIP"]))),
                json!(none_if_empty(external.join(","))),
                json!(none_if_empty(ports.join(","))),
                age,
                json!(none_if_empty(selector.join(","))),
            ]
        }
        Printer::Pod => {
            let spec = &obj["spec"];
            let status = &obj["status"];
            let total = spec["containers"].as_array().map(Vec::len).unwrap_or(0);
            let statuses = status["containerStatuses"].as_array();
            let ready = statuses
                .into_iter()
                .flatten()
                .filter(|s| s["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = statuses
                .into_iter()
                .flatten()
                .map(|s| s["restartCount"].as_i64().unwrap_or(0))
                .sum();
            let mut phase = status["reason"]
                .as_str()
                .or(status["phase"].as_str())
                .unwrap_or("Pending")
                .to_string();
            if obj["metadata"]["deletionTimestamp"].is_string() {
                phase = "Terminating".into();
            }
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(phase),
                json!(restarts.to_string()),
                age,
                json!(none_if_empty(str_of(&status["podIP"]))),
                json!(none_if_empty(str_of(&spec["nodeName"]))),
                json!(none_if_empty(str_of(&status["nominatedNodeName"]))),
                json!("<none>"),
            ]
        }
        Printer::Deployment => {
            let spec = &obj["spec"];
            let status = &obj["status"];
            let n = |v: &Value| v.as_i64().unwrap_or(0);
            let ready = format!("{}/{}", n(&status["readyReplicas"]), n(&spec["replicas"]));
            [
                vec![
                    name,
                    json!(ready),
                    json!(n(&status["updatedReplicas"])),
                    json!(n(&status["availableReplicas"])),
                    age,
                ],
                workload_cells(spec),
            ]
            .concat()
        }
        Printer::ReplicaSet => {
            let spec = &obj["spec"];
            let status = &obj["status"];
            let n = |v: &Value| v.as_i64().unwrap_or(0);
            [
                vec![
                    name,
                    json!(n(&spec["replicas"])),
                    json!(n(&status["replicas"])),
                    json!(n(&status["readyReplicas"])),
                    age,
                ],
                workload_cells(spec),
            ]
            .concat()
        }
        Printer::Node => {
            let status = &obj["status"];
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["status"].as_str() == Some("True"));
            let mut state = match ready {
                Some(true) => "Ready".to_string(),
                Some(false) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if obj["spec"]["unschedulable"].as_bool() == Some(true) {
                state.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = obj["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .map(String::from)
                .collect();
            roles.sort();
            let address = |kind: &str| {
                status["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == kind)
                    .map(|a| str_of(&a["address"]))
                    .unwrap_or_default()
            };
            let info = &status["nodeInfo"];
            // kubectl's printer: an empty value (a new Node's `nodeInfo`) is unknown too.
            let or_unknown = |v: &Value| {
                v.as_str()
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| "<unknown>".to_string(), String::from)
            };
            vec![
                name,
                json!(state),
                json!(none_if_empty(roles.join(","))),
                age,
                json!(str_of(&info["kubeletVersion"])),
                json!(none_if_empty(address("InternalIP"))),
                json!(none_if_empty(address("ExternalIP"))),
                json!(or_unknown(&info["osImage"])),
                json!(or_unknown(&info["kernelVersion"])),
                json!(or_unknown(&info["containerRuntimeVersion"])),
            ]
        }
        Printer::Event => {
            let ts = |v: &Value| {
                v.as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .map(|t| human_duration(now.as_second() - t.as_second()))
            };
            let last = ts(&obj["lastTimestamp"])
                .or_else(|| ts(&obj["eventTime"]))
                .or_else(|| ts(&obj["metadata"]["creationTimestamp"]))
                .unwrap_or_else(|| "<unknown>".into());
            let first = ts(&obj["firstTimestamp"])
                .or_else(|| ts(&obj["eventTime"]))
                .unwrap_or_else(|| "<unknown>".into());
            let io = &obj["involvedObject"];
            let source = match (
                str_of(&obj["source"]["component"]),
                str_of(&obj["source"]["host"]),
            ) {
                (c, h) if h.is_empty() => c,
                (c, h) => format!("{c}, {h}"),
            };
            vec![
                json!(last),
                json!(str_of(&obj["type"])),
                json!(str_of(&obj["reason"])),
                json!(format!(
                    "{}/{}",
                    str_of(&io["kind"]).to_lowercase(),
                    str_of(&io["name"])
                )),
                json!(str_of(&io["fieldPath"])),
                json!(source),
                json!(str_of(&obj["message"])),
                json!(first),
                json!(obj["count"].as_i64().unwrap_or(1)),
                name,
            ]
        }
        Printer::Endpoints => {
            let mut addrs = Vec::new();
            for subset in obj["subsets"].as_array().into_iter().flatten() {
                let ports: Vec<i64> = subset["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["port"].as_i64())
                    .collect();
                for a in subset["addresses"].as_array().into_iter().flatten() {
                    let ip = str_of(&a["ip"]);
                    if ports.is_empty() {
                        addrs.push(ip.clone());
                    }
                    for p in &ports {
                        addrs.push(format!("{ip}:{p}"));
                    }
                }
            }
            vec![name, json!(endpoint_list(addrs)), age]
        }
        Printer::EndpointSlice => {
            let ports: Vec<String> = obj["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["port"].as_i64().map(|p| p.to_string()))
                .collect();
            let addrs: Vec<String> = obj["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            let ports = if obj["ports"].is_array() {
                none_if_empty(ports.join(","))
            } else {
                "<unset>".into()
            };
            vec![
                name,
                json!(str_of(&obj["addressType"])),
                json!(ports),
                json!(endpoint_list(addrs)),
                age,
            ]
        }
        Printer::PersistentVolume => {
            let spec = &obj["spec"];
            let claim = &spec["claimRef"];
            let claim = if claim.is_object() {
                format!("{}/{}", str_of(&claim["namespace"]), str_of(&claim["name"]))
            } else {
                String::new()
            };
            vec![
                name,
                json!(str_of(&spec["capacity"]["storage"])),
                json!(access_modes(&spec["accessModes"])),
                json!(str_of(&spec["persistentVolumeReclaimPolicy"])),
                json!(str_of(&obj["status"]["phase"])),
                json!(claim),
                json!(str_of(&spec["storageClassName"])),
                json!(unset_if_empty(str_of(&spec["volumeAttributesClassName"]))),
                json!(str_of(&obj["status"]["reason"])),
                age,
                json!(str_of(&spec["volumeMode"])),
            ]
        }
        Printer::PersistentVolumeClaim => {
            let spec = &obj["spec"];
            let status = &obj["status"];
            let bound = !str_of(&spec["volumeName"]).is_empty();
            vec![
                name,
                json!(str_of(&status["phase"])),
                json!(str_of(&spec["volumeName"])),
                json!(if bound {
                    str_of(&status["capacity"]["storage"])
                } else {
                    String::new()
                }),
                json!(if bound {
                    access_modes(&status["accessModes"])
                } else {
                    String::new()
                }),
                json!(str_of(&spec["storageClassName"])),
                json!(unset_if_empty(str_of(&spec["volumeAttributesClassName"]))),
                age,
                json!(str_of(&spec["volumeMode"])),
            ]
        }
        Printer::ResourceQuota => {
            let hard = &obj["spec"]["hard"];
            let used = &obj["status"]["used"];
            let (mut requests, mut limits) = (Vec::new(), Vec::new());
            let mut keys: Vec<&String> = hard
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            for k in keys {
                let cell = format!(
                    "{k}: {}/{}",
                    used[k].as_str().unwrap_or("0"),
                    hard[k].as_str().unwrap_or("")
                );
                if k.starts_with("limits.") {
                    limits.push(cell);
                } else {
                    requests.push(cell);
                }
            }
            vec![
                name,
                age,
                json!(requests.join(", ")),
                json!(limits.join(", ")),
            ]
        }
        Printer::ServiceAccount => {
            let secrets = obj["secrets"].as_array().map(Vec::len).unwrap_or(0);
            vec![name, json!(secrets.to_string()), age]
        }
        Printer::Lease => vec![name, json!(str_of(&obj["spec"]["holderIdentity"])), age],
    }
}

/// A `meta.k8s.io/v1 Table` of `objects`; each row carries the object's metadata as a
/// `PartialObjectMetadata` (kubectl reads NAMESPACE and labels from it).
pub fn table(
    printer: Printer,
    objects: &[Value],
    resource_version: &str,
    cont: Option<&str>,
    include_object: bool,
) -> Value {
    let now = now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let object = if include_object {
                obj.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                       "metadata": obj["metadata"]})
            };
            json!({"cells": cells(printer, obj, now), "object": object})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(cont) = cont {
        metadata["continue"] = json!(cont);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
           "columnDefinitions": columns(printer), "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_come_from_the_types() {
        let reg = registry();
        let deploy = reg.iter().find(|r| r.kind == "Deployment").unwrap();
        assert_eq!(
            (
                deploy.group,
                deploy.version,
                deploy.resource,
                deploy.namespaced
            ),
            ("apps", "v1", "deployments", true)
        );
        let ns = reg.iter().find(|r| r.kind == "Namespace").unwrap();
        assert!(!ns.namespaced);
    }

    #[test]
    fn strict_validation_names_unknown_fields() {
        let reg = registry();
        let cm = reg.iter().find(|r| r.kind == "ConfigMap").unwrap();
        let given = json!({"metadata": {"name": "a", "bogus": 1}, "data": {"k": "v"}, "spek": {}});
        let known = (cm.normalize)(&given).unwrap();
        let mut unknown = Vec::new();
        unknown_fields(&given, &known, "", &mut unknown);
        assert_eq!(unknown, vec!["metadata.bogus".to_string()]);
    }

    #[test]
    fn names_and_ages() {
        let reg = registry();
        let ns = reg.iter().find(|r| r.kind == "Namespace").unwrap();
        let cm = reg.iter().find(|r| r.kind == "ConfigMap").unwrap();
        assert!(validate_name(ns, "a.b").is_some());
        assert!(validate_name(cm, "a.b").is_none());
        assert!(validate_name(cm, "Upper").is_some());
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(3 * 86400), "3d");
    }
}
