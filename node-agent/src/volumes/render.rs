//! The payloads of configMap, secret, downwardAPI and projected volumes, built like kubelet's
//! volume plugins (`MakePayload`, `CollectData`), and the resource quantity arithmetic the
//! downward API and `emptyDir.sizeLimit` need.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, ResourceFieldSelector, Secret,
};

use super::VolumeError;
use super::atomic_writer::{FileProjection, Payload};

/// The default file mode of configMap, secret, downwardAPI and projected volumes.
pub const DEFAULT_MODE: i32 = 0o644;

/// Validates an API file mode (`0..=0777`).
pub fn file_mode(mode: i32) -> Result<u32, VolumeError> {
    if (0..=0o777).contains(&mode) {
        Ok(mode as u32)
    } else {
        Err(VolumeError::Invalid(format!(
            "invalid file mode {mode}: must be between 0 and 0777"
        )))
    }
}

/// Keys → files: every key (with `default_mode`) when `items` is empty, else the listed keys.
fn key_payload(
    lookup: &dyn Fn(&str) -> Option<Vec<u8>>,
    all: Vec<(String, Vec<u8>)>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
    missing_key: &dyn Fn(&str) -> String,
) -> Result<Payload, VolumeError> {
    let default_mode = file_mode(default_mode)?;
    let mut payload = Payload::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let Some(data) = lookup(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(VolumeError::Missing(missing_key(&item.key)));
                };
                let mode = match item.mode {
                    Some(m) => file_mode(m)?,
                    None => default_mode,
                };
                payload.insert(item.path.clone(), FileProjection { data, mode });
            }
        }
        _ => {
            for (key, data) in all {
                payload.insert(
                    key,
                    FileProjection {
                        data,
                        mode: default_mode,
                    },
                );
            }
        }
    }
    Ok(payload)
}

/// kubelet's configmap `MakePayload`: `data` then `binaryData`.
pub fn config_map_payload(
    cm: &ConfigMap,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, VolumeError> {
    let lookup = |key: &str| {
        cm.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| {
                cm.binary_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone())
            })
    };
    let mut all: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in cm.data.iter().flatten() {
        all.push((k.clone(), v.as_bytes().to_vec()));
    }
    for (k, v) in cm.binary_data.iter().flatten() {
        all.push((k.clone(), v.0.clone()));
    }
    key_payload(&lookup, all, items, default_mode, optional, &|key| {
        format!("configmap references non-existent config key: {key}")
    })
}

/// A secret's data; `stringData` (normally folded into `data` by the API server) wins, as it
/// does on write.
fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.as_bytes().to_vec());
    }
    out
}

