//! Server-side Tables (`Accept: application/json;as=Table`): each kind's columns and cells as
//! kubectl's printers show them (kube-apiserver's `TableConvertor`s).

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::registry::resources::now;
use crate::selector::LabelSelector;

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
    LimitRange,
    PriorityClass,
    StorageClass,
    WebhookConfiguration,
    NetworkPolicy,
}

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
        Printer::LimitRange => vec![name, s("Created At", 0)],
        Printer::NetworkPolicy => vec![name, s("Pod-Selector", 0), age],
        Printer::WebhookConfiguration => vec![name, column("Webhooks", "integer", "", 0), age],
        Printer::PriorityClass => vec![
            name,
            column("Value", "integer", "", 0),
            column("Global-Default", "boolean", "", 0),
            age,
            s("PreemptionPolicy", 0),
        ],
        Printer::StorageClass => vec![
            name,
            s("Provisioner", 0),
            s("ReclaimPolicy", 0),
            s("VolumeBindingMode", 0),
            s("AllowVolumeExpansion", 0),
            age,
        ],
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
        Printer::LimitRange => vec![name, obj["metadata"]["creationTimestamp"].clone()],
        Printer::NetworkPolicy => {
            // kubectl's FormatLabelSelector for the common case of matchLabels.
            let labels: Vec<String> = obj["spec"]["podSelector"]["matchLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            let selector = if labels.is_empty() {
                "<none>".to_string()
            } else {
                labels.join(",")
            };
            vec![name, json!(selector), age]
        }
        Printer::WebhookConfiguration => {
            let webhooks = obj["webhooks"].as_array().map(Vec::len).unwrap_or(0);
            vec![name, json!(webhooks), age]
        }
        Printer::PriorityClass => vec![
            name,
            json!(obj["value"].as_i64().unwrap_or(0)),
            json!(obj["globalDefault"].as_bool().unwrap_or(false)),
            age,
            json!(str_of(&obj["preemptionPolicy"])),
        ],
        Printer::StorageClass => {
            let annotations = &obj["metadata"]["annotations"];
            let is_default = [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|key| annotations[*key].as_str() == Some("true"));
            let name = if is_default {
                json!(format!("{} (default)", str_of(&obj["metadata"]["name"])))
            } else {
                name
            };
            let or = |v: &Value, default: &str| match v.as_str() {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => default.to_string(),
            };
            vec![
                name,
                json!(str_of(&obj["provisioner"])),
                json!(or(&obj["reclaimPolicy"], "Delete")),
                json!(or(&obj["volumeBindingMode"], "Immediate")),
                json!(
                    obj["allowVolumeExpansion"]
                        .as_bool()
                        .unwrap_or(false)
                        .to_string()
                ),
                age,
            ]
        }
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
    fn storage_classes_print_as_kubectl_shows_them() {
        let names: Vec<Value> = columns(Printer::StorageClass)
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Provisioner",
                "ReclaimPolicy",
                "VolumeBindingMode",
                "AllowVolumeExpansion",
                "Age"
            ]
        );
        let now = Timestamp::UNIX_EPOCH;
        let default = json!({"metadata": {"name": "local-path", "annotations":
            {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "skiff.io/local-path", "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer"});
        let row = cells(Printer::StorageClass, &default, now);
        assert_eq!(row[0], "local-path (default)");
        assert_eq!(
            row[1..5],
            [
                json!("skiff.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!("false")
            ]
        );
        let plain = json!({"metadata": {"name": "manual"}, "provisioner": "none",
                           "allowVolumeExpansion": true});
        let row = cells(Printer::StorageClass, &plain, now);
        assert_eq!(
            row[..5],
            [
                json!("manual"),
                json!("none"),
                json!("Delete"),
                json!("Immediate"),
                json!("true")
            ]
        );
    }
}
