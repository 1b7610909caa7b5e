//! `skiff bench pods`: the node agent's benchmark against a running control plane with one real
//! `skiff node-agent` (image already present). `--pods` busybox pods are created bound to
//! `--node` (no scheduler in the way: the agent's own latency), at most `--concurrency`
//! creates in flight; each pod's latency is its create request → the first version a watch
//! sees with phase Running and every container running. Reported: p50/p90/p99/max, the
//! agent's CPU milliseconds per pod and its RSS idle and with every pod running (from
//! `--agent-pid`), the shims' RSS (every `skiff-shim` process under `--agent-root-dir`), and
//! the time until every pod is gone after one delete each (grace 1 s). The issue's anchors:
//! Kubernetes SLO p99 5 s, kubemark p99 2.06 s; the goal p99 ≤ 0.5 s, idle agent RSS ≤ 30 MB,
//! shim RSS ≤ 2 MB.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;

use crate::Error;
use crate::kube_api::{api_error, connect, ensure_namespace, write};
use crate::procfs;

/// Most pods one run creates.
pub const PODS_MAX: usize = 10_000;
/// Most creates in flight.
pub const CONCURRENCY_MAX: usize = 256;
/// Goals of the issue.
pub const GOAL_P99_SECONDS: f64 = 0.5;
pub const GOAL_IDLE_RSS_MB: f64 = 30.0;
pub const GOAL_SHIM_RSS_MB: f64 = 2.0;
/// Pod versions buffered between the watch and the bench.
const POD_EVENTS_MAX: usize = 4096;

/// One run's settings.
#[derive(Debug, Clone)]
pub struct PodsBenchConfig {
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    pub pods: usize,
    /// The node the pods are bound to (`spec.nodeName`).
    pub node: String,
    pub image: String,
    pub concurrency: usize,
    pub timeout: Duration,
    /// The agent's PID, for its CPU and RSS.
    pub agent_pid: Option<u32>,
    /// The agent's `--root-dir`: shims whose command line names it are the agent's.
    pub agent_root_dir: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    pub name: String,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PodsBenchReport {
    pub pods: usize,
    pub running: usize,
    pub completed: bool,
    /// Create request → Running, seconds, per pod (sorted).
    pub latencies: Vec<f64>,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// First create → last pod Running.
    pub all_running_seconds: f64,
    /// One delete each → every pod gone.
    pub delete_seconds: Option<f64>,
    pub agent_cpu_ms_per_pod: Option<f64>,
    pub agent_idle_rss_mb: Option<f64>,
    pub agent_loaded_rss_mb: Option<f64>,
    pub shims: usize,
    pub shim_rss_mb_avg: Option<f64>,
    pub shim_rss_mb_max: Option<f64>,
}

/// Runs the benchmark on its own runtime.
pub fn run_blocking(config: PodsBenchConfig) -> Result<PodsBenchReport, Error> {
    crate::kube_api::block_on(run(config))
}

fn validate(config: &PodsBenchConfig) -> Result<(), Error> {
    if config.pods == 0 || config.pods > PODS_MAX {
        return Err(Error::Config(format!("--pods must be 1..={PODS_MAX}")));
    }
    if config.concurrency == 0 || config.concurrency > CONCURRENCY_MAX {
        return Err(Error::Config(format!(
            "--concurrency must be 1..={CONCURRENCY_MAX}"
        )));
    }
    if config.node.is_empty() {
        return Err(Error::Config("--node is required".into()));
    }
    Ok(())
}

/// The pod the run creates.
pub fn pod(name: &str, node: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench-pods"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"]
            }]
        }
    }))
    .expect("a valid pod")
}

fn is_running(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.container_statuses.as_ref().is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
        })
}

