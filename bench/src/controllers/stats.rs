//! What `skiff bench controllers` measured, and the figures made of it (pure): per phase the
//! seconds from the request to the end condition, pods per second, CPU milliseconds per pod
//! of each component and the timeline of the Deployment's counts; the text, `--json` line,
//! Markdown and chart of a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::objects::Capacity;
use crate::Error;

/// The goal: this many replicas available within [`GOAL_SECONDS`].
pub const GOAL_REPLICAS: usize = 1_000;
pub const GOAL_SECONDS: f64 = 10.0;
/// Most points one series of the chart has (its sampling step is chosen to stay below).
const CHART_POINTS_MAX: f64 = 200.0;
/// Sampling steps of the chart, in seconds, smallest first.
const CHART_STEPS: [f64; 9] = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// The Deployment's counts at one moment of a phase (every change the watch saw).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Since the phase's request was sent.
    pub seconds: f64,
    /// `status.availableReplicas` (cleanup: 0).
    pub available: i32,
    /// `status.updatedReplicas` (cleanup: 0).
    pub updated: i32,
    /// `status.replicas`, every ReplicaSet's pods (cleanup: the run's pods left).
    pub pods: i32,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// `create`, `rolling update` or `cleanup`.
    pub phase: &'static str,
    /// The end condition was seen before the timeout.
    pub completed: bool,
    /// Request sent → end condition seen (or → the timeout).
    pub seconds: f64,
    /// The Deployment's `replicas`.
    pub replicas: usize,
    /// The last counts seen.
    pub available: i32,
    pub updated: i32,
    pub pods: i32,
    /// `replicas / seconds` (0 when not completed).
    pub pods_per_sec: f64,
    /// CPU milliseconds per replica over the phase: `apiserver`, `store` (all members),
    /// `scheduler`, `controller-manager`, `node-sim` (with `--node-sim-pid`), `bench`, and
    /// `machine` (everything, for the share nobody above accounts for).
    pub cpu_ms_per_pod: BTreeMap<String, f64>,
    pub timeline: Vec<Point>,
}

impl PhaseResult {
    /// A phase's result from what its wait saw.
    pub fn new(
        phase: &'static str,
        replicas: usize,
        seconds: f64,
        completed: bool,
        timeline: Vec<Point>,
        cpu_ms_per_pod: BTreeMap<String, f64>,
    ) -> PhaseResult {
        let last = timeline.last().copied();
        PhaseResult {
            phase,
            completed,
            seconds,
            replicas,
            available: last.map_or(0, |p| p.available),
            updated: last.map_or(0, |p| p.updated),
            pods: last.map_or(0, |p| p.pods),
            pods_per_sec: if completed && seconds > 0.0 {
                replicas as f64 / seconds
            } else {
                0.0
            },
            cpu_ms_per_pod,
            timeline,
        }
    }

