//! Results of one benchmark run: throughput, latency distribution, errors, and server
//! CPU/RSS; rendered as text (like etcd's benchmark tool) or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        // Within bounds by construction: saturating_record cannot fail.
        self.0.saturating_record(micros);
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: add only fails on incompatible bounds.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn ms(micros: u64) -> f64 {
        micros as f64 / 1000.0
    }

    pub fn summary(&self) -> LatencySummary {
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        let q = |q: f64| Self::ms(self.0.value_at_quantile(q));
        LatencySummary {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: Self::ms(self.0.max()),
            min: Self::ms(self.0.min()),
            mean: self.0.mean() / 1000.0,
            stddev: self.0.stdev() / 1000.0,
        }
    }

    /// Buckets for a text histogram: (upper bound in ms, count), ten linear buckets between
    /// the fastest and the slowest request, as etcd's tool prints them.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let min = self.0.min();
        let max = self.0.max();
        let step = ((max - min) / 10).max(1);
        let buckets = ((max - min) / step + 1).min(10) as usize;
        let mut out: Vec<(f64, u64)> = (0..buckets)
            .map(|i| {
                let upper = if i + 1 == buckets {
                    max
                } else {
                    min + step * (i as u64 + 1)
                };
                (Self::ms(upper), 0)
            })
            .collect();
        for v in self.0.iter_recorded() {
            let value = self.0.median_equivalent(v.value_iterated_to());
            let i = (value.saturating_sub(min) / step) as usize;
            out[i.min(buckets - 1)].1 += v.count_at_value();
        }
        out
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
    pub stddev: f64,
}

/// One local member process: CPU used during the run and RSS at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub endpoints: Vec<String>,
    /// CPU seconds (user + system) used during the measured run.
    pub cpu_s: f64,
    /// Resident memory at the end of the run, in MiB.
    pub rss_mb: f64,
}

/// The result of one run. Serialized as the `--json` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `put`, `range`, `txn-put`, `watch`, `lease-keepalive`.
    pub command: String,
    pub clients: usize,
    pub conns: usize,
    pub endpoints: Vec<String>,
    /// Successful operations (for `watch`: events delivered).
    pub ops: u64,
    pub errors: u64,
    pub duration_s: f64,
    pub ops_per_sec: f64,
    pub latency_ms: LatencySummary,
    /// Error messages and how often each occurred.
    pub error_messages: BTreeMap<String, u64>,
    /// Server CPU µs per successful op, summed over the local members (absent when no
    /// member process was found on this machine).
    pub server_cpu_us_per_op: Option<f64>,
    /// The load generator's own CPU µs per op.
    pub client_cpu_us_per_op: Option<f64>,
    /// Sum of the members' RSS at the end of the run, MiB.
    pub server_rss_mb: Option<f64>,
    /// CPU cores used by every other process on the machine during the run (noise).
    pub other_cores: Option<f64>,
    pub servers: Vec<ServerUsage>,
    /// Extra figures of some commands (watch: puts, puts_per_sec, watchers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

