//! The gRPC automation API of `skiff apiserver` (`skiff.api.v1.Resources` on `--grpc-port`)
//! driven by a tonic client: every verb, watch, errors as gRPC codes, bearer-token and
//! client-certificate authentication, gRPC health and server reflection.
#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::time::Duration;

use apiserver::{ADMIN_TOKEN, ApiHome, Backend, client_pki};
use common::free_port;
use serde_json::{Value, json};
use skiff_proto::skiff_api::resources_client::ResourcesClient;
use skiff_proto::skiff_api::{
    CreateRequest, DeleteRequest, GetRequest, ListRequest, ObjectRef, PatchRequest, UpdateRequest,
    WatchRequest,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn channel(port: u16, ca_pem: &str, identity: Option<Identity>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect")
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

fn cm_ref(name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: "grpc".into(),
        name: name.into(),
    })
}

fn doc(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

async fn resources_service_over_grpc(store: &Backend) {
    let home = ApiHome::new();
    let (ca, crt, key) = client_pki(home.path(), "client", "jane", &["dev"]);
    let grpc_port = free_port();
    let api = home.start(
        &store.endpoints(),
        &[
            "--grpc-port",
            &grpc_port.to_string(),
            "--client-ca-file",
            &ca.to_string_lossy(),
        ],
    );
    let ca_pem = std::fs::read_to_string(api.ca()).expect("ca");
    let ch = channel(grpc_port, &ca_pem, None).await;
    let mut client = ResourcesClient::new(ch.clone());
    let t = ADMIN_TOKEN;

    // Health and reflection.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "skiff.api.v1.Resources".into(),
        })
        .await
        .expect("health");
    assert_eq!(resp.get_ref().status, 1, "SERVING");
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = reflection
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .expect("reflection")
            .into_inner();
        let resp = stream
            .message()
            .await
            .expect("message")
            .expect("a response");
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected {resp:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"skiff.api.v1.Resources".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
    }

    // Create a namespace and a ConfigMap; get and list them.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "grpc"}});
    let created = client
        .create(authed(
            CreateRequest {
                json: doc(ns),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect("create namespace")
        .into_inner();
    assert_eq!(
        (created.kind.as_str(), created.name.as_str()),
        ("Namespace", "grpc")
    );
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "one", "namespace": "grpc", "labels": {"app": "g"}}, "data": {"k": "v"}});
    let one = client
        .create(authed(
            CreateRequest {
                json: doc(cm.clone()),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect("create")
        .into_inner();
    assert!(!one.resource_version.is_empty() && !one.uid.is_empty());
    assert_eq!(one.labels.get("app").map(String::as_str), Some("g"));
    let err = client
        .create(authed(
            CreateRequest {
                json: doc(cm),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let status: Value = serde_json::from_slice(err.details()).expect("Status details");
    assert_eq!(status["reason"], "AlreadyExists");

    let got = client
        .get(authed(
            GetRequest {
                r#ref: cm_ref("one"),
            },
            t,
        ))
        .await
        .expect("get")
        .into_inner();
    let body: Value = serde_json::from_slice(&got.json).expect("json");
    assert_eq!(body["data"]["k"], "v");
    assert_eq!(got.resource_version, one.resource_version);
    let list = client
        .list(authed(
            ListRequest {
                r#ref: cm_ref(""),
                label_selector: "app in (g,h)".into(),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].kind, "ConfigMap");
    let start_rv = list.resource_version.clone();

    // Watch from the list's revision while updating, patching, deleting.
    let mut watch = client
        .watch(authed(
            WatchRequest {
                r#ref: cm_ref(""),
                resource_version: start_rv,
                ..Default::default()
            },
            t,
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut update: Value = serde_json::from_slice(&got.json).expect("json");
    update["data"]["k"] = "v2".into();
    let updated = client
        .update(authed(
            UpdateRequest {
                json: doc(update.clone()),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect("update")
        .into_inner();
    assert_ne!(updated.resource_version, one.resource_version);
    let stale = client
        .update(authed(
            UpdateRequest {
                json: doc(update),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect_err("stale resourceVersion");
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    let patched = client
        .patch(authed(
            PatchRequest {
                r#ref: cm_ref("one"),
                patch: br#"{"data":{"p":"q"}}"#.to_vec(),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect("patch")
        .into_inner();
    let body: Value = serde_json::from_slice(&patched.json).expect("json");
    assert_eq!(
        (body["data"]["k"].as_str(), body["data"]["p"].as_str()),
        (Some("v2"), Some("q"))
    );
    client
        .delete(authed(
            DeleteRequest {
                r#ref: cm_ref("one"),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect("delete");
    let mut events = Vec::new();
    while events.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open");
        let object = event.object.expect("object");
        events.push((event.r#type, object.name, object.resource_version));
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(kinds, ["MODIFIED", "MODIFIED", "DELETED"], "{events:?}");
    assert_eq!(events[0].2, updated.resource_version);
    assert_eq!(events[1].2, patched.resource_version);
    let gone = client
        .get(authed(
            GetRequest {
                r#ref: cm_ref("one"),
            },
            t,
        ))
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    // Errors: bad JSON, an unserved kind, invalid name.
    let bad = client
        .create(authed(
            CreateRequest {
                json: b"{nope".to_vec(),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect_err("bad json");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let invalid = client
        .create(authed(
            CreateRequest {
                json: doc(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "Bad_Name", "namespace": "grpc"}})),
                ..Default::default()
            },
            t,
        ))
        .await
        .expect_err("invalid name");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let status: Value = serde_json::from_slice(invalid.details()).expect("Status details");
    assert_eq!(
        (status["code"].as_u64(), status["reason"].as_str()),
        (Some(422), Some("Invalid"))
    );
    // A malformed selector is INVALID_ARGUMENT with the 400 Status, never "everything".
    for (label_selector, field_selector, message) in [
        (
            "!!app",
            "",
            "unable to parse requirement: found '!', expected: identifier",
        ),
        (
            ",,,",
            "",
            "found ',', expected: !, identifier, or 'end of string'",
        ),
        (
            "",
            "metadata.name",
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'",
        ),
    ] {
        let bad = client
            .list(authed(
                ListRequest {
                    r#ref: cm_ref(""),
                    label_selector: label_selector.into(),
                    field_selector: field_selector.into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .expect_err("malformed selector");
        assert_eq!(
            (bad.code(), bad.message()),
            (Code::InvalidArgument, message)
        );
        let status: Value = serde_json::from_slice(bad.details()).expect("Status details");
        assert_eq!(
            (status["code"].as_u64(), status["reason"].as_str()),
            (Some(400), Some("BadRequest"))
        );
    }

    // Authentication: none or a wrong token → UNAUTHENTICATED; a client certificate works.
    let none = client
        .get(tonic::Request::new(GetRequest { r#ref: cm_ref("x") }))
        .await
        .expect_err("anonymous");
    assert_eq!(none.code(), Code::Unauthenticated);
    let wrong = client
        .get(authed(GetRequest { r#ref: cm_ref("x") }, "wrong"))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let identity = Identity::from_pem(
        std::fs::read_to_string(&crt).expect("crt"),
        std::fs::read_to_string(&key).expect("key"),
    );
    let mut jane = ResourcesClient::new(channel(grpc_port, &ca_pem, Some(identity)).await);
    let list = jane
        .list(tonic::Request::new(ListRequest {
            r#ref: cm_ref(""),
            ..Default::default()
        }))
        .await
        .expect("list with a client certificate");
    assert!(list.get_ref().items.is_empty());
    drop(api);
}

/// A Python client generated from proto/ by grpcio-tools (installed by scripts/test.sh).
fn python_client_generated_from_the_proto(store: &Backend) {
    let home = ApiHome::new();
    let grpc_port = free_port();
    let api = home.start(&store.endpoints(), &["--grpc-port", &grpc_port.to_string()]);
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = home.path().join("py");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let out = std::process::Command::new("python3")
        .arg(manifest.join("tests/grpc_python_client.py"))
        .arg(grpc_port.to_string())
        .arg(api.ca())
        .arg(ADMIN_TOKEN)
        .arg(manifest.join("../proto/proto"))
        .arg(&out_dir)
        .output()
        .expect("run python3 (pip install grpcio-tools)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "OK",
        "python client failed (needs `pip install grpcio-tools`): {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        api.log()
    );
}

// Each scenario runs on a skiff store and on real etcd (issue 6 acceptance).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_service_over_grpc_on_a_skiff_store() {
    resources_service_over_grpc(&Backend::skiff()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_service_over_grpc_on_real_etcd() {
    resources_service_over_grpc(&Backend::etcd()).await;
}

#[test]
fn python_client_generated_from_the_proto_on_a_skiff_store() {
    python_client_generated_from_the_proto(&Backend::skiff());
}

#[test]
fn python_client_generated_from_the_proto_on_real_etcd() {
    python_client_generated_from_the_proto(&Backend::etcd());
}
