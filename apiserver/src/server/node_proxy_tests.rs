//! The node proxy end to end, through the real router and filter chain over HTTPS: a fake
//! kubelet (HTTPS on 127.0.0.1, client certificates required, signed by a test CA that also
//! signed its serving certificate) serves `/containerLogs/…` in two chunks with a pause and
//! `/exec/…` as a WebSocket echo; the API server (over an in-memory store holding a Node that
//! points at the fake and a Pod bound to it) is driven by `kubectl logs` and by a WebSocket
//! client, and its error answers are checked request by request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::*;
use crate::registry::kubelet::{KubeletClient, KubeletClientConfig};
use crate::storage::{Change, Page, StorageError, Stored};

const TOKEN: &str = "node-proxy-admin-token";

/// An in-memory store: get and create are all the node proxy needs.
#[derive(Default)]
struct Fake {
    state: Mutex<(i64, BTreeMap<String, Stored>)>,
}

impl Storage for Fake {
    fn get(&self, key: &str) -> BoxFuture<'_, crate::storage::Result<Option<Stored>>> {
        let found = self.state.lock().unwrap().1.get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, crate::storage::Result<i64>> {
        let mut state = self.state.lock().unwrap();
        state.0 += 1;
        let revision = state.0;
        let stored = Stored {
            key: key.to_string(),
            value,
            revision,
        };
        state.1.insert(key.to_string(), stored);
        Box::pin(async move { Ok(revision) })
    }

    fn update(&self, _: &str, _: Vec<u8>, _: i64) -> BoxFuture<'_, crate::storage::Result<i64>> {
        Box::pin(async { Err(StorageError::Internal("read-only".into())) })
    }

    fn delete(
        &self,
        _: &str,
        _: i64,
        _: Vec<String>,
    ) -> BoxFuture<'_, crate::storage::Result<i64>> {
        Box::pin(async { Err(StorageError::Internal("read-only".into())) })
    }

    fn list(
        &self,
        _: &str,
        _: &str,
        _: i64,
        _: i64,
    ) -> BoxFuture<'_, crate::storage::Result<Page>> {
        let revision = self.state.lock().unwrap().0;
        Box::pin(async move {
            Ok(Page {
                items: Vec::new(),
                revision,
                remaining: 0,
            })
        })
    }

    fn watch(
        &self,
        _: &str,
        _: i64,
        _: bool,
    ) -> BoxFuture<'_, crate::storage::Result<BoxStream<'static, crate::storage::Result<Change>>>>
    {
        Box::pin(async { Err(StorageError::Unavailable("no watches".into())) })
    }
}

/// A test CA, and certificates it signs.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `cn`, valid for 127.0.0.1.
    fn sign(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// What the fake kubelet saw.
#[derive(Default)]
struct Seen {
    log_requests: Mutex<Vec<String>>,
}

/// Serves the fake kubelet on 127.0.0.1; returns its port.
async fn fake_kubelet(ca: &Ca, seen: Arc<Seen>) -> u16 {
    let (cert_pem, key_pem) = ca.sign("kubelet");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(kubelet_answer(req, &seen)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
            });
        }
    });
    port
}

