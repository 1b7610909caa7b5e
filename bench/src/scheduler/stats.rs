//! What one phase of `skiff bench scheduler` measured, and the figures made of it (pure): when
//! each pod's create was sent and when it was first seen bound → pods per second (first create
//! to last bound), create→bound percentiles, pods bound in each second; plus the report files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::SchedulerBenchReport;
use super::objects::Profile;
use crate::Error;
use crate::report::Latencies;

/// Per pod: offsets from the phase's start of its create request and of its binding.
#[derive(Debug, Clone)]
pub struct Timeline {
    created: Vec<Option<Duration>>,
    bound: Vec<Option<Duration>>,
    bound_count: usize,
}

impl Timeline {
    pub fn new(pods: usize) -> Timeline {
        Timeline {
            created: vec![None; pods],
            bound: vec![None; pods],
            bound_count: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.created.len()
    }

    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
    }

    pub fn mark_created(&mut self, pod: usize, at: Duration) {
        if let Some(slot) = self.created.get_mut(pod) {
            slot.get_or_insert(at);
        }
    }

    /// Records the first binding seen of `pod`; `false` if it was already bound (or unknown).
    pub fn mark_bound(&mut self, pod: usize, at: Duration) -> bool {
        match self.bound.get_mut(pod) {
            Some(slot @ None) => {
                *slot = Some(at);
                self.bound_count += 1;
                true
            }
            _ => false,
        }
    }

    pub fn bound_count(&self) -> usize {
        self.bound_count
    }

    /// First create sent → last pod bound.
    pub fn span(&self) -> Option<Duration> {
        let first = self.created.iter().flatten().min()?;
        let last = self.bound.iter().flatten().max()?;
        Some(last.saturating_sub(*first))
    }

    /// Create → bound of every bound pod.
    pub fn latencies(&self) -> Latencies {
        let mut latencies = Latencies::new();
        for (created, bound) in self.created.iter().zip(&self.bound) {
            if let (Some(c), Some(b)) = (created, bound) {
                latencies.record(b.saturating_sub(*c));
            }
        }
        latencies
    }

    /// Pods bound in each whole second since the first create.
    pub fn bound_per_second(&self) -> Vec<f64> {
        let Some(first) = self.created.iter().flatten().min() else {
            return Vec::new();
        };
        let mut per_second: Vec<f64> = Vec::new();
        for bound in self.bound.iter().flatten() {
            let second = bound.saturating_sub(*first).as_secs() as usize;
            if per_second.len() <= second {
                per_second.resize(second + 1, 0.0);
            }
            per_second[second] += 1.0;
        }
        per_second
    }
}

/// One profile's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileResult {
    pub profile: &'static str,
    pub nodes: usize,
    pub pods: usize,
    pub bound: usize,
    pub seconds: f64,
    pub pods_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU milliseconds per bound pod: `apiserver`, `store` (all members), `scheduler`,
    /// `bench`, and `machine` (everything, for the share nobody above accounts for).
    pub cpu_ms_per_pod: BTreeMap<String, f64>,
    pub bound_per_second: Vec<f64>,
}

impl ProfileResult {
    pub fn new(
        profile: Profile,
        nodes: usize,
        timeline: &Timeline,
        cpu_ms_per_pod: BTreeMap<String, f64>,
    ) -> ProfileResult {
        let seconds = timeline.span().unwrap_or_default().as_secs_f64();
        let bound = timeline.bound_count();
        let latency = timeline.latencies().summary();
        ProfileResult {
            profile: profile.name(),
            nodes,
            pods: timeline.len(),
            bound,
            seconds,
            pods_per_sec: if seconds > 0.0 {
                bound as f64 / seconds
            } else {
                0.0
            },
            p50_ms: latency.p50,
            p90_ms: latency.p90,
            p99_ms: latency.p99,
            max_ms: latency.max,
            cpu_ms_per_pod,
            bound_per_second: timeline.bound_per_second(),
        }
    }

    pub fn all_bound(&self) -> bool {
        self.bound == self.pods
    }

    pub fn render_text(&self) -> String {
        let mut out = format!(
            "{}: {} of {} pods on {} nodes bound in {:.2} s: {:.1} pods/s; create→bound p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.profile,
            self.bound,
            self.pods,
            self.nodes,
            self.seconds,
            self.pods_per_sec,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms
        );
        if !self.cpu_ms_per_pod.is_empty() {
            let parts: Vec<String> = self
                .cpu_ms_per_pod
                .iter()
                .map(|(name, ms)| format!("{name} {ms:.2}"))
                .collect();
            let _ = write!(out, "\n  CPU ms per pod: {}", parts.join(", "));
        }
        out
    }
}

