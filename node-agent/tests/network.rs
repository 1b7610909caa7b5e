//! Real pod-network tests: named netns + the Debian CNI plugins (`/usr/lib/cni`), as root.
//! Every test uses its own bridge (`sk<pid>b?`), pod CIDR (`10.200.x.0/24`), netns prefix and
//! state dir, and deletes its bridge and netns at the end. Skipped (with a message) when not
//! root or without the plugins / iproute2 / iptables.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_node_agent::network::{NetworkConfig, NetworkError, PodNetwork, PortMapping};

const CNI_BIN: &str = "/usr/lib/cni";

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let plugins = ["bridge", "host-local", "portmap", "firewall", "loopback"]
        .iter()
        .all(|p| Path::new(CNI_BIN).join(p).is_file());
    let tools = Command::new("ip").arg("-V").output().is_ok()
        && Command::new("iptables-save").arg("-V").output().is_ok();
    if !(root && plugins && tools) {
        eprintln!(
            "skipping: needs root ({root}), CNI plugins in {CNI_BIN} ({plugins}), ip + iptables ({tools})"
        );
    }
    root && plugins && tools
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    match Command::new(cmd).args(args).output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text)
        }
        Err(e) => (false, e.to_string()),
    }
}

/// `ping -c1 -W2 <ip>`, optionally inside a netns; busybox's ping when there is no ping.
fn ping(netns: Option<&str>, ip: Ipv4Addr) -> (bool, String) {
    let ip = ip.to_string();
    let has_ping = Command::new("ping").arg("-V").output().is_ok();
    let mut argv: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["netns", "exec", ns]);
    }
    if has_ping {
        argv.push("ping");
    } else {
        argv.extend(["busybox", "ping"]);
    }
    argv.extend(["-c1", "-W2", &ip]);
    if netns.is_some() {
        run("ip", &argv)
    } else {
        run(argv[0], &argv[1..])
    }
}

fn iptables_save() -> String {
    let (_, nat) = run("iptables-save", &["-t", "nat"]);
    let (_, filter) = run("iptables-save", &["-t", "filter"]);
    nat + &filter
}

fn netns_list() -> String {
    run("ip", &["netns", "list"]).1
}

/// Tears down checkpointed sandboxes (CNI DEL: IPs, iptables chains), then deletes the test's
/// bridge and every netns with its prefix, even on panic.
struct Cleanup {
    bridge: String,
    prefix: String,
    config: NetworkConfig,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Own thread + runtime: drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(net) = PodNetwork::new(config) else {
                return;
            };
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                for ck in net.checkpoints() {
                    if let Err(e) = net.teardown(&ck.sandbox_id).await {
                        eprintln!("cleanup: teardown {}: {e}", ck.sandbox_id);
                    }
                }
            });
        })
        .join();
        for line in netns_list().lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if !name.is_empty() && name.starts_with(&self.prefix) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// Field order matters: the cleanup runs before the state dir goes.
struct Env {
    _cleanup: Cleanup,
    config: NetworkConfig,
    id_prefix: String,
    _dir: tempfile::TempDir,
}

