//! What the Kubernetes-facing benchmarks (`skiff bench scheduler`, `skiff bench apiserver`)
//! share: connecting through a kubeconfig, API writes retried on 429/5xx, a fixed number of
//! concurrent workers, and CPU accounting of the local processes behind given endpoints.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::Error;
use crate::procfs;

/// Attempts at one API write (429, 5xx and connection errors are retried with back-off).
const WRITE_ATTEMPTS: u32 = 10;

/// Runs `future` on a new multi-threaded runtime (the benchmarks' `run_blocking`).
pub fn block_on<T>(
    future: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Run(format!("tokio runtime: {e}")))?
        .block_on(future)
}

/// A run's id (milliseconds since the epoch), the value of the objects' run label.
pub fn run_id() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        .to_string()
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<(), Error> {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    let post = kube::api::PostParams::default();
    write(
        || format!("create namespace {name}"),
        || namespaces.create(&post, &namespace),
    )
    .await
    .map(drop)
}

/// A client from `--kubeconfig` (else `KUBECONFIG`, else in-cluster) and the API server's
/// `host:port` (for CPU accounting).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<(kube::Client, String), Error> {
    let source = skiff_client::config::resolve(kubeconfig, std::env::var_os("KUBECONFIG"));
    let config = skiff_client::config::load(&source)
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let endpoint = format!(
        "{}:{}",
        config.cluster_url.host().unwrap_or("127.0.0.1"),
        config.cluster_url.port_u16().unwrap_or(443)
    );
    let client = kube::Client::try_from(config).map_err(|e| api_error("client", e))?;
    Ok((client, endpoint))
}

pub fn api_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::Run(format!("{what}: {err}"))
}

pub fn code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Retries `op` on 429, 5xx and transport errors; a 409 (the object exists: an earlier
/// attempt landed) counts as done.
pub async fn write<F, Fut, T>(what: impl Fn() -> String, op: F) -> Result<Option<T>, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=WRITE_ATTEMPTS {
        match op().await {
            Ok(value) => return Ok(Some(value)),
            Err(err) if code(&err) == Some(409) => return Ok(None),
            Err(err)
                if attempt < WRITE_ATTEMPTS && code(&err).is_none_or(|c| c == 429 || c >= 500) =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(api_error(&what(), err)),
        }
    }
    unreachable!("the last attempt returns")
}

/// Runs `count` jobs on `clients` concurrent workers; the first error stops the others.
pub async fn for_each_concurrently<F, Fut>(
    count: usize,
    clients: usize,
    job: F,
) -> Result<(), Error>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..clients.min(count) {
        let (next, job) = (next.clone(), job.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok(());
                }
                if let Err(err) = job(i).await {
                    next.store(count, Ordering::Relaxed);
                    return Err(err);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| Error::Run(format!("worker: {e}")))??;
    }
    Ok(())
}

/// The local processes whose CPU time is reported per operation.
pub struct Accounting {
    /// Component name → its PIDs.
    components: BTreeMap<&'static str, Vec<u32>>,
}

impl Accounting {
    /// The processes listening on each component's endpoints (components with none found
    /// are left out).
    pub fn find(components: &[(&'static str, Vec<String>)]) -> Accounting {
        let components = components
            .iter()
            .map(|(name, endpoints)| {
                (
                    *name,
                    procfs::pids(&procfs::find_server_processes(endpoints)),
                )
            })
            .filter(|(_, pids)| !pids.is_empty())
            .collect();
        Accounting { components }
    }

    /// CPU used so far by each component, this process (`bench`) and the machine.
    pub fn sample(&self) -> BTreeMap<&'static str, Duration> {
        let mut out: BTreeMap<&'static str, Duration> = self
            .components
            .iter()
            .map(|(name, pids)| {
                let cpu = pids
                    .iter()
                    .filter_map(|&pid| procfs::process_cpu(pid))
                    .sum();
                (*name, cpu)
            })
            .collect();
        if let Some(own) = procfs::own_cpu() {
            out.insert("bench", own);
        }
        if let Some(machine) = procfs::machine_busy() {
            out.insert("machine", machine);
        }
        out
    }

    /// CPU milliseconds per operation of each component between two samples.
    pub fn per_op(
        before: &BTreeMap<&'static str, Duration>,
        after: &BTreeMap<&'static str, Duration>,
        ops: usize,
    ) -> BTreeMap<String, f64> {
        let ops = ops.max(1) as f64;
        after
            .iter()
            .filter_map(|(name, cpu)| {
                let used = cpu.checked_sub(*before.get(name)?)?;
                Some((name.to_string(), used.as_secs_f64() * 1000.0 / ops))
            })
            .collect()
    }
}
