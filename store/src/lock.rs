//! etcd's `v3lockpb.Lock` service, served on the client port, plus the pieces of
//! clientv3's `concurrency` recipe that it and [`crate::election`] share.
//!
//! As in etcd (`server/etcdserver/api/v3lock`), the service is not a separate lock table:
//! it runs the client-side recipe on the member itself, through the store's own KV, Lease
//! and revision stream, so a lock taken here and one taken by `etcdctl lock` (which runs
//! the same recipe in the client) exclude each other.
//!
//! - **Lock(name, lease)**: the lock's key is `<name>/<lease ID in hex>`, created with the
//!   lease in a txn that only creates it if absent (so locking twice with one lease is one
//!   acquisition). The waiter with the lowest create revision under `<name>/` holds the
//!   lock; everyone else waits for the deletion of the key created just before theirs
//!   (`wait_deletes`), then re-reads its own key — gone means the lease expired meanwhile
//!   ("mutex: session is expired"). A waiter whose client goes away deletes its key.
//! - **Unlock(key)**: deletes the key.
//! - Lease 0 gets a fresh 60 s lease, as etcd's session does; the service never keeps a
//!   lease alive (etcd's server orphans its session): that is the client's job.
//!
//! Waiting for a deletion reads the changes under a key from the engine, revision by
//! revision, each time the state machine publishes a new revision (the way
//! [`crate::watch`] streams are fed), so no event is missed between two wake-ups.

use std::sync::Arc;

use skiff_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, TxnResponse, compare, kv_server::Kv, lease_server::Lease,
    range_request, request_op, response_op,
};
use skiff_proto::mvccpb::KeyValue;
use skiff_proto::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::grpc::EtcdApi;
use crate::lease::LeaseApi;
use crate::mvcc::{Change, Revision, read_changes};
use crate::node::StoreNode;

/// TTL of the lease granted for a request that names lease 0 (etcd's session default).
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// The `concurrency` package's own failures. They are client-library errors, not
/// `etcdserver` ones (so not in [`crate::error`]'s table): etcd's servers return them as
/// plain errors, which gRPC sends as `Unknown` with the message below.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("mutex: session is expired")]
    SessionExpired,
    #[error("election: not leader")]
    NotLeader,
    #[error("election: no leader")]
    NoLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
}

impl From<RecipeError> for Status {
    fn from(err: RecipeError) -> Status {
        Status::unknown(err.to_string())
    }
}

/// The end of the range holding every key that starts with `prefix` (clientv3's
/// `GetPrefixRangeEnd`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space.
    vec![0]
}

/// `<prefix><lease ID in lowercase hex>`: a session's key in a lock or election.
pub(crate) fn session_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// `<name>/`.
pub(crate) fn name_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// A range op.
pub(crate) fn op_range(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(request)),
    }
}

/// A put op with a lease.
pub(crate) fn op_put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

/// A compare on a key's create revision.
pub(crate) fn create_revision_is(key: &[u8], revision: Revision) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

/// clientv3's `WithFirstCreate` (`descending = false`) or `WithLastCreate` on a prefix:
/// the one key under it created first (or last).
pub(crate) fn get_by_create(prefix: &[u8], descending: bool) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_target: range_request::SortTarget::Create as i32,
        sort_order: if descending {
            range_request::SortOrder::Descend
        } else {
            range_request::SortOrder::Ascend
        } as i32,
        ..Default::default()
    }
}

