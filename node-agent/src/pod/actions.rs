//! The pod worker's actions, the IO half of a sync: set the sandbox up (pod files, volumes,
//! netns + CNI), make images present (`imagePullPolicy`, back-off), start a container attempt
//! (env, overlay rootfs, config.json, the shim), stop one (preStop, TERM, grace, KILL), tear
//! the sandbox down, and confirm a deletion.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use kube::Api;
use kube::api::{DeleteParams, Preconditions};
use skiff_client::events::EventType;

use super::backoff::Backoff;
use super::env::{EnvObjects, environment, expand, references};
use super::env_files;
use super::plan::{Action, PullPolicy};
use super::state::{Attempt, ImageState, Sandbox, Terminated};
use super::worker::{PodEnv, PodWorker, image_id, pod_key};
use crate::image::{PullAuth, mount_rootfs, unmount_rootfs};
use crate::network::PortMapping;
use crate::spec::{self, ContainerSpecInput};
use crate::volumes::{BindMount, PodVolumes, VolumeObjects};

/// How long a failed sandbox waits before the next try.
const SANDBOX_RETRY: Duration = Duration::from_secs(5);
/// A postStart/preStop exec hook's time limit when the grace period does not bound it.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

impl PodWorker {
    /// Carries out one action; true when the pod's deletion is confirmed (the worker ends).
    pub(super) async fn act(&mut self, pod: &Pod, action: Action) -> bool {
        match action {
            Action::SetupSandbox => self.setup_sandbox(pod).await,
            Action::EnsureImage { image, policy } => self.ensure_image(pod, &image, policy).await,
            Action::Start { container } => self.start(pod, &container).await,
            Action::Stop {
                container,
                grace,
                reason,
            } => self.stop(pod, &container, grace, &reason).await,
            Action::TeardownSandbox => self.teardown(pod).await,
            Action::ConfirmDeletion => return self.confirm_deletion(pod).await,
        }
        false
    }

    async fn setup_sandbox(&mut self, pod: &Pod) {
        let env = self.env.clone();
        let pod_dir = env.pods_dir.join(&self.uid);
        // Volumes first: kubelet starts nothing before they are mounted.
        let volumes = PodVolumes::new(&env.pods_dir, &self.uid);
        let objects = match fetch_volume_objects(&env.client, pod).await {
            Ok(o) => o,
            Err(message) => {
                self.volume_failed(pod, message);
                return;
            }
        };
        if let Err(e) = volumes.sync(pod, &objects) {
            self.volume_failed(pod, e.to_string());
            return;
        }
        self.last_volume_sync = Some(std::time::Instant::now());
        self.state.volume_error = None;
        if matches!(self.state.sandbox, Sandbox::Ready { .. }) {
            return;
        }
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let ip = if host_network {
            None
        } else {
            let mappings = port_mappings(pod);
            match env.network.setup(&self.uid, &mappings).await {
                Ok(net) => Some(net.ip),
                Err(e) => {
                    let message = format!("Failed to create pod sandbox: {e}");
                    env.event(
                        pod,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        message.clone(),
                        None,
                    );
                    let retry = jiff::SignedDuration::try_from(SANDBOX_RETRY).unwrap_or_default();
                    let retry_at = Timestamp::now()
                        .saturating_add(retry)
                        .unwrap_or_else(|_| Timestamp::now());
                    self.state.sandbox = Sandbox::Failed { message, retry_at };
                    return;
                }
            }
        };
        let hostname = spec::hostname(pod);
        let files = [
            ("etc-hosts", env_files::hosts(pod, ip, &hostname)),
            ("etc-hostname", format!("{hostname}\n")),
            (
                "resolv.conf",
                env_files::resolv_conf(
                    pod,
                    &env.cluster_dns,
                    &env.cluster_domain,
                    &env.host_resolv_conf,
                ),
            ),
        ];
        for (name, content) in files {
            if let Err(e) = std::fs::create_dir_all(&pod_dir)
                .and_then(|_| std::fs::write(pod_dir.join(name), content))
            {
                tracing::warn!(pod = %pod_key(pod), error = %e, "writing {name}");
            }
        }
        tracing::info!(pod = %pod_key(pod), ip = ?ip, "sandbox ready");
        self.state.sandbox = Sandbox::Ready { ip };
    }

