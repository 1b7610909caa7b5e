//! `skiff bench apiserver`: the API server's read paths under load, against a running API
//! server. Creates `--objects` pods in a namespace, then
//! - **list**: `--lists` full LISTs of them from `--list-clients` concurrent clients (a
//!   consistent read, as kubectl and informers do it): request sent → last byte of the body,
//!   p50/p90/p99/max;
//! - **watch fan-out**: `--watchers` watches on the namespace's pods, then `--writes` updates of
//!   one pod, one every `--write-interval`: for every watcher and every update, write sent →
//!   event received (so it includes the write itself; the write's own latency is reported
//!   beside it), and how many deliveries never came.
//!
//! CPU milliseconds per list and per write (with its fan-out) of the API server and the
//! store members are read from `/proc` when they run here. Run it once with the API server's
//! watch cache and once with `--watch-cache=false` for a before/after (see
//! `scripts/bench-apiserver.sh`); `--out DIR --name N --case C` adds this run as case `C`
//! to `N.json`, `N.md` and `N.png`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::WatchParams;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::kube_api::{Accounting, api_error, connect, for_each_concurrently, write};
use crate::report::{Latencies, LatencySummary};
use crate::scheduler::objects::{self, Phase, Profile, RUN_LABEL};

/// Most objects, lists, watchers and writes of one run.
pub const OBJECTS_MAX: usize = 200_000;
pub const LISTS_MAX: usize = 100_000;
pub const WATCHERS_MAX: usize = 10_000;
pub const WRITES_MAX: usize = 100_000;
/// The label carrying a write's sequence number.
const SEQ_LABEL: &str = "bench.skiff.dev/seq";
/// How long the watchers may take to receive the last write's event.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct ApiserverBenchConfig {
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    pub objects: usize,
    pub create_clients: usize,
    pub lists: usize,
    pub list_clients: usize,
    pub watchers: usize,
    pub writes: usize,
    pub write_interval: Duration,
    pub store_endpoints: Vec<String>,
    pub keep: bool,
    pub out_dir: Option<PathBuf>,
    pub name: String,
    /// This run's name in the report (e.g. `watch cache` / `no watch cache`).
    pub case: String,
    pub label: Option<String>,
    pub command_line: Option<String>,
}

impl ApiserverBenchConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let range = |what: &str, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(Error::Config(format!("{what} must be between 1 and {max}")))
            } else {
                Ok(())
            }
        };
        range("--objects", self.objects, OBJECTS_MAX)?;
        range("--lists", self.lists, LISTS_MAX)?;
        range("--watchers", self.watchers, WATCHERS_MAX)?;
        range("--writes", self.writes, WRITES_MAX)?;
        range(
            "--create-clients",
            self.create_clients,
            crate::scheduler::CLIENTS_MAX,
        )?;
        range(
            "--list-clients",
            self.list_clients,
            crate::scheduler::CLIENTS_MAX,
        )?;
        Ok(())
    }
}

/// One run's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiserverBenchCase {
    pub case: String,
    pub objects: usize,
    pub lists: usize,
    pub list_ms: LatencySummary,
    pub watchers: usize,
    pub writes: usize,
    pub deliveries: u64,
    pub missing_deliveries: u64,
    pub delivery_ms: LatencySummary,
    pub write_ms: LatencySummary,
    /// CPU ms per list (`apiserver`, `store`, `bench`, `machine`).
    pub cpu_ms_per_list: BTreeMap<String, f64>,
    /// CPU ms per write and its fan-out to every watcher.
    pub cpu_ms_per_write: BTreeMap<String, f64>,
}

/// Every case written under one `--name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiserverBenchReport {
    pub label: Option<String>,
    pub command_line: Option<String>,
    pub cases: Vec<ApiserverBenchCase>,
}

/// Builds a runtime and runs [`run`].
pub fn run_blocking(config: ApiserverBenchConfig) -> Result<ApiserverBenchCase, Error> {
    config.validate()?;
    crate::kube_api::block_on(run(config))
}

