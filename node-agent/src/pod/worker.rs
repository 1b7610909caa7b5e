//! One task per pod (kubelet's pod worker): woken by a new version of the pod and every
//! second, it observes (exit files, probes), plans (`plan::plan`), acts (`actions`), and
//! patches `pods/status` when the status changed. It starts by re-adopting what an earlier
//! agent left (runc containers, exit files, the sandbox checkpoint) instead of restarting.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use skiff_client::events::{EventRecorder, EventType, NewEvent};
use tokio::sync::watch;

use super::plan;
use super::probes::{self, ProbeKind, ProbeTiming, ProbeTracker};
use super::state::{Attempt, Checkpoint, ContainerState, PodState, Sandbox, Terminated};
use super::status::pod_status;
use crate::cgroups::Cgroups;
use crate::image::ImageStore;
use crate::network::PodNetwork;
use crate::runtime::{ContainerState as RuntimeState, ExitRecord, RuncRuntime};

/// How often a pod worker wakes up with no news (kubelet's PLEG relist is 1 s).
pub const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// ConfigMap, Secret and downward API volumes are refreshed this often (kubelet's sync
/// period is a minute; its ConfigMap cache TTL adds to it).
pub const VOLUME_RESYNC: Duration = Duration::from_secs(10);
/// The status is written again at least this often even when unchanged.
pub const STATUS_RESYNC: Duration = Duration::from_secs(60);

/// What every pod worker shares.
pub struct PodEnv {
    pub client: kube::Client,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub runtime: RuncRuntime,
    /// The runtime's state dir (exit files are `<dir>/exits/<id>.json`).
    pub runtime_dir: PathBuf,
    pub images: ImageStore,
    pub network: PodNetwork,
    pub cgroups: Cgroups,
    /// `<root-dir>/pods`: per pod volumes, etc files, checkpoint.
    pub pods_dir: PathBuf,
    /// `<root-dir>/containers`: per container bundle (config.json, rootfs, upper, work).
    pub containers_dir: PathBuf,
    /// `/var/log/pods`.
    pub logs_dir: PathBuf,
    pub cluster_dns: Vec<Ipv4Addr>,
    pub cluster_domain: String,
    /// The node's resolv.conf, for pods not on cluster DNS.
    pub host_resolv_conf: String,
    /// CrashLoopBackOff's first delay and cap (kubelet's 10 s and 300 s).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub events: EventRecorder,
    pub metrics: super::metrics::AgentMetrics,
}

