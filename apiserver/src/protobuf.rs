//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`: the `k8s\0` magic,
//! then a `runtime.Unknown` holding the type and the raw message), decoded to JSON.
//!
//! kubectl 1.32+ sends these for `kubectl create namespace|configmap|secret|deployment|service|
//! serviceaccount|quota ...`. Decoded: ObjectMeta (name, generateName, namespace, labels,
//! annotations, finalizers) and the fields those generators set (Namespace, ConfigMap, Secret,
//! Deployment, ReplicaSet, Pod, Service, ServiceAccount, ResourceQuota); other kinds are
//! refused with 415.

use base64::Engine as _;
use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// One field of a protobuf message: its number and its payload (varint or bytes).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            2 => {
                let len = varint(&mut buf)? as usize;
                if len > buf.len() {
                    return Err("truncated length-delimited field".into());
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Field::Bytes(bytes)
            }
            1 => {
                buf = buf.get(8..).ok_or("truncated fixed64")?;
                continue;
            }
            5 => {
                buf = buf.get(4..).ok_or("truncated fixed32")?;
                continue;
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((tag >> 3, field));
    }
    Ok(out)
}

fn string(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "invalid UTF-8 in a string field".into())
}

/// A `map<string, string>` entry (or `map<string, bytes>` with `b64`).
fn map_entry(bytes: &[u8], b64: bool, into: &mut Map<String, Value>) -> Result<(), String> {
    let (mut key, mut value) = (String::new(), Value::String(String::new()));
    for (n, f) in fields(bytes)? {
        if let Field::Bytes(b) = f {
            match n {
                1 => key = string(b)?,
                2 if b64 => value = json!(base64::engine::general_purpose::STANDARD.encode(b)),
                2 => value = json!(string(b)?),
                _ => {}
            }
        }
    }
    into.insert(key, value);
    Ok(())
}

fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for (n, f) in fields(bytes)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => _ = meta.insert("name".into(), json!(string(b)?)),
            2 => _ = meta.insert("generateName".into(), json!(string(b)?)),
            3 => _ = meta.insert("namespace".into(), json!(string(b)?)),
            11 => map_entry(b, false, &mut labels)?,
            12 => map_entry(b, false, &mut annotations)?,
            14 => finalizers.push(json!(string(b)?)),
            _ => {}
        }
    }
    // Go's marshaller always writes empty strings: treat them as unset.
    meta.retain(|_, v| v.as_str() != Some(""));
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

fn insert_nonempty(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        _ => false,
    };
    if !empty {
        obj.insert(key.into(), value);
    }
}

/// A `LabelSelector`: matchLabels (1) and matchExpressions (2: key 1, operator 2, values 3).
fn label_selector(bytes: &[u8]) -> Result<Value, String> {
    let (mut labels, mut exprs) = (Map::new(), Vec::new());
    for (n, f) in fields(bytes)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => map_entry(b, false, &mut labels)?,
            2 => {
                let mut e = Map::new();
                let mut values = Vec::new();
                for (m, ef) in fields(b)? {
                    if let Field::Bytes(s) = ef {
                        match m {
                            1 => _ = e.insert("key".into(), json!(string(s)?)),
                            2 => _ = e.insert("operator".into(), json!(string(s)?)),
                            3 => values.push(json!(string(s)?)),
                            _ => {}
                        }
                    }
                }
                insert_nonempty(&mut e, "values", Value::Array(values));
                exprs.push(Value::Object(e));
            }
            _ => {}
        }
    }
    let mut out = Map::new();
    insert_nonempty(&mut out, "matchLabels", Value::Object(labels));
    insert_nonempty(&mut out, "matchExpressions", Value::Array(exprs));
    Ok(Value::Object(out))
}

/// A `Quantity` (field 1: its string form).
fn quantity(bytes: &[u8]) -> Result<Value, String> {
    for (n, f) in fields(bytes)? {
        if let (1, Field::Bytes(b)) = (n, f) {
            return Ok(json!(string(b)?));
        }
    }
    Ok(json!("0"))
}

/// A `map<string, Quantity>` entry.
fn quantity_entry(bytes: &[u8], into: &mut Map<String, Value>) -> Result<(), String> {
    let (mut key, mut value) = (String::new(), json!("0"));
    for (n, f) in fields(bytes)? {
        if let Field::Bytes(b) = f {
            match n {
                1 => key = string(b)?,
                2 => value = quantity(b)?,
                _ => {}
            }
        }
    }
    into.insert(key, value);
    Ok(())
}