/// Creates the pods, lists them, fans writes out to the watchers, cleans up.
pub async fn run(config: ApiserverBenchConfig) -> Result<ApiserverBenchCase, Error> {
    let (client, api_endpoint) = connect(config.kubeconfig.as_deref()).await?;
    let accounting = Accounting::find(&[
        ("apiserver", vec![api_endpoint]),
        ("store", config.store_endpoints.clone()),
    ]);
    let run_id = crate::kube_api::run_id();
    crate::kube_api::ensure_namespace(&client, &config.namespace).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);

    eprintln!("creating {} pods", config.objects);
    {
        let (pods, run_id) = (pods.clone(), run_id.clone());
        for_each_concurrently(config.objects, config.create_clients, move |i| {
            let (pods, run_id) = (pods.clone(), run_id.clone());
            async move {
                let pod = objects::pod(&run_id, Profile::Basic, Phase::Measure, i);
                let post = PostParams::default();
                write(|| format!("create pod {i}"), || pods.create(&post, &pod)).await?;
                Ok(())
            }
        })
        .await?;
    }

    eprintln!("{} lists of {} pods", config.lists, config.objects);
    let before = accounting.sample();
    let list_latencies = lists(&client, &config).await?;
    let after = accounting.sample();
    let cpu_ms_per_list = Accounting::per_op(&before, &after, config.lists);

    eprintln!(
        "{} watchers, {} writes every {:?}",
        config.watchers, config.writes, config.write_interval
    );
    let before = accounting.sample();
    let fan_out = fan_out(&pods, &config).await;
    let after = accounting.sample();
    let cpu_ms_per_write = Accounting::per_op(&before, &after, config.writes);

    if !config.keep {
        let selector = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        if let Err(err) = pods.delete_collection(&params, &selector).await {
            eprintln!("skiff bench apiserver: cleanup: {err}");
        }
    }
    let fan_out = fan_out?;
    let case = ApiserverBenchCase {
        case: config.case.clone(),
        objects: config.objects,
        lists: config.lists,
        list_ms: list_latencies.summary(),
        watchers: config.watchers,
        writes: config.writes,
        deliveries: fan_out.delivery.len(),
        missing_deliveries: fan_out.missing,
        delivery_ms: fan_out.delivery.summary(),
        write_ms: fan_out.write.summary(),
        cpu_ms_per_list,
        cpu_ms_per_write,
    };
    if let Some(dir) = &config.out_dir {
        write_files(&case, &config, dir)?;
    }
    Ok(case)
}

/// Full LISTs timed from request to the last byte of the body (the client's decoding of
/// 10,000 pods is left out of the figure; the count is checked afterwards).
async fn lists(client: &kube::Client, config: &ApiserverBenchConfig) -> Result<Latencies, Error> {
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let path = format!("/api/v1/namespaces/{}/pods", config.namespace);
    let (client, all, expected) = (client.clone(), latencies.clone(), config.objects);
    for_each_concurrently(config.lists, config.list_clients, move |_| {
        let (client, all, path) = (client.clone(), all.clone(), path.clone());
        async move {
            let request = kube::core::Request::new(path)
                .list(&ListParams::default())
                .map_err(|e| api_error("list request", e))?;
            let started = Instant::now();
            let body = client
                .request_text(request)
                .await
                .map_err(|e| api_error("list pods", e))?;
            let took = started.elapsed();
            let items = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|list| list["items"].as_array().map(Vec::len))
                .unwrap_or(0);
            if items < expected {
                return Err(Error::Run(format!(
                    "a list returned {items} pods, {expected} were created"
                )));
            }
            all.lock().unwrap_or_else(|e| e.into_inner()).record(took);
            Ok(())
        }
    })
    .await?;
    let latencies = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(latencies)
}

struct FanOut {
    delivery: Latencies,
    write: Latencies,
    missing: u64,
}

