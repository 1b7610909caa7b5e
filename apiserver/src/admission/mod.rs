//! Admission control (kube-apiserver's `admission.Interface` chain): every create, update and
//! delete the registry is about to write first passes the mutating plugins, in upstream's
//! order, then — after the registry's defaults and validation ran again on what they changed —
//! the validating plugins, in the same order. A plugin refuses with a `Status` (403 Forbidden,
//! `pods "x" is forbidden: …`, as upstream's `admission.NewForbidden`).
//!
//! The registry calls the chain (layer order: `registry` → `admission` → `storage`); plugins
//! read what they decide on (namespaces, LimitRanges, PriorityClasses, ResourceQuotas) through
//! the same [`Storage`] and keys, and `ResourceQuota` writes quota status there.
//!
//! Plugins: [`namespace_lifecycle`], [`limit_ranger`], [`service_account`],
//! [`default_toleration_seconds`], [`priority`], [`default_storage_class`], [`webhook`] (mutating and validating
//! admission webhooks), [`resource_quota`]. Which run is
//! `--enable-admission-plugins` / `--disable-admission-plugins` over upstream's default-on set
//! ([`plugins_from_flags`]; `ResourceQuota` is not on by default yet, see [`Plugin::default_on`]).

pub mod default_storage_class;
pub mod default_toleration_seconds;
pub mod limit_ranger;
pub mod namespace_lifecycle;
pub mod priority;
pub mod quantity;
pub mod resource_quota;
pub mod service_account;
pub mod webhook;
pub mod webhook_client;

use std::sync::Arc;

use serde_json::Value;

use crate::status::ApiError;
use crate::storage::{Storage, Stored};

/// What a request does to an object (`admission.Operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

/// What the plugins know of a request (`admission.Attributes`).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub operation: Operation,
    pub kind: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    /// The plural resource (`pods`).
    pub resource: &'a str,
    /// `status`, `scale`, `binding`, …; None for the object itself.
    pub subresource: Option<&'a str>,
    /// None for cluster-scoped kinds.
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// The stored object an update or delete changes.
    pub old: Option<&'a Value>,
    /// `dryRun=All`: decide, but write nothing (no quota charged).
    pub dry_run: bool,
}

impl Attributes<'_> {
    /// A create or update of a pod itself (not a subresource), the requests most plugins
    /// act on.
    fn is_pod(&self, operation: Operation) -> bool {
        self.operation == operation
            && self.group.is_empty()
            && self.resource == "pods"
            && self.subresource.is_none()
    }

    /// `admission.NewForbidden`: `<resource> "<name>" is forbidden: <why>`.
    pub fn forbidden(&self, why: &str) -> ApiError {
        ApiError::forbidden(self.resource, self.group, self.name, why)
    }
}

/// A plugin this server implements, by upstream's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    NamespaceLifecycle,
    LimitRanger,
    ServiceAccount,
    DefaultTolerationSeconds,
    Priority,
    DefaultStorageClass,
    MutatingAdmissionWebhook,
    ValidatingAdmissionWebhook,
    ResourceQuota,
}

/// Every implemented plugin, in upstream's order (`AllOrderedPlugins`): the chain runs them
/// in this order whatever order the flags name them in.
pub const ORDERED_PLUGINS: [Plugin; 9] = [
    Plugin::NamespaceLifecycle,
    Plugin::LimitRanger,
    Plugin::ServiceAccount,
    Plugin::DefaultTolerationSeconds,
    Plugin::Priority,
    Plugin::DefaultStorageClass,
    Plugin::MutatingAdmissionWebhook,
    Plugin::ValidatingAdmissionWebhook,
    Plugin::ResourceQuota,
];

/// Upstream plugins that are accepted in the flags but not implemented here (a warning is
/// logged): a kube-apiserver command line keeps working.
pub const KNOWN_UNIMPLEMENTED: &[&str] = &[
    "AlwaysAdmit",
    "AlwaysPullImages",
    "CertificateApproval",
    "CertificateSigning",
    "CertificateSubjectRestriction",
    "ClusterTrustBundleAttest",
    "DefaultIngressClass",
    "DenyServiceExternalIPs",
    "EventRateLimit",
    "ExtendedResourceToleration",
    "ImagePolicyWebhook",
    "LimitPodHardAntiAffinityTopology",
    "MutatingAdmissionPolicy",
    "NamespaceAutoProvision",
    "NamespaceExists",
    "NodeRestriction",
    "OwnerReferencesPermissionEnforcement",
    "PersistentVolumeClaimResize",
    "PodNodeSelector",
    "PodSecurity",
    "PodTolerationRestriction",
    "RuntimeClass",
    "ServiceAccountTokenRestriction",
    "StorageObjectInUseProtection",
    "TaintNodesByCondition",
    "ValidatingAdmissionPolicy",
];

