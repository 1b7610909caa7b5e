//! The etcd v3 gRPC front end (KV, Cluster; Maintenance is in [`crate::maintenance`]) and
//! the member-to-member `Peer` service. Handlers validate requests the way etcd's `v3rpc`
//! layer does, then either read the local state machine (after a read-index barrier unless
//! serializable) or replicate a command through [`StoreNode::write`].

use std::sync::Arc;

use prost::Message;
use skiff_proto::etcdserverpb::{
    self as pb, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
    cluster_server::Cluster, kv_server::Kv,
};
use skiff_proto::skiffpeer::{Blob, peer_server::Peer};
use tonic::{Request, Response, Status};

use crate::auth::AuthData;
use crate::auth_grpc::{self, Caller};
use crate::checks::{check_delete, check_put, check_range, check_txn_request};
use crate::error::Error;
use crate::mvcc::txn_has_writes;
use crate::network::{AdminReply, AdminRequest, Forwarded, from_blob, to_blob};
use crate::node::{MemberView, StoreNode};
use crate::types::{Command, Reply};

/// The etcd version skiff reports: an etcd-style semver at or above 3.5.13, so clients'
/// and kube-apiserver's version gates accept it.
pub const ETCD_VERSION: &str = "3.5.21";
/// The cluster version reported next to it.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// Metadata key etcd clients set to require a leader (`clientv3.WithRequireLeader`).
const REQUIRE_LEADER_KEY: &str = "hasleader";

pub(crate) fn requires_leader<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .get(REQUIRE_LEADER_KEY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

/// KV, Cluster and Maintenance services share one handle on the member.
#[derive(Clone)]
pub struct EtcdApi {
    pub node: Arc<StoreNode>,
}

impl EtcdApi {
    pub(crate) fn check_leader<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if requires_leader(request) && self.node.current_leader().is_none() {
            return Err(Error::NoLeader.into());
        }
        Ok(())
    }

    /// Encode a request for replication, refusing it if over `--max-request-bytes`.
    fn encode_checked(&self, req: &impl Message) -> Result<Vec<u8>, Status> {
        let raw = req.encode_to_vec();
        self.check_size(raw.len())?;
        Ok(raw)
    }

    fn check_size(&self, len: usize) -> Result<(), Status> {
        if len > self.node.config.max_request_bytes {
            return Err(Error::RequestTooLarge.into());
        }
        Ok(())
    }

    /// Checks every write handler starts with; returns whether the client requires a
    /// leader (`hasleader` metadata).
    fn admit_write<T>(&self, request: &Request<T>) -> Result<bool, Status> {
        self.check_leader(request)?;
        self.check_not_learner()?;
        Ok(requires_leader(request))
    }

    fn check_not_learner(&self) -> Result<(), Status> {
        if self.node.is_learner() {
            return Err(Error::NotSupportedForLearner.into());
        }
        Ok(())
    }

    async fn replicate<T: Message + Default + HasHeaderMut + 'static>(
        &self,
        command: Command,
        require_leader: bool,
    ) -> Result<T, Status> {
        match self.node.write(command, require_leader).await? {
            Reply::Response(bytes) => {
                let mut response = skiff_proto::depth::decode_bounded::<T>(bytes.as_slice())
                    .map_err(|e| Status::internal(format!("decode reply: {e}")))?;
                let revision = response.header_mut().revision;
                // etcd answers a write once the member serving it has applied it, so a
                // serializable read there sees it; a forwarded write is only applied on the
                // leader so far.
                if self.node.sm.read().mvcc.current_revision() < revision {
                    // Woken by the state machine itself after each apply.
                    let mut applied = self.node.sm.subscribe();
                    let _ = tokio::time::timeout(
                        self.node.request_timeout(),
                        applied.wait_for(|current| *current >= revision),
                    )
                    .await;
                }
                *response.header_mut() = self.node.header(revision);
                Ok(response)
            }
            Reply::Failed(err) => Err(err.into()),
            Reply::Done => Err(Status::internal("unexpected reply kind")),
        }
    }

    /// Replicate a client write after its permission check (see [`crate::auth`]): checked
    /// again and re-proposed if the auth state changed before it applied.
    async fn replicate_as<T: Message + Default + HasHeaderMut + 'static>(
        &self,
        caller: Option<&Caller>,
        command: Command,
        check: impl Fn(&AuthData, Option<&str>) -> Result<(), Error>,
        require_leader: bool,
    ) -> Result<T, Status> {
        let mut attempts = 0;
        loop {
            let (guarded, revision) = auth_grpc::guard(&self.node, caller, &command, &check)?;
            match self.replicate(guarded, require_leader).await {
                Err(status)
                    if auth_grpc::is_old_revision(&status)
                        && attempts < auth_grpc::MAX_AUTH_RETRIES =>
                {
                    attempts += 1;
                    auth_grpc::wait_auth_newer(&self.node, revision).await;
                }
                result => return result,
            }
        }
    }

    fn member_pb(view: &MemberView) -> pb::Member {
        pb::Member {
            id: view.id,
            name: view.name.clone(),
            peer_ur_ls: view.peer_urls.clone(),
            client_ur_ls: view.client_urls.clone(),
            is_learner: view.is_learner,
        }
    }

    fn members_pb(&self) -> Vec<pb::Member> {
        self.node.members().iter().map(Self::member_pb).collect()
    }

    pub(crate) fn current_header(&self) -> pb::ResponseHeader {
        let revision = self.node.sm.read().mvcc.current_revision();
        self.node.header(revision)
    }

    /// etcd's Cluster service header carries no revision (`clusterServer.header()`).
    fn cluster_header(&self) -> pb::ResponseHeader {
        self.node.header(0)
    }
}

