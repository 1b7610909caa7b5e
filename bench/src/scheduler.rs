//! `skiff bench scheduler`: scheduler_perf's SchedulingBasic (and friends) against a running
//! API server and scheduler. Creates `--nodes` simulated-capacity Nodes, then per profile
//! `--pods` pods from `--clients` concurrent creators, and watches them get a `spec.nodeName`:
//! pods bound per second (first create → last bound) and create→bound latency (from the moment
//! the create request was sent). CPU per pod of the API server, store members and scheduler
//! is read from `/proc` when they run on this machine. Everything it created is deleted at the
//! end unless `--keep`.

pub mod objects;
mod stats;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde::Serialize;

use crate::Error;
use crate::kube_api::{Accounting, api_error, connect, for_each_concurrently, write};
pub use objects::Profile;
use objects::{PHASE_LABEL, Phase, RUN_LABEL};
pub use stats::{ProfileResult, Timeline};

/// Most nodes and pods one run creates.
pub const NODES_MAX: usize = 20_000;
pub const PODS_MAX: usize = 200_000;
/// Most concurrent creators.
pub const CLIENTS_MAX: usize = 1_024;

/// Everything one `skiff bench scheduler` run needs.
#[derive(Debug, Clone)]
pub struct SchedulerBenchConfig {
    /// `--kubeconfig` (else `KUBECONFIG`, else in-cluster).
    pub kubeconfig: Option<PathBuf>,
    pub nodes: usize,
    pub pods: usize,
    /// Run one after the other, on the same nodes.
    pub profiles: Vec<Profile>,
    pub namespace: String,
    /// Concurrent pod (and node) creators.
    pub clients: usize,
    /// Node names are `{node_prefix}{i}`.
    pub node_prefix: String,
    /// Longest wait for one phase's pods to be bound.
    pub timeout: Duration,
    /// Leave the nodes and pods in place.
    pub keep: bool,
    /// Client endpoints of the store members, for CPU accounting.
    pub store_endpoints: Vec<String>,
    /// Endpoints the scheduler listens on (its secure port), for CPU accounting.
    pub scheduler_endpoints: Vec<String>,
    /// Write `<name>.md`, `.json` and `.png` here.
    pub out_dir: Option<PathBuf>,
    pub name: String,
    pub label: Option<String>,
    pub command_line: Option<String>,
}

impl SchedulerBenchConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.nodes == 0 || self.nodes > NODES_MAX {
            return bad(format!("--nodes must be between 1 and {NODES_MAX}"));
        }
        if self.pods == 0 || self.pods > PODS_MAX {
            return bad(format!("--pods must be between 1 and {PODS_MAX}"));
        }
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return bad(format!("--clients must be between 1 and {CLIENTS_MAX}"));
        }
        if self.profiles.is_empty() {
            return bad("--profile names no profile".into());
        }
        for profile in &self.profiles {
            let max = profile.max_pods(self.nodes);
            if self.pods > max {
                return bad(format!(
                    "profile {} places at most {max} pods on {} nodes; lower --pods or raise --nodes",
                    profile.name(),
                    self.nodes
                ));
            }
        }
        Ok(())
    }
}

/// The whole run: one result per profile.
#[derive(Debug, Clone, Serialize)]
pub struct SchedulerBenchReport {
    pub nodes: usize,
    pub pods: usize,
    pub clients: usize,
    pub label: Option<String>,
    pub command_line: Option<String>,
    pub profiles: Vec<ProfileResult>,
}

/// Builds a runtime and runs [`run`].
pub fn run_blocking(config: SchedulerBenchConfig) -> Result<SchedulerBenchReport, Error> {
    config.validate()?;
    crate::kube_api::block_on(run(config))
}

