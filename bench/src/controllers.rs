//! `skiff bench controllers`: the controller manager's benchmark against a running control
//! plane (API server, store, scheduler, controller manager, and simulated nodes it does not
//! create: `skiff node-sim`). One Deployment of `--replicas` busybox pods, three phases, each
//! timed from its request to its end as a watch on the Deployment (or its pods) sees it:
//! - **create**: the Deployment is created → `availableReplicas == replicas`;
//! - **rolling update**: its image is patched → `updatedReplicas == availableReplicas ==
//!   status.replicas == replicas` (no old pod left), on the generation of the patch;
//! - **cleanup** (unless `--keep`): it is deleted with background propagation → the garbage
//!   collector has removed its ReplicaSets and pods.
//!
//! Every change of the Deployment's counts is kept (the chart: available pods over time).
//! CPU milliseconds per pod of the API server, the store members, the scheduler and the
//! controller manager (found by their listening ports when they run here) and of node-sim
//! (which listens on no port: `--node-sim-pid`) are read from `/proc` over each phase.
//! Before it starts, the run waits (up to [`NODE_WAIT`]) for `--min-nodes` Ready nodes that
//! hold the Deployment at the rolling update's peak, and refuses with a configuration error
//! otherwise.

pub mod objects;
mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

use crate::Error;
use crate::kube_api::{Accounting, api_error, code, connect, write};
use crate::procfs;
use objects::{Capacity, Counts};
pub use stats::{ControllersBenchReport, PhaseResult, Point};

/// Most replicas of the benchmark's Deployment.
pub const REPLICAS_MAX: usize = 100_000;
/// Longest `--timeout` (per phase).
pub const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
/// Largest `--min-nodes` (node-sim's own limit).
pub const MIN_NODES_MAX: usize = 50_000;
/// How long the run waits for enough Ready nodes before it refuses.
pub const NODE_WAIT: Duration = Duration::from_secs(60);
/// How often the nodes and the leftover ReplicaSets are listed while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest wait for a watch's initial list.
const WATCH_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deployment versions buffered between the watch and the phase that reads them; a slow
/// reader slows the watch (back-pressure), it never grows a queue.
const DEPLOYMENT_EVENTS_MAX: usize = 4096;

/// Everything one `skiff bench controllers` run needs.
#[derive(Debug, Clone)]
pub struct ControllersBenchConfig {
    /// `--kubeconfig` (else `KUBECONFIG`, else in-cluster); the API server's CPU is found
    /// through its address.
    pub kubeconfig: Option<PathBuf>,
    /// Replicas of the Deployment.
    pub replicas: usize,
    /// Namespace of the Deployment (created if missing).
    pub namespace: String,
    /// Ready nodes to wait for before the run (so that it does not start while node-sim is
    /// still registering nodes).
    pub min_nodes: usize,
    /// Longest wait for each phase's end.
    pub timeout: Duration,
    /// Leave the Deployment (and its pods) in place: no cleanup phase.
    pub keep: bool,
    /// Client endpoints of the store members, for CPU accounting.
    pub store_endpoints: Vec<String>,
    /// The scheduler's secure port(s), for CPU accounting.
    pub scheduler_endpoints: Vec<String>,
    /// The controller manager's secure port(s), for CPU accounting.
    pub controller_manager_endpoints: Vec<String>,
    /// PID of `skiff node-sim` (it listens on no port), for CPU accounting.
    pub node_sim_pid: Option<u32>,
    /// Write `<name>.md`, `.json` and `.png` here.
    pub out_dir: Option<PathBuf>,
    /// File stem of the outputs.
    pub name: String,
    /// A note for the report header.
    pub label: Option<String>,
    /// The command that ran the benchmark, for the report.
    pub command_line: Option<String>,
}

