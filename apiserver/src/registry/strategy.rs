//! What a kind does differently, in one place: kube-apiserver's per-kind strategies
//! (`RESTCreateStrategy`, `RESTUpdateStrategy`, `RESTDeleteStrategy`, the `TableConvertor` and
//! the field-label function) as one [`Strategy`] trait. The verbs in this folder are written
//! once and ask the kind's strategy; none of them branches on a kind's name.
//!
//! Most kinds are one [`KindStrategy`] row in the table at the end of this file (defaulting
//! and validation functions, Table printer, subresources, categories, field labels); the
//! namespace is [`NamespaceStrategy`], which adds its lifecycle (protected names,
//! `spec.finalizers`, `Terminating`, and deleting its contents with it).

use std::fmt::Debug;

use serde_json::{Value, json};

use crate::registry::table::{self, Printer};
use crate::registry::{defaults, resources};
use crate::status::{ApiError, Reason};

/// A subresource a kind serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: the main resource's writes keep `status`, this one's keep the rest.
    Status,
    /// `/scale` (`autoscaling/v1` `Scale` over `spec.replicas`).
    Scale,
    /// `pods/binding`: assigns a pod to a node.
    Binding,
    /// `pods/log`, `pods/exec`, `pods/attach`, `pods/portforward`: proxied to the pod's
    /// kubelet (`crate::registry::node_proxy`).
    Log,
    Exec,
    Attach,
    PortForward,
}

impl Subresource {
    /// The URL segment.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
        }
    }
}

/// The per-kind behaviour the generic registry asks for.
pub trait Strategy: Debug + Send + Sync {
    /// The kind's Table printer (columns and cells).
    fn printer(&self) -> Printer;

    /// The subresources served besides the object itself.
    fn subresources(&self) -> &'static [Subresource];

    /// Discovery categories (`all` for what `kubectl get all` lists).
    fn categories(&self) -> &'static [&'static str];

    /// Field-selector labels besides `metadata.name` and `metadata.namespace`
    /// (kube-apiserver's per-kind `GetAttrs`).
    fn field_labels(&self) -> &'static [&'static str];

    fn has(&self, sub: Subresource) -> bool {
        self.subresources().contains(&sub)
    }

    /// Whether the name must be a DNS-1123 label (namespaces, services) rather than a
    /// subdomain.
    fn name_is_dns_label(&self) -> bool {
        matches!(self.printer(), Printer::Namespace | Printer::Service)
    }

    /// Fills in kube-apiserver's defaults (`SetDefaults_*`) and a new object's `status`.
    fn defaults(&self, obj: &mut Value);

    /// The kind's validation: `(field, message)` causes of a 422.
    fn validate(&self, obj: &Value) -> Vec<(String, String)>;

    /// A `meta.k8s.io/v1` Table of `objects`.
    fn table(
        &self,
        objects: &[Value],
        resource_version: &str,
        cont: Option<&str>,
        include_object: bool,
    ) -> Value {
        table::table(
            self.printer(),
            objects,
            resource_version,
            cont,
            include_object,
        )
    }

    /// An update's own validation (upstream's `ValidateUpdate` beyond `Validate`): `(field,
    /// message)` causes of a 422 for changes to `current` the kind forbids.
    fn validate_update(&self, _current: &Value, _obj: &Value) -> Vec<(String, String)> {
        Vec::new()
    }

    /// An update (or patch) of the main resource: copies from `current` into `obj` what
    /// clients may not change this way (beyond server-set metadata and `status`).
    fn prepare_for_update(&self, _current: &Value, _obj: &mut Value) {}

    /// Refuses deleting the object `name` outright (e.g. `default`).
    fn check_delete(&self, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// Graceful deletion (upstream's `CheckGracefulDelete`): the grace period in seconds a
    /// delete of `obj` asking for `requested` (`gracePeriodSeconds`) gives it; `None` for
    /// kinds deleted at once. A positive period only marks the object (`deletionTimestamp` =
    /// now + period); its owner (the kubelet) deletes it for good with period 0.
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Whether a deletion must wait (finalizers): the object only gets a
    /// `deletionTimestamp`.
    fn holds_deletion(&self, obj: &Value) -> bool {
        has_finalizers(obj)
    }

    /// Marks an object whose deletion waits (besides its `deletionTimestamp`).
    fn begin_deletion(&self, _obj: &mut Value) {}

    /// Whether the namespaced objects live inside this kind's objects (the namespace): they
    /// are deleted with it, and the namespace finalizer is woken when one starts terminating.
    fn contains_namespaced(&self) -> bool {
        false
    }
}

