//! kube-apiserver's watch cache (the "cacher"): a [`Storage`] that serves lists and watches of
//! each resource from memory, kept current by ONE store watch per resource, however many
//! clients watch.
//!
//! - **One cache per resource prefix** (`<etcd prefix>/<resource>/`, registered at
//!   construction). A list or watch under it (a namespaced one is a prefix below it) is served
//!   by that cache, filtered by key prefix; anything else passes through, as do get, create,
//!   update and delete.
//! - **Lazily started.** The first list or watch of a resource starts its feeder task: a paged
//!   list at one revision R, then one bookmarking store watch from R, which keeps the items
//!   (key → [`Stored`]), the cache's revision and a ring of the last [`EVENT_RING_CAPACITY`]
//!   events current.
//! - **Watches** whose resourceVersion is inside the window (at or after the oldest revision
//!   the ring replays from) get the buffered events after it, then live ones, each through a
//!   queue of [`WATCHER_QUEUE_CAPACITY`]; a watcher whose queue is full is ended (its stream
//!   ends, the client watches again from its last resourceVersion), as kube-apiserver closes
//!   slow watchers. An older resourceVersion is served by the store's own watch (it still has
//!   the history, or answers Compacted): a watch resumed on another replica sees no gap. A
//!   resourceVersion the store has compacted is Compacted (410 Expired) even when the window
//!   still holds it (one empty range at that revision per watch), as without the cache.
//! - **Consistent lists** (revision 0): the store's current revision is read (an empty range),
//!   a progress notification is asked for, and the list is served from memory once the cache
//!   has caught up — or by the store after [`CONSISTENT_READ_TIMEOUT`]. A page's revision is
//!   the cache's; its continue token is then served by the store at exactly that revision.
//!   Lists at a given revision go to the store.
//! - **Relist.** When the store watch ends (compacted, or no member for its resume budget),
//!   the cache ends every watcher of the resource and rebuilds from a new list. While it is
//!   not ready, requests wait up to [`READY_TIMEOUT`] and then go to the store.
//!
//! Values are kept as the inner storage returns them: the cacher wraps the encryption layer,
//! so they are plaintext, in memory only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::{Notify, mpsc, watch};

use super::{Change, Page, Result, Storage, StorageError, Stored};
use crate::metrics::{WatchCacheCounters, WatchCacheLabels, WatchCacheMetrics};

/// Recent events each resource's cache keeps for watchers resuming from a recent
/// resourceVersion.
pub const EVENT_RING_CAPACITY: usize = 1024;
/// Events queued towards one watcher; a watcher that falls this far behind is ended.
pub const WATCHER_QUEUE_CAPACITY: usize = 1024;
/// How long a consistent list waits for the cache to reach the store's revision before the
/// store serves it (kube-apiserver waits 3 s too).
pub const CONSISTENT_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request waits for a starting (or relisting) cache before the store serves it.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys per page of the list that (re)builds a cache.
pub const RELIST_PAGE_SIZE: i64 = 500;
/// Pause after a failed (re)build: doubling from the first, capped.
pub const RELIST_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));
/// A store watch that ends sooner than this after the cache was built counts as a failed
/// build (the next one waits its back-off).
pub const MIN_FOLLOW: Duration = Duration::from_secs(1);
/// A watcher that asked for bookmarks gets at most one per this interval.
pub const BOOKMARK_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// One resource the cacher keeps a cache of.
#[derive(Debug, Clone)]
pub struct CachedResource {
    /// The key prefix of every object of the resource: `<etcd prefix>/<resource>/`.
    pub prefix: String,
    pub labels: WatchCacheLabels,
}

impl CachedResource {
    /// The resource `resource` of `group`/`version` (kind `kind`) under `etcd_prefix`
    /// (`--etcd-prefix`); keys are `<etcd prefix>/<resource>/…`, as the registry lays them out.
    pub fn new(etcd_prefix: &str, group: &str, version: &str, kind: &str, resource: &str) -> Self {
        let qualified = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        CachedResource {
            prefix: format!("{}/{resource}/", etcd_prefix.trim_end_matches('/')),
            labels: WatchCacheLabels {
                group: group.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
                resource: qualified,
                resource_prefix: format!("/{resource}"),
            },
        }
    }
}

/// The watch cache in front of `inner`.
pub struct Cacher {
    inner: Arc<dyn Storage>,
    /// By key prefix; one per resource.
    caches: Vec<Arc<ResourceCache>>,
    /// Whether consistent lists may be served from the cache: only once every store member
    /// is known to order requested progress notifications after the events they cover
    /// ([`crate::storage::etcd::supports_watch_progress`]); until then the store serves them.
    consistent_lists: Arc<AtomicBool>,
}

