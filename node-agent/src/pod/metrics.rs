//! The agent's metrics, under kubelet's names: containers started (and failed starts), pods
//! and containers running, and the pod start duration (first seen → every container running,
//! image pulls included). Rendered on the agent's `/metrics`.

use std::sync::Arc;

use skiff_client::metrics::{Histogram, Registry, Scalar};

/// Every metric family of the agent.
#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    pub started_containers: Arc<Scalar>,
    pub started_container_errors: Arc<Scalar>,
    pub running_pods: Arc<Scalar>,
    pub running_containers: Arc<Scalar>,
    pub pod_start_duration: Arc<Histogram>,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        let registry = Registry::default();
        let started_containers = Scalar::counter(
            "kubelet_started_containers_total",
            "Cumulative number of containers started",
            &["container_type"],
        );
        let started_container_errors = Scalar::counter(
            "kubelet_started_containers_errors_total",
            "Cumulative number of errors when starting containers",
            &["code", "container_type"],
        );
        let running_pods = Scalar::gauge(
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
            &[],
        );
        let running_containers = Scalar::gauge(
            "kubelet_running_containers",
            "Number of containers currently running",
            &["container_state"],
        );
        let pod_start_duration = Histogram::new(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from the agent seeing a pod for the first time to the pod \
             starting to run",
            &[],
            Histogram::exponential_buckets(0.05, 2.0, 12),
        );
        registry.register(started_containers.clone());
        registry.register(started_container_errors.clone());
        registry.register(running_pods.clone());
        registry.register(running_containers.clone());
        registry.register(pod_start_duration.clone());
        AgentMetrics {
            registry,
            started_containers,
            started_container_errors,
            running_pods,
            running_containers,
            pod_start_duration,
        }
    }
}