fn kubelet_answer(mut req: Request<hyper::body::Incoming>, seen: &Seen) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/containerLogs/default/p/c" {
        seen.log_requests.lock().unwrap().push(query);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx.send(Ok("hello 1\n".into())).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let _ = tx.send(Ok("hello 2\n".into())).await;
        });
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        return Response::builder()
            .header("content-type", "text/plain")
            .body(body)
            .unwrap();
    }
    if path == "/exec/default/p/c" {
        // `command=x`: an echo of binary messages; a kubectl exec (`command=echo&command=hi`):
        // a remote-command v5 session that writes `hi` on stdout and succeeds.
        let echo = query == "command=x&stdout=1";
        if !echo && !query.starts_with("command=echo&command=hi&") {
            return Response::builder()
                .status(400)
                .body(Body::from(format!("unexpected query {query}")))
                .unwrap();
        }
        let key = req.headers().get("sec-websocket-key").cloned();
        let wants_v5 = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|p| p.trim() == "v5.channel.k8s.io"));
        let (Some(key), true) = (key, wants_v5) else {
            return Response::builder()
                .status(400)
                .body(Body::from("not a v5 websocket request"))
                .unwrap();
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = upgrade.await.unwrap();
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            if !echo {
                let status = br#"{"metadata":{},"status":"Success"}"#;
                let _ = ws.send(Message::binary(b"\x01hi\n".to_vec())).await;
                let _ = ws
                    .send(Message::binary([&[3u8][..], status].concat()))
                    .await;
                let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code:
                        tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = ws.close(Some(normal)).await;
                return;
            }
            while let Some(Ok(message)) = ws.next().await {
                if message.is_binary() && ws.send(message).await.is_err() {
                    return;
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .header("sec-websocket-protocol", "v5.channel.k8s.io")
            .body(Body::empty())
            .unwrap();
    }
    Response::builder()
        .status(404)
        .body(Body::from(format!("no such kubelet path {path}")))
        .unwrap()
}

/// A pod `p` (container `c`) bound to node `n1`, whose kubelet is at 127.0.0.1:`port`; a pod
/// `two` with containers `a` and `b`; a pod `pending` on no node; a pod `lost` on node `n2`,
/// whose kubelet is not listening.
async fn objects(storage: &Fake, kubelet_port: u16, dead_port: u16) {
    let node = |name: &str, port: u16| {
        json!({"metadata": {"name": name, "uid": name},
               "status": {"addresses": [{"type": "Hostname", "address": name},
                                        {"type": "InternalIP", "address": "127.0.0.1"}],
                          "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})
    };
    let pod = |name: &str, node: &str, containers: &[&str]| {
        let containers: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c, "image": "busybox"}))
            .collect();
        json!({"metadata": {"name": name, "namespace": "default", "uid": name,
                            "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"nodeName": node, "containers": containers},
               "status": {"phase": "Running"}})
    };
    let put = |key: String, value: Value| storage.create(&key, value.to_string().into_bytes());
    put("/registry/nodes/n1".into(), node("n1", kubelet_port))
        .await
        .unwrap();
    put("/registry/nodes/n2".into(), node("n2", dead_port))
        .await
        .unwrap();
    for (name, node, containers) in [
        ("p", "n1", &["c"][..]),
        ("two", "n1", &["a", "b"][..]),
        ("pending", "", &["c"][..]),
        ("lost", "n2", &["c"][..]),
    ] {
        put(
            format!("/registry/pods/default/{name}"),
            pod(name, node, containers),
        )
        .await
        .unwrap();
    }
}

struct Harness {
    app: Router,
    address: SocketAddr,
    serving_ca_pem: String,
    seen: Arc<Seen>,
    dir: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The API server (AlwaysAllow, anonymous allowed, an admin token) over the fake store,
/// reaching the fake kubelet with a client certificate and verifying it by the test CA.
async fn harness() -> Harness {
    let ca = Ca::new();
    let seen = Arc::new(Seen::default());
    let kubelet_port = fake_kubelet(&ca, seen.clone()).await;
    // A port nothing listens on.
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let storage = Arc::new(Fake::default());
    objects(&storage, kubelet_port, dead_port).await;
    let registry = Arc::new(Registry::new(
        storage,
        "/registry",
        resources::registry(),
        Vec::new(),
    ));
    let (client_cert, client_key) = ca.sign("system:kube-apiserver");
    let config = ApiServerConfig::default();
    let kubelet = KubeletClient::new(&KubeletClientConfig {
        client_cert_pem: Some((client_cert.into_bytes(), client_key.into_bytes())),
        ca_pem: Some(ca.pem.clone().into_bytes()),
        timeout: config.kubelet_timeout,
        preferred_address_types: config.kubelet_preferred_address_types.clone(),
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("skiff-node-proxy-{}", rand::random::<u64>()));
    let serving = serving_cert(&ApiServerConfig {
        cert_dir: dir.clone(),
        ..ApiServerConfig::default()
    })
    .unwrap();
    let acceptor = tls_acceptor(&serving, None).unwrap();
    let etcd = EtcdStorage::connect(&EtcdConfig {
        servers: vec![format!("http://127.0.0.1:{dead_port}")],
        ca_file: None,
        cert_file: None,
        key_file: None,
    })
    .unwrap();
    let mut tokens = Tokens::default();
    tokens.insert(
        TOKEN.into(),
        User {
            name: "admin".into(),
            uid: "admin".into(),
            groups: vec!["system:masters".into()],
        },
    );
    let metrics = crate::metrics::Metrics::new(Vec::new());
    let state = Arc::new(AppState {
        registry,
        kubelet: Arc::new(kubelet),
        etcd: etcd.client().clone(),
        metrics: metrics.clone(),
        authenticator: Arc::new(Authenticator {
            tokens,
            anonymous: true,
        }),
        authorizer: crate::auth::authorizer("AlwaysAllow").unwrap(),
        audit: None,
    });
    let app = router(state, InFlight::new(0, 0, metrics));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        acceptor,
        app.clone(),
        std::future::pending(),
    ));
    Harness {
        app,
        address,
        serving_ca_pem: serving.ca_pem.unwrap(),
        seen,
        dir,
    }
}

/// One request through the router (no TLS), as the admin unless `anonymous`.
async fn call(app: &Router, uri: &str, anonymous: bool) -> Response<Body> {
    let mut req = Request::get(uri);
    if !anonymous {
        req = req.header("authorization", format!("Bearer {TOKEN}"));
    }
    tower::ServiceExt::oneshot(app.clone(), req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn status(response: Response<Body>) -> (u16, String) {
    let code = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let status: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    (code, status["message"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn errors_are_kube_apiservers() {
    let h = harness().await;
    let app = &h.app;
    let ns = "/api/v1/namespaces/default/pods";
    assert_eq!(
        status(call(app, &format!("{ns}/nope/log"), false).await).await,
        (404, "pods \"nope\" not found".into())
    );
    assert_eq!(
        status(call(app, &format!("{ns}/two/log"), false).await).await,
        (
            400,
            "a container name must be specified for pod two, choose one of: [a b]".into()
        )
    );
    assert_eq!(
        status(call(app, &format!("{ns}/p/log?container=zz"), false).await).await,
        (400, "container zz is not valid for pod p".into())
    );
    assert_eq!(
        status(call(app, &format!("{ns}/pending/exec?command=x"), false).await).await,
        (400, "pod pending does not have a host assigned".into())
    );
    assert_eq!(
        status(call(app, &format!("{ns}/p/exec?stdout=1"), false).await).await,
        (400, "you must specify at least 1 command".into())
    );
    // Not an upgrade request.
    assert_eq!(
        status(call(app, &format!("{ns}/p/exec?command=x"), false).await).await,
        (400, "Upgrade request required".into())
    );
    let (code, message) = status(call(app, &format!("{ns}/lost/log"), false).await).await;
    assert_eq!(code, 500);
    assert!(
        message.starts_with("Get \"https://127.0.0.1:")
            && message.contains("/containerLogs/default/lost/c\": dial tcp 127.0.0.1:")
            && message.ends_with(": connect: connection refused"),
        "{message}"
    );
    // The kubelet's own error passes through.
    let (code, message) =
        status(call(app, &format!("{ns}/two/log?container=a"), false).await).await;
    assert_eq!(
        (code, message.as_str()),
        (404, "no such kubelet path /containerLogs/default/two/a")
    );
    // Anonymous may read logs under AlwaysAllow, never exec.
    let (code, message) = status(call(app, &format!("{ns}/p/exec?command=x"), true).await).await;
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("cannot create resource \"pods/exec\""),
        "{message}"
    );
    // A pod on no node has an empty log.
    let response = call(app, &format!("{ns}/pending/log"), false).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn logs_stream_as_the_kubelet_writes_them() {
    let h = harness().await;
    let started = Instant::now();
    let response = call(
        &h.app,
        "/api/v1/namespaces/default/pods/p/log?follow=true&tailLines=3&pretty=true",
        false,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"hello 1\n");
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "the first chunk waited for the second"
    );
    let second = body.next().await.unwrap().unwrap();
    assert_eq!(&second[..], b"hello 2\n");
    assert!(body.next().await.is_none());
    assert_eq!(
        h.seen.log_requests.lock().unwrap().as_slice(),
        ["follow=true&tailLines=3"]
    );
}

#[tokio::test]
async fn kubectl_logs_through_the_api_server() {
    let h = harness().await;
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("no kubectl: skipped");
        return;
    }
    let kubeconfig_path = h.dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig_path,
        kubeconfig(
            &format!("https://{}", h.address),
            Some(&h.serving_ca_pem),
            TOKEN,
        ),
    )
    .unwrap();
    for args in [
        &["logs", "p"][..],
        &["logs", "p", "--tail", "5", "--timestamps", "-c", "c"][..],
        &["logs", "-f", "p", "--previous"][..],
    ] {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig_path)
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 1\nhello 2\n");
    }
    assert_eq!(
        h.seen.log_requests.lock().unwrap().as_slice(),
        [
            "",
            "tailLines=5&timestamps=true",
            "follow=true&previous=true"
        ]
    );
    // kubectl's WebSocket executor (remote-command v5) through the API server.
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig_path)
        .args(["exec", "p", "--", "echo", "hi"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}

#[tokio::test]
async fn exec_websocket_is_spliced_to_the_kubelet() {
    let h = harness().await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(h.serving_ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(h.address).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls_pki_types::ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into()),
            tcp,
        )
        .await
        .unwrap();
    let url = format!(
        "wss://{}/api/v1/namespaces/default/pods/p/exec?command=x&stdout=1",
        h.address
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    for payload in [&[1u8, b'h', b'i'][..], &[2u8; 300][..]] {
        ws.send(Message::binary(payload.to_vec())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_data().as_ref(), payload);
    }
    ws.close(None).await.unwrap();
}