async fn fan_out(pods: &Api<Pod>, config: &ApiserverBenchConfig) -> Result<FanOut, Error> {
    let target = "measure-0";
    // From the collection's current revision: only the writes below are delivered (from the
    // pod's own older revision every watcher would first replay the creation of every pod).
    let from = pods
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(|e| api_error("list pods", e))?
        .metadata
        .resource_version
        .unwrap_or_default();
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; config.writes]));
    let mut watchers = tokio::task::JoinSet::new();
    let params = WatchParams::default()
        .fields(&format!("metadata.name={target}"))
        .timeout(290);
    for _ in 0..config.watchers {
        let stream = pods
            .watch(&params, &from)
            .await
            .map_err(|e| api_error("watch pods", e))?;
        let (sent, writes) = (sent.clone(), config.writes);
        watchers.spawn(async move {
            let mut latencies = Latencies::new();
            let mut seen = vec![false; writes];
            let mut received = 0usize;
            let mut stream = stream.boxed();
            while received < writes {
                let Ok(Some(event)) = stream.try_next().await else {
                    break;
                };
                let WatchEvent::Modified(pod) = event else {
                    continue;
                };
                let now = Instant::now();
                let seq = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SEQ_LABEL))
                    .and_then(|s| s.parse::<usize>().ok());
                let Some(seq) = seq.filter(|s| *s < writes) else {
                    continue;
                };
                if std::mem::replace(&mut seen[seq], true) {
                    continue;
                }
                received += 1;
                let at = sent.lock().unwrap_or_else(|e| e.into_inner())[seq];
                if let Some(at) = at {
                    latencies.record(now.saturating_duration_since(at));
                }
            }
            (latencies, (writes - received) as u64)
        });
    }
    // Every watch is registered before the first write.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut write_latencies = Latencies::new();
    let params = PatchParams::default();
    let mut next = Instant::now();
    for seq in 0..config.writes {
        tokio::time::sleep_until(next.into()).await;
        next += config.write_interval;
        let patch = serde_json::json!({ "metadata": { "labels": { SEQ_LABEL: seq.to_string() } } });
        let started = Instant::now();
        sent.lock().unwrap_or_else(|e| e.into_inner())[seq] = Some(started);
        pods.patch(target, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error("patch pod", e))?;
        write_latencies.record(started.elapsed());
    }
    let mut delivery = Latencies::new();
    let mut missing = 0;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(done) = watchers.join_next().await {
            if let Ok((latencies, lost)) = done {
                delivery.merge(&latencies);
                missing += lost;
            }
        }
    })
    .await;
    if drained.is_err() {
        // Watchers still waiting count every write they have not seen.
        let left = watchers.len() as u64;
        watchers.abort_all();
        missing += left * config.writes as u64;
    }
    Ok(FanOut {
        delivery,
        write: write_latencies,
        missing,
    })
}

