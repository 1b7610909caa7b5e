//! The gRPC automation API (`skiff.api.v1.Resources`, proto/proto/skiff/api.proto), served on
//! `--grpc-port` with the HTTPS port's certificate, plus gRPC health and server reflection.
//!
//! Every call is translated into the equivalent REST request and run through the same router
//! (authentication, authorization, validation, preconditions, watch), so both APIs have one
//! semantics: the bearer token travels in the `authorization` metadata, a verified client
//! certificate names the user as on HTTPS, and an error is the Kubernetes Status mapped onto a
//! gRPC code with the Status JSON as the status details.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{self, Method, header};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use skiff_proto::skiff_api::resources_server::{Resources, ResourcesServer};
use skiff_proto::skiff_api::{
    CreateRequest, DeleteRequest, GetRequest, ListRequest, ListResponse, Object, ObjectRef,
    PatchRequest, UpdateRequest, WatchEvent, WatchRequest,
};
use tonic::{Code, Request, Response, Status};
use tower::ServiceExt as _;

use crate::auth::{PeerIdentity, user_from_cert};
use crate::registry::Registry;
use crate::registry::resources::ResourceInfo;

/// The `Resources` service over the REST router.
#[derive(Clone)]
pub struct GrpcApi {
    app: Router,
    registry: Arc<Registry>,
}

impl GrpcApi {
    pub fn new(app: Router, registry: Arc<Registry>) -> GrpcApi {
        GrpcApi { app, registry }
    }

    fn info(&self, api_version: &str, kind: &str) -> Result<&ResourceInfo, Status> {
        self.registry
            .resources
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "the server does not serve kind {kind:?} in {api_version:?}"
                ))
            })
    }

    /// The REST path of a collection (name empty) or an object.
    fn path(info: &ResourceInfo, namespace: &str, name: &str) -> String {
        let mut path = if info.group.is_empty() {
            format!("/api/{}", info.version)
        } else {
            format!("/apis/{}/{}", info.group, info.version)
        };
        if info.namespaced && !namespace.is_empty() {
            path.push_str(&format!("/namespaces/{}", encode(namespace)));
        }
        path.push('/');
        path.push_str(info.resource);
        if !name.is_empty() {
            path.push('/');
            path.push_str(&encode(name));
        }
        path
    }

    fn ref_path(
        &self,
        r: &Option<ObjectRef>,
        with_name: bool,
    ) -> Result<(&ResourceInfo, String), Status> {
        let r = r
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("ref is required"))?;
        let info = self.info(&r.api_version, &r.kind)?;
        if with_name && r.name.is_empty() {
            return Err(Status::invalid_argument("ref.name is required"));
        }
        let name = if with_name { r.name.as_str() } else { "" };
        Ok((info, Self::path(info, &r.namespace, name)))
    }

    /// Runs one REST request as the caller of `meta`/`peer`; returns the response when it is a
    /// success, else the Status as a gRPC error.
    async fn call<T>(
        &self,
        caller: &Request<T>,
        method: Method,
        path: String,
        query: &[(&str, String)],
        content_type: &str,
        body: Bytes,
    ) -> Result<http::Response<Body>, Status> {
        let query: Vec<String> = query
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let uri = if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json")
            .body(Body::from(body))
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(auth) = caller.metadata().get("authorization")
            && let Ok(value) = http::HeaderValue::from_bytes(auth.as_bytes())
        {
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let peer = caller
            .peer_certs()
            .and_then(|chain| chain.first().and_then(|leaf| user_from_cert(leaf)));
        req.extensions_mut().insert(PeerIdentity(peer));
        let resp = self
            .app
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        Err(status_error(&bytes))
    }

    async fn call_json<T>(
        &self,
        caller: &Request<T>,
        method: Method,
        path: String,
        query: &[(&str, String)],
        content_type: &str,
        body: Bytes,
    ) -> Result<Value, Status> {
        let resp = self
            .call(caller, method, path, query, content_type, body)
            .await?;
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| Status::internal(e.to_string()))
    }

    /// The collection path, api version and kind a JSON document names.
    fn target_of(&self, doc: &[u8]) -> Result<(Value, &ResourceInfo), Status> {
        let value: Value = serde_json::from_slice(doc).map_err(|e| {
            Status::invalid_argument(format!("error decoding the object's JSON: {e}"))
        })?;
        let api_version = value["apiVersion"].as_str().unwrap_or("");
        let kind = value["kind"].as_str().unwrap_or("");
        let info = self.info(api_version, kind)?;
        Ok((value, info))
    }
}