impl ControllersBenchConfig {
    /// Checks the counts and durations against their limits.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.replicas == 0 || self.replicas > REPLICAS_MAX {
            return bad(format!("--replicas must be between 1 and {REPLICAS_MAX}"));
        }
        if self.min_nodes > MIN_NODES_MAX {
            return bad(format!("--min-nodes must be at most {MIN_NODES_MAX}"));
        }
        if self.timeout.is_zero() || self.timeout > TIMEOUT_MAX {
            return bad(format!(
                "--timeout must be between 1ms and {} h",
                TIMEOUT_MAX.as_secs() / 3600
            ));
        }
        if self.name.is_empty() {
            return bad("--name must not be empty".into());
        }
        Ok(())
    }
}

/// Builds a runtime and runs [`run`].
pub fn run_blocking(config: ControllersBenchConfig) -> Result<ControllersBenchReport, Error> {
    config.validate()?;
    crate::kube_api::block_on(run(config))
}

/// Connects, checks the nodes, runs the phases, cleans up, writes the files.
pub async fn run(config: ControllersBenchConfig) -> Result<ControllersBenchReport, Error> {
    let (client, api_endpoint) = connect(config.kubeconfig.as_deref()).await?;
    let meter = Meter::new(&config, api_endpoint);
    let capacity = wait_for_nodes(&client, config.replicas, config.min_nodes).await?;
    crate::kube_api::ensure_namespace(&client, &config.namespace).await?;
    let run_id = crate::kube_api::run_id();
    let measured = measure(&client, &config, &run_id, &meter).await;
    let (cleanup, cleanup_error) = if config.keep {
        (None, None)
    } else {
        match cleanup(&client, &config, &run_id, &meter).await {
            Ok(result) => (Some(result), None),
            // The figures stand; the report says what was left behind.
            Err(err) => (None, Some(err.to_string())),
        }
    };
    let (create, rolling_update) = measured?;
    if let Some(result) = &cleanup {
        eprintln!("{}", result.render_text());
    }
    let report = ControllersBenchReport {
        replicas: config.replicas,
        capacity,
        label: config.label.clone(),
        command_line: config.command_line.clone(),
        create,
        rolling_update,
        cleanup,
        cleanup_error,
    };
    if let Some(dir) = &config.out_dir {
        stats::write_files(&report, dir, &config.name)?;
    }
    Ok(report)
}

/// CPU samples of the components (by port) and of node-sim (by PID).
struct Meter {
    accounting: Accounting,
    node_sim_pid: Option<u32>,
}

impl Meter {
    fn new(config: &ControllersBenchConfig, api_endpoint: String) -> Meter {
        let accounting = Accounting::find(&[
            ("apiserver", vec![api_endpoint]),
            ("store", config.store_endpoints.clone()),
            ("scheduler", config.scheduler_endpoints.clone()),
            (
                "controller-manager",
                config.controller_manager_endpoints.clone(),
            ),
        ]);
        let node_sim_pid = config.node_sim_pid.filter(|&pid| {
            let found = procfs::process_cpu(pid).is_some();
            if !found {
                eprintln!(
                    "skiff bench controllers: no process {pid} (--node-sim-pid): node-sim's CPU is not reported"
                );
            }
            found
        });
        Meter {
            accounting,
            node_sim_pid,
        }
    }

    fn sample(&self) -> BTreeMap<&'static str, Duration> {
        let mut sample = self.accounting.sample();
        if let Some(cpu) = self.node_sim_pid.and_then(procfs::process_cpu) {
            sample.insert("node-sim", cpu);
        }
        sample
    }
}

