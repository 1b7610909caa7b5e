//! The cacher over an in-memory [`Storage`] with etcd's watch semantics (history replay,
//! compaction, progress on demand).

use std::sync::atomic::AtomicUsize;

use super::*;

/// Changes queued per fake store watch (tests never fill it).
const FAKE_WATCH_QUEUE: usize = 100_000;

const PODS: &str = "/registry/pods/";

#[derive(Default)]
struct FakeState {
    revision: i64,
    compacted: i64,
    kv: BTreeMap<String, Stored>,
    history: Vec<Change>,
    watches: Vec<(String, mpsc::Sender<Result<Change>>)>,
}

/// An in-memory store.
#[derive(Default)]
struct FakeStore {
    state: Mutex<FakeState>,
    /// Store watches created.
    watch_calls: AtomicUsize,
    /// Lists served.
    list_calls: AtomicUsize,
    /// Whether progress requests are answered.
    answers_progress: std::sync::atomic::AtomicBool,
}

fn key_of(change: &Change) -> &str {
    match change {
        Change::Put { new, .. } => &new.key,
        Change::Delete { prev } => &prev.key,
        Change::Progress(_) => "",
    }
}

fn revision_of(change: &Change) -> i64 {
    match change {
        Change::Put { new, .. } => new.revision,
        Change::Delete { prev } => prev.revision,
        Change::Progress(revision) => *revision,
    }
}

impl FakeStore {
    fn new() -> Arc<FakeStore> {
        let store = FakeStore::default();
        store.answers_progress.store(true, Ordering::Relaxed);
        Arc::new(store)
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn record(state: &mut FakeState, change: Change) {
        let key = key_of(&change).to_string();
        state.watches.retain(|(prefix, tx)| {
            !key.starts_with(prefix) || tx.try_send(Ok(change.clone())).is_ok()
        });
        state.history.push(change);
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        let mut state = self.lock();
        state.revision += 1;
        let new = Stored {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            revision: state.revision,
        };
        let prev = state.kv.insert(key.into(), new.clone());
        Self::record(&mut state, Change::Put { new, prev });
        state.revision
    }

    fn remove(&self, key: &str) -> i64 {
        let mut state = self.lock();
        state.revision += 1;
        let revision = state.revision;
        if let Some(mut prev) = state.kv.remove(key) {
            prev.revision = revision;
            Self::record(&mut state, Change::Delete { prev });
        }
        revision
    }

    /// A write elsewhere: the revision moves, no event for the cached prefixes.
    fn bump(&self) -> i64 {
        self.put("/registry/other/x", "x")
    }

    /// Compacts the history and fails every open store watch with Compacted.
    fn compact_and_break_watches(&self) {
        let mut state = self.lock();
        state.compacted = state.revision;
        let compacted = state.compacted;
        for (_, tx) in state.watches.drain(..) {
            let _ = tx.try_send(Err(StorageError::Compacted(compacted)));
        }
    }

    fn open_watch(
        &self,
        prefix: &str,
        after: i64,
        progress_requests: Option<Arc<Notify>>,
        self_arc: Option<Arc<FakeStore>>,
    ) -> Result<BoxStream<'static, Result<Change>>> {
        self.watch_calls.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        if after < state.compacted {
            return Err(StorageError::Compacted(state.compacted));
        }
        let (tx, rx) = mpsc::channel(FAKE_WATCH_QUEUE);
        for change in &state.history {
            if revision_of(change) > after && key_of(change).starts_with(prefix) {
                let _ = tx.try_send(Ok(change.clone()));
            }
        }
        if let (Some(requests), Some(store)) = (progress_requests, self_arc) {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    requests.notified().await;
                    if !store.answers_progress.load(Ordering::Relaxed) {
                        continue;
                    }
                    // Under the lock: every event up to here is already queued.
                    let state = store.lock();
                    if tx.try_send(Ok(Change::Progress(state.revision))).is_err() {
                        return;
                    }
                }
            });
        }
        state.watches.push((prefix.to_string(), tx));
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}

/// The fake behind an `Arc`, so its watches can answer progress requests.
struct Fake(Arc<FakeStore>);

