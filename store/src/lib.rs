//! skiff's store: a Raft-replicated MVCC key-value store that speaks the etcd v3 API.
//!
//! Layers, bottom up: [`engine`] (atomic batches on redb or memory), [`mvcc`] (etcd's
//! revision semantics, pure), [`raft_log`] and [`state_machine`] (openraft storage on the
//! engine), [`network`] (member-to-member RPC), [`node`] (write forwarding, read index,
//! membership), [`grpc`] and [`http`] (the etcd wire), and [`server`] (start and stop).

// openraft's StorageError is large and is the return type its traits dictate.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod auth_grpc;
pub mod campaign;
#[cfg(feature = "chaos-bugs")]
pub mod chaos_bugs;
pub mod checks;
pub mod compactor;
pub mod config;
pub mod election;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod grpc;
pub mod http;
pub mod lease;
pub mod lock;
pub mod log_sync;
pub mod maintenance;
pub mod memory;
pub mod metrics;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod peer_stream;
pub mod pki;
pub mod proposer;
pub mod raft_log;
pub mod read_index;
pub mod server;
pub mod snapshot;
pub mod state_machine;
pub mod transfer;
pub mod types;
pub mod wal;
pub mod watch;

pub use config::StoreConfig;
pub use error::Error;
pub use server::{RunningStore, run, start};
