//! skiff's node agent (kubelet's job): it runs the pods the API server assigns to its node with
//! runc, through a small per-container shim, in CNI-networked sandboxes, from OCI images. It
//! talks to the API server only (through `skiff-client`), never to the store.
//!
//! Layers, lowest first (a module imports only from layers below it):
//! - `shim`, `runtime`: one container's life under runc (start through the shim, state from exit
//!   files, kill, exec, list for re-adoption).
//! - `image`: the content-addressed image store (pull, import, unpack, overlay rootfs).
//! - `network`, `cgroups`: the pod sandbox (named netns + CNI, pod cgroup parents).
//! - `spec`, `volumes`: a container's OCI config.json from the pod, the image and the volumes.
//! - `pod`: the pure pod plan (desired + observed → actions and status) and the worker that
//!   carries it out.
//! - `node`: the Node object, its Lease and status.
//! - `server`: the HTTPS API (kubelet's port 10250): `/healthz`, container logs, exec.
//! - `portforward`: kubelet's port-forward protocol over SPDY/3.1, on a connection `server`
//!   upgraded (streams into the pod's netns).
//! - `agent`: `run(config, shutdown)` wiring it together.

pub mod agent;
pub mod cgroups;
pub mod image;
pub mod network;
pub mod node;
pub mod pod;
pub mod portforward;
pub mod runtime;
pub mod server;
pub mod shim;
pub mod spec;
pub mod volumes;
