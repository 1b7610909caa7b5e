//! `/metrics` in the Prometheus text format: kube-apiserver's `apiserver_request_total` (by verb,
//! group, version, resource, subresource, code) and `apiserver_request_duration_seconds` (a
//! histogram by verb, group, version, resource, subresource), fed by `crate::filters::metrics`, and
//! `apiserver_current_inflight_requests` (fed by the in-flight limiter), the audit log's
//! `apiserver_audit_event_total`/`apiserver_audit_error_total`, and the watch cache's
//! ([`WatchCacheMetrics`]: `apiserver_watch_cache_*`, `apiserver_cache_list_*`,
//! `apiserver_registered_watchers`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// kube-apiserver's request latency buckets, in seconds.
const DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// What a request did, as kube-apiserver labels it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY`, `DELETE`, `DELETECOLLECTION`.
    pub verb: String,
    pub group: String,
    pub version: String,
    /// Empty for non-resource paths (`/version`, `/openapi/v3`, …).
    pub resource: String,
    pub subresource: String,
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts per [`DURATION_BUCKETS`] entry.
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    /// The served `(group, version, resource)`s: other URLs are counted without a resource, so
    /// that made-up paths cannot grow the label sets without bound.
    known: Vec<(String, String, String)>,
    totals: BTreeMap<(RequestLabels, u16), u64>,
    durations: BTreeMap<RequestLabels, Histogram>,
}

/// The request metrics of one API server process.
#[derive(Debug, Default, Clone)]
pub struct Metrics(
    Arc<Mutex<Inner>>,
    Arc<InFlightGauges>,
    Arc<AuditCounters>,
    Arc<WatchCacheMetrics>,
);

/// What one resource's watch cache counts, fed by [`crate::storage::cacher`]. Relaxed
/// atomics: recording never locks.
#[derive(Debug, Default)]
pub struct WatchCacheCounters {
    /// `apiserver_watch_cache_events_received_total`: events the cache took from the store.
    pub events_received: AtomicU64,
    /// `apiserver_watch_cache_capacity`: the ring of recent events.
    pub capacity: AtomicI64,
    /// `apiserver_watch_cache_resource_version`: the revision the cache is current to.
    pub resource_version: AtomicI64,
    /// `apiserver_watch_cache_initializations_total`: (re)lists that built the cache.
    pub initializations: AtomicU64,
    /// `apiserver_cache_list_total`: lists served from the cache.
    pub lists: AtomicU64,
    /// `apiserver_cache_list_returned_objects_total`: objects those lists returned.
    pub list_returned_objects: AtomicU64,
    /// `apiserver_registered_watchers`: watches open on this resource (from the cache or,
    /// for an older resourceVersion, from the store).
    pub watchers: AtomicI64,
}

/// The labels of one cached resource.
#[derive(Debug, Clone)]
pub struct WatchCacheLabels {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// kube-apiserver's group-qualified resource (`pods`, `deployments.apps`).
    pub resource: String,
    /// kube-apiserver's `resource_prefix` label (`/pods`).
    pub resource_prefix: String,
}

