//! The annotations a Deployment keeps on its ReplicaSets (upstream `deployment_util`):
//! revision numbers and their history, the desired/max replica counts proportional scaling
//! reads, and the deployment annotations copied onto the new ReplicaSet.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ReplicaSet;

/// The revision of a ReplicaSet (and, copied, of its Deployment).
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The earlier revisions of a ReplicaSet that became the new one again (comma-separated).
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when it last scaled the ReplicaSet.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when it last scaled the ReplicaSet.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// The extensions/v1beta1 rollback request (never copied).
pub const ROLLBACK_TO_ANNOTATION: &str = "deprecated.deployment.rollback.to";
/// kubectl apply's record (never copied).
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The longest revision-history annotation upstream writes (`maxRevHistoryLengthInChars`).
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// Deployment annotations that are not copied onto its ReplicaSets.
const ANNOTATIONS_NOT_COPIED: [&str; 6] = [
    LAST_APPLIED_ANNOTATION,
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    ROLLBACK_TO_ANNOTATION,
];

fn annotation<'a>(rs: &'a ReplicaSet, key: &str) -> Option<&'a str> {
    rs.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// A ReplicaSet's revision: 0 without the annotation, `None` if it is not a number.
pub(super) fn revision(rs: &ReplicaSet) -> Option<i64> {
    match annotation(rs, REVISION_ANNOTATION) {
        None => Some(0),
        Some(text) => text.parse().ok(),
    }
}

/// The highest revision among `replica_sets` (unparsable ones skipped), 0 if none.
pub(super) fn max_revision<'a>(replica_sets: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    replica_sets
        .into_iter()
        .filter_map(revision)
        .fold(0, i64::max)
}

/// An int32 annotation, `None` if absent or not a number.
pub(super) fn int_annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    annotation(rs, key)?.parse().ok()
}

/// Whether the desired/max replicas annotations differ from these (upstream
/// `ReplicasAnnotationsNeedUpdate`).
pub(super) fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation(rs, DESIRED_REPLICAS_ANNOTATION) != Some(desired.to_string().as_str())
        || annotation(rs, MAX_REPLICAS_ANNOTATION) != Some(max.to_string().as_str())
}

/// Sets the desired/max replicas annotations; whether anything changed.
pub(super) fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [
        (DESIRED_REPLICAS_ANNOTATION, desired.to_string()),
        (MAX_REPLICAS_ANNOTATION, max.to_string()),
    ] {
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_string(), value);
            changed = true;
        }
    }
    changed
}

/// Copies the Deployment's annotations (except the skip list) onto the ReplicaSet; whether
/// anything changed.
fn copy_deployment_annotations(
    deployment_annotations: &BTreeMap<String, String>,
    rs: &mut ReplicaSet,
) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in deployment_annotations {
        if ANNOTATIONS_NOT_COPIED.contains(&key.as_str()) || annotations.get(key) == Some(value) {
            continue;
        }
        annotations.insert(key.clone(), value.clone());
        changed = true;
    }
    changed
}

/// Upstream `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, raises the
/// revision to `new_revision` if it is lower (a ReplicaSet that had a revision and gets a higher
/// one is a rollback to it: its old revision joins the revision history, at most 2000
/// characters), and for a ReplicaSet about to be created (`exists == false`) sets the
/// desired/max replicas annotations. Whether anything changed.
pub(super) fn set_new_replica_set_annotations(
    deployment_annotations: &BTreeMap<String, String>,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
    desired_replicas: i32,
    max_replicas: i32,
) -> bool {
    let mut changed = copy_deployment_annotations(deployment_annotations, rs);
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old_revision_text = annotations.get(REVISION_ANNOTATION).cloned();
    let old_revision = match old_revision_text.as_deref() {
        None | Some("") => 0,
        Some(text) => match text.parse::<i64>() {
            Ok(number) => number,
            // Upstream leaves a ReplicaSet with an unparsable revision alone.
            Err(_) => return changed,
        },
    };
    if old_revision < new_revision {
        annotations.insert(REVISION_ANNOTATION.to_string(), new_revision.to_string());
        changed = true;
        if let Some(old) = old_revision_text {
            append_revision_history(annotations, &old);
        }
    }
    if !exists && set_replicas_annotations(rs, desired_replicas, max_replicas) {
        changed = true;
    }
    changed
}

