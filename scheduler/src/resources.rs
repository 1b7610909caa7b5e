//! Resource arithmetic as kube-scheduler does it: Kubernetes quantities parsed exactly (integer
//! arithmetic, rounded up), a pod's request = max(sum(containers) + restartable init
//! containers, max(each init container + the restartable ones started before it)) + overhead
//! (`resourcehelper.PodRequests`), and the "non-zero" requests the scores use (100m CPU, 200Mi
//! memory for a container that asks for nothing).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// kube-scheduler's `DefaultMilliCPURequest`.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// kube-scheduler's `DefaultMemoryRequest` (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Parses a quantity scaled by `scale` (1000 for milli-units, 1 for plain units), rounded up
/// like `Quantity.MilliValue`/`Value`. `None` for malformed input.
pub fn parse_quantity(text: &str, scale: i128) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let (negative, rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    if number.is_empty() || number == "." {
        return None;
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') || frac.len() > 30 || whole.len() > 30 {
        return None;
    }
    let digits = format!("{whole}{frac}");
    let mut mantissa: i128 = digits.parse().ok()?;
    // value = mantissa * 10^exp10 * 2^exp2
    let mut exp10: i32 = -i32::try_from(frac.len()).ok()?;
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => exp10 += s[1..].parse::<i32>().ok()?,
        _ => return None,
    }
    mantissa = mantissa
        .checked_mul(scale)?
        .checked_mul(1i128.checked_shl(exp2)?)?;
    let value = if exp10 >= 0 {
        mantissa.checked_mul(10i128.checked_pow(u32::try_from(exp10).ok()?)?)?
    } else {
        // Round up (away from zero for positives), as Quantity does.
        match 10i128.checked_pow(u32::try_from(-exp10).ok()?) {
            Some(div) => mantissa.div_euclid(div) + i128::from(mantissa.rem_euclid(div) != 0),
            None => i128::from(mantissa != 0),
        }
    };
    let value = if negative { -value } else { value };
    i64::try_from(value).ok()
}

/// A pod's or a node's resources: CPU in millicores, memory and ephemeral storage in bytes,
/// a pod count, and extended ("scalar") resources by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Pods (only meaningful for node allocatable).
    pub allowed_pods: i64,
    /// Extended resources (`example.com/gpu`, `hugepages-2Mi`, ...), in plain units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// From a `requests`/`allocatable` map; malformed quantities count as zero.
    pub fn from_map(map: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut res = Resources::default();
        for (name, q) in map.into_iter().flatten() {
            res.add_one(name, &q.0, 1);
        }
        res
    }

    fn add_one(&mut self, name: &str, text: &str, sign: i64) {
        match name {
            "cpu" => self.milli_cpu += sign * parse_quantity(text, 1000).unwrap_or(0),
            "memory" => self.memory += sign * parse_quantity(text, 1).unwrap_or(0),
            "ephemeral-storage" => {
                self.ephemeral_storage += sign * parse_quantity(text, 1).unwrap_or(0)
            }
            "pods" => self.allowed_pods += sign * parse_quantity(text, 1).unwrap_or(0),
            other if is_scalar(other) => {
                *self.scalar.entry(other.to_string()).or_insert(0) +=
                    sign * parse_quantity(text, 1).unwrap_or(0)
            }
            _ => {}
        }
    }

    /// `self += other`.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.allowed_pods += other.allowed_pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// `self -= other`.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.allowed_pods -= other.allowed_pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) -= v;
        }
    }

    /// Component-wise maximum.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    /// Whether every amount is zero.
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// Extended resources, hugepages and attachable volumes — `IsScalarResourceName`.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.starts_with("requests."))
}

fn container_requests(c: &Container, non_zero: bool) -> Resources {
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let mut res = Resources::from_map(requests);
    if non_zero {
        let has = |name: &str| requests.is_some_and(|m| m.contains_key(name));
        if !has("cpu") {
            res.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !has("memory") {
            res.memory = DEFAULT_MEMORY_REQUEST;
        }
    }
    res
}

/// `resourcehelper.PodRequests`: what the pod occupies on a node. With `non_zero`, containers
/// without a CPU or memory request count the scheduler's defaults (for scoring only).
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c, non_zero));
    }
    let mut restartable = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let mut this = container_requests(c, non_zero);
        if c.restart_policy.as_deref() == Some("Always") {
            restartable.add(&this);
            this = restartable.clone();
        } else {
            this.add(&restartable);
        }
        init_max.max_with(&this);
    }
    reqs.add(&restartable);
    reqs.max_with(&init_max);
    if let Some(overhead) = spec.overhead.as_ref() {
        reqs.add(&Resources::from_map(Some(overhead)));
    }
    reqs
}