fn count(counter: &AtomicU64) -> i64 {
    i64::try_from(counter.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

/// Every resource's [`WatchCacheCounters`], in registration order.
#[derive(Debug, Default)]
pub struct WatchCacheMetrics {
    resources: Mutex<Vec<(WatchCacheLabels, Arc<WatchCacheCounters>)>>,
}

impl WatchCacheMetrics {
    /// The counters of one resource's cache.
    pub fn register(&self, labels: WatchCacheLabels) -> Arc<WatchCacheCounters> {
        let counters = Arc::new(WatchCacheCounters::default());
        self.resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((labels, counters.clone()));
        counters
    }

    /// Appends the families in Prometheus text.
    pub fn render(&self, out: &mut String) {
        let resources = self
            .resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if resources.is_empty() {
            return;
        }
        type Pick = fn(&WatchCacheCounters) -> i64;
        let families: [(&str, &str, &str, Pick); 6] = [
            (
                "apiserver_watch_cache_events_received_total",
                "counter",
                "Counter of events received in watch cache broken by resource type.",
                |c| count(&c.events_received),
            ),
            (
                "apiserver_watch_cache_capacity",
                "gauge",
                "Total capacity of watch cache broken by resource type.",
                |c| c.capacity.load(Ordering::Relaxed),
            ),
            (
                "apiserver_watch_cache_resource_version",
                "gauge",
                "Current resource version of watch cache broken by resource type.",
                |c| c.resource_version.load(Ordering::Relaxed),
            ),
            (
                "apiserver_watch_cache_initializations_total",
                "counter",
                "Counter of watch cache initializations broken by resource type.",
                |c| count(&c.initializations),
            ),
            (
                "apiserver_cache_list_total",
                "counter",
                "Number of LIST requests served from watch cache",
                |c| count(&c.lists),
            ),
            (
                "apiserver_cache_list_returned_objects_total",
                "counter",
                "Number of objects returned for LIST requests from watch cache",
                |c| count(&c.list_returned_objects),
            ),
        ];
        for (name, kind, help, pick) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, counters) in &resources {
                let label = if name.starts_with("apiserver_cache_list") {
                    format!("index=\"\",resource_prefix=\"{}\"", labels.resource_prefix)
                } else {
                    format!("resource=\"{}\"", labels.resource)
                };
                let _ = writeln!(out, "{name}{{{label}}} {}", pick(counters));
            }
        }
        let name = "apiserver_registered_watchers";
        let _ = writeln!(
            out,
            "# HELP {name} Number of currently registered watchers for a given resources\n# TYPE {name} gauge"
        );
        for (labels, counters) in &resources {
            let _ = writeln!(
                out,
                "{name}{{group=\"{}\",kind=\"{}\",version=\"{}\"}} {}",
                labels.group,
                labels.kind,
                labels.version,
                counters.watchers.load(Ordering::Relaxed)
            );
        }
    }
}

/// The audit log's counters (kube-apiserver's `apiserver_audit_event_total` and
/// `apiserver_audit_error_total`), fed by [`crate::audit`].
#[derive(Debug, Default)]
pub struct AuditCounters {
    /// Events handed to the log writer.
    pub events: AtomicU64,
    /// Events dropped because the writer's queue was full (`plugin="buffered"`).
    pub dropped: AtomicU64,
    /// Events that could not be written (`plugin="log"`).
    pub write_errors: AtomicU64,
}

/// kube-apiserver's `apiserver_current_inflight_requests`: requests being served now (watches
/// excluded), read-only and mutating.
#[derive(Debug, Default)]
struct InFlightGauges {
    readonly: AtomicI64,
    mutating: AtomicI64,
}

/// Counts one request in [`InFlightGauges`] while it lives.
pub struct InFlightGuard(Arc<InFlightGauges>, bool);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let gauge = if self.1 {
            &self.0.mutating
        } else {
            &self.0.readonly
        };
        gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The verbs counted by name; any other HTTP method is `OTHER`.
const VERBS: [&str; 11] = [
    "GET",
    "LIST",
    "WATCH",
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
    "HEAD",
    "OPTIONS",
];

impl Metrics {
    /// Metrics for a server of these `(group, version, resource)`s.
    pub fn new(known: impl IntoIterator<Item = (String, String, String)>) -> Metrics {
        let inner = Inner {
            known: known.into_iter().collect(),
            ..Inner::default()
        };
        Metrics(
            Arc::new(Mutex::new(inner)),
            Arc::default(),
            Arc::default(),
            Arc::default(),
        )
    }

    /// The watch cache's metrics.
    pub fn watch_cache(&self) -> Arc<WatchCacheMetrics> {
        self.3.clone()
    }

    /// The audit log's counters.
    pub fn audit(&self) -> Arc<AuditCounters> {
        self.2.clone()
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn in_flight(&self, mutating: bool) -> InFlightGuard {
        let gauge = if mutating {
            &self.1.mutating
        } else {
            &self.1.readonly
        };
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.1.clone(), mutating)
    }