impl Storage for Fake {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>>> {
        let found = self.0.lock().kv.get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<i64>> {
        let revision = self.0.put(key, &String::from_utf8_lossy(&value));
        Box::pin(async move { Ok(revision) })
    }

    fn update(&self, key: &str, value: Vec<u8>, _expected: i64) -> BoxFuture<'_, Result<i64>> {
        self.create(key, value)
    }

    fn delete(&self, key: &str, _: i64, _: Vec<String>) -> BoxFuture<'_, Result<i64>> {
        let revision = self.0.remove(key);
        Box::pin(async move { Ok(revision) })
    }

    fn list(
        &self,
        prefix: &str,
        start: &str,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'_, Result<Page>> {
        self.0.list_calls.fetch_add(1, Ordering::Relaxed);
        let state = self.0.lock();
        if revision > 0 && revision < state.compacted {
            let compacted = state.compacted;
            return Box::pin(async move { Err(StorageError::Compacted(compacted)) });
        }
        // Only the latest revision is kept: enough for these tests.
        let from = if start > prefix { start } else { prefix };
        let matching: Vec<Stored> = state
            .kv
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        let take = if limit > 0 {
            limit as usize
        } else {
            matching.len()
        };
        let page = Page {
            remaining: matching.len().saturating_sub(take) as i64,
            items: matching.into_iter().take(take).collect(),
            revision: if revision > 0 {
                revision
            } else {
                state.revision
            },
        };
        Box::pin(async move { Ok(page) })
    }

    fn watch(
        &self,
        prefix: &str,
        after: i64,
        _: bool,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>> {
        let opened = self.0.open_watch(prefix, after, None, None);
        Box::pin(async move { opened })
    }

    fn watch_with_progress_requests(
        &self,
        prefix: &str,
        after: i64,
        progress_requests: Arc<Notify>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>> {
        let opened =
            self.0
                .open_watch(prefix, after, Some(progress_requests), Some(self.0.clone()));
        Box::pin(async move { opened })
    }
}

fn cacher(store: &Arc<FakeStore>) -> (Cacher, Arc<WatchCacheMetrics>) {
    let metrics = Arc::new(WatchCacheMetrics::default());
    let resources = [
        ("", "Pod", "pods"),
        ("", "ConfigMap", "configmaps"),
        ("apps", "Deployment", "deployments"),
    ]
    .map(|(group, kind, resource)| CachedResource::new("/registry", group, "v1", kind, resource));
    let cacher = Cacher::new(Arc::new(Fake(store.clone())), resources, &metrics);
    (cacher, metrics)
}

/// The next change of a watch (bookmarks skipped), within a second.
async fn next_change(stream: &mut BoxStream<'static, Result<Change>>) -> Option<Change> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("a change within a second");
        match next {
            Some(Ok(Change::Progress(_))) => continue,
            Some(change) => return Some(change.expect("no error")),
            None => return None,
        }
    }
}

fn put_key(change: &Change) -> (&str, i64) {
    (key_of(change), revision_of(change))
}

