//! The `skiff` binary: the command line's top level and dispatch. Each subcommand lives in
//! its own module (flags, logging setup, signals) as a thin shell around a library crate.

mod apiserver;
mod bench;
mod cli;
mod component;
mod controller_manager;
mod dns;
mod logging;
mod node_agent;
mod node_sim;
mod pki;
mod proxy;
mod scheduler;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::EXIT_USAGE;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A Kubernetes-style control plane with a built-in Raft-replicated etcd-compatible store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup: the size of the flag struct does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a store member (etcd v3 API on the client URLs), or an offline store tool.
    ///
    /// Members trust each other: a message on the peer port can make a member append log
    /// entries, vote, install a snapshot or change the membership. Never let anything but
    /// the members reach the peer port without peer mutual TLS: https peer URLs with
    /// --peer-cert-file, --peer-key-file, --peer-trusted-ca-file and --peer-client-cert-auth.
    #[command(args_conflicts_with_subcommands = true)]
    Store(store::StoreArgs),
    /// Certificates for TLS between clients and members.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Benchmark etcd v3 endpoints (skiff or etcd) like etcd's benchmark tool, or compare
    /// a skiff cluster with a real etcd cluster side by side.
    Bench(bench::BenchArgs),
    /// Run a Kubernetes-compatible API server over an etcd v3 store (skiff store or etcd).
    Apiserver(apiserver::ApiserverArgs),
    /// Run the pod scheduler (kube-scheduler's filters, scores and flags; leader-elected).
    Scheduler(scheduler::SchedulerArgs),
    /// Run the controller manager (Deployments, ReplicaSets, garbage collection; leader-elected;
    /// kube-controller-manager's flags).
    ControllerManager(controller_manager::ControllerManagerArgs),
    /// Explain why a pod is pending: each node's verdict from the scheduler's filters.
    WhyPending(scheduler::WhyPendingArgs),
    /// Simulate kubelets (kwok-style): register Nodes, renew their Leases, run their pods'
    /// status lifecycle, without containers.
    NodeSim(node_sim::NodeSimArgs),
    /// Run the node agent (kubelet's job): the pods bound to this node, with runc, CNI
    /// networking and OCI images; kubelet's flags.
    NodeAgent(node_agent::NodeAgentArgs),
    /// Run the service proxy (kube-proxy's iptables mode): ClusterIPs and NodePorts to the
    /// Services' endpoints; kube-proxy's flags.
    Proxy(proxy::ProxyArgs),
    /// Serve cluster DNS (CoreDNS's kubernetes plugin names) for the pods of this node;
    /// other names are forwarded to the node's resolvers.
    Dns(dns::DnsArgs),
    /// The node agent's image store offline: import (air-gapped nodes), list, rm.
    #[command(subcommand)]
    Images(node_agent::ImagesCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = err.print();
                return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One clear line instead of clap's multi-line usage text.
            let rendered = err.render().to_string();
            let line = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("skiff: {line} (see `skiff --help`)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Store(args) => store::run(args),
        Command::Bench(args) => args.run(),
        Command::Apiserver(args) => apiserver::run(args),
        Command::Scheduler(args) => scheduler::run(args),
        Command::ControllerManager(args) => controller_manager::run(args),
        Command::WhyPending(args) => scheduler::why_pending(args),
        Command::Pki(command) => command.run(),
        Command::NodeSim(args) => node_sim::run(args),
        Command::NodeAgent(args) => node_agent::run(args),
        Command::Images(command) => command.run(),
        Command::Proxy(args) => proxy::run(args),
        Command::Dns(args) => dns::run(args),
    }
}
