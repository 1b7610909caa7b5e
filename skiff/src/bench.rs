//! `skiff bench`: etcd's benchmark tool's flags mapped onto `skiff_bench::BenchConfig`
//! (or `compare::CompareConfig`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cli::{EXIT_USAGE, parse_duration};

/// `skiff bench` flags, with the names of etcd's benchmark tool; mapped onto
/// `skiff_bench::BenchConfig` (or `compare::CompareConfig`).
#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
    /// Client endpoints, comma-separated (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Concurrent clients (each sends one request at a time).
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// gRPC connections shared by the clients (connection i goes to endpoint i mod N).
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Requests to send (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Run for this long, e.g. `10s` (compare: per case; default 10s).
    #[arg(long, global = true, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Key size in bytes [default: 8].
    #[arg(long, global = true)]
    key_size: Option<usize>,
    /// Value size in bytes [default: 8; compare: 256].
    #[arg(long, global = true)]
    val_size: Option<usize>,
    /// Number of distinct keys written.
    #[arg(long, global = true, default_value_t = 1)]
    key_space_size: u64,
    /// Write keys in sequence instead of at random.
    #[arg(long, global = true)]
    sequential_keys: bool,
    /// Requests per second over all clients (0 = no limit).
    #[arg(long, global = true, default_value_t = 0.0)]
    rate: f64,
    /// Print one JSON object as the last line of output.
    #[arg(long, global = true)]
    json: bool,
}