    /// Rewrites the pod's ConfigMap, Secret and downward API volumes from the current objects.
    pub(super) async fn refresh_volumes(&mut self, pod: &Pod) {
        self.last_volume_sync = Some(std::time::Instant::now());
        let volumes = PodVolumes::new(&self.env.pods_dir, &self.uid);
        let synced = match fetch_volume_objects(&self.env.client, pod).await {
            Ok(objects) => volumes.sync(pod, &objects).map_err(|e| e.to_string()),
            Err(message) => Err(message),
        };
        // Running containers keep what they have when a refresh fails (as kubelet's do).
        if let Err(message) = synced {
            tracing::warn!(pod = %pod_key(pod), %message, "refreshing volumes");
        }
    }

    fn volume_failed(&mut self, pod: &Pod, message: String) {
        if self.state.volume_error.as_deref() != Some(message.as_str()) {
            let text = format!("MountVolume.SetUp failed: {message}");
            self.env
                .event(pod, EventType::Warning, "FailedMount", text, None);
        }
        self.state.volume_error = Some(message);
    }

    async fn ensure_image(&mut self, pod: &Pod, image: &str, policy: PullPolicy) {
        let env = self.env.clone();
        let present = env.images.lookup(image).ok().flatten();
        let previous_backoff = match self.state.images.get(image) {
            Some(ImageState::Failed { backoff, .. }) => *backoff,
            _ => Backoff::default(),
        };
        let fail = |this: &mut PodWorker, reason: &str, message: String, mut backoff: Backoff| {
            let delay = backoff.next(Duration::ZERO, env.backoff_initial, env.backoff_max);
            let delay = jiff::SignedDuration::try_from(delay).unwrap_or_default();
            let retry_at = Timestamp::now()
                .saturating_add(delay)
                .unwrap_or_else(|_| Timestamp::now());
            this.state.images.insert(
                image.to_string(),
                ImageState::Failed {
                    reason: reason.into(),
                    message,
                    retry_at,
                    backoff,
                },
            );
        };
        match (present, policy) {
            (Some(record), PullPolicy::IfNotPresent | PullPolicy::Never) => {
                self.state.images.insert(
                    image.to_string(),
                    ImageState::Present {
                        image_id: image_id(&record),
                    },
                );
            }
            (None, PullPolicy::Never) => {
                let message =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                env.event(
                    pod,
                    EventType::Warning,
                    "ErrImageNeverPull",
                    message.clone(),
                    None,
                );
                fail(self, "ErrImageNeverPull", message, previous_backoff);
            }
            (_, _) => {
                env.event(
                    pod,
                    EventType::Normal,
                    "Pulling",
                    format!("Pulling image \"{image}\""),
                    None,
                );
                let auth = pull_auth(&env.client, pod, image).await;
                let started = std::time::Instant::now();
                match env.images.pull(image, auth.as_ref()).await {
                    Ok(record) => {
                        let message = format!(
                            "Successfully pulled image \"{image}\" in {:.3}s. Image size: {} bytes.",
                            started.elapsed().as_secs_f64(),
                            record.size
                        );
                        env.event(pod, EventType::Normal, "Pulled", message, None);
                        self.state.images.insert(
                            image.to_string(),
                            ImageState::Present {
                                image_id: image_id(&record),
                            },
                        );
                    }
                    Err(e) => {
                        let message = format!("Failed to pull image \"{image}\": {e}");
                        tracing::info!(pod = %pod_key(pod), %message);
                        env.event(pod, EventType::Warning, "Failed", message.clone(), None);
                        fail(self, "ErrImagePull", message, previous_backoff);
                    }
                }
            }
        }
    }