    /// One paragraph: the phase's outcome, then its CPU per pod.
    pub fn render_text(&self) -> String {
        let mut out = match (self.phase, self.completed) {
            ("cleanup", true) => format!(
                "cleanup: the Deployment's {} pods gone in {:.2} s ({:.1} pods/s)",
                self.replicas, self.seconds, self.pods_per_sec
            ),
            ("cleanup", false) => format!(
                "cleanup: {} pods left after {:.2} s",
                self.pods, self.seconds
            ),
            (phase, true) => format!(
                "{phase}: {} of {} replicas available ({} updated) in {:.2} s ({:.1} pods/s)",
                self.available, self.replicas, self.updated, self.seconds, self.pods_per_sec
            ),
            (phase, false) => format!(
                "{phase}: NOT complete after {:.2} s: {} available, {} updated, {} pods of {} replicas",
                self.seconds, self.available, self.updated, self.pods, self.replicas
            ),
        };
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

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ControllersBenchReport {
    pub replicas: usize,
    /// The Ready nodes found before the run and the pods they hold.
    pub capacity: Capacity,
    pub label: Option<String>,
    pub command_line: Option<String>,
    pub create: PhaseResult,
    /// Not run when the create did not complete.
    pub rolling_update: Option<PhaseResult>,
    /// Not run with `--keep` (or when it failed: see `cleanup_error`).
    pub cleanup: Option<PhaseResult>,
    /// Why the cleanup failed outright (an API error, not a timeout).
    pub cleanup_error: Option<String>,
}

impl ControllersBenchReport {
    /// The phases that ran, in order.
    pub fn phases(&self) -> Vec<&PhaseResult> {
        std::iter::once(&self.create)
            .chain(&self.rolling_update)
            .chain(&self.cleanup)
            .collect()
    }

    /// Create and rolling update completed, and the cleanup too unless it was skipped.
    pub fn completed(&self) -> bool {
        self.create.completed
            && self.rolling_update.as_ref().is_some_and(|p| p.completed)
            && self.cleanup.as_ref().is_none_or(|p| p.completed)
            && self.cleanup_error.is_none()
    }
}

/// The `--json` line: each phase's seconds at the top level, every phase under `phases`
/// without its timeline (one point per change: the `.json` file has it).
pub fn json_line(report: &ControllersBenchReport) -> String {
    let seconds = |p: Option<&PhaseResult>| p.map(|p| p.seconds);
    let phases: Vec<serde_json::Value> = report
        .phases()
        .into_iter()
        .map(|p| {
            let mut phase = serde_json::to_value(p).unwrap_or_default();
            if let Some(fields) = phase.as_object_mut() {
                fields.remove("timeline");
            }
            phase
        })
        .collect();
    serde_json::json!({
        "replicas": report.replicas,
        "nodes": report.capacity.ready_nodes,
        "pod_capacity": report.capacity.pods,
        "completed": report.completed(),
        "create_seconds": report.create.seconds,
        "create_pods_per_sec": report.create.pods_per_sec,
        "rolling_update_seconds": seconds(report.rolling_update.as_ref()),
        "cleanup_seconds": seconds(report.cleanup.as_ref()),
        "cleanup_error": report.cleanup_error,
        "phases": phases,
    })
    .to_string()
}

/// The Markdown report: the setup, one row per phase.
pub fn markdown(report: &ControllersBenchReport) -> String {
    let mut md = String::from("# skiff bench controllers\n\n");
    if let Some(label) = &report.label {
        let _ = writeln!(md, "{label}\n");
    }
    if let Some(command) = &report.command_line {
        let _ = writeln!(md, "Command: `{command}`\n");
    }
    let _ = writeln!(
        md,
        "One Deployment of {} busybox replicas (no requests, RollingUpdate 25 % surge / 25 % unavailable) on {} Ready nodes holding {} pods. \
         Each phase is timed from its request (create; image patch; delete with background propagation) to its end as a watch sees it: \
         `availableReplicas == replicas`; `updatedReplicas == availableReplicas == status.replicas == replicas`; no pod and no ReplicaSet left. \
         Goal (the issue): {GOAL_REPLICAS} replicas available in ≤ {GOAL_SECONDS} s.\n",
        report.replicas, report.capacity.ready_nodes, report.capacity.pods
    );
    md.push_str("| phase | completed | seconds | pods/s | CPU ms per pod |\n");
    md.push_str("|---|---|---|---|---|\n");
    for p in report.phases() {
        let cpu: Vec<String> = p
            .cpu_ms_per_pod
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.2}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.1} | {} |",
            p.phase,
            if p.completed { "yes" } else { "no" },
            p.seconds,
            p.pods_per_sec,
            cpu.join(", ")
        );
    }
    if let Some(err) = &report.cleanup_error {
        let _ = writeln!(md, "\nThe cleanup failed: {err}");
    }
    md
}

/// The chart's sampling step: the smallest of [`CHART_STEPS`] giving at most
/// [`CHART_POINTS_MAX`] points over `seconds`.
pub fn chart_step(seconds: f64) -> f64 {
    CHART_STEPS
        .into_iter()
        .find(|step| seconds / step <= CHART_POINTS_MAX)
        .unwrap_or(CHART_STEPS[CHART_STEPS.len() - 1])
}

/// `value` of the timeline at every `step` from `step` to `end` (the last point at or
/// before each instant; 0 before the first).
pub fn sample(timeline: &[Point], step: f64, end: f64, value: impl Fn(&Point) -> i32) -> Vec<f64> {
    let samples = (end / step).ceil().max(1.0) as usize;
    (1..=samples)
        .map(|i| {
            let at = step * i as f64;
            timeline
                .iter()
                .take_while(|p| p.seconds <= at + 1e-9)
                .last()
                .map_or(0.0, |p| f64::from(value(p)))
        })
        .collect()
}