/// `slot` separates the tests of one process (bridge suffix, CIDR).
fn env(slot: u32, cni_bin_dir: PathBuf) -> Env {
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("sk{}b{slot}", pid % 10000);
    let prefix = format!("skt{pid}-{slot}-");
    let third = (pid % 64) * 4 + slot;
    let config = NetworkConfig {
        pod_cidr: format!("10.200.{third}.0/24"),
        bridge: bridge.clone(),
        cni_bin_dir,
        state_dir: dir.path().join("state"),
        netns_prefix: prefix.clone(),
    };
    Env {
        _cleanup: Cleanup {
            bridge,
            prefix,
            config: config.clone(),
        },
        config,
        id_prefix: format!("sb{pid}x{slot}"),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_network_end_to_end() {
    if !usable() {
        return;
    }
    let env = env(0, CNI_BIN.into());
    let net = PodNetwork::new(env.config.clone()).unwrap();
    let conflist: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.config.state_dir.join("cni.conflist")).unwrap())
            .unwrap();
    assert_eq!(conflist["name"], "skiff");
    assert_eq!(conflist["plugins"][0]["bridge"], env.config.bridge.as_str());
    let gw = net.gateway();
    assert_eq!(gw.to_string(), env.config.pod_cidr.replace(".0/24", ".1"));

    let id_a = format!("{}a", env.id_prefix);
    let id_b = format!("{}b", env.id_prefix);
    let host_port = 20000 + (std::process::id() % 20000) as u16;
    let ports = vec![PortMapping {
        host_port,
        container_port: 8080,
        protocol: "tcp".into(),
        host_ip: None,
    }];

    let a = net.setup(&id_a, &ports).await.unwrap();
    let b = net.setup(&id_b, &[]).await.unwrap();
    let ns_a = format!("{}{id_a}", env.config.netns_prefix);
    let ns_b = format!("{}{id_b}", env.config.netns_prefix);
    assert_eq!(a.netns_path, PathBuf::from("/run/netns").join(&ns_a));
    assert_eq!(a.port_mappings, ports);
    assert_ne!(a.ip, b.ip);
    for ip in [a.ip, b.ip] {
        assert!(
            net.pod_cidr().contains(ip),
            "{ip} outside {}",
            env.config.pod_cidr
        );
        assert_ne!(ip, gw);
    }

    // The pod's eth0 holds the IP; lo is up.
    let (ok, addrs) = run("ip", &["-n", &ns_a, "addr", "show", "eth0"]);
    assert!(ok && addrs.contains(&format!("{}/24", a.ip)), "{addrs}");
    let (_, lo) = run("ip", &["-n", &ns_a, "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");

    // Pod to pod, host to pod.
    let (ok, out) = ping(Some(&ns_a), b.ip);
    assert!(ok, "A -> B: {out}");
    let (ok, out) = ping(None, a.ip);
    assert!(ok, "host -> A: {out}");

    // hostPort: portmap's per-pod DNAT chain mentions the port and the sandbox.
    let rules = iptables_save();
    let comment = format!("id: \\\"{id_a}\\\"");
    let dn: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A CNI-DN-") && l.contains(&format!("--dport {host_port}")))
        .collect();
    assert!(
        !dn.is_empty(),
        "no CNI-DN rule for port {host_port}:\n{rules}"
    );
    assert!(
        dn.iter().any(|l| l.contains(&format!("{}:8080", a.ip))),
        "{dn:?}"
    );
    assert!(rules.contains(&comment), "no rule with {comment}:\n{rules}");

    // The checkpoint has the CNI result; setup is idempotent.
    let ck: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.config
                .state_dir
                .join("sandboxes")
                .join(format!("{id_a}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(ck["cniResult"]["ips"].is_array(), "{ck}");
    let again = net.setup(&id_a, &ports).await.unwrap();
    assert_eq!(again, a);
    let ids: Vec<String> = net
        .checkpoints()
        .into_iter()
        .map(|c| c.sandbox_id)
        .collect();
    assert_eq!(ids, vec![id_a.clone(), id_b.clone()]);
    // A second PodNetwork over the same state (agent restart) sees the same sandboxes.
    let restarted = PodNetwork::new(env.config.clone()).unwrap();
    assert_eq!(restarted.checkpoints(), vec![a.clone(), b.clone()]);

    // Teardown: netns, IP file and per-pod chains gone; twice is fine.
    let ipam = env.config.state_dir.join("ipam/skiff");
    assert!(ipam.join(a.ip.to_string()).exists());
    net.teardown(&id_a).await.unwrap();
    assert!(!netns_list().contains(&ns_a));
    assert!(!ipam.join(a.ip.to_string()).exists());
    let rules = iptables_save();
    assert!(!rules.contains(&comment), "chains of {id_a} left:\n{rules}");
    assert!(!rules.contains(&format!("--dport {host_port}")), "{rules}");
    net.teardown(&id_a).await.unwrap();
    assert!(net.checkpoints().iter().all(|c| c.sandbox_id != id_a));

    // Netns gone behind our back, checkpoint left: teardown still DELs (frees the IP).
    run("ip", &["netns", "del", &ns_b]);
    net.teardown(&id_b).await.unwrap();
    assert!(!ipam.join(b.ip.to_string()).exists());
    let rules = iptables_save();
    assert!(
        !rules.contains(&format!("id: \\\"{id_b}\\\"")),
        "masq chain of {id_b} left:\n{rules}"
    );
    assert!(net.checkpoints().is_empty());

    // A stale checkpoint (netns gone) is redone by setup, with a working network.
    let id_c = format!("{}c", env.id_prefix);
    let ns_c = format!("{}{id_c}", env.config.netns_prefix);
    let c = net.setup(&id_c, &[]).await.unwrap();
    run("ip", &["netns", "del", &ns_c]);
    let c2 = net.setup(&id_c, &[]).await.unwrap();
    assert!(netns_list().contains(&ns_c));
    let (ok, out) = ping(None, c2.ip);
    assert!(ok, "host -> C: {out}");
    if c2.ip != c.ip {
        assert!(!ipam.join(c.ip.to_string()).exists(), "old IP of C leaked");
    }
    net.teardown(&id_c).await.unwrap();

    // Bad input is an error, not a panic.
    assert!(net.setup("../etc", &[]).await.is_err());
    assert!(net.teardown("a b").await.is_err());
    let bad_port = [PortMapping {
        host_port: 0,
        container_port: 1,
        protocol: "tcp".into(),
        host_ip: None,
    }];
    assert!(matches!(
        net.setup(&format!("{}d", env.id_prefix), &bad_port).await,
        Err(NetworkError::Config(_))
    ));

    assert!(
        !netns_list().contains(&env.config.netns_prefix),
        "{}",
        netns_list()
    );
    let left: Vec<_> = std::fs::read_dir(&ipam)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(left.is_empty(), "IPs left allocated: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_failed_add_are_clear_errors() {
    if !usable() {
        return;
    }
    // Missing plugin: the error names it.
    let empty = tempfile::tempdir().unwrap();
    let env1 = env(1, empty.path().to_path_buf());
    let err = PodNetwork::new(env1.config.clone()).unwrap_err();
    assert!(
        err.to_string().contains("\"bridge\"") && err.to_string().contains("not found"),
        "{err}"
    );

    // Bad CIDRs.
    for cidr in ["10.200.0.1/24", "nonsense", "10.200.0.0/32"] {
        let mut cfg = env1.config.clone();
        cfg.cni_bin_dir = CNI_BIN.into();
        cfg.pod_cidr = cidr.into();
        let err = PodNetwork::new(cfg).unwrap_err();
        assert!(matches!(err, NetworkError::Config(_)), "{cidr}: {err}");
    }

    // An IPAM plugin failing during ADD: the plugin's msg comes back, and setup undoes itself.
    let bin = tempfile::tempdir().unwrap();
    for p in ["bridge", "portmap", "firewall", "loopback"] {
        std::os::unix::fs::symlink(Path::new(CNI_BIN).join(p), bin.path().join(p)).unwrap();
    }
    let fake = bin.path().join("host-local");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\n\
         echo '{\"cniVersion\":\"0.4.0\",\"code\":11,\"msg\":\"no IP addresses available\",\"details\":\"fake ipam\"}'\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env2 = env(2, bin.path().to_path_buf());
    let net = PodNetwork::new(env2.config.clone())
        .unwrap()
        .with_plugin_timeout(Duration::from_secs(30));
    let id = format!("{}f", env2.id_prefix);
    let err = net.setup(&id, &[]).await.unwrap_err();
    match &err {
        NetworkError::Plugin {
            plugin,
            command,
            message,
        } => {
            assert_eq!(plugin, "bridge");
            assert_eq!(command, "ADD");
            assert!(message.contains("no IP addresses available"), "{message}");
        }
        other => panic!("expected a plugin error, got {other:?}"),
    }
    assert!(
        !netns_list().contains(&env2.config.netns_prefix),
        "netns left after a failed ADD"
    );
    assert!(net.checkpoints().is_empty());
    net.teardown(&id).await.unwrap();
    let rules = iptables_save();
    assert!(!rules.contains(&format!("id: \\\"{id}\\\"")), "{rules}");
}

/// Many sandboxes set up and torn down at once (a node starting and deleting a burst of pods)
/// leave no per-pod iptables rule or chain behind: the CNI plugins' iptables writes must not
/// trip over each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sandboxes_comes_and_goes_without_leftovers() {
    if !usable() {
        return;
    }
    let env = env(3, PathBuf::from("/usr/lib/cni"));
    let net = std::sync::Arc::new(PodNetwork::new(env.config.clone()).unwrap());
    let ids: Vec<String> = (0..16)
        .map(|i| format!("{}burst{i}", env.id_prefix))
        .collect();
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (net, id) = (net.clone(), id.clone());
        // Half of them with a hostPort (portmap's chains too).
        let mappings = if i % 2 == 0 {
            vec![PortMapping {
                host_port: 19300
                    + u16::try_from(i).unwrap()
                    + u16::try_from(std::process::id() % 50).unwrap() * 20,
                container_port: 8080,
                protocol: "tcp".into(),
                host_ip: None,
            }]
        } else {
            vec![]
        };
        tasks.push(tokio::spawn(async move { net.setup(&id, &mappings).await }));
    }
    for task in tasks {
        task.await.unwrap().expect("setup");
    }
    let mut tasks = Vec::new();
    for id in &ids {
        let (net, id) = (net.clone(), id.clone());
        tasks.push(tokio::spawn(async move { net.teardown(&id).await }));
    }
    for task in tasks {
        task.await.unwrap().expect("teardown");
    }
    let saved = iptables_save();
    let left: Vec<&str> = saved
        .lines()
        .filter(|l| {
            ids.iter().any(|id| l.contains(id.as_str()))
                || l.contains(&env.config.pod_cidr[..env.config.pod_cidr.len() - 4])
        })
        .collect();
    assert!(left.is_empty(), "rules left behind:\n{}", left.join("\n"));
    assert!(net.checkpoints().is_empty());
}