    pub fn record(&self, mut labels: RequestLabels, code: u16, seconds: f64) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let served = (
            labels.group.clone(),
            labels.version.clone(),
            labels.resource.clone(),
        );
        if !labels.resource.is_empty() && !inner.known.contains(&served) {
            labels.group.clear();
            labels.version.clear();
            labels.resource.clear();
            labels.subresource.clear();
        }
        if !matches!(
            labels.subresource.as_str(),
            "" | "status" | "scale" | "binding"
        ) {
            labels.subresource.clear();
        }
        if !VERBS.contains(&labels.verb.as_str()) {
            labels.verb = "OTHER".into();
        }
        *inner.totals.entry((labels.clone(), code)).or_default() += 1;
        let h = inner.durations.entry(labels).or_default();
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str(
            "# HELP apiserver_current_inflight_requests Maximal number of currently used inflight request limit of this apiserver per request kind in last second.\n\
             # TYPE apiserver_current_inflight_requests gauge\n",
        );
        for (kind, gauge) in [
            ("mutating", &self.1.mutating),
            ("readOnly", &self.1.readonly),
        ] {
            let _ = writeln!(
                out,
                "apiserver_current_inflight_requests{{request_kind=\"{kind}\"}} {}",
                gauge.load(Ordering::Relaxed)
            );
        }
        let audit = &self.2;
        let _ = write!(
            out,
            "# HELP apiserver_audit_event_total Counter of audit events generated and sent to the audit backend.\n\
             # TYPE apiserver_audit_event_total counter\n\
             apiserver_audit_event_total {}\n\
             # HELP apiserver_audit_error_total Counter of audit events that failed to be audited properly. Plugin identifies the plugin affected by the error.\n\
             # TYPE apiserver_audit_error_total counter\n\
             apiserver_audit_error_total{{plugin=\"buffered\"}} {}\n\
             apiserver_audit_error_total{{plugin=\"log\"}} {}\n",
            audit.events.load(Ordering::Relaxed),
            audit.dropped.load(Ordering::Relaxed),
            audit.write_errors.load(Ordering::Relaxed),
        );
        self.3.render(&mut out);
        out.push_str(
            "# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, resource, subresource and HTTP response code.\n\
             # TYPE apiserver_request_total counter\n",
        );
        for ((l, code), n) in &inner.totals {
            let _ = writeln!(
                out,
                "apiserver_request_total{{code=\"{code}\",{}}} {n}",
                label_text(l)
            );
        }
        out.push_str(
            "# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, version, resource and subresource.\n\
             # TYPE apiserver_request_duration_seconds histogram\n",
        );
        for (l, h) in &inner.durations {
            let labels = label_text(l);
            for (le, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out
    }
}

fn label_text(l: &RequestLabels) -> String {
    format!(
        "group=\"{}\",resource=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"",
        l.group, l.resource, l.subresource, l.verb, l.version
    )
}

/// `GET /metrics`.
pub async fn serve(State(metrics): State<Metrics>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(verb: &str, resource: &str, subresource: &str) -> RequestLabels {
        RequestLabels {
            verb: verb.into(),
            group: String::new(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
        }
    }

    #[test]
    fn unknown_resources_and_methods_do_not_add_label_sets() {
        let m = Metrics::new([("".into(), "v1".into(), "pods".into())]);
        let widgets = labels("LIST", "widgets", "");
        m.record(widgets, 404, 0.001);
        let odd = labels("BREW", "pods", "nope");
        m.record(odd, 405, 0.001);
        let text = m.render();
        assert!(
            !text.contains("widgets") && !text.contains("BREW") && !text.contains("nope"),
            "{text}"
        );
        assert!(text.contains(r#"apiserver_request_total{code="404",group="",resource="",subresource="",verb="LIST",version=""} 1"#), "{text}");
        assert!(text.contains(r#"apiserver_request_total{code="405",group="",resource="pods",subresource="",verb="OTHER",version="v1"} 1"#), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new([("".into(), "v1".into(), "pods".into())]);
        let l = labels("LIST", "pods", "");
        m.record(l.clone(), 200, 0.01);
        m.record(l, 200, 0.3);
        let text = m.render();
        assert!(text.contains("apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 2"), "{text}");
        assert!(text.contains("le=\"0.005\"} 0"), "{text}");
        assert!(text.contains("le=\"0.025\"} 1"), "{text}");
        assert!(text.contains("le=\"0.4\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
    }
}
