//! Priority: a pod's `spec.priorityClassName` becomes its `spec.priority` and
//! `spec.preemptionPolicy` (a pod naming none gets the `globalDefault` class, else priority 0);
//! at most one PriorityClass is the global default. The built-in classes are seeded by the
//! registry from [`SYSTEM_PRIORITY_CLASSES`].

use serde_json::{Value, json};

/// The built-in classes: (name, value, description).
pub const SYSTEM_PRIORITY_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
];
/// A pod's priority when it names no class and no class is the global default.
const PRIORITY_WITHOUT_DEFAULT_CLASS: i64 = 0;
/// `preemptionPolicy` when nothing says otherwise.
const DEFAULT_PREEMPTION_POLICY: &str = "PreemptLowerPriority";

/// The built-in class `name` as an object to store.
pub fn system_priority_class(name: &str, value: i64, description: &str) -> Value {
    json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
           "metadata": {"name": name}, "value": value, "globalDefault": false,
           "description": description, "preemptionPolicy": DEFAULT_PREEMPTION_POLICY})
}

/// The global default class: of several, the lowest value (upstream's choice).
fn global_default(classes: &[Value]) -> Option<&Value> {
    classes
        .iter()
        .filter(|c| c["globalDefault"].as_bool() == Some(true))
        .min_by_key(|c| c["value"].as_i64().unwrap_or(0))
}

/// Resolves the pod's class onto `spec.priority` and `spec.preemptionPolicy`; the error is
/// the reason the pod is forbidden.
pub fn resolve(pod: &mut Value, classes: &[Value]) -> Result<(), String> {
    if !pod["spec"].is_object() {
        return Ok(());
    }
    let named = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(String::from);
    let (priority, policy) = match &named {
        Some(name) => {
            let class = classes
                .iter()
                .find(|c| c["metadata"]["name"].as_str() == Some(name))
                .ok_or_else(|| format!("no PriorityClass with name {name} was found"))?;
            (class["value"].as_i64().unwrap_or(0), policy_of(class))
        }
        None => match global_default(classes) {
            Some(class) => {
                pod["spec"]["priorityClassName"] = class["metadata"]["name"].clone();
                (class["value"].as_i64().unwrap_or(0), policy_of(class))
            }
            None => (
                PRIORITY_WITHOUT_DEFAULT_CLASS,
                DEFAULT_PREEMPTION_POLICY.to_string(),
            ),
        },
    };
    if let Some(given) = pod["spec"]["priority"].as_i64()
        && given != priority
    {
        return Err(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority \
             admission controller computed {priority} from the given PriorityClass name"
        ));
    }
    if let Some(given) = pod["spec"]["preemptionPolicy"].as_str()
        && given != policy
    {
        return Err(format!(
            "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; \
             priority admission controller computed {policy} from the given PriorityClass name"
        ));
    }
    pod["spec"]["priority"] = json!(priority);
    pod["spec"]["preemptionPolicy"] = json!(policy);
    Ok(())
}

fn policy_of(class: &Value) -> String {
    class["preemptionPolicy"]
        .as_str()
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_PREEMPTION_POLICY)
        .to_string()
}

/// Refuses a second `globalDefault` class (`class` is the one being written).
pub fn check_global_default(class: &Value, classes: &[Value]) -> Result<(), String> {
    if class["globalDefault"].as_bool() != Some(true) {
        return Ok(());
    }
    let name = class["metadata"]["name"].as_str().unwrap_or("");
    match classes.iter().find(|c| {
        c["globalDefault"].as_bool() == Some(true) && c["metadata"]["name"].as_str() != Some(name)
    }) {
        Some(other) => Err(format!(
            "PriorityClass {} is already marked as default. Only one default can exist",
            other["metadata"]["name"].as_str().unwrap_or("")
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, value: i64, default: bool) -> Value {
        json!({"metadata": {"name": name}, "value": value, "globalDefault": default})
    }

    #[test]
    fn a_class_name_becomes_a_priority() {
        let classes = [
            class("high", 1000, false),
            system_priority_class("system-node-critical", 2_000_001_000, ""),
        ];
        let mut pod = json!({"spec": {"priorityClassName": "high"}});
        resolve(&mut pod, &classes).unwrap();
        assert_eq!(
            (
                pod["spec"]["priority"].as_i64(),
                pod["spec"]["preemptionPolicy"].as_str()
            ),
            (Some(1000), Some("PreemptLowerPriority"))
        );
        let mut critical = json!({"spec": {"priorityClassName": "system-node-critical"}});
        resolve(&mut critical, &classes).unwrap();
        assert_eq!(critical["spec"]["priority"], 2_000_001_000);
        let mut plain = json!({"spec": {}});
        resolve(&mut plain, &classes).unwrap();
        assert_eq!(plain["spec"]["priority"], 0);
        assert!(plain["spec"].get("priorityClassName").is_none());
    }

    #[test]
    fn the_global_default_applies_and_mismatches_are_refused() {
        let classes = [class("low", 10, true), class("lower", 5, true)];
        let mut pod = json!({"spec": {}});
        resolve(&mut pod, &classes).unwrap();
        assert_eq!(
            (
                pod["spec"]["priorityClassName"].as_str(),
                pod["spec"]["priority"].as_i64()
            ),
            (Some("lower"), Some(5))
        );
        let mut missing = json!({"spec": {"priorityClassName": "nope"}});
        assert_eq!(
            resolve(&mut missing, &classes).unwrap_err(),
            "no PriorityClass with name nope was found"
        );
        let mut wrong = json!({"spec": {"priorityClassName": "low", "priority": 7}});
        assert!(
            resolve(&mut wrong, &classes)
                .unwrap_err()
                .starts_with("the integer value of priority (7)")
        );
        assert_eq!(
            check_global_default(&class("new", 1, true), &classes[..1]).unwrap_err(),
            "PriorityClass low is already marked as default. Only one default can exist"
        );
        assert!(check_global_default(&class("low", 1, true), &classes[..1]).is_ok());
    }
}
