//! ResourceQuota: a create that would take a namespace's usage past a quota's `spec.hard` is
//! refused (`exceeded quota: NAME, requested: pods=1, used: pods=2, limited: pods=2`); one
//! that fits is charged to the quota's `status.used` *before* the object is written, with a
//! conditional write on the quota's resourceVersion, re-read and retried on conflict, as
//! kube-apiserver's quota evaluator does — so replicas sharing one store never admit past the
//! limit and `status.used` counts every admitted object. Within a replica a namespace's checks
//! take one lock stripe in turn (upstream queues them per namespace), so replicas mostly race
//! only each other.
//!
//! Counted: `pods`, `count/<resource>[.<group>]`, the legacy object counts (`services`,
//! `secrets`, `configmaps`, `persistentvolumeclaims`, `replicationcontrollers`,
//! `resourcequotas`) and a pod's `requests.*`/`limits.*` (and bare `cpu`, `memory`,
//! `ephemeral-storage`). A usage `status.used` does not hold yet is counted from the store
//! first. The controller manager's `resourcequota` controller recounts `status.used` (usage
//! given back on delete, a create that failed after it was charged). Pods are counted as
//! upstream's `PodRequests`/`PodLimits` do (containers' sum or the largest init container,
//! plus overhead; restartable init containers are not told apart yet). Not yet: enforcing
//! scopes and scope selectors (such quotas are skipped here; the controller counts them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::admission::quantity::{self, Milli};
use crate::admission::{Admission, Attributes};
use crate::status::{ApiError, Reason};
use crate::storage::StorageError;

/// How many times a quota charge that lost a race for the quota object is re-read and retried.
const QUOTA_CONFLICT_RETRIES: usize = 100;
/// The most a retry waits before re-reading (a random part of it, so racers spread out).
const QUOTA_RETRY_JITTER_MAX: Duration = Duration::from_millis(20);
/// The compute resources a pod's containers request or limit.
const COMPUTE: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];
/// Core object counts with names of their own (besides `count/<resource>`).
const LEGACY_COUNTS: [&str; 6] = [
    "services",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "replicationcontrollers",
    "resourcequotas",
];

/// What one object adds to its namespace's usage, and the compute usages that cannot be
/// counted because some container does not state them.
#[derive(Debug, Default, PartialEq)]
pub struct Usage {
    pub added: BTreeMap<String, Milli>,
    pub unstated: BTreeSet<String>,
}

/// The usage of one object of `resource` in `group`.
pub fn usage_of(resource: &str, group: &str, obj: &Value) -> Usage {
    let mut usage = Usage::default();
    let one = Milli(1000);
    let count = if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    };
    usage.added.insert(count, one);
    if group.is_empty() && LEGACY_COUNTS.contains(&resource) {
        usage.added.insert(resource.to_string(), one);
    }
    if group.is_empty() && resource == "pods" {
        // Upstream counts `count/pods` for every pod, the rest only for pods not terminal.
        if matches!(
            obj["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        ) {
            return usage;
        }
        usage.added.insert("pods".into(), one);
        for (field, prefix) in [("requests", "requests."), ("limits", "limits.")] {
            for name in COMPUTE {
                let mut keys = vec![format!("{prefix}{name}")];
                if field == "requests" {
                    keys.push(name.to_string());
                }
                match pod_amount(&obj["spec"], field, name) {
                    Some(q) => {
                        for key in keys {
                            usage.added.entry(key).or_default().0 += q.0;
                        }
                    }
                    None => usage.unstated.extend(keys),
                }
            }
        }
    }
    usage
}

/// A pod's `requests` or `limits` of one resource as upstream's `PodRequests`/`PodLimits`
/// count it: the containers' sum or the largest init container's, whichever is larger, plus
/// the pod's `overhead`; `None` if a container does not state it.
fn pod_amount(spec: &Value, field: &str, name: &str) -> Option<Milli> {
    let amount = |c: &Value| {
        c["resources"][field][name]
            .as_str()
            .and_then(quantity::parse)
    };
    let mut sum = 0i128;
    for c in spec["containers"].as_array().into_iter().flatten() {
        sum = sum.saturating_add(amount(c)?.0);
    }
    let mut largest_init = 0i128;
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        largest_init = largest_init.max(amount(c)?.0);
    }
    let overhead = spec["overhead"][name]
        .as_str()
        .and_then(quantity::parse)
        .map_or(0, |q| q.0);
    Some(Milli(sum.max(largest_init).saturating_add(overhead)))
}

/// A quota's `hard` (or `used`) as quantities, with whether each was written in binary form.
fn quantities(list: &Value) -> BTreeMap<String, (Milli, bool)> {
    list.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = v.as_str()?;
            Some((
                k.clone(),
                (quantity::parse(text)?, quantity::is_binary(text)),
            ))
        })
        .collect()
}

