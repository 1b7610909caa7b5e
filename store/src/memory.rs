//! Giving freed memory back to the OS. A compaction drops every old version from the
//! in-memory index (values included) and a defrag rebuilds the backend file; glibc's malloc
//! keeps what they free in its arenas, so without a trim the member's RSS never goes down
//! after writing a long history. Trimmed after every compaction a member applies (whoever
//! asked for it, leader or follower, or a snapshot that moved the compact revision) and
//! after every defrag.

use std::sync::Arc;

use crate::node::StoreNode;

/// Return the free memory of every malloc arena to the OS (`malloc_trim(0)`); a no-op
/// where the allocator is not glibc's. Walks the free lists: call it off the async runtime.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases pages malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trim once each time the store's compact revision moves, until `stop`.
pub async fn trim_after_compactions(
    node: Arc<StoreNode>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = node.sm.subscribe();
    let mut seen = node.sm.read().mvcc.compact_revision();
    loop {
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let compacted = node.sm.read().mvcc.compact_revision();
        if compacted == seen {
            continue;
        }
        seen = compacted;
        let started = std::time::Instant::now();
        if tokio::task::spawn_blocking(release_freed_memory)
            .await
            .is_ok()
        {
            tracing::debug!(compact_revision = compacted, took = ?started.elapsed(), "returned freed memory to the OS");
        }
    }
}