/// Lets the generic replicate path fix up response headers.
trait HasHeaderMut {
    fn header_mut(&mut self) -> &mut pb::ResponseHeader;
}

macro_rules! header_mut {
    ($($t:ty),*) => {$(
        impl HasHeaderMut for $t {
            fn header_mut(&mut self) -> &mut pb::ResponseHeader {
                self.header.get_or_insert_with(Default::default)
            }
        }
    )*};
}
header_mut!(
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    CompactionResponse
);

#[tonic::async_trait]
impl Kv for EtcdApi {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        self.check_leader(&request)?;
        let caller = auth_grpc::caller(&request);
        let req = request.into_inner();
        check_range(&req)?;
        if !req.serializable {
            self.check_not_learner()?;
            self.node.linearizable_barrier().await?;
        }
        auth_grpc::check_read(&self.node, caller.as_ref(), |auth, user| {
            auth_grpc::check_range(auth, user, &req)
        })?;
        let mut response = self.node.sm.read().mvcc.range(&req)?;
        let revision = response
            .header
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_default();
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let require_leader = self.admit_write(&request)?;
        let caller = auth_grpc::caller(&request);
        let req = request.into_inner();
        check_put(&req)?;
        let raw = self.encode_checked(&req)?;
        crate::maintenance::check_quota(&self.node, crate::maintenance::put_cost(&req)).await?;
        #[cfg(feature = "chaos-bugs")]
        if let Some(early) = crate::chaos_bugs::ack_put_early(&self.node, &raw, require_leader) {
            return Ok(Response::new(early));
        }
        let check = |auth: &AuthData, user: Option<&str>| auth_grpc::check_put(auth, user, &req);
        Ok(Response::new(
            self.replicate_as(caller.as_ref(), Command::Put(raw), check, require_leader)
                .await?,
        ))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let require_leader = self.admit_write(&request)?;
        let caller = auth_grpc::caller(&request);
        let req = request.into_inner();
        check_delete(&req)?;
        let raw = self.encode_checked(&req)?;
        let check = |auth: &AuthData, user: Option<&str>| auth_grpc::check_delete(auth, user, &req);
        Ok(Response::new(
            self.replicate_as(
                caller.as_ref(),
                Command::DeleteRange(raw),
                check,
                require_leader,
            )
            .await?,
        ))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let require_leader = self.admit_write(&request)?;
        let caller = auth_grpc::caller(&request);
        let req = request.into_inner();
        check_txn_request(&req, self.node.config.max_txn_ops)?;
        #[cfg(feature = "chaos-bugs")]
        if let Some((decided, succeeded)) = crate::chaos_bugs::decide_txn_locally(&self.node, &req)?
        {
            let raw = self.encode_checked(&decided)?;
            let mut response: TxnResponse =
                self.replicate(Command::Txn(raw), require_leader).await?;
            response.succeeded = succeeded;
            return Ok(Response::new(response));
        }
        if !txn_has_writes(&req) {
            self.check_not_learner()?;
            self.node.linearizable_barrier().await?;
            auth_grpc::check_read(&self.node, caller.as_ref(), |auth, user| {
                auth_grpc::check_txn(auth, user, &req)
            })?;
            let mut response = self.node.sm.read().mvcc.read_only_txn(&req)?;
            let revision = response
                .header
                .as_ref()
                .map(|h| h.revision)
                .unwrap_or_default();
            response.header = Some(self.node.header(revision));
            return Ok(Response::new(response));
        }
        let raw = self.encode_checked(&req)?;
        crate::maintenance::check_quota(&self.node, crate::maintenance::txn_cost(&req)).await?;
        let check = |auth: &AuthData, user: Option<&str>| auth_grpc::check_txn(auth, user, &req);
        Ok(Response::new(
            self.replicate_as(caller.as_ref(), Command::Txn(raw), check, require_leader)
                .await?,
        ))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let require_leader = self.admit_write(&request)?;
        let req = request.into_inner();
        let physical = req.physical;
        let response: CompactionResponse = self
            .replicate(Command::Compact(req.encode_to_vec()), require_leader)
            .await?;
        if physical {
            // The compaction is applied on the leader already; make sure it is applied here.
            self.node.linearizable_barrier().await?;
        }
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl Cluster for EtcdApi {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.check_leader(&request)?;
        let req = request.into_inner();
        let peer_urls: Vec<String> = req
            .peer_ur_ls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        if peer_urls.is_empty() {
            return Err(Error::BadPeerUrl("no peer URL given".into()).into());
        }
        let reply = self
            .node
            .admin(AdminRequest::AddMember {
                peer_urls: peer_urls.clone(),
                learner: req.is_learner,
            })
            .await?;
        let AdminReply::Added { id } = reply else {
            return Err(Status::internal("unexpected reply to member add"));
        };
        // Wait until the new configuration is visible locally so the list includes it.
        let _ = self
            .node
            .raft
            .wait(Some(self.node.request_timeout()))
            .metrics(
                |m| m.membership_config.membership().get_node(&id).is_some(),
                "member add visible",
            )
            .await;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.cluster_header()),
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: peer_urls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members_pb(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.check_leader(&request)?;
        let id = request.into_inner().id;
        self.node.admin(AdminRequest::RemoveMember { id }).await?;
        let _ = self
            .node
            .raft
            .wait(Some(self.node.request_timeout()))
            .metrics(
                |m| m.membership_config.membership().get_node(&id).is_none(),
                "member remove visible",
            )
            .await;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.cluster_header()),
            members: self.members_pb(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.check_leader(&request)?;
        let req = request.into_inner();
        let peer_urls = req
            .peer_ur_ls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        self.node
            .admin(AdminRequest::UpdateMember {
                id: req.id,
                peer_urls,
            })
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.cluster_header()),
            members: self.members_pb(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.check_leader(&request)?;
        if request.get_ref().linearizable {
            self.node.linearizable_barrier().await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.cluster_header()),
            members: self.members_pb(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.check_leader(&request)?;
        let id = request.into_inner().id;
        self.node.admin(AdminRequest::PromoteMember { id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.cluster_header()),
            members: self.members_pb(),
        }))
    }
}

