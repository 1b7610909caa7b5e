//! The agent's HTTPS server end to end: a self-signed serving certificate, a generated client
//! CA and client certificate, fake CRI log files for `containerLogs`, and `exec` over a
//! WebSocket against a real runc container (skipped, like `runtime.rs`, without root, runc,
//! busybox-static or cgroupfs, or with `SKIFF_SKIP_RUNC=1`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use skiff_node_agent::runtime::RuncRuntime;
use skiff_node_agent::server::{ServerConfig, acceptor, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const RUNC: &str = "/usr/sbin/runc";
const BUSYBOX: &str = "/usr/bin/busybox";

fn runc_path() -> PathBuf {
    if Path::new(RUNC).exists() {
        return PathBuf::from(RUNC);
    }
    PathBuf::from("runc")
}

fn skip_reason() -> Option<String> {
    if std::env::var_os("SKIFF_SKIP_RUNC").is_some() {
        return Some("SKIFF_SKIP_RUNC set".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match std::process::Command::new(runc_path())
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => {}
        _ => return Some("runc --version failed".into()),
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("{BUSYBOX} missing (busybox-static)"));
    }
    if !Path::new("/sys/fs/cgroup/memory").exists()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        return Some("no cgroupfs".into());
    }
    None
}

/// A client CA (PEM, written to a file) and a client certificate it signed.
struct ClientPki {
    ca_file: PathBuf,
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn client_pki(dir: &Path) -> ClientPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test-client-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join("client-ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    ClientPki {
        ca_file,
        cert: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// A running server and how to reach it.
struct Server {
    addr: SocketAddr,
    serving_ca: CertificateDer<'static>,
    pki: ClientPki,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(dir: &Path, config: ServerConfig) -> Server {
    let serving = skiff_client::tls::ServingCertOptions::default()
        .load()
        .unwrap();
    let serving_ca = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .last()
        .unwrap()
        .unwrap();
    let pki = client_pki(dir);
    let acceptor = acceptor(&serving, Some(&pki.ca_file)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(config, listener, acceptor, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        serving_ca,
        pki,
        stop: Some(stop),
    }
}

impl Server {
    fn connector(&self, with_cert: bool) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.serving_ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_cert {
            builder
                .with_client_auth_cert(
                    vec![self.pki.cert.clone()],
                    PrivateKeyDer::Pkcs8(self.pki.key_der.clone().into()),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    async fn tls(&self, with_cert: bool) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        self.connector(with_cert).connect(name, tcp).await.unwrap()
    }

    /// GET `path`: (status, body) with a chunked body decoded.
    async fn get(&self, path: &str, with_cert: bool) -> (u16, String) {
        let mut tls = self.tls(with_cert).await;
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut raw))
            .await
            .expect("response within 20 s");
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
        let status = head[9..12].parse().unwrap();
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        (
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_string()
            },
        )
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

const UID: &str = "0a1b2c3d-0000-4000-8000-000000000001";

fn write_logs(logs: &Path) {
    let dir = logs.join(format!("default_web_{UID}")).join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("0.log"),
        "2024-05-01T10:00:00.000000000Z stdout F old line\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("1.log"),
        "2024-05-01T10:00:01.000000000Z stdout F first\n\
         2024-05-01T10:00:02.000000000Z stderr P sec\n\
         2024-05-01T10:00:02.100000000Z stderr F ond\n\
         2024-05-01T10:00:03.500000000Z stdout F third\n",
    )
    .unwrap();
    // A container that has not started yet.
    std::fs::create_dir_all(logs.join(format!("default_web_{UID}")).join("sidecar")).unwrap();
}

#[tokio::test]
async fn container_logs_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let state = dir.path().join("state");
    write_logs(&logs);
    let runtime = RuncRuntime::new(
        runc_path(),
        state.clone(),
        PathBuf::from(env!("CARGO_BIN_EXE_skiff-shim")),
    );
    let server = start(dir.path(), ServerConfig::new(logs.clone(), runtime.clone())).await;
    let base = "/containerLogs/default/web/app";

    assert_eq!(server.get("/healthz", false).await, (200, "ok".into()));
    assert_eq!(server.get(base, false).await.0, 401);
    assert_eq!(server.get("/attach/default/web/app", true).await.0, 501);

    let plain = server.get(base, true).await;
    assert_eq!(plain, (200, "first\nsecond\nthird\n".into()));
    let stamped = server.get(&format!("{base}?timestamps=true"), true).await;
    assert_eq!(
        stamped.1,
        "2024-05-01T10:00:01Z first\n2024-05-01T10:00:02Z second\n2024-05-01T10:00:03.5Z third\n"
    );
    let tail = server.get(&format!("{base}?tailLines=1"), true).await;
    assert_eq!(tail.1, "third\n");
    let since = server
        .get(&format!("{base}?sinceTime=2024-05-01T10:00:02Z"), true)
        .await;
    assert_eq!(since.1, "second\nthird\n");
    let previous = server.get(&format!("{base}?previous=true"), true).await;
    assert_eq!(previous, (200, "old line\n".into()));
    let limited = server.get(&format!("{base}?limitBytes=8"), true).await;
    assert_eq!(limited.1, "first\nse");

    let missing = server.get("/containerLogs/default/nope/app", true).await;
    assert_eq!(missing, (404, "pods \"nope\" not found".into()));
    let waiting = server.get("/containerLogs/default/web/sidecar", true).await;
    assert_eq!(
        waiting,
        (
            400,
            "container \"sidecar\" in pod \"web\" is waiting to start: ContainerCreating".into()
        )
    );
    let bad = server.get(&format!("{base}?tailLines=x"), true).await;
    assert_eq!(bad.0, 400);

    // previous of a container with one attempt.
    std::fs::create_dir_all(logs.join(format!("default_solo_{UID}")).join("c")).unwrap();
    std::fs::write(
        logs.join(format!("default_solo_{UID}/c/0.log")),
        "2024-05-01T10:00:00Z stdout F x\n",
    )
    .unwrap();
    let no_previous = server
        .get("/containerLogs/default/solo/c?previous=1", true)
        .await;
    assert_eq!(
        no_previous,
        (
            400,
            "previous terminated container \"c\" in pod \"solo\" not found".into()
        )
    );

    // follow: new lines stream until the attempt's exit file appears.
    let log1 = logs.join(format!("default_web_{UID}/app/1.log"));
    let exit_file = runtime.exit_file(&format!("{UID}_app_1"));
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log1)
            .unwrap();
        std::io::Write::write_all(&mut f, b"2024-05-01T10:00:04Z stdout F fourth\n").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        std::fs::create_dir_all(exit_file.parent().unwrap()).unwrap();
        std::fs::write(
            &exit_file,
            r#"{"exit_code":0,"signal":null,"oom_killed":false,"started_at":null,"finished_at":"2024-05-01T10:00:05Z"}"#,
        )
        .unwrap();
    });
    let started = std::time::Instant::now();
    let followed = server
        .get(&format!("{base}?follow=true&tailLines=1"), true)
        .await;
    writer.await.unwrap();
    assert_eq!(followed, (200, "third\nfourth\n".into()));
    assert!(started.elapsed() >= Duration::from_millis(700));
}