/// Connects, creates the nodes, runs every profile, cleans up.
pub async fn run(config: SchedulerBenchConfig) -> Result<SchedulerBenchReport, Error> {
    let (client, api_endpoint) = connect(config.kubeconfig.as_deref()).await?;
    let accounting = Accounting::find(&[
        ("apiserver", vec![api_endpoint]),
        ("store", config.store_endpoints.clone()),
        ("scheduler", config.scheduler_endpoints.clone()),
    ]);
    let run_id = crate::kube_api::run_id();
    crate::kube_api::ensure_namespace(&client, &config.namespace).await?;

    eprintln!("creating {} nodes", config.nodes);
    create_nodes(&client, &config, &run_id).await?;
    let mut results = Vec::new();
    let mut outcome = Ok(());
    for &profile in &config.profiles {
        match run_profile(&client, &config, &run_id, profile, &accounting).await {
            Ok(result) => {
                eprintln!("{}", result.render_text());
                results.push(result);
            }
            Err(err) => {
                outcome = Err(err);
                break;
            }
        }
        if !config.keep
            && let Err(err) = delete_pods(&client, &config.namespace, &run_id).await
        {
            // The figures stand; say what was left behind.
            eprintln!("skiff bench scheduler: cleanup: {err}");
        }
    }
    if !config.keep {
        let nodes: Api<Node> = Api::all(client.clone());
        let selector = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
        if let Err(err) = nodes
            .delete_collection(&DeleteParams::default(), &selector)
            .await
        {
            eprintln!("skiff bench scheduler: cleanup: delete nodes: {err}");
        }
    }
    outcome?;
    let report = SchedulerBenchReport {
        nodes: config.nodes,
        pods: config.pods,
        clients: config.clients,
        label: config.label.clone(),
        command_line: config.command_line.clone(),
        profiles: results,
    };
    if let Some(dir) = &config.out_dir {
        stats::write_files(&report, dir, &config.name)?;
    }
    Ok(report)
}

async fn create_nodes(
    client: &kube::Client,
    config: &SchedulerBenchConfig,
    run_id: &str,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let (run_id, prefix) = (run_id.to_string(), config.node_prefix.clone());
    for_each_concurrently(config.nodes, config.clients, move |i| {
        let (nodes, run_id, prefix) = (nodes.clone(), run_id.clone(), prefix.clone());
        async move {
            let node = objects::node(&run_id, &prefix, i);
            let name = objects::node_name(&prefix, i);
            let post = PostParams::default();
            write(
                || format!("create node {name}"),
                || nodes.create(&post, &node),
            )
            .await?;
            // Status through its subresource, as a kubelet writes it (create may drop it).
            let patch = serde_json::json!({ "status": objects::node_status() });
            let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
            write(
                || format!("node {name} status"),
                || nodes.patch_status(&name, &params, &merge),
            )
            .await?;
            Ok(())
        }
    })
    .await
}

/// One profile: (preemption: create the victims and wait for them), then the measured pods.
async fn run_profile(
    client: &kube::Client,
    config: &SchedulerBenchConfig,
    run_id: &str,
    profile: Profile,
    accounting: &Accounting,
) -> Result<ProfileResult, Error> {
    if profile == Profile::Preemption {
        let classes: Api<PriorityClass> = Api::all(client.clone());
        let post = PostParams::default();
        for class in objects::priority_classes() {
            write(
                || "create priority class".to_string(),
                || classes.create(&post, &class),
            )
            .await?;
        }
        let victims = config.nodes * objects::PREEMPTION_PODS_PER_NODE;
        eprintln!(
            "{}: filling the nodes with {victims} low-priority pods",
            profile.name()
        );
        let timeline =
            create_and_wait(client, config, run_id, profile, Phase::Init, victims).await?;
        if timeline.bound_count() < victims {
            return Err(Error::Run(format!(
                "only {} of {victims} low-priority pods were bound within {:?}",
                timeline.bound_count(),
                config.timeout
            )));
        }
    }
    eprintln!("{}: creating {} pods", profile.name(), config.pods);
    let before = accounting.sample();
    let timeline =
        create_and_wait(client, config, run_id, profile, Phase::Measure, config.pods).await?;
    let after = accounting.sample();
    let cpu = Accounting::per_op(&before, &after, timeline.bound_count());
    Ok(ProfileResult::new(profile, config.nodes, &timeline, cpu))
}

