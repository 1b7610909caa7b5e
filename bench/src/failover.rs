//! `skiff bench failover`: how long writes stop when the leader dies, skiff against real
//! etcd in the same harness.
//!
//! Procedure, for each system in turn (3 members on loopback, heartbeat 100 ms, election
//! timeout 1000 ms on both, each with its defaults (skiff's pre-vote is on by default),
//! data dirs side by side):
//! 1. Start the cluster and wait until every member serves a linearizable read.
//! 2. For each of `kills` rounds: find the leader (Status on every member), make sure a
//!    write is acknowledged, `kill -9` the leader (time zero), then start a put every
//!    [`PROBE_INTERVAL`] on the survivors in turn, each with a [`PROBE_TIMEOUT`]; the
//!    failover time is from time zero to the first acknowledged put sent after it.
//!    Restart the killed member, wait until it serves again and the cluster has a
//!    leader, settle [`SETTLE`], next round.
//! 3. Write `<out>/<name>.md` (p50/p90/p99/max per system, skiff/etcd ratios, every
//!    round), `<out>/<name>.png` (every round's time, both systems) and `<out>/<name>.json`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use tokio::time::Instant;

use crate::Error;
use crate::compare::{Ports, System};

/// A new probe put this often while writes are down.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Each probe put gives up after this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// No round waits longer than this for the first acknowledged write.
pub const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// Pause between a restarted member serving again and the next kill.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Probes in flight at once (a named bound: at most this many puts outstanding).
pub const MAX_PROBES_IN_FLIGHT: usize = 512;

const HEARTBEAT_MS: u64 = 100;
const ELECTION_MS: u64 = 1000;
const MEMBERS: usize = 3;

/// Settings of a failover run.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    pub skiff_bin: PathBuf,
    pub etcd_bin: PathBuf,
    /// Leader kills per system.
    pub kills: usize,
    pub out_dir: PathBuf,
    pub name: String,
    pub work_dir: Option<PathBuf>,
    pub command_line: String,
}

/// What a run measured (the JSON file): milliseconds per round, per system.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverResults {
    pub skiff_ms: Vec<f64>,
    pub etcd_ms: Vec<f64>,
}

struct Member {
    name: String,
    args: Vec<String>,
    bin: PathBuf,
    log: PathBuf,
    endpoint: String,
    child: Option<Child>,
}

impl Member {
    fn start(&mut self) -> Result<(), Error> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::Run(format!("cannot open {}: {e}", self.log.display())))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("SKIFF_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::Run(format!("cannot start {}: {e}", self.bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, by the PID this harness started.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn members(
    system: System,
    config: &FailoverConfig,
    work: &Path,
    ports: &mut Ports,
) -> Result<Vec<Member>, Error> {
    let prefix = system.name();
    let (layout, initial_cluster) = crate::compare::layout(system, MEMBERS, ports)?;
    let mut members = Vec::new();
    for (name, client, peer) in layout {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let (bin, mut args) = match system {
            System::Skiff => (config.skiff_bin.clone(), vec!["store".to_string()]),
            System::Etcd => (
                config.etcd_bin.clone(),
                vec!["--logger=zap".into(), "--log-level=warn".into()],
            ),
        };
        args.extend([
            format!("--name={name}"),
            format!("--data-dir={}", work.join(format!("{name}.data")).display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={initial_cluster}"),
            "--initial-cluster-state=new".into(),
            format!("--initial-cluster-token=failover-{prefix}"),
            format!("--heartbeat-interval={HEARTBEAT_MS}"),
            format!("--election-timeout={ELECTION_MS}"),
        ]);
        let mut member = Member {
            log: work.join(format!("{name}.log")),
            name,
            args,
            bin,
            endpoint: format!("http://127.0.0.1:{client}"),
            child: None,
        };
        member.start()?;
        members.push(member);
    }
    Ok(members)
}

async fn channel(endpoint: &str) -> Option<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect()
        .await
        .ok()
}