// ---- exec against a real container ----

/// A container started through the shim with the agent's ids and log layout; removed (and its
/// cgroups) on drop.
struct Container {
    root: PathBuf,
    id: String,
    cgroup_parent: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new(runc_path())
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", &self.id])
            .stderr(std::process::Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..20 {
            if remove_cgroups(&self.cgroup_parent) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn remove_cgroups(parent: &str) -> bool {
    fn rm_tree(dir: &Path) -> bool {
        let mut ok = true;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    ok &= rm_tree(&e.path());
                }
            }
        }
        ok && std::fs::remove_dir(dir).is_ok()
    }
    let mut all = true;
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    for h in roots {
        let d = h.join(parent);
        if d.is_dir() {
            all &= rm_tree(&d);
        }
    }
    all
}

fn build_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
}

fn write_bundle(bundle: &Path, rootfs: &Path, id: &str, cgroup_parent: &str, args: &[&str]) {
    std::fs::create_dir_all(bundle).unwrap();
    let config = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]
            }
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "exec",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "cgroupsPath": format!("/{cgroup_parent}/{id}"),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ]
        }
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn open_exec(server: &Server, query: &str, protocol: &str) -> Ws {
    let tls = server.tls(true).await;
    let mut req = format!("wss://localhost/exec/default/shell/sh?{query}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    ws
}

/// Reads until the server closes: (stdout, stderr, status channel).
async fn drain(ws: &mut Ws) -> (String, String, String) {
    let mut out = [String::new(), String::new(), String::new(), String::new()];
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("exec output within 20 s");
        match msg {
            Some(Ok(Message::Binary(data))) => {
                if let Some((&ch, rest)) = data.split_first()
                    && (ch as usize) < out.len()
                {
                    out[ch as usize].push_str(&String::from_utf8_lossy(rest));
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    let [_, stdout, stderr, status] = out;
    (stdout, stderr, status)
}

#[tokio::test]
async fn exec_over_websocket_in_a_runc_container() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping exec_over_websocket_in_a_runc_container: {why}");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("skiff-server-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let logs = dir.path().join("logs");
    let runtime = RuncRuntime::new(
        runc_path(),
        dir.path().join("state"),
        PathBuf::from(env!("CARGO_BIN_EXE_skiff-shim")),
    );
    let rootfs = dir.path().join("rootfs");
    build_rootfs(&rootfs);
    let pid = std::process::id();
    let uid = format!("{pid:08x}-0000-4000-8000-00000000e0ec");
    let id = format!("{uid}_sh_0");
    let cgroup_parent = format!("skiff-test-{pid}-server");
    let bundle = dir.path().join("bundles/sh");
    write_bundle(&bundle, &rootfs, &id, &cgroup_parent, &["sleep", "1000"]);
    let _container = Container {
        root: runtime.runc_root(),
        id: id.clone(),
        cgroup_parent,
    };
    let log = logs.join(format!("default_shell_{uid}/sh/0.log"));
    runtime.start(&id, &bundle, &log).await.expect("start");

    let server = start(dir.path(), ServerConfig::new(logs.clone(), runtime.clone())).await;

    // v5: stdin, then its close signal; exit code 3.
    let query = "command=sh&command=-c&command=read%20x%3B%20echo%20got-%24x%3B%20echo%20oops%20%3E%262%3B%20exit%203&stdin=1&stdout=1&stderr=1&tty=0";
    let mut ws = open_exec(&server, query, "v5.channel.k8s.io").await;
    ws.send(Message::Binary([&[0u8][..], b"hello\n"].concat().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .await
        .unwrap();
    let (stdout, stderr, status) = drain(&mut ws).await;
    assert_eq!(stdout, "got-hello\n");
    assert_eq!(stderr, "oops\n");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert_eq!(
        status["message"],
        "command terminated with non-zero exit code: error executing command [sh -c read x; echo got-$x; echo oops >&2; exit 3], exit code 3"
    );

    // v4, success, no stdin.
    let mut ws = open_exec(
        &server,
        "command=echo&command=fine&stdout=1",
        "v4.channel.k8s.io",
    )
    .await;
    let (stdout, _, status) = drain(&mut ws).await;
    assert_eq!(stdout, "fine\n");
    assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);

    // A stopped container: an error status.
    runtime
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop");
    let mut ws = open_exec(&server, "command=true&stdout=1", "v5.channel.k8s.io").await;
    let (_, _, status) = drain(&mut ws).await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(
        status["details"]["causes"][0]["message"],
        "container not found (\"sh\")"
    );
}
