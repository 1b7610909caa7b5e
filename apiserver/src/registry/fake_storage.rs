//! An in-memory [`Storage`] for the registry's unit tests: etcd's compare-and-swap writes,
//! prefix deletes of children, no watches.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::storage::{Change, Page, Storage, StorageError, Stored, prefix_end};

/// An in-memory store with etcd's compare-and-swap writes (no watches).
#[derive(Default)]
pub struct Fake {
    state: Mutex<(i64, BTreeMap<String, Stored>)>,
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, (i64, BTreeMap<String, Stored>)> {
        self.state.lock().expect("fake store lock")
    }
}

impl Storage for Fake {
    fn get(&self, key: &str) -> BoxFuture<'_, crate::storage::Result<Option<Stored>>> {
        let found = self.lock().1.get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, crate::storage::Result<i64>> {
        let mut state = self.lock();
        let result = if state.1.contains_key(key) {
            Err(StorageError::Exists)
        } else {
            state.0 += 1;
            let revision = state.0;
            state.1.insert(
                key.to_string(),
                Stored {
                    key: key.to_string(),
                    value,
                    revision,
                },
            );
            Ok(revision)
        };
        Box::pin(async move { result })
    }

    fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'_, crate::storage::Result<i64>> {
        let mut state = self.lock();
        let result = match state.1.get(key).map(|s| s.revision) {
            None => Err(StorageError::NotFound),
            Some(r) if r != expected => Err(StorageError::Conflict),
            Some(_) => {
                state.0 += 1;
                let revision = state.0;
                state.1.insert(
                    key.to_string(),
                    Stored {
                        key: key.to_string(),
                        value,
                        revision,
                    },
                );
                Ok(revision)
            }
        };
        Box::pin(async move { result })
    }

    fn delete(
        &self,
        key: &str,
        expected: i64,
        children: Vec<String>,
    ) -> BoxFuture<'_, crate::storage::Result<i64>> {
        let mut state = self.lock();
        let result = match state.1.get(key).map(|s| s.revision) {
            None => Err(StorageError::NotFound),
            Some(r) if r != expected => Err(StorageError::Conflict),
            Some(_) => {
                state.0 += 1;
                state.1.remove(key);
                state
                    .1
                    .retain(|k, _| !children.iter().any(|c| k.starts_with(c.as_str())));
                Ok(state.0)
            }
        };
        Box::pin(async move { result })
    }

    fn list(
        &self,
        prefix: &str,
        _start: &str,
        _limit: i64,
        _revision: i64,
    ) -> BoxFuture<'_, crate::storage::Result<Page>> {
        let state = self.lock();
        let end = String::from_utf8(prefix_end(prefix.as_bytes())).unwrap_or_default();
        let items = state
            .1
            .range(prefix.to_string()..end)
            .map(|(_, v)| v.clone())
            .collect();
        let page = Page {
            items,
            revision: state.0,
            remaining: 0,
        };
        Box::pin(async move { Ok(page) })
    }

    fn watch(
        &self,
        _prefix: &str,
        _after: i64,
        _bookmarks: bool,
    ) -> BoxFuture<'_, crate::storage::Result<BoxStream<'static, crate::storage::Result<Change>>>>
    {
        Box::pin(async { Err(StorageError::Unavailable("no watches".into())) })
    }
}