/// `k=v,k=v` (upstream's `prettyPrint`, keys sorted).
fn pretty(values: &BTreeMap<String, (Milli, bool)>, keys: &[String]) -> String {
    keys.iter()
        .filter_map(|k| {
            values
                .get(k)
                .map(|(v, b)| format!("{k}={}", quantity::format(*v, *b)))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether the quota constrains anything `usage` touches (and is not scoped: scoped quotas
/// are not enforced yet).
pub fn constrains(quota: &Value, usage: &Usage) -> bool {
    let scoped = quota["spec"]["scopes"]
        .as_array()
        .is_some_and(|s| !s.is_empty())
        || quota["spec"]["scopeSelector"].is_object();
    !scoped
        && quota["spec"]["hard"].as_object().is_some_and(|hard| {
            hard.keys()
                .any(|k| usage.added.contains_key(k) || usage.unstated.contains(k))
        })
}

/// Charges `usage` to the quota (whose `status.used` holds every resource of `spec.hard`):
/// the quota with its new `status`, or why the object is forbidden.
pub fn charge(quota: &Value, usage: &Usage) -> Result<Value, String> {
    let name = quota["metadata"]["name"].as_str().unwrap_or("");
    let hard = quantities(&quota["spec"]["hard"]);
    let mut used = quantities(&quota["status"]["used"]);
    let unstated: Vec<&str> = hard
        .keys()
        .filter(|k| usage.unstated.contains(*k))
        .map(String::as_str)
        .collect();
    if !unstated.is_empty() {
        return Err(format!(
            "failed quota: {name}: must specify {}",
            unstated.join(",")
        ));
    }
    let mut exceeded = Vec::new();
    let mut requested = BTreeMap::new();
    for (key, (limit, binary)) in &hard {
        let Some(add) = usage.added.get(key) else {
            continue;
        };
        let now = used.get(key).map_or(Milli(0), |(v, _)| *v);
        requested.insert(key.clone(), (*add, *binary));
        if Milli(now.0 + add.0) > *limit {
            exceeded.push(key.clone());
        }
        used.insert(key.clone(), (Milli(now.0 + add.0), *binary));
    }
    if !exceeded.is_empty() {
        let before = quantities(&quota["status"]["used"]);
        let mut used_before = BTreeMap::new();
        for key in &exceeded {
            let value = before.get(key).map_or(Milli(0), |(v, _)| *v);
            used_before.insert(key.clone(), (value, hard[key].1));
        }
        return Err(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            pretty(&requested, &exceeded),
            pretty(&used_before, &exceeded),
            pretty(&hard, &exceeded)
        ));
    }
    let mut charged = quota.clone();
    let used: Map<String, Value> = used
        .into_iter()
        .map(|(k, (v, b))| (k, json!(quantity::format(v, b))))
        .collect();
    charged["status"] = json!({"hard": quota["spec"]["hard"], "used": used});
    Ok(charged)
}

impl Admission {
    /// Charges the object's usage to every quota of its namespace that constrains it (see the
    /// module docs), refusing it if any would be exceeded.
    pub(super) async fn charge_quota(
        &self,
        attrs: &Attributes<'_>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let Some(namespace) = attrs.namespace else {
            return Ok(());
        };
        let usage = usage_of(attrs.resource, attrs.group, obj);
        if usage.added.is_empty() {
            return Ok(());
        }
        let stripe = namespace
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let _turn = self.quota_locks[stripe % self.quota_locks.len()]
            .lock()
            .await;
        let prefix = format!("{}/resourcequotas/{namespace}/", self.prefix);
        for _ in 0..QUOTA_CONFLICT_RETRIES {
            let quotas = self.list_prefix(&prefix, "resourcequotas").await?;
            let mut writes = Vec::new();
            for (stored, mut quota) in quotas.into_iter().filter(|(_, q)| constrains(q, &usage)) {
                self.fill_in_usage(namespace, &mut quota).await?;
                let charged = charge(&quota, &usage).map_err(|why| attrs.forbidden(&why))?;
                writes.push((stored, charged));
            }
            if attrs.dry_run || writes.is_empty() {
                return Ok(());
            }
            let mut lost_race = false;
            for (stored, charged) in writes {
                let value =
                    serde_json::to_vec(&charged).expect("a serde_json::Value always encodes");
                match self
                    .storage
                    .update(&stored.key, value, stored.revision)
                    .await
                {
                    Ok(_) => {}
                    Err(StorageError::Conflict) => {
                        lost_race = true;
                        break;
                    }
                    Err(e) => return Err(super::storage_error(e, "resourcequotas")),
                }
            }
            if !lost_race {
                return Ok(());
            }
            let jitter = rand::random_range(0..QUOTA_RETRY_JITTER_MAX.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        Err(ApiError::new(
            Reason::Conflict,
            format!(
                "Operation cannot be fulfilled on resourcequotas in namespace {namespace}: too \
                 many concurrent updates of quota status; try again"
            ),
        ))
    }

    /// Counts, from the store, each `spec.hard` resource `status.used` does not hold yet.
    async fn fill_in_usage(&self, namespace: &str, quota: &mut Value) -> Result<(), ApiError> {
        let missing: Vec<String> = quota["spec"]["hard"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .filter(|k| quota["status"]["used"].get(k).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut totals: BTreeMap<String, Milli> = BTreeMap::new();
        let mut resources: BTreeSet<(String, String)> = BTreeSet::new();
        for key in &missing {
            let counted = key.strip_prefix("count/").unwrap_or(key);
            let (resource, group) = counted.split_once('.').unwrap_or((counted, ""));
            let compute = COMPUTE.iter().any(|c| key.ends_with(c)) || key == "pods";
            resources.insert(if compute {
                ("pods".into(), String::new())
            } else {
                (resource.into(), group.into())
            });
        }
        for (resource, group) in resources {
            let prefix = format!("{}/{resource}/{namespace}/", self.prefix);
            for (_, obj) in self.list_prefix(&prefix, &resource).await? {
                for (key, value) in usage_of(&resource, &group, &obj).added {
                    totals.entry(key).or_default().0 += value.0;
                }
            }
        }
        if !quota["status"].is_object() {
            quota["status"] = json!({});
        }
        if !quota["status"]["used"].is_object() {
            quota["status"]["used"] = json!({});
        }
        for key in missing {
            let binary = quota["spec"]["hard"][&key]
                .as_str()
                .is_some_and(quantity::is_binary);
            let total = totals.get(&key).copied().unwrap_or_default();
            quota["status"]["used"][&key] = json!(quantity::format(total, binary));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(hard: Value, used: Value) -> Value {
        json!({"metadata": {"name": "q"}, "spec": {"hard": hard}, "status": {"used": used}})
    }

    #[test]
    fn pods_are_counted_and_refused_past_the_limit() {
        let pod = json!({"spec": {"containers": [{"name": "c"}]}});
        let usage = usage_of("pods", "", &pod);
        assert_eq!(usage.added["pods"], Milli(1000));
        assert_eq!(usage.added["count/pods"], Milli(1000));
        let q = quota(json!({"pods": "2"}), json!({"pods": "1"}));
        assert!(constrains(&q, &usage));
        let charged = charge(&q, &usage).unwrap();
        assert_eq!(
            charged["status"],
            json!({"hard": {"pods": "2"}, "used": {"pods": "2"}})
        );
        assert_eq!(
            charge(&charged, &usage).unwrap_err(),
            "exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
        );
    }

    #[test]
    fn init_containers_and_overhead_count_as_upstream_and_terminal_pods_only_as_objects() {
        let pod = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "250m"}}},
                {"resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "700m"}}}],
            "overhead": {"cpu": "50m"},
        }});
        let usage = usage_of("pods", "", &pod);
        assert_eq!(usage.added["requests.cpu"], Milli(750));
        assert_eq!(usage.added["cpu"], Milli(750));
        let mut done = pod.clone();
        done["status"]["phase"] = json!("Succeeded");
        let usage = usage_of("pods", "", &done);
        assert_eq!(usage.added.keys().collect::<Vec<_>>(), vec!["count/pods"]);
    }

    #[test]
    fn compute_requests_are_summed_and_must_be_stated() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}]}});
        let usage = usage_of("pods", "", &pod);
        let q = quota(
            json!({"requests.cpu": "1", "requests.memory": "1Gi"}),
            json!({"requests.cpu": "500m", "requests.memory": "0"}),
        );
        assert_eq!(
            charge(&q, &usage).unwrap_err(),
            "exceeded quota: q, requested: requests.cpu=750m, used: requests.cpu=500m, limited: requests.cpu=1"
        );
        let roomy = quota(
            json!({"requests.memory": "1Gi"}),
            json!({"requests.memory": "128Mi"}),
        );
        assert_eq!(
            charge(&roomy, &usage).unwrap()["status"]["used"]["requests.memory"],
            "256Mi"
        );
        let limits = quota(json!({"limits.cpu": "2"}), json!({"limits.cpu": "0"}));
        assert_eq!(
            charge(&limits, &usage).unwrap_err(),
            "failed quota: q: must specify limits.cpu"
        );
        let other = usage_of("configmaps", "", &json!({}));
        assert!(!constrains(&limits, &other));
        assert!(constrains(
            &quota(json!({"count/configmaps": "1"}), json!({})),
            &other
        ));
        assert!(!constrains(
            &json!({"spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}}),
            &usage
        ));
    }
}
