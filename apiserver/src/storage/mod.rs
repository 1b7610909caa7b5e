//! The storage layer: what the REST handlers need from a key-value store with revisions, and its
//! implementation over the etcd v3 gRPC API ([`EtcdStorage`]). The API server never talks to the
//! store any other way, so it runs on skiff's store and on real etcd alike.
//!
//! Semantics (kube-apiserver's `storage.Interface` on etcd3): the resourceVersion of an object is
//! the mod revision of its key; create succeeds only if the key has never existed since its last
//! delete (`create_revision == 0`); update and delete are conditional on `mod_revision`.

pub mod cacher;
pub mod encryption;
pub mod etcd;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use skiff_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use skiff_proto::etcdserverpb::request_op::Request;
use skiff_proto::etcdserverpb::response_op::Response;
use skiff_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, TxnRequest, WatchCreateRequest, WatchResponse,
};
use skiff_proto::mvccpb::event::EventType;

use crate::storage::etcd::{CallError, EtcdClient, EtcdConfig, WatchError};

/// One stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    /// The key's mod revision: the object's resourceVersion.
    pub revision: i64,
}

/// One page of a list, read at one revision.
#[derive(Clone, Debug)]
pub struct Page {
    pub items: Vec<Stored>,
    /// The store revision the page was read at.
    pub revision: i64,
    /// How many keys after this page remain (0 when none).
    pub remaining: i64,
}

