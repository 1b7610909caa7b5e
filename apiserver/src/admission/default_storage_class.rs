//! DefaultStorageClass (upstream `plugin/pkg/admission/storage/storageclass/setdefault`): a
//! PersistentVolumeClaim created without `spec.storageClassName` (and without the beta
//! `volume.beta.kubernetes.io/storage-class` annotation) gets the name of the default
//! StorageClass — the one annotated `storageclass.kubernetes.io/is-default-class: "true"`
//! (or its beta twin). With several, the newest wins (ties: the first name), as upstream
//! 1.28+ picks; with none, the claim is left as it is. An explicit `""` means "no class" and
//! is kept.

use serde_json::{Value, json};

/// The annotation that makes a StorageClass the default (`storageutil.IsDefaultStorageClassAnnotation`).
pub const IS_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The beta spelling of [`IS_DEFAULT_CLASS_ANNOTATION`], still honoured upstream.
pub const BETA_IS_DEFAULT_CLASS_ANNOTATION: &str =
    "storageclass.beta.kubernetes.io/is-default-class";
/// The beta claim annotation that names a class instead of `spec.storageClassName`.
pub const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// Whether a StorageClass is annotated as the default (`storageutil.IsDefaultAnnotation`).
pub fn is_default(class: &Value) -> bool {
    let annotations = &class["metadata"]["annotations"];
    [
        IS_DEFAULT_CLASS_ANNOTATION,
        BETA_IS_DEFAULT_CLASS_ANNOTATION,
    ]
    .iter()
    .any(|key| annotations[*key].as_str() == Some("true"))
}

/// The default StorageClass's name among `classes` (`GetDefaultClass`): the newest of those
/// annotated default, ties broken by name; None when none is.
pub fn default_class(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| is_default(c))
        .filter_map(|c| {
            let name = c["metadata"]["name"].as_str()?;
            // RFC 3339 timestamps in UTC with second precision sort as text.
            let created = c["metadata"]["creationTimestamp"].as_str().unwrap_or("");
            Some((created, name))
        })
        .max_by(|(ta, na), (tb, nb)| ta.cmp(tb).then_with(|| nb.cmp(na)))
        .map(|(_, name)| name.to_string())
}

/// Sets `spec.storageClassName` of a claim being created to the default class, if the claim
/// names none and a default exists. Returns whether it changed the claim.
pub fn set_default(claim: &mut Value, classes: &[Value]) -> bool {
    if !claim["spec"].is_object() {
        return false;
    }
    if claim["spec"]
        .get("storageClassName")
        .is_some_and(|v| !v.is_null())
    {
        return false;
    }
    if claim["metadata"]["annotations"]
        .get(BETA_STORAGE_CLASS_ANNOTATION)
        .is_some()
    {
        return false;
    }
    let Some(name) = default_class(classes) else {
        return false;
    };
    claim["spec"]["storageClassName"] = json!(name);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, created: &str, default: Option<&str>) -> Value {
        let mut c = json!({"metadata": {"name": name, "creationTimestamp": created},
                           "provisioner": "p"});
        if let Some(v) = default {
            c["metadata"]["annotations"] = json!({IS_DEFAULT_CLASS_ANNOTATION: v});
        }
        c
    }

    #[test]
    fn a_claim_without_a_class_gets_the_default() {
        let classes = [
            class("slow", "2026-01-01T00:00:00Z", None),
            class("local-path", "2026-01-01T00:00:00Z", Some("true")),
        ];
        let mut claim =
            json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"]}});
        assert!(set_default(&mut claim, &classes));
        assert_eq!(claim["spec"]["storageClassName"], "local-path");
    }

    #[test]
    fn an_explicit_class_or_the_empty_class_is_kept() {
        let classes = [class("local-path", "2026-01-01T00:00:00Z", Some("true"))];
        let mut named = json!({"spec": {"storageClassName": "manual"}});
        assert!(!set_default(&mut named, &classes));
        assert_eq!(named["spec"]["storageClassName"], "manual");
        let mut empty = json!({"spec": {"storageClassName": ""}});
        assert!(!set_default(&mut empty, &classes));
        assert_eq!(empty["spec"]["storageClassName"], "");
        let mut beta = json!({"metadata": {"annotations": {BETA_STORAGE_CLASS_ANNOTATION: "x"}},
                              "spec": {}});
        assert!(!set_default(&mut beta, &classes));
        assert!(beta["spec"].get("storageClassName").is_none());
    }

    #[test]
    fn without_a_default_the_claim_is_left_unset() {
        let classes = [
            class("a", "2026-01-01T00:00:00Z", None),
            class("b", "2026-01-01T00:00:00Z", Some("false")),
        ];
        let mut claim = json!({"spec": {}});
        assert!(!set_default(&mut claim, &classes));
        assert!(claim["spec"].get("storageClassName").is_none());
        assert_eq!(default_class(&[]), None);
    }

    #[test]
    fn several_defaults_pick_the_newest_then_the_first_name() {
        let mut beta = class("beta", "2026-03-01T00:00:00Z", None);
        beta["metadata"]["annotations"] = json!({BETA_IS_DEFAULT_CLASS_ANNOTATION: "true"});
        let classes = [
            class("old", "2026-01-01T00:00:00Z", Some("true")),
            class("new-b", "2026-02-01T00:00:00Z", Some("true")),
            class("new-a", "2026-02-01T00:00:00Z", Some("true")),
        ];
        assert_eq!(default_class(&classes).as_deref(), Some("new-a"));
        let mut with_beta = classes.to_vec();
        with_beta.push(beta);
        assert_eq!(default_class(&with_beta).as_deref(), Some("beta"));
    }
}