/// The key-values of the `index`-th response of a txn, if it is a range.
pub(crate) fn txn_range(response: &TxnResponse, index: usize) -> &[KeyValue] {
    match response
        .responses
        .get(index)
        .and_then(|r| r.response.as_ref())
    {
        Some(response_op::Response::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

/// The member's own KV and Lease services, called in-process (etcd's servers use an
/// in-process client the same way).
#[derive(Clone)]
pub struct Recipe {
    kv: EtcdApi,
    leases: LeaseApi,
    /// Who the recipe acts for: its KV and Lease calls are checked as that user's while
    /// auth is on (see [`crate::auth_grpc`]).
    caller: Option<crate::auth_grpc::Caller>,
}

impl Recipe {
    pub fn new(node: Arc<StoreNode>, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Recipe {
            kv: EtcdApi { node: node.clone() },
            leases: LeaseApi { node, stop },
            caller: None,
        }
    }

    /// This recipe acting for the sender of `request`.
    pub(crate) fn for_request<T>(&self, request: &Request<T>) -> Recipe {
        Recipe {
            caller: crate::auth_grpc::caller(request),
            ..self.clone()
        }
    }

    /// An in-process request carrying the caller.
    fn request<T>(&self, body: T) -> Request<T> {
        let mut request = Request::new(body);
        if let Some(caller) = &self.caller {
            request.extensions_mut().insert(caller.clone());
        }
        request
    }

    pub(crate) fn node(&self) -> &Arc<StoreNode> {
        &self.kv.node
    }

    /// The session's lease: `lease`, or a fresh one with [`DEFAULT_SESSION_TTL`] for 0.
    pub(crate) async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = self
            .leases
            .lease_grant(self.request(LeaseGrantRequest {
                ttl: DEFAULT_SESSION_TTL,
                id: 0,
            }))
            .await?
            .into_inner();
        Ok(granted.id)
    }

    pub(crate) async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        Ok(self.kv.txn(self.request(request)).await?.into_inner())
    }

    pub(crate) async fn get(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        Ok(self.kv.range(self.request(request)).await?.into_inner())
    }

    pub(crate) async fn delete(&self, key: &[u8]) -> Result<DeleteRangeResponse, Status> {
        Ok(self
            .kv
            .delete_range(self.request(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            }))
            .await?
            .into_inner())
    }

    /// Wait until every key under `prefix` created at or before `max_create_revision` is
    /// gone (clientv3's `waitDeletes`): repeatedly find the last such key and wait for its
    /// deletion.
    pub(crate) async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: Revision,
    ) -> Result<(), Status> {
        loop {
            let mut request = get_by_create(prefix, true);
            request.max_create_revision = max_create_revision;
            let response = self.get(request).await?;
            let Some(last) = response.kvs.first() else {
                return Ok(());
            };
            let revision = response.header.map(|h| h.revision).unwrap_or_default();
            self.wait_delete(&last.key, revision).await?;
        }
    }

    /// Wait for a delete of `key` at or after `revision` (clientv3's `waitDelete`).
    pub(crate) async fn wait_delete(&self, key: &[u8], revision: Revision) -> Result<(), Status> {
        let mut changes = KeyChanges::new(self.node().clone(), key.to_vec(), Vec::new(), revision);
        loop {
            if changes.next().await?.iter().any(|change| change.deleted) {
                return Ok(());
            }
        }
    }
}

/// The changes of one key (or range) from a revision on, read from the engine each time
/// the state machine publishes a new revision: a watcher inside the member.
pub(crate) struct KeyChanges {
    node: Arc<StoreNode>,
    key: Vec<u8>,
    /// Empty: `key` alone.
    range_end: Vec<u8>,
    /// The next revision owed.
    next: Revision,
    revisions: tokio::sync::watch::Receiver<Revision>,
}

impl KeyChanges {
    pub(crate) fn new(
        node: Arc<StoreNode>,
        key: Vec<u8>,
        range_end: Vec<u8>,
        from: Revision,
    ) -> Self {
        let revisions = node.sm.subscribe();
        KeyChanges {
            node,
            key,
            range_end,
            next: from.max(1),
            revisions,
        }
    }

    fn wants(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else {
            key >= self.key.as_slice() && (self.range_end == [0] || key < self.range_end.as_slice())
        }
    }

    /// The next non-empty run of changes (in revision order); waits for them.
    pub(crate) async fn next(&mut self) -> Result<Vec<Change>, Status> {
        loop {
            let read = {
                let state = self.node.sm.read();
                let current = state.mvcc.current_revision();
                let compacted = state.mvcc.compact_revision();
                if current >= self.next {
                    if compacted > 0 && self.next < compacted {
                        return Err(Error::Compacted.into());
                    }
                    let view = self
                        .node
                        .sm
                        .engine()
                        .read()
                        .map_err(|e| Error::Storage(e.to_string()))?;
                    Some((view, current))
                } else {
                    None
                }
            };
            if let Some((view, current)) = read {
                let mut changes = Vec::new();
                read_changes(view.as_ref(), self.next, current, &mut |change| {
                    if self.wants(&change.kv.key) {
                        changes.push(change);
                    }
                    true
                })
                .map_err(|e| Error::Storage(e.to_string()))?;
                drop(view);
                self.next = current + 1;
                if !changes.is_empty() {
                    return Ok(changes);
                }
            }
            let mut stop = self.node.stop.clone();
            tokio::select! {
                changed = self.revisions.changed() => {
                    if changed.is_err() {
                        return Err(Error::Stopped.into());
                    }
                }
                _ = stop.wait_for(|stop| *stop) => return Err(Error::Stopped.into()),
            }
        }
    }
}