/// A change seen by a watch.
#[derive(Clone, Debug)]
pub enum Change {
    /// A put; `prev` is the value before it (None for a creation).
    Put { new: Stored, prev: Option<Stored> },
    /// A delete; `prev.revision` is the revision of the delete itself.
    Delete { prev: Stored },
    /// The watch has seen everything up to this revision (etcd progress notification).
    Progress(i64),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    #[error("key not found")]
    NotFound,
    #[error("key exists")]
    Exists,
    #[error("revision mismatch")]
    Conflict,
    /// The requested revision was compacted; the store's compact revision.
    #[error("revision compacted (compact revision {0})")]
    Compacted(i64),
    /// No store member took the request; it was not applied.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A write that may or may not have been applied: the store stopped answering after
    /// taking it (kube-apiserver's 504 Timeout).
    #[error("storage timeout: {0}")]
    Timeout(String),
    /// The store refused the write for its size (etcd's `--max-request-bytes`, or the gRPC
    /// message limit in front of it).
    #[error("etcdserver: request is too large")]
    TooLarge,
    /// A stored value that cannot be used (e.g. it does not decrypt): kube-apiserver's 500.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// What the API server needs from the store. Keys are UTF-8 paths.
pub trait Storage: Send + Sync + 'static {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>>>;
    /// Create `key`; [`StorageError::Exists`] if it exists. Returns the new revision.
    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<i64>>;
    /// Replace `key` if its revision is `expected`: [`StorageError::Conflict`] if not,
    /// [`StorageError::NotFound`] if it is gone.
    fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> BoxFuture<'_, Result<i64>>;
    /// Delete `key` if its revision is `expected`, and with it every key under `children`
    /// (one atomic transaction). Returns the revision of the delete.
    fn delete(&self, key: &str, expected: i64, children: Vec<String>)
    -> BoxFuture<'_, Result<i64>>;
    /// Keys in `[start, end_of(prefix))` at `revision` (0 = latest), at most `limit` (0 = all).
    fn list(
        &self,
        prefix: &str,
        start: &str,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'_, Result<Page>>;
    /// Changes under `prefix` after revision `after`. `bookmarks` asks for periodic
    /// [`Change::Progress`]. A compacted `after` yields [`StorageError::Compacted`].
    fn watch(
        &self,
        prefix: &str,
        after: i64,
        bookmarks: bool,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>>;
    /// A bookmarking [`Self::watch`] that also asks the store for a progress notification
    /// whenever `progress_requests` is notified (the watch cache's consistent reads). A
    /// storage that cannot ask on demand only sends its periodic ones.
    fn watch_with_progress_requests(
        &self,
        prefix: &str,
        after: i64,
        progress_requests: Arc<tokio::sync::Notify>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>> {
        let _ = progress_requests;
        self.watch(prefix, after, true)
    }
}

/// The end of the key range that holds every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// [`Storage`] over the etcd v3 gRPC API (skiff store or etcd), through the balanced,
/// failing-over [`EtcdClient`].
#[derive(Clone)]
pub struct EtcdStorage {
    client: EtcdClient,
    /// How often a bookmarking watch asks the store for progress.
    progress_interval: Duration,
}

/// How many times a conditional write whose first attempt may have been applied is re-issued
/// (and its outcome checked) before the API server answers 504 Timeout.
pub const WRITE_REISSUES: u32 = 3;

impl EtcdStorage {
    /// A lazily connecting client balanced over `--etcd-servers` (`host:port` or URLs), with
    /// TLS when the endpoints are https.
    pub fn connect(config: &EtcdConfig) -> std::result::Result<EtcdStorage, String> {
        let client = EtcdClient::new(config).map_err(|e| e.to_string())?;
        Ok(EtcdStorage {
            client,
            progress_interval: Duration::from_secs(5),
        })
    }

    /// The client underneath (for the health checks).
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.client
            .kv(true, |mut kv| {
                let req = req.clone();
                async move { kv.range(req).await }
            })
            .await
            .map_err(call_error)
    }
}

/// The key API servers coordinate compaction through, as kube-apiserver's compactor does
/// (`staging/src/k8s.io/apiserver/pkg/storage/etcd3/compact.go`): its version counts
/// compaction rounds, its value is the revision the last round saw.
pub const COMPACT_REV_KEY: &str = "compact_rev_key";

impl EtcdStorage {
    /// One round of kube-apiserver's compactor. `seen_version` is the version of
    /// [`COMPACT_REV_KEY`] this replica saw last round, `seen_revision` the store revision then.
    /// If nobody wrote the key since, this replica wins the round: it records the current
    /// revision and compacts to `seen_revision` (the revision one interval ago). Otherwise
    /// another replica compacted; this one only catches up. Returns the new
    /// `(seen_version, seen_revision)` and the revision compacted to, if any.
    pub async fn compact_round(
        &self,
        seen_version: i64,
        seen_revision: i64,
    ) -> Result<(i64, i64, Option<i64>)> {
        let key = COMPACT_REV_KEY.as_bytes().to_vec();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Version as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::Version(seen_version)),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: seen_revision.to_string().into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: vec![range_op(COMPACT_REV_KEY)],
        };
        // Not re-issued when it may have been applied: the next round sorts it out.
        let resp = self
            .client
            .kv(false, |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(call_error)?;
        let current = resp.header.map(|h| h.revision).unwrap_or_default();
        if !resp.succeeded {
            let version = resp
                .responses
                .into_iter()
                .find_map(|r| match r.response {
                    Some(Response::ResponseRange(range)) => range.kvs.into_iter().next(),
                    _ => None,
                })
                .map(|kv| kv.version)
                .unwrap_or(0);
            return Ok((version, current, None));
        }
        if seen_revision == 0 {
            // The first round only records where the store is.
            return Ok((seen_version + 1, current, None));
        }
        let compaction = CompactionRequest {
            revision: seen_revision,
            physical: false,
        };
        match self
            .client
            .kv(false, |mut kv| async move { kv.compact(compaction).await })
            .await
        {
            Ok(_) => Ok((seen_version + 1, current, Some(seen_revision))),
            // Someone (an operator, another tool) compacted further already.
            Err(CallError::Store(_, message)) if message.contains("compacted") => {
                Ok((seen_version + 1, current, None))
            }
            Err(e) => Err(call_error(e)),
        }
    }

    /// kube-apiserver's periodic compaction (`--etcd-compaction-interval`): every `interval`,
    /// one [`Self::compact_round`]; the store is compacted to the revision it had one interval
    /// earlier, by whichever replica wins the round. Runs until the process ends.
    pub async fn run_compactor(self, interval: Duration) {
        let (mut version, mut revision) = (0, 0);
        loop {
            tokio::time::sleep(interval).await;
            match self.compact_round(version, revision).await {
                Ok((v, r, compacted)) => {
                    (version, revision) = (v, r);
                    if let Some(to) = compacted {
                        tracing::info!(revision = to, "compacted the store");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "compaction round failed"),
            }
        }
    }
}

#[cfg(test)]
fn status_error(status: tonic::Status) -> StorageError {
    store_error(status.code(), status.message())
}

/// A definitive answer of the store.
fn store_error(code: tonic::Code, message: &str) -> StorageError {
    if message.contains("compacted") {
        // etcd does not say which revision; the caller only needs to know it is gone.
        return StorageError::Compacted(0);
    }
    if is_too_large(code, message) {
        return StorageError::TooLarge;
    }
    StorageError::Unavailable(format!("{code:?}: {message}"))
}

fn call_error(err: CallError) -> StorageError {
    match err {
        CallError::Store(code, message) => store_error(code, &message),
        CallError::Unavailable(message) => StorageError::Unavailable(message),
        CallError::Ambiguous(message) => StorageError::Timeout(message),
    }
}

/// A write the store refused for its size, however it says so: etcd's own check is
/// InvalidArgument `etcdserver: request is too large` (kube-apiserver's `isTooLargeError`); a
/// message over the server's gRPC limit is ResourceExhausted `grpc: received message larger than
/// max` from etcd (grpc-go) and OutOfRange `decoded message length too large` from a tonic
/// server such as skiff's store; a client-side limit says `trying to send message larger than
/// max` (grpc-go) or `encoded message length too large` (tonic).
fn is_too_large(code: tonic::Code, message: &str) -> bool {
    match code {
        tonic::Code::InvalidArgument => message.contains("request is too large"),
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => {
            message.contains("larger than max")
                || message.contains("message length too large")
                || message.contains("request is too large")
        }
        _ => false,
    }
}

fn stored(kv: skiff_proto::mvccpb::KeyValue) -> Stored {
    Stored {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value,
        revision: kv.mod_revision,
    }
}

fn compare_mod(key: &str, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// What a conditional write leaves behind, to recognise it when its outcome was unknown.
enum Written<'a> {
    /// The key holds this value.
    Value(&'a [u8]),
    /// The key is gone.
    Deleted,
}

impl EtcdStorage {
    /// Runs a conditional txn whose failure branch reads `key`; maps a failure to NotFound or
    /// Conflict.
    ///
    /// An attempt that may have been applied (the member went away or timed out after taking
    /// it) is re-issued: the compare makes a second application impossible, and if the
    /// re-issued txn's compare fails, the key is checked for what this write leaves behind
    /// (`written`): found = the first attempt was applied, so this write succeeded; not found =
    /// nobody can tell (someone else may have written since), a 504 Timeout as kube-apiserver
    /// reports a write whose fate it does not know.
    async fn conditional(
        &self,
        key: &str,
        compare: Compare,
        success: Vec<RequestOp>,
        written: Written<'_>,
    ) -> Result<i64> {
        let txn = TxnRequest {
            compare: vec![compare],
            success,
            failure: vec![range_op(key)],
        };
        let mut unknown: Option<String> = None;
        let mut reissues = 0;
        let resp = loop {
            let outcome = self
                .client
                .kv(false, |mut kv| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await;
            match outcome {
                Ok(resp) => break resp,
                Err(CallError::Ambiguous(e)) if reissues < WRITE_REISSUES => {
                    tracing::info!(key, error = %e, "write may have been applied; re-issuing it");
                    reissues += 1;
                    unknown = Some(e);
                }
                Err(CallError::Ambiguous(e) | CallError::Unavailable(e)) if unknown.is_some() => {
                    return Err(StorageError::Timeout(e));
                }
                Err(e) => return Err(call_error(e)),
            }
        };
        if resp.succeeded {
            return Ok(resp.header.map(|h| h.revision).unwrap_or_default());
        }
        let current = resp.responses.into_iter().find_map(|r| match r.response {
            Some(Response::ResponseRange(range)) => Some(range.kvs.into_iter().next()),
            _ => None,
        });
        let current = current.flatten();
        if let Some(first) = unknown {
            return match (written, current) {
                (Written::Value(value), Some(kv)) if kv.value == value => Ok(kv.mod_revision),
                (Written::Deleted, None) => Ok(resp.header.map(|h| h.revision).unwrap_or_default()),
                _ => Err(StorageError::Timeout(first)),
            };
        }
        Err(if current.is_some() {
            StorageError::Conflict
        } else {
            StorageError::NotFound
        })
    }
}

impl Storage for EtcdStorage {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>>> {
        let req = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        Box::pin(async move {
            let resp = self.range(req).await?;
            Ok(resp.kvs.into_iter().next().map(stored))
        })
    }

    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<i64>> {
        let key = key.to_string();
        Box::pin(async move {
            let compare = Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            };
            let put = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.clone(),
                    ..Default::default()
                })),
            };
            let written = Written::Value(&value);
            match self.conditional(&key, compare, vec![put], written).await {
                Err(StorageError::Conflict) => Err(StorageError::Exists),
                other => other,
            }
        })
    }

    fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> BoxFuture<'_, Result<i64>> {
        let key = key.to_string();
        Box::pin(async move {
            let put = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.clone(),
                    ..Default::default()
                })),
            };
            let written = Written::Value(&value);
            self.conditional(&key, compare_mod(&key, expected), vec![put], written)
                .await
        })
    }

    fn delete(
        &self,
        key: &str,
        expected: i64,
        children: Vec<String>,
    ) -> BoxFuture<'_, Result<i64>> {
        let key = key.to_string();
        Box::pin(async move {
            let mut ops = vec![RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }];
            for child in children {
                ops.push(RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: child.as_bytes().to_vec(),
                        range_end: prefix_end(child.as_bytes()),
                        ..Default::default()
                    })),
                });
            }
            self.conditional(&key, compare_mod(&key, expected), ops, Written::Deleted)
                .await
        })
    }

    fn list(
        &self,
        prefix: &str,
        start: &str,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'_, Result<Page>> {
        let req = RangeRequest {
            key: if start.is_empty() { prefix } else { start }
                .as_bytes()
                .to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            limit,
            revision,
            ..Default::default()
        };
        let requested = revision;
        Box::pin(async move {
            let resp = self.range(req).await?;
            let revision = resp.header.map(|h| h.revision).unwrap_or_default();
            let remaining = resp.count - resp.kvs.len() as i64;
            Ok(Page {
                items: resp.kvs.into_iter().map(stored).collect(),
                revision: if requested > 0 { requested } else { revision },
                remaining: remaining.max(0),
            })
        })
    }

    fn watch(
        &self,
        prefix: &str,
        after: i64,
        bookmarks: bool,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>> {
        Box::pin(self.etcd_watch(prefix, after, bookmarks, None))
    }

    fn watch_with_progress_requests(
        &self,
        prefix: &str,
        after: i64,
        progress_requests: Arc<tokio::sync::Notify>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change>>>> {
        Box::pin(self.etcd_watch(prefix, after, true, Some(progress_requests)))
    }
}

impl EtcdStorage {
    fn etcd_watch(
        &self,
        prefix: &str,
        after: i64,
        bookmarks: bool,
        progress_requests: Option<Arc<tokio::sync::Notify>>,
    ) -> impl std::future::Future<Output = Result<BoxStream<'static, Result<Change>>>> + Send + '_
    {
        let create = WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            start_revision: after + 1,
            progress_notify: bookmarks,
            prev_kv: true,
            ..Default::default()
        };
        let progress = bookmarks.then_some(self.progress_interval);
        async move {
            // The client re-establishes the watch on another member when one goes away; what
            // comes out is one gap-free stream.
            let responses = self
                .client
                .watch(create, progress, progress_requests)
                .await
                .map_err(watch_error)?;
            let stream = tokio_stream::wrappers::ReceiverStream::new(responses)
                .flat_map(|item| {
                    let out: Vec<Result<Change>> = match item {
                        Ok(resp) => changes(resp),
                        Err(e) => vec![Err(watch_error(e))],
                    };
                    futures::stream::iter(out)
                })
                .boxed();
            Ok(stream)
        }
    }
}

