//! Delete options and propagation policies over an in-memory [`Storage`]: the finalizers an
//! `Orphan` or `Foreground` deletion adds, `Background` deleting at once, a second delete
//! changing the policy, deletecollection, dry runs, preconditions and upstream's errors.

use super::*;
use crate::registry::fake_storage::Fake;

fn registry() -> Registry {
    Registry::new(
        Arc::new(Fake::default()),
        "/registry",
        resources::registry(),
        Vec::new(),
    )
}

fn configmaps(r: &Registry) -> &ResourceInfo {
    r.find("", "v1", "configmaps")
        .expect("configmaps are served")
}

/// Stores a ConfigMap `name` in `ns` holding `finalizers`.
async fn put(r: &Registry, name: &str, finalizers: &[&str]) {
    let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")}});
    if !finalizers.is_empty() {
        obj["metadata"]["finalizers"] = json!(finalizers);
    }
    let key = r.key(configmaps(r), Some("ns"), name);
    r.storage
        .create(&key, Registry::encode(&obj))
        .await
        .expect("create");
}

/// The stored object, if any.
async fn stored(r: &Registry, name: &str) -> Option<Value> {
    let key = r.key(configmaps(r), Some("ns"), name);
    let found = r.storage.get(&key).await.expect("get")?;
    Some(serde_json::from_slice(&found.value).expect("JSON"))
}

async fn delete(r: &Registry, name: &str, query: &[(&str, &str)], body: &str) -> ApiResult {
    let t = Target {
        info: configmaps(r),
        namespace: Some("ns".into()),
        name: Some(name.into()),
        subresource: None,
    };
    let query = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    r.delete(&t, &query, &Bytes::from(body.to_string())).await
}