/// The envelope of one object (apiVersion/kind filled from `info` when the document lacks
/// them, as list items do).
fn envelope(mut obj: Value, info: Option<&ResourceInfo>) -> Object {
    if let Some(info) = info {
        if obj.get("apiVersion").is_none() {
            obj["apiVersion"] = json!(info.api_version());
        }
        if obj.get("kind").is_none() {
            obj["kind"] = json!(info.kind);
        }
    }
    let meta = &obj["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let labels: HashMap<String, String> = meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    Object {
        api_version: s(&obj["apiVersion"]),
        kind: s(&obj["kind"]),
        namespace: s(&meta["namespace"]),
        name: s(&meta["name"]),
        resource_version: s(&meta["resourceVersion"]),
        uid: s(&meta["uid"]),
        labels,
        json: Bytes::from(obj.to_string()).to_vec(),
    }
}

/// A Kubernetes Status (JSON) as a gRPC status.
fn status_error(body: &[u8]) -> Status {
    let status: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = status["code"].as_u64().unwrap_or(500);
    let reason = status["reason"].as_str().unwrap_or("");
    let message = status["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let grpc = match (code, reason) {
        (404, _) => Code::NotFound,
        (409, "AlreadyExists") => Code::AlreadyExists,
        (409, _) => Code::Aborted,
        (400 | 422 | 415, _) => Code::InvalidArgument,
        (401, _) => Code::Unauthenticated,
        (403, _) => Code::PermissionDenied,
        (410, _) => Code::OutOfRange,
        (413 | 429, _) => Code::ResourceExhausted,
        (405, _) => Code::Unimplemented,
        (503, _) => Code::Unavailable,
        (504 | 408, _) => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    Status::with_details(grpc, message, Bytes::copy_from_slice(body))
}

/// Percent-encodes a URL path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn dry_run(on: bool) -> String {
    if on { "All".into() } else { String::new() }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Resources for GrpcApi {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Object>, Status> {
        let (info, path) = self.ref_path(&request.get_ref().r#ref, true)?;
        let obj = self
            .call_json(
                &request,
                Method::GET,
                path,
                &[],
                "application/json",
                Bytes::new(),
            )
            .await?;
        Ok(Response::new(envelope(obj, Some(info))))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let r = request.get_ref();
        let (info, path) = self.ref_path(&r.r#ref, false)?;
        let query = [
            ("labelSelector", r.label_selector.clone()),
            ("fieldSelector", r.field_selector.clone()),
            (
                "limit",
                if r.limit > 0 {
                    r.limit.to_string()
                } else {
                    String::new()
                },
            ),
            ("continue", r.r#continue.clone()),
        ];
        let list = self
            .call_json(
                &request,
                Method::GET,
                path,
                &query,
                "application/json",
                Bytes::new(),
            )
            .await?;
        let items = list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|o| envelope(o, Some(info)))
            .collect();
        Ok(Response::new(ListResponse {
            items,
            resource_version: list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .into(),
            r#continue: list["metadata"]["continue"].as_str().unwrap_or("").into(),
        }))
    }

    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<Object>, Status> {
        let r = request.get_ref();
        let (value, info) = self.target_of(&r.json)?;
        let namespace = value["metadata"]["namespace"].as_str().unwrap_or("default");
        let path = Self::path(info, namespace, "");
        let query = [
            ("dryRun", dry_run(r.dry_run)),
            ("fieldValidation", r.field_validation.clone()),
        ];
        let body = Bytes::from(r.json.clone());
        let obj = self
            .call_json(
                &request,
                Method::POST,
                path,
                &query,
                "application/json",
                body,
            )
            .await?;
        Ok(Response::new(envelope(obj, Some(info))))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<Object>, Status> {
        let r = request.get_ref();
        let (value, info) = self.target_of(&r.json)?;
        let namespace = value["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = value["metadata"]["name"].as_str().unwrap_or("");
        if name.is_empty() {
            return Err(Status::invalid_argument("metadata.name is required"));
        }
        let path = Self::path(info, namespace, name);
        let query = [
            ("dryRun", dry_run(r.dry_run)),
            ("fieldValidation", r.field_validation.clone()),
        ];
        let body = Bytes::from(r.json.clone());
        let obj = self
            .call_json(
                &request,
                Method::PUT,
                path,
                &query,
                "application/json",
                body,
            )
            .await?;
        Ok(Response::new(envelope(obj, Some(info))))
    }

    async fn patch(&self, request: Request<PatchRequest>) -> Result<Response<Object>, Status> {
        let r = request.get_ref();
        let (info, path) = self.ref_path(&r.r#ref, true)?;
        let content_type = if r.patch_type.is_empty() {
            "application/merge-patch+json".to_string()
        } else {
            r.patch_type.clone()
        };
        let query = [
            ("dryRun", dry_run(r.dry_run)),
            ("fieldManager", r.field_manager.clone()),
            (
                "force",
                if r.force {
                    "true".into()
                } else {
                    String::new()
                },
            ),
        ];
        let body = Bytes::from(r.patch.clone());
        let obj = self
            .call_json(&request, Method::PATCH, path, &query, &content_type, body)
            .await?;
        Ok(Response::new(envelope(obj, Some(info))))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<Object>, Status> {
        let r = request.get_ref();
        let (info, path) = self.ref_path(&r.r#ref, true)?;
        let body = if r.resource_version.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(
                json!({"kind": "DeleteOptions", "apiVersion": "v1",
                       "preconditions": {"resourceVersion": r.resource_version}})
                .to_string(),
            )
        };
        let obj = self
            .call_json(
                &request,
                Method::DELETE,
                path,
                &[],
                "application/json",
                body,
            )
            .await?;
        let info = (obj["kind"] != "Status").then_some(info);
        Ok(Response::new(envelope(obj, info)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.get_ref();
        let (info, path) = self.ref_path(&r.r#ref, false)?;
        let mut field_selector = r.field_selector.clone();
        if let Some(name) = r.r#ref.as_ref().map(|r| &r.name).filter(|n| !n.is_empty()) {
            let name = crate::selector::escape_field_value(name);
            field_selector = if field_selector.is_empty() {
                format!("metadata.name={name}")
            } else {
                format!("metadata.name={name},{field_selector}")
            };
        }
        let query = [
            ("watch", "true".to_string()),
            ("labelSelector", r.label_selector.clone()),
            ("fieldSelector", field_selector),
            ("resourceVersion", r.resource_version.clone()),
            (
                "allowWatchBookmarks",
                if r.allow_bookmarks {
                    "true".into()
                } else {
                    String::new()
                },
            ),
            (
                "timeoutSeconds",
                if r.timeout_seconds > 0 {
                    r.timeout_seconds.to_string()
                } else {
                    String::new()
                },
            ),
        ];
        let resp = self
            .call(
                &request,
                Method::GET,
                path,
                &query,
                "application/json",
                Bytes::new(),
            )
            .await?;
        let info = info.clone();
        let mut body = resp.into_body().into_data_stream();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent, Status>>(64);
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            loop {
                // Stop reading the REST watch as soon as the gRPC caller goes away.
                let chunk = tokio::select! {
                    chunk = body.next() => chunk,
                    _ = tx.closed() => return,
                };
                let Some(Ok(chunk)) = chunk else { return };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line = buf.split_to(pos + 1);
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let kind = event["type"].as_str().unwrap_or("").to_string();
                    let object = event["object"].clone();
                    let info = (kind != "ERROR").then_some(&info);
                    let out = WatchEvent {
                        r#type: kind,
                        object: Some(envelope(object, info)),
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let stream: WatchStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }
}

/// PEM material for the gRPC listener's TLS.
pub struct GrpcTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<Vec<u8>>,
}

/// Binds `addr` and serves `Resources`, gRPC health and reflection until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    tls: GrpcTls,
    api: GrpcApi,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    let mut tls_config =
        ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    if let Some(ca) = &tls.client_ca_pem {
        tls_config = tls_config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true);
    }
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ResourcesServer<GrpcApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(skiff_proto::skiff_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    let router = Server::builder()
        .tls_config(tls_config)
        .map_err(|e| format!("gRPC TLS: {e}"))?
        .add_service(health)
        .add_service(reflection)
        .add_service(ResourcesServer::new(api));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::warn!(error = %e, "gRPC server stopped");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_grpc_codes() {
        let s = status_error(br#"{"kind":"Status","code":409,"reason":"Conflict","message":"m"}"#);
        assert_eq!((s.code(), s.message()), (Code::Aborted, "m"));
        let s = status_error(br#"{"kind":"Status","code":409,"reason":"AlreadyExists"}"#);
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(encode("app in (a,b)"), "app%20in%20%28a%2Cb%29");
    }
}
