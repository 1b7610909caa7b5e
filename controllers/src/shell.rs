//! What every controller's IO shell shares: object keys, the workers that drain a work queue
//! into a sync function (success forgets the key's failures, an error backs it off, a
//! requested delay queues it again), and error classification.

use std::future::Future;
use std::time::Duration;

use kube::ResourceExt;
use skiff_client::workqueue::WorkQueue;

use crate::Error;

/// Keys a controller's work queue holds at most (objects of its kind waiting for a sync).
pub const QUEUE_MAX: usize = 100_000;

/// A namespaced object's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl Key {
    /// The key of `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Key {
        Key {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of an object.
    pub fn of<K: ResourceExt>(obj: &K) -> Key {
        Key {
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a sync asks of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Nothing more until something changes.
    Done,
    /// Sync again after this long (a pod becoming available, a deadline).
    After(Duration),
}

/// The HTTP status of an API error, if the server answered.
pub fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Runs `workers` workers over `queue` until it shuts down; each key goes through `sync`.
pub async fn run_workers<F, Fut>(queue: WorkQueue<Key>, workers: usize, sync: F)
where
    F: Fn(Key) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<SyncOutcome, Error>> + Send,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let sync = sync.clone();
        set.spawn(async move {
            while let Some(key) = queue.get().await {
                match sync(key.clone()).await {
                    Ok(outcome) => {
                        queue.forget(&key);
                        if let SyncOutcome::After(delay) = outcome {
                            queue.add_after(key.clone(), delay);
                        }
                    }
                    Err(err) => {
                        let delay = queue.add_rate_limited(key.clone());
                        // Conflicts are the normal cost of optimistic writes over a cache.
                        let conflict = matches!(&err, Error::Api(e) if api_code(e) == Some(409));
                        if conflict {
                            tracing::debug!(%key, error = %err, ?delay, "sync failed; retrying");
                        } else {
                            tracing::warn!(%key, error = %err, ?delay, "sync failed; retrying");
                        }
                    }
                }
                queue.done(&key);
            }
        });
    }
    while set.join_next().await.is_some() {}
}
