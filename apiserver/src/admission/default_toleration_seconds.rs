//! DefaultTolerationSeconds: a pod that does not already tolerate them gets tolerations of
//! the `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` NoExecute taints
//! for 300 seconds (upstream's `--default-not-ready-toleration-seconds` and
//! `--default-unreachable-toleration-seconds`), so it is evicted five minutes after its node
//! goes away.

use serde_json::{Value, json};

/// Upstream's default for both flags.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;
/// The taints the tolerations are for.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Whether some toleration already covers a NoExecute `taint` (its key, or every key, with
/// the NoExecute effect or every effect).
fn tolerates(tolerations: &[Value], taint: &str) -> bool {
    tolerations.iter().any(|t| {
        let key = t["key"].as_str().unwrap_or("");
        let effect = t["effect"].as_str().unwrap_or("");
        (key == taint || key.is_empty()) && (effect == "NoExecute" || effect.is_empty())
    })
}

/// Adds the two tolerations the pod lacks.
pub fn add_tolerations(pod: &mut Value) {
    if !pod["spec"].is_object() {
        return;
    }
    let mut tolerations = pod["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut added = false;
    for taint in [NOT_READY_TAINT, UNREACHABLE_TAINT] {
        if !tolerates(&tolerations, taint) {
            tolerations.push(
                json!({"key": taint, "operator": "Exists", "effect": "NoExecute",
                                    "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}),
            );
            added = true;
        }
    }
    if added {
        pod["spec"]["tolerations"] = json!(tolerations);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_what_is_not_tolerated_yet() {
        let mut pod = json!({"spec": {"tolerations": [
            {"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]}});
        add_tolerations(&mut pod);
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 10);
        assert_eq!(t[1]["key"], UNREACHABLE_TAINT);
        assert_eq!(t[1]["tolerationSeconds"], 300);
        let mut everything = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        add_tolerations(&mut everything);
        assert_eq!(
            everything["spec"]["tolerations"].as_array().unwrap().len(),
            1
        );
    }
}