async fn body(resp: Response) -> Value {
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

fn finalizers(obj: &Value) -> Value {
    obj["metadata"]["finalizers"].clone()
}

fn options(orphan: Option<bool>, propagation: Option<Propagation>) -> DeleteOptions {
    DeleteOptions {
        orphan_dependents: orphan,
        propagation,
        ..DeleteOptions::default()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// (the object's finalizers, the options, the kind's default, the finalizers it gets if they
/// change).
type PolicyCase = (
    &'static [&'static str],
    DeleteOptions,
    bool,
    Option<&'static [&'static str]>,
);

#[test]
fn the_policy_picks_the_finalizers_as_upstream() {
    use Propagation::*;
    let none: &[&str] = &[];
    let cases: &[PolicyCase] = &[
        // Default: background for most kinds, orphan for batch/v1 Jobs.
        (none, options(None, None), false, None),
        (none, options(None, None), true, Some(&["orphan"])),
        (none, options(None, Some(Orphan)), false, Some(&["orphan"])),
        (
            none,
            options(None, Some(Foreground)),
            false,
            Some(&["foregroundDeletion"]),
        ),
        (none, options(None, Some(Background)), true, None),
        (none, options(Some(true), None), false, Some(&["orphan"])),
        (none, options(Some(false), None), true, None),
        // The object's own finalizer decides when the options do not.
        (&["orphan"], options(None, None), false, None),
        (&["foregroundDeletion"], options(None, None), true, None),
        // An explicit policy replaces the other one, keeping foreign finalizers.
        (
            &["a", "orphan"],
            options(None, Some(Foreground)),
            false,
            Some(&["a", "foregroundDeletion"]),
        ),
        (
            &["a", "orphan"],
            options(None, Some(Background)),
            false,
            Some(&["a"]),
        ),
        (
            &["foregroundDeletion"],
            options(Some(true), None),
            false,
            Some(&["orphan"]),
        ),
        (
            &["a"],
            options(None, Some(Orphan)),
            false,
            Some(&["a", "orphan"]),
        ),
    ];
    for (current, options, default_orphan, want) in cases {
        let got = finalizers_for_deletion(&strings(current), options, *default_orphan);
        assert_eq!(
            got,
            want.map(strings),
            "{current:?} {options:?} {default_orphan}"
        );
    }
}

#[test]
fn options_come_from_the_body_else_the_query() {
    let query = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let parsed = DeleteOptions::parse(
        &query(&[("propagationPolicy", "Orphan")]),
        &Bytes::from_static(br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Foreground","preconditions":{"uid":"u"}}"#),
    )
    .expect("valid");
    assert_eq!(parsed.propagation, Some(Propagation::Foreground));
    assert_eq!(parsed.uid.as_deref(), Some("u"));
    let parsed = DeleteOptions::parse(&query(&[("propagationPolicy", "Orphan")]), &Bytes::new())
        .expect("valid");
    assert_eq!(parsed.propagation, Some(Propagation::Orphan));
    let parsed = DeleteOptions::parse(&query(&[("orphanDependents", "true")]), &Bytes::new())
        .expect("valid");
    assert_eq!(parsed.orphan_dependents, Some(true));
    let err = DeleteOptions::parse(&query(&[("orphanDependents", "yes")]), &Bytes::new())
        .expect_err("not a bool");
    assert_eq!(err.code, 400);
    let err = DeleteOptions::parse(
        &query(&[]),
        &Bytes::from_static(br#"{"propagationPolicy":5}"#),
    )
    .expect_err("not a string");
    assert_eq!(err.code, 400);
    assert!(
        err.message.starts_with("error decoding DeleteOptions: "),
        "{err:?}"
    );
    let err = DeleteOptions::parse(&query(&[]), &Bytes::from_static(br#"{"dryRun":["Some"]}"#))
        .expect_err("unsupported");
    assert_eq!(
        err.message,
        "DeleteOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"Some\"}: \
         supported values: \"All\""
    );
}

#[tokio::test]
async fn orphan_and_foreground_hold_the_object_with_their_finalizer() {
    let r = registry();
    put(&r, "o", &[]).await;
    let resp = delete(&r, "o", &[], r#"{"propagationPolicy":"Orphan"}"#)
        .await
        .expect("delete");
    assert_eq!(resp.status(), StatusCode::OK);
    let answered = body(resp).await;
    assert_eq!(finalizers(&answered), json!(["orphan"]));
    let held = stored(&r, "o").await.expect("held by its finalizer");
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    assert_eq!(held["metadata"]["deletionGracePeriodSeconds"], json!(0));
    assert_eq!(finalizers(&held), json!(["orphan"]));

    put(&r, "f", &["example.com/keep"]).await;
    delete(&r, "f", &[], r#"{"propagationPolicy":"Foreground"}"#)
        .await
        .expect("delete");
    let held = stored(&r, "f").await.expect("held");
    assert_eq!(
        finalizers(&held),
        json!(["example.com/keep", "foregroundDeletion"])
    );

    // The query parameter when there is no body; the legacy bool too.
    put(&r, "q", &[]).await;
    delete(&r, "q", &[("propagationPolicy", "Foreground")], "")
        .await
        .expect("delete");
    assert_eq!(
        finalizers(&stored(&r, "q").await.expect("held")),
        json!(["foregroundDeletion"])
    );
    put(&r, "legacy", &[]).await;
    delete(&r, "legacy", &[], r#"{"orphanDependents":true}"#)
        .await
        .expect("delete");
    assert_eq!(
        finalizers(&stored(&r, "legacy").await.expect("held")),
        json!(["orphan"])
    );
}

#[tokio::test]
async fn background_and_the_default_delete_at_once() {
    let r = registry();
    for (name, body) in [
        ("bg", r#"{"propagationPolicy":"Background"}"#),
        ("default", ""),
        ("empty", "{}"),
        ("legacy", r#"{"orphanDependents":false}"#),
    ] {
        put(&r, name, &[]).await;
        delete(&r, name, &[], body).await.expect("delete");
        assert!(stored(&r, name).await.is_none(), "{name} is still stored");
    }
}

#[tokio::test]
async fn a_held_cascading_delete_with_the_legacy_bool_is_accepted() {
    let r = registry();
    put(&r, "held", &["example.com/keep"]).await;
    let resp = delete(&r, "held", &[], r#"{"orphanDependents":false}"#)
        .await
        .expect("delete");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    put(&r, "plain", &[]).await;
    let resp = delete(&r, "plain", &[], r#"{"orphanDependents":false}"#)
        .await
        .expect("delete");
    assert_eq!(resp.status(), StatusCode::OK, "deleted at once");
}

#[tokio::test]
async fn a_second_delete_may_change_the_policy() {
    let r = registry();
    put(&r, "x", &["example.com/keep"]).await;
    delete(&r, "x", &[], r#"{"propagationPolicy":"Orphan"}"#)
        .await
        .expect("delete");
    let first = stored(&r, "x").await.expect("held");
    // The same delete again changes nothing.
    delete(&r, "x", &[], "").await.expect("delete");
    assert_eq!(stored(&r, "x").await.expect("held"), first);
    delete(&r, "x", &[], r#"{"propagationPolicy":"Foreground"}"#)
        .await
        .expect("delete");
    let second = stored(&r, "x").await.expect("held");
    assert_eq!(
        finalizers(&second),
        json!(["example.com/keep", "foregroundDeletion"])
    );
    assert_eq!(
        second["metadata"]["deletionTimestamp"],
        first["metadata"]["deletionTimestamp"]
    );

    // Orphan, then Background: the orphan finalizer goes and nothing holds the object.
    put(&r, "y", &[]).await;
    delete(&r, "y", &[], r#"{"propagationPolicy":"Orphan"}"#)
        .await
        .expect("delete");
    assert!(stored(&r, "y").await.is_some());
    delete(&r, "y", &[], r#"{"propagationPolicy":"Background"}"#)
        .await
        .expect("delete");
    assert!(stored(&r, "y").await.is_none());
}

#[tokio::test]
async fn invalid_options_are_refused_with_upstreams_words() {
    let r = registry();
    put(&r, "x", &[]).await;
    let err = delete(&r, "x", &[], r#"{"propagationPolicy":"Sideways"}"#)
        .await
        .expect_err("unsupported policy");
    assert_eq!((err.code, err.reason), (422, Reason::Invalid));
    assert_eq!(
        err.message,
        "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \
         \"Sideways\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
    );
    let err = delete(&r, "x", &[("propagationPolicy", "Sideways")], "")
        .await
        .expect_err("unsupported policy in the query");
    assert_eq!(err.code, 422);
    let err = delete(
        &r,
        "x",
        &[],
        r#"{"orphanDependents":true,"propagationPolicy":"Foreground"}"#,
    )
    .await
    .expect_err("both set");
    assert_eq!(
        err.message,
        "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Invalid value: \
         \"Foreground\": orphanDependents and deletionPropagation cannot be both set"
    );
    let err = delete(&r, "x", &[], r#"{"preconditions":{"uid":"other"}}"#)
        .await
        .expect_err("uid precondition");
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on ConfigMap \"x\": the UID in the precondition (other) \
         does not match the UID in record (uid-x). The object might have been deleted and then \
         recreated"
    );
    assert!(stored(&r, "x").await.is_some(), "a refused delete deleted");
    delete(&r, "x", &[], r#"{"preconditions":{"uid":"uid-x"}}"#)
        .await
        .expect("matching uid");
    assert!(stored(&r, "x").await.is_none());
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let r = registry();
    put(&r, "x", &[]).await;
    let before = stored(&r, "x").await;
    let resp = delete(
        &r,
        "x",
        &[],
        r#"{"dryRun":["All"],"propagationPolicy":"Orphan"}"#,
    )
    .await
    .expect("dry run");
    assert_eq!(finalizers(&body(resp).await), json!(["orphan"]));
    assert_eq!(stored(&r, "x").await, before);
    delete(&r, "x", &[("dryRun", "All")], "")
        .await
        .expect("dry run");
    assert_eq!(stored(&r, "x").await, before);
}

#[tokio::test]
async fn deletecollection_passes_the_options_to_every_object() {
    let r = registry();
    for name in ["a", "b"] {
        put(&r, name, &[]).await;
    }
    let t = Target {
        info: configmaps(&r),
        namespace: Some("ns".into()),
        name: None,
        subresource: None,
    };
    let resp = r
        .delete_collection(
            &t,
            &HashMap::new(),
            &Bytes::from_static(br#"{"propagationPolicy":"Foreground"}"#),
        )
        .await
        .expect("deletecollection");
    assert_eq!(body(resp).await["items"].as_array().map(Vec::len), Some(2));
    for name in ["a", "b"] {
        let held = stored(&r, name).await.expect("held");
        assert_eq!(finalizers(&held), json!(["foregroundDeletion"]));
    }
    let err = r
        .delete_collection(
            &t,
            &HashMap::new(),
            &Bytes::from_static(br#"{"propagationPolicy":"x"}"#),
        )
        .await
        .expect_err("invalid");
    assert_eq!(err.code, 422);
    r.delete_collection(&t, &HashMap::new(), &Bytes::new())
        .await
        .expect("deletecollection");
    assert!(
        stored(&r, "a").await.is_some(),
        "the finalizer still holds it"
    );
}

/// Stores a pod `name` in `ns`, bound to `node` (or not), in `phase`.
async fn put_pod<'r>(r: &'r Registry, name: &str, node: Option<&str>, phase: &str) -> Target<'r> {
    let info = r.find("", "v1", "pods").expect("pods are served");
    let mut obj = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
                         "spec": {"terminationGracePeriodSeconds": 30, "containers": [{"name": "c", "image": "i"}]},
                         "status": {"phase": phase}});
    if let Some(node) = node {
        obj["spec"]["nodeName"] = json!(node);
    }
    let key = r.key(info, Some("ns"), name);
    r.storage
        .create(&key, Registry::encode(&obj))
        .await
        .expect("create");
    Target {
        info,
        namespace: Some("ns".into()),
        name: Some(name.into()),
        subresource: None,
    }
}

async fn stored_pod(r: &Registry, name: &str) -> Option<Value> {
    let info = r.find("", "v1", "pods").expect("pods are served");
    let found = r
        .storage
        .get(&r.key(info, Some("ns"), name))
        .await
        .expect("get")?;
    Some(serde_json::from_slice(&found.value).expect("JSON"))
}

#[tokio::test]
async fn pods_on_a_node_are_deleted_gracefully_and_only_the_kubelet_removes_them() {
    let r = registry();
    let none = HashMap::new();
    let t = put_pod(&r, "bound", Some("n1"), "Running").await;
    // Default: the spec's 30 s; the pod stays, marked.
    r.delete(&t, &none, &Bytes::new()).await.expect("delete");
    let pod = stored_pod(&r, "bound").await.expect("still there");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], json!(30));
    assert!(pod["metadata"]["deletionTimestamp"].is_string());
    // A longer period changes nothing; a shorter one shortens it.
    let q = |s: &str| HashMap::from([("gracePeriodSeconds".to_string(), s.to_string())]);
    r.delete(&t, &q("60"), &Bytes::new()).await.expect("delete");
    assert_eq!(
        stored_pod(&r, "bound").await.unwrap()["metadata"]["deletionGracePeriodSeconds"],
        json!(30)
    );
    r.delete(
        &t,
        &none,
        &Bytes::from_static(b"{\"gracePeriodSeconds\":5}"),
    )
    .await
    .expect("delete");
    assert_eq!(
        stored_pod(&r, "bound").await.unwrap()["metadata"]["deletionGracePeriodSeconds"],
        json!(5)
    );
    // The kubelet's confirmation (grace 0) removes it.
    r.delete(&t, &q("0"), &Bytes::new()).await.expect("delete");
    assert!(stored_pod(&r, "bound").await.is_none());
    // Unscheduled and finished pods go at once.
    let t = put_pod(&r, "pending", None, "Pending").await;
    r.delete(&t, &none, &Bytes::new()).await.expect("delete");
    assert!(stored_pod(&r, "pending").await.is_none());
    let t = put_pod(&r, "done", Some("n1"), "Succeeded").await;
    r.delete(&t, &none, &Bytes::new()).await.expect("delete");
    assert!(stored_pod(&r, "done").await.is_none());
    // A bad query value is a 400.
    let t = put_pod(&r, "bad", Some("n1"), "Running").await;
    let err = r.delete(&t, &q("soon"), &Bytes::new()).await.unwrap_err();
    assert_eq!(err.code, 400);
}

#[tokio::test]
async fn a_status_update_keeps_a_pod_in_its_grace_period() {
    let r = registry();
    let none = HashMap::new();
    let t = put_pod(&r, "running", Some("n1"), "Running").await;
    r.delete(&t, &none, &Bytes::new())
        .await
        .expect("graceful delete");
    let mut pod = stored_pod(&r, "running").await.expect("marked");
    // The node agent reports the containers stopping (PUT pods/status).
    pod["status"]["phase"] = json!("Running");
    pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    let status = Target {
        info: t.info,
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        subresource: Some("status".into()),
    };
    let body = Bytes::from(serde_json::to_vec(&pod).unwrap());
    r.update(&status, &none, &axum::http::HeaderMap::new(), &body)
        .await
        .expect("status update");
    let kept = stored_pod(&r, "running")
        .await
        .expect("still there in its grace period");
    assert_eq!(kept["status"]["conditions"][0]["status"], json!("False"));
    // Only the node's grace-0 delete removes it.
    let q = HashMap::from([("gracePeriodSeconds".to_string(), "0".to_string())]);
    r.delete(&t, &q, &Bytes::new()).await.expect("delete");
    assert!(stored_pod(&r, "running").await.is_none());
}

#[tokio::test]
async fn a_grace_0_delete_of_a_finalizer_held_pod_lets_its_last_finalizer_end_it() {
    let r = registry();
    let none = HashMap::new();
    let t = put_pod(&r, "held", Some("n1"), "Running").await;
    let mut pod = stored_pod(&r, "held").await.expect("stored");
    pod["metadata"]["finalizers"] = json!(["example.com/hold"]);
    let body = Bytes::from(serde_json::to_vec(&pod).unwrap());
    r.update(&t, &none, &axum::http::HeaderMap::new(), &body)
        .await
        .expect("add finalizer");
    r.delete(&t, &none, &Bytes::new()).await.expect("graceful");
    let marked = stored_pod(&r, "held").await.expect("marked");
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], json!(30));
    // Grace 0: the period ends now, the finalizer still holds the pod.
    let q = HashMap::from([("gracePeriodSeconds".to_string(), "0".to_string())]);
    r.delete(&t, &q, &Bytes::new()).await.expect("grace 0");
    let mut held = stored_pod(&r, "held").await.expect("held by its finalizer");
    assert_eq!(held["metadata"]["deletionGracePeriodSeconds"], json!(0));
    // Dropping the finalizer completes the deletion.
    if let Some(meta) = held["metadata"].as_object_mut() {
        meta.remove("finalizers");
    }
    let body = Bytes::from(serde_json::to_vec(&held).unwrap());
    r.update(&t, &none, &axum::http::HeaderMap::new(), &body)
        .await
        .expect("drop finalizer");
    assert!(stored_pod(&r, "held").await.is_none());
}
