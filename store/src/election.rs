//! etcd's `v3electionpb.Election` service, served on the client port: clientv3's
//! `concurrency.Election` recipe run on the member (as etcd's
//! `server/etcdserver/api/v3election` does), on the store's own KV, leases and revision
//! stream (shared pieces in [`crate::lock`]).
//!
//! - **Campaign(name, lease, value)**: the candidate's key is `<name>/<lease ID in hex>`,
//!   created with the lease (or found, and its value proclaimed if different); the
//!   candidate leads once every key under `<name>/` created before its own is deleted.
//!   The answer's `LeaderKey` (name, key, create revision, lease) is the proof of
//!   leadership the other calls take. A candidate whose client goes away resigns.
//! - **Proclaim**: put a new value on the leader key, only while it still has the
//!   leader's create revision ("election: not leader" otherwise).
//! - **Leader**: the key created first under `<name>/` ("election: no leader" if none).
//! - **Observe**: a stream of the leader's key-value: the current leader, each value it
//!   proclaims, and each following leader once the previous key is deleted.
//! - **Resign**: delete the leader key if it still has the leader's create revision.

use std::pin::Pin;

use futures::Stream;
use skiff_proto::etcdserverpb::{
    DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};
use skiff_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::lock::{
    DeleteOnDrop, KeyChanges, Recipe, RecipeError, create_revision_is, get_by_create, name_prefix,
    op_put, op_range, prefix_end, session_key, txn_range,
};

/// Leader updates queued for one Observe stream before the observer waits for the client.
pub const OBSERVE_QUEUE: usize = 16;

/// The Election service.
#[derive(Clone)]
pub struct ElectionApi {
    pub recipe: Recipe,
}

impl ElectionApi {
    /// Put `value` on the leader key while it is still the leader's.
    async fn proclaim_value(
        recipe: &Recipe,
        leader: &LeaderKey,
        value: &[u8],
    ) -> Result<TxnResponseHeader, Status> {
        let response = recipe
            .txn(TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op_put(&leader.key, value, leader.lease)],
                failure: vec![],
            })
            .await?;
        if !response.succeeded {
            return Err(RecipeError::NotLeader.into());
        }
        Ok(response.header)
    }
}

type TxnResponseHeader = Option<skiff_proto::etcdserverpb::ResponseHeader>;

#[tonic::async_trait]
impl Election for ElectionApi {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let recipe = &self.recipe.for_request(&request);
        let CampaignRequest { name, lease, value } = request.into_inner();
        let lease = recipe.session_lease(lease).await?;
        let prefix = name_prefix(&name);
        let key = session_key(&prefix, lease);
        let response = recipe
            .txn(TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![op_put(&key, &value, lease)],
                failure: vec![op_range(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })],
            })
            .await?;
        let mut leader = LeaderKey {
            name,
            key: key.clone(),
            rev: response
                .header
                .as_ref()
                .map(|h| h.revision)
                .unwrap_or_default(),
            lease,
        };
        if !response.succeeded {
            let existing = txn_range(&response, 0).first().ok_or_else(|| {
                crate::error::Error::Internal("campaign key vanished inside a txn".into())
            })?;
            leader.rev = existing.create_revision;
            if existing.value != value {
                Self::proclaim_value(recipe, &leader, &value).await?;
            }
        }
        // A candidate whose client goes away resigns (clientv3 resigns on a cancelled
        // context).
        let mut resign = DeleteOnDrop::new(recipe.clone(), key, leader.rev);
        let waited = recipe.wait_deletes(&prefix, leader.rev - 1).await;
        resign.disarm();
        waited?;
        Ok(Response::new(CampaignResponse {
            header: response.header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let recipe = self.recipe.for_request(&request);
        let ProclaimRequest { leader, value } = request.into_inner();
        let leader = leader.ok_or(RecipeError::MissingLeaderKey)?;
        let header = Self::proclaim_value(&recipe, &leader, &value).await?;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let recipe = self.recipe.for_request(&request);
        let prefix = name_prefix(&request.into_inner().name);
        let mut response = recipe.get(get_by_create(&prefix, false)).await?;
        if response.kvs.is_empty() {
            return Err(RecipeError::NoLeader.into());
        }
        Ok(Response::new(LeaderResponse {
            header: response.header,
            kv: Some(response.kvs.swap_remove(0)),
        }))
    }

    type ObserveStream =
        Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let recipe = self.recipe.for_request(&request);
        let prefix = name_prefix(&request.into_inner().name);
        let (tx, rx) = mpsc::channel(OBSERVE_QUEUE);
        tokio::spawn(async move {
            let closed = tx.clone();
            tokio::select! {
                result = observe(&recipe, &prefix, &tx) => {
                    if let Err(status) = result {
                        let _ = tx.send(Err(status)).await;
                    }
                }
                _ = closed.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let recipe = self.recipe.for_request(&request);
        let leader = request
            .into_inner()
            .leader
            .ok_or(RecipeError::MissingLeaderKey)?;
        let response = recipe
            .txn(TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: leader.key.clone(),
                            ..Default::default()
                        },
                    )),
                }],
                failure: vec![],
            })
            .await?;
        Ok(Response::new(ResignResponse {
            header: response.header,
        }))
    }
}

/// clientv3's `Election.observe`: send the leader, then its proclamations, then the next
/// leader once its key is deleted, until the client goes away (the caller stops it) or a
/// read fails.
async fn observe(
    recipe: &Recipe,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    let node = recipe.node().clone();
    loop {
        let mut first = recipe.get(get_by_create(prefix, false)).await?;
        let revision = first
            .header
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_default();
        let (header, kv) = if first.kvs.is_empty() {
            // No leader: wait for the first put under the prefix.
            let mut changes =
                KeyChanges::new(node.clone(), prefix.to_vec(), prefix_end(prefix), revision);
            loop {
                if let Some(put) = changes.next().await?.into_iter().find(|c| !c.deleted) {
                    break (Some(node.header(put.kv.mod_revision)), put.kv);
                }
            }
        } else {
            (first.header, first.kvs.swap_remove(0))
        };
        let from = header.as_ref().map(|h| h.revision).unwrap_or_default() + 1;
        let key = kv.key.clone();
        if tx
            .send(Ok(LeaderResponse {
                header,
                kv: Some(kv),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
        // Follow this leader's key until it is deleted.
        let mut changes = KeyChanges::new(node.clone(), key, Vec::new(), from);
        'leader: loop {
            for change in changes.next().await? {
                if change.deleted {
                    break 'leader;
                }
                let response = LeaderResponse {
                    header: Some(node.header(change.revision)),
                    kv: Some(change.kv),
                };
                if tx.send(Ok(response)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