impl Plugin {
    /// Upstream's name, as the flags spell it.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::NamespaceLifecycle => "NamespaceLifecycle",
            Plugin::LimitRanger => "LimitRanger",
            Plugin::ServiceAccount => "ServiceAccount",
            Plugin::DefaultTolerationSeconds => "DefaultTolerationSeconds",
            Plugin::Priority => "Priority",
            Plugin::DefaultStorageClass => "DefaultStorageClass",
            Plugin::MutatingAdmissionWebhook => "MutatingAdmissionWebhook",
            Plugin::ValidatingAdmissionWebhook => "ValidatingAdmissionWebhook",
            Plugin::ResourceQuota => "ResourceQuota",
        }
    }

    /// Whether it runs without flags. Upstream's `DefaultOnAdmissionPlugins` holds them all;
    /// here `ResourceQuota` still waits for `--enable-admission-plugins=ResourceQuota`: with
    /// it, a pod that states no CPU request is refused under a quota on `cpu` (upstream's
    /// backward-compatible "must specify cpu"), which the kubectl suite's `kubectl run` under
    /// its `cpu=2` quota does not expect yet.
    pub fn default_on(self) -> bool {
        self != Plugin::ResourceQuota
    }
}

/// The plugins to run: upstream's default-on set, plus `enable`, minus `disable`, in
/// [`ORDERED_PLUGINS`] order. An unknown name is an error (upstream refuses to start); a known
/// upstream plugin this server lacks is returned in the second list, to be warned about.
pub fn plugins_from_flags(
    enable: &[String],
    disable: &[String],
) -> Result<(Vec<Plugin>, Vec<String>), String> {
    let mut unimplemented = Vec::new();
    for (flag, names) in [
        ("--enable-admission-plugins", enable),
        ("--disable-admission-plugins", disable),
    ] {
        for name in names.iter().filter(|n| !n.is_empty()) {
            if ORDERED_PLUGINS.iter().any(|p| p.name() == name) {
                continue;
            }
            if KNOWN_UNIMPLEMENTED.contains(&name.as_str()) {
                unimplemented.push(name.clone());
                continue;
            }
            return Err(format!("{flag} plugin {name:?} is unknown"));
        }
    }
    if let Some(both) = enable.iter().find(|n| disable.contains(n)) {
        return Err(format!(
            "{both} plugin is both enabled and disabled: --enable-admission-plugins and \
             --disable-admission-plugins must not overlap"
        ));
    }
    let plugins = ORDERED_PLUGINS
        .into_iter()
        .filter(|p| {
            let named = |list: &[String]| list.iter().any(|n| n == p.name());
            (p.default_on() || named(enable)) && !named(disable)
        })
        .collect();
    Ok((plugins, unimplemented))
}

/// How many locks the namespaces' quota checks are spread over (a namespace's checks in this
/// replica take one in turn, as upstream's quota evaluator serializes them per namespace).
const QUOTA_LOCK_STRIPES: usize = 64;

/// The chain, with what its plugins read and write through.
pub struct Admission {
    plugins: Vec<Plugin>,
    storage: Arc<dyn Storage>,
    /// The key prefix (`--etcd-prefix`), without a trailing slash.
    prefix: String,
    quota_locks: Vec<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("plugins", &self.plugins)
            .finish_non_exhaustive()
    }
}