#[tokio::test]
async fn list_is_served_from_the_cache_at_its_revision_with_pages() {
    let store = FakeStore::new();
    for i in 0..5 {
        store.put(&format!("{PODS}default/p{i}"), "v");
    }
    let (cacher, metrics) = cacher(&store);
    let page = cacher.list(PODS, "", 2, 0).await.unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.remaining, 3);
    assert_eq!(page.revision, 5);
    // The cache listed once (its build) and read the revision once: no list of the items.
    let lists = store.list_calls.load(Ordering::Relaxed);
    let page = cacher.list(PODS, "", 0, 0).await.unwrap();
    assert_eq!(page.items.len(), 5);
    assert_eq!(page.remaining, 0);
    assert_eq!(
        store.list_calls.load(Ordering::Relaxed),
        lists + 1,
        "only the revision probe"
    );
    // A continue token's revision goes to the store.
    let start = format!("{}\0", page.items[1].key);
    let rest = cacher.list(PODS, &start, 0, 5).await.unwrap();
    assert_eq!(rest.items.len(), 3);
    assert_eq!(store.list_calls.load(Ordering::Relaxed), lists + 2);
    let mut text = String::new();
    metrics.render(&mut text);
    assert!(
        text.contains("apiserver_cache_list_total{index=\"\",resource_prefix=\"/pods\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "apiserver_cache_list_returned_objects_total{index=\"\",resource_prefix=\"/pods\"} 7"
        ),
        "{text}"
    );
    assert!(
        text.contains("apiserver_watch_cache_capacity{resource=\"pods\"} 1024"),
        "{text}"
    );
    assert!(
        text.contains("apiserver_watch_cache_resource_version{resource=\"pods\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("apiserver_watch_cache_capacity{resource=\"deployments.apps\"} 1024"),
        "{text}"
    );
}

#[tokio::test]
async fn watch_in_the_window_replays_then_streams_from_one_store_watch() {
    let store = FakeStore::new();
    store.put(&format!("{PODS}default/a"), "1");
    let (cacher, metrics) = cacher(&store);
    let listed = cacher.list(PODS, "", 0, 0).await.unwrap().revision;
    let b = store.put(&format!("{PODS}default/b"), "1");
    let c = store.put(&format!("{PODS}default/c"), "1");
    let d = store.remove(&format!("{PODS}default/a"));
    // Wait until the cache has them (a consistent list waits for the store's revision).
    assert_eq!(cacher.list(PODS, "", 0, 0).await.unwrap().revision, d);
    let mut watches = Vec::new();
    for _ in 0..10 {
        watches.push(cacher.watch(PODS, b, false).await.unwrap());
    }
    let mut from_list = cacher.watch(PODS, listed, true).await.unwrap();
    let e = store.put(&format!("{PODS}default/e"), "1");
    for w in &mut watches {
        assert_eq!(
            put_key(&next_change(w).await.unwrap()),
            (&*format!("{PODS}default/c"), c)
        );
        let deleted = next_change(w).await.unwrap();
        assert!(matches!(deleted, Change::Delete { .. }), "{deleted:?}");
        assert_eq!(revision_of(&deleted), d);
        assert_eq!(
            put_key(&next_change(w).await.unwrap()),
            (&*format!("{PODS}default/e"), e)
        );
    }
    let revisions: Vec<i64> = [
        next_change(&mut from_list).await.unwrap(),
        next_change(&mut from_list).await.unwrap(),
        next_change(&mut from_list).await.unwrap(),
        next_change(&mut from_list).await.unwrap(),
    ]
    .iter()
    .map(revision_of)
    .collect();
    assert_eq!(revisions, vec![b, c, d, e]);
    assert_eq!(
        store.watch_calls.load(Ordering::Relaxed),
        1,
        "one store watch for 11 watchers"
    );
    let mut text = String::new();
    metrics.render(&mut text);
    assert!(
        text.contains("apiserver_registered_watchers{group=\"\",kind=\"Pod\",version=\"v1\"} 11"),
        "{text}"
    );
    drop(watches);
    let mut text = String::new();
    metrics.render(&mut text);
    assert!(
        text.contains("apiserver_registered_watchers{group=\"\",kind=\"Pod\",version=\"v1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("apiserver_watch_cache_events_received_total{resource=\"pods\"} 4"),
        "{text}"
    );
}

#[tokio::test]
async fn watch_older_than_the_window_is_served_by_the_store() {
    let store = FakeStore::new();
    let first = store.put(&format!("{PODS}default/a"), "1");
    store.put(&format!("{PODS}default/a"), "2");
    let (cacher, _) = cacher(&store);
    let listed = cacher.list(PODS, "", 0, 0).await.unwrap().revision;
    assert_eq!(store.watch_calls.load(Ordering::Relaxed), 1);
    // Before the cache's list: the store's watch replays its history.
    let mut old = cacher.watch(PODS, first, false).await.unwrap();
    assert_eq!(store.watch_calls.load(Ordering::Relaxed), 2);
    assert_eq!(revision_of(&next_change(&mut old).await.unwrap()), listed);
    // Overflow the ring: the window moves past `listed`.
    let mut last = 0;
    for i in 0..EVENT_RING_CAPACITY + 10 {
        last = store.put(&format!("{PODS}default/n{i}"), "1");
    }
    assert_eq!(cacher.list(PODS, "", 1, 0).await.unwrap().revision, last);
    let mut behind = cacher.watch(PODS, listed + 5, false).await.unwrap();
    assert_eq!(
        store.watch_calls.load(Ordering::Relaxed),
        3,
        "out of the window"
    );
    assert_eq!(
        revision_of(&next_change(&mut behind).await.unwrap()),
        listed + 6
    );
    let inside = last - EVENT_RING_CAPACITY as i64 + 1;
    let mut recent = cacher.watch(PODS, inside, false).await.unwrap();
    assert_eq!(
        store.watch_calls.load(Ordering::Relaxed),
        3,
        "inside the window"
    );
    assert_eq!(
        revision_of(&next_change(&mut recent).await.unwrap()),
        inside + 1
    );
    // A compacted revision out of the window is the store's Compacted.
    store.compact_and_break_watches();
    let err = cacher.watch(PODS, listed, false).await.err();
    assert!(matches!(err, Some(StorageError::Compacted(_))), "{err:?}");
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_is_compacted_even_inside_the_window() {
    let store = FakeStore::new();
    store.put(&format!("{PODS}x/0"), "1");
    let (cacher, _) = cacher(&store);
    let start = cacher.list(PODS, "", 0, 0).await.unwrap().revision;
    store.put(&format!("{PODS}x/1"), "1");
    let last = store.put(&format!("{PODS}x/2"), "1");
    assert_eq!(cacher.list(PODS, "", 0, 0).await.unwrap().revision, last);
    // Compacted without breaking the cache's store watch (etcd keeps a watch that is
    // already past the compaction point).
    store.lock().compacted = last;
    let err = cacher.watch(PODS, start, false).await.err();
    assert!(matches!(err, Some(StorageError::Compacted(_))), "{err:?}");
    assert!(cacher.watch(PODS, last, false).await.is_ok());
}

#[tokio::test]
async fn a_watcher_that_falls_behind_its_queue_is_ended() {
    let store = FakeStore::new();
    let (cacher, _) = cacher(&store);
    let start = cacher.list(PODS, "", 0, 0).await.unwrap().revision;
    let mut slow = cacher.watch(PODS, start, false).await.unwrap();
    let mut live = cacher.watch(PODS, start, false).await.unwrap();
    let mut last = 0;
    for i in 0..WATCHER_QUEUE_CAPACITY + 1 {
        last = store.put(&format!("{PODS}default/p{i}"), "1");
        if i % 100 == 0 {
            // The live watcher keeps up.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(20), live.next()).await
            {}
        }
    }
    assert_eq!(cacher.list(PODS, "", 1, 0).await.unwrap().revision, last);
    // The slow one gets what was queued, in order, then its stream ends.
    let mut seen = 0;
    while let Some(change) = next_change(&mut slow).await {
        seen += 1;
        assert_eq!(revision_of(&change), start + seen);
    }
    assert_eq!(seen as usize, WATCHER_QUEUE_CAPACITY);
    // The live one saw everything and stays open.
    let after = store.put(&format!("{PODS}default/late"), "1");
    let mut got = 0;
    while let Some(change) = next_change(&mut live).await {
        got = revision_of(&change);
        if got == after {
            break;
        }
    }
    assert_eq!(got, after);
}

#[tokio::test]
async fn compacted_store_watch_relists_and_ends_watchers() {
    let store = FakeStore::new();
    store.put(&format!("{PODS}default/a"), "1");
    let (cacher, metrics) = cacher(&store);
    let start = cacher.list(PODS, "", 0, 0).await.unwrap().revision;
    let mut watcher = cacher.watch(PODS, start, false).await.unwrap();
    store.compact_and_break_watches();
    assert!(
        next_change(&mut watcher).await.is_none(),
        "the watcher ends"
    );
    let b = store.put(&format!("{PODS}default/b"), "1");
    let page = cacher.list(PODS, "", 0, 0).await.unwrap();
    assert_eq!(page.revision, b);
    assert_eq!(page.items.len(), 2);
    assert_eq!(
        store.watch_calls.load(Ordering::Relaxed),
        2,
        "rebuilt on a new store watch"
    );
    let mut again = cacher.watch(PODS, page.revision, false).await.unwrap();
    let c = store.put(&format!("{PODS}default/c"), "1");
    assert_eq!(revision_of(&next_change(&mut again).await.unwrap()), c);
    let mut text = String::new();
    metrics.render(&mut text);
    assert!(
        text.contains("apiserver_watch_cache_initializations_total{resource=\"pods\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn consistent_list_waits_for_the_stores_revision() {
    let store = FakeStore::new();
    store.put(&format!("{PODS}default/a"), "1");
    let (cacher, _) = cacher(&store);
    cacher.list(PODS, "", 0, 0).await.unwrap();
    // A write elsewhere: no pod event brings the cache to it, a progress notification does.
    let other = store.bump();
    let page = cacher.list(PODS, "", 0, 0).await.unwrap();
    assert_eq!(page.revision, other);
    // A pod written just before is in the next list.
    let b = store.put(&format!("{PODS}default/b"), "1");
    let page = cacher.list(PODS, "", 0, 0).await.unwrap();
    assert!(page.revision >= b);
    assert!(page.items.iter().any(|s| s.key.ends_with("/b")));
}

#[tokio::test(start_paused = true)]
async fn consistent_list_goes_to_the_store_when_the_cache_does_not_catch_up() {
    let store = FakeStore::new();
    store.put(&format!("{PODS}default/a"), "1");
    let (cacher, metrics) = cacher(&store);
    cacher.list(PODS, "", 0, 0).await.unwrap();
    store.answers_progress.store(false, Ordering::Relaxed);
    let other = store.bump();
    let started = tokio::time::Instant::now();
    let page = cacher.list(PODS, "", 0, 0).await.unwrap();
    assert_eq!(page.revision, other, "the store's answer");
    assert!(started.elapsed() >= CONSISTENT_READ_TIMEOUT);
    let mut text = String::new();
    metrics.render(&mut text);
    assert!(
        text.contains("apiserver_cache_list_total{index=\"\",resource_prefix=\"/pods\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn namespaced_lists_and_watches_share_the_resource_cache() {
    let store = FakeStore::new();
    store.put(&format!("{PODS}a/one"), "1");
    store.put(&format!("{PODS}b/two"), "1");
    store.put(&format!("{PODS}ab/three"), "1");
    let (cacher, _) = cacher(&store);
    let page = cacher.list(&format!("{PODS}a/"), "", 0, 0).await.unwrap();
    let keys: Vec<&str> = page.items.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, vec![format!("{PODS}a/one")]);
    let mut in_a = cacher
        .watch(&format!("{PODS}a/"), page.revision, false)
        .await
        .unwrap();
    let mut all = cacher.watch(PODS, page.revision, false).await.unwrap();
    store.put(&format!("{PODS}b/four"), "1");
    store.put(&format!("{PODS}ab/five"), "1");
    let six = store.put(&format!("{PODS}a/six"), "1");
    assert_eq!(
        put_key(&next_change(&mut in_a).await.unwrap()),
        (&*format!("{PODS}a/six"), six)
    );
    for _ in 0..3 {
        next_change(&mut all).await.unwrap();
    }
    assert_eq!(
        cacher
            .list(&format!("{PODS}b/"), "", 0, 0)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_eq!(
        store.watch_calls.load(Ordering::Relaxed),
        1,
        "one store watch for pods"
    );
    // Another resource has its own cache; other prefixes pass through.
    assert_eq!(
        cacher
            .list("/registry/other/", "", 0, 0)
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    assert_eq!(store.watch_calls.load(Ordering::Relaxed), 1);
    cacher
        .list("/registry/configmaps/", "", 0, 0)
        .await
        .unwrap();
    assert_eq!(store.watch_calls.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_watch_after_the_caches_revision_gets_only_later_events() {
    let store = FakeStore::new();
    let (cacher, _) = cacher(&store);
    let start = cacher.list(PODS, "", 0, 0).await.unwrap().revision;
    let mut ahead = cacher.watch(PODS, start + 2, false).await.unwrap();
    store.put(&format!("{PODS}x/1"), "1");
    store.put(&format!("{PODS}x/2"), "1");
    let third = store.put(&format!("{PODS}x/3"), "1");
    assert_eq!(revision_of(&next_change(&mut ahead).await.unwrap()), third);
}
