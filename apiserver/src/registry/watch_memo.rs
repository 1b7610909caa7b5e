//! What every watcher of a resource would otherwise compute alone for the same event: the
//! stored object decoded, and the event line encoded. With N watchers on one resource an event
//! is decoded and encoded once, not N times (kube-apiserver's cacher does the same with its
//! `cachingObject`). Keys are the object's storage key, its revision and the served kind and
//! version (two versions of one kind decode differently); the memo keeps the most recent
//! [`WATCH_MEMO_ENTRIES`] and forgets the oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::Value;

/// Entries the memo keeps (a decoded object or an encoded line each).
pub const WATCH_MEMO_ENTRIES: usize = 4_096;

/// What is memoized for one stored object at one revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Memoized {
    /// The decoded object (`None`: it did not decode).
    Object,
    /// The `{"type":…,"object":…}` line of this event type.
    Line(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct MemoKey {
    api_version: String,
    kind: &'static str,
    key: String,
    revision: i64,
    what: Memoized,
}

#[derive(Clone)]
enum Entry {
    Object(Option<Arc<Value>>),
    Line(Bytes),
}

#[derive(Default)]
struct State {
    entries: HashMap<MemoKey, Entry>,
    order: VecDeque<MemoKey>,
}

/// The memo (one per registry).
#[derive(Default)]
pub struct WatchMemo {
    state: Mutex<State>,
    capacity: usize,
}

impl WatchMemo {
    pub fn new() -> WatchMemo {
        WatchMemo::with_capacity(WATCH_MEMO_ENTRIES)
    }

    fn with_capacity(capacity: usize) -> WatchMemo {
        WatchMemo {
            state: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_insert(&self, key: MemoKey, make: impl FnOnce() -> Entry) -> Entry {
        if let Some(hit) = self.lock().entries.get(&key) {
            return hit.clone();
        }
        // Computed outside the lock: two watchers racing on a miss both compute, and the
        // first to finish is kept; either result is the same.
        let made = make();
        let mut state = self.lock();
        if let Some(hit) = state.entries.get(&key) {
            return hit.clone();
        }
        while state.order.len() >= self.capacity {
            if let Some(oldest) = state.order.pop_front() {
                state.entries.remove(&oldest);
            }
        }
        state.order.push_back(key.clone());
        state.entries.insert(key, made.clone());
        made
    }

    /// The object stored under `key` at `revision`, decoded once by `decode`.
    pub(super) fn object(
        &self,
        (api_version, kind): (String, &'static str),
        key: &str,
        revision: i64,
        decode: impl FnOnce() -> Option<Value>,
    ) -> Option<Arc<Value>> {
        let memo_key = MemoKey {
            api_version,
            kind,
            key: key.to_string(),
            revision,
            what: Memoized::Object,
        };
        match self.get_or_insert(memo_key, || Entry::Object(decode().map(Arc::new))) {
            Entry::Object(object) => object,
            Entry::Line(_) => None,
        }
    }

    /// The event line of type `event` for the object under `key` at `revision`, encoded
    /// once by `encode`.
    pub(super) fn line(
        &self,
        (api_version, kind): (String, &'static str),
        key: &str,
        revision: i64,
        event: &'static str,
        encode: impl FnOnce() -> Bytes,
    ) -> Bytes {
        let memo_key = MemoKey {
            api_version,
            kind,
            key: key.to_string(),
            revision,
            what: Memoized::Line(event),
        };
        match self.get_or_insert(memo_key, || Entry::Line(encode())) {
            Entry::Line(line) => line,
            Entry::Object(_) => Bytes::new(),
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    fn pods() -> (String, &'static str) {
        ("v1".to_string(), "Pod")
    }

    #[test]
    fn a_thousand_watchers_share_one_decode_and_one_encode() {
        let memo = WatchMemo::new();
        let (decodes, encodes) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let mut lines = Vec::new();
        for _ in 0..1_000 {
            let object = memo
                .object(pods(), "/registry/pods/default/a", 7, || {
                    decodes.fetch_add(1, Ordering::Relaxed);
                    Some(json!({"metadata": {"name": "a"}}))
                })
                .expect("decoded");
            assert_eq!(object["metadata"]["name"], "a");
            lines.push(
                memo.line(pods(), "/registry/pods/default/a", 7, "MODIFIED", || {
                    encodes.fetch_add(1, Ordering::Relaxed);
                    Bytes::from_static(b"{\"type\":\"MODIFIED\"}\n")
                }),
            );
        }
        assert_eq!(decodes.load(Ordering::Relaxed), 1);
        assert_eq!(encodes.load(Ordering::Relaxed), 1);
        // The same bytes, not copies.
        assert!(lines.iter().all(|l| l.as_ptr() == lines[0].as_ptr()));
    }

    #[test]
    fn revisions_event_types_and_versions_are_told_apart() {
        let memo = WatchMemo::new();
        let line = |rv, event: &'static str, version: &str, text: &'static str| {
            memo.line(
                (version.to_string(), "Pod"),
                "/registry/pods/default/a",
                rv,
                event,
                || Bytes::from_static(text.as_bytes()),
            )
        };
        assert_eq!(line(7, "ADDED", "v1", "a7"), "a7");
        assert_eq!(line(8, "ADDED", "v1", "a8"), "a8");
        assert_eq!(line(8, "DELETED", "v1", "d8"), "d8");
        assert_eq!(line(8, "DELETED", "v2", "other"), "other");
        assert_eq!(line(8, "DELETED", "v1", "never"), "d8");
        let undecodable = memo.object(pods(), "/registry/pods/default/b", 1, || None);
        assert!(undecodable.is_none());
        assert!(
            memo.object(pods(), "/registry/pods/default/b", 1, || Some(json!({})))
                .is_none()
        );
    }

    #[test]
    fn the_oldest_entries_go_first_at_the_limit() {
        let memo = WatchMemo::with_capacity(3);
        for rv in 0..5 {
            memo.line(pods(), "k", rv, "ADDED", || Bytes::from(rv.to_string()));
        }
        assert_eq!(memo.len(), 3);
        // 0 and 1 were forgotten: asked again, they are made again.
        assert_eq!(
            memo.line(pods(), "k", 0, "ADDED", || Bytes::from("again")),
            "again"
        );
        assert_eq!(
            memo.line(pods(), "k", 4, "ADDED", || Bytes::from("never")),
            "4"
        );
    }
}