/// Writes `<dir>/<name>.md`, `.json` and `.png` (available pods over time in both phases,
/// and the updated pods of the rolling update).
pub fn write_files(report: &ControllersBenchReport, dir: &Path, name: &str) -> Result<(), Error> {
    let io = |what: &Path, e: std::io::Error| Error::Run(format!("{}: {e}", what.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let md_path = dir.join(format!("{name}.md"));
    let mut md = markdown(report);
    let _ = writeln!(md, "\n![available pods over time]({name}.png)");
    std::fs::write(&md_path, md).map_err(|e| io(&md_path, e))?;
    let json_path = dir.join(format!("{name}.json"));
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::Run(e.to_string()))?;
    std::fs::write(&json_path, json).map_err(|e| io(&json_path, e))?;

    let phases = [Some(&report.create), report.rolling_update.as_ref()];
    let end = phases
        .iter()
        .flatten()
        .map(|p| p.seconds)
        .fold(0.0f64, f64::max);
    let step = chart_step(end);
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for phase in phases.into_iter().flatten() {
        series.push((
            format!("{}: available", phase.phase),
            sample(&phase.timeline, step, phase.seconds, |p| p.available),
        ));
    }
    if let Some(update) = &report.rolling_update {
        series.push((
            "rolling update: updated".into(),
            sample(&update.timeline, step, update.seconds, |p| p.updated),
        ));
    }
    let series: Vec<(&str, &[f64])> = series
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let png = dir.join(format!("{name}.png"));
    crate::chart::render_series_with_axes(
        &png,
        &format!(
            "skiff bench controllers: a Deployment of {} replicas",
            report.replicas
        ),
        (
            &format!("time since the request, in steps of {step} s"),
            "pods",
        ),
        &series,
    )
    .map_err(Error::Run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seconds: f64, available: i32, updated: i32, pods: i32) -> Point {
        Point {
            seconds,
            available,
            updated,
            pods,
        }
    }

    fn report() -> ControllersBenchReport {
        let create = PhaseResult::new(
            "create",
            4,
            2.0,
            true,
            vec![
                point(0.0, 0, 0, 0),
                point(0.5, 2, 2, 4),
                point(2.0, 4, 4, 4),
            ],
            BTreeMap::from([("apiserver".to_string(), 1.5)]),
        );
        let update = PhaseResult::new(
            "rolling update",
            4,
            1.0,
            true,
            vec![point(0.0, 4, 0, 4), point(1.0, 4, 4, 4)],
            BTreeMap::new(),
        );
        ControllersBenchReport {
            replicas: 4,
            capacity: Capacity {
                ready_nodes: 1,
                pods: 110,
            },
            label: None,
            command_line: None,
            create,
            rolling_update: Some(update),
            cleanup: None,
            cleanup_error: None,
        }
    }

    #[test]
    fn a_phase_reports_its_last_counts_and_rate() {
        let report = report();
        assert_eq!(report.create.available, 4);
        assert!((report.create.pods_per_sec - 2.0).abs() < 1e-9);
        assert!(
            report.create.render_text().starts_with(
                "create: 4 of 4 replicas available (4 updated) in 2.00 s (2.0 pods/s)"
            ),
            "{}",
            report.create.render_text()
        );
        assert!(report.create.render_text().contains("apiserver 1.50"));
        let stuck = PhaseResult::new("create", 4, 9.0, false, vec![], BTreeMap::new());
        assert_eq!(stuck.pods_per_sec, 0.0);
        assert!(stuck.render_text().contains("NOT complete"));
    }

    #[test]
    fn a_run_completes_only_when_every_phase_that_ran_did() {
        let mut report = report();
        assert!(report.completed(), "cleanup skipped with --keep");
        report.cleanup = Some(PhaseResult::new(
            "cleanup",
            4,
            3.0,
            false,
            vec![],
            BTreeMap::new(),
        ));
        assert!(!report.completed());
        report.cleanup = None;
        report.cleanup_error = Some("delete deployment: 403".into());
        assert!(!report.completed());
        assert!(markdown(&report).contains("The cleanup failed: delete deployment: 403"));
        report.cleanup_error = None;
        report.rolling_update = None;
        assert!(!report.completed());
    }

    #[test]
    fn the_json_line_and_markdown_carry_every_phase() {
        let line: serde_json::Value = serde_json::from_str(&json_line(&report())).unwrap();
        assert_eq!(line["completed"], true);
        assert_eq!(line["create_seconds"], 2.0);
        assert_eq!(line["cleanup_seconds"], serde_json::Value::Null);
        assert_eq!(line["phases"][1]["phase"], "rolling update");
        assert_eq!(line["phases"][0]["available"], 4);
        assert!(line["phases"][0].get("timeline").is_none(), "{line}");
        let md = markdown(&report());
        assert!(
            md.contains("| create | yes | 2.00 | 2.0 | apiserver 1.50 |"),
            "{md}"
        );
    }

    #[test]
    fn the_chart_samples_the_last_count_at_each_step() {
        let timeline = [
            point(0.0, 0, 0, 0),
            point(0.25, 2, 0, 0),
            point(1.0, 4, 0, 0),
        ];
        assert_eq!(sample(&timeline, 0.5, 1.0, |p| p.available), vec![2.0, 4.0]);
        assert_eq!(sample(&[], 0.5, 1.2, |p| p.available), vec![0.0; 3]);
        assert_eq!(chart_step(8.0), 0.1);
        assert_eq!(chart_step(90.0), 0.5);
        assert_eq!(chart_step(1e9), 60.0);
    }

    #[test]
    fn the_files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        match write_files(&report(), dir.path(), "run") {
            Ok(()) => assert!(dir.path().join("run.png").exists()),
            // No font on this machine: the report files are there, the chart is not.
            Err(Error::Run(msg)) => assert!(msg.contains("font"), "{msg}"),
            Err(err) => panic!("{err}"),
        }
        let md = std::fs::read_to_string(dir.path().join("run.md")).unwrap();
        assert!(md.contains("![available pods over time](run.png)"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("run.json")).unwrap())
                .unwrap();
        assert_eq!(json["create"]["replicas"], 4);
    }
}
