//! The pod sandbox's network: one named netns per sandbox (`/run/netns/<prefix><id>`), wired
//! to a Linux bridge by a CNI chain (bridge + host-local IPAM, then portmap for hostPorts), with
//! a checkpoint per sandbox so DEL can run later (after an agent restart) with the ADD result.
//!
//! Submodules: [`cni`] (conflist, plugin execution), [`netns`] (`ip netns`), [`checkpoint`],
//! [`routes`] (routes to the other nodes' pod subnets), [`policy`] (NetworkPolicy rules).

pub mod checkpoint;
pub mod cni;
pub mod netns;
pub mod policy;
pub mod routes;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use checkpoint::Checkpoint;
use cni::{Invocation, Ipv4Cidr};

/// Default bound on one CNI plugin run (the plugin is killed after it).
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The pod-side interface name.
pub const POD_IFNAME: &str = "eth0";

/// Settings of the node's pod network.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The node's pod subnet, e.g. `10.42.0.0/24` (host-local IPAM range; gateway is .1).
    pub pod_cidr: String,
    /// Linux bridge the pods attach to (`cni0`).
    pub bridge: String,
    /// Directory of the CNI plugin binaries (`/usr/lib/cni`).
    pub cni_bin_dir: PathBuf,
    /// Agent-private state: conflist, host-local IPAM data, per-sandbox checkpoints.
    pub state_dir: PathBuf,
    /// Prefix of the named network namespaces (`/run/netns/<prefix><pod-uid>`).
    pub netns_prefix: String,
}