/// The member-to-member service.
#[derive(Clone)]
pub struct PeerApi {
    pub node: Arc<StoreNode>,
}

impl PeerApi {
    /// Raft traffic from a member this cluster removed is refused with a status that
    /// makes the sender stop (see `PeerChannels::removed`).
    fn refuse_removed(&self, vote: &openraft::Vote<crate::types::MemberId>) -> Result<(), Status> {
        if self.node.from_removed_member(vote) {
            return Err(crate::network::removed_status());
        }
        Ok(())
    }
}

/// Responses of one append stream, produced in request order as the stream is polled.
type AppendStreamOut =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Blob, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Peer for PeerApi {
    type AppendStreamStream = AppendStreamOut;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<Blob>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        use futures::StreamExt;
        let api = self.clone();
        // One request at a time, answered in order: no task or queue between the two.
        let responses = request.into_inner().then(move |item| {
            let api = api.clone();
            async move {
                let blob = item?;
                let (seq, rpc): (
                    u64,
                    openraft::raft::AppendEntriesRequest<crate::types::TypeConfig>,
                ) = from_blob(&blob)?;
                api.refuse_removed(&rpc.vote)?;
                let result = api.node.raft.append_entries(rpc).await;
                to_blob(&(seq, result))
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn append_entries(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> =
            from_blob(request.get_ref())?;
        self.refuse_removed(&rpc.vote)?;
        let result = self.node.raft.append_entries(rpc).await;
        Ok(Response::new(to_blob(&result)?))
    }

    async fn vote(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: openraft::raft::VoteRequest<crate::types::MemberId> =
            from_blob(request.get_ref())?;
        self.refuse_removed(&rpc.vote)?;
        let result = self.node.raft.vote(rpc).await;
        Ok(Response::new(to_blob(&result)?))
    }

    async fn install_snapshot(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = from_blob(request.get_ref())?;
        let result = self.node.raft.install_snapshot(rpc).await;
        Ok(Response::new(to_blob(&result)?))
    }

    async fn forward(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let forwarded: Forwarded = from_blob(request.get_ref())?;
        // A removed member's pre-vote is refused like its votes, so it learns it and stops.
        if let Forwarded::PreVote(pre_vote) = &forwarded
            && self.node.is_removed(pre_vote.candidate)
        {
            return Err(crate::network::removed_status());
        }
        let outcome = self.node.handle_forward(forwarded).await;
        Ok(Response::new(to_blob(&outcome)?))
    }

    async fn read_index(&self, _request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let result = self.node.handle_read_index().await;
        Ok(Response::new(to_blob(&result)?))
    }

    async fn members(&self, _request: Request<Blob>) -> Result<Response<Blob>, Status> {
        Ok(Response::new(to_blob(&self.node.cluster_info())?))
    }
}