/// Whether `metadata.finalizers` holds anything.
pub fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// A kind's defaulting function (`crate::registry::defaults`).
pub type DefaultsFn = fn(&mut Value);
/// A kind's validation function (`crate::registry::resources`).
pub type ValidateFn = fn(&Value) -> Vec<(String, String)>;

/// A kind described by one row: its functions and its data.
#[derive(Debug)]
pub struct KindStrategy {
    pub printer: Printer,
    pub defaults: DefaultsFn,
    pub validate: ValidateFn,
    pub subresources: &'static [Subresource],
    pub categories: &'static [&'static str],
    pub field_labels: &'static [&'static str],
}

impl Strategy for KindStrategy {
    fn printer(&self) -> Printer {
        self.printer
    }

    fn defaults(&self, obj: &mut Value) {
        if obj.is_object() {
            (self.defaults)(obj);
        }
    }

    fn validate(&self, obj: &Value) -> Vec<(String, String)> {
        (self.validate)(obj)
    }

    fn subresources(&self) -> &'static [Subresource] {
        self.subresources
    }

    fn categories(&self) -> &'static [&'static str] {
        self.categories
    }

    fn field_labels(&self) -> &'static [&'static str] {
        self.field_labels
    }
}

/// The namespaces that may not be deleted.
const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The namespace: kube-apiserver's namespace strategy and the deletion half of its lifecycle.
#[derive(Debug)]
pub struct NamespaceStrategy(KindStrategy);

impl Strategy for NamespaceStrategy {
    fn printer(&self) -> Printer {
        self.0.printer
    }

    fn defaults(&self, obj: &mut Value) {
        self.0.defaults(obj);
    }

    fn validate(&self, obj: &Value) -> Vec<(String, String)> {
        self.0.validate(obj)
    }

    fn subresources(&self) -> &'static [Subresource] {
        self.0.subresources
    }

    fn categories(&self) -> &'static [&'static str] {
        self.0.categories
    }

    fn field_labels(&self) -> &'static [&'static str] {
        self.0.field_labels
    }

    /// Only the namespace finalizer changes `spec.finalizers` (through the store, below this
    /// layer).
    fn prepare_for_update(&self, current: &Value, obj: &mut Value) {
        match current["spec"].get("finalizers") {
            Some(f) => obj["spec"]["finalizers"] = f.clone(),
            None => {
                if let Some(spec) = obj["spec"].as_object_mut() {
                    spec.remove("finalizers");
                }
            }
        }
    }

    fn check_delete(&self, name: &str) -> Result<(), ApiError> {
        if PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::new(
                Reason::Forbidden,
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            ));
        }
        Ok(())
    }

    /// Also `spec.finalizers` (`kubernetes`: its contents are not deleted yet).
    fn holds_deletion(&self, obj: &Value) -> bool {
        has_finalizers(obj)
            || obj["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
    }

    fn begin_deletion(&self, obj: &mut Value) {
        obj["status"]["phase"] = json!("Terminating");
    }

    fn contains_namespaced(&self) -> bool {
        true
    }
}

/// The Pod: a [`KindStrategy`] with graceful deletion (the pod strategy's
/// `CheckGracefulDelete`): the requested period, else `spec.terminationGracePeriodSeconds`;
/// 0 for a pod no node runs (unscheduled) or one that finished (Succeeded, Failed); a
/// negative period counts as 1.
#[derive(Debug)]
pub struct PodStrategy(KindStrategy);

impl Strategy for PodStrategy {
    fn printer(&self) -> Printer {
        self.0.printer
    }

    fn defaults(&self, obj: &mut Value) {
        self.0.defaults(obj);
    }

    fn validate(&self, obj: &Value) -> Vec<(String, String)> {
        self.0.validate(obj)
    }

    fn subresources(&self) -> &'static [Subresource] {
        self.0.subresources
    }

    fn categories(&self) -> &'static [&'static str] {
        self.0.categories
    }

    fn field_labels(&self) -> &'static [&'static str] {
        self.0.field_labels
    }

    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        let spec = obj["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        let mut period = requested.unwrap_or(spec);
        let scheduled = obj["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            obj["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if !scheduled || finished {
            period = 0;
        }
        Some(if period < 0 { 1 } else { period })
    }
}

/// The StorageClass: a [`KindStrategy`] whose provisioner, parameters, reclaim policy and
/// binding mode are immutable (`ValidateStorageClassUpdate`).
#[derive(Debug)]
pub struct StorageClassStrategy(KindStrategy);