// Parsed once at startup: the size of the flag struct does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum BenchCommand {
    /// Put keys of the key space.
    Put,
    /// Range KEY (or [KEY, END)) repeatedly.
    Range {
        key: String,
        end: Option<String>,
        /// l (linearizable) or s (serializable).
        #[arg(long, default_value = "l")]
        consistency: skiff_bench::Consistency,
        /// Maximum keys per range (0 = no limit).
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Only count the keys.
        #[arg(long)]
        count_only: bool,
    },
    /// Txns whose success branch puts --txn-ops keys.
    TxnPut {
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// N watchers on the key space while the clients put: events/s and delivery latency.
    Watch {
        #[arg(long, default_value_t = 10)]
        watchers: usize,
        /// Watch streams the watchers are spread over.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// Lease keepalive round trips (one lease and one keepalive stream per client).
    LeaseKeepalive,
    /// Start 3 skiff and 3 etcd members on loopback, run the same matrix against both, and
    /// write a Markdown table, a PNG chart and the raw JSON (see README "Benchmarks").
    Compare {
        /// Repeats of the whole matrix.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Keys preloaded into each cluster (also the put key space).
        #[arg(long, default_value_t = 100_000)]
        preload: u64,
        /// Client counts of the put cases.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        put_clients: Vec<usize>,
        /// Client counts of the linearizable and serializable range cases.
        #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
        range_clients: Vec<usize>,
        /// Output directory.
        #[arg(long, default_value = "docs/benchmarks")]
        out: PathBuf,
        /// File stem of the outputs (<out>/<name>.md, .png, .json).
        #[arg(long, default_value = "compare")]
        name: String,
        /// A note for the report header, e.g. "smoke run on a busy machine".
        #[arg(long)]
        label: Option<String>,
        /// The etcd binary.
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd_bin: PathBuf,
        /// Parent directory of both clusters' data dirs (default: the temp dir).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Keep data dirs and member logs.
        #[arg(long)]
        keep_data: bool,
        /// Before each run, wait until other processes use fewer than this many cores.
        #[arg(long)]
        idle_gate: Option<f64>,
        /// TrueType font for the chart (default: DejaVu Sans).
        #[arg(long)]
        font: Option<PathBuf>,
        /// Extra flag for every skiff member (repeat for more).
        #[arg(long, allow_hyphen_values = true)]
        skiff_arg: Vec<String>,
        /// Extra flag for every etcd member (repeat for more).
        #[arg(long, allow_hyphen_values = true)]
        etcd_arg: Vec<String>,
    },
    /// Kill the leader of a 3-member skiff cluster, then of a 3-member etcd cluster, N
    /// times each, and report how long writes stopped (p50/p99, ratio, chart).
    Failover {
        /// Leader kills per system.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Output directory.
        #[arg(long, default_value = "docs/benchmarks")]
        out: PathBuf,
        /// File stem of the outputs (<out>/<name>.md, .png, .json).
        #[arg(long, default_value = "failover")]
        name: String,
        /// The etcd binary.
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd_bin: PathBuf,
        /// Parent directory of the data dirs (default: the temp dir).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// kube-scheduler's scheduler_perf against a running API server and scheduler: creates
    /// --nodes simulated-capacity Nodes and --pods pods per profile, and reports pods bound
    /// per second and create→bound latency (see README "Benchmarks").
    Scheduler(SchedulerBenchArgs),
    /// The API server's read paths against a running API server: LIST latency over
    /// --objects pods, and watch fan-out (write sent → event received at each of --watchers
    /// watches); run with and without the watch cache for a before/after.
    Apiserver(ApiserverBenchArgs),
    /// The controller manager against a running control plane and simulated nodes: a
    /// Deployment of --replicas pods becomes available, rolls out a new image and is deleted;
    /// seconds per phase and CPU per pod of each component (see README "Benchmarks").
    Controllers(ControllersBenchArgs),
    /// The node agent against a running control plane with one real `skiff node-agent`:
    /// --pods pods bound to --node, create → Running p50/p99, the agent's CPU and RSS, the
    /// shims' RSS (see README "Benchmarks").
    Pods(PodsBenchArgs),
    /// What one sync of `skiff proxy` costs: --services × --endpoints-per-service programmed into a
    /// network namespace of its own (root), then --changes single-endpoint changes, each
    /// change → rules programmed (see README "Benchmarks").
    Proxy {
        #[arg(long, default_value_t = 1000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints_per_service: usize,
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// Write <name>.json, <name>.md and <name>.png here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "proxy")]
        name: String,
    },
}

/// `skiff bench pods` flags.
#[derive(Args)]
struct PodsBenchArgs {
    /// Kubeconfig of the API server (else KUBECONFIG, else in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Pods to create.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// The node agent's node: the pods are bound to it.
    #[arg(long)]
    node: String,
    /// The pods' image (present on the node: the run measures the agent, not a pull).
    #[arg(long, default_value = "busybox:1.36")]
    image: String,
    /// Namespace of the pods (created if missing).
    #[arg(long, default_value = "bench-pods")]
    namespace: String,
    /// Pod creates in flight.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Longest wait for every pod Running (and for every pod gone).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// PID of the node agent (its CPU and RSS).
    #[arg(long)]
    agent_pid: Option<u32>,
    /// The node agent's --root-dir (its shims are found by it).
    #[arg(long)]
    agent_root_dir: Option<PathBuf>,
    /// Write <out>/<name>.md, .json and .png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// File stem of the outputs.
    #[arg(long, default_value = "pods")]
    name: String,
}

/// `skiff bench controllers` flags.
#[derive(Args)]
struct ControllersBenchArgs {
    /// Kubeconfig of the API server (else KUBECONFIG, else in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Replicas of the Deployment (the nodes must hold them plus the 25 % surge).
    #[arg(long, default_value_t = 1_000)]
    replicas: usize,
    /// Namespace of the Deployment (created if missing).
    #[arg(long, default_value = "bench-controllers")]
    namespace: String,
    /// Wait (up to a minute) for at least this many Ready nodes before the run.
    #[arg(long, default_value_t = 1)]
    min_nodes: usize,
    /// Longest wait for each phase, e.g. `10m`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
    /// Leave the Deployment and its pods in place (no cleanup phase).
    #[arg(long)]
    keep: bool,
    /// Client endpoints of the store members (CPU per pod of the store when they are local).
    #[arg(long, value_delimiter = ',')]
    store_endpoints: Vec<String>,
    /// The scheduler's secure port (CPU per pod of the scheduler when it is local).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:10259")]
    scheduler_endpoints: Vec<String>,
    /// The controller manager's secure port (its CPU per pod when it is local).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:10257")]
    controller_manager_endpoints: Vec<String>,
    /// PID of `skiff node-sim` (it listens on no port; without it, its CPU is not reported).
    #[arg(long)]
    node_sim_pid: Option<u32>,
    /// Write <out>/<name>.md, .json and .png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// File stem of the outputs.
    #[arg(long, default_value = "controllers")]
    name: String,
    /// A note for the report header.
    #[arg(long)]
    label: Option<String>,
}

/// `skiff bench apiserver` flags.
#[derive(Args)]
struct ApiserverBenchArgs {
    /// Kubeconfig of the API server (else KUBECONFIG, else in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the pods (created if missing).
    #[arg(long, default_value = "bench-apiserver")]
    namespace: String,
    /// Pods to create and list.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 32)]
    create_clients: usize,
    /// Full lists of the pods.
    #[arg(long, default_value_t = 100)]
    lists: usize,
    /// Concurrent listers.
    #[arg(long, default_value_t = 4)]
    list_clients: usize,
    /// Watches open on the pods while they are updated.
    #[arg(long, default_value_t = 1_000)]
    watchers: usize,
    /// Updates of one pod, each delivered to every watcher.
    #[arg(long, default_value_t = 100)]
    writes: usize,
    /// Time between two updates, e.g. `50ms`.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    write_interval: Duration,
    /// Client endpoints of the store members (CPU of the store when they are local).
    #[arg(long, value_delimiter = ',')]
    store_endpoints: Vec<String>,
    /// Leave the pods in place at the end.
    #[arg(long)]
    keep: bool,
    /// Add this run to <out>/<name>.md, .json and .png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// File stem of the outputs.
    #[arg(long, default_value = "apiserver")]
    name: String,
    /// This run's name in the report, e.g. `watch cache`.
    #[arg(long, default_value = "default")]
    case: String,
    /// A note for the report header.
    #[arg(long)]
    label: Option<String>,
}

/// `skiff bench scheduler` flags.
#[derive(Args)]
struct SchedulerBenchArgs {
    /// Kubeconfig of the API server (else KUBECONFIG, else in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Nodes to create (4 CPUs, 32 Gi, 110 pods each, over 10 zones).
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// Pods to create per profile.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Profiles to run one after the other: basic, affinity, anti-affinity, spread, preemption.
    #[arg(long, value_delimiter = ',', default_value = "basic")]
    profile: Vec<skiff_bench::scheduler::Profile>,
    /// Namespace of the pods (created if missing).
    #[arg(long, default_value = "bench-scheduler")]
    namespace: String,
    /// Concurrent creators.
    #[arg(long = "create-clients", default_value_t = 32)]
    create_clients: usize,
    /// Node names are <prefix><i>.
    #[arg(long, default_value = "bench-node-")]
    node_prefix: String,
    /// Longest wait for one profile's pods to be bound, e.g. `10m`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
    /// Leave the nodes and pods in place at the end.
    #[arg(long)]
    keep: bool,
    /// Client endpoints of the store members (CPU per pod of the store when they are local).
    #[arg(long, value_delimiter = ',')]
    store_endpoints: Vec<String>,
    /// The scheduler's secure port (CPU per pod of the scheduler when it is local).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:10259")]
    scheduler_endpoints: Vec<String>,
    /// Write <out>/<name>.md, .json and .png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// File stem of the outputs.
    #[arg(long, default_value = "scheduler")]
    name: String,
    /// A note for the report header.
    #[arg(long)]
    label: Option<String>,
}

impl BenchArgs {
    pub(crate) fn run(self) -> ExitCode {
        use skiff_bench::{BenchConfig, Workload, compare::CompareConfig};
        let workload = match self.command {
            BenchCommand::Put => Workload::Put,
            BenchCommand::Range {
                key,
                end,
                consistency,
                limit,
                count_only,
            } => Workload::Range {
                key: key.into_bytes(),
                end: end.map(String::into_bytes),
                consistency,
                limit,
                count_only,
            },
            BenchCommand::TxnPut { txn_ops } => Workload::TxnPut { txn_ops },
            BenchCommand::Watch { watchers, streams } => Workload::Watch { watchers, streams },
            BenchCommand::LeaseKeepalive => Workload::LeaseKeepalive,
            BenchCommand::Scheduler(args) => return run_scheduler_bench(args, self.json),
            BenchCommand::Apiserver(args) => return run_apiserver_bench(args, self.json),
            BenchCommand::Controllers(args) => return run_controllers_bench(args, self.json),
            BenchCommand::Pods(args) => return run_pods_bench(args, self.json),
            BenchCommand::Proxy {
                services,
                endpoints_per_service,
                changes,
                out,
                name,
            } => {
                let config = skiff_bench::proxy::ProxyBenchConfig {
                    services,
                    endpoints: endpoints_per_service,
                    changes,
                    out_dir: out,
                    name,
                };
                let json = self.json;
                return exit_code(skiff_bench::proxy::run(config).map(|report| {
                    print!("{}", skiff_bench::proxy::render(&report, json));
                    ExitCode::SUCCESS
                }));
            }
            BenchCommand::Failover {
                kills,
                out,
                name,
                etcd_bin,
                work_dir,
            } => {
                let config = skiff_bench::failover::FailoverConfig {
                    skiff_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff")),
                    etcd_bin,
                    kills,
                    out_dir: out,
                    name,
                    work_dir,
                    command_line: skiff_bench::compare::current_command_line(),
                };
                return exit_code(skiff_bench::failover::run_blocking(config).map(|report| {
                    println!("{}", report.display());
                    ExitCode::SUCCESS
                }));
            }
            BenchCommand::Compare {
                repeats,
                preload,
                put_clients,
                range_clients,
                out,
                name,
                label,
                etcd_bin,
                work_dir,
                keep_data,
                idle_gate,
                font,
                skiff_arg,
                etcd_arg,
            } => {
                let defaults = CompareConfig::default();
                let config = CompareConfig {
                    skiff_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff")),
                    etcd_bin,
                    repeats,
                    duration: self.duration.unwrap_or(defaults.duration),
                    preload,
                    put_clients,
                    range_clients,
                    key_size: self.key_size.unwrap_or(defaults.key_size),
                    val_size: self.val_size.unwrap_or(defaults.val_size),
                    out_dir: out,
                    name,
                    label,
                    work_dir,
                    keep_data,
                    idle_gate,
                    font,
                    skiff_args: skiff_arg,
                    etcd_args: etcd_arg,
                    command_line: None,
                };
                return exit_code(
                    skiff_bench::compare::run_blocking(config).map(|_| ExitCode::SUCCESS),
                );
            }
        };
        let config = BenchConfig {
            endpoints: self.endpoints,
            clients: self.clients,
            conns: self.conns,
            total: self.total,
            duration: self.duration,
            key_size: self.key_size.unwrap_or(8),
            val_size: self.val_size.unwrap_or(8),
            key_space_size: self.key_space_size,
            sequential_keys: self.sequential_keys,
            rate: (self.rate > 0.0).then_some(self.rate),
            workload,
            ..BenchConfig::default()
        };
        exit_code(skiff_bench::run_and_print(config, self.json).map(|_| ExitCode::SUCCESS))
    }
}

fn run_scheduler_bench(args: SchedulerBenchArgs, json: bool) -> ExitCode {
    let config = skiff_bench::scheduler::SchedulerBenchConfig {
        kubeconfig: args.kubeconfig,
        nodes: args.nodes,
        pods: args.pods,
        profiles: args.profile,
        namespace: args.namespace,
        clients: args.create_clients,
        node_prefix: args.node_prefix,
        timeout: args.timeout,
        keep: args.keep,
        store_endpoints: args.store_endpoints,
        scheduler_endpoints: args.scheduler_endpoints,
        out_dir: args.out,
        name: args.name,
        label: args.label,
        command_line: Some(skiff_bench::compare::current_command_line()),
    };
    exit_code(skiff_bench::scheduler::run_blocking(config).map(|report| {
        print!("{}", skiff_bench::scheduler::render(&report, json));
        if report.profiles.iter().all(|p| p.all_bound()) {
            ExitCode::SUCCESS
        } else {
            eprintln!("skiff: not every pod was bound");
            ExitCode::FAILURE
        }
    }))
}

fn run_pods_bench(args: PodsBenchArgs, json: bool) -> ExitCode {
    let config = skiff_bench::pods::PodsBenchConfig {
        kubeconfig: args.kubeconfig,
        namespace: args.namespace,
        pods: args.pods,
        node: args.node,
        image: args.image,
        concurrency: args.concurrency,
        timeout: args.timeout,
        agent_pid: args.agent_pid,
        agent_root_dir: args.agent_root_dir,
        out_dir: args.out,
        name: args.name,
    };
    exit_code(skiff_bench::pods::run_blocking(config).map(|report| {
        print!("{}", skiff_bench::pods::render(&report, json));
        if report.completed {
            ExitCode::SUCCESS
        } else {
            eprintln!("skiff: not every pod was Running within --timeout");
            ExitCode::FAILURE
        }
    }))
}

fn run_controllers_bench(args: ControllersBenchArgs, json: bool) -> ExitCode {
    let config = skiff_bench::controllers::ControllersBenchConfig {
        kubeconfig: args.kubeconfig,
        replicas: args.replicas,
        namespace: args.namespace,
        min_nodes: args.min_nodes,
        timeout: args.timeout,
        keep: args.keep,
        store_endpoints: args.store_endpoints,
        scheduler_endpoints: args.scheduler_endpoints,
        controller_manager_endpoints: args.controller_manager_endpoints,
        node_sim_pid: args.node_sim_pid,
        out_dir: args.out,
        name: args.name,
        label: args.label,
        command_line: Some(skiff_bench::compare::current_command_line()),
    };
    exit_code(
        skiff_bench::controllers::run_blocking(config).map(|report| {
            print!("{}", skiff_bench::controllers::render(&report, json));
            if report.completed() {
                ExitCode::SUCCESS
            } else {
                eprintln!("skiff: not every phase completed within --timeout");
                ExitCode::FAILURE
            }
        }),
    )
}

fn run_apiserver_bench(args: ApiserverBenchArgs, json: bool) -> ExitCode {
    let config = skiff_bench::apiserver::ApiserverBenchConfig {
        kubeconfig: args.kubeconfig,
        namespace: args.namespace,
        objects: args.objects,
        create_clients: args.create_clients,
        lists: args.lists,
        list_clients: args.list_clients,
        watchers: args.watchers,
        writes: args.writes,
        write_interval: args.write_interval,
        store_endpoints: args.store_endpoints,
        keep: args.keep,
        out_dir: args.out,
        name: args.name,
        case: args.case,
        label: args.label,
        command_line: Some(skiff_bench::compare::current_command_line()),
    };
    exit_code(skiff_bench::apiserver::run_blocking(config).map(|case| {
        print!("{}", skiff_bench::apiserver::render(&case, json));
        if case.missing_deliveries == 0 {
            ExitCode::SUCCESS
        } else {
            eprintln!(
                "skiff: {} watch events never arrived",
                case.missing_deliveries
            );
            ExitCode::FAILURE
        }
    }))
}

/// A run's outcome as the exit status: bad flags or configuration print one line and exit 2,
/// other failures one line and exit 1.
fn exit_code(outcome: Result<ExitCode, skiff_bench::Error>) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(skiff_bench::Error::Config(msg)) => {
            eprintln!("skiff: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(err) => {
            eprintln!("skiff: {err}");
            ExitCode::FAILURE
        }
    }
}
