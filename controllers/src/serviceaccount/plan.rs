//! The ServiceAccount controller's decisions, as kube-controller-manager's
//! `serviceaccounts_controller.go` makes them, without any IO: which of the service accounts
//! every namespace must hold (`default`) an active namespace lacks.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The service accounts every namespace holds (upstream's `DefaultServiceAccountsController
/// Options`).
pub const ENSURED_SERVICE_ACCOUNTS: &[&str] = &["default"];

/// Whether a namespace is active: phase `Active` (an object without a phase yet counts as
/// active, as the API server defaults it) and not being deleted.
pub fn is_active(namespace: &Namespace) -> bool {
    let phase = namespace
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Active");
    phase == "Active" && namespace.metadata.deletion_timestamp.is_none()
}

/// The service accounts to create in `namespace`, given the names of those it holds
/// (`existing`): none for a namespace that is not active, else each ensured one missing.
pub fn missing_service_accounts(namespace: &Namespace, existing: &BTreeSet<String>) -> Vec<String> {
    if !is_active(namespace) {
        return Vec::new();
    }
    ENSURED_SERVICE_ACCOUNTS
        .iter()
        .filter(|name| !existing.contains(**name))
        .map(|name| name.to_string())
        .collect()
}

/// The service account to create: only its name and namespace.
pub fn service_account(namespace: &str, name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Whether a create was refused only because the namespace is being terminated (the API
/// server's NamespaceLifecycle: 403 `… because it is being terminated`), which is nothing to
/// retry.
pub fn refused_for_termination(code: u16, message: &str) -> bool {
    code == 403 && message.contains("because it is being terminated")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn namespace(phase: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("team".into()),
                ..Default::default()
            },
            status: phase.map(|p| NamespaceStatus {
                phase: Some(p.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_active_namespace_without_default_gets_one() {
        assert_eq!(
            missing_service_accounts(&namespace(Some("Active")), &names(&["builder"])),
            vec!["default".to_string()]
        );
        assert_eq!(
            missing_service_accounts(&namespace(None), &names(&[])),
            vec!["default".to_string()]
        );
        assert!(
            missing_service_accounts(&namespace(Some("Active")), &names(&["default"])).is_empty()
        );
    }

    #[test]
    fn terminating_namespaces_get_nothing() {
        assert!(missing_service_accounts(&namespace(Some("Terminating")), &names(&[])).is_empty());
        let mut deleting = namespace(Some("Active"));
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert!(missing_service_accounts(&deleting, &names(&[])).is_empty());
    }

    #[test]
    fn the_account_and_the_termination_refusal() {
        let sa = service_account("team", "default");
        assert_eq!(sa.metadata.name.as_deref(), Some("default"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("team"));
        assert!(refused_for_termination(
            403,
            "serviceaccounts \"default\" is forbidden: unable to create new content in namespace team because it is being terminated"
        ));
        assert!(!refused_for_termination(403, "forbidden: quota"));
        assert!(!refused_for_termination(
            500,
            "because it is being terminated"
        ));
    }
}
