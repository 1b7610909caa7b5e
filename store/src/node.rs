//! One store member: its Raft instance, state machine, and the request paths every
//! protocol front end shares — propose-or-forward for writes, read-index barriers for
//! linearizable reads, and membership administration on the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use sha2::{Digest, Sha256};
use skiff_proto::etcdserverpb::ResponseHeader;
use tokio::time::Instant;

use crate::config::StoreConfig;
use crate::error::Error;
use crate::network::{
    AdminReply, AdminRequest, ClusterInfo, ForwardOutcome, Forwarded, PeerChannels,
};
use crate::proposer::{Proposed, Proposer};
use crate::raft_log::RestoredLeader;
use crate::read_index::{ReadIndex, ReadIndexBatcher};
use crate::state_machine::StateMachineStore;
use crate::types::{Command, Member, MemberId, Raft, Reply};

/// etcd's default `--max-learners`.
pub const MAX_LEARNERS: usize = 1;

/// One member of the store cluster.
pub struct StoreNode {
    pub id: MemberId,
    pub cluster_id: u64,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub config: Arc<StoreConfig>,
    pub channels: PeerChannels,
    /// Batches concurrent writes into shared log entries.
    pub proposer: Proposer,
    /// Lease expiries while this member is the primary lessor (see [`crate::lease`]).
    pub leases: crate::lease::Primary,
    /// Set when this member restarted as leader of its old term (see [`RestoredLeader`]).
    pub restored_leader: Option<RestoredLeader>,
    /// Raft log syncs done (see [`crate::raft_log::LogStore::sync_counter`]).
    pub log_syncs: Arc<std::sync::atomic::AtomicU64>,
    /// Read-index batching for this member's linearizable reads.
    pub reads: ReadIndexBatcher,
    /// Read-index batching for followers' requests while this member leads.
    pub leader_reads: ReadIndexBatcher,
    /// Turns true when this member stops: open client and peer streams end then.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Client streams (watch, lease keep-alive) open now, for the shutdown log.
    pub open_streams: OpenStreams,
    /// Elections this member holds off (see [`crate::campaign`]).
    pub election_hold: crate::campaign::ElectionHold,
}

/// Counts of the client streams open on a member (see [`StoreNode::open_streams`]).
#[derive(Default)]
pub struct OpenStreams {
    watch: std::sync::atomic::AtomicUsize,
    keep_alive: std::sync::atomic::AtomicUsize,
}

/// Counts one open stream until dropped.
pub struct OpenStream<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl OpenStreams {
    fn open(counter: &std::sync::atomic::AtomicUsize) -> OpenStream<'_> {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenStream(counter)
    }

    /// Count a watch stream while the guard lives.
    pub fn watch(&self) -> OpenStream<'_> {
        Self::open(&self.watch)
    }

    /// Count a lease keep-alive stream while the guard lives.
    pub fn keep_alive(&self) -> OpenStream<'_> {
        Self::open(&self.keep_alive)
    }

    /// `(watch streams, keep-alive streams)` open now.
    pub fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.watch.load(Relaxed), self.keep_alive.load(Relaxed))
    }
}

impl StoreNode {
    /// Completes once this member stops (or its stop signal is gone).
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|stop| *stop).await;
    }
}

/// A member as the Cluster API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: MemberId,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// A stable 64-bit ID from a hash of its parts (like etcd's member and cluster IDs).
pub fn hash_id(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes).max(1)
}

/// The ID of an initial-cluster member: hash of its sorted peer URLs and the cluster token.
pub fn initial_member_id(peer_urls: &[String], token: &str) -> MemberId {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let joined = urls.join(",");
    hash_id(&[joined.as_bytes(), token.as_bytes()])
}

