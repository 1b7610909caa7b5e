//! TLS with etcd's flags: `skiff pki init` makes the certificates; a three-member cluster
//! runs with mutual TLS on client and peer URLs; real etcdctl talks to it with client
//! certificates, and plain-text or certificate-less clients are refused.
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, skiff_bin};

struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn etcdctl_tls(pki: &Path, endpoints: &str, cert: bool, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .arg("--cacert")
        .arg(pki.join("ca.pem"));
    if cert {
        cmd.arg("--cert")
            .arg(pki.join("client.pem"))
            .arg("--key")
            .arg(pki.join("client-key.pem"));
    }
    cmd.args(args).output().expect("run etcdctl")
}

#[test]
fn mutual_tls_cluster_serves_etcdctl_and_refuses_plain_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new(skiff_bin())
        .args(["pki", "init", "--hosts", "127.0.0.1,localhost", "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "peer.pem",
        "client.pem",
    ] {
        assert!(pki.join(file).is_file(), "{file} missing");
    }

    let names = ["t0", "t1", "t2"];
    let clients: Vec<String> = names
        .iter()
        .map(|_| format!("https://127.0.0.1:{}", free_port()))
        .collect();
    let peers: Vec<String> = names
        .iter()
        .map(|_| format!("https://127.0.0.1:{}", free_port()))
        .collect();
    let initial: Vec<String> = names
        .iter()
        .zip(&peers)
        .map(|(n, p)| format!("{n}={p}"))
        .collect();
    let initial = initial.join(",");
    let mut members = Members(Vec::new());
    for (i, name) in names.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(skiff_bin())
            .arg("store")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(dir.path().join(name))
            .args(["--listen-client-urls", &clients[i]])
            .args(["--advertise-client-urls", &clients[i]])
            .args(["--listen-peer-urls", &peers[i]])
            .args(["--initial-advertise-peer-urls", &peers[i]])
            .args(["--initial-cluster", &initial])
            .args(common::mtls_member_args(&pki))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        members.0.push(child);
    }
    let all = clients.join(",");
    let deadline = Instant::now() + Duration::from_secs(30);
    for client in &clients {
        while !etcdctl_tls(&pki, client, true, &["endpoint", "health"])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "{client} never became healthy over TLS"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let put = etcdctl_tls(&pki, &clients[1], true, &["put", "secret", "s3cr3t"]);
    assert_eq!(String::from_utf8_lossy(&put.stdout), "OK\n");
    for client in &clients {
        let get = etcdctl_tls(&pki, client, true, &["get", "secret"]);
        assert_eq!(String::from_utf8_lossy(&get.stdout), "secret\ns3cr3t\n");
    }
    // Members publish their client URLs through Raft shortly after they start.
    let list = loop {
        let out = etcdctl_tls(&pki, &all, true, &["member", "list"]);
        let list = String::from_utf8_lossy(&out.stdout).into_owned();
        if clients.iter().all(|c| list.contains(c.as_str())) || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(list.lines().count(), 3, "{list}");
    for (peer, client) in peers.iter().zip(&clients) {
        assert!(list.contains(&format!("{peer}, {client}, false")), "{list}");
    }
    let status = etcdctl_tls(&pki, &all, true, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status.as_array().map(Vec::len), Some(3));

    // No client certificate: the TLS handshake is refused.
    let refused = etcdctl_tls(&pki, &clients[0], false, &["get", "secret"]);
    assert!(
        !refused.status.success(),
        "a client without a certificate was served"
    );
    // Plain text against a TLS port: refused too.
    let plain = common::etcdctl(
        &clients[0].replace("https://", "http://"),
        &["get", "secret", "--dial-timeout=3s"],
    );
    assert!(!plain.status.success(), "a plain-text client was served");
    assert!(plain.stdout.is_empty());
}