/// The agent's shims: `skiff-shim` processes whose command line names `root`.
pub fn shim_pids(root: &Path) -> Vec<u32> {
    let root = root.to_string_lossy().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline);
            let argv0 = text.split('\0').next().unwrap_or_default();
            argv0.ends_with("skiff-shim") && text.contains(&root)
        })
        .collect()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The value at quantile `q` of sorted `values`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn run(config: PodsBenchConfig) -> Result<PodsBenchReport, Error> {
    validate(&config)?;
    let (client, _) = connect(config.kubeconfig.as_deref()).await?;
    ensure_namespace(&client, &config.namespace).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    let idle_rss = config.agent_pid.and_then(procfs::process_rss);

    // Watch first, so no Running version is missed.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Pod>(POD_EVENTS_MAX);
    let watch_api = pods.clone();
    let watch = tokio::spawn(async move {
        let config = watcher::Config::default().labels("app=bench-pods");
        let mut stream = watcher(watch_api, config).applied_objects().boxed();
        while let Some(item) = stream.next().await {
            if let Ok(pod) = item
                && tx.send(pod).await.is_err()
            {
                return;
            }
        }
    });

    let cpu_before = config.agent_pid.and_then(procfs::process_cpu);
    let started = Instant::now();
    let names: Vec<String> = (0..config.pods).map(|i| format!("bench-pod-{i}")).collect();
    let mut created_at: HashMap<String, Instant> = HashMap::new();
    let mut running_at: HashMap<String, Instant> = HashMap::new();
    let post = PostParams::default();
    let mut creates = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let pods = pods.clone();
            let spec = pod(&name, &config.node, &config.image);
            let post = post.clone();
            async move {
                let at = Instant::now();
                let result = write(
                    || format!("create pod {name}"),
                    || pods.create(&post, &spec),
                )
                .await;
                (name, at, result)
            }
        })
        .buffer_unordered(config.concurrency);
    let deadline = started + config.timeout;
    let mut created = 0;
    loop {
        tokio::select! {
            next = creates.next(), if created < config.pods => {
                let Some((name, at, result)) = next else { continue };
                result?;
                created_at.insert(name, at);
                created += 1;
            }
            Some(pod) = rx.recv() => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if is_running(&pod) && !running_at.contains_key(&name) {
                    running_at.insert(name, Instant::now());
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
        if running_at.len() >= config.pods && created >= config.pods {
            break;
        }
    }
    let all_running = started.elapsed().as_secs_f64();
    let cpu_after = config.agent_pid.and_then(procfs::process_cpu);
    let loaded_rss = config.agent_pid.and_then(procfs::process_rss);
    let shims: Vec<u32> = config
        .agent_root_dir
        .as_deref()
        .map(shim_pids)
        .unwrap_or_default();
    let shim_rss: Vec<u64> = shims
        .iter()
        .filter_map(|pid| procfs::process_rss(*pid))
        .collect();

    let mut latencies: Vec<f64> = running_at
        .iter()
        .filter_map(|(name, at)| Some(at.duration_since(*created_at.get(name)?).as_secs_f64()))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let completed = latencies.len() == config.pods;

    // Cleanup: one delete each, then wait until none is left.
    let delete_started = Instant::now();
    let params = DeleteParams {
        grace_period_seconds: Some(1),
        ..Default::default()
    };
    for name in &names {
        match pods.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_error(&format!("delete pod {name}"), e)),
        }
    }
    let mut delete_seconds = None;
    let delete_deadline = Instant::now() + config.timeout;
    while Instant::now() < delete_deadline {
        let left = pods
            .list(&ListParams::default().labels("app=bench-pods"))
            .await
            .map_err(|e| api_error("list pods", e))?;
        if left.items.is_empty() {
            delete_seconds = Some(delete_started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();

    let report = PodsBenchReport {
        pods: config.pods,
        running: latencies.len(),
        completed,
        p50: quantile(&latencies, 0.50),
        p90: quantile(&latencies, 0.90),
        p99: quantile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or(0.0),
        latencies,
        all_running_seconds: all_running,
        delete_seconds,
        agent_cpu_ms_per_pod: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => {
                Some(b.saturating_sub(a).as_secs_f64() * 1000.0 / config.pods as f64)
            }
            _ => None,
        },
        agent_idle_rss_mb: idle_rss.map(mb),
        agent_loaded_rss_mb: loaded_rss.map(mb),
        shims: shim_rss.len(),
        shim_rss_mb_avg: (!shim_rss.is_empty())
            .then(|| mb(shim_rss.iter().sum::<u64>()) / shim_rss.len() as f64),
        shim_rss_mb_max: shim_rss.iter().max().copied().map(mb),
    };
    if let Some(dir) = &config.out_dir {
        write_outputs(dir, &config.name, &report)?;
    }
    Ok(report)
}

/// The run as text (or one JSON line).
pub fn render(report: &PodsBenchReport, json: bool) -> String {
    if json {
        return format!("{}\n", serde_json::to_string(report).unwrap_or_default());
    }
    let opt =
        |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.2} {unit}"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} of {} pods Running; create → Running p50 {:.3} s, p90 {:.3} s, p99 {:.3} s, max {:.3} s (goal p99 ≤ {GOAL_P99_SECONDS} s)",
        report.running, report.pods, report.p50, report.p90, report.p99, report.max
    );
    let _ = writeln!(
        out,
        "all Running after {:.2} s; all deleted after {}",
        report.all_running_seconds,
        opt(report.delete_seconds, "s")
    );
    let _ = writeln!(
        out,
        "agent: CPU {} per pod, RSS idle {} (goal ≤ {GOAL_IDLE_RSS_MB} MB), with the pods {}",
        opt(report.agent_cpu_ms_per_pod, "ms"),
        opt(report.agent_idle_rss_mb, "MB"),
        opt(report.agent_loaded_rss_mb, "MB")
    );
    let _ = writeln!(
        out,
        "shims: {} running, RSS avg {}, max {} (goal ≤ {GOAL_SHIM_RSS_MB} MB)",
        report.shims,
        opt(report.shim_rss_mb_avg, "MB"),
        opt(report.shim_rss_mb_max, "MB")
    );
    out
}

/// `<name>.json`, `<name>.md` and `<name>.png` (latency per pod, sorted) in `dir`.
pub fn write_outputs(dir: &Path, name: &str, report: &PodsBenchReport) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Run(format!("{}: {e}", dir.display())))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::Run(e.to_string()))?;
    std::fs::write(dir.join(format!("{name}.json")), json)
        .map_err(|e| Error::Run(e.to_string()))?;
    let md = format!(
        "# skiff bench pods: {name}\n\n```\n{}```\n\n![latency per pod](./{name}.png)\n",
        render(report, false)
    );
    std::fs::write(dir.join(format!("{name}.md")), md).map_err(|e| Error::Run(e.to_string()))?;
    let ms: Vec<f64> = report.latencies.iter().map(|s| s * 1000.0).collect();
    crate::chart::render_series_with_axes(
        &dir.join(format!("{name}.png")),
        "create → Running per pod (sorted)",
        ("pod (sorted by latency)", "ms"),
        &[("create → Running", &ms)],
    )
    .map_err(Error::Run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_the_pod() {
        let v = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
        assert_eq!(quantile(&v, 0.5), 0.5);
        assert_eq!(quantile(&v, 0.99), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        let p = pod("p", "n1", "busybox:1.36");
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert!(!is_running(&p));
        let bad = PodsBenchConfig {
            kubeconfig: None,
            namespace: "x".into(),
            pods: 0,
            node: "n".into(),
            image: "i".into(),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            agent_pid: None,
            agent_root_dir: None,
            out_dir: None,
            name: "n".into(),
        };
        assert!(validate(&bad).is_err());
    }
}