fn watch_error(err: WatchError) -> StorageError {
    match err {
        WatchError::Compacted(revision) => StorageError::Compacted(revision),
        WatchError::Unavailable(message) => StorageError::Unavailable(message),
    }
}

/// The changes in one watch response (a progress notification when it has no events).
fn changes(resp: WatchResponse) -> Vec<Result<Change>> {
    if resp.events.is_empty() {
        return vec![Ok(Change::Progress(
            resp.header.map(|h| h.revision).unwrap_or_default(),
        ))];
    }
    let mut out = Vec::with_capacity(resp.events.len());
    for event in resp.events {
        let Some(kv) = event.kv else { continue };
        let prev = event.prev_kv.map(stored);
        if event.r#type == EventType::Delete as i32 {
            let Some(mut prev) = prev else { continue };
            prev.revision = kv.mod_revision;
            out.push(Ok(Change::Delete { prev }));
        } else {
            out.push(Ok(Change::Put {
                new: stored(kv),
                prev,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_errors_of_etcd_and_tonic_are_too_large() {
        use tonic::{Code, Status};
        for status in [
            Status::new(Code::InvalidArgument, "etcdserver: request is too large"),
            Status::new(
                Code::ResourceExhausted,
                "grpc: received message larger than max (3040000 vs. 2097152)",
            ),
            Status::new(
                Code::ResourceExhausted,
                "grpc: trying to send message larger than max (3040000 vs. 2097152)",
            ),
            Status::new(
                Code::OutOfRange,
                "Error, decoded message length too large: found 3040000 bytes, the limit is: \
                 2097152 bytes",
            ),
        ] {
            assert_eq!(status_error(status), StorageError::TooLarge);
        }
        assert!(matches!(
            status_error(Status::new(
                Code::InvalidArgument,
                "etcdserver: key is not provided"
            )),
            StorageError::Unavailable(_)
        ));
        assert!(matches!(
            status_error(Status::new(Code::Unavailable, "connection refused")),
            StorageError::Unavailable(_)
        ));
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
