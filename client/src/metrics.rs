//! A small Prometheus text-format registry: counters, gauges and histograms with labels.
//! Every family keeps its series in a map under a `std::sync::Mutex` held only to update or
//! render (never across `.await`). Series per family are capped at `SERIES_MAX`; values past
//! the cap are dropped, so a label with unbounded values cannot eat memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Label combinations kept per family.
pub const SERIES_MAX: usize = 1024;

/// Something that renders itself in the text exposition format.
pub trait Collect: Send + Sync {
    /// Appends `# HELP`, `# TYPE` and sample lines.
    fn render(&self, out: &mut String);
}

/// The families served on `/metrics`.
#[derive(Default, Clone)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<dyn Collect>>>>,
}

impl Registry {
    /// Adds a family.
    pub fn register(&self, family: Arc<dyn Collect>) {
        if let Ok(mut families) = self.families.lock() {
            families.push(family);
        }
    }

    /// The whole exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(families) = self.families.lock() {
            for family in families.iter() {
                family.render(&mut out);
            }
        }
        out
    }
}

fn labels_text(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Counter or gauge family.
pub struct Scalar {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl Scalar {
    /// A counter family.
    pub fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<Self> {
        Arc::new(Scalar {
            name,
            help,
            kind: "counter",
            labels,
            values: Mutex::default(),
        })
    }

    /// A gauge family.
    pub fn gauge(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<Self> {
        Arc::new(Scalar {
            name,
            help,
            kind: "gauge",
            labels,
            values: Mutex::default(),
        })
    }

    fn update(&self, labels: &[&str], f: impl FnOnce(&mut f64)) {
        let Ok(mut values) = self.values.lock() else {
            return;
        };
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        if !values.contains_key(&key) && values.len() >= SERIES_MAX {
            return;
        }
        f(values.entry(key).or_insert(0.0));
    }

    /// Adds `by` to the series `labels`.
    pub fn add(&self, labels: &[&str], by: f64) {
        self.update(labels, |v| *v += by);
    }

    /// Sets the series `labels` (gauges).
    pub fn set(&self, labels: &[&str], to: f64) {
        self.update(labels, |v| *v = to);
    }

    /// The current value of a series (0 if absent).
    pub fn get(&self, labels: &[&str]) -> f64 {
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        self.values
            .lock()
            .map(|v| v.get(&key).copied().unwrap_or(0.0))
            .unwrap_or(0.0)
    }
}

impl Collect for Scalar {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        if let Ok(values) = self.values.lock() {
            for (key, value) in values.iter() {
                let _ = writeln!(
                    out,
                    "{}{} {}",
                    self.name,
                    labels_text(self.labels, key, None),
                    value
                );
            }
        }
    }
}

/// One histogram series: per-bucket counts, sum, count.
type Series = (Vec<u64>, f64, u64);

/// Histogram family with fixed buckets.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: Vec<f64>,
    series: Mutex<BTreeMap<Vec<String>, Series>>,
}

impl Histogram {
    /// A histogram with upper bounds `buckets` (ascending; `+Inf` implied).
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: Vec<f64>,
    ) -> Arc<Self> {
        Arc::new(Histogram {
            name,
            help,
            labels,
            buckets,
            series: Mutex::default(),
        })
    }

    /// Prometheus' `ExponentialBuckets(start, factor, count)`.
    pub fn exponential_buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
        (0..count)
            .map(|i| start * factor.powi(i32::try_from(i).unwrap_or(0)))
            .collect()
    }

    /// Records one observation.
    pub fn observe(&self, labels: &[&str], value: f64) {
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        if !series.contains_key(&key) && series.len() >= SERIES_MAX {
            return;
        }
        let entry = series
            .entry(key)
            .or_insert_with(|| (vec![0; self.buckets.len()], 0.0, 0));
        for (i, bound) in self.buckets.iter().enumerate() {
            if value <= *bound {
                entry.0[i] += 1;
            }
        }
        entry.1 += value;
        entry.2 += 1;
    }
}

impl Collect for Histogram {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        if let Ok(series) = self.series.lock() {
            for (key, (counts, sum, count)) in series.iter() {
                for (bound, n) in self.buckets.iter().zip(counts) {
                    let le = format!("{bound}");
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {n}",
                        self.name,
                        labels_text(self.labels, key, Some(("le", &le)))
                    );
                }
                let _ = writeln!(
                    out,
                    "{}_bucket{} {count}",
                    self.name,
                    labels_text(self.labels, key, Some(("le", "+Inf")))
                );
                let _ = writeln!(
                    out,
                    "{}_sum{} {sum}",
                    self.name,
                    labels_text(self.labels, key, None)
                );
                let _ = writeln!(
                    out,
                    "{}_count{} {count}",
                    self.name,
                    labels_text(self.labels, key, None)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let registry = Registry::default();
        let c = Scalar::counter("x_total", "X.", &["result"]);
        c.add(&["scheduled"], 2.0);
        let h = Histogram::new("d_seconds", "D.", &[], vec![0.1, 1.0]);
        h.observe(&[], 0.5);
        registry.register(c.clone());
        registry.register(h);
        let text = registry.render();
        assert!(text.contains("x_total{result=\"scheduled\"} 2"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"0.1\"} 0"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"1\"} 1"), "{text}");
        assert!(text.contains("d_seconds_count 1"), "{text}");
        assert_eq!(c.get(&["scheduled"]), 2.0);
    }
}