/// One case as text, then the JSON line if asked.
pub fn render(case: &ApiserverBenchCase, json: bool) -> String {
    let mut out = format!(
        "{}: list of {} pods ×{}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
         {}: {} watchers × {} writes: {} deliveries ({} missing), write sent → event received \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (the write itself: p50 {:.1} ms, p99 {:.1} ms)\n",
        case.case,
        case.objects,
        case.lists,
        case.list_ms.p50,
        case.list_ms.p90,
        case.list_ms.p99,
        case.list_ms.max,
        case.case,
        case.watchers,
        case.writes,
        case.deliveries,
        case.missing_deliveries,
        case.delivery_ms.p50,
        case.delivery_ms.p90,
        case.delivery_ms.p99,
        case.delivery_ms.max,
        case.write_ms.p50,
        case.write_ms.p99,
    );
    let cpu = |m: &BTreeMap<String, f64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  CPU ms per list: {}", cpu(&case.cpu_ms_per_list));
    let _ = writeln!(out, "  CPU ms per write: {}", cpu(&case.cpu_ms_per_write));
    if json {
        let line = serde_json::json!({
            "list_p99_ms": case.list_ms.p99,
            "watch_p99_ms": case.delivery_ms.p99,
            "missing_deliveries": case.missing_deliveries,
            "case": case,
        });
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The Markdown table of every case.
pub fn markdown(report: &ApiserverBenchReport) -> String {
    let mut md = String::from("# skiff bench apiserver\n\n");
    if let Some(label) = &report.label {
        let _ = writeln!(md, "{label}\n");
    }
    if let Some(command) = &report.command_line {
        let _ = writeln!(md, "Command: `{command}`\n");
    }
    md.push_str(
        "| case | pods | list p50 ms | list p99 ms | watchers × writes | delivery p50 ms | delivery p99 ms | missing | write p99 ms | API server CPU ms per list | API server CPU ms per write |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in &report.cases {
        let cpu = |m: &BTreeMap<String, f64>| {
            m.get("apiserver")
                .map_or("-".to_string(), |v| format!("{v:.2}"))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {} × {} | {:.1} | {:.1} | {} | {:.1} | {} | {} |",
            c.case,
            c.objects,
            c.list_ms.p50,
            c.list_ms.p99,
            c.watchers,
            c.writes,
            c.delivery_ms.p50,
            c.delivery_ms.p99,
            c.missing_deliveries,
            c.write_ms.p99,
            cpu(&c.cpu_ms_per_list),
            cpu(&c.cpu_ms_per_write)
        );
    }
    md
}

/// Adds `case` to `<dir>/<name>.json` (replacing a case of the same name) and rewrites
/// `<name>.md` and `<name>.png` (delivery latency quantiles per case).
fn write_files(
    case: &ApiserverBenchCase,
    config: &ApiserverBenchConfig,
    dir: &std::path::Path,
) -> Result<(), Error> {
    let io =
        |what: &std::path::Path, e: std::io::Error| Error::Run(format!("{}: {e}", what.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let json_path = dir.join(format!("{}.json", config.name));
    let mut report: ApiserverBenchReport = std::fs::read(&json_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    report.label = config.label.clone().or(report.label);
    report.command_line = config.command_line.clone().or(report.command_line);
    report.cases.retain(|c| c.case != case.case);
    report.cases.push(case.clone());
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Run(e.to_string()))?;
    std::fs::write(&json_path, json).map_err(|e| io(&json_path, e))?;
    let md_path = dir.join(format!("{}.md", config.name));
    let mut md = markdown(&report);
    let _ = writeln!(md, "\n![watch delivery latency]({}.png)", config.name);
    std::fs::write(&md_path, md).map_err(|e| io(&md_path, e))?;
    let quantiles: Vec<(String, Vec<f64>)> = report
        .cases
        .iter()
        .map(|c| {
            let d = &c.delivery_ms;
            (c.case.clone(), vec![d.p50, d.p90, d.p99, d.p999, d.max])
        })
        .collect();
    let series: Vec<(&str, &[f64])> = quantiles
        .iter()
        .map(|(name, values)| (name.as_str(), values.as_slice()))
        .collect();
    crate::chart::render_series_with_axes(
        &dir.join(format!("{}.png", config.name)),
        "skiff bench apiserver: write sent → watch event received",
        (
            "quantile: 1 = p50, 2 = p90, 3 = p99, 4 = p99.9, 5 = max",
            "ms",
        ),
        &series,
    )
    .map_err(Error::Run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ApiserverBenchConfig {
        ApiserverBenchConfig {
            kubeconfig: None,
            namespace: "bench-apiserver".into(),
            objects: 10,
            create_clients: 4,
            lists: 3,
            list_clients: 1,
            watchers: 2,
            writes: 3,
            write_interval: Duration::from_millis(10),
            store_endpoints: Vec::new(),
            keep: false,
            out_dir: None,
            name: "n".into(),
            case: "c".into(),
            label: None,
            command_line: None,
        }
    }

    #[test]
    fn counts_are_checked() {
        assert!(config().validate().is_ok());
        let err = ApiserverBenchConfig {
            watchers: 0,
            ..config()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().contains("--watchers must be between 1 and"),
            "{err}"
        );
    }

    #[test]
    fn cases_accumulate_under_one_name_and_a_rerun_replaces_its_case() {
        let dir = tempfile::tempdir().unwrap();
        let mut latencies = Latencies::new();
        latencies.record(Duration::from_millis(5));
        let case = |name: &str| ApiserverBenchCase {
            case: name.into(),
            objects: 10,
            lists: 3,
            list_ms: latencies.summary(),
            watchers: 2,
            writes: 3,
            deliveries: 6,
            missing_deliveries: 0,
            delivery_ms: latencies.summary(),
            write_ms: latencies.summary(),
            cpu_ms_per_list: BTreeMap::from([("apiserver".to_string(), 1.5)]),
            cpu_ms_per_write: BTreeMap::new(),
        };
        let cfg = config();
        for name in ["watch cache", "no watch cache", "watch cache"] {
            // No font on the machine only fails the chart, after the JSON and Markdown.
            let _ = write_files(&case(name), &cfg, dir.path());
        }
        let report: ApiserverBenchReport =
            serde_json::from_slice(&std::fs::read(dir.path().join("n.json")).unwrap()).unwrap();
        let names: Vec<&str> = report.cases.iter().map(|c| c.case.as_str()).collect();
        assert_eq!(names, ["no watch cache", "watch cache"]);
        let md = std::fs::read_to_string(dir.path().join("n.md")).unwrap();
        assert!(
            md.contains("| watch cache | 10 | 5.0 | 5.0 | 2 × 3 |"),
            "{md}"
        );
        assert!(
            render(&case("x"), true)
                .lines()
                .last()
                .unwrap()
                .contains("\"list_p99_ms\":5.0")
        );
    }
}