impl PodEnv {
    /// Records an event about `pod`.
    pub fn event(
        &self,
        pod: &Pod,
        type_: EventType,
        reason: &str,
        message: String,
        field: Option<String>,
    ) {
        self.events.record(NewEvent {
            object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                field_path: field,
            },
            type_,
            reason: reason.to_string(),
            message,
            action: String::new(),
        });
    }

    /// runc's id for attempt `n` of a container.
    pub fn container_id(uid: &str, container: &str, n: u32) -> String {
        format!("{uid}_{container}_{n}")
    }

    /// The log file of attempt `n` (`/var/log/pods/<ns>_<name>_<uid>/<container>/<n>.log`).
    pub fn log_path(&self, pod: &Pod, container: &str, n: u32) -> PathBuf {
        self.pod_logs_dir(pod)
            .join(container)
            .join(format!("{n}.log"))
    }

    /// `/var/log/pods/<ns>_<name>_<uid>`.
    pub fn pod_logs_dir(&self, pod: &Pod) -> PathBuf {
        let meta = &pod.metadata;
        self.logs_dir.join(format!(
            "{}_{}_{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
            meta.uid.as_deref().unwrap_or_default()
        ))
    }

    fn checkpoint_path(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid).join("checkpoint.json")
    }

    /// The exit record the shim wrote for `id`, if it has.
    pub fn exit_record(&self, id: &str) -> Option<ExitRecord> {
        let path = self.runtime_dir.join("exits").join(format!("{id}.json"));
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// A pod worker.
pub struct PodWorker {
    pub(super) env: Arc<PodEnv>,
    pub(super) uid: String,
    pub(super) state: PodState,
    pub(super) probes: BTreeMap<(String, ProbeKind), ProbeTracker>,
    last_status: Option<(serde_json::Value, Timestamp)>,
    last_checkpoint: Option<Checkpoint>,
    pub(super) last_volume_sync: Option<std::time::Instant>,
    /// What this worker counts in the running gauges: (sandbox ready, running containers).
    counted: (bool, u32),
    first_seen: std::time::Instant,
    start_recorded: bool,
}

impl PodWorker {
    /// Runs the worker until the pod is gone and cleaned up. `pod` carries the latest
    /// version; `None` means the pod left this node (deleted for good, or rebound).
    pub async fn run(env: Arc<PodEnv>, uid: String, pod: watch::Receiver<Option<Pod>>) {
        let metrics = env.metrics.clone();
        let mut worker = PodWorker::new(env, uid);
        worker.run_until_done(pod).await;
        // Whatever it counted as running stops counting.
        let (sandbox, containers) = worker.counted;
        if sandbox {
            metrics.running_pods.add(&[], -1.0);
        }
        metrics
            .running_containers
            .add(&["running"], -f64::from(containers));
    }

    fn new(env: Arc<PodEnv>, uid: String) -> PodWorker {
        PodWorker {
            env,
            uid,
            state: PodState::default(),
            probes: BTreeMap::new(),
            last_status: None,
            last_checkpoint: None,
            last_volume_sync: None,
            counted: (false, 0),
            first_seen: std::time::Instant::now(),
            start_recorded: false,
        }
    }

    async fn run_until_done(&mut self, mut pod: watch::Receiver<Option<Pod>>) {
        let worker = self;
        let first = pod.borrow().clone();
        if let Some(first) = &first {
            worker.adopt(first).await;
        }
        let mut last_seen = first;
        loop {
            let current = pod.borrow_and_update().clone();
            if current.is_some() {
                last_seen.clone_from(&current);
            }
            match current {
                Some(p) => {
                    if worker.sync(&p).await {
                        return;
                    }
                }
                None => {
                    // Gone from the API: stop everything, clean up, end.
                    if let Some(p) = &last_seen {
                        worker.shutdown(p).await;
                    }
                    return;
                }
            }
            tokio::select! {
                changed = pod.changed() => {
                    if changed.is_err() {
                        if let Some(p) = &last_seen {
                            worker.shutdown(p).await;
                        }
                        return;
                    }
                }
                _ = tokio::time::sleep(SYNC_PERIOD) => {}
            }
        }
    }

    /// One sync; true when the pod is deleted and confirmed.
    async fn sync(&mut self, pod: &Pod) -> bool {
        let now = Timestamp::now();
        if self.state.start_time.is_none() {
            self.state.start_time = Some(now);
        }
        self.observe(pod, now);
        self.run_probes(pod).await;
        let volumes_due = self
            .last_volume_sync
            .is_none_or(|t| t.elapsed() >= VOLUME_RESYNC);
        if volumes_due
            && matches!(self.state.sandbox, Sandbox::Ready { .. })
            && !plan::deleting(pod)
        {
            self.refresh_volumes(pod).await;
        }
        let actions = plan::plan(pod, &self.state, Timestamp::now());
        for action in actions {
            let done = self.act(pod, action).await;
            if done {
                return true;
            }
        }
        self.write_checkpoint();
        self.write_status(pod).await;
        self.count_running(pod);
        false
    }

    /// Keeps the running gauges and the start-duration histogram in step with this pod.
    fn count_running(&mut self, pod: &Pod) {
        let sandbox = matches!(self.state.sandbox, Sandbox::Ready { .. });
        let containers = self
            .state
            .containers
            .values()
            .filter(|c| c.is_running())
            .count() as u32;
        let metrics = &self.env.metrics;
        if sandbox != self.counted.0 {
            metrics
                .running_pods
                .add(&[], if sandbox { 1.0 } else { -1.0 });
        }
        if containers != self.counted.1 {
            metrics.running_containers.add(
                &["running"],
                f64::from(containers) - f64::from(self.counted.1),
            );
        }
        self.counted = (sandbox, containers);
        let all_running = pod.spec.as_ref().is_some_and(|s| {
            !s.containers.is_empty()
                && s.containers.iter().all(|c| {
                    self.state
                        .containers
                        .get(&c.name)
                        .is_some_and(ContainerState::is_running)
                })
        });
        if all_running && !self.start_recorded {
            self.start_recorded = true;
            metrics
                .pod_start_duration
                .observe(&[], self.first_seen.elapsed().as_secs_f64());
        }
    }

    /// Stops and cleans up a pod that left this node without a deletion we saw through.
    async fn shutdown(&mut self, pod: &Pod) {
        let grace = plan::grace_period(pod).min(Duration::from_secs(30));
        let names: Vec<String> = self
            .state
            .containers
            .iter()
            .filter(|(_, c)| c.is_running())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.stop(pod, &name, grace, "pod removed").await;
        }
        self.teardown(pod).await;
    }

    /// Reads exit files of running attempts; schedules restarts with back-off.
    pub(super) fn observe(&mut self, pod: &Pod, now: Timestamp) {
        let policy = plan::restart_policy(pod).to_string();
        let is_init: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        let mut ended = Vec::new();
        for (name, c) in &mut self.state.containers {
            let Some(attempt) = c.current.as_mut() else {
                continue;
            };
            if attempt.terminated.is_some() {
                continue;
            }
            let Some(record) = self.env.exit_record(&attempt.id) else {
                continue;
            };
            let terminated = terminated_from(&record, attempt);
            let ran = terminated
                .finished_at
                .duration_since(attempt.started_at)
                .unsigned_abs();
            let restarts = if is_init.contains(name) {
                terminated.exit_code != 0 && policy != "Never"
            } else {
                plan::restarts(&policy, terminated.exit_code)
            };
            if restarts && !plan::deleting(pod) {
                let delay = c
                    .backoff
                    .next(ran, self.env.backoff_initial, self.env.backoff_max);
                let delay = jiff::SignedDuration::try_from(delay).unwrap_or_default();
                c.restart_after = Some(now.saturating_add(delay).unwrap_or(now));
            }
            ended.push((name.clone(), terminated.clone()));
            attempt.terminated = Some(terminated);
            c.stopping = false;
        }
        for (name, t) in ended {
            let message = match t.reason.as_str() {
                "OOMKilled" => format!(
                    "Container {name} was OOM-killed (exit code {})",
                    t.exit_code
                ),
                _ => format!(
                    "Container {name} exited with code {} ({})",
                    t.exit_code, t.reason
                ),
            };
            tracing::info!(pod = %pod_key(pod), container = %name, exit_code = t.exit_code, reason = %t.reason, "container exited");
            if t.exit_code != 0 {
                self.env.event(
                    pod,
                    EventType::Warning,
                    "BackOff",
                    message,
                    Some(format!("spec.containers{{{name}}}")),
                );
            }
        }
        // An image pull failure turns into ImagePullBackOff while waiting for the retry.
        for image in self.state.images.values_mut() {
            if let super::state::ImageState::Failed {
                reason,
                message,
                retry_at,
                ..
            } = image
                && reason == "ErrImagePull"
                && *retry_at > now
            {
                *reason = "ImagePullBackOff".into();
                if !message.starts_with("Back-off pulling image") {
                    *message = message.clone();
                }
            }
        }
    }

    /// Runs the probes that are due for running containers; records results.
    async fn run_probes(&mut self, pod: &Pod) {
        let now = Timestamp::now();
        let ip = match self.state.sandbox {
            Sandbox::Ready { ip: Some(ip) } => ip,
            _ => self.env.node_ip,
        };
        let containers: Vec<_> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        for container in &containers {
            let Some(c) = self.state.containers.get(&container.name) else {
                continue;
            };
            let Some(attempt) = c.current.clone().filter(|a| a.terminated.is_none()) else {
                continue;
            };
            if c.stopping {
                continue;
            }
            for kind in [
                ProbeKind::Startup,
                ProbeKind::Liveness,
                ProbeKind::Readiness,
            ] {
                let Some(probe) = kind.of(container) else {
                    continue;
                };
                let started = self
                    .state
                    .containers
                    .get(&container.name)
                    .is_some_and(|c| c.probes.started);
                if kind != ProbeKind::Startup && !started {
                    continue;
                }
                if kind == ProbeKind::Startup && started {
                    continue;
                }
                let timing = ProbeTiming::of(probe);
                let key = (container.name.clone(), kind);
                let tracker = self.probes.entry(key.clone()).or_default();
                if !tracker.due(&timing, attempt.started_at, now) {
                    continue;
                }
                let outcome = if probe.exec.is_some() {
                    let argv = probe
                        .exec
                        .as_ref()
                        .and_then(|e| e.command.clone())
                        .unwrap_or_default();
                    match self
                        .env
                        .runtime
                        .exec(&attempt.id, &argv, timing.timeout)
                        .await
                    {
                        Ok(out) if out.exit_code == 0 => Ok(()),
                        Ok(out) => Err(format!(
                            "command {:?} exited with {}: {}",
                            argv.join(" "),
                            out.exit_code,
                            String::from_utf8_lossy(&out.stdout).trim_end()
                        )),
                        Err(e) => Err(e.to_string()),
                    }
                } else if probe.tcp_socket.is_some() {
                    match probes::tcp_port(probe, container) {
                        Ok(port) => probes::tcp(ip.into(), port, timing.timeout).await,
                        Err(e) => Err(e),
                    }
                } else if probe.http_get.is_some() {
                    probes::http_get(ip.into(), probe, container, timing.timeout).await
                } else {
                    Ok(())
                };
                if let Err(message) = &outcome {
                    self.env.event(
                        pod,
                        EventType::Warning,
                        "Unhealthy",
                        format!("{} probe failed: {message}", kind.name()),
                        Some(format!("spec.containers{{{}}}", container.name)),
                    );
                }
                let tracker = self.probes.entry(key).or_default();
                let settled = tracker.record(&timing, Timestamp::now(), outcome);
                let message = tracker.last_message.clone();
                let Some(c) = self.state.containers.get_mut(&container.name) else {
                    continue;
                };
                match (kind, settled) {
                    (ProbeKind::Readiness, Some(ok)) => c.probes.ready = ok,
                    (ProbeKind::Startup, Some(true)) => c.probes.started = true,
                    (ProbeKind::Startup | ProbeKind::Liveness, Some(false)) => {
                        let reason = format!(
                            "Container {} failed {} probe, will be restarted",
                            container.name,
                            kind.name().to_lowercase()
                        );
                        tracing::info!(pod = %pod_key(pod), container = %container.name, %message, "{reason}");
                        c.probes.kill_reason = Some(reason);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Resets the probe bookkeeping of a container (a new attempt).
    pub(super) fn reset_probes(&mut self, container: &str, has_startup: bool) {
        self.probes.retain(|(name, _), _| name != container);
        if let Some(c) = self.state.containers.get_mut(container) {
            c.probes = super::state::Probes {
                ready: false,
                started: !has_startup,
                kill_reason: None,
            };
        }
    }

    fn write_checkpoint(&mut self) {
        let checkpoint = self.state.checkpoint();
        if self.last_checkpoint.as_ref() == Some(&checkpoint) {
            return;
        }
        let path = self.env.checkpoint_path(&self.uid);
        if let Err(e) = write_json_atomically(&path, &checkpoint) {
            tracing::warn!(uid = %self.uid, error = %e, "writing the pod checkpoint");
            return;
        }
        self.last_checkpoint = Some(checkpoint);
    }

    /// Patches `pods/status` when it changed (or once a minute).
    async fn write_status(&mut self, pod: &Pod) {
        if matches!(self.state.sandbox, Sandbox::TornDown) && plan::deleting(pod) {
            return;
        }
        let now = Timestamp::now();
        let status = pod_status(pod, &self.state, self.env.node_ip, now);
        let Ok(value) = serde_json::to_value(&status) else {
            return;
        };
        if let Some((last, at)) = &self.last_status
            && *last == value
            && now.duration_since(*at).unsigned_abs() < STATUS_RESYNC
        {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.env.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({ "status": value });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_status = Some((value, now)),
            Err(e) => tracing::warn!(pod = %pod_key(pod), error = %e, "writing the pod status"),
        }
    }

    /// Rebuilds the state from an earlier agent's leftovers.
    async fn adopt(&mut self, pod: &Pod) {
        let path = self.env.checkpoint_path(&self.uid);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let Ok(checkpoint) = serde_json::from_slice::<Checkpoint>(&bytes) else {
            tracing::warn!(uid = %self.uid, "unreadable pod checkpoint; starting afresh");
            return;
        };
        self.state.start_time = checkpoint.start_time;
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            self.state.sandbox = Sandbox::Ready { ip: None };
        } else if let Some(net) = self
            .env
            .network
            .checkpoints()
            .into_iter()
            .find(|n| n.sandbox_id == self.uid)
        {
            self.state.sandbox = Sandbox::Ready { ip: Some(net.ip) };
        }
        for (name, saved) in checkpoint.containers {
            if saved.attempts == 0 {
                continue;
            }
            let number = saved.attempts - 1;
            let id = PodEnv::container_id(&self.uid, &name, number);
            let started_at = saved.current_started_at.unwrap_or_else(Timestamp::now);
            let mut attempt = Attempt {
                id: id.clone(),
                number,
                started_at,
                terminated: None,
            };
            let observed = self.env.runtime.state(&id).await;
            match observed {
                Ok(RuntimeState::Running { pid }) => {
                    tracing::info!(pod = %pod_key(pod), container = %name, pid, "re-adopted a running container");
                }
                Ok(RuntimeState::Exited(record)) => {
                    attempt.terminated = Some(terminated_from(&record, &attempt));
                }
                _ => {
                    attempt.terminated = saved.current_terminated.clone().or_else(|| {
                        Some(Terminated {
                            exit_code: 137,
                            signal: None,
                            reason: "ContainerStatusUnknown".into(),
                            message: Some(
                                "The container could not be located when the pod was terminated"
                                    .into(),
                            ),
                            started_at,
                            finished_at: Timestamp::now(),
                            container_id: format!("runc://{id}"),
                        })
                    });
                }
            }
            // An attempt that ended while the agent was away restarts per policy, at once.
            let c = ContainerState {
                attempts: saved.attempts,
                current: Some(attempt),
                last_terminated: saved.last_terminated,
                probes: super::state::Probes {
                    ready: false,
                    started: true,
                    kill_reason: None,
                },
                ..Default::default()
            };
            self.state.containers.insert(name, c);
        }
        // Images of adopted containers are present (they run from them).
        for container in plan::all_containers(pod) {
            let image = container.image.clone().unwrap_or_default();
            if let Ok(Some(record)) = self.env.images.lookup(&image) {
                self.state.images.insert(
                    image,
                    super::state::ImageState::Present {
                        image_id: image_id(&record),
                    },
                );
            }
        }
    }
}

/// `namespace/name` of a pod for logs.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A pod's `imageID`: `<repository>@<manifest digest>`.
pub fn image_id(record: &crate::image::ImageRecord) -> String {
    let reference = record.references.first().cloned().unwrap_or_default();
    let repository = match reference.rfind(':') {
        Some(colon) if !reference[colon..].contains('/') => reference[..colon].to_string(),
        _ => reference,
    };
    let repository = repository.split('@').next().unwrap_or_default().to_string();
    format!("{repository}@{}", record.digest)
}

/// The container status' termination from the shim's exit record.
pub fn terminated_from(record: &ExitRecord, attempt: &Attempt) -> Terminated {
    let reason = if record.oom_killed {
        "OOMKilled"
    } else if record.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let parse = |s: &str| s.parse::<Timestamp>().ok();
    Terminated {
        exit_code: record.exit_code,
        signal: None,
        reason: reason.into(),
        message: None,
        started_at: record
            .started_at
            .as_deref()
            .and_then(parse)
            .unwrap_or(attempt.started_at),
        finished_at: parse(&record.finished_at).unwrap_or_else(Timestamp::now),
        container_id: format!("runc://{}", attempt.id),
    }
}

/// Writes JSON to `path` through a temporary file and a rename.
pub fn write_json_atomically<T: serde::Serialize>(
    path: &std::path::Path,
    value: &T,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