/// Waits until at least `min_nodes` usable nodes are Ready and they hold
/// [`objects::peak_pods`] pods; refuses after [`NODE_WAIT`]. Pods already on the nodes are not
/// subtracted.
async fn wait_for_nodes(
    client: &kube::Client,
    replicas: usize,
    min_nodes: usize,
) -> Result<Capacity, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let needed = objects::peak_pods(replicas);
    let deadline = Instant::now() + NODE_WAIT;
    let mut said = false;
    loop {
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("list nodes", e))?;
        let capacity = objects::capacity(&list.items);
        if capacity.pods >= needed && capacity.ready_nodes >= min_nodes {
            return Ok(capacity);
        }
        if Instant::now() >= deadline && capacity.ready_nodes < min_nodes {
            return Err(Error::Config(format!(
                "{} Ready nodes after {NODE_WAIT:?}, fewer than --min-nodes {min_nodes}",
                capacity.ready_nodes
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Config(format!(
                "{} Ready nodes hold {} pods, and a rolling update of {replicas} replicas needs {needed} \
                 (replicas + {} % surge); start more simulated nodes (skiff node-sim --nodes N) or lower --replicas",
                capacity.ready_nodes,
                capacity.pods,
                objects::MAX_SURGE_PERCENT
            )));
        }
        if !said {
            eprintln!(
                "waiting for Ready nodes: {} of {min_nodes}, holding {} of the {needed} pods needed",
                capacity.ready_nodes, capacity.pods
            );
            said = true;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn progress_bar(len: usize, message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64).with_message(message.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {pos}/{len} {bar:40} {per_sec} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The Deployment as a watch delivers it, stamped when it arrived.
type Seen = (Instant, Deployment);

/// Starts a watch on the run's Deployment; returns once its initial list is done, so a
/// request sent after it is seen whole.
async fn watch_deployment(
    deployments: Api<Deployment>,
    run_id: &str,
) -> Result<(tokio::task::JoinHandle<()>, mpsc::Receiver<Seen>), Error> {
    let (tx, rx) = mpsc::channel(DEPLOYMENT_EVENTS_MAX);
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let config = watcher::Config::default().labels(&objects::run_selector(run_id));
    let mut stream = watcher(deployments, config).default_backoff().boxed();
    let task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => {
                    if tx.send((Instant::now(), d)).await.is_err() {
                        return;
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(_) => {}
                Err(err) => eprintln!("skiff bench controllers: deployment watch: {err}"),
            }
        }
    });
    match tokio::time::timeout(WATCH_START_TIMEOUT, ready).await {
        Ok(Ok(())) => Ok((task, rx)),
        _ => {
            task.abort();
            Err(Error::Run(format!(
                "the Deployment watch did not start within {WATCH_START_TIMEOUT:?}"
            )))
        }
    }
}

/// The create and rolling update phases (the second only if the first completed).
async fn measure(
    client: &kube::Client,
    config: &ControllersBenchConfig,
    run_id: &str,
    meter: &Meter,
) -> Result<(PhaseResult, Option<PhaseResult>), Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &config.namespace);
    let name = objects::deployment_name(run_id);
    let (watch, mut seen) = watch_deployment(deployments.clone(), run_id).await?;
    let replicas = config.replicas;

    eprintln!("create: a Deployment of {replicas} replicas");
    let before = meter.sample();
    let start = Instant::now();
    let deployment = objects::deployment(run_id, replicas);
    let post = PostParams::default();
    let created = write(
        || format!("create deployment {name}"),
        || deployments.create(&post, &deployment),
    )
    .await;
    let created = match created {
        Ok(created) => created,
        Err(err) => {
            watch.abort();
            return Err(err);
        }
    };
    let generation = created.and_then(|d| d.metadata.generation).unwrap_or(1);
    let progress = progress_bar(replicas, "create: available");
    let zero = Point {
        seconds: 0.0,
        available: 0,
        updated: 0,
        pods: 0,
    };
    let waited = wait_phase(
        &mut seen,
        start,
        config.timeout,
        generation,
        zero,
        &progress,
        |c| (c.all_available(replicas), c.available),
    )
    .await;
    progress.finish_and_clear();
    let create = phase_result("create", replicas, waited, meter, &before, config.timeout);
    eprintln!("{}", create.render_text());
    if !create.completed {
        watch.abort();
        return Ok((create, None));
    }

    eprintln!(
        "rolling update: image {} → {}",
        objects::IMAGE,
        objects::UPDATED_IMAGE
    );
    let before = meter.sample();
    let start = Instant::now();
    let patch = Patch::Strategic(objects::image_patch());
    let params = PatchParams::default();
    let patched = write(
        || format!("patch deployment {name}"),
        || deployments.patch(&name, &params, &patch),
    )
    .await;
    let patched = match patched {
        Ok(patched) => patched,
        Err(err) => {
            watch.abort();
            return Err(err);
        }
    };
    let generation = patched
        .and_then(|d| d.metadata.generation)
        .unwrap_or(generation + 1);
    let progress = progress_bar(replicas, "rolling update: updated and available");
    let before_update = create.timeline.last().map_or(zero, |p| Point {
        seconds: 0.0,
        updated: 0,
        ..*p
    });
    let waited = wait_phase(
        &mut seen,
        start,
        config.timeout,
        generation,
        before_update,
        &progress,
        |c| (c.rolled_out(replicas), c.updated.min(c.available)),
    )
    .await;
    progress.finish_and_clear();
    watch.abort();
    let update = phase_result(
        "rolling update",
        replicas,
        waited,
        meter,
        &before,
        config.timeout,
    );
    eprintln!("{}", update.render_text());
    Ok((create, Some(update)))
}

