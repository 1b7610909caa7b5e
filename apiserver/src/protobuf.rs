//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`: the `k8s\0` magic,
//! then a `runtime.Unknown` holding the type and the raw message), decoded to JSON.
//!
//! kubectl 1.32+ sends these for `kubectl create namespace|configmap|secret ...`. This slice
//! decodes Namespace, ConfigMap and Secret (their ObjectMeta's name, generateName, namespace,
//! labels, annotations, finalizers, and the kinds' own fields); other kinds are refused with 415.

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
            ("ConfigMap" | "Secret", _, _) => {}
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
}