impl Admission {
    pub fn new(storage: Arc<dyn Storage>, prefix: &str, plugins: Vec<Plugin>) -> Admission {
        Admission {
            plugins,
            storage,
            prefix: prefix.trim_end_matches('/').to_string(),
            quota_locks: (0..QUOTA_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
    }

    /// The mutating phase: each enabled plugin may change `obj`.
    pub async fn mutate(&self, attrs: &Attributes<'_>, obj: &mut Value) -> Result<(), ApiError> {
        for plugin in &self.plugins {
            match plugin {
                Plugin::LimitRanger if attrs.is_pod(Operation::Create) => {
                    let ranges = self.list_in(attrs, "limitranges").await?;
                    limit_ranger::set_defaults(obj, &ranges);
                }
                Plugin::ServiceAccount if attrs.is_pod(Operation::Create) => {
                    service_account::set_default(obj);
                }
                Plugin::DefaultTolerationSeconds if attrs.is_pod(Operation::Create) => {
                    default_toleration_seconds::add_tolerations(obj);
                }
                Plugin::Priority if attrs.is_pod(Operation::Create) => {
                    let classes = self.list_cluster("priorityclasses").await?;
                    priority::resolve(obj, &classes).map_err(|why| attrs.forbidden(&why))?;
                }
                Plugin::DefaultStorageClass
                    if attrs.operation == Operation::Create
                        && attrs.group.is_empty()
                        && attrs.resource == "persistentvolumeclaims"
                        && attrs.subresource.is_none() =>
                {
                    let classes = self.list_cluster("storageclasses").await?;
                    default_storage_class::set_default(obj, &classes);
                }
                Plugin::MutatingAdmissionWebhook => {
                    self.call_webhooks(webhook::Phase::Mutating, attrs, obj)
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The validating phase: each enabled plugin may refuse `obj` (for a delete, the object
    /// being deleted).
    pub async fn validate(&self, attrs: &Attributes<'_>, obj: &Value) -> Result<(), ApiError> {
        for plugin in &self.plugins {
            match plugin {
                Plugin::NamespaceLifecycle if attrs.operation == Operation::Create => {
                    self.check_namespace(attrs).await?;
                }
                Plugin::LimitRanger if attrs.is_pod(Operation::Create) => {
                    let ranges = self.list_in(attrs, "limitranges").await?;
                    limit_ranger::check(obj, &ranges).map_err(|why| attrs.forbidden(&why))?;
                }
                Plugin::Priority
                    if attrs.group == "scheduling.k8s.io"
                        && attrs.resource == "priorityclasses"
                        && matches!(attrs.operation, Operation::Create | Operation::Update) =>
                {
                    let classes = self.list_cluster("priorityclasses").await?;
                    priority::check_global_default(obj, &classes)
                        .map_err(|why| attrs.forbidden(&why))?;
                }
                Plugin::ValidatingAdmissionWebhook => {
                    // Validating webhooks see the object but cannot change it.
                    let mut seen = obj.clone();
                    self.call_webhooks(webhook::Phase::Validating, attrs, &mut seen)
                        .await?;
                }
                Plugin::ResourceQuota
                    if attrs.operation == Operation::Create && attrs.subresource.is_none() =>
                {
                    self.charge_quota(attrs, obj).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `<prefix>/<resource>/<namespace>/<name>` (or without the namespace).
    fn key(&self, resource: &str, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) => format!("{}/{resource}/{ns}/{name}", self.prefix),
            None => format!("{}/{resource}/{name}", self.prefix),
        }
    }

    async fn get(&self, key: &str, resource: &str) -> Result<Option<Stored>, ApiError> {
        self.storage
            .get(key)
            .await
            .map_err(|e| storage_error(e, resource))
    }

    /// Every object of `resource` under a key prefix, decoded (what does not decode is
    /// skipped).
    async fn list_prefix(
        &self,
        prefix: &str,
        resource: &str,
    ) -> Result<Vec<(Stored, Value)>, ApiError> {
        let page = self
            .storage
            .list(prefix, "", 0, 0)
            .await
            .map_err(|e| storage_error(e, resource))?;
        Ok(page
            .items
            .into_iter()
            .filter_map(|s| {
                let v = serde_json::from_slice(&s.value).ok()?;
                Some((s, v))
            })
            .collect())
    }

    /// The objects of a namespaced `resource` in the request's namespace.
    async fn list_in(
        &self,
        attrs: &Attributes<'_>,
        resource: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let Some(ns) = attrs.namespace else {
            return Ok(Vec::new());
        };
        let prefix = format!("{}/{resource}/{ns}/", self.prefix);
        let items = self.list_prefix(&prefix, resource).await?;
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    /// The objects of a cluster-scoped `resource`.
    async fn list_cluster(&self, resource: &str) -> Result<Vec<Value>, ApiError> {
        let prefix = format!("{}/{resource}/", self.prefix);
        let items = self.list_prefix(&prefix, resource).await?;
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }
}

/// A storage failure while a plugin reads or writes what it decides on: kube-apiserver
/// answers these as internal errors of the plugin.
fn storage_error(err: crate::storage::StorageError, resource: &str) -> ApiError {
    match err {
        crate::storage::StorageError::Unavailable(msg) => ApiError::new(
            crate::status::Reason::ServiceUnavailable,
            format!("storage unavailable: {msg}"),
        )
        .retry_after(1),
        other => ApiError::internal(format!("admission: reading {resource}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pick_plugins_in_upstream_order() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (defaults, _) = plugins_from_flags(&[], &[]).unwrap();
        assert_eq!(defaults, ORDERED_PLUGINS[..8]);
        let (all, _) = plugins_from_flags(&s(&["ResourceQuota"]), &[]).unwrap();
        assert_eq!(all, ORDERED_PLUGINS);
        let (some, warn) =
            plugins_from_flags(&s(&["Priority", "NodeRestriction"]), &s(&["LimitRanger"])).unwrap();
        assert_eq!(
            some,
            [
                Plugin::NamespaceLifecycle,
                Plugin::ServiceAccount,
                Plugin::DefaultTolerationSeconds,
                Plugin::Priority,
                Plugin::DefaultStorageClass,
                Plugin::MutatingAdmissionWebhook,
                Plugin::ValidatingAdmissionWebhook,
            ]
        );
        assert_eq!(warn, ["NodeRestriction"]);
        assert!(plugins_from_flags(&s(&["Nope"]), &[]).is_err());
        assert!(plugins_from_flags(&s(&["Priority"]), &s(&["Priority"])).is_err());
    }
}
