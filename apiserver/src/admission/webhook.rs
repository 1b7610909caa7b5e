//! MutatingAdmissionWebhook and ValidatingAdmissionWebhook: the
//! `admissionregistration.k8s.io/v1` configurations (by name order, then webhook order) whose
//! `rules`, `namespaceSelector` and `objectSelector` match a request get an
//! `admission.k8s.io/v1` AdmissionReview over HTTPS ([`super::webhook_client`]); a mutating
//! webhook's `JSONPatch` is applied (the `json-patch` crate), a denial is upstream's
//! `admission webhook "x" denied the request: …`, and a webhook that cannot be reached,
//! times out (`timeoutSeconds`) or answers nonsense is skipped under `failurePolicy: Ignore`
//! and refuses the request (500) under `Fail`, the default.
//!
//! Not yet: `clientConfig.service` (only `url`), webhooks without a `caBundle` (no system
//! roots), `userInfo` in the review, `matchConditions`, reinvocation, the `sideEffects` check
//! of dry-run requests, and calling validating webhooks in parallel. Requests on the webhook
//! configurations themselves are never sent to webhooks (upstream's lock-out guard).

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::admission::webhook_client::{self, CallError};
use crate::admission::{Admission, Attributes, Operation};
use crate::selector::{LabelSelector, labels_of};
use crate::status::{ApiError, Reason};

/// The group of the webhook configurations (never sent to webhooks).
const ADMISSION_REGISTRATION_GROUP: &str = "admissionregistration.k8s.io";
/// `timeoutSeconds` when a webhook gives none (upstream's default).
const WEBHOOK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Which configurations a phase calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Mutating,
    Validating,
}

impl Phase {
    fn resource(self) -> &'static str {
        match self {
            Phase::Mutating => "mutatingwebhookconfigurations",
            Phase::Validating => "validatingwebhookconfigurations",
        }
    }
}

fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// Whether a list of a rule's strings admits `value` (`*` admits all).
fn admits(list: &Value, value: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .any(|v| v == "*" || v == value)
}

/// Whether the webhook may be called for a dry run (`sideEffects: None` or `NoneOnDryRun`).
pub fn has_no_side_effects(webhook: &Value) -> bool {
    matches!(
        webhook["sideEffects"].as_str(),
        Some("None" | "NoneOnDryRun")
    )
}

/// Whether one of the webhook's `rules` matches the request (operations, groups, versions,
/// `resource[/subresource]` with `*` forms, scope).
pub fn rules_match(webhook: &Value, attrs: &Attributes<'_>) -> bool {
    webhook["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|rule| {
            let resource_matches = rule["resources"].as_array().into_iter().flatten().any(|r| {
                let r = r.as_str().unwrap_or("");
                let (res, sub) = r.split_once('/').unwrap_or((r, ""));
                let res_ok = res == "*" || res == attrs.resource;
                let sub_ok = match attrs.subresource {
                    None => sub.is_empty(),
                    Some(s) => sub == "*" || sub == s,
                };
                (res_ok && sub_ok) || r == "*/*"
            });
            let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
                "Cluster" => attrs.namespace.is_none(),
                "Namespaced" => attrs.namespace.is_some(),
                _ => true,
            };
            admits(&rule["operations"], operation_name(attrs.operation))
                && admits(&rule["apiGroups"], attrs.group)
                && admits(&rule["apiVersions"], attrs.version)
                && resource_matches
                && scope_ok
        })
}

/// Whether the webhook's `objectSelector` matches the object or the old object.
pub fn object_selector_matches(webhook: &Value, obj: &Value, old: Option<&Value>) -> bool {
    let selector = LabelSelector::from_object(&webhook["objectSelector"]);
    selector.matches(&labels_of(obj)) || old.is_some_and(|o| selector.matches(&labels_of(o)))
}