    async fn start(&mut self, pod: &Pod, name: &str) {
        let env = self.env.clone();
        let Some(container) = super::plan::all_containers(pod)
            .find(|c| c.name == name)
            .cloned()
        else {
            return;
        };
        let image_ref = container.image.clone().unwrap_or_default();
        let Ok(Some(image)) = env.images.lookup(&image_ref) else {
            self.state.images.remove(&image_ref);
            return;
        };
        let ip = match self.state.sandbox {
            Sandbox::Ready { ip } => ip,
            _ => return,
        };
        let pod_ip = ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| env.node_ip.to_string());
        // Environment (a missing ConfigMap/Secret is CreateContainerConfigError).
        let objects = fetch_env_objects(&env.client, pod, &container).await;
        let vars = match environment(
            pod,
            &container,
            Some(&pod_ip),
            &env.node_ip.to_string(),
            &objects,
        ) {
            Ok(v) => v,
            Err(message) => {
                self.start_failed(pod, name, "CreateContainerConfigError", message);
                return;
            }
        };
        let mut expanded = container.clone();
        expanded.command = container
            .command
            .as_ref()
            .map(|c| c.iter().map(|a| expand(a, &vars)).collect());
        expanded.args = container
            .args
            .as_ref()
            .map(|c| c.iter().map(|a| expand(a, &vars)).collect());

        let state = self.state.containers.entry(name.to_string()).or_default();
        let number = state.attempts;
        let id = PodEnv::container_id(&self.uid, name, number);
        let bundle = env.containers_dir.join(&id);
        let rootfs = bundle.join("rootfs");
        // A leftover of the same id (a crash between start and checkpoint) goes first.
        let _ = env.runtime.remove(&id).await;
        let _ = unmount_rootfs(&rootfs);
        let _ = std::fs::remove_dir_all(&bundle);

