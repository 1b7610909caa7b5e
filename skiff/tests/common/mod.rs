//! Test harness: real `skiff store` processes on loopback ports, real `etcdctl`, and the
//! `etcd-client` crate. Every integration test builds on this module.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `skiff store` flags for client and peer mTLS with the certificates `skiff pki init`
/// writes into `pki` (server, peer and CA; client certificates required on both ports).
pub fn mtls_member_args(pki: &Path) -> Vec<std::ffi::OsString> {
    let file = |name: &str| pki.join(name).into_os_string();
    vec![
        "--cert-file".into(),
        file("server.pem"),
        "--key-file".into(),
        file("server-key.pem"),
        "--trusted-ca-file".into(),
        file("ca.pem"),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        file("peer.pem"),
        "--peer-key-file".into(),
        file("peer-key.pem"),
        "--peer-trusted-ca-file".into(),
        file("ca.pem"),
        "--peer-client-cert-auth".into(),
    ]
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    // Never hand out the same port twice in one test binary, even if the kernel would.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Path of the `skiff` binary under test.
pub fn skiff_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skiff"))
}

/// One member process.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        self.client_url.trim_start_matches("http://").to_string()
    }

    fn spawn(&mut self, initial_cluster: &str, state: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open member log");
        let mut cmd = Command::new(skiff_bin());
        cmd.arg("store")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "skiff-test"])
            .args(&self.extra_args)
            .env("SKIFF_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn skiff store"));
    }

    /// SIGKILL the process (no shutdown path runs).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A cluster of real `skiff store` processes in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub initial_cluster: String,
}

impl Cluster {
    /// Start `n` members as a new cluster and wait until a leader serves writes.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Self::new_member(dir.path(), &format!("m{i}"), extra_args));
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for member in &mut members {
            member.spawn(&initial_cluster, "new");
        }
        let cluster = Cluster {
            dir,
            members,
            initial_cluster,
        };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// A NEW cluster of `n` members whose data dirs `skiff store snapshot restore` builds
    /// from `snapshot` (like etcdutl); started and waited for like [`Cluster::start`].
    pub fn start_from_snapshot(n: usize, snapshot: &Path, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Self::new_member(dir.path(), &format!("r{i}"), extra_args))
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for member in &members {
            let out = Command::new(skiff_bin())
                .args(["store", "snapshot", "restore"])
                .arg(snapshot)
                .args(["--name", &member.name])
                .arg("--data-dir")
                .arg(&member.data_dir)
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-token", "skiff-restored"])
                .args(["--initial-advertise-peer-urls", &member.peer_url])
                .output()
                .expect("run skiff store snapshot restore");
            assert!(
                out.status.success(),
                "snapshot restore for {} failed: {}",
                member.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for member in &mut members {
            member.spawn(&initial_cluster, "new");
        }
        let cluster = Cluster {
            dir,
            members,
            initial_cluster,
        };
        cluster.wait_healthy(Duration::from_secs(60));
        cluster
    }

    fn new_member(dir: &Path, name: &str, extra_args: &[&str]) -> Member {
        Member {
            name: name.to_string(),
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            data_dir: dir.join(format!("{name}.skiff")),
            log_path: dir.join(format!("{name}.log")),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Comma-separated endpoints of running members.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Restart a member from its data dir.
    pub fn restart(&mut self, i: usize) {
        let initial = self.initial_cluster.clone();
        self.members[i].spawn(&initial, "new");
    }

    /// Prepare (not start) a new member that will join with `member add`.
    pub fn prepare_member(&mut self, name: &str) -> usize {
        let member = Self::new_member(self.dir.path(), name, &[]);
        self.members.push(member);
        self.members.len() - 1
    }

    /// Start a prepared member with `--initial-cluster-state existing`.
    pub fn start_joining(&mut self, i: usize) {
        let initial = self
            .members
            .iter()
            .enumerate()
            .filter(|(j, m)| *j == i || m.is_running())
            .map(|(_, m)| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        self.members[i].spawn(&initial, "existing");
    }

    /// Wait until a linearizable read succeeds through every running member.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for member in self.members.iter().filter(|m| m.is_running()) {
            loop {
                let out = etcdctl(&member.endpoint(), &["endpoint", "health"]);
                if out.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "member {} not healthy: {}\n--- log ---\n{}",
                        member.name,
                        String::from_utf8_lossy(&out.stderr),
                        self.log_tail(&member.name)
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Index of the member that currently leads (via `endpoint status`), if any.
    pub fn leader(&self) -> Option<usize> {
        for (i, member) in self.members.iter().enumerate() {
            if !member.is_running() {
                continue;
            }
            let out = etcdctl(&member.endpoint(), &["endpoint", "status", "-w", "json"]);
            if !out.status.success() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let status = &v[0]["Status"];
            let leader = status["leader"].as_u64();
            let me = status["header"]["member_id"].as_u64();
            if leader.is_some() && leader == me {
                return Some(i);
            }
        }
        None
    }

    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no leader elected in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self, name: &str) -> String {
        let path = self.dir.path().join(format!("{name}.log"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Run real etcdctl (v3 API) against `endpoints`.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_stdin(endpoints, args, None)
}

/// Run real etcdctl with `input` on stdin (for `txn`).
pub fn etcdctl_stdin(endpoints: &str, args: &[&str], input: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("etcdctl not found: install Debian's etcd-client (the README's test command does)");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("etcdctl output")
}

/// etcdctl's stdout, asserting success.
pub fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client from the `etcd-client` crate connected to `endpoints`.
pub async fn client(endpoints: &str) -> etcd_client::Client {
    let eps: Vec<String> = endpoints
        .split(',')
        .map(|e| format!("http://{e}"))
        .collect();
    etcd_client::Client::connect(eps, None)
        .await
        .expect("connect etcd-client")
}

/// A single real etcd (Debian's etcd-server) for differential tests.
pub struct RealEtcd {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub endpoint: String,
}

impl RealEtcd {
    pub fn start() -> RealEtcd {
        Self::start_with(&[])
    }

    /// Start with extra etcd flags (e.g. `--experimental-watch-progress-notify-interval`).
    pub fn start_with(extra_args: &[&str]) -> RealEtcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        let child = Command::new("etcd")
            .args(["--name", "ref"])
            .arg("--data-dir")
            .arg(dir.path().join("ref.etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("ref={peer}")])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "etcd not found: install Debian's etcd-server (the README's test command does)",
            );
        let endpoint = client.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !etcdctl(&endpoint, &["endpoint", "health"]).status.success() {
            assert!(Instant::now() < deadline, "real etcd did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        RealEtcd {
            dir,
            child,
            endpoint,
        }
    }
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET an HTTP path from a member's client port (plain HTTP/1.1), returning the body.
pub fn http_get(endpoint: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(endpoint).expect("connect for HTTP");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )
    .expect("send HTTP request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read HTTP response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // De-chunk: size line, data, CRLF, ... 0.
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        return out;
    }
    body.to_string()
}

/// The value of a Prometheus gauge/counter in a member's `/metrics`.
pub fn metric(endpoint: &str, name: &str) -> f64 {
    let body = http_get(endpoint, "/metrics");
    body.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name)
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("metric {name} missing from /metrics:\n{body}"))
}