impl Strategy for StorageClassStrategy {
    fn printer(&self) -> Printer {
        self.0.printer
    }

    fn defaults(&self, obj: &mut Value) {
        self.0.defaults(obj);
    }

    fn validate(&self, obj: &Value) -> Vec<(String, String)> {
        self.0.validate(obj)
    }

    fn validate_update(&self, current: &Value, obj: &Value) -> Vec<(String, String)> {
        resources::validate_storage_class_update(current, obj)
    }

    fn subresources(&self) -> &'static [Subresource] {
        self.0.subresources
    }

    fn categories(&self) -> &'static [&'static str] {
        self.0.categories
    }

    fn field_labels(&self) -> &'static [&'static str] {
        self.0.field_labels
    }
}

const STATUS: &[Subresource] = &[Subresource::Status];
const STATUS_SCALE: &[Subresource] = &[Subresource::Status, Subresource::Scale];
/// The pod's: status, binding, and the four its kubelet serves.
const POD_SUBRESOURCES: &[Subresource] = &[
    Subresource::Status,
    Subresource::Binding,
    Subresource::Log,
    Subresource::Exec,
    Subresource::Attach,
    Subresource::PortForward,
];
const ALL: &[&str] = &["all"];

const fn kind(
    printer: Printer,
    defaults: DefaultsFn,
    validate: ValidateFn,
    subresources: &'static [Subresource],
    categories: &'static [&'static str],
    field_labels: &'static [&'static str],
) -> KindStrategy {
    KindStrategy {
        printer,
        defaults,
        validate,
        subresources,
        categories,
        field_labels,
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

#[rustfmt::skip]
static NAMESPACE: NamespaceStrategy = NamespaceStrategy(kind(Printer::Namespace, defaults::namespace, resources::no_validation, STATUS, &[], &["status.phase"]));
#[rustfmt::skip]
static CONFIG_MAP: KindStrategy = kind(Printer::ConfigMap, defaults::none, resources::no_validation, &[], &[], &[]);
#[rustfmt::skip]
static SECRET: KindStrategy = kind(Printer::Secret, defaults::secret, resources::no_validation, &[], &[], &["type"]);
#[rustfmt::skip]
static SERVICE: KindStrategy = kind(Printer::Service, defaults::service, resources::validate_service, STATUS, ALL, &[]);
#[rustfmt::skip]
static POD: PodStrategy = PodStrategy(kind(Printer::Pod, defaults::pod, resources::validate_pod, POD_SUBRESOURCES, ALL, POD_FIELDS));
#[rustfmt::skip]
static DEPLOYMENT: KindStrategy = kind(Printer::Deployment, defaults::deployment, resources::validate_workload, STATUS_SCALE, ALL, &[]);
#[rustfmt::skip]
static NODE: KindStrategy = kind(Printer::Node, defaults::node, resources::no_validation, STATUS, &[], &["spec.unschedulable"]);
#[rustfmt::skip]
static EVENT: KindStrategy = kind(Printer::Event, defaults::none, resources::no_validation, &[], &[], EVENT_FIELDS);
#[rustfmt::skip]
static ENDPOINTS: KindStrategy = kind(Printer::Endpoints, defaults::endpoints, resources::no_validation, &[], &[], &[]);
#[rustfmt::skip]
static REPLICA_SET: KindStrategy = kind(Printer::ReplicaSet, defaults::replica_set, resources::validate_workload, STATUS_SCALE, ALL, &["status.replicas"]);
#[rustfmt::skip]
static PERSISTENT_VOLUME: KindStrategy = kind(Printer::PersistentVolume, defaults::persistent_volume, resources::no_validation, STATUS, &[], &[]);
#[rustfmt::skip]
static PERSISTENT_VOLUME_CLAIM: KindStrategy = kind(Printer::PersistentVolumeClaim, defaults::persistent_volume_claim, resources::no_validation, STATUS, &[], &[]);
#[rustfmt::skip]
static RESOURCE_QUOTA: KindStrategy = kind(Printer::ResourceQuota, defaults::resource_quota, resources::no_validation, STATUS, &[], &[]);
#[rustfmt::skip]
static SERVICE_ACCOUNT: KindStrategy = kind(Printer::ServiceAccount, defaults::none, resources::no_validation, &[], &[], &[]);
#[rustfmt::skip]
static LEASE: KindStrategy = kind(Printer::Lease, defaults::none, resources::no_validation, &[], &[], &[]);
#[rustfmt::skip]
static ENDPOINT_SLICE: KindStrategy = kind(Printer::EndpointSlice, defaults::endpoint_slice, resources::no_validation, &[], &[], &[]);
#[rustfmt::skip]
static LIMIT_RANGE: KindStrategy = kind(Printer::LimitRange, defaults::limit_range, resources::no_validation, &[], &[], &[]);
#[rustfmt::skip]
static WEBHOOK_CONFIGURATION: KindStrategy = kind(Printer::WebhookConfiguration, defaults::webhook_configuration, resources::no_validation, &[], &["api-extensions"], &[]);
#[rustfmt::skip]
static PRIORITY_CLASS: KindStrategy = kind(Printer::PriorityClass, defaults::priority_class, resources::validate_priority_class, &[], &[], &[]);
#[rustfmt::skip]
static STORAGE_CLASS: StorageClassStrategy = StorageClassStrategy(kind(Printer::StorageClass, defaults::storage_class, resources::validate_storage_class, &[], &[], &[]));

#[rustfmt::skip]
static NETWORK_POLICY: KindStrategy = kind(Printer::NetworkPolicy, defaults::none, resources::no_validation, &[], &[], &[]);

/// The strategy of the kind `printer` prints.
pub fn of(printer: Printer) -> &'static dyn Strategy {
    match printer {
        Printer::Namespace => &NAMESPACE,
        Printer::ConfigMap => &CONFIG_MAP,
        Printer::Secret => &SECRET,
        Printer::Service => &SERVICE,
        Printer::Pod => &POD,
        Printer::Deployment => &DEPLOYMENT,
        Printer::Node => &NODE,
        Printer::Event => &EVENT,
        Printer::Endpoints => &ENDPOINTS,
        Printer::ReplicaSet => &REPLICA_SET,
        Printer::PersistentVolume => &PERSISTENT_VOLUME,
        Printer::PersistentVolumeClaim => &PERSISTENT_VOLUME_CLAIM,
        Printer::ResourceQuota => &RESOURCE_QUOTA,
        Printer::ServiceAccount => &SERVICE_ACCOUNT,
        Printer::Lease => &LEASE,
        Printer::EndpointSlice => &ENDPOINT_SLICE,
        Printer::LimitRange => &LIMIT_RANGE,
        Printer::PriorityClass => &PRIORITY_CLASS,
        Printer::StorageClass => &STORAGE_CLASS,
        Printer::WebhookConfiguration => &WEBHOOK_CONFIGURATION,
        Printer::NetworkPolicy => &NETWORK_POLICY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_keeps_its_finalizers_and_protects_its_own() {
        let ns = of(Printer::Namespace);
        assert!(ns.contains_namespaced() && !of(Printer::Pod).contains_namespaced());
        let current = json!({"spec": {"finalizers": ["kubernetes"]}});
        let mut update = json!({"spec": {"finalizers": []}});
        ns.prepare_for_update(&current, &mut update);
        assert_eq!(update["spec"]["finalizers"], json!(["kubernetes"]));
        assert!(ns.holds_deletion(&current) && !of(Printer::ConfigMap).holds_deletion(&current));
        let err = ns.check_delete("kube-system").unwrap_err();
        assert_eq!((err.code, err.reason), (403, Reason::Forbidden));
        assert!(ns.check_delete("team-a").is_ok());
        let mut obj = json!({});
        ns.begin_deletion(&mut obj);
        assert_eq!(obj["status"]["phase"], "Terminating");
    }

    #[test]
    fn subresources_follow_kube_apiserver() {
        assert!(of(Printer::Deployment).has(Subresource::Scale));
        assert!(of(Printer::Pod).has(Subresource::Binding));
        assert!(of(Printer::Pod).has(Subresource::Exec));
        assert!(!of(Printer::Deployment).has(Subresource::Log));
        assert!(!of(Printer::ConfigMap).has(Subresource::Status));
        assert_eq!(of(Printer::Service).categories(), ["all"]);
    }

    #[test]
    fn storage_classes_refuse_changing_their_provisioner() {
        let sc = of(Printer::StorageClass);
        let current = json!({"provisioner": "a", "reclaimPolicy": "Delete",
                             "volumeBindingMode": "Immediate"});
        let mut obj = current.clone();
        assert!(sc.validate_update(&current, &obj).is_empty());
        obj["provisioner"] = json!("b");
        assert_eq!(sc.validate_update(&current, &obj).len(), 1);
        assert!(
            of(Printer::PriorityClass)
                .validate_update(&current, &obj)
                .is_empty()
        );
    }
}