/// A hostPort mapping (CNI portmap's runtimeConfig).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// A sandbox's network as set up (and checkpointed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNetwork {
    pub sandbox_id: String,
    /// `/run/netns/<name>`.
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    pub port_mappings: Vec<PortMapping>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A CNI plugin failed: its `msg` (and `details`).
    #[error("plugin type=\"{plugin}\" failed ({command}): {message}")]
    Plugin {
        plugin: String,
        command: String,
        message: String,
    },
    #[error("{0}")]
    Netns(String),
    /// Bad configuration or input (pod CIDR, missing plugin binary, sandbox id, port mapping).
    #[error("{0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The node's pod network: named netns per pod + a CNI bridge/host-local/portmap chain.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    config: NetworkConfig,
    cidr: Ipv4Cidr,
    conflist: Value,
    plugin_timeout: Duration,
    /// Per-sandbox locks: setup and teardown of one sandbox never interleave.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl PodNetwork {
    /// Checks the plugins exist and writes the conflist into the state dir.
    pub fn new(config: NetworkConfig) -> Result<PodNetwork, NetworkError> {
        let cidr = Ipv4Cidr::parse(&config.pod_cidr).map_err(NetworkError::Config)?;
        let bridge = &config.bridge;
        if bridge.is_empty()
            || bridge.len() > 15
            || !bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(NetworkError::Config(format!(
                "bridge name {bridge:?} is not a valid interface name (1-15 chars of [A-Za-z0-9_.-])"
            )));
        }
        if !config.netns_prefix.is_empty() && !netns::valid_name(&config.netns_prefix) {
            return Err(NetworkError::Config(format!(
                "netns prefix {:?} is not usable in a netns name",
                config.netns_prefix
            )));
        }
        for plugin in cni::REQUIRED_PLUGINS {
            let path = config.cni_bin_dir.join(plugin);
            if !path.is_file() {
                return Err(NetworkError::Config(format!(
                    "CNI plugin {plugin:?} not found in {} (install containernetworking-plugins)",
                    config.cni_bin_dir.display()
                )));
            }
        }
        let conflist = cni::conflist(&config, &cidr);
        std::fs::create_dir_all(config.state_dir.join("ipam"))?;
        std::fs::create_dir_all(checkpoint::dir(&config.state_dir))?;
        let path = Self::conflist_path_of(&config);
        let tmp = config.state_dir.join(".cni.conflist.tmp");
        let bytes = serde_json::to_vec_pretty(&conflist).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(PodNetwork {
            config,
            cidr,
            conflist,
            plugin_timeout: DEFAULT_PLUGIN_TIMEOUT,
            locks: Arc::default(),
        })
    }

    /// Overrides the bound on one plugin run (default [`DEFAULT_PLUGIN_TIMEOUT`]).
    pub fn with_plugin_timeout(mut self, timeout: Duration) -> PodNetwork {
        self.plugin_timeout = timeout;
        self
    }

    /// The settings this network was built from.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// `<state_dir>/cni.conflist`.
    pub fn conflist_path(&self) -> PathBuf {
        Self::conflist_path_of(&self.config)
    }

    fn conflist_path_of(config: &NetworkConfig) -> PathBuf {
        config.state_dir.join("cni.conflist")
    }

    /// host-local's directory of allocated IPs (one file per IP): `<state_dir>/ipam/skiff`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.config.state_dir.join("ipam").join(cni::NETWORK_NAME)
    }

    /// The netns name of a sandbox: `<netns_prefix><sandbox_id>`.
    pub fn netns_name(&self, sandbox_id: &str) -> String {
        format!("{}{sandbox_id}", self.config.netns_prefix)
    }

    /// The netns path of a sandbox: `/run/netns/<netns_prefix><sandbox_id>`.
    pub fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        netns::path(&self.netns_name(sandbox_id))
    }

    fn check_id(&self, sandbox_id: &str) -> Result<String, NetworkError> {
        let name = self.netns_name(sandbox_id);
        if !netns::valid_name(sandbox_id) || !netns::valid_name(&name) {
            return Err(NetworkError::Config(format!(
                "invalid sandbox id {sandbox_id:?} (1-200 chars of [A-Za-z0-9_.-], not starting with . or -)"
            )));
        }
        Ok(name)
    }

    fn check_ports(port_mappings: &[PortMapping]) -> Result<(), NetworkError> {
        for pm in port_mappings {
            let proto_ok = ["tcp", "udp", "sctp"]
                .iter()
                .any(|p| pm.protocol.eq_ignore_ascii_case(p));
            let ip_ok = pm
                .host_ip
                .as_deref()
                .is_none_or(|ip| ip.is_empty() || ip.parse::<std::net::IpAddr>().is_ok());
            if pm.host_port == 0 || pm.container_port == 0 || !proto_ok || !ip_ok {
                return Err(NetworkError::Config(format!("invalid port mapping {pm:?}")));
            }
        }
        Ok(())
    }

    fn lock(&self, sandbox_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(sandbox_id.to_string()).or_default().clone()
    }

    fn unlock(&self, sandbox_id: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Ours plus the map's: nobody else waits on it.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(sandbox_id);
        }
    }

    fn invocation<'a>(
        &'a self,
        sandbox_id: &'a str,
        netns: &'a std::path::Path,
        ports: &'a [PortMapping],
    ) -> Invocation<'a> {
        Invocation {
            bin_dir: &self.config.cni_bin_dir,
            container_id: sandbox_id,
            netns,
            ifname: POD_IFNAME,
            port_mappings: ports,
            timeout: self.plugin_timeout,
        }
    }

    /// Creates the netns, brings `lo` up, runs CNI ADD, checkpoints; idempotent for a
    /// checkpointed sandbox (returns the checkpoint).
    pub async fn setup(
        &self,
        sandbox_id: &str,
        port_mappings: &[PortMapping],
    ) -> Result<SandboxNetwork, NetworkError> {
        let name = self.check_id(sandbox_id)?;
        Self::check_ports(port_mappings)?;
        let lock = self.lock(sandbox_id);
        let result = {
            let _guard = lock.lock().await;
            self.setup_locked(sandbox_id, &name, port_mappings).await
        };
        self.unlock(sandbox_id, lock);
        result
    }

    async fn setup_locked(
        &self,
        sandbox_id: &str,
        name: &str,
        port_mappings: &[PortMapping],
    ) -> Result<SandboxNetwork, NetworkError> {
        let state_dir = &self.config.state_dir;
        let existing = checkpoint::read(state_dir, sandbox_id).await.unwrap_or_else(|e| {
            tracing::warn!(sandbox = sandbox_id, error = %e, "unreadable network checkpoint; recreating the sandbox network");
            None
        });
        match existing {
            Some(ck) if netns::exists(name) => {
                if ck.network.port_mappings != port_mappings {
                    tracing::warn!(
                        sandbox = sandbox_id,
                        "sandbox network exists with other port mappings; keeping them"
                    );
                }
                return Ok(ck.network);
            }
            _ => {
                // A stale checkpoint (netns gone), a netns without checkpoint (setup interrupted)
                // or a corrupt checkpoint: DEL whatever is left, then start afresh.
                if checkpoint::path(state_dir, sandbox_id).exists() || netns::exists(name) {
                    tracing::info!(
                        sandbox = sandbox_id,
                        "cleaning up a partial sandbox network before setup"
                    );
                    self.teardown_locked(sandbox_id, name, Some(port_mappings))
                        .await?;
                }
            }
        }

        let netns_path = netns::add(name).await.inspect_err(|_| {
            // `ip netns add` may leave the file behind on failure.
            let name = name.to_string();
            tokio::spawn(async move {
                let _ = netns::del(&name).await;
            });
        })?;
        let inv = self.invocation(sandbox_id, &netns_path, port_mappings);
        let result = match cni::add_list(&self.conflist, &inv).await {
            Ok(result) => result,
            Err((partial, err)) => {
                self.undo(sandbox_id, name, &inv, partial.as_ref()).await;
                return Err(err);
            }
        };
        let Some(ip) = cni::result_ipv4(&result) else {
            self.undo(sandbox_id, name, &inv, Some(&result)).await;
            return Err(NetworkError::Plugin {
                plugin: "bridge".into(),
                command: "ADD".into(),
                message: format!("the CNI result has no IPv4 address: {result}"),
            });
        };
        let network = SandboxNetwork {
            sandbox_id: sandbox_id.to_string(),
            netns_path: netns_path.clone(),
            ip,
            port_mappings: port_mappings.to_vec(),
        };
        let ck = Checkpoint {
            network: network.clone(),
            cni_result: result,
        };
        if let Err(e) = checkpoint::write(state_dir, &ck).await {
            self.undo(sandbox_id, name, &inv, Some(&ck.cni_result))
                .await;
            return Err(e.into());
        }
        tracing::info!(sandbox = sandbox_id, %ip, netns = %netns_path.display(), "sandbox network up");
        Ok(network)
    }

    /// Best-effort undo of a failed setup: DEL, then the netns.
    async fn undo(&self, sandbox_id: &str, name: &str, inv: &Invocation<'_>, prev: Option<&Value>) {
        if let Err(e) = cni::del_list(&self.conflist, inv, prev).await {
            tracing::warn!(sandbox = sandbox_id, error = %e, "CNI DEL after a failed setup");
        }
        if let Err(e) = netns::del(name).await {
            tracing::warn!(sandbox = sandbox_id, error = %e, "netns delete after a failed setup");
        }
    }

    /// CNI DEL (with the checkpoint), then the netns and the checkpoint; absent is fine.
    pub async fn teardown(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        let name = self.check_id(sandbox_id)?;
        let lock = self.lock(sandbox_id);
        let result = {
            let _guard = lock.lock().await;
            self.teardown_locked(sandbox_id, &name, None).await
        };
        self.unlock(sandbox_id, lock);
        result
    }

    /// `ports`: the mappings to DEL with when there is no (readable) checkpoint.
    async fn teardown_locked(
        &self,
        sandbox_id: &str,
        name: &str,
        ports: Option<&[PortMapping]>,
    ) -> Result<(), NetworkError> {
        let state_dir = &self.config.state_dir;
        let ck_file = checkpoint::path(state_dir, sandbox_id);
        let ck = match checkpoint::read(state_dir, sandbox_id).await {
            Ok(ck) => ck,
            Err(e) => {
                tracing::warn!(sandbox = sandbox_id, error = %e, "unreadable network checkpoint; DEL without prevResult");
                None
            }
        };
        let ns_exists = netns::exists(name);
        if ck.is_none() && !ns_exists && !ck_file.exists() {
            return Ok(());
        }
        let netns_path = ck
            .as_ref()
            .map(|c| c.network.netns_path.clone())
            .unwrap_or_else(|| netns::path(name));
        let ports: Vec<PortMapping> = match &ck {
            Some(c) => c.network.port_mappings.clone(),
            None => ports.map(<[_]>::to_vec).unwrap_or_default(),
        };
        let prev = ck.as_ref().map(|c| &c.cni_result).filter(|v| v.is_object());
        let inv = self.invocation(sandbox_id, &netns_path, &ports);
        if !ns_exists {
            // bridge can't clean its ipMasq chain once the netns is gone (it learns the IPs
            // inside); do it for it. Not with the netns: bridge's own teardown then fails on
            // the missing chain (nft iptables' "does not exist" is not its "not exist" error).
            cni::remove_masq_rules(sandbox_id, self.plugin_timeout).await;
        }
        // DEL before the netns goes; on failure keep both so a retry can DEL again.
        cni::del_list(&self.conflist, &inv, prev).await?;
        netns::del(name).await?;
        checkpoint::remove(state_dir, sandbox_id).await?;
        tracing::info!(sandbox = sandbox_id, "sandbox network torn down");
        Ok(())
    }

    /// Checkpointed sandboxes (for re-adoption after an agent restart).
    pub fn checkpoints(&self) -> Vec<SandboxNetwork> {
        checkpoint::read_all(&self.config.state_dir)
            .into_iter()
            .map(|c| c.network)
            .collect()
    }

    /// The bridge's address, the pods' gateway (`.1` of the pod CIDR).
    pub fn gateway(&self) -> Ipv4Addr {
        self.cidr.gateway()
    }

    /// The parsed pod CIDR.
    pub fn pod_cidr(&self) -> Ipv4Cidr {
        self.cidr
    }
}
