//! `skiff bench proxy`: what one sync of `skiff proxy` costs at scale — `--services`
//! Services × `--endpoints-per-service` endpoints, programmed into a network namespace of the benchmark's
//! own (never the machine's rules): the first full sync (render + `iptables-restore`, wall
//! and CPU), then `--changes` single-endpoint changes each synced as the proxy does (partial
//! batch: the changed chains only) with change → rules-programmed latency, then a full
//! resync. The goal (issue 17) is p99 ≤ 100 ms per change at 1,000 × 10.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use skiff_proxy::iptables::{Batch, Masquerade, Written, render_since};
use skiff_proxy::model::{Endpoint, ServicePort};

use crate::Error;

/// The issue's goal for one change at 1,000 × 10.
pub const GOAL_P99_MS: f64 = 100.0;

#[derive(Clone, Debug)]
pub struct ProxyBenchConfig {
    pub services: usize,
    pub endpoints: usize,
    pub changes: usize,
    pub out_dir: Option<PathBuf>,
    pub name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyBenchReport {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Rules in the nat table after the first sync.
    pub nat_rules: usize,
    pub full_sync_ms: f64,
    pub full_sync_render_ms: f64,
    /// CPU of `iptables-restore` for the full sync (user + system).
    pub full_sync_restore_cpu_ms: f64,
    pub resync_ms: f64,
    pub changes: usize,
    pub change_p50_ms: f64,
    pub change_p90_ms: f64,
    pub change_p99_ms: f64,
    pub change_max_ms: f64,
    pub change_render_p50_ms: f64,
    /// Per change, in order (ms).
    pub change_latencies_ms: Vec<f64>,
}

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Result<Netns, Error> {
        let name = format!("skiff-bench-proxy-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| Error::Run(format!("ip netns add: {e}")))?;
        if !out.status.success() {
            return Err(Error::Run(format!(
                "ip netns add {name} (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// `iptables-restore --noflush` of `batch` inside `ns`.
fn restore(ns: &Netns, batch: &Batch) -> Result<(), Error> {
    // nsenter joins the network namespace only (`ip netns exec` would also set up a mount
    // namespace per call, a cost the proxy, running in its node's namespace, never pays).
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.0))
        .args(["iptables-restore", "-w", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Run(format!("iptables-restore: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(batch.text.as_bytes())
            .map_err(|e| Error::Run(format!("iptables-restore: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Run(format!("iptables-restore: {e}")))?;
    if !out.status.success() {
        return Err(Error::Run(format!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The synthetic Services: ClusterIPs from 10.43.0.0/16, endpoints from 10.42.0.0/16.
pub fn service_ports(services: usize, endpoints: usize) -> Vec<ServicePort> {
    (0..services)
        .map(|i| ServicePort {
            name: format!("bench/svc-{i}:http"),
            cluster_ip: format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250),
            port: 80,
            protocol: "tcp".into(),
            node_port: None,
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            endpoints: (0..endpoints)
                .map(|j| endpoint((i * endpoints + j) as u32))
                .collect(),
        })
        .collect()
}

fn endpoint(n: u32) -> Endpoint {
    Endpoint {
        ip: format!("10.42.{}.{}", n / 250, 1 + n % 250),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        local: false,
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn run(config: ProxyBenchConfig) -> Result<ProxyBenchReport, Error> {
    if config.services == 0 || config.endpoints == 0 || config.services > 60_000 {
        return Err(Error::Config(
            "--services must be 1..=60000 and --endpoints-per-service at least 1".into(),
        ));
    }
    let ns = Netns::create()?;
    let masquerade = Masquerade {
        all: false,
        cluster_cidr: Some("10.42.0.0/16".into()),
    };
    let mut ports = service_ports(config.services, config.endpoints);

    let started = Instant::now();
    let batch = render_since(&ports, &masquerade, &Written::default(), true);
    let full_sync_render_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cpu_before = children_cpu_ms();
    restore(&ns, &batch)?;
    let full_sync_restore_cpu_ms = children_cpu_ms() - cpu_before;
    let full_sync_ms = started.elapsed().as_secs_f64() * 1000.0;
    let nat_rules = batch.text.lines().filter(|l| l.starts_with("-A ")).count();
    let mut written = batch.written;

    let bar = indicatif::ProgressBar::new(config.changes as u64);
    let mut latencies = Vec::with_capacity(config.changes);
    let mut renders = Vec::with_capacity(config.changes);
    let first_new_ip = (config.services * config.endpoints) as u32;
    for k in 0..config.changes {
        // One endpoint of one Service replaced (a pod rescheduled).
        let service = (k * 7919) % ports.len();
        let slot = k % config.endpoints;
        ports[service].endpoints[slot] = endpoint(first_new_ip + k as u32);
        let started = Instant::now();
        let batch = render_since(&ports, &masquerade, &written, false);
        renders.push(started.elapsed().as_secs_f64() * 1000.0);
        restore(&ns, &batch)?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        written = batch.written;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let started = Instant::now();
    let batch = render_since(&ports, &masquerade, &written, true);
    restore(&ns, &batch)?;
    let resync_ms = started.elapsed().as_secs_f64() * 1000.0;

    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    renders.sort_by(f64::total_cmp);
    let report = ProxyBenchReport {
        services: config.services,
        endpoints_per_service: config.endpoints,
        nat_rules,
        full_sync_ms,
        full_sync_render_ms,
        full_sync_restore_cpu_ms,
        resync_ms,
        changes: config.changes,
        change_p50_ms: quantile(&sorted, 0.5),
        change_p90_ms: quantile(&sorted, 0.9),
        change_p99_ms: quantile(&sorted, 0.99),
        change_max_ms: sorted.last().copied().unwrap_or(0.0),
        change_render_p50_ms: quantile(&renders, 0.5),
        change_latencies_ms: latencies,
    };
    if let Some(dir) = &config.out_dir {
        write_outputs(dir, &config.name, &report)?;
    }
    Ok(report)
}

/// The run as text (or one JSON line).
pub fn render(report: &ProxyBenchReport, json: bool) -> String {
    if json {
        return format!("{}\n", serde_json::to_string(report).unwrap_or_default());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} services × {} endpoints: {} nat rules",
        report.services, report.endpoints_per_service, report.nat_rules
    );
    let _ = writeln!(
        out,
        "first full sync {:.1} ms (render {:.1} ms, iptables-restore CPU {:.1} ms); full resync {:.1} ms",
        report.full_sync_ms,
        report.full_sync_render_ms,
        report.full_sync_restore_cpu_ms,
        report.resync_ms
    );
    let _ = writeln!(
        out,
        "{} endpoint changes, change → rules programmed: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (render p50 {:.1} ms; goal p99 ≤ {GOAL_P99_MS} ms)",
        report.changes,
        report.change_p50_ms,
        report.change_p90_ms,
        report.change_p99_ms,
        report.change_max_ms,
        report.change_render_p50_ms
    );
    out
}

/// `<name>.json`, `<name>.md` and `<name>.png` (latency per change) in `dir`.
pub fn write_outputs(dir: &Path, name: &str, report: &ProxyBenchReport) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Run(format!("{}: {e}", dir.display())))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::Run(e.to_string()))?;
    std::fs::write(dir.join(format!("{name}.json")), json)
        .map_err(|e| Error::Run(e.to_string()))?;
    let md = format!(
        "# skiff bench proxy: {name}\n\n```\n{}```\n\n![change → rules per change](./{name}.png)\n",
        render(report, false)
    );
    std::fs::write(dir.join(format!("{name}.md")), md).map_err(|e| Error::Run(e.to_string()))?;
    crate::chart::render_series_with_axes(
        &dir.join(format!("{name}.png")),
        "endpoint change → rules programmed",
        ("change", "ms"),
        &[("change → rules", &report.change_latencies_ms)],
    )
    .map_err(Error::Run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_services_have_distinct_addresses() {
        let ports = service_ports(1000, 10);
        let ips: std::collections::BTreeSet<_> = ports.iter().map(|p| &p.cluster_ip).collect();
        assert_eq!(ips.len(), 1000);
        let eps: std::collections::BTreeSet<_> = ports
            .iter()
            .flat_map(|p| p.endpoints.iter().map(|e| &e.ip))
            .collect();
        assert_eq!(eps.len(), 10_000);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
