//! The scheduler's Prometheus metrics, with kube-scheduler's names and labels.

use std::sync::Arc;

use skiff_client::metrics::{Histogram, Registry, Scalar};

/// The scheduler's metric families.
#[derive(Clone)]
pub struct SchedulerMetrics {
    /// `scheduler_schedule_attempts_total{result, profile}`.
    pub attempts: Arc<Scalar>,
    /// `scheduler_pod_scheduling_duration_seconds{attempts}`: first seen → bound.
    pub pod_scheduling_duration: Arc<Histogram>,
    /// `scheduler_pending_pods{queue}`.
    pub pending: Arc<Scalar>,
    /// `scheduler_scheduling_attempt_duration_seconds{result, profile}`.
    pub attempt_duration: Arc<Histogram>,
    /// `scheduler_preemption_attempts_total`: PostFilter runs.
    pub preemption_attempts: Arc<Scalar>,
    /// `scheduler_preemption_victims`: victims per preemption.
    pub preemption_victims: Arc<Histogram>,
}

impl SchedulerMetrics {
    /// Creates the families and registers them.
    pub fn register(registry: &Registry) -> SchedulerMetrics {
        let metrics = SchedulerMetrics {
            attempts: Scalar::counter(
                "scheduler_schedule_attempts_total",
                "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
                &["result", "profile"],
            ),
            pod_scheduling_duration: Histogram::new(
                "scheduler_pod_scheduling_duration_seconds",
                "E2e latency for a pod being scheduled which may include multiple scheduling attempts.",
                &["attempts"],
                Histogram::exponential_buckets(0.01, 2.0, 20),
            ),
            pending: Scalar::gauge(
                "scheduler_pending_pods",
                "Number of pending pods, by the queue type. 'active' means number of pods in activeQ; 'backoff' means number of pods in backoffQ; 'unschedulable' means number of pods in unschedulablePods.",
                &["queue"],
            ),
            attempt_duration: Histogram::new(
                "scheduler_scheduling_attempt_duration_seconds",
                "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
                &["result", "profile"],
                Histogram::exponential_buckets(0.001, 2.0, 15),
            ),
            preemption_attempts: Scalar::counter(
                "scheduler_preemption_attempts_total",
                "Total preemption attempts in the cluster till now",
                &[],
            ),
            preemption_victims: Histogram::new(
                "scheduler_preemption_victims",
                "Number of selected preemption victims",
                &[],
                Histogram::exponential_buckets(1.0, 2.0, 7),
            ),
        };
        registry.register(metrics.attempts.clone());
        registry.register(metrics.pod_scheduling_duration.clone());
        registry.register(metrics.pending.clone());
        registry.register(metrics.attempt_duration.clone());
        registry.register(metrics.preemption_attempts.clone());
        registry.register(metrics.preemption_victims.clone());
        metrics.preemption_attempts.add(&[], 0.0);
        for queue in ["active", "backoff", "unschedulable", "gated"] {
            metrics.pending.set(&[queue], 0.0);
        }
        metrics
    }
}