/// What one phase's wait saw: when it ended (if it did) and every change of the counts.
struct Waited {
    done_at: Option<Duration>,
    timeline: Vec<Point>,
}

/// Reads the Deployment's changes until `check` says done or `timeout` passes; `check`
/// answers (done, progress position). The timeline starts with `initial` (the counts before
/// the request) and has a point for every change after it.
async fn wait_phase(
    seen: &mut mpsc::Receiver<Seen>,
    start: Instant,
    timeout: Duration,
    generation: i64,
    initial: Point,
    progress: &indicatif::ProgressBar,
    check: impl Fn(&Counts) -> (bool, i32),
) -> Waited {
    let deadline = tokio::time::Instant::from_std(start + timeout);
    let mut timeline = vec![initial];
    while let Ok(Some((at, deployment))) = tokio::time::timeout_at(deadline, seen.recv()).await {
        // Left over from before the request: the last phase's tail.
        let Some(offset) = at.checked_duration_since(start) else {
            continue;
        };
        let counts = Counts::of(&deployment, generation);
        let point = Point {
            seconds: offset.as_secs_f64(),
            available: counts.available,
            // Before the controller saw the request, `updated` counts the old template's pods.
            updated: if counts.observed { counts.updated } else { 0 },
            pods: counts.replicas,
        };
        let changed = |l: &Point| {
            (l.available, l.updated, l.pods) != (point.available, point.updated, point.pods)
        };
        if timeline.last().is_none_or(changed) {
            timeline.push(point);
        }
        let (done, position) = check(&counts);
        progress.set_position(u64::try_from(position).unwrap_or(0));
        if done {
            return Waited {
                done_at: Some(offset),
                timeline,
            };
        }
    }
    Waited {
        done_at: None,
        timeline,
    }
}

fn phase_result(
    phase: &'static str,
    replicas: usize,
    waited: Waited,
    meter: &Meter,
    before: &BTreeMap<&'static str, Duration>,
    timeout: Duration,
) -> PhaseResult {
    let after = meter.sample();
    let cpu = Accounting::per_op(before, &after, replicas);
    let seconds = waited.done_at.unwrap_or(timeout).as_secs_f64();
    PhaseResult::new(
        phase,
        replicas,
        seconds,
        waited.done_at.is_some(),
        waited.timeline,
        cpu,
    )
}

