//! The ReplicaSet controller: `plan` decides, `controller` (the IO shell) applies.

pub mod controller;
pub mod plan;