/// Whether `endpoint` serves a linearizable read now.
async fn serves(endpoint: &str) -> bool {
    let Some(channel) = channel(endpoint).await else {
        return false;
    };
    let mut kv = KvClient::new(channel);
    let read = kv.range(RangeRequest {
        key: b"failover".to_vec(),
        ..Default::default()
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(2), read).await,
        Ok(Ok(_))
    )
}

/// The index of the member that says it leads, if one does.
async fn leader(members: &[Member]) -> Option<usize> {
    for (i, member) in members.iter().enumerate() {
        let Some(channel) = channel(&member.endpoint).await else {
            continue;
        };
        let mut maintenance = MaintenanceClient::new(channel);
        let status =
            tokio::time::timeout(Duration::from_secs(1), maintenance.status(StatusRequest {}))
                .await;
        if let Ok(Ok(status)) = status {
            let status = status.into_inner();
            if status.header.is_some_and(|h| h.member_id == status.leader) {
                return Some(i);
            }
        }
    }
    None
}

async fn wait_until(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() > deadline {
            return Err(Error::Run(format!("{what} within {} s", limit.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// One round: kill the leader, time the first acknowledged write after it.
async fn round(members: &mut [Member], round: usize) -> Result<Duration, Error> {
    let mut leading = None;
    wait_until("no leader", Duration::from_secs(30), async || {
        leading = leader(members).await;
        leading.is_some()
    })
    .await?;
    let leading = leading.unwrap_or(0);
    let survivors: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leading)
        .map(|(_, m)| m.endpoint.clone())
        .collect();
    let mut clients = Vec::new();
    for endpoint in &survivors {
        let channel = channel(endpoint)
            .await
            .ok_or_else(|| Error::Run(format!("cannot connect to {endpoint}")))?;
        clients.push(KvClient::new(channel));
    }
    let put = |value: String| PutRequest {
        key: b"failover".to_vec(),
        value: value.into_bytes(),
        ..Default::default()
    };
    clients[0]
        .put(put(format!("before-{round}")))
        .await
        .map_err(|e| Error::Run(format!("write before the kill failed: {e}")))?;

    members[leading].kill();
    let zero = Instant::now();
    let (acked, mut acks) = tokio::sync::mpsc::channel::<Instant>(MAX_PROBES_IN_FLIGHT);
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PROBES_IN_FLIGHT));
    let mut probe = 0usize;
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    let first = loop {
        tokio::select! {
            Some(at) = acks.recv() => break at,
            _ = ticker.tick() => {
                if zero.elapsed() > ROUND_LIMIT {
                    return Err(Error::Run(format!("no write acknowledged within {} s of the kill", ROUND_LIMIT.as_secs())));
                }
                let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
                let mut client = clients[probe % clients.len()].clone();
                let request = put(format!("probe-{round}-{probe}"));
                let acked = acked.clone();
                probe += 1;
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, client.put(request)).await {
                        let _ = acked.try_send(Instant::now());
                    }
                });
            }
        }
    };
    let took = first.saturating_duration_since(zero);

    members[leading].start()?;
    let endpoint = members[leading].endpoint.clone();
    wait_until(
        &format!("{} does not serve again", members[leading].name),
        Duration::from_secs(60),
        async || serves(&endpoint).await,
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    Ok(took)
}

