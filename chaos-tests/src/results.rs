//! Verdicts and the files of a run directory.
//!
//! A run directory holds `run.json` (how the run was configured: [`RunInfo`]), `history.jsonl`,
//! `results.json` ([`Results`]: Jepsen's `valid?` — `true`, `false` or `"unknown"` — overall and
//! per check, with details), `anomalies.json` (minimal excerpts: a handful of history events and
//! one sentence each), `nodes/<n>/{stdout,stderr}` and `latency-throughput.png`.
//!
//! Exit codes follow the verdict: 0 = valid, 1 = invalid, 2 = unknown or a harness error.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::Op;

/// Jepsen's `valid?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Passed.
    True,
    /// Failed.
    False,
    /// Not decided.
    Unknown,
}

impl Validity {
    /// Conjunction: any false → false, else any unknown → unknown, else true.
    pub fn all(items: impl IntoIterator<Item = Validity>) -> Validity {
        let mut out = Validity::True;
        for v in items {
            match v {
                Validity::False => return Validity::False,
                Validity::Unknown => out = Validity::Unknown,
                Validity::True => {}
            }
        }
        out
    }

    /// From a bool.
    pub fn of(ok: bool) -> Validity {
        if ok { Validity::True } else { Validity::False }
    }

    /// The process exit code: 0, 1 or 2.
    pub fn exit_code(self) -> i32 {
        match self {
            Validity::True => 0,
            Validity::False => 1,
            Validity::Unknown => 2,
        }
    }

    /// `true`, `false` or `unknown`.
    pub fn label(self) -> &'static str {
        match self {
            Validity::True => "true",
            Validity::False => "false",
            Validity::Unknown => "unknown",
        }
    }
}

impl Serialize for Validity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Validity::True => s.serialize_bool(true),
            Validity::False => s.serialize_bool(false),
            Validity::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for Validity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Validity, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(Validity::True),
            serde_json::Value::Bool(false) => Ok(Validity::False),
            serde_json::Value::String(s) if s == "unknown" => Ok(Validity::Unknown),
            other => Err(serde::de::Error::custom(format!(
                "valid? must be true, false or \"unknown\", found {other}"
            ))),
        }
    }
}

/// A minimal example of something wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The check that found it.
    pub check: String,
    /// Its kind (e.g. `not-linearizable`, `lost-append`, `watch-gap`).
    pub kind: String,
    /// One or a few sentences.
    pub explanation: String,
    /// The history events that show it (at most about ten).
    pub ops: Vec<Op>,
}

/// The outcome of one check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckResult {
    /// Its verdict.
    #[serde(rename = "valid?")]
    pub valid: Validity,
    /// Numbers and notes.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Anomalies (kept out of `results.json`, written to `anomalies.json`).
    #[serde(skip)]
    pub anomalies: Vec<Anomaly>,
}

impl CheckResult {
    /// A result with no details.
    pub fn new(valid: Validity) -> CheckResult {
        CheckResult {
            valid,
            details: serde_json::Map::new(),
            anomalies: Vec::new(),
        }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Serialize) -> CheckResult {
        self.set(key, value);
        self
    }

    /// Sets a detail.
    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.details.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
    }

    /// Records an anomaly (keeps the first 20 of each check) and marks the result invalid.
    pub fn anomaly(&mut self, check: &str, kind: &str, explanation: String, ops: Vec<Op>) {
        self.valid = Validity::False;
        let n = self.anomalies.len();
        self.set("anomaly-count", n + 1);
        if n < 20 {
            self.anomalies.push(Anomaly {
                check: check.to_owned(),
                kind: kind.to_owned(),
                explanation,
                ops: ops.into_iter().take(12).collect(),
            });
        }
    }
}

/// How a run was configured (`run.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    /// Workload name.
    pub workload: String,
    /// Nemesis names as requested.
    pub nemesis: Vec<String>,
    /// `skiff` or `etcd`.
    pub target: String,
    /// The store binary.
    pub binary: String,
    /// Initial members.
    pub nodes: usize,
    /// Workload phase length (s).
    pub time_limit_s: f64,
    /// Seed.
    pub seed: u64,
    /// Client workers.
    pub concurrency: usize,
    /// Target rate (ops/s).
    pub rate: f64,
    /// Per-request timeout (ms).
    pub op_timeout_ms: u64,
    /// Recovery bound after healing (s).
    pub recovery_limit_s: f64,
    /// Minimum fraction of client operations that must succeed.
    pub min_ok_fraction: f64,
    /// Run id (namespace prefix).
    pub run_id: String,
    /// Notes (e.g. a workload skipped because the store lacks the feature).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The nemesis plan.
    #[serde(default)]
    pub plan: Vec<crate::nemesis::Planned>,
}

