//! NamespaceLifecycle: nothing is created in a namespace that does not exist (404, as upstream
//! answers) or is being terminated (403 `… is forbidden: unable to create new content in
//! namespace X because it is being terminated`). The protected namespaces' deletion refusal
//! stays with the namespace's strategy.

use serde_json::Value;

use crate::admission::{Admission, Attributes};
use crate::status::ApiError;

/// Why a create in `namespace` is refused, given the stored namespace (None = missing).
pub fn check(
    attrs: &Attributes<'_>,
    namespace: &str,
    stored: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(ns) = stored else {
        return Err(ApiError::not_found("namespaces", "", namespace));
    };
    let terminating = ns["metadata"]["deletionTimestamp"].is_string()
        || ns["status"]["phase"].as_str() == Some("Terminating");
    if terminating {
        return Err(attrs.forbidden(&format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )));
    }
    Ok(())
}

impl Admission {
    /// Reads the request's namespace and applies [`check`]; cluster-scoped kinds pass.
    pub(super) async fn check_namespace(&self, attrs: &Attributes<'_>) -> Result<(), ApiError> {
        let Some(namespace) = attrs.namespace else {
            return Ok(());
        };
        let stored = self
            .get(&self.key("namespaces", None, namespace), "namespaces")
            .await?;
        let ns = stored.and_then(|s| serde_json::from_slice::<Value>(&s.value).ok());
        check(attrs, namespace, ns.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::admission::Operation;
    use crate::status::Reason;

    #[test]
    fn missing_and_terminating_namespaces_refuse_creates() {
        let attrs = Attributes {
            operation: Operation::Create,
            kind: "Pod",
            group: "",
            version: "v1",
            resource: "pods",
            subresource: None,
            namespace: Some("team"),
            name: "web",
            old: None,
            dry_run: false,
        };
        let missing = check(&attrs, "team", None).unwrap_err();
        assert_eq!(
            (missing.reason, missing.message.as_str()),
            (Reason::NotFound, "namespaces \"team\" not found")
        );
        let terminating = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"},
                                 "status": {"phase": "Terminating"}});
        let err = check(&attrs, "team", Some(&terminating)).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "pods \"web\" is forbidden: unable to create new content in namespace team because it is being terminated"
        );
        assert!(
            check(
                &attrs,
                "team",
                Some(&json!({"status": {"phase": "Active"}}))
            )
            .is_ok()
        );
    }
}
