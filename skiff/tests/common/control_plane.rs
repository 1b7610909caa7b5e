//! A control plane for the process tests of controllers: a `skiff store`, `skiff apiserver`
//! on it, an admin kubeconfig and a kube-rs client, and as a test asks simulated nodes
//! (`skiff node-sim`), `skiff scheduler` and `skiff controller-manager`, each process killed
//! (by its PID) when dropped; kubectl against it, and polling until a condition holds.
//! Include with `#[path = "common/control_plane.rs"] mod control_plane;` next to `mod common;`,
//! `#[path = "common/apiserver.rs"] mod apiserver;` and `#[path = "common/node_sim.rs"] mod
//! node_sim;`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::apiserver::{ApiHome, ApiServer, Backend};
use crate::common::skiff_bin;
use crate::node_sim::NodeSim;

/// A kube-rs client from the kubeconfig at `path`.
pub async fn kube_client(path: &Path) -> Client {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(path).expect("read kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    Client::try_from(config).expect("kube client")
}

/// A `skiff` child process, killed (by its PID) on drop, with its log file.
pub struct Proc {
    child: Child,
    log_path: PathBuf,
}

impl Proc {
    /// `skiff <command> --kubeconfig <kubeconfig> <args>` with `SKIFF_LOG=<filter>`, its
    /// stderr in `<dir>/<log_name>.log`.
    pub fn start(
        dir: &Path,
        log_name: &str,
        command: &str,
        kubeconfig: &Path,
        filter: &str,
        args: &[&str],
    ) -> Proc {
        let log_path = dir.join(format!("{log_name}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(skiff_bin())
            .arg(command)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("SKIFF_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn skiff {command}: {e}"));
        Proc { child, log_path }
    }

    /// `skiff controller-manager --secure-port 0 <extra>`, logging at `info` to
    /// `<dir>/<log_name>.log`.
    pub fn manager(dir: &Path, kubeconfig: &Path, log_name: &str, extra: &[&str]) -> Proc {
        Proc::manager_logging(dir, kubeconfig, log_name, "info", extra)
    }

    /// Like [`Proc::manager`] with `SKIFF_LOG=<filter>`.
    pub fn manager_logging(
        dir: &Path,
        kubeconfig: &Path,
        log_name: &str,
        filter: &str,
        extra: &[&str],
    ) -> Proc {
        let args = [&["--secure-port", "0"], extra].concat();
        Proc::start(
            dir,
            log_name,
            "controller-manager",
            kubeconfig,
            filter,
            &args,
        )
    }

    /// `skiff scheduler --secure-port 0 --leader-elect=false`, logging to `<dir>/scheduler.log`.
    pub fn scheduler(dir: &Path, kubeconfig: &Path) -> Proc {
        Proc::start(
            dir,
            "scheduler",
            "scheduler",
            kubeconfig,
            "info",
            &["--secure-port", "0", "--leader-elect=false"],
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A control plane for one test: a one-member store, an API server, its admin kubeconfig
/// (`<home>/kubeconfig`) and a client; simulated nodes, a scheduler and a controller manager
/// once started.
pub struct Cluster {
    pub store: Backend,
    pub home: ApiHome,
    pub api: ApiServer,
    pub kubeconfig: PathBuf,
    pub client: Client,
    pub scheduler: Option<Proc>,
    pub nodes: Option<NodeSim>,
    /// A manager started with [`Cluster::start_manager`]; its log goes with failures.
    pub manager: Option<Proc>,
}

impl Cluster {
    /// Store, API server, `nodes` simulated nodes and a scheduler.
    pub async fn start(nodes: usize) -> Cluster {
        let mut cluster = Cluster::api_only(&[]).await;
        cluster.start_nodes(nodes, &[]);
        cluster.start_scheduler();
        cluster
    }

    /// Store and API server (with `apiserver_flags`), kubeconfig and client; nothing else.
    pub async fn api_only(apiserver_flags: &[&str]) -> Cluster {
        Cluster::api_only_on(Backend::skiff(), apiserver_flags).await
    }

    /// Like [`Cluster::api_only`] on a given store (e.g. three members).
    pub async fn api_only_on(store: Backend, apiserver_flags: &[&str]) -> Cluster {
        let home = ApiHome::new();
        let api = home.start(&store.endpoints(), apiserver_flags);
        let kubeconfig = home.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let client = kube_client(&kubeconfig).await;
        Cluster {
            store,
            home,
            api,
            kubeconfig,
            client,
            scheduler: None,
            nodes: None,
            manager: None,
        }
    }

    /// One more API server on the same store, and its admin kubeconfig
    /// (`<home>/kubeconfig-<port>`).
    pub fn another_api_server(&self) -> (ApiServer, PathBuf) {
        let api = self.home.start(&self.store.endpoints(), &[]);
        let kubeconfig = self.home.path().join(format!("kubeconfig-{}", api.port));
        api.write_kubeconfig(&kubeconfig);
        (api, kubeconfig)
    }

    /// `skiff node-sim --nodes <nodes> <extra>`.
    pub fn start_nodes(&mut self, nodes: usize, extra: &[&OsStr]) {
        let nodes_arg = nodes.to_string();
        let args = [&[OsStr::new("--nodes"), OsStr::new(&nodes_arg)], extra].concat();
        self.nodes = Some(NodeSim::start(self.home.path(), &self.kubeconfig, &args));
    }

    /// `skiff scheduler` without leader election.
    pub fn start_scheduler(&mut self) {
        self.scheduler = Some(Proc::scheduler(self.home.path(), &self.kubeconfig));
    }

    /// The cluster's own `skiff controller-manager` (`<extra>` flags), logging to
    /// `controller-manager.log`; its log is shown when a kubectl or a wait fails.
    pub fn start_manager(&mut self, extra: &[&str]) {
        let manager = Proc::manager(
            self.home.path(),
            &self.kubeconfig,
            "controller-manager",
            extra,
        );
        self.manager = Some(manager);
    }

    /// A `skiff controller-manager` (`<extra>` flags) for the test to keep, logging to
    /// `controller-manager-<name>.log`.
    pub fn manager(&self, name: &str, extra: &[&str]) -> Proc {
        Proc::manager(
            self.home.path(),
            &self.kubeconfig,
            &format!("controller-manager-{name}"),
            extra,
        )
    }

    /// The simulated nodes.
    pub fn node_sim(&self) -> &NodeSim {
        self.nodes.as_ref().expect("node-sim started")
    }

    /// The log of the manager of [`Cluster::start_manager`], if one runs.
    pub fn diagnostics(&self) -> String {
        self.manager
            .as_ref()
            .map(|m| format!("controller-manager log:\n{}", m.log()))
            .unwrap_or_default()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.api.kubectl(&self.kubeconfig, args)
    }

    /// kubectl that must succeed (else the test fails with [`Cluster::diagnostics`]); its
    /// stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_ok_with(args, || self.diagnostics())
    }

    /// kubectl that must succeed (else the test fails with `diagnostics`); its stdout.
    pub fn kubectl_ok_with(&self, args: &[&str], diagnostics: impl Fn() -> String) -> String {
        kubectl_ok(&self.api, &self.kubeconfig, args, diagnostics)
    }

    /// [`wait_for`], failing with [`Cluster::diagnostics`].
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        poll_until(what, timeout, POLL, || self.diagnostics(), check).await
    }
}

/// kubectl against `api` with `kubeconfig` that must succeed (else the test fails with
/// `diagnostics`); its stdout.
pub fn kubectl_ok(
    api: &ApiServer,
    kubeconfig: &Path,
    args: &[&str],
    diagnostics: impl Fn() -> String,
) -> String {
    let out = api.kubectl(kubeconfig, args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        diagnostics()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How often [`wait_for`] checks.
pub const POLL: Duration = Duration::from_millis(200);

/// Checks every [`POLL`] until `check` gives a value; fails past `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    poll_until(what, timeout, POLL, String::new, check).await
}

/// Checks every `every` until `check` gives a value; past `timeout` fails with
/// `diagnostics`.
pub async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    diagnostics: impl Fn() -> String,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            diagnostics()
        );
        tokio::time::sleep(every).await;
    }
}
