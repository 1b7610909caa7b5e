//! Fixtures for the node agent's process tests: a local `docker-registry` on 127.0.0.1 with a
//! busybox image built from the host's static busybox (scripts/busybox-image.sh, umoci, skopeo:
//! no internet), and a real `skiff node-agent` with its own root dir, bridge, pod CIDR and
//! cgroup root, cleaned up on drop (containers by runc with the agent's own `--root`, mounts
//! under its root dir, its netns, its bridge, its cgroups) — nothing another run started.
//! Include with `#[path = "common/node_agent.rs"] mod node_agent;` after `control_plane`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, skiff_bin};

/// A `docker-registry` serving on 127.0.0.1, killed by PID on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    /// The OCI layout the image was built in (for import tests).
    pub layout: PathBuf,
}

impl Registry {
    /// Starts the registry and pushes `library/busybox:<tag>` for each tag.
    pub fn start(tags: &[&str]) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = Command::new("curl")
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:{port}/v2/"),
                ])
                .status()
                .is_ok_and(|s| s.success());
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "the registry did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let layout = dir.path().join("layout");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/busybox-image.sh");
        for tag in tags {
            let out = Command::new(&script)
                .arg(&layout)
                .arg(tag)
                .output()
                .expect("busybox-image.sh");
            assert!(
                out.status.success(),
                "busybox-image.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = Command::new("skopeo")
                .args(["copy", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://127.0.0.1:{port}/library/busybox:{tag}"))
                .output()
                .expect("skopeo");
            assert!(
                out.status.success(),
                "skopeo copy: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Registry {
            child,
            port,
            _dir: dir,
            layout,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `skiff-shim` binary next to `skiff` (built by `cargo build -p skiff-node-agent` if the
/// workspace's tests have not built it yet).
pub fn shim_bin() -> PathBuf {
    let shim = skiff_bin().with_file_name("skiff-shim");
    if !shim.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "skiff-node-agent", "--bin", "skiff-shim"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build skiff-shim");
        assert!(status.success(), "building skiff-shim");
    }
    shim
}

/// A real node agent for one test.
pub struct Agent {
    child: Option<Child>,
    pub name: String,
    pub root: PathBuf,
    pub logs: PathBuf,
    pub bridge: String,
    pub pod_cidr: String,
    /// The bridge's address, also the node's InternalIP.
    pub node_ip: String,
    pub cgroup_root: String,
    kubeconfig: PathBuf,
    extra: Vec<String>,
    /// The network namespace the agent runs in (a node of a multi-node test), if any.
    netns: Option<String>,
    log_path: PathBuf,
    starts: u32,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `skiff node-agent` as node `name`; `subnet` (1–250) picks the pod CIDR
    /// `10.<subnet>.77.0/24` and the bridge `skt<pid%1000><subnet>`.
    pub fn start(kubeconfig: &Path, name: &str, subnet: u8, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = std::process::id() % 1000;
        let mut agent = Agent {
            child: None,
            name: name.to_string(),
            root: dir.path().join("root"),
            logs: dir.path().join("pods-logs"),
            bridge: format!("skt{id}b{subnet}"),
            pod_cidr: format!("10.{subnet}.77.0/24"),
            node_ip: format!("10.{subnet}.77.1"),
            cgroup_root: format!("/skiff-test-{}-{subnet}", std::process::id()),
            kubeconfig: kubeconfig.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns: None,
            log_path: dir.path().join("agent.log"),
            starts: 0,
            _dir: dir,
        };
        agent.spawn();
        agent
    }

    /// Starts `skiff node-agent` as node `name` inside the network namespace `netns` (its own
    /// links, routes and iptables), with InternalIP `node_ip` and pod CIDR `pod_cidr`; the
    /// bridge is named after `subnet`.
    pub fn start_in(
        netns: &str,
        kubeconfig: &Path,
        name: &str,
        subnet: u8,
        node_ip: &str,
        pod_cidr: &str,
        extra: &[&str],
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = std::process::id() % 1000;
        let mut agent = Agent {
            child: None,
            name: name.to_string(),
            root: dir.path().join("root"),
            logs: dir.path().join("pods-logs"),
            bridge: format!("skt{id}b{subnet}"),
            pod_cidr: pod_cidr.to_string(),
            node_ip: node_ip.to_string(),
            cgroup_root: format!("/skiff-test-{}-{subnet}", std::process::id()),
            kubeconfig: kubeconfig.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns: Some(netns.to_string()),
            log_path: dir.path().join("agent.log"),
            starts: 0,
            _dir: dir,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("agent log");
        let mut command = match &self.netns {
            // nsenter, not `ip netns exec`: that one also remounts /sys in a mount namespace
            // of its own, which hides the cgroup mounts runc needs.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(skiff_bin());
                c
            }
            None => Command::new(skiff_bin()),
        };
        let child = command
            .arg("node-agent")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--hostname-override", &self.name])
            .args(["--node-ip", &self.node_ip])
            .arg("--root-dir")
            .arg(&self.root)
            .arg("--pod-logs-dir")
            .arg(&self.logs)
            .args(["--pod-cidr", &self.pod_cidr])
            .args(["--cni-bridge", &self.bridge])
            .args(["--cgroup-root", &self.cgroup_root])
            .arg("--shim")
            .arg(shim_bin())
            .args(&self.extra)
            .env("SKIFF_LOG", "info,skiff_node_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn skiff node-agent");
        self.child = Some(child);
    }

    /// kill -9 of the agent only (its shims and containers live on).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same root dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The agent's HTTPS port (`--port` among the extra flags, else kubelet's 10250).
    pub fn port(&self) -> u16 {
        self.extra
            .iter()
            .position(|a| a == "--port")
            .and_then(|i| self.extra.get(i + 1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(10250)
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// runc with the agent's own state root.
    pub fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new("runc")
            .arg("--root")
            .arg(self.root.join("run/runtime/runc"))
            .args(args)
            .output()
            .expect("runc")
    }

    /// `runc state`'s pid of a container, if it runs.
    pub fn container_pid(&self, id: &str) -> Option<u64> {
        let out = self.runc(&["state", id]);
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (state["status"] == "running")
            .then(|| state["pid"].as_u64())
            .flatten()
    }

    /// The CRI log lines of a container attempt (`<ns>_<pod>_<uid>/<container>/<n>.log`), the
    /// message parts only.
    pub fn container_log(
        &self,
        namespace: &str,
        pod: &str,
        uid: &str,
        container: &str,
        attempt: u32,
    ) -> String {
        let path = self
            .logs
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(container)
            .join(format!("{attempt}.log"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // Containers of this agent's runc root only.
        let listed = self.runc(&["list", "-q"]);
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = self.runc(&["delete", "--force", id]);
        }
        // Shims and containers exit with their container; mounts under our root dir go.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.root.to_string_lossy().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        // Pod network namespaces by pod uid (a sandbox may be killed before its checkpoint).
        if let Ok(entries) = std::fs::read_dir(self.root.join("pods")) {
            for entry in entries.flatten() {
                let uid = entry.file_name().to_string_lossy().to_string();
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("skiff-{uid}")])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // Sandboxes this agent checkpointed: CNI state is its own; netns by name.
        if let Ok(entries) = std::fs::read_dir(self.root.join("run/cni/sandboxes")) {
            for entry in entries.flatten() {
                let name = entry
                    .path()
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("skiff-{name}")])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // CNI's per-pod iptables rules (masquerade, hostPort DNAT, firewall) of our subnet,
        // left if the agent could not run CNI DEL, and the per-pod chains they jump to.
        let subnet = self.pod_cidr.trim_end_matches("0/24").to_string();
        remove_iptables_rules(&subnet);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        // Cgroup dirs under our cgroup root, deepest first, in every hierarchy.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let base = h.path().join(self.cgroup_root.trim_start_matches('/'));
                remove_cgroup_tree(&base);
            }
        }
    }
}

/// Deletes the nat and filter rules mentioning `needle` (e.g. `10.91.77.`) and flushes and
/// deletes the `CNI-…` chains they jump to.
fn remove_iptables_rules(needle: &str) {
    for table in ["nat", "filter"] {
        let Ok(saved) = Command::new("iptables-save")
            .args(["-t", table])
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        let mut chains = Vec::new();
        for rule in String::from_utf8_lossy(&saved.stdout).lines() {
            let Some(spec) = rule.strip_prefix("-A ") else {
                continue;
            };
            if !rule.contains(needle) {
                continue;
            }
            if let Some(target) = spec.split_whitespace().skip_while(|w| *w != "-j").nth(1)
                && target.starts_with("CNI-")
                && !target.starts_with("CNI-HOSTPORT")
            {
                chains.push(target.to_string());
            }
            // iptables-save quotes like a shell: let one parse it.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("iptables -t {table} -D {spec}"))
                .stderr(Stdio::null())
                .status();
        }
        for chain in chains {
            let _ = Command::new("iptables")
                .args(["-t", table, "-F", &chain])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("iptables")
                .args(["-t", table, "-X", &chain])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A DNS stub for the upstream side of cluster DNS tests: answers every query with an A
/// record 192.0.2.44 (`python3 <script> <port>`, on 127.0.0.1 of wherever it runs).
pub const STUB_RESOLVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    q, a = s.recvfrom(512)
    end = 12
    while q[end] != 0:
        end += q[end] + 1
    question = q[12:end + 5]
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 44])
    s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer, a)
"#;

/// A child process killed (by its PID) when the test ends.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
