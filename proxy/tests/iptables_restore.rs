//! The batch the proxy renders is accepted by the machine's real `iptables-restore` (its
//! `--test` mode parses and checks every rule against the kernel's matches and targets
//! without committing anything). Runs as root; CI is root.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};

use skiff_proxy::iptables::{Masquerade, render};
use skiff_proxy::model::{Endpoint, ServicePort};

fn port(name: &str, ip: &str, endpoints: usize, affinity: Option<i32>) -> ServicePort {
    ServicePort {
        name: format!("default/{name}:http"),
        cluster_ip: ip.into(),
        port: 80,
        protocol: "tcp".into(),
        node_port: Some(30080),
        affinity_seconds: affinity,
        external_local: affinity.is_some(),
        internal_local: false,
        endpoints: (0..endpoints)
            .map(|i| Endpoint {
                ip: format!("10.42.0.{}", i + 2),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                local: i == 0,
            })
            .collect(),
    }
}

#[test]
fn the_real_iptables_restore_accepts_the_batch() {
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let ports = [
        port("web", "10.43.0.10", 3, None),
        port("sticky", "10.43.0.11", 2, Some(600)),
        port("empty", "10.43.0.12", 0, None),
    ];
    let masquerade = Masquerade {
        all: false,
        cluster_cidr: Some("10.42.0.0/16".into()),
    };
    let previous: BTreeSet<String> = ["KUBE-SVC-STALESTALESTALE1".to_string()].into();
    let batch = render(&ports, &masquerade, &previous);
    let mut child = Command::new("iptables-restore")
        .args(["--test", "--noflush", "-w"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iptables-restore refused the batch: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        batch.text
    );
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