/// The AdmissionReview request sent to a webhook.
pub fn review(attrs: &Attributes<'_>, uid: &str, obj: &Value) -> Value {
    let (object, old) = match attrs.operation {
        Operation::Delete => (Value::Null, attrs.old.cloned().unwrap_or(Value::Null)),
        _ => (obj.clone(), attrs.old.cloned().unwrap_or(Value::Null)),
    };
    let kind = json!({"group": attrs.group, "version": attrs.version, "kind": attrs.kind});
    let resource =
        json!({"group": attrs.group, "version": attrs.version, "resource": attrs.resource});
    let mut request = json!({"uid": uid, "kind": kind, "resource": resource,
        "requestKind": kind, "requestResource": resource, "name": attrs.name,
        "operation": operation_name(attrs.operation), "userInfo": {},
        "object": object, "oldObject": old, "dryRun": attrs.dry_run});
    if let Some(ns) = attrs.namespace {
        request["namespace"] = json!(ns);
    }
    if let Some(sub) = attrs.subresource {
        request["subResource"] = json!(sub);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// What a webhook's answer means for the request.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Allowed { patch: Option<Value> },
    Denied(ApiError),
}

/// Reads a webhook's AdmissionReview answer to the request `uid` (the error is a malformed
/// answer, handled as a failed call).
pub fn verdict(name: &str, uid: &str, body: &[u8]) -> Result<Verdict, String> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| format!("received invalid webhook response: {e}"))?;
    let response = &answer["response"];
    if response["uid"].as_str() != Some(uid) {
        return Err(format!(
            "expected response.uid={uid:?}, got {:?}",
            response["uid"].as_str().unwrap_or("")
        ));
    }
    if response["allowed"].as_bool() != Some(true) {
        let status = &response["status"];
        let code = status["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c >= 400)
            .unwrap_or(403);
        let denied = format!("admission webhook \"{name}\" denied the request");
        let message = match (status["message"].as_str(), status["reason"].as_str()) {
            (Some(m), _) if !m.is_empty() => format!("{denied}: {m}"),
            (_, Some(r)) if !r.is_empty() => format!("{denied}: {r}"),
            _ => format!("{denied} without explanation"),
        };
        let reason = match code {
            400 => Reason::BadRequest,
            401 => Reason::Unauthorized,
            404 => Reason::NotFound,
            409 => Reason::Conflict,
            422 => Reason::Invalid,
            429 => Reason::TooManyRequests,
            500 => Reason::InternalError,
            _ => Reason::Forbidden,
        };
        return Ok(Verdict::Denied(ApiError::with_code(code, reason, message)));
    }
    let patch = match response["patch"].as_str() {
        None => None,
        Some(encoded) => {
            if response["patchType"].as_str() != Some("JSONPatch") {
                return Err("the response's patchType must be JSONPatch".into());
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("invalid patch encoding: {e}"))?;
            Some(serde_json::from_slice(&bytes).map_err(|e| format!("invalid patch: {e}"))?)
        }
    };
    Ok(Verdict::Allowed { patch })
}

/// Applies a webhook's JSON patch to the object.
pub fn apply_patch(obj: &mut Value, patch: Value) -> Result<(), String> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| format!("invalid patch: {e}"))?;
    json_patch::patch(obj, &patch).map_err(|e| format!("unable to apply patch: {e}"))
}