/// `ResourceRequirements`: limits (1), requests (2).
fn resources(bytes: &[u8]) -> Result<Value, String> {
    let (mut limits, mut requests) = (Map::new(), Map::new());
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => quantity_entry(b, &mut limits)?,
            (2, Field::Bytes(b)) => quantity_entry(b, &mut requests)?,
            _ => {}
        }
    }
    let mut out = Map::new();
    insert_nonempty(&mut out, "limits", Value::Object(limits));
    insert_nonempty(&mut out, "requests", Value::Object(requests));
    Ok(Value::Object(out))
}

/// An `IntOrString`: type (1: 0 int, 1 string), intVal (2), strVal (3).
fn int_or_string(bytes: &[u8]) -> Result<Value, String> {
    let (mut kind, mut int, mut text) = (0, 0i64, String::new());
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Varint(v)) => kind = v,
            (2, Field::Varint(v)) => int = v as i32 as i64,
            (3, Field::Bytes(b)) => text = string(b)?,
            _ => {}
        }
    }
    Ok(if kind == 1 { json!(text) } else { json!(int) })
}

/// A `Container`: name 1, image 2, command 3, args 4, workingDir 5, ports 6 (name 1, hostPort 2,
/// containerPort 3, protocol 4), env 7 (name 1, value 2), resources 8, imagePullPolicy 14.
fn container(bytes: &[u8]) -> Result<Value, String> {
    let mut c = Map::new();
    let (mut command, mut args, mut ports, mut env) = (vec![], vec![], vec![], vec![]);
    for (n, f) in fields(bytes)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => insert_nonempty(&mut c, "name", json!(string(b)?)),
            2 => insert_nonempty(&mut c, "image", json!(string(b)?)),
            3 => command.push(json!(string(b)?)),
            4 => args.push(json!(string(b)?)),
            5 => insert_nonempty(&mut c, "workingDir", json!(string(b)?)),
            6 => {
                let mut p = Map::new();
                for (m, pf) in fields(b)? {
                    match (m, pf) {
                        (1, Field::Bytes(s)) => insert_nonempty(&mut p, "name", json!(string(s)?)),
                        (2, Field::Varint(v)) if v != 0 => {
                            _ = p.insert("hostPort".into(), json!(v))
                        }
                        (3, Field::Varint(v)) => _ = p.insert("containerPort".into(), json!(v)),
                        (4, Field::Bytes(s)) => {
                            insert_nonempty(&mut p, "protocol", json!(string(s)?))
                        }
                        _ => {}
                    }
                }
                ports.push(Value::Object(p));
            }
            7 => {
                let mut e = Map::new();
                for (m, ef) in fields(b)? {
                    match (m, ef) {
                        (1, Field::Bytes(s)) => _ = e.insert("name".into(), json!(string(s)?)),
                        (2, Field::Bytes(s)) => insert_nonempty(&mut e, "value", json!(string(s)?)),
                        _ => {}
                    }
                }
                env.push(Value::Object(e));
            }
            8 => _ = c.insert("resources".into(), resources(b)?),
            14 => insert_nonempty(&mut c, "imagePullPolicy", json!(string(b)?)),
            _ => {}
        }
    }
    insert_nonempty(&mut c, "command", Value::Array(command));
    insert_nonempty(&mut c, "args", Value::Array(args));
    insert_nonempty(&mut c, "ports", Value::Array(ports));
    insert_nonempty(&mut c, "env", Value::Array(env));
    Ok(Value::Object(c))
}

/// A `PodSpec`: containers 2, restartPolicy 3, nodeSelector 7, serviceAccountName 8,
/// nodeName 10, initContainers 20.
fn pod_spec(bytes: &[u8]) -> Result<Value, String> {
    let mut spec = Map::new();
    let (mut containers, mut init, mut node_selector) = (vec![], vec![], Map::new());
    for (n, f) in fields(bytes)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            2 => containers.push(container(b)?),
            3 => insert_nonempty(&mut spec, "restartPolicy", json!(string(b)?)),
            7 => map_entry(b, false, &mut node_selector)?,
            8 => insert_nonempty(&mut spec, "serviceAccountName", json!(string(b)?)),
            10 => insert_nonempty(&mut spec, "nodeName", json!(string(b)?)),
            20 => init.push(container(b)?),
            _ => {}
        }
    }
    spec.insert("containers".into(), Value::Array(containers));
    insert_nonempty(&mut spec, "initContainers", Value::Array(init));
    insert_nonempty(&mut spec, "nodeSelector", Value::Object(node_selector));
    Ok(Value::Object(spec))
}

