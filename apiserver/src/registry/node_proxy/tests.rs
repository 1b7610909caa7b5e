//! The pure parts of the node proxy: the kubelet's address and port from a Node, container
//! defaulting and upstream's error wording, the kubelet's paths and queries, and how a
//! kubelet's error answer becomes a `Status`.

use serde_json::json;

use super::*;

fn types(list: &str) -> Vec<String> {
    list.split(',').map(String::from).collect()
}

fn node() -> Value {
    json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1-label"}},
           "status": {"addresses": [
               {"type": "Hostname", "address": "n1"},
               {"type": "InternalIP", "address": "10.0.0.7"},
               {"type": "ExternalIP", "address": "203.0.113.7"}],
             "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}}}})
}

#[test]
fn the_address_is_the_first_preferred_type_present() {
    let ours = types("InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP");
    assert_eq!(preferred_address(&node(), &ours).unwrap(), "10.0.0.7");
    let upstream = types("Hostname,InternalDNS,InternalIP,ExternalDNS,ExternalIP");
    assert_eq!(preferred_address(&node(), &upstream).unwrap(), "n1");
    assert_eq!(
        preferred_address(&node(), &types("ExternalDNS,ExternalIP")).unwrap(),
        "203.0.113.7"
    );
    // Hostname falls back to the hostname label.
    let mut labelled = node();
    labelled["status"]["addresses"] = json!([{"type": "InternalIP", "address": "10.0.0.7"}]);
    assert_eq!(
        preferred_address(&labelled, &types("Hostname,InternalIP")).unwrap(),
        "n1-label"
    );
    let err = preferred_address(&node(), &types("InternalDNS")).unwrap_err();
    assert_eq!((err.code, err.reason), (500, Reason::InternalError));
    assert_eq!(
        err.message,
        "no preferred addresses found; known addresses: [{Hostname n1} {InternalIP 10.0.0.7} \
         {ExternalIP 203.0.113.7}]"
    );
}

#[test]
fn the_port_is_the_kubelet_endpoint_else_10250() {
    assert_eq!(kubelet_port(&node()), 11250);
    assert_eq!(kubelet_port(&json!({"status": {}})), 10250);
    let zero = json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}}});
    assert_eq!(kubelet_port(&zero), 10250);
}

fn pod(init: &[&str], containers: &[&str]) -> Value {
    let named =
        |names: &[&str]| -> Vec<Value> { names.iter().map(|n| json!({"name": n})).collect() };
    json!({"spec": {"initContainers": named(init), "containers": named(containers)}})
}

#[test]
fn containers_default_or_must_be_named_in_upstreams_words() {
    let single = pod(&[], &["app"]);
    assert_eq!(choose_container(&single, "p", None, true).unwrap(), "app");
    assert_eq!(
        choose_container(&single, "p", Some(""), false).unwrap(),
        "app"
    );
    let multi = pod(&["init"], &["a", "b"]);
    let err = choose_container(&multi, "p", None, true).unwrap_err();
    assert_eq!((err.code, err.reason), (400, Reason::BadRequest));
    assert_eq!(
        err.message,
        "a container name must be specified for pod p, choose one of: [init a b]"
    );
    let err = choose_container(&multi, "p", None, false).unwrap_err();
    assert_eq!(
        err.message,
        "a container name must be specified for pod p, choose one of: [a b] or one of the init \
         containers: [init]"
    );
    assert_eq!(choose_container(&multi, "p", Some("b"), true).unwrap(), "b");
    assert_eq!(
        choose_container(&multi, "p", Some("init"), false).unwrap(),
        "init"
    );
    let err = choose_container(&multi, "p", Some("c"), true).unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (400, "container c is not valid for pod p")
    );
    let err = choose_container(&pod(&[], &[]), "p", None, false).unwrap_err();
    assert_eq!(err.message, "pod p does not have a container");
}

#[test]
fn kubelet_paths_and_queries() {
    let raw = Some(
        "container=c&follow=true&tailLines=10&pretty=true&timestamps=1&insecureSkipTLSVerifyBackend=true",
    );
    let query = kubelet_query(Subresource::Log, raw);
    assert_eq!(query, "follow=true&tailLines=10&timestamps=1");
    assert_eq!(
        kubelet_path(Subresource::Log, "ns", "p", Some("c"), &query),
        "/containerLogs/ns/p/c?follow=true&tailLines=10&timestamps=1"
    );
    assert_eq!(
        kubelet_path(Subresource::Log, "ns", "p", Some("c"), ""),
        "/containerLogs/ns/p/c"
    );
    let exec = kubelet_query(
        Subresource::Exec,
        Some(
            "command=sh&command=-c&command=echo%20hi&container=c&stdin=true&stdout=true&tty=false",
        ),
    );
    assert_eq!(
        exec,
        "command=sh&command=-c&command=echo%20hi&stdin=true&stdout=true&tty=false"
    );
    assert_eq!(
        kubelet_path(Subresource::Exec, "ns", "p", Some("c"), &exec),
        format!("/exec/ns/p/c?{exec}")
    );
    assert_eq!(
        kubelet_path(Subresource::Attach, "ns", "p", Some("c"), "stdout=1"),
        "/attach/ns/p/c?stdout=1"
    );
    assert_eq!(
        kubelet_path(Subresource::PortForward, "ns", "p", None, "ports=80"),
        "/portForward/ns/p?ports=80"
    );
}

#[test]
fn only_pods_kubelet_subresources_are_proxied() {
    let of = |path: &str| RequestInfo::new(&Method::GET, path, None);
    assert!(is_node_proxy(&of("/api/v1/namespaces/d/pods/p/log")));
    assert!(is_node_proxy(&of("/api/v1/namespaces/d/pods/p/exec")));
    assert!(is_node_proxy(&of(
        "/api/v1/namespaces/d/pods/p/portforward"
    )));
    assert!(!is_node_proxy(&of("/api/v1/namespaces/d/pods/p/status")));
    assert!(!is_node_proxy(&of("/api/v1/namespaces/d/pods/p")));
    assert!(!is_node_proxy(&of(
        "/apis/apps/v1/namespaces/d/deployments/p/log"
    )));
}

async fn status_of(response: Response) -> (u16, Value) {
    let code = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (code, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_kubelets_error_keeps_its_code_and_words() {
    let (code, status) = status_of(node_error(
        404,
        Some("text/plain"),
        b"container \"x\" not found\n",
    ))
    .await;
    assert_eq!(code, 404);
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["message"], "container \"x\" not found");
    let (code, status) = status_of(node_error(502, None, b"")).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (502, Some("InternalError"))
    );
    let kubelet_status =
        br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"m","code":400}"#;
    let (code, status) = status_of(node_error(400, Some("application/json"), kubelet_status)).await;
    assert_eq!((code, status["message"].as_str()), (400, Some("m")));
}

#[test]
fn upgrade_requests_are_recognized() {
    let mut headers = HeaderMap::new();
    assert!(!is_upgrade(&headers));
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, Upgrade"),
    );
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(is_upgrade(&headers));
}