impl Admission {
    /// Calls every matching webhook of `phase`; mutating ones may patch `obj`.
    pub(super) async fn call_webhooks(
        &self,
        phase: Phase,
        attrs: &Attributes<'_>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if attrs.group == ADMISSION_REGISTRATION_GROUP {
            return Ok(());
        }
        let configurations = self.list_cluster(phase.resource()).await?;
        let mut namespace_labels = None;
        for configuration in &configurations {
            for webhook in configuration["webhooks"].as_array().into_iter().flatten() {
                if !rules_match(webhook, attrs) || !object_selector_matches(webhook, obj, attrs.old)
                {
                    continue;
                }
                let ns_selector = LabelSelector::from_object(&webhook["namespaceSelector"]);
                if !ns_selector.is_empty() {
                    let labels = match (attrs.namespace, attrs.kind) {
                        (None, "Namespace") => labels_of(obj),
                        (None, _) => Default::default(),
                        (Some(ns), _) => {
                            if namespace_labels.is_none() {
                                let key = self.key("namespaces", None, ns);
                                let stored = self.get(&key, "namespaces").await?;
                                let ns_obj = stored
                                    .and_then(|s| serde_json::from_slice(&s.value).ok())
                                    .unwrap_or(Value::Null);
                                namespace_labels = Some(labels_of(&ns_obj));
                            }
                            namespace_labels.clone().unwrap_or_default()
                        }
                    };
                    let scoped = attrs.namespace.is_some() || attrs.kind == "Namespace";
                    if scoped && !ns_selector.matches(&labels) {
                        continue;
                    }
                }
                if attrs.dry_run && !has_no_side_effects(webhook) {
                    return Err(ApiError::bad_request(format!(
                        "admission webhook \"{}\" does not support dry run",
                        webhook["name"].as_str().unwrap_or("")
                    )));
                }
                self.call_webhook(phase, webhook, attrs, obj).await?;
            }
        }
        Ok(())
    }

    async fn call_webhook(
        &self,
        phase: Phase,
        webhook: &Value,
        attrs: &Attributes<'_>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let name = webhook["name"].as_str().unwrap_or("");
        let uid = crate::ids::new_uid();
        let body = serde_json::to_vec(&review(attrs, &uid, obj))
            .expect("a serde_json::Value always encodes");
        let timeout = webhook["timeoutSeconds"]
            .as_u64()
            .map_or(WEBHOOK_TIMEOUT_DEFAULT, Duration::from_secs);
        let client = &webhook["clientConfig"];
        let called = match (client["url"].as_str(), client["caBundle"].as_str()) {
            (Some(url), ca) => {
                let ca = ca.map(|c| base64::engine::general_purpose::STANDARD.decode(c));
                match ca.transpose() {
                    Ok(ca) => webhook_client::post_json(url, ca.as_deref(), body, timeout)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(CallError::CaBundle(e.to_string()).to_string()),
                }
            }
            (None, _) => Err("only clientConfig.url is supported".to_string()),
        };
        let outcome = called.and_then(|answer| verdict(name, &uid, &answer));
        let outcome = match outcome {
            Ok(Verdict::Allowed { patch: Some(patch) }) if phase == Phase::Mutating => {
                apply_patch(obj, patch).map(|()| Verdict::Allowed { patch: None })
            }
            other => other,
        };
        match outcome {
            Ok(Verdict::Allowed { .. }) => Ok(()),
            Ok(Verdict::Denied(err)) => Err(err),
            Err(why) if webhook["failurePolicy"].as_str() == Some("Ignore") => {
                tracing::warn!(webhook = name, error = %why, "admission webhook failed; ignored (failurePolicy: Ignore)");
                Ok(())
            }
            Err(why) => Err(ApiError::internal(format!(
                "Internal error occurred: failed calling webhook \"{name}\": {why}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(operation: Operation, subresource: Option<&'static str>) -> Attributes<'static> {
        Attributes {
            operation,
            kind: "Pod",
            group: "",
            version: "v1",
            resource: "pods",
            subresource,
            namespace: Some("team"),
            name: "web",
            old: None,
            dry_run: false,
        }
    }

    #[test]
    fn rules_match_operations_groups_resources_and_scope() {
        let hook = json!({"rules": [{"operations": ["CREATE"], "apiGroups": [""],
            "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}]});
        assert!(rules_match(&hook, &attrs(Operation::Create, None)));
        assert!(!rules_match(&hook, &attrs(Operation::Update, None)));
        assert!(!rules_match(
            &hook,
            &attrs(Operation::Create, Some("status"))
        ));
        let any = json!({"rules": [{"operations": ["*"], "apiGroups": ["*"],
            "apiVersions": ["*"], "resources": ["*/*"]}]});
        assert!(rules_match(&any, &attrs(Operation::Delete, Some("status"))));
        let cluster = json!({"rules": [{"operations": ["*"], "apiGroups": ["*"],
            "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}]});
        assert!(!rules_match(&cluster, &attrs(Operation::Create, None)));
        let selector = json!({"objectSelector": {"matchLabels": {"hook": "yes"}}});
        let labelled = json!({"metadata": {"labels": {"hook": "yes"}}});
        assert!(object_selector_matches(&selector, &labelled, None));
        assert!(!object_selector_matches(&selector, &json!({}), None));
        assert!(object_selector_matches(&json!({}), &json!({}), None));
        assert!(has_no_side_effects(&json!({"sideEffects": "NoneOnDryRun"})));
        assert!(!has_no_side_effects(&json!({"sideEffects": "Some"})));
    }

    #[test]
    fn answers_become_patches_or_upstream_denials() {
        let review = review(
            &attrs(Operation::Create, None),
            "u1",
            &json!({"metadata": {}}),
        );
        assert_eq!(review["request"]["operation"], "CREATE");
        assert_eq!(review["request"]["namespace"], "team");
        let patch = base64::engine::general_purpose::STANDARD
            .encode(r#"[{"op":"add","path":"/metadata/labels","value":{"hooked":"yes"}}]"#);
        let allowed = json!({"response": {"uid": "u1", "allowed": true,
                                          "patchType": "JSONPatch", "patch": patch}});
        let Verdict::Allowed { patch: Some(patch) } =
            verdict("label.example.com", "u1", allowed.to_string().as_bytes()).unwrap()
        else {
            panic!("a patch")
        };
        let mut obj = json!({"metadata": {}});
        apply_patch(&mut obj, patch).unwrap();
        assert_eq!(obj["metadata"]["labels"]["hooked"], "yes");
        let denied = json!({"response": {"uid": "u1", "allowed": false,
                                         "status": {"message": "no pods on Sundays"}}});
        let Verdict::Denied(err) =
            verdict("deny.example.com", "u1", denied.to_string().as_bytes()).unwrap()
        else {
            panic!("a denial")
        };
        assert_eq!((err.code, err.reason), (403, Reason::Forbidden));
        assert_eq!(
            err.message,
            "admission webhook \"deny.example.com\" denied the request: no pods on Sundays"
        );
        assert!(verdict("x", "u2", allowed.to_string().as_bytes()).is_err());
    }
}