/// A `PodTemplateSpec`: metadata 1, spec 2.
fn pod_template(bytes: &[u8]) -> Result<Value, String> {
    let mut t = Map::new();
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => _ = t.insert("metadata".into(), object_meta(b)?),
            (2, Field::Bytes(b)) => _ = t.insert("spec".into(), pod_spec(b)?),
            _ => {}
        }
    }
    Ok(Value::Object(t))
}

/// A `DeploymentSpec` (replicas 1, selector 2, template 3, strategy 4, minReadySeconds 5,
/// revisionHistoryLimit 6, paused 7, progressDeadlineSeconds 9) or a `ReplicaSetSpec`
/// (replicas 1, selector 2, template 3, minReadySeconds 4).
fn workload_spec(bytes: &[u8], deployment: bool) -> Result<Value, String> {
    let mut spec = Map::new();
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Varint(v)) => _ = spec.insert("replicas".into(), json!(v as i32)),
            (2, Field::Bytes(b)) => _ = spec.insert("selector".into(), label_selector(b)?),
            (3, Field::Bytes(b)) => _ = spec.insert("template".into(), pod_template(b)?),
            (4, Field::Bytes(b)) if deployment => {
                let mut strategy = Map::new();
                for (m, sf) in fields(b)? {
                    if let (1, Field::Bytes(s)) = (m, sf) {
                        insert_nonempty(&mut strategy, "type", json!(string(s)?));
                    }
                }
                insert_nonempty(&mut spec, "strategy", Value::Object(strategy));
            }
            (4, Field::Varint(v)) | (5, Field::Varint(v)) if v != 0 => {
                _ = spec.insert("minReadySeconds".into(), json!(v as i32))
            }
            (6, Field::Varint(v)) if deployment => {
                _ = spec.insert("revisionHistoryLimit".into(), json!(v as i32))
            }
            (7, Field::Varint(v)) if deployment && v != 0 => {
                _ = spec.insert("paused".into(), json!(true))
            }
            (9, Field::Varint(v)) if deployment => {
                _ = spec.insert("progressDeadlineSeconds".into(), json!(v as i32))
            }
            _ => {}
        }
    }
    Ok(Value::Object(spec))
}

/// A `ServiceSpec`: ports 1 (name 1, protocol 2, port 3, targetPort 4, nodePort 5), selector 2,
/// clusterIP 3, type 4, externalName 10.
fn service_spec(bytes: &[u8]) -> Result<Value, String> {
    let mut spec = Map::new();
    let (mut ports, mut selector) = (vec![], Map::new());
    for (n, f) in fields(bytes)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => {
                let mut p = Map::new();
                for (m, pf) in fields(b)? {
                    match (m, pf) {
                        (1, Field::Bytes(s)) => insert_nonempty(&mut p, "name", json!(string(s)?)),
                        (2, Field::Bytes(s)) => {
                            insert_nonempty(&mut p, "protocol", json!(string(s)?))
                        }
                        (3, Field::Varint(v)) => _ = p.insert("port".into(), json!(v as i32)),
                        (4, Field::Bytes(s)) => {
                            let t = int_or_string(s)?;
                            if t != json!(0) && t != json!("") {
                                p.insert("targetPort".into(), t);
                            }
                        }
                        (5, Field::Varint(v)) if v != 0 => {
                            _ = p.insert("nodePort".into(), json!(v as i32))
                        }
                        _ => {}
                    }
                }
                ports.push(Value::Object(p));
            }
            2 => map_entry(b, false, &mut selector)?,
            3 => insert_nonempty(&mut spec, "clusterIP", json!(string(b)?)),
            4 => insert_nonempty(&mut spec, "type", json!(string(b)?)),
            10 => insert_nonempty(&mut spec, "externalName", json!(string(b)?)),
            _ => {}
        }
    }
    insert_nonempty(&mut spec, "ports", Value::Array(ports));
    insert_nonempty(&mut spec, "selector", Value::Object(selector));
    Ok(Value::Object(spec))
}

/// A `ResourceQuotaSpec`: hard 1 (map<string, Quantity>).
fn quota_spec(bytes: &[u8]) -> Result<Value, String> {
    let mut hard = Map::new();
    for (n, f) in fields(bytes)? {
        if let (1, Field::Bytes(b)) = (n, f) {
            quantity_entry(b, &mut hard)?;
        }
    }
    let mut spec = Map::new();
    insert_nonempty(&mut spec, "hard", Value::Object(hard));
    Ok(Value::Object(spec))
}