async fn measure(
    system: System,
    config: &FailoverConfig,
    work: &Path,
    ports: &mut Ports,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<f64>, Error> {
    let dir = work.join(system.name());
    fs::create_dir_all(&dir).map_err(|e| Error::Run(e.to_string()))?;
    let mut members = members(system, config, &dir, ports)?;
    for member in &members {
        let endpoint = member.endpoint.clone();
        wait_until(
            &format!("{} not ready", member.name),
            Duration::from_secs(60),
            async || serves(&endpoint).await,
        )
        .await?;
    }
    progress.set_prefix(system.name());
    let mut times = Vec::new();
    for i in 0..config.kills {
        let took = round(&mut members, i).await?;
        times.push(took.as_secs_f64() * 1000.0);
        progress.set_message(format!("last {:.0} ms", took.as_secs_f64() * 1000.0));
        progress.inc(1);
    }
    Ok(times)
}

/// Runs the benchmark; returns the Markdown report's path.
pub fn run_blocking(config: FailoverConfig) -> Result<PathBuf, Error> {
    if config.kills == 0 {
        return Err(Error::Config("--kills must be positive".into()));
    }
    if !config.etcd_bin.exists() {
        return Err(Error::Config(format!(
            "{} not found: install Debian's etcd-server or pass --etcd-bin",
            config.etcd_bin.display()
        )));
    }
    fs::create_dir_all(&config.out_dir)
        .map_err(|e| Error::Run(format!("cannot create {}: {e}", config.out_dir.display())))?;
    let parent = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = parent.join(format!("skiff-failover-{}", std::process::id()));
    fs::create_dir_all(&work)
        .map_err(|e| Error::Run(format!("cannot create {}: {e}", work.display())))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Run(format!("cannot start runtime: {e}")))?;
    let progress = indicatif::ProgressBar::new((config.kills * 2) as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} kills {msg}")
    {
        progress.set_style(style.progress_chars("=> "));
    }
    let result = runtime.block_on(async {
        let mut ports = Ports::default();
        let skiff_ms = measure(System::Skiff, &config, &work, &mut ports, &progress).await?;
        let etcd_ms = measure(System::Etcd, &config, &work, &mut ports, &progress).await?;
        Ok::<_, Error>(FailoverResults { skiff_ms, etcd_ms })
    });
    progress.finish_and_clear();
    let _ = fs::remove_dir_all(&work);
    let results = result?;
    write_outputs(&config, &results)
}

/// The `q` quantile (nearest rank) of `values`.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn write_outputs(config: &FailoverConfig, results: &FailoverResults) -> Result<PathBuf, Error> {
    let base = config.out_dir.join(&config.name);
    let json = serde_json::to_string_pretty(results).map_err(|e| Error::Run(e.to_string()))?;
    fs::write(base.with_extension("json"), json).map_err(|e| Error::Run(e.to_string()))?;
    let png = base.with_extension("png");
    crate::chart::render_series(
        &png,
        "Writes down after a leader kill (ms), per round",
        &[("skiff", &results.skiff_ms), ("etcd", &results.etcd_ms)],
    )
    .map_err(Error::Run)?;
    let mut md = String::new();
    let _ = writeln!(md, "# Failover: skiff vs etcd\n");
    let _ = writeln!(md, "Command: `{}`\n", config.command_line);
    let _ = writeln!(
        md,
        "3 members on loopback each, heartbeat {HEARTBEAT_MS} ms, election timeout {ELECTION_MS} ms, skiff and etcd with their defaults (skiff's pre-vote on); {} leader kills (SIGKILL) per system; time from the kill to the first acknowledged put (a put every {} ms on the survivors).\n",
        config.kills,
        PROBE_INTERVAL.as_millis()
    );
    let _ = writeln!(md, "| | p50 ms | p90 ms | p99 ms | max ms |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (name, values) in [("skiff", &results.skiff_ms), ("etcd", &results.etcd_ms)] {
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            quantile(values, 0.5),
            quantile(values, 0.9),
            quantile(values, 0.99),
            quantile(values, 1.0)
        );
    }
    let ratio = |q| quantile(&results.skiff_ms, q) / quantile(&results.etcd_ms, q);
    let _ = writeln!(
        md,
        "\nskiff/etcd (lower is better): p50 {:.2}, p99 {:.2}\n",
        ratio(0.5),
        ratio(0.99)
    );
    let _ = writeln!(md, "![failover]({}.png)\n", config.name);
    let _ = writeln!(md, "| round | skiff ms | etcd ms |\n|---:|---:|---:|");
    for (i, (s, e)) in results.skiff_ms.iter().zip(&results.etcd_ms).enumerate() {
        let _ = writeln!(md, "| {} | {s:.0} | {e:.0} |", i + 1);
    }
    let path = base.with_extension("md");
    fs::write(&path, md).map_err(|e| Error::Run(e.to_string()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 10.0);
        assert_eq!(quantile(&values, 0.99), 20.0);
        assert_eq!(quantile(&values, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
