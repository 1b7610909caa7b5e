//! Informers on kube-runtime: a `watcher` (list, then watch, relisting after a 410 with
//! kube-runtime's default backoff) whose events go through a bounded channel to one consumer,
//! optionally through a `reflector` that keeps a read-only cache. A slow consumer slows the
//! watch (back-pressure), it never grows a queue.

use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events buffered between a watcher and its consumer.
pub const INFORMER_QUEUE_MAX: usize = 1024;

/// Starts a watcher on `api`; events arrive on the returned bounded channel. The task ends
/// when the receiver is dropped.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (mpsc::Receiver<watcher::Event<K>>, JoinHandle<()>)
where
    K: Resource + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
{
    let (tx, rx) = mpsc::channel(INFORMER_QUEUE_MAX);
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "watch failed; retrying"),
            }
        }
    });
    (rx, task)
}

/// Like [`watch`], also keeping a reflector cache of the objects.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, mpsc::Receiver<watcher::Event<K>>, JoinHandle<()>)
where
    K: Resource + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let (tx, rx) = mpsc::channel(INFORMER_QUEUE_MAX);
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "watch failed; retrying"),
            }
        }
    });
    (reader, rx, task)
}
