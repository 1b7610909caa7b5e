//! ServiceAccount (the pod half): a pod that names no service account runs as `default`.
//! Upstream also refuses a pod whose service account does not exist and mounts its token;
//! both wait for the controller that creates each namespace's `default` account.

use serde_json::{Value, json};

/// The service account a pod gets when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Mirror pods (the kubelet's static pods) are left alone, as upstream does.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Sets `spec.serviceAccountName` (and the deprecated `spec.serviceAccount` it mirrors).
pub fn set_default(pod: &mut Value) {
    if pod["metadata"]["annotations"][MIRROR_POD_ANNOTATION].is_string() || !pod["spec"].is_object()
    {
        return;
    }
    let spec = &mut pod["spec"];
    let named = spec["serviceAccountName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| spec["serviceAccount"].as_str().filter(|n| !n.is_empty()))
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_string();
    spec["serviceAccountName"] = json!(named);
    spec["serviceAccount"] = json!(named);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_run_as_default_unless_they_name_an_account() {
        let mut pod = json!({"metadata": {}, "spec": {"containers": []}});
        set_default(&mut pod);
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["serviceAccount"], "default");
        let mut named = json!({"metadata": {}, "spec": {"serviceAccountName": "builder"}});
        set_default(&mut named);
        assert_eq!(named["spec"]["serviceAccountName"], "builder");
        let mut mirror =
            json!({"metadata": {"annotations": {MIRROR_POD_ANNOTATION: "x"}}, "spec": {}});
        set_default(&mut mirror);
        assert!(mirror["spec"].get("serviceAccountName").is_none());
    }
}