/// kubectl's binary suffixes, largest first.
pub const BINARY_SUFFIXES: [(&str, i64); 5] = [
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];

/// Formats bytes as kubectl would show a binary quantity (`3.1Gi`, `512Mi`, `100`).
pub fn format_bytes(bytes: i64) -> String {
    for (suffix, size) in BINARY_SUFFIXES {
        if bytes.abs() >= size {
            let whole = bytes / size;
            let tenth = (bytes % size) * 10 / size;
            return if tenth == 0 {
                format!("{whole}{suffix}")
            } else {
                format!("{whole}.{}{suffix}", tenth.abs())
            };
        }
    }
    bytes.to_string()
}

/// Formats millicores (`1500m` → `1500m`, `2000m` → `2`).
pub fn format_milli_cpu(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    #[test]
    fn quantities_parse_exactly_and_round_up() {
        assert_eq!(parse_quantity("100m", 1000), Some(100));
        assert_eq!(parse_quantity("0.1", 1000), Some(100));
        assert_eq!(parse_quantity("2", 1000), Some(2000));
        assert_eq!(parse_quantity("1.5", 1000), Some(1500));
        assert_eq!(parse_quantity("1n", 1000), Some(1));
        assert_eq!(parse_quantity("2Gi", 1), Some(2 << 30));
        assert_eq!(parse_quantity("1.5Gi", 1), Some(3 << 29));
        assert_eq!(parse_quantity("128974848", 1), Some(128_974_848));
        assert_eq!(parse_quantity("129e6", 1), Some(129_000_000));
        assert_eq!(parse_quantity("123M", 1), Some(123_000_000));
        assert_eq!(parse_quantity("1k", 1), Some(1000));
        assert_eq!(parse_quantity("", 1), None);
        assert_eq!(parse_quantity("1Zi", 1), None);
        assert_eq!(parse_quantity("abc", 1), None);
        assert_eq!(parse_quantity("1..2", 1), None);
        assert_eq!(parse_quantity("1e-100", 1), Some(1), "tiny values round up");
        assert_eq!(
            parse_quantity("1e100", 1),
            None,
            "overflow is refused, not a panic"
        );
        assert_eq!(parse_quantity("-", 1), None);
        assert_eq!(
            parse_quantity("1E", 1),
            Some(1_000_000_000_000_000_000),
            "E is exa"
        );
        assert_eq!(parse_quantity("1e", 1), None);
    }

    fn container(cpu: &str, mem: &str) -> Container {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_string(), Quantity(cpu.into()));
        }
        if !mem.is_empty() {
            requests.insert("memory".to_string(), Quantity(mem.into()));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn init_containers_count_as_max_and_overhead_adds() {
        // Upstream's "init container requests more than containers" shape.
        let p = pod(
            vec![container("1", "1Gi"), container("1", "1Gi")],
            vec![container("3", "1Gi"), container("1", "3Gi")],
        );
        let r = pod_requests(&p, false);
        assert_eq!(r.milli_cpu, 3000);
        assert_eq!(r.memory, 3 << 30);
        let mut with_overhead = p.clone();
        with_overhead.spec.as_mut().unwrap().overhead = Some(BTreeMap::from([(
            "cpu".to_string(),
            Quantity("500m".into()),
        )]));
        assert_eq!(pod_requests(&with_overhead, false).milli_cpu, 3500);
    }

    #[test]
    fn restartable_init_containers_add_to_the_sum() {
        let mut sidecar = container("1", "");
        sidecar.restart_policy = Some("Always".into());
        let p = pod(vec![container("1", "")], vec![sidecar, container("2", "")]);
        // sum = 1 + 1 (sidecar) = 2; init max = 2 + 1 (sidecar before it) = 3.
        assert_eq!(pod_requests(&p, false).milli_cpu, 3000);
    }

    #[test]
    fn non_zero_defaults_fill_missing_requests() {
        let p = pod(vec![container("", ""), container("250m", "")], vec![]);
        let r = pod_requests(&p, true);
        assert_eq!(r.milli_cpu, 350);
        assert_eq!(r.memory, 2 * DEFAULT_MEMORY_REQUEST);
        assert_eq!(pod_requests(&p, false).milli_cpu, 250);
    }

    #[test]
    fn formats_like_kubectl() {
        assert_eq!(format_bytes(2 << 30), "2Gi");
        assert_eq!(format_bytes((31 << 30) / 10 + 1), "3.1Gi");
        assert_eq!(format_bytes(512 << 20), "512Mi");
        assert_eq!(format_milli_cpu(1500), "1500m");
        assert_eq!(format_milli_cpu(2000), "2");
    }
}
