//! The Deployment controller: `sync` decides, the shell applies.

pub mod controller;
mod hash;
mod replica_sets;
mod revision;
mod rollout;
mod spec;
mod status;
pub mod sync;
