//! The pod-template-hash that names a Deployment's ReplicaSets (upstream
//! `controller.ComputeHash`), and template equality that ignores it (`EqualIgnoreHash`).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// The label (and selector key) that keeps a Deployment's ReplicaSets apart.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The alphabet of upstream `rand.SafeEncodeString`: no vowels (no words) and no easily
/// confused characters.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash of a template with a collision count: FNV-32a over the template's
/// JSON, then the collision count's 4 little-endian bytes if any, then the decimal hash encoded
/// with upstream's `rand.SafeEncodeString` alphabet.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let mut hash = fnv32a(FNV32_OFFSET_BASIS, &json);
    if let Some(count) = collision_count {
        hash = fnv32a(hash, &count.to_le_bytes());
    }
    safe_encode(&hash.to_string())
}

const FNV32_OFFSET_BASIS: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;

/// FNV-1a (32 bit) of `bytes`, continuing from `hash`.
fn fnv32a(mut hash: u32, bytes: &[u8]) -> u32 {
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(FNV32_PRIME);
    }
    hash
}

/// Upstream `rand.SafeEncodeString`: each byte mapped to `alphabet[byte % 27]`.
fn safe_encode(text: &str) -> String {
    text.bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// Whether two pod templates are the same apart from the pod-template-hash label (upstream
/// `EqualIgnoreHash`, semantic equality: absent and empty lists, and absent and empty
/// labels/annotations, are the same).
pub(super) fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    comparable(a) == comparable(b)
}

/// The template as JSON without the hash label, nulls and empty lists (Go's semantic deep
/// equality treats nil and empty slices and maps alike; empty objects are kept since an
/// `emptyDir: {}` differs from none).
fn comparable(template: &PodTemplateSpec) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(Value::Object(metadata)) = value.get_mut("metadata") {
        if let Some(Value::Object(labels)) = metadata.get_mut("labels") {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
        }
        for map in ["labels", "annotations"] {
            if metadata
                .get(map)
                .is_some_and(|m| m.as_object().is_some_and(|o| o.is_empty()))
            {
                metadata.remove(map);
            }
        }
    }
    drop_empty(&mut value);
    if let Value::Object(top) = &mut value
        && top
            .get("metadata")
            .is_some_and(|m| m.as_object().is_some_and(|o| o.is_empty()))
    {
        top.remove("metadata");
    }
    value
}

/// Removes nulls and empty arrays from objects, recursively.
fn drop_empty(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for child in map.values_mut() {
                drop_empty(child);
            }
            map.retain(|_, v| !(v.is_null() || v.as_array().is_some_and(|a| a.is_empty())));
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, PodSpec, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn fnv32a_matches_the_reference_vectors() {
        assert_eq!(fnv32a(FNV32_OFFSET_BASIS, b""), 0x811c_9dc5);
        assert_eq!(fnv32a(FNV32_OFFSET_BASIS, b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(FNV32_OFFSET_BASIS, b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn safe_encode_maps_digits_like_upstream() {
        // '0' is byte 48: 48 % 27 = 21 → '4'; '9' is 57 % 27 = 3 → 'f'.
        assert_eq!(safe_encode("09"), "4f");
        assert!(
            safe_encode("1234567890")
                .chars()
                .all(|c| SAFE_ALPHABET.contains(&(c as u8)))
        );
    }

    #[test]
    fn hash_is_stable_and_changes_with_template_and_collision_count() {
        let a = pod_template_hash(&template("nginx:1"), None);
        assert_eq!(a, pod_template_hash(&template("nginx:1"), None));
        assert!(!a.is_empty() && a.len() <= 10);
        assert_ne!(a, pod_template_hash(&template("nginx:2"), None));
        let one = pod_template_hash(&template("nginx:1"), Some(1));
        assert_ne!(a, one);
        assert_ne!(one, pod_template_hash(&template("nginx:1"), Some(2)));
        // A count of 0 still hashes its bytes (upstream: a non-nil count is always mixed in).
        assert_ne!(a, pod_template_hash(&template("nginx:1"), Some(0)));
    }

    #[test]
    fn equality_ignores_the_hash_label_and_empty_collections() {
        let plain = template("nginx:1");
        let mut hashed = plain.clone();
        if let Some(labels) = hashed.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.insert(POD_TEMPLATE_HASH_LABEL.into(), "abc".into());
        }
        assert!(equal_ignore_hash(&plain, &hashed));
        let mut with_empty = plain.clone();
        if let Some(spec) = with_empty.spec.as_mut() {
            spec.volumes = Some(vec![]);
        }
        if let Some(meta) = with_empty.metadata.as_mut() {
            meta.annotations = Some(BTreeMap::new());
        }
        assert!(equal_ignore_hash(&plain, &with_empty));
        assert!(!equal_ignore_hash(&plain, &template("nginx:2")));
    }

    #[test]
    fn an_empty_dir_volume_is_not_no_volume_source() {
        let volume = |empty_dir| PodTemplateSpec {
            spec: Some(PodSpec {
                volumes: Some(vec![Volume {
                    name: "scratch".into(),
                    empty_dir,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!equal_ignore_hash(
            &volume(Some(EmptyDirVolumeSource::default())),
            &volume(None)
        ));
        assert!(equal_ignore_hash(
            &PodTemplateSpec::default(),
            &PodTemplateSpec {
                metadata: Some(ObjectMeta::default()),
                spec: None
            }
        ));
    }
}
