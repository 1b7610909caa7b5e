//! The registry of served resources, built from k8s-openapi types: names, scope, typed
//! validation (decode into the k8s-openapi struct; `fieldValidation=Strict` rejects fields the
//! struct does not know), per-kind validation and defaulting, and server-side Table columns.

use std::any::TypeId;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, PersistentVolume,
    PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::schemars::{JsonSchema, Schema, SchemaGenerator};
use k8s_openapi::{ListableResource, NamespaceResourceScope, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::registry::strategy::Strategy;
pub use crate::registry::table::{Printer, human_duration, table};

use crate::selector::LabelSelector;

/// The current wall-clock time (second precision, as Kubernetes timestamps have).
pub fn now() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
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
    /// What the kind does differently (defaults, validation, subresources, Table, field
    /// labels, lifecycle).
    pub strategy: &'static dyn Strategy,
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
        strategy: crate::registry::strategy::of(printer),
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
        info::<LimitRange>(&["limits"], "limitrange", Printer::LimitRange),
        info::<PriorityClass>(&["pc"], "priorityclass", Printer::PriorityClass),
        info::<StorageClass>(&["sc"], "storageclass", Printer::StorageClass),
        info::<NetworkPolicy>(&["netpol"], "networkpolicy", Printer::NetworkPolicy),
        info::<MutatingWebhookConfiguration>(
            &[],
            "mutatingwebhookconfiguration",
            Printer::WebhookConfiguration,
        ),
        info::<ValidatingWebhookConfiguration>(
            &[],
            "validatingwebhookconfiguration",
            Printer::WebhookConfiguration,
        ),
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
    if info.strategy.name_is_dns_label() {
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

// Each kind's validation (its strategy's `validate`: the subset of kube-apiserver's this
// slice enforces), as `(field, message)` causes.

pub fn validate_pod(obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    validate_pod_spec(&obj["spec"], "spec", &mut causes);
    causes
}

/// Deployments and ReplicaSets: a selector that matches the template, and the template's pod.
pub fn validate_workload(obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
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
    causes
}

pub fn validate_service(obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
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
    causes
}

/// The most a user-defined PriorityClass may have (`scheduling.HighestUserDefinablePriority`).
const HIGHEST_USER_DEFINABLE_PRIORITY: i64 = 1_000_000_000;
/// The prefix of the built-in PriorityClasses' names (`scheduling.SystemPriorityClassPrefix`).
pub const SYSTEM_PRIORITY_CLASS_PREFIX: &str = "system-";

/// `ValidatePriorityClass`: `system-` names and values above one billion are the built-ins'.
/// The built-ins are seeded below this check (see `Registry::seed`).
pub fn validate_priority_class(obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name.starts_with(SYSTEM_PRIORITY_CLASS_PREFIX) {
        causes.push((
            "metadata.name".into(),
            format!(
                "Invalid value: {name:?}: priority class names with '{SYSTEM_PRIORITY_CLASS_PREFIX}' prefix are reserved for system use only"
            ),
        ));
    }
    let value = obj["value"].as_i64().unwrap_or(0);
    if value > HIGHEST_USER_DEFINABLE_PRIORITY {
        causes.push((
            "value".into(),
            format!(
                "Invalid value: {value}: must be no greater than {HIGHEST_USER_DEFINABLE_PRIORITY}"
            ),
        ));
    }
    causes
}

/// The reclaim policies a StorageClass may name (`supportedReclaimPolicy`).
const STORAGE_CLASS_RECLAIM_POLICIES: [&str; 2] = ["Delete", "Retain"];
/// The binding modes a StorageClass may name (`supportedVolumeBindingModes`).
const STORAGE_CLASS_BINDING_MODES: [&str; 2] = ["Immediate", "WaitForFirstConsumer"];

/// `field.NotSupported`'s message: `Unsupported value: "x": supported values: "a", "b"`.
fn not_supported(value: &str, supported: &[&str]) -> String {
    let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "Unsupported value: {value:?}: supported values: {}",
        supported.join(", ")
    )
}

/// `ValidateStorageClass` (after defaulting): a provisioner, and a known reclaim policy and
/// binding mode.
pub fn validate_storage_class(obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    if obj["provisioner"].as_str().unwrap_or("").is_empty() {
        causes.push(("provisioner".into(), "Required value".into()));
    }
    for (field, supported) in [
        ("reclaimPolicy", &STORAGE_CLASS_RECLAIM_POLICIES),
        ("volumeBindingMode", &STORAGE_CLASS_BINDING_MODES),
    ] {
        match obj[field].as_str() {
            Some(value) if supported.contains(&value) => {}
            Some(value) => causes.push((field.into(), not_supported(value, supported))),
            None => causes.push((field.into(), "Required value".into())),
        }
    }
    causes
}

/// `ValidateStorageClassUpdate`: the parameters, provisioner, reclaim policy and binding mode
/// of a StorageClass never change (upstream's messages).
pub fn validate_storage_class_update(current: &Value, obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let parameters = |v: &Value| match &v["parameters"] {
        Value::Object(map) if !map.is_empty() => Some(map.clone()),
        _ => None,
    };
    if parameters(current) != parameters(obj) {
        causes.push((
            "parameters".into(),
            "Forbidden: updates to parameters are forbidden.".into(),
        ));
    }
    for field in ["provisioner", "reclaimPolicy"] {
        if current[field] != obj[field] {
            causes.push((
                field.into(),
                format!("Forbidden: updates to {field} are forbidden."),
            ));
        }
    }
    if current["volumeBindingMode"] != obj["volumeBindingMode"] {
        let value = obj["volumeBindingMode"].as_str().unwrap_or("");
        causes.push((
            "volumeBindingMode".into(),
            format!("Invalid value: {value:?}: field is immutable"),
        ));
    }
    causes
}

/// Kinds without validation beyond their type.
pub fn no_validation(_: &Value) -> Vec<(String, String)> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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

    #[test]
    fn storage_classes_are_served_and_validated() {
        let reg = registry();
        let sc = reg.iter().find(|r| r.kind == "StorageClass").unwrap();
        assert_eq!(
            (sc.group, sc.version, sc.resource, sc.namespaced),
            ("storage.k8s.io", "v1", "storageclasses", false)
        );
        assert_eq!(sc.short_names, ["sc"]);
        let mut obj = json!({"metadata": {"name": "fast"}, "provisioner": "skiff.io/local-path"});
        sc.strategy.defaults(&mut obj);
        assert_eq!(obj["reclaimPolicy"], "Delete");
        assert_eq!(obj["volumeBindingMode"], "Immediate");
        assert!(sc.strategy.validate(&obj).is_empty());
        let bad = json!({"reclaimPolicy": "Recycle", "volumeBindingMode": "Immediate"});
        assert_eq!(
            validate_storage_class(&bad),
            vec![
                ("provisioner".to_string(), "Required value".to_string()),
                (
                    "reclaimPolicy".to_string(),
                    "Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\""
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn storage_class_updates_keep_what_is_immutable() {
        let current = json!({"provisioner": "a", "parameters": {"k": "v"},
                             "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"});
        let mut labelled = current.clone();
        labelled["metadata"] = json!({"labels": {"x": "y"}});
        labelled["allowVolumeExpansion"] = json!(true);
        assert!(validate_storage_class_update(&current, &labelled).is_empty());
        let mut changed = current.clone();
        changed["provisioner"] = json!("b");
        changed["parameters"] = json!({"k": "w"});
        let causes = validate_storage_class_update(&current, &changed);
        assert_eq!(
            causes,
            vec![
                (
                    "parameters".to_string(),
                    "Forbidden: updates to parameters are forbidden.".to_string()
                ),
                (
                    "provisioner".to_string(),
                    "Forbidden: updates to provisioner are forbidden.".to_string()
                ),
            ]
        );
        let mut mode = current.clone();
        mode["volumeBindingMode"] = json!("WaitForFirstConsumer");
        assert_eq!(
            validate_storage_class_update(&current, &mode)[0].1,
            "Invalid value: \"WaitForFirstConsumer\": field is immutable"
        );
    }
}