        let volumes = PodVolumes::new(&env.pods_dir, &self.uid);
        let prepared = async {
            let lowers = env.images.layer_dirs(&image);
            mount_rootfs(
                &lowers,
                &bundle.join("upper"),
                &bundle.join("work"),
                &rootfs,
            )
            .map_err(|e| {
                (
                    "CreateContainerError".to_string(),
                    format!("mounting the rootfs: {e}"),
                )
            })?;
            let volume_paths = volumes
                .sync(
                    pod,
                    &fetch_volume_objects(&env.client, pod)
                        .await
                        .map_err(|m| ("CreateContainerConfigError".to_string(), m))?,
                )
                .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
            let mut mounts = volumes
                .container_mounts(&container, &volume_paths)
                .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
            let pod_dir = env.pods_dir.join(&self.uid);
            let host_network = pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            for (file, target) in [
                ("etc-hosts", "/etc/hosts"),
                ("etc-hostname", "/etc/hostname"),
                ("resolv.conf", "/etc/resolv.conf"),
            ] {
                if host_network && target == "/etc/hostname" {
                    continue;
                }
                if mounts.iter().any(|m| m.destination == target) {
                    continue;
                }
                mounts.push(BindMount {
                    source: pod_dir.join(file),
                    destination: target.into(),
                    read_only: false,
                });
            }
            let qos = super::qos::qos_class(pod);
            let netns = env.network_netns(&self.uid, host_network);
            let input = ContainerSpecInput {
                pod,
                container: &expanded,
                env: vars.clone(),
                image: &image.config,
                rootfs: &rootfs,
                cgroups_path: format!("{}/{}", env.cgroups.pod_parent(qos, &self.uid), id),
                netns: netns.as_deref(),
                mounts,
                restart_count: number.saturating_sub(0),
            };
            let spec = spec::build(&input)
                .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
            spec.save(bundle.join("config.json"))
                .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
            Ok::<(), (String, String)>(())
        }
        .await;
        if let Err((reason, message)) = prepared {
            let _ = unmount_rootfs(&rootfs);
            let _ = std::fs::remove_dir_all(&bundle);
            self.start_failed(pod, name, &reason, message);
            return;
        }
        let log_path = env.log_path(pod, name, number);
        let started_at = Timestamp::now();
        let result = env.runtime.start(&id, &bundle, &log_path).await;
        let state = self.state.containers.entry(name.to_string()).or_default();
        // The previous attempt's container goes; its log file stays (logs --previous).
        let previous = state.current.take();
        state.attempts = number + 1;
        state.start_error = None;
        state.restart_after = None;
        state.stopping = false;
        if let Some(prev) = previous {
            if let Some(t) = prev.terminated.clone() {
                state.last_terminated = Some(t);
            }
            let runtime = env.runtime.clone();
            let prev_bundle = env.containers_dir.join(&prev.id);
            let _ = runtime.remove(&prev.id).await;
            let _ = unmount_rootfs(&prev_bundle.join("rootfs"));
            let _ = std::fs::remove_dir_all(&prev_bundle);
        }
        match result {
            Ok(pid) => {
                env.metrics
                    .started_containers
                    .add(&[container_type(pod, name)], 1.0);
                state.current = Some(Attempt {
                    id: id.clone(),
                    number,
                    started_at,
                    terminated: None,
                });
                tracing::info!(pod = %pod_key(pod), container = %name, %id, pid, "container started");
                let field = Some(format!("spec.containers{{{name}}}"));
                env.event(
                    pod,
                    EventType::Normal,
                    "Created",
                    format!("Created container {name}"),
                    field.clone(),
                );
                env.event(
                    pod,
                    EventType::Normal,
                    "Started",
                    format!("Started container {name}"),
                    field,
                );
                self.reset_probes(name, container.startup_probe.is_some());
                self.post_start(pod, &container, &id).await;
            }
            Err(e) => {
                env.metrics
                    .started_container_errors
                    .add(&["StartError", container_type(pod, name)], 1.0);
                // containerd's shape: the attempt ends at once with StartError, exit 128.
                let message = e.to_string();
                tracing::info!(pod = %pod_key(pod), container = %name, %message, "container failed to start");
                let now = Timestamp::now();
                let terminated = Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(message.clone()),
                    started_at: now,
                    finished_at: now,
                    container_id: format!("runc://{id}"),
                };
                let policy = super::plan::restart_policy(pod).to_string();
                if super::plan::restarts(&policy, 128) {
                    let delay =
                        state
                            .backoff
                            .next(Duration::ZERO, env.backoff_initial, env.backoff_max);
                    let delay = jiff::SignedDuration::try_from(delay).unwrap_or_default();
                    state.restart_after = Some(now.saturating_add(delay).unwrap_or(now));
                }
                state.current = Some(Attempt {
                    id: id.clone(),
                    number,
                    started_at: now,
                    terminated: Some(terminated),
                });
                env.event(
                    pod,
                    EventType::Warning,
                    "Failed",
                    format!("Error: {message}"),
                    Some(format!("spec.containers{{{name}}}")),
                );
                let _ = env.runtime.remove(&id).await;
                let _ = unmount_rootfs(&rootfs);
                let _ = std::fs::remove_dir_all(&bundle);
            }
        }
    }

    fn start_failed(&mut self, pod: &Pod, name: &str, reason: &str, message: String) {
        let env = self.env.clone();
        let state = self.state.containers.entry(name.to_string()).or_default();
        if state.start_error.as_ref().map(|(_, m)| m) != Some(&message) {
            env.event(
                pod,
                EventType::Warning,
                "Failed",
                format!("Error: {message}"),
                Some(format!("spec.containers{{{name}}}")),
            );
        }
        let delay = state
            .backoff
            .next(Duration::ZERO, env.backoff_initial, env.backoff_max);
        let delay = jiff::SignedDuration::try_from(delay).unwrap_or_default();
        let now = Timestamp::now();
        state.restart_after = Some(now.saturating_add(delay).unwrap_or(now));
        state.start_error = Some((reason.to_string(), message));
    }

    async fn post_start(&mut self, pod: &Pod, container: &Container, id: &str) {
        let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        else {
            return;
        };
        let Some(exec) = hook.exec.as_ref() else {
            return;
        };
        let argv = exec.command.clone().unwrap_or_default();
        let result = self.env.runtime.exec(id, &argv, HOOK_TIMEOUT).await;
        let failed = match result {
            Ok(out) if out.exit_code == 0 => None,
            Ok(out) => Some(format!(
                "command '{}' exited with {}: {}",
                argv.join(" "),
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim_end()
            )),
            Err(e) => Some(e.to_string()),
        };
        if let Some(message) = failed {
            self.env.event(
                pod,
                EventType::Warning,
                "FailedPostStartHook",
                message.clone(),
                Some(format!("spec.containers{{{}}}", container.name)),
            );
            if let Some(c) = self.state.containers.get_mut(&container.name) {
                c.probes.kill_reason = Some(format!("PostStartHook failed: {message}"));
            }
        }
    }

    /// Stops the running attempt of `name`: preStop hook, TERM, grace, KILL.
    pub(super) async fn stop(&mut self, pod: &Pod, name: &str, grace: Duration, reason: &str) {
        let env = self.env.clone();
        let Some(attempt) = self
            .state
            .containers
            .get(name)
            .and_then(|c| c.current.clone())
        else {
            return;
        };
        if attempt.terminated.is_some() {
            return;
        }
        if let Some(c) = self.state.containers.get_mut(name) {
            c.stopping = true;
        }
        env.event(
            pod,
            EventType::Normal,
            "Killing",
            format!("Stopping container {name}"),
            Some(format!("spec.containers{{{name}}}")),
        );
        tracing::info!(pod = %pod_key(pod), container = %name, ?grace, %reason, "stopping container");
        let deadline = std::time::Instant::now() + grace;
        let container = super::plan::all_containers(pod)
            .find(|c| c.name == name)
            .cloned();
        if let Some(exec) = container
            .as_ref()
            .and_then(|c| c.lifecycle.as_ref())
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.exec.as_ref())
        {
            let argv = exec.command.clone().unwrap_or_default();
            let _ = env
                .runtime
                .exec(&attempt.id, &argv, grace.min(HOOK_TIMEOUT))
                .await;
        }
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        match env.runtime.stop(&attempt.id, remaining).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(pod = %pod_key(pod), container = %name, error = %e, "stopping container")
            }
        }
        // The exit file tells how it ended (observe picks it up); without one it is unknown.
        if env.exit_record(&attempt.id).is_none()
            && let Some(c) = self.state.containers.get_mut(name)
            && let Some(a) = c.current.as_mut()
        {
            let now = Timestamp::now();
            a.terminated = Some(Terminated {
                exit_code: 137,
                signal: None,
                reason: "ContainerStatusUnknown".into(),
                message: Some(
                    "The container could not be located when the pod was terminated".into(),
                ),
                started_at: a.started_at,
                finished_at: now,
                container_id: format!("runc://{}", a.id),
            });
            c.stopping = false;
        }
        self.observe(pod, Timestamp::now());
    }

    /// Removes the pod's containers, rootfs mounts, network, cgroups and volumes.
    pub(super) async fn teardown(&mut self, pod: &Pod) {
        let env = self.env.clone();
        for c in self.state.containers.values() {
            let Some(attempt) = &c.current else { continue };
            if attempt.terminated.is_none() {
                let _ = env.runtime.stop(&attempt.id, Duration::ZERO).await;
            }
            let _ = env.runtime.remove(&attempt.id).await;
            let bundle = env.containers_dir.join(&attempt.id);
            let _ = unmount_rootfs(&bundle.join("rootfs"));
            let _ = std::fs::remove_dir_all(&bundle);
        }
        if let Err(e) = env.network.teardown(&self.uid).await {
            tracing::warn!(pod = %pod_key(pod), error = %e, "tearing the pod network down");
        }
        if let Err(e) = PodVolumes::new(&env.pods_dir, &self.uid).teardown() {
            tracing::warn!(pod = %pod_key(pod), error = %e, "tearing the volumes down");
        }
        if let Err(e) = env
            .cgroups
            .remove_pod(super::qos::qos_class(pod), &self.uid)
        {
            tracing::warn!(pod = %pod_key(pod), error = %e, "removing the pod cgroups");
        }
        tracing::info!(pod = %pod_key(pod), "sandbox torn down");
        self.state.sandbox = Sandbox::TornDown;
    }

    async fn confirm_deletion(&mut self, pod: &Pod) -> bool {
        let api: Api<Pod> = Api::namespaced(
            self.env.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %pod_key(pod), error = %e, "confirming the deletion");
                return false;
            }
        }
        let _ = std::fs::remove_dir_all(self.env.pods_dir.join(&self.uid));
        tracing::info!(pod = %pod_key(pod), "pod deleted");
        true
    }
}

