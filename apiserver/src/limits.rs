//! The API server's per-request limits in one place (the style guide's `limits.rs`).

/// Largest request body accepted (kube-apiserver's limit).
pub const MAX_BODY_BYTES: usize = 3 << 20;
