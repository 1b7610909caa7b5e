//! Jepsen-style chaos suite for skiff (issue 4): histories, checkers, and the fault-injecting
//! harness behind the `skiff-chaos` binary.
//!
//! - [`history`]: operations and `history.jsonl`, with Jepsen's field names and semantics;
//! - [`edn`] and [`parse`]: readers for Jepsen logs and EDN histories (the checker's corpus);
//! - [`checker`]: the per-key linearizability checker (Wing–Gong / Lowe search, Porcupine style)
//!   and the revision, list-append, watch and lease checkers;
//! - [`net`], [`cluster`]: network namespaces and the member processes in them;
//! - [`nemesis`]: faults, their schedule and their injection;
//! - [`client`], [`workload`]: the clients and what they do;
//! - [`analysis`], [`results`], [`plot`]: verdicts and the run directory;
//! - [`runner`], [`suite`]: one run, and lists of runs;
//! - [`bugcheck`]: every bug switch of a skiff test build must be caught.

pub mod analysis;
pub mod bugcheck;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod edn;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod parse;
pub mod plot;
pub mod results;
pub mod runner;
pub mod suite;
pub mod workload;