/// The `--json` line: the first profile's `pods_per_sec`, `p50_ms` and `p99_ms` at the top
/// level (the one-profile case), every profile under `profiles`.
pub fn json_line(report: &SchedulerBenchReport) -> String {
    let first = report.profiles.first();
    serde_json::json!({
        "pods_per_sec": first.map(|p| p.pods_per_sec),
        "p50_ms": first.map(|p| p.p50_ms),
        "p99_ms": first.map(|p| p.p99_ms),
        "nodes": report.nodes,
        "pods": report.pods,
        "profiles": report.profiles,
    })
    .to_string()
}

/// The Markdown table of a report.
pub fn markdown(report: &SchedulerBenchReport) -> String {
    let mut md = String::from("# skiff bench scheduler\n\n");
    if let Some(label) = &report.label {
        let _ = writeln!(md, "{label}\n");
    }
    if let Some(command) = &report.command_line {
        let _ = writeln!(md, "Command: `{command}`\n");
    }
    let _ = writeln!(
        md,
        "{} nodes, {} pods per profile, {} concurrent creators. Latency is create request sent → pod seen bound by a watch.\n",
        report.nodes, report.pods, report.clients
    );
    md.push_str("| profile | bound | seconds | pods/s | p50 ms | p90 ms | p99 ms | max ms | CPU ms per pod |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for p in &report.profiles {
        let cpu: Vec<String> = p
            .cpu_ms_per_pod
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.2}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {}/{} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            p.profile,
            p.bound,
            p.pods,
            p.seconds,
            p.pods_per_sec,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.max_ms,
            cpu.join(", ")
        );
    }
    md
}

/// Writes `<dir>/<name>.md`, `.json` and `.png` (pods bound per second, one line per profile).
pub fn write_files(report: &SchedulerBenchReport, dir: &Path, name: &str) -> Result<(), Error> {
    let io = |what: &Path, e: std::io::Error| Error::Run(format!("{}: {e}", what.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let md_path = dir.join(format!("{name}.md"));
    let mut md = markdown(report);
    let _ = writeln!(md, "\n![pods bound per second]({name}.png)");
    std::fs::write(&md_path, md).map_err(|e| io(&md_path, e))?;
    let json_path = dir.join(format!("{name}.json"));
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::Run(e.to_string()))?;
    std::fs::write(&json_path, json).map_err(|e| io(&json_path, e))?;
    let series: Vec<(&str, &[f64])> = report
        .profiles
        .iter()
        .map(|p| (p.profile, p.bound_per_second.as_slice()))
        .collect();
    let png = dir.join(format!("{name}.png"));
    crate::chart::render_series_with_axes(
        &png,
        "skiff bench scheduler: pods bound per second",
        ("second of the run", "pods bound"),
        &series,
    )
    .map_err(Error::Run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_timeline_measures_first_create_to_last_bound() {
        let mut t = Timeline::new(3);
        t.mark_created(0, ms(100));
        t.mark_created(1, ms(200));
        t.mark_created(2, ms(300));
        assert!(t.mark_bound(0, ms(400)));
        assert!(!t.mark_bound(0, ms(900)), "a pod is bound once");
        assert!(t.mark_bound(2, ms(1_600)));
        assert!(!t.mark_bound(7, ms(1_600)), "unknown pods are ignored");
        assert_eq!(t.bound_count(), 2);
        assert_eq!(t.span(), Some(ms(1_500)));
        let summary = t.latencies().summary();
        assert!((summary.min - 300.0).abs() < 1.0, "{summary:?}");
        assert!((summary.max - 1_300.0).abs() < 2.0, "{summary:?}");
        assert_eq!(t.bound_per_second(), vec![1.0, 1.0]);
        let result = ProfileResult::new(Profile::Basic, 5, &t, BTreeMap::new());
        assert!(!result.all_bound());
        assert!((result.pods_per_sec - 2.0 / 1.5).abs() < 1e-9);
        assert!(
            result
                .render_text()
                .starts_with("basic: 2 of 3 pods on 5 nodes")
        );
    }

    #[test]
    fn an_empty_timeline_reports_zero_not_nan() {
        let t = Timeline::new(2);
        assert_eq!(t.span(), None);
        let result = ProfileResult::new(Profile::Spread, 1, &t, BTreeMap::new());
        assert_eq!(result.pods_per_sec, 0.0);
        assert!(t.bound_per_second().is_empty());
    }

    #[test]
    fn the_json_line_leads_with_the_first_profile() {
        let mut t = Timeline::new(1);
        t.mark_created(0, ms(0));
        t.mark_bound(0, ms(10));
        let report = SchedulerBenchReport {
            nodes: 1,
            pods: 1,
            clients: 1,
            label: None,
            command_line: None,
            profiles: vec![ProfileResult::new(Profile::Basic, 1, &t, BTreeMap::new())],
        };
        let line: serde_json::Value = serde_json::from_str(&json_line(&report)).unwrap();
        assert_eq!(line["pods_per_sec"], 100.0);
        assert_eq!(line["profiles"][0]["profile"], "basic");
        assert!(markdown(&report).contains("| basic | 1/1 |"));
    }
}