impl Cacher {
    /// A cacher of `resources` (duplicate prefixes are cached once) in front of `inner`.
    pub fn new(
        inner: Arc<dyn Storage>,
        resources: impl IntoIterator<Item = CachedResource>,
        metrics: &WatchCacheMetrics,
    ) -> Cacher {
        let mut caches: Vec<Arc<ResourceCache>> = Vec::new();
        for resource in resources {
            if caches.iter().any(|c| c.prefix == resource.prefix) {
                continue;
            }
            let counters = metrics.register(resource.labels.clone());
            counters
                .capacity
                .store(EVENT_RING_CAPACITY as i64, Ordering::Relaxed);
            caches.push(ResourceCache::new(inner.clone(), resource.prefix, counters));
        }
        Cacher {
            inner,
            caches,
            consistent_lists: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Serve consistent lists from the cache only while `allowed` is true (set by whoever
    /// checks the store's version; see [`Cacher::consistent_lists`]).
    pub fn with_consistent_lists(mut self, allowed: Arc<AtomicBool>) -> Cacher {
        self.consistent_lists = allowed;
        self
    }

    /// The cache serving `prefix`, if one does.
    fn cache_for(&self, prefix: &str) -> Option<Arc<ResourceCache>> {
        self.caches
            .iter()
            .find(|c| prefix.starts_with(&c.prefix))
            .cloned()
    }
}

impl Drop for Cacher {
    fn drop(&mut self) {
        for cache in &self.caches {
            if let Some(task) = cache.lock_task().take() {
                task.abort();
            }
        }
    }
}

/// Where a cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Never started.
    Idle,
    /// Listing (first time, or after its store watch ended).
    Starting,
    /// Current: serving.
    Ready,
    /// The last (re)build failed; requests go to the store while it retries.
    Failed,
}

/// What waiters watch: the phase and the revision the cache is current to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Status {
    phase: Phase,
    revision: i64,
}

/// One event in the ring (and in watchers' queues). Progress notifications travel the
/// queues as `Change::Progress` with an empty key.
#[derive(Debug)]
struct CachedEvent {
    key: String,
    revision: i64,
    change: Change,
}

/// A watcher served from the cache.
struct CacheWatcher {
    /// Keys it wants start with this.
    prefix: String,
    /// Only events after this revision (a watch may start after the cache's revision).
    after: i64,
    bookmarks: bool,
    last_bookmark: Instant,
    queue: mpsc::Sender<Arc<CachedEvent>>,
}

struct CacheState {
    phase: Phase,
    items: BTreeMap<String, Stored>,
    /// The store revision the items are current to.
    revision: i64,
    /// The revision was last moved by a progress notification (not by an event).
    revision_from_progress: bool,
    /// Every event after this revision is in `events`.
    window_start: i64,
    events: VecDeque<Arc<CachedEvent>>,
    watchers: HashMap<u64, CacheWatcher>,
    next_watcher: u64,
}

/// One resource's cache.
struct ResourceCache {
    inner: Arc<dyn Storage>,
    prefix: String,
    state: Mutex<CacheState>,
    status: watch::Sender<Status>,
    /// Asks the store watch for a progress notification now.
    progress_requests: Arc<Notify>,
    counters: Arc<WatchCacheCounters>,
    /// The feeder task, once started.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl ResourceCache {
    fn new(
        inner: Arc<dyn Storage>,
        prefix: String,
        counters: Arc<WatchCacheCounters>,
    ) -> Arc<ResourceCache> {
        let (status, _) = watch::channel(Status {
            phase: Phase::Idle,
            revision: 0,
        });
        Arc::new(ResourceCache {
            inner,
            prefix,
            state: Mutex::new(CacheState {
                phase: Phase::Idle,
                items: BTreeMap::new(),
                revision: 0,
                revision_from_progress: false,
                window_start: 0,
                events: VecDeque::new(),
                watchers: HashMap::new(),
                next_watcher: 0,
            }),
            status,
            progress_requests: Arc::new(Notify::new()),
            counters,
            task: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_task(&self) -> MutexGuard<'_, Option<tokio::task::AbortHandle>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the state's phase and revision to waiters (call with the state locked).
    fn publish(&self, state: &CacheState) {
        self.counters
            .resource_version
            .store(state.revision, Ordering::Relaxed);
        self.status.send_replace(Status {
            phase: state.phase,
            revision: state.revision,
        });
    }

    /// Starts the feeder task on first use.
    fn ensure_started(self: &Arc<Self>) {
        let mut task = self.lock_task();
        if task.is_some() {
            return;
        }
        {
            let mut state = self.lock();
            state.phase = Phase::Starting;
            self.publish(&state);
        }
        let handle = tokio::spawn(run_feeder(Arc::downgrade(self)));
        *task = Some(handle.abort_handle());
    }

    /// Waits (bounded) until the cache serves; false = go to the store.
    async fn wait_ready(self: &Arc<Self>) -> bool {
        self.ensure_started();
        let mut status = self.status.subscribe();
        let ready = tokio::time::timeout(
            READY_TIMEOUT,
            status.wait_for(|s| matches!(s.phase, Phase::Ready | Phase::Failed)),
        )
        .await;
        matches!(ready, Ok(Ok(s)) if s.phase == Phase::Ready)
    }

    /// Waits (bounded) until the cache is current to `revision`, asking the store watch for
    /// a progress notification; false = go to the store.
    async fn wait_revision(&self, revision: i64) -> bool {
        let mut status = self.status.subscribe();
        {
            let now = *status.borrow_and_update();
            if now.phase != Phase::Ready {
                return false;
            }
            if now.revision >= revision {
                return true;
            }
        }
        self.progress_requests.notify_one();
        let reached = tokio::time::timeout(
            CONSISTENT_READ_TIMEOUT,
            status.wait_for(|s| s.phase != Phase::Ready || s.revision >= revision),
        )
        .await;
        matches!(reached, Ok(Ok(s)) if s.phase == Phase::Ready)
    }

    /// One page of `[start, end of prefix)` from memory, at the cache's revision.
    fn page(&self, prefix: &str, start: &str, limit: i64) -> Option<Page> {
        let state = self.lock();
        if state.phase != Phase::Ready {
            return None;
        }
        let from = if start > prefix { start } else { prefix };
        let mut matching = state
            .items
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, stored)| stored);
        let items: Vec<Stored> = match usize::try_from(limit) {
            Ok(limit) if limit > 0 => matching.by_ref().take(limit).cloned().collect(),
            _ => matching.by_ref().cloned().collect(),
        };
        let remaining = matching.count() as i64;
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.counters
            .list_returned_objects
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        Some(Page {
            items,
            revision: state.revision,
            remaining,
        })
    }

    /// Registers a watcher of `prefix` after `after`: the buffered events after it, then live
    /// ones. None when `after` is older than the window (or the cache is not serving).
    fn register(
        self: &Arc<Self>,
        prefix: &str,
        after: i64,
        bookmarks: bool,
    ) -> Option<BoxStream<'static, Result<Change>>> {
        let mut state = self.lock();
        if state.phase != Phase::Ready || after < state.window_start {
            return None;
        }
        let replay: Vec<Arc<CachedEvent>> = state
            .events
            .iter()
            .filter(|e| e.revision > after && e.key.starts_with(prefix))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE_CAPACITY);
        let id = state.next_watcher;
        state.next_watcher += 1;
        state.watchers.insert(
            id,
            CacheWatcher {
                prefix: prefix.to_string(),
                after,
                bookmarks,
                last_bookmark: Instant::now(),
                queue: tx,
            },
        );
        drop(state);
        let registration = WatcherRegistration {
            cache: Arc::downgrade(self),
            id,
            _counted: Counted::new(self.counters.clone()),
        };
        let stream = futures::stream::iter(replay)
            .chain(tokio_stream::wrappers::ReceiverStream::new(rx))
            .map(move |event| {
                let _registered = &registration;
                Ok(event.change.clone())
            });
        Some(stream.boxed())
    }