/// Creates `count` pods of `phase` and records when each create was sent and when the watch
/// first saw it bound; returns when all are bound or `config.timeout` has passed.
async fn create_and_wait(
    client: &kube::Client,
    config: &SchedulerBenchConfig,
    run_id: &str,
    profile: Profile,
    phase: Phase,
    count: usize,
) -> Result<Timeline, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    let timeline = Arc::new(Mutex::new(Timeline::new(count)));
    let start = Instant::now();
    let progress = indicatif::ProgressBar::new(count as u64).with_message(format!(
        "{} {}: bound",
        profile.name(),
        phase.name()
    ));
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} {pos}/{len} {bar:40} {per_sec} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (all_bound_tx, mut all_bound) = tokio::sync::watch::channel(false);
    let selector = format!("{RUN_LABEL}={run_id},{PHASE_LABEL}={}", phase.name());
    let watch = {
        let (timeline, progress) = (timeline.clone(), progress.clone());
        let mut stream =
            watcher(pods.clone(), watcher::Config::default().labels(&selector)).boxed();
        let prefix = format!("{}-", phase.name());
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let pod = match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
                    _ => continue,
                };
                let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
                let index = pod
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .and_then(|i| i.parse::<usize>().ok());
                if let (true, Some(i)) = (bound, index) {
                    let mut timeline = timeline.lock().unwrap_or_else(|e| e.into_inner());
                    if timeline.mark_bound(i, start.elapsed()) {
                        progress.inc(1);
                        if timeline.bound_count() == timeline.len() {
                            let _ = all_bound_tx.send(true);
                        }
                    }
                }
            }
        })
    };
    let create = {
        let (timeline, run_id) = (timeline.clone(), run_id.to_string());
        for_each_concurrently(count, config.clients, move |i| {
            let (pods, timeline, run_id) = (pods.clone(), timeline.clone(), run_id.clone());
            async move {
                let pod = objects::pod(&run_id, profile, phase, i);
                let post = PostParams::default();
                timeline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .mark_created(i, start.elapsed());
                write(
                    || format!("create pod {}-{i}", phase.name()),
                    || pods.create(&post, &pod),
                )
                .await?;
                Ok(())
            }
        })
    };
    let created = create.await;
    let waited = tokio::time::timeout(config.timeout, all_bound.wait_for(|done| *done)).await;
    watch.abort();
    progress.finish_and_clear();
    created?;
    let timeline = timeline.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if waited.is_err() {
        eprintln!(
            "{} {}: {} of {count} pods bound within {:?}",
            profile.name(),
            phase.name(),
            timeline.bound_count(),
            config.timeout
        );
    }
    Ok(timeline)
}

/// Deletes the run's pods and waits (up to a minute) until none is listed.
async fn delete_pods(client: &kube::Client, namespace: &str, run_id: &str) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods.delete_collection(&params, &selector)
        .await
        .map_err(|e| api_error("delete pods", e))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let left = pods
            .list_metadata(&selector.clone().limit(1))
            .await
            .map_err(|e| api_error("list pods", e))?;
        if left.items.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Error::Run(
        "the benchmark's pods were not gone within 60 s".into(),
    ))
}

/// The text report of a whole run (one paragraph per profile), then the JSON line if asked.
pub fn render(report: &SchedulerBenchReport, json: bool) -> String {
    let mut out = String::new();
    for result in &report.profiles {
        let _ = writeln!(out, "{}", result.render_text());
    }
    if json {
        let _ = writeln!(out, "{}", stats::json_line(report));
    }
    out
}