/// kubelet's secret `MakePayload`.
pub fn secret_payload(
    secret: &Secret,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, VolumeError> {
    let data = secret_data(secret);
    let lookup = |key: &str| data.get(key).cloned();
    let all = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    key_payload(&lookup, all, items, default_mode, optional, &|key| {
        format!("secret references non-existent secret key: {key}")
    })
}

/// kubelet's downwardAPI `CollectData`.
pub fn downward_api_payload(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
) -> Result<Payload, VolumeError> {
    let default_mode = file_mode(default_mode)?;
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for item in items {
        let mode = match item.mode {
            Some(m) => file_mode(m)?,
            None => default_mode,
        };
        let data = if let Some(field) = &item.field_ref {
            match field_path_value(pod, &field.field_path) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
        } else if let Some(res) = &item.resource_field_ref {
            match resource_value(pod, res) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
        } else {
            String::new()
        };
        payload.insert(
            item.path.clone(),
            FileProjection {
                data: data.into_bytes(),
                mode,
            },
        );
    }
    if errors.is_empty() {
        Ok(payload)
    } else {
        Err(VolumeError::Invalid(errors.join(", ")))
    }
}

/// kubelet's `fieldpath.ExtractFieldPathAsString` (the metadata fields a volume may project).
pub fn field_path_value(pod: &Pod, field_path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    if let Some((path, subscript)) = split_subscript(field_path) {
        return match path {
            "metadata.labels" => Ok(labels.get(subscript).cloned().unwrap_or_default()),
            "metadata.annotations" => Ok(annotations.get(subscript).cloned().unwrap_or_default()),
            _ => Err(format!(
                "fieldPath {field_path:?} does not support subscript"
            )),
        };
    }
    match field_path {
        "metadata.name" => Ok(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Ok(meta.namespace.clone().unwrap_or_default()),
        "metadata.uid" => Ok(meta.uid.clone().unwrap_or_default()),
        "metadata.labels" => Ok(format_map(labels)),
        "metadata.annotations" => Ok(format_map(annotations)),
        _ => Err(format!("unsupported fieldPath: {field_path}")),
    }
}

/// `path['key']` → (`path`, `key`).
fn split_subscript(field_path: &str) -> Option<(&str, &str)> {
    let open = field_path.find("['")?;
    let rest = field_path[open + 2..].strip_suffix("']")?;
    Some((&field_path[..open], rest))
}

/// kubelet's `fieldpath.FormatMap`: `key="value"` lines (Go `%q`), sorted, no trailing newline.
pub fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// kubelet's `ExtractContainerResourceValue` (unset values are 0).
pub fn resource_value(pod: &Pod, sel: &ResourceFieldSelector) -> Result<String, String> {
    let container_name = sel.container_name.as_deref().unwrap_or_default();
    let container = find_container(pod, container_name)
        .ok_or_else(|| format!("container {container_name} not found"))?;
    let divisor = match &sel.divisor {
        Some(q) if !q.0.is_empty() => Quantity::parse(&q.0)?,
        _ => Quantity::one(),
    };
    let divisor = if divisor.is_zero() {
        Quantity::one()
    } else {
        divisor
    };
    let (kind, name) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource : {}", sel.resource))?;
    let list = match kind {
        "limits" => container.resources.as_ref().and_then(|r| r.limits.as_ref()),
        "requests" => container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported container resource : {}", sel.resource)),
    };
    let value = match list.and_then(|l| l.get(name)) {
        Some(q) => Quantity::parse(&q.0)?,
        None => Quantity::zero(),
    };
    match name {
        "cpu" => Ok(ceil_div(value.scaled(3), divisor.scaled(3).max(1)).to_string()),
        "memory" | "ephemeral-storage" => {
            Ok(ceil_div(value.scaled(0), divisor.scaled(0).max(1)).to_string())
        }
        n if n.starts_with("hugepages-") => {
            Ok(ceil_div(value.scaled(0), divisor.scaled(0).max(1)).to_string())
        }
        _ => Err(format!("unsupported container resource : {}", sel.resource)),
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    let q = a / b;
    if a % b != 0 && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

/// A parsed resource quantity: `mantissa * 10^exp10 * 2^exp2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

impl Quantity {
    pub fn zero() -> Quantity {
        Quantity {
            mantissa: 0,
            exp10: 0,
            exp2: 0,
        }
    }
    pub fn one() -> Quantity {
        Quantity {
            mantissa: 1,
            exp10: 0,
            exp2: 0,
        }
    }
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// Parses Kubernetes' quantity syntax (`128Mi`, `0.5`, `250m`, `1e3`, `2G`).
    pub fn parse(s: &str) -> Result<Quantity, String> {
        let bad = || {
            format!(
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {s:?}"
            )
        };
        let s = s.trim();
        let (neg, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return Err(bad());
        }
        let mut mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| bad())?
        };
        if neg {
            mantissa = -mantissa;
        }
        let mut exp10 = -(frac.len() as i32);
        let mut exp2 = 0;
        match suffix {
            "" => {}
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            e if e.starts_with(['e', 'E']) => {
                let n: i32 = e[1..].parse().map_err(|_| bad())?;
                if !(-100..=100).contains(&n) {
                    return Err(bad());
                }
                exp10 += n;
            }
            _ => return Err(bad()),
        }
        Ok(Quantity {
            mantissa,
            exp10,
            exp2,
        })
    }

    /// `ceil(self * 10^scale)` as an i64, saturating (`scaled(0)` is Go's `Value()`,
    /// `scaled(3)` its `MilliValue()`).
    pub fn scaled(&self, scale: i32) -> i64 {
        let sat = |neg: bool| if neg { i64::MIN } else { i64::MAX };
        let neg = self.mantissa < 0;
        let Some(mut v) = self.mantissa.checked_mul(1i128 << self.exp2) else {
            return sat(neg);
        };
        let e = self.exp10 + scale;
        if e >= 0 {
            for _ in 0..e {
                match v.checked_mul(10) {
                    Some(n) => v = n,
                    None => return sat(neg),
                }
            }
        } else {
            let mut div: i128 = 1;
            for _ in 0..(-e) {
                match div.checked_mul(10) {
                    Some(d) => div = d,
                    None => return if v > 0 { 1 } else { 0 },
                }
            }
            let q = v / div;
            v = if v % div != 0 && v > 0 { q + 1 } else { q };
        }
        i64::try_from(v).unwrap_or(sat(neg))
    }
}