    /// Takes one change of the store watch. Err = the cache cannot follow (relist).
    fn apply(&self, change: Change) -> std::result::Result<(), String> {
        let mut state = self.lock();
        let (key, revision) = match &change {
            Change::Progress(revision) => {
                if *revision > state.revision {
                    state.revision = *revision;
                    state.revision_from_progress = true;
                }
                let revision = state.revision;
                self.bookmark(&mut state, revision);
                self.publish(&state);
                return Ok(());
            }
            Change::Put { new, .. } => (new.key.clone(), new.revision),
            Change::Delete { prev } => (prev.key.clone(), prev.revision),
        };
        // Events of one revision (a txn) arrive together; one before the cache's revision, or
        // at a revision a progress notification already vouched for, means the store sent
        // progress ahead of events (etcd before 3.4.25/3.5.8): the cache cannot be trusted.
        if revision < state.revision || (revision == state.revision && state.revision_from_progress)
        {
            return Err(format!(
                "event at revision {revision} after the cache reached {}",
                state.revision
            ));
        }
        match &change {
            Change::Put { new, .. } => {
                state.items.insert(key.clone(), new.clone());
            }
            Change::Delete { .. } => {
                state.items.remove(&key);
            }
            Change::Progress(_) => {}
        }
        state.revision = revision;
        state.revision_from_progress = false;
        let event = Arc::new(CachedEvent {
            key,
            revision,
            change,
        });
        if state.events.len() >= EVENT_RING_CAPACITY
            && let Some(oldest) = state.events.pop_front()
        {
            state.window_start = state.window_start.max(oldest.revision);
        }
        state.events.push_back(event.clone());
        self.counters
            .events_received
            .fetch_add(1, Ordering::Relaxed);
        let mut behind = Vec::new();
        for (id, watcher) in &state.watchers {
            if event.revision <= watcher.after || !event.key.starts_with(&watcher.prefix) {
                continue;
            }
            match watcher.queue.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => behind.push((*id, true)),
                Err(mpsc::error::TrySendError::Closed(_)) => behind.push((*id, false)),
            }
        }
        for (id, slow) in behind {
            if slow {
                tracing::info!(
                    prefix = %self.prefix,
                    queue = WATCHER_QUEUE_CAPACITY,
                    "watcher fell behind; ending it"
                );
            }
            // Dropping the sender ends the stream once it has drained its queue.
            state.watchers.remove(&id);
        }
        self.publish(&state);
        Ok(())
    }

    /// Sends a bookmark at `revision` to the watchers that asked for bookmarks (best effort:
    /// a full queue skips it).
    fn bookmark(&self, state: &mut CacheState, revision: i64) {
        let now = Instant::now();
        let mut event = None;
        for watcher in state.watchers.values_mut() {
            if !watcher.bookmarks
                || revision <= watcher.after
                || now.duration_since(watcher.last_bookmark) < BOOKMARK_MIN_INTERVAL
            {
                continue;
            }
            let event = event
                .get_or_insert_with(|| {
                    Arc::new(CachedEvent {
                        key: String::new(),
                        revision,
                        change: Change::Progress(revision),
                    })
                })
                .clone();
            if watcher.queue.try_send(event).is_ok() {
                watcher.last_bookmark = now;
            }
        }
    }

    /// Installs a fresh list at `revision` and ends every watcher (they watch again).
    fn install(&self, items: BTreeMap<String, Stored>, revision: i64) {
        let mut state = self.lock();
        state.items = items;
        state.revision = revision;
        state.revision_from_progress = false;
        state.window_start = revision;
        state.events.clear();
        state.watchers.clear();
        state.phase = Phase::Ready;
        self.counters
            .initializations
            .fetch_add(1, Ordering::Relaxed);
        self.publish(&state);
    }

    /// Leaves the serving phase: every watcher ends (they watch again), requests wait for
    /// the rebuild (`Starting`) or go to the store (`Failed`).
    fn stop_serving(&self, phase: Phase) {
        let mut state = self.lock();
        state.watchers.clear();
        state.events.clear();
        state.phase = phase;
        self.publish(&state);
    }

    /// The whole resource at one revision, page by page.
    async fn relist(&self) -> Result<(BTreeMap<String, Stored>, i64)> {
        let mut items = BTreeMap::new();
        let mut start = String::new();
        let mut revision = 0;
        loop {
            let page = self
                .inner
                .list(&self.prefix, &start, RELIST_PAGE_SIZE, revision)
                .await?;
            revision = page.revision;
            let last = page.items.last().map(|s| s.key.clone());
            for stored in page.items {
                items.insert(stored.key.clone(), stored);
            }
            match last {
                Some(last) if page.remaining > 0 => start = format!("{last}\0"),
                _ => return Ok((items, revision)),
            }
        }
    }
}