/// Appends `old_revision` to the revision history, dropping the oldest entries to stay within
/// 2000 characters (upstream keeps the history as is if even that does not fit).
fn append_revision_history(annotations: &mut BTreeMap<String, String>, old_revision: &str) {
    let history = annotations
        .get(REVISION_HISTORY_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    if history.is_empty() {
        annotations.insert(
            REVISION_HISTORY_ANNOTATION.to_string(),
            old_revision.to_string(),
        );
        return;
    }
    let entries: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + old_revision.len() + 1;
    let mut start = 0;
    while total > MAX_REVISION_HISTORY_CHARS && start < entries.len() {
        total -= entries[start].len() + 1;
        start += 1;
    }
    if total <= MAX_REVISION_HISTORY_CHARS {
        let mut kept: Vec<&str> = entries[start..].to_vec();
        kept.push(old_revision);
        annotations.insert(REVISION_HISTORY_ANNOTATION.to_string(), kept.join(","));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs_with(annotations: &[(&str, &str)]) -> ReplicaSet {
        let mut rs = ReplicaSet::default();
        rs.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        rs
    }

    fn get<'a>(rs: &'a ReplicaSet, key: &str) -> Option<&'a str> {
        annotation(rs, key)
    }

    #[test]
    fn revisions_parse_and_max_skips_garbage() {
        let a = rs_with(&[(REVISION_ANNOTATION, "3")]);
        let b = rs_with(&[(REVISION_ANNOTATION, "x")]);
        let c = ReplicaSet::default();
        assert_eq!(revision(&a), Some(3));
        assert_eq!(revision(&b), None);
        assert_eq!(revision(&c), Some(0));
        assert_eq!(max_revision([&a, &b, &c]), 3);
        assert_eq!(max_revision([]), 0);
    }

    #[test]
    fn new_replica_set_gets_revision_replicas_and_copied_annotations() {
        let deployment_annotations = BTreeMap::from([
            ("team".to_string(), "blue".to_string()),
            (REVISION_ANNOTATION.to_string(), "9".to_string()),
            (LAST_APPLIED_ANNOTATION.to_string(), "{}".to_string()),
        ]);
        let mut rs = ReplicaSet::default();
        assert!(set_new_replica_set_annotations(
            &deployment_annotations,
            &mut rs,
            4,
            false,
            10,
            13
        ));
        assert_eq!(get(&rs, REVISION_ANNOTATION), Some("4"));
        assert_eq!(get(&rs, "team"), Some("blue"));
        assert_eq!(get(&rs, LAST_APPLIED_ANNOTATION), None);
        assert_eq!(get(&rs, DESIRED_REPLICAS_ANNOTATION), Some("10"));
        assert_eq!(get(&rs, MAX_REPLICAS_ANNOTATION), Some("13"));
        assert_eq!(get(&rs, REVISION_HISTORY_ANNOTATION), None);
    }

    #[test]
    fn rollback_raises_revision_and_records_history() {
        let mut rs = rs_with(&[
            (REVISION_ANNOTATION, "2"),
            (REVISION_HISTORY_ANNOTATION, "1"),
        ]);
        assert!(set_new_replica_set_annotations(
            &BTreeMap::new(),
            &mut rs,
            5,
            true,
            3,
            4
        ));
        assert_eq!(get(&rs, REVISION_ANNOTATION), Some("5"));
        assert_eq!(get(&rs, REVISION_HISTORY_ANNOTATION), Some("1,2"));
        // Existing ReplicaSets keep their replicas annotations.
        assert_eq!(get(&rs, DESIRED_REPLICAS_ANNOTATION), None);
        // Already at or above the new revision: nothing changes.
        assert!(!set_new_replica_set_annotations(
            &BTreeMap::new(),
            &mut rs,
            5,
            true,
            3,
            4
        ));
    }

    #[test]
    fn unparsable_revision_is_left_alone() {
        let mut rs = rs_with(&[(REVISION_ANNOTATION, "abc")]);
        assert!(!set_new_replica_set_annotations(
            &BTreeMap::new(),
            &mut rs,
            5,
            true,
            3,
            4
        ));
        assert_eq!(get(&rs, REVISION_ANNOTATION), Some("abc"));
    }

    #[test]
    fn revision_history_drops_oldest_entries_beyond_the_limit() {
        let long: Vec<String> = (0..500).map(|n| format!("{n:03}")).collect();
        let history = long.join(","); // 500 * 4 - 1 = 1999 characters
        let mut annotations = BTreeMap::from([(REVISION_HISTORY_ANNOTATION.to_string(), history)]);
        append_revision_history(&mut annotations, "999");
        let updated = &annotations[REVISION_HISTORY_ANNOTATION];
        assert!(updated.len() <= MAX_REVISION_HISTORY_CHARS);
        assert!(updated.ends_with(",999"));
        assert!(updated.starts_with("001,"));
    }

    #[test]
    fn replicas_annotations_round_trip() {
        let mut rs = ReplicaSet::default();
        assert!(replicas_annotations_need_update(&rs, 3, 4));
        assert!(set_replicas_annotations(&mut rs, 3, 4));
        assert!(!replicas_annotations_need_update(&rs, 3, 4));
        assert!(!set_replicas_annotations(&mut rs, 3, 4));
        assert_eq!(int_annotation(&rs, MAX_REPLICAS_ANNOTATION), Some(4));
        assert!(replicas_annotations_need_update(&rs, 5, 4));
    }
}
