//! What every controller's IO shell shares: object keys, the workers that drain a work queue
//! into a sync function (success forgets the key's failures, an error backs it off, a
//! requested delay queues it again), and error classification.

use std::future::Future;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use skiff_client::workqueue::WorkQueue;

use crate::Error;

/// How often the ReplicaSet and Deployment controllers look at every object again, whatever
/// their informers said (a full resync heals a missed event).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(300);

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

/// What an error says to a user, as upstream's events and conditions put it: the API
/// server's own message (`pods "x" is forbidden: exceeded quota: …`), else the error.
pub fn error_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// [`error_message`] for this crate's errors.
pub fn message_of(err: &Error) -> String {
    match err {
        Error::Api(err) => error_message(err),
        other => other.to_string(),
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

/// What an informer can watch: a typed Kubernetes object (kube-runtime's reflector bounds).
pub trait Watchable:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + Send
    + Sync
    + serde::de::DeserializeOwned
    + 'static
{
}

impl<K> Watchable for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static
{
}

/// A controller's plumbing, written once: informers whose events a router turns into keys of
/// one work queue, the caches every sync reads (waited for before the first sync, as
/// upstream's `WaitForCacheSync`), workers, optional loops beside them (resyncs, timers), and
/// a shutdown that stops the queue and the informers.
pub struct Plumbing {
    name: &'static str,
    queue: WorkQueue<Key>,
    routers: Vec<futures::future::BoxFuture<'static, ()>>,
    ready: Vec<futures::future::BoxFuture<'static, ()>>,
    before_workers: Vec<futures::future::BoxFuture<'static, ()>>,
    informers: Vec<tokio::task::JoinHandle<()>>,
}

impl Plumbing {
    /// The plumbing of the controller `name` (for logs), with a queue of [`QUEUE_MAX`] keys.
    pub fn new(name: &'static str) -> Plumbing {
        Plumbing {
            name,
            queue: WorkQueue::new(QUEUE_MAX),
            routers: Vec::new(),
            ready: Vec::new(),
            before_workers: Vec::new(),
            informers: Vec::new(),
        }
    }

    /// The work queue (for routers, resyncs and the first keys).
    pub fn queue(&self) -> WorkQueue<Key> {
        self.queue.clone()
    }

    /// An informer on `api` whose every event goes through `route` (which queues the keys
    /// it concerns); returns its cache.
    pub fn informer<K, R>(&mut self, api: kube::Api<K>, route: R) -> Store<K>
    where
        K: Watchable,
        R: FnMut(watcher::Event<K>, &WorkQueue<Key>) + Send + 'static,
    {
        self.informer_with(api, watcher::Config::default(), route)
    }

    /// [`Plumbing::informer`] watching with `config` (a label selector: some objects only).
    pub fn informer_with<K, R>(
        &mut self,
        api: kube::Api<K>,
        config: watcher::Config,
        mut route: R,
    ) -> Store<K>
    where
        K: Watchable,
        R: FnMut(watcher::Event<K>, &WorkQueue<Key>) + Send + 'static,
    {
        let (store, mut events, task) = skiff_client::informer::reflect(api, config);
        let queue = self.queue.clone();
        let name = self.name;
        self.routers.push(Box::pin(async move {
            while let Some(event) = events.recv().await {
                route(event, &queue);
            }
            tracing::warn!(controller = name, kind = %K::kind(&()), "informer ended");
        }));
        let ready = store.clone();
        self.ready.push(Box::pin(async move {
            let _ = ready.wait_until_ready().await;
        }));
        self.informers.push(task);
        store
    }

    /// An informer whose applied and deleted objects each queue the keys `keys_of` names.
    pub fn informer_of<K, F>(&mut self, api: kube::Api<K>, keys_of: F) -> Store<K>
    where
        K: Watchable,
        F: Fn(&K) -> Vec<Key> + Send + 'static,
    {
        self.informer(api, move |event, queue| {
            for obj in applied(event) {
                for key in keys_of(&obj) {
                    queue.add(key);
                }
            }
        })
    }

    /// A step run once every cache has synced, before `started` and the workers (creating
    /// what the syncs expect to find); several run one after another, in the order given.
    pub fn before_workers(&mut self, step: impl Future<Output = ()> + Send + 'static) {
        self.before_workers.push(Box::pin(step));
    }

    /// Runs until `shutdown`: once every cache has synced, the [`Plumbing::before_workers`]
    /// steps, then `started` (first keys, leftovers), then `workers` workers over `sync`
    /// beside `beside` (resyncs, timers; may be `std::future::pending()`).
    pub async fn run<F, Fut>(
        self,
        workers: usize,
        sync: F,
        started: impl FnOnce(&WorkQueue<Key>) + Send,
        beside: impl Future<Output = ()> + Send,
        shutdown: impl Future<Output = ()> + Send,
    ) where
        F: Fn(Key) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<SyncOutcome, Error>> + Send,
    {
        let Plumbing {
            name,
            queue,
            routers,
            ready,
            before_workers,
            informers,
        } = self;
        let work = async {
            futures::future::join_all(ready).await;
            for step in before_workers {
                step.await;
            }
            tracing::info!(
                controller = name,
                workers,
                "caches synced, starting workers"
            );
            started(&queue);
            tokio::select! {
                _ = run_workers(queue.clone(), workers, sync) => {}
                _ = beside => {}
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = futures::future::select_all(routers), if !routers.is_empty() => {}
            _ = work => {}
        }
        queue.shut_down();
        for task in informers {
            task.abort();
        }
    }
}

/// The objects an informer event touched (deleted ones included: their owner must look again).
pub fn applied<K>(event: watcher::Event<K>) -> Vec<K> {
    match event {
        watcher::Event::Apply(obj)
        | watcher::Event::InitApply(obj)
        | watcher::Event::Delete(obj) => {
            vec![obj]
        }
        watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
    }
}

/// Queues every cached object's key every `period` (the first after one period): upstream's
/// informer resync, healing whatever an event missed.
pub async fn resync_every<K>(period: Duration, cache: Store<K>, queue: WorkQueue<Key>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        for obj in cache.state() {
            queue.add(Key::of(obj.as_ref()));
        }
    }
}

/// The owners an event on a dependent concerns (upstream's `getPodReplicaSets` shape): its
/// controller if that is a `kind` whose apiVersion starts with `api_version_prefix`, else —
/// an orphan an owner may adopt — every cached owner of its namespace whose selector (as
/// `selector` reads it) matches the dependent's labels.
pub fn owners_to_queue<K: Watchable>(
    dependent: &kube::api::ObjectMeta,
    kind: &str,
    api_version_prefix: &str,
    owners: &Store<K>,
    selector: impl Fn(&K) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Vec<Key> {
    let namespace = dependent.namespace.clone().unwrap_or_default();
    if let Some(owner) = crate::pods::controller_of(dependent) {
        if owner.kind == kind && owner.api_version.starts_with(api_version_prefix) {
            return vec![Key::new(&namespace, &owner.name)];
        }
        return Vec::new();
    }
    let labels = crate::pods::labels(dependent);
    owners
        .state()
        .iter()
        .filter(|owner| owner.meta().namespace.as_deref() == Some(namespace.as_str()))
        .filter(|owner| selector(owner).is_some_and(|s| crate::pods::selector_matches(s, labels)))
        .map(|owner| Key::of(owner.as_ref()))
        .collect()
}