/// Counts one open watch in `apiserver_registered_watchers` while it lives.
struct Counted(Arc<WatchCacheCounters>);

impl Counted {
    fn new(counters: Arc<WatchCacheCounters>) -> Counted {
        counters.watchers.fetch_add(1, Ordering::Relaxed);
        Counted(counters)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes a watcher from its cache when its stream is dropped.
struct WatcherRegistration {
    cache: Weak<ResourceCache>,
    id: u64,
    _counted: Counted,
}

impl Drop for WatcherRegistration {
    fn drop(&mut self) {
        if let Some(cache) = self.cache.upgrade() {
            cache.lock().watchers.remove(&self.id);
        }
    }
}

/// Builds a cache and keeps it current; rebuilds it whenever its store watch ends. Ends
/// when the cacher is dropped (which aborts it).
async fn run_feeder(cache: Weak<ResourceCache>) {
    let mut failures: u32 = 0;
    loop {
        if failures > 0 {
            let pause = RELIST_BACKOFF
                .0
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(RELIST_BACKOFF.1);
            tokio::time::sleep(pause).await;
        }
        let Some(cache) = cache.upgrade() else { return };
        match build_and_follow(&cache).await {
            Ok(followed) if followed < MIN_FOLLOW => failures = failures.saturating_add(1),
            Ok(_) => failures = 0,
            Err(e) => {
                tracing::warn!(prefix = %cache.prefix, error = %e, "watch cache not built; the store serves");
                cache.stop_serving(Phase::Failed);
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// Lists, watches from the list's revision and applies the store watch's changes until it
/// ends; returns how long it followed. Err = the build failed (list or watch creation).
async fn build_and_follow(cache: &Arc<ResourceCache>) -> Result<Duration> {
    let (items, revision) = cache.relist().await?;
    let mut changes = cache
        .inner
        .watch_with_progress_requests(&cache.prefix, revision, cache.progress_requests.clone())
        .await?;
    cache.install(items, revision);
    let built = Instant::now();
    tracing::debug!(prefix = %cache.prefix, revision, "watch cache built");
    let reason = loop {
        match changes.next().await {
            Some(Ok(change)) => {
                if let Err(e) = cache.apply(change) {
                    break e;
                }
            }
            Some(Err(StorageError::Compacted(_))) => {
                break "the store compacted past the cache".to_string();
            }
            Some(Err(e)) => break e.to_string(),
            None => break "the store watch ended".to_string(),
        }
    };
    tracing::info!(prefix = %cache.prefix, reason, "watch cache relisting; its watchers end");
    cache.stop_serving(Phase::Starting);
    Ok(built.elapsed())
}

impl Storage for Cacher {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>>> {
        self.inner.get(key)
    }

    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<i64>> {
        self.inner.create(key, value)
    }

    fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> BoxFuture<'_, Result<i64>> {
        self.inner.update(key, value, expected)
    }

    fn delete(
        &self,
        key: &str,
        expected: i64,
        children: Vec<String>,
    ) -> BoxFuture<'_, Result<i64>> {
        self.inner.delete(key, expected, children)
    }

    fn list(
        &self,
        prefix: &str,
        start: &str,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'_, Result<Page>> {
        let cache = match self.cache_for(prefix) {
            Some(cache) if revision == 0 && self.consistent_lists.load(Ordering::Relaxed) => cache,
            _ => return self.inner.list(prefix, start, limit, revision),
        };
        let (prefix, start) = (prefix.to_string(), start.to_string());
        Box::pin(async move {
            if cache.wait_ready().await {
                // The store's current revision: an empty range (no name holds a NUL byte).
                let probe = format!("{}\0", cache.prefix);
                let current = self.inner.list(&probe, "", 1, 0).await?.revision;
                if cache.wait_revision(current).await
                    && let Some(page) = cache.page(&prefix, &start, limit)
                {
                    return Ok(page);
                }
                tracing::debug!(
                    prefix,
                    current,
                    "watch cache behind; the store serves the list"
                );
            }
            self.inner.list(&prefix, &start, limit, 0).await
        })
    }

    fn watch(
        &self,
        prefix: &str,
        after: i64,
        bookmarks: bool,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>> {
        let Some(cache) = self.cache_for(prefix) else {
            return self.inner.watch(prefix, after, bookmarks);
        };
        let prefix = prefix.to_string();
        Box::pin(async move {
            if cache.wait_ready().await {
                // The cache may still hold events the store has compacted away; a watch from
                // a compacted revision is 410 Expired with or without the cache (an empty
                // range at `after` answers Compacted). Not above the cache's revision: the
                // store may not have reached that one.
                if after > 0 && after <= cache.status.borrow().revision {
                    let probe = format!("{}\0", cache.prefix);
                    self.inner.list(&probe, "", 1, after).await?;
                }
                if let Some(stream) = cache.register(&prefix, after, bookmarks) {
                    return Ok(stream);
                }
            }
            // Older than the window (or no cache): the store's own watch, counted too.
            let counted = Counted::new(cache.counters.clone());
            let changes = self.inner.watch(&prefix, after, bookmarks).await?;
            Ok(changes
                .map(move |change| {
                    let _counted = &counted;
                    change
                })
                .boxed())
        })
    }
}

#[cfg(test)]
mod tests;