/// Deletes a key if dropped armed: a waiter whose client went away (its request future
/// dropped) gives up its place, as clientv3's mutex unlocks when its wait fails.
pub(crate) struct DeleteOnDrop {
    recipe: Recipe,
    key: Option<Vec<u8>>,
    /// Delete only while the key still has this create revision (0: unconditionally).
    create_revision: Revision,
}

impl DeleteOnDrop {
    pub(crate) fn new(recipe: Recipe, key: Vec<u8>, create_revision: Revision) -> Self {
        DeleteOnDrop {
            recipe,
            key: Some(key),
            create_revision,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.key = None;
    }

    /// Delete now (and disarm).
    pub(crate) async fn fire(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = delete_guarded(&self.recipe, &key, self.create_revision).await;
        }
    }
}

async fn delete_guarded(
    recipe: &Recipe,
    key: &[u8],
    create_revision: Revision,
) -> Result<(), Status> {
    if create_revision == 0 {
        recipe.delete(key).await?;
        return Ok(());
    }
    recipe
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, create_revision)],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: key.to_vec(),
                        ..Default::default()
                    },
                )),
            }],
            failure: vec![],
        })
        .await?;
    Ok(())
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let recipe = self.recipe.clone();
            let create_revision = self.create_revision;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = delete_guarded(&recipe, &key, create_revision).await;
                });
            }
        }
    }
}

/// The Lock service.
#[derive(Clone)]
pub struct LockApi {
    pub recipe: Recipe,
}

#[tonic::async_trait]
impl Lock for LockApi {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let recipe = &self.recipe.for_request(&request);
        let LockRequest { name, lease } = request.into_inner();
        let lease = recipe.session_lease(lease).await?;
        let prefix = name_prefix(&name);
        let key = session_key(&prefix, lease);
        // Queue up (or find this lease already queued) and read the holder, in one txn.
        let owner = op_range(get_by_create(&prefix, false));
        let response = recipe
            .txn(TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![op_put(&key, b"", lease), owner.clone()],
                failure: vec![
                    op_range(RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    }),
                    owner,
                ],
            })
            .await?;
        let my_revision = if response.succeeded {
            response
                .header
                .as_ref()
                .map(|h| h.revision)
                .unwrap_or_default()
        } else {
            txn_range(&response, 0)
                .first()
                .map(|kv| kv.create_revision)
                .ok_or_else(|| Error::Internal("lock key vanished inside a txn".into()))?
        };
        let holder = txn_range(&response, 1).first().map(|kv| kv.create_revision);
        if holder.is_none_or(|revision| revision == my_revision) {
            return Ok(Response::new(LockResponse {
                header: response.header,
                key,
            }));
        }
        let mut cleanup = DeleteOnDrop::new(recipe.clone(), key.clone(), 0);
        if let Err(err) = recipe.wait_deletes(&prefix, my_revision - 1).await {
            cleanup.fire().await;
            return Err(err);
        }
        // The lease may have expired while waiting: then the key is gone.
        let mine = match recipe
            .get(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(mine) => mine,
            Err(err) => {
                cleanup.fire().await;
                return Err(err);
            }
        };
        cleanup.disarm();
        if mine.kvs.is_empty() {
            return Err(RecipeError::SessionExpired.into());
        }
        Ok(Response::new(LockResponse {
            header: mine.header,
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let recipe = self.recipe.for_request(&request);
        let UnlockRequest { key } = request.into_inner();
        let response = recipe.delete(&key).await?;
        Ok(Response::new(UnlockResponse {
            header: response.header,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_like_clientv3() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn session_key_is_hex_lease() {
        assert_eq!(
            session_key(b"job/", 0x694d7c1b5e2e6a07),
            b"job/694d7c1b5e2e6a07".to_vec()
        );
        assert_eq!(name_prefix(b"job"), b"job/".to_vec());
    }
}