/// `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// The overall verdict.
    #[serde(rename = "valid?")]
    pub valid: Validity,
    /// The run's configuration.
    pub run: RunInfo,
    /// Per check, in a stable order.
    pub checks: std::collections::BTreeMap<String, CheckResult>,
    /// Anomalies in all checks.
    pub anomaly_count: usize,
}

impl Results {
    /// Combines checks.
    pub fn new(run: RunInfo, checks: std::collections::BTreeMap<String, CheckResult>) -> Results {
        let valid = Validity::all(checks.values().map(|c| c.valid));
        let anomaly_count = checks.values().map(|c| c.anomalies.len()).sum();
        Results {
            valid,
            run,
            checks,
            anomaly_count,
        }
    }

    /// Every anomaly.
    pub fn anomalies(&self) -> Vec<&Anomaly> {
        self.checks.values().flat_map(|c| &c.anomalies).collect()
    }

    /// Writes `results.json` and `anomalies.json` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self).map_err(std::io::Error::other)? + "\n",
        )?;
        std::fs::write(
            dir.join("anomalies.json"),
            serde_json::to_string_pretty(&self.anomalies()).map_err(std::io::Error::other)? + "\n",
        )
    }

    /// A short human summary (a few lines).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "valid? {}  ({} × {} on {} {} nodes, seed {})\n",
            self.valid.label(),
            self.run.workload,
            if self.run.nemesis.is_empty() {
                "none".to_owned()
            } else {
                self.run.nemesis.join(",")
            },
            self.run.target,
            self.run.nodes,
            self.run.seed
        );
        for (name, c) in &self.checks {
            let mut detail = String::new();
            for key in [
                "ops",
                "ok",
                "fail",
                "info",
                "ok-fraction",
                "keys",
                "txns",
                "sessions",
                "events",
                "installed",
                "missing",
                "recovery-s",
                "reason",
                "note",
            ] {
                if let Some(v) = c.details.get(key) {
                    detail.push_str(&format!(" {key}={v}"));
                }
            }
            s.push_str(&format!("  {name:<14} {:<7}{detail}\n", c.valid.label()));
        }
        for a in self.anomalies().iter().take(5) {
            s.push_str(&format!(
                "  anomaly [{}] {}: {}\n",
                a.check, a.kind, a.explanation
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            workload: "register".into(),
            nemesis: vec!["kill".into()],
            target: "skiff".into(),
            binary: "/x".into(),
            nodes: 3,
            time_limit_s: 30.0,
            seed: 1,
            concurrency: 6,
            rate: 100.0,
            op_timeout_ms: 1000,
            recovery_limit_s: 30.0,
            min_ok_fraction: 0.3,
            run_id: "1-0".into(),
            notes: vec![],
            plan: vec![],
        }
    }

    #[test]
    fn validity_combines_and_serializes_like_jepsen() {
        use Validity::*;
        assert_eq!(Validity::all([True, True]), True);
        assert_eq!(Validity::all([True, Unknown]), Unknown);
        assert_eq!(Validity::all([Unknown, False, True]), False);
        assert_eq!(Validity::all([]), True);
        assert_eq!(serde_json::to_string(&Unknown).unwrap(), "\"unknown\"");
        assert_eq!(serde_json::to_string(&False).unwrap(), "false");
        assert_eq!(
            serde_json::from_str::<Validity>("\"unknown\"").unwrap(),
            Unknown
        );
        assert!(serde_json::from_str::<Validity>("\"maybe\"").is_err());
        assert_eq!(
            (True.exit_code(), False.exit_code(), Unknown.exit_code()),
            (0, 1, 2)
        );
    }

    #[test]
    fn results_json_shape() {
        let mut checks = std::collections::BTreeMap::new();
        checks.insert(
            "stats".into(),
            CheckResult::new(Validity::True).with("ops", 10),
        );
        let mut lin = CheckResult::new(Validity::True);
        lin.anomaly(
            "linearizable",
            "not-linearizable",
            "read of 3".into(),
            vec![],
        );
        checks.insert("linearizable".into(), lin);
        checks.insert("watch".into(), CheckResult::new(Validity::Unknown));
        let r = Results::new(info(), checks);
        assert_eq!(r.valid, Validity::False);
        assert_eq!(r.anomaly_count, 1);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["valid?"], serde_json::json!(false));
        assert_eq!(v["checks"]["stats"]["valid?"], serde_json::json!(true));
        assert_eq!(v["checks"]["stats"]["ops"], serde_json::json!(10));
        assert_eq!(v["checks"]["watch"]["valid?"], serde_json::json!("unknown"));
        assert_eq!(
            v["checks"]["linearizable"]["anomaly-count"],
            serde_json::json!(1)
        );
        assert_eq!(v["run"]["seed"], serde_json::json!(1));
        let back: Results = serde_json::from_value(v).unwrap();
        assert_eq!(back.valid, Validity::False);
        assert!(r.summary().starts_with("valid? false"));
    }
}