/// Deletes the Deployment (background propagation) and waits until the garbage collector
/// has removed its pods and ReplicaSets.
async fn cleanup(
    client: &kube::Client,
    config: &ControllersBenchConfig,
    run_id: &str,
    meter: &Meter,
) -> Result<PhaseResult, Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &config.namespace);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &config.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    let name = objects::deployment_name(run_id);
    let selector = objects::run_selector(run_id);

    let (watch, mut left) = watch_pods(pods, &selector).await?;
    let initial = left.borrow().unwrap_or(0);
    let progress = progress_bar(initial, "cleanup: pods gone");
    let before = meter.sample();
    let start = Instant::now();
    let params = DeleteParams::background();
    let deleted = write(
        || format!("delete deployment {name}"),
        || async {
            match deployments.delete(&name, &params).await {
                Err(err) if code(&err) == Some(404) => Ok(()),
                other => other.map(drop),
            }
        },
    )
    .await;
    if let Err(err) = deleted {
        watch.abort();
        progress.finish_and_clear();
        return Err(err);
    }
    let deadline = tokio::time::Instant::from_std(start + config.timeout);
    let mut timeline = vec![Point {
        seconds: 0.0,
        available: 0,
        updated: 0,
        pods: i32::try_from(initial).unwrap_or(i32::MAX),
    }];
    let mut pods_gone = initial == 0;
    while !pods_gone {
        if tokio::time::timeout_at(deadline, left.changed())
            .await
            .is_err()
        {
            break;
        }
        let now = left.borrow_and_update().unwrap_or(initial);
        timeline.push(Point {
            seconds: start.elapsed().as_secs_f64(),
            available: 0,
            updated: 0,
            pods: i32::try_from(now).unwrap_or(i32::MAX),
        });
        progress.set_position(initial.saturating_sub(now) as u64);
        pods_gone = now == 0;
    }
    watch.abort();
    progress.finish_and_clear();
    // The ReplicaSets go before their pods; confirm none is left.
    let mut replica_sets_gone = false;
    while pods_gone && tokio::time::Instant::now() < deadline {
        let list = replica_sets
            .list_metadata(&ListParams::default().labels(&selector).limit(1))
            .await
            .map_err(|e| api_error("list replicasets", e))?;
        if list.items.is_empty() {
            replica_sets_gone = true;
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let done = pods_gone && replica_sets_gone;
    let waited = Waited {
        done_at: done.then(|| start.elapsed()),
        timeline,
    };
    Ok(phase_result(
        "cleanup",
        config.replicas,
        waited,
        meter,
        &before,
        config.timeout,
    ))
}

/// Starts a watch on the run's pods that publishes how many are left (`None` until its
/// initial list is done); returns once that list is done.
async fn watch_pods(
    pods: Api<Pod>,
    selector: &str,
) -> Result<
    (
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Receiver<Option<usize>>,
    ),
    Error,
> {
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let config = watcher::Config::default().labels(selector);
    let mut stream = watcher(pods, config).default_backoff().boxed();
    let task = tokio::spawn(async move {
        let (mut names, mut listing) = (BTreeSet::new(), BTreeSet::new());
        let mut listed = false;
        while let Some(event) = stream.next().await {
            let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
            match event {
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(p)) => {
                    listing.insert(name(&p));
                }
                Ok(watcher::Event::InitDone) => {
                    names = std::mem::take(&mut listing);
                    listed = true;
                }
                Ok(watcher::Event::Apply(p)) => {
                    names.insert(name(&p));
                }
                Ok(watcher::Event::Delete(p)) => {
                    names.remove(&name(&p));
                }
                Err(err) => {
                    eprintln!("skiff bench controllers: pod watch: {err}");
                    continue;
                }
            }
            if listed {
                let count = names.len();
                tx.send_if_modified(|left| {
                    let changed = *left != Some(count);
                    *left = Some(count);
                    changed
                });
            }
        }
    });
    let started = tokio::time::timeout(WATCH_START_TIMEOUT, rx.wait_for(Option::is_some))
        .await
        .is_ok_and(|listed| listed.is_ok());
    if started {
        Ok((task, rx))
    } else {
        task.abort();
        Err(Error::Run(format!(
            "the pod watch did not start within {WATCH_START_TIMEOUT:?}"
        )))
    }
}

/// The text report (one paragraph per phase), then the JSON line if asked.
pub fn render(report: &ControllersBenchReport, json: bool) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{} replicas on {} Ready nodes ({} pods of capacity)\n",
        report.replicas, report.capacity.ready_nodes, report.capacity.pods
    );
    for phase in report.phases() {
        let _ = writeln!(out, "{}", phase.render_text());
    }
    if let Some(err) = &report.cleanup_error {
        let _ = writeln!(out, "cleanup failed: {err}");
    }
    if json {
        let _ = writeln!(out, "{}", stats::json_line(report));
    }
    out
}