impl Report {
    /// The `--json` line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Human-readable text, without the JSON line.
    pub fn render_text(&self, latencies: Option<&Latencies>) -> String {
        let mut s = String::new();
        let what = if self.command == "watch" {
            "events"
        } else {
            "requests"
        };
        let _ = writeln!(s, "Summary ({}):", self.command);
        let _ = writeln!(
            s,
            "  Clients:\t{} over {} connections to {}",
            self.clients,
            self.conns,
            self.endpoints.join(",")
        );
        let _ = writeln!(s, "  Total:\t{:.4} secs.", self.duration_s);
        let _ = writeln!(
            s,
            "  Completed:\t{} {what}, {} errors",
            self.ops, self.errors
        );
        let l = &self.latency_ms;
        let _ = writeln!(s, "  Slowest:\t{:.4} ms.", l.max);
        let _ = writeln!(s, "  Fastest:\t{:.4} ms.", l.min);
        let _ = writeln!(s, "  Average:\t{:.4} ms.", l.mean);
        let _ = writeln!(s, "  Stddev:\t{:.4} ms.", l.stddev);
        let _ = writeln!(s, "  {what}/sec:\t{:.1}", self.ops_per_sec);
        for (k, v) in &self.extra {
            let _ = writeln!(s, "  {k}:\t{v:.1}");
        }
        if let Some(latencies) = latencies.filter(|l| !l.is_empty()) {
            let buckets = latencies.buckets();
            let most = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1);
            let _ = writeln!(s, "\nResponse time histogram (ms):");
            for (upper, count) in buckets {
                let bar = "∎".repeat(((count * 40).div_ceil(most)) as usize);
                let _ = writeln!(s, "  {upper:>10.3} [{count:>8}]\t|{bar}");
            }
        }
        let _ = writeln!(s, "\nLatency distribution (ms):");
        for (name, v) in [
            ("50%", l.p50),
            ("90%", l.p90),
            ("99%", l.p99),
            ("99.9%", l.p999),
            ("max", l.max),
        ] {
            let _ = writeln!(s, "  {name:>6} in {v:.4}");
        }
        if !self.error_messages.is_empty() {
            let _ = writeln!(s, "\nErrors:");
            for (msg, n) in &self.error_messages {
                let _ = writeln!(s, "  {n:>8} × {msg}");
            }
        }
        if !self.servers.is_empty() {
            let _ = writeln!(s, "\nServer processes (local members):");
            for server in &self.servers {
                let _ = writeln!(
                    s,
                    "  pid {:<8} {:<24} cpu {:>8.3} s   rss {:>8.1} MiB",
                    server.pid,
                    server.endpoints.join(","),
                    server.cpu_s,
                    server.rss_mb
                );
            }
        }
        let mut cpu_line = Vec::new();
        if let Some(v) = self.server_cpu_us_per_op {
            cpu_line.push(format!(
                "server {v:.1} µs/op (sum over {} members)",
                self.servers.len()
            ));
        }
        if let Some(v) = self.client_cpu_us_per_op {
            cpu_line.push(format!("load generator {v:.1} µs/op"));
        }
        if let Some(v) = self.other_cores {
            cpu_line.push(format!("other processes {v:.2} cores"));
        }
        if !cpu_line.is_empty() {
            let _ = writeln!(s, "  CPU: {}", cpu_line.join("; "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets() {
        let mut l = Latencies::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_micros(ms * 1000));
        }
        let s = l.summary();
        assert!((s.p50 - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 1.5, "{s:?}");
        assert!((s.max - 1000.0).abs() < 1.0, "{s:?}");
        let buckets = l.buckets();
        assert_eq!(buckets.len(), 10);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 1000);
        let mut other = Latencies::new();
        other.record(Duration::from_millis(2000));
        l.merge(&other);
        assert_eq!(l.len(), 1001);
        assert!(Latencies::new().summary().max == 0.0);
    }

    #[test]
    fn json_line_has_the_documented_fields() {
        let report = Report {
            command: "put".into(),
            clients: 1,
            conns: 1,
            endpoints: vec!["127.0.0.1:2379".into()],
            ops: 10,
            errors: 0,
            duration_s: 1.0,
            ops_per_sec: 10.0,
            latency_ms: LatencySummary::default(),
            error_messages: BTreeMap::new(),
            server_cpu_us_per_op: Some(100.0),
            client_cpu_us_per_op: None,
            server_rss_mb: Some(10.0),
            other_cores: None,
            servers: vec![],
            extra: BTreeMap::new(),
        };
        let line = report.to_json();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ops_per_sec"], 10.0);
        assert_eq!(v["errors"], 0);
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][key].is_number(), "{key}");
        }
        let back: Report = serde_json::from_str(&line).unwrap();
        assert_eq!(back, report);
        assert!(report.render_text(None).contains("requests/sec"));
    }
}