impl StoreNode {
    /// How long a client request may take before it fails with "request timed out"
    /// (etcd: 5 s plus two election timeouts).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + self.config.election_timeout * 2
    }

    /// The leader this member follows (or itself), as etcd's `Leader()` reports it: none
    /// once the leader has been silent for an election timeout, though openraft keeps
    /// naming it until another is elected (etcd's pre-candidate has no leader either).
    pub fn current_leader(&self) -> Option<MemberId> {
        let leader = self.raft.metrics().borrow().current_leader;
        leader.filter(|leader| *leader == self.id || !self.election_hold.leader_silent())
    }

    pub fn is_learner(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Learner
    }

    /// The response header etcd puts on every reply.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    pub(crate) fn leader_url(&self, leader: MemberId) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .and_then(|node| node.peer_urls.first().cloned())
    }

    /// Whether Raft traffic under `vote` comes from a member this cluster removed (it is
    /// refused, so the sender learns it was removed and stops).
    pub fn from_removed_member(&self, vote: &openraft::Vote<MemberId>) -> bool {
        self.is_removed(vote.leader_id().voted_for().unwrap_or(0))
    }

    /// Whether this cluster removed `member`.
    pub fn is_removed(&self, member: MemberId) -> bool {
        self.sm.read().removed.contains(&member)
    }

    /// The leader, when this member is a follower or learner that knows another member
    /// leads (as far as its Raft metrics tell).
    fn other_leader(&self) -> Option<MemberId> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        match (metrics.state, metrics.current_leader) {
            (ServerState::Follower | ServerState::Learner, Some(leader)) if leader != self.id => {
                Some(leader)
            }
            _ => None,
        }
    }

    /// Replicate a command through the leader and return the state machine's reply.
    /// Only requests that were certainly not proposed are retried.
    pub async fn write(&self, command: Command, require_leader: bool) -> Result<Reply, Error> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            // A follower that knows the leader forwards at once: proposing here first
            // would only cost a round trip through Raft to learn the same.
            let leader = match self.other_leader() {
                Some(leader) => Some(leader),
                None => {
                    let attempt =
                        tokio::time::timeout(remaining, self.proposer.propose(command.clone()))
                            .await;
                    match attempt {
                        Err(_) => return Err(Error::Timeout),
                        Ok(Proposed::Applied(reply)) => return Ok(reply),
                        Ok(Proposed::Failed(err)) => return Err(err),
                        Ok(Proposed::NotLeader(leader)) => leader,
                    }
                }
            };
            match leader.and_then(|id| self.leader_url(id)) {
                Some(url) => {
                    match self
                        .channels
                        .forward(&url, &Forwarded::Write(command.clone()), remaining)
                        .await?
                    {
                        ForwardOutcome::Write(reply) => return Ok(reply),
                        ForwardOutcome::Failed(err) => return Err(err),
                        ForwardOutcome::NotLeader
                        | ForwardOutcome::Admin(_)
                        | ForwardOutcome::LeaseKeepAlive(_)
                        | ForwardOutcome::LeaseTimeToLive(_)
                        | ForwardOutcome::PreVote { .. } => {}
                    }
                }
                None if require_leader => return Err(Error::NoLeader),
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Handle a request forwarded by a follower (we are, or were, the leader).
    pub async fn handle_forward(&self, request: Forwarded) -> ForwardOutcome {
        match request {
            Forwarded::Write(command) => {
                // A peer's write is checked as a client's is before it is proposed.
                let limits = crate::checks::ProposeLimits {
                    max_txn_ops: self.config.max_txn_ops,
                    max_request_bytes: self.config.max_request_bytes,
                };
                if let Err(err) = crate::checks::check_forwarded(&command, limits) {
                    return ForwardOutcome::Failed(err);
                }
                match self.proposer.propose(command).await {
                    Proposed::Applied(reply) => ForwardOutcome::Write(reply),
                    Proposed::NotLeader(_) => ForwardOutcome::NotLeader,
                    Proposed::Failed(err) => ForwardOutcome::Failed(err),
                }
            }
            Forwarded::Admin(admin) => {
                if self.raft.metrics().borrow().state != ServerState::Leader {
                    return ForwardOutcome::NotLeader;
                }
                match self.admin_on_leader(admin).await {
                    Ok(reply) => ForwardOutcome::Admin(reply),
                    Err(err) => ForwardOutcome::Failed(err),
                }
            }
            lease @ (Forwarded::LeaseKeepAlive(_) | Forwarded::LeaseTimeToLive { .. }) => {
                crate::lease::handle_forward(self, lease).await
            }
            Forwarded::Transfer(step) => crate::transfer::handle_step(self, step).await,
            Forwarded::PreVote(request) => ForwardOutcome::PreVote {
                granted: crate::campaign::would_vote(self, &request).await,
            },
        }
    }

    /// Wait until this member's state machine reflects every write committed before the
    /// call (read index through the leader, shared with concurrent readers), so a local
    /// read is linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), Error> {
        #[cfg(feature = "chaos-bugs")]
        if crate::chaos_bugs::enabled(crate::chaos_bugs::Bug::ReadLocal) {
            return Ok(());
        }
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            let read_index = match tokio::time::timeout(remaining, self.reads.read_index()).await {
                Err(_) => return Err(Error::Timeout),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(ReadIndex::At(index))) => Some(index),
                Ok(Ok(ReadIndex::Retry)) => None,
            };
            if let Some(index) = read_index {
                let remaining = deadline.saturating_duration_since(Instant::now());
                return match self
                    .raft
                    .wait(Some(remaining))
                    .applied_index_at_least(index, "linearizable read")
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(_) => Err(Error::Timeout),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One read index for this member's reads (see [`crate::read_index`]).
    pub(crate) async fn read_index_once(&self) -> Result<ReadIndex, Error> {
        let timeout = self.request_timeout();
        match tokio::time::timeout(timeout, self.raft.get_read_log_id()).await {
            Err(_) => Err(Error::Timeout),
            Ok(Ok((read_log_id, _))) => Ok(ReadIndex::At(
                self.read_floor(read_log_id.map(|id| id.index)),
            )),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                match forward.leader_id.and_then(|id| self.leader_url(id)) {
                    Some(url) => Ok(match self.channels.read_index(&url, timeout).await {
                        Ok(index) => ReadIndex::At(index),
                        Err(_) => ReadIndex::Retry,
                    }),
                    None => Ok(ReadIndex::Retry),
                }
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Ok(ReadIndex::Retry)
            }
            Ok(Err(RaftError::Fatal(_))) => Err(Error::Stopped),
        }
    }

    /// One read index for followers' reads, only while this member leads.
    pub(crate) async fn leader_read_index_once(&self) -> Result<ReadIndex, Error> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(ReadIndex::At(
                self.read_floor(read_log_id.map(|id| id.index)),
            )),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(Error::LeaderChanged)
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => Err(Error::Timeout),
            Err(RaftError::Fatal(_)) => Err(Error::Stopped),
        }
    }

    /// A leader's read index, raised to the end of the log it restarted with while it still
    /// leads the term it was restored in (openraft's read index is then its first log of
    /// that term or the committed index saved before the crash, which may be older than
    /// writes it acknowledged).
    fn read_floor(&self, read_index: Option<u64>) -> Option<u64> {
        match self.restored_leader {
            Some(restored) if self.raft.metrics().borrow().current_term == restored.term => {
                Some(read_index.unwrap_or(0).max(restored.last_log_index))
            }
            _ => read_index,
        }
    }

    /// The leader's half of a follower's read index request (batched like local reads).
    pub async fn handle_read_index(&self) -> Result<Option<u64>, Error> {
        match self.leader_reads.read_index().await? {
            ReadIndex::At(index) => Ok(index),
            ReadIndex::Retry => Err(Error::Timeout),
        }
    }

    /// Cluster info for a joining member.
    pub fn cluster_info(&self) -> ClusterInfo {
        let metrics = self.raft.metrics().borrow().clone();
        ClusterInfo {
            cluster_id: self.cluster_id,
            members: metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect(),
        }
    }

    /// Run a membership change on the leader (forwarding it there if needed).
    pub async fn admin(&self, request: AdminRequest) -> Result<AdminReply, Error> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            let (state, leader) = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                (metrics.state, metrics.current_leader)
            };
            if state == ServerState::Leader {
                return self.admin_on_leader(request).await;
            }
            if let Some(url) = leader.and_then(|id| self.leader_url(id)) {
                match self
                    .channels
                    .forward(&url, &Forwarded::Admin(request.clone()), remaining)
                    .await?
                {
                    ForwardOutcome::Admin(reply) => return Ok(reply),
                    ForwardOutcome::Failed(err) => return Err(err),
                    ForwardOutcome::NotLeader
                    | ForwardOutcome::Write(_)
                    | ForwardOutcome::LeaseKeepAlive(_)
                    | ForwardOutcome::LeaseTimeToLive(_)
                    | ForwardOutcome::PreVote { .. } => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn admin_on_leader(&self, request: AdminRequest) -> Result<AdminReply, Error> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<MemberId> = membership.voter_ids().collect();
        let learners: BTreeSet<MemberId> = membership.learner_ids().collect();
        let timeout = self.request_timeout();
        let change = |changes: ChangeMembers<MemberId, Member>| async move {
            match tokio::time::timeout(timeout, self.raft.change_membership(changes, false)).await {
                Err(_) => Err(Error::Timeout),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                    Err(Error::LeaderChanged)
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    Err(Error::Internal(e.to_string()))
                }
                Ok(Err(RaftError::Fatal(_))) => Err(Error::Stopped),
            }
        };
        match request {
            AdminRequest::AddMember { peer_urls, learner } => {
                for url in &peer_urls {
                    crate::config::socket_addr(url).map_err(|e| Error::BadPeerUrl(e.0))?;
                }
                if membership
                    .nodes()
                    .any(|(_, node)| node.peer_urls.iter().any(|u| peer_urls.contains(u)))
                {
                    return Err(Error::PeerUrlExists);
                }
                if learner && learners.len() >= MAX_LEARNERS {
                    return Err(Error::TooManyLearners);
                }
                let removed = self.sm.read().removed.clone();
                let mut salt: u64 = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or_default();
                let id = loop {
                    let mut urls = peer_urls.clone();
                    urls.sort();
                    let joined = urls.join(",");
                    let candidate = hash_id(&[
                        joined.as_bytes(),
                        self.config.initial_cluster_token.as_bytes(),
                        &salt.to_be_bytes(),
                    ]);
                    if !removed.contains(&candidate) && membership.get_node(&candidate).is_none() {
                        break candidate;
                    }
                    salt = salt.wrapping_add(1);
                };
                let node = Member {
                    name: String::new(),
                    peer_urls,
                };
                match tokio::time::timeout(timeout, self.raft.add_learner(id, node, false)).await {
                    Err(_) => return Err(Error::Timeout),
                    Ok(Err(e)) => return Err(Error::Internal(e.to_string())),
                    Ok(Ok(_)) => {}
                }
                if !learner {
                    change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
                }
                Ok(AdminReply::Added { id })
            }
            AdminRequest::RemoveMember { id } => {
                if self.sm.read().removed.contains(&id) {
                    // etcd's v3rpc maps membership.ErrIDRemoved to "member not found".
                    return Err(Error::MemberNotFound);
                }
                if voters.contains(&id) {
                    change(ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
                } else if learners.contains(&id) {
                    change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
                } else {
                    return Err(Error::MemberNotFound);
                }
                Ok(AdminReply::Done)
            }
            AdminRequest::PromoteMember { id } => {
                if voters.contains(&id) {
                    return Err(Error::MemberNotLearner);
                }
                if !learners.contains(&id) {
                    return Err(Error::MemberNotFound);
                }
                // etcd: a learner is ready once it has 90% of the leader's log.
                let last = metrics.last_log_index.unwrap_or(0);
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|log_id| log_id.index)
                    .unwrap_or(0);
                if (matched as f64) < (last as f64) * 0.9 {
                    return Err(Error::LearnerNotReady);
                }
                change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
                Ok(AdminReply::Done)
            }
            AdminRequest::UpdateMember { id, peer_urls } => {
                for url in &peer_urls {
                    crate::config::socket_addr(url).map_err(|e| Error::BadPeerUrl(e.0))?;
                }
                let Some(existing) = membership.get_node(&id).cloned() else {
                    return Err(Error::MemberNotFound);
                };
                if membership.nodes().any(|(other, node)| {
                    *other != id && node.peer_urls.iter().any(|u| peer_urls.contains(u))
                }) {
                    return Err(Error::PeerUrlExists);
                }
                let node = Member {
                    name: existing.name,
                    peer_urls,
                };
                change(ChangeMembers::SetNodes(BTreeMap::from([(id, node)]))).await?;
                Ok(AdminReply::Done)
            }
        }
    }

    /// Members as the Cluster API shows them: the applied configuration plus the names
    /// and client URLs members published when they started.
    pub fn members(&self) -> Vec<MemberView> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<MemberId> = membership.voter_ids().collect();
        let state = self.sm.read();
        membership
            .nodes()
            .map(|(id, node)| {
                let attrs = state.attrs.get(id);
                MemberView {
                    id: *id,
                    name: attrs
                        .map(|a| a.name.clone())
                        .unwrap_or_else(|| node.name.clone()),
                    peer_urls: node.peer_urls.clone(),
                    client_urls: attrs.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }
}