impl PodEnv {
    /// The netns path of a pod (None for hostNetwork).
    pub fn network_netns(&self, uid: &str, host_network: bool) -> Option<std::path::PathBuf> {
        if host_network {
            return None;
        }
        self.network
            .checkpoints()
            .into_iter()
            .find(|n| n.sandbox_id == uid)
            .map(|n| n.netns_path)
    }
}

/// `container` or `init_container`, as kubelet labels its metrics.
fn container_type(pod: &Pod, name: &str) -> &'static str {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|i| i.iter().any(|c| c.name == name));
    if init { "init_container" } else { "container" }
}

/// hostPort mappings of the pod's containers.
fn port_mappings(pod: &Pod) -> Vec<PortMapping> {
    super::plan::all_containers(pod)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?;
            Some(PortMapping {
                host_port,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                host_ip: p.host_ip.clone().filter(|h| !h.is_empty()),
            })
        })
        .collect()
}

/// ConfigMaps, Secrets and bound PVs the pod's volumes read.
async fn fetch_volume_objects(client: &kube::Client, pod: &Pod) -> Result<VolumeObjects, String> {
    let refs = PodVolumes::references(pod);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut objects = VolumeObjects::default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for name in refs.config_maps {
        match cms.get_opt(&name).await {
            Ok(Some(cm)) => {
                objects.config_maps.insert(name, cm);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in refs.secrets {
        match secrets.get_opt(&name).await {
            Ok(Some(s)) => {
                objects.secrets.insert(name, s);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for name in refs.claims {
        let Ok(Some(claim)) = claims.get_opt(&name).await else {
            continue;
        };
        let Some(volume) = claim
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        if let Ok(Some(pv)) = pvs.get_opt(&volume).await {
            objects.claims.insert(name, pv);
        }
    }
    Ok(objects)
}

/// ConfigMaps and Secrets the container's env uses (missing ones as None).
async fn fetch_env_objects(client: &kube::Client, pod: &Pod, container: &Container) -> EnvObjects {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (config_maps, secrets) = references(container);
    let mut objects = EnvObjects::default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for name in config_maps {
        let cm = cms.get_opt(&name).await.ok().flatten();
        objects.config_maps.insert(name, cm);
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in secrets {
        let s = api.get_opt(&name).await.ok().flatten();
        objects.secrets.insert(name, s);
    }
    objects
}

/// Credentials for `image` from the pod's `imagePullSecrets` (`kubernetes.io/dockerconfigjson`).
async fn pull_auth(client: &kube::Client, pod: &Pod, image: &str) -> Option<PullAuth> {
    let names: Vec<String> = pod
        .spec
        .as_ref()?
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    if names.is_empty() {
        return None;
    }
    let host = registry_host(image);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in names {
        let Ok(Some(secret)) = api.get_opt(&name).await else {
            continue;
        };
        let data = secret.data.unwrap_or_default();
        let Some(config) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&config.0) else {
            continue;
        };
        let auths = json.get("auths").unwrap_or(&json);
        let entries: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(auths.clone()).unwrap_or_default();
        for (server, entry) in entries {
            let server_host = server
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let matches =
                server_host == host || (host == "docker.io" && server_host.ends_with("docker.io"));
            if !matches {
                continue;
            }
            if let (Some(u), Some(p)) = (
                entry.get("username").and_then(|v| v.as_str()),
                entry.get("password").and_then(|v| v.as_str()),
            ) {
                return Some(PullAuth {
                    username: u.into(),
                    password: p.into(),
                });
            }
            if let Some(auth) = entry.get("auth").and_then(|v| v.as_str()) {
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                let (u, p) = text.split_once(':')?;
                return Some(PullAuth {
                    username: u.into(),
                    password: p.into(),
                });
            }
        }
    }
    None
}

/// The registry host of an image reference (`docker.io` for Docker Hub names).
pub fn registry_host(image: &str) -> String {
    let first = image.split('/').next().unwrap_or_default();
    if image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        first.to_string()
    } else {
        "docker.io".to_string()
    }
}