/// Decodes a protobuf request body to the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or("protobuf body does not start with the k8s magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(unknown)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => {
                for (m, tf) in fields(b)? {
                    if let Field::Bytes(s) = tf {
                        match m {
                            1 => api_version = string(s)?,
                            2 => kind = string(s)?,
                            _ => {}
                        }
                    }
                }
            }
            2 => raw = b,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind.clone()));
    let (mut data, mut binary, mut string_data) = (Map::new(), Map::new(), Map::new());
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n, f) {
            (_, 1, Field::Bytes(b)) => _ = obj.insert("metadata".into(), object_meta(b)?),
            ("Namespace", _, _) => {}
            ("ConfigMap", 2, Field::Bytes(b)) => map_entry(b, false, &mut data)?,
            ("ConfigMap", 3, Field::Bytes(b)) => map_entry(b, true, &mut binary)?,
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                _ = obj.insert("immutable".into(), json!(v != 0))
            }
            ("Secret", 2, Field::Bytes(b)) => map_entry(b, true, &mut data)?,
            ("Secret", 3, Field::Bytes(b)) => _ = obj.insert("type".into(), json!(string(b)?)),
            ("Secret", 4, Field::Bytes(b)) => map_entry(b, false, &mut string_data)?,
            ("Deployment", 2, Field::Bytes(b)) => {
                _ = obj.insert("spec".into(), workload_spec(b, true)?)
            }
            ("ReplicaSet", 2, Field::Bytes(b)) => {
                _ = obj.insert("spec".into(), workload_spec(b, false)?)
            }
            ("Pod", 2, Field::Bytes(b)) => _ = obj.insert("spec".into(), pod_spec(b)?),
            ("Service", 2, Field::Bytes(b)) => _ = obj.insert("spec".into(), service_spec(b)?),
            ("ResourceQuota", 2, Field::Bytes(b)) => _ = obj.insert("spec".into(), quota_spec(b)?),
            // `scheduling.k8s.io/v1` PriorityClass: value = 2, globalDefault = 3,
            // description = 4, preemptionPolicy = 5.
            ("PriorityClass", 2, Field::Varint(v)) => {
                _ = obj.insert("value".into(), json!(v as i64 as i32))
            }
            ("PriorityClass", 3, Field::Varint(v)) => {
                _ = obj.insert("globalDefault".into(), json!(v != 0))
            }
            ("PriorityClass", 4, Field::Bytes(b)) => {
                _ = obj.insert("description".into(), json!(string(b)?))
            }
            ("PriorityClass", 5, Field::Bytes(b)) => {
                _ = obj.insert("preemptionPolicy".into(), json!(string(b)?))
            }
            ("ServiceAccount", 4, Field::Varint(v)) => {
                _ = obj.insert("automountServiceAccountToken".into(), json!(v != 0))
            }
            (
                "ConfigMap" | "Secret" | "Deployment" | "ReplicaSet" | "Pod" | "Service"
                | "ResourceQuota" | "ServiceAccount" | "PriorityClass",
                _,
                _,
            ) => {}
            _ => {
                return Err(format!(
                    "protobuf bodies of kind {kind:?} are not supported yet"
                ));
            }
        }
    }
    for (name, map) in [
        ("data", data),
        ("binaryData", binary),
        ("stringData", string_data),
    ] {
        if !map.is_empty() {
            obj.insert(name.into(), Value::Object(map));
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("") {
        obj.remove("type");
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_configmap() {
        let entry = [field(1, b"k"), field(2, b"v")].concat();
        let meta = [field(1, b"cfg"), field(2, b""), field(11, &entry)].concat();
        let raw = [field(1, &meta), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "labels": {"k": "v"}}, "data": {"k": "v"}})
        );
        assert!(decode(b"nope").is_err());
    }

    #[test]
    fn decodes_a_deployment_as_kubectl_create_sends_it() {
        let labels = [field(1, b"app"), field(2, b"web")].concat();
        let meta = [field(1, b"web"), field(11, &labels)].concat();
        // Go writes every non-pointer field, empty strings included.
        let container = [
            field(1, b"busybox"),
            field(2, b"busybox"),
            field(5, b""),
            field(8, b""),
        ]
        .concat();
        let pod_spec = [field(2, &container), field(3, b"")].concat();
        let template = [field(1, &field(11, &labels)), field(2, &pod_spec)].concat();
        let selector = field(1, &labels);
        let spec = [
            vec![1 << 3, 3],
            field(2, &selector),
            field(3, &template),
            field(4, b""),
        ]
        .concat();
        let raw = [field(1, &meta), field(2, &spec)].concat();
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "web", "labels": {"app": "web"}},
                   "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                            "template": {"metadata": {"labels": {"app": "web"}},
                                         "spec": {"containers": [{"name": "busybox", "image": "busybox",
                                                                  "resources": {}}]}}}})
        );
    }
}
