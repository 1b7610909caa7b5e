//! Member-to-member transport: openraft RPCs, write forwarding, read-index requests and
//! membership discovery, carried as postcard blobs over the `skiffpeer.Peer` gRPC service.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skiff_proto::skiffpeer::Blob;
use skiff_proto::skiffpeer::peer_client::PeerClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::Error;
use crate::peer_stream::{Answer, RawStream, StreamError};
use crate::types::{Command, Member, MemberId, Reply, TypeConfig};

/// Largest message a peer accepts (log batches and snapshot chunks are bounded below it).
pub const PEER_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// A request a follower hands to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Forwarded {
    Write(Command),
    Admin(AdminRequest),
    /// A lease keep-alive, for the primary lessor (see [`crate::lease`]).
    LeaseKeepAlive(crate::mvcc::LeaseId),
    /// A lease TimeToLive, for the primary lessor.
    LeaseTimeToLive {
        id: crate::mvcc::LeaseId,
        keys: bool,
    },
    /// A step of a leadership transfer (see [`crate::transfer`]).
    Transfer(crate::transfer::TransferStep),
    /// Would you vote for this candidate now? (see [`crate::campaign`]).
    PreVote(crate::campaign::PreVoteRequest),
}

/// Membership changes; they run on the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    AddMember {
        peer_urls: Vec<String>,
        learner: bool,
    },
    RemoveMember {
        id: MemberId,
    },
    PromoteMember {
        id: MemberId,
    },
    UpdateMember {
        id: MemberId,
        peer_urls: Vec<String>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminReply {
    Added { id: MemberId },
    Done,
}

/// The leader's answer to a forwarded request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardOutcome {
    Write(Reply),
    Admin(AdminReply),
    /// The receiver is not the leader: the request was NOT proposed, so it may be retried.
    NotLeader,
    Failed(Error),
    /// The lease's granted TTL after a keep-alive; `None`: no such lease.
    LeaseKeepAlive(Option<i64>),
    /// `None`: no such lease.
    LeaseTimeToLive(Option<crate::lease::LeaseTtl>),
    /// The answer to a [`Forwarded::PreVote`].
    PreVote {
        granted: bool,
    },
}

/// What a joining member learns from an existing one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    pub members: BTreeMap<MemberId, Member>,
}

pub(crate) fn to_blob<T: Serialize>(value: &T) -> Result<Blob, tonic::Status> {
    postcard::to_stdvec(value)
        .map(|data| Blob { data })
        .map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

pub(crate) fn from_blob<T: DeserializeOwned>(blob: &Blob) -> Result<T, tonic::Status> {
    postcard::from_bytes(&blob.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("decode: {e}")))
}

/// The status a member answers Raft traffic from a member it has removed.
pub fn removed_status() -> tonic::Status {
    tonic::Status::failed_precondition(Error::MemberRemoved.to_string())
}

impl PeerChannels {
    /// Resolves once a peer has told this member it was removed from the cluster.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    /// Record that this member is no longer part of the cluster.
    pub fn mark_removed(&self) {
        self.removed.send_replace(true);
    }

    fn note_status(&self, status: &tonic::Status) {
        if status.code() == tonic::Code::FailedPrecondition
            && status.message() == Error::MemberRemoved.to_string()
        {
            self.removed.send_replace(true);
        }
    }
}

/// Whether a failed call certainly never reached the peer (the connection could not be
/// established), as opposed to failing after it may have been delivered.
fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let message = status.message().to_ascii_lowercase();
    message.contains("error trying to connect") || message.contains("tcp connect error")
}

/// Cached channels to peers, by URL (channels reconnect by themselves).
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
    /// Used for https peer URLs (`--peer-trusted-ca-file`, `--peer-cert-file`, ...).
    tls: Option<ClientTlsConfig>,
    /// Set when a peer tells us we were removed from the cluster.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
}

impl PeerChannels {
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        PeerChannels {
            channels: Arc::default(),
            tls,
            removed: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    pub fn client(&self, url: &str) -> Result<PeerClient<Channel>, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(url) {
            Some(channel) => channel.clone(),
            None => {
                let mut endpoint = Endpoint::from_shared(url.to_string())
                    .map_err(|e| Error::BadPeerUrl(format!("{url}: {e}")))?;
                if url.starts_with("https://") {
                    let tls = self.tls.clone().unwrap_or_default();
                    endpoint = endpoint
                        .tls_config(tls)
                        .map_err(|e| Error::BadPeerUrl(format!("{url}: {e}")))?;
                }
                let channel = endpoint
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy();
                channels.insert(url.to_string(), channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES))
    }

    /// Send a write or admin request to the member at `url` (the leader).
    pub async fn forward(
        &self,
        url: &str,
        request: &Forwarded,
        timeout: Duration,
    ) -> Result<ForwardOutcome, Error> {
        let mut client = self.client(url)?;
        let blob = to_blob(request).map_err(|e| Error::Internal(e.message().to_string()))?;
        let mut req = tonic::Request::new(blob);
        req.set_timeout(timeout);
        match client.forward(req).await {
            Ok(resp) => {
                from_blob(resp.get_ref()).map_err(|e| Error::Internal(e.message().to_string()))
            }
            // No connection could be made: the request was never sent, so the caller may
            // retry once a (new) leader is known.
            Err(status) if never_sent(&status) => Ok(ForwardOutcome::NotLeader),
            // The leader may or may not have applied it: the outcome is unknown.
            Err(status) => {
                self.note_status(&status);
                Err(Error::Timeout)
            }
        }
    }

    /// Ask the leader for a read index.
    pub async fn read_index(&self, url: &str, timeout: Duration) -> Result<Option<u64>, Error> {
        let mut client = self.client(url)?;
        let mut req = tonic::Request::new(Blob { data: Vec::new() });
        req.set_timeout(timeout);
        match client.read_index(req).await {
            Ok(resp) => {
                let outcome: Result<Option<u64>, Error> = from_blob(resp.get_ref())
                    .map_err(|e| Error::Internal(e.message().to_string()))?;
                outcome
            }
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Ask a member for the cluster's membership (used by joining members).
    pub async fn cluster_info(&self, url: &str, timeout: Duration) -> Result<ClusterInfo, Error> {
        let mut client = self.client(url)?;
        let mut req = tonic::Request::new(Blob { data: Vec::new() });
        req.set_timeout(timeout);
        match client.members(req).await {
            Ok(resp) => {
                from_blob(resp.get_ref()).map_err(|e| Error::Internal(e.message().to_string()))
            }
            Err(status) => Err(Error::Internal(format!("{url}: {}", status.message()))),
        }
    }
}

/// openraft's network factory: one connection object per target member.
#[derive(Clone)]
pub struct Network {
    pub channels: PeerChannels,
    /// This member's durable log position: the commit index sent never passes it.
    pub log_sync: Option<Arc<crate::log_sync::LogSync>>,
}

pub struct PeerConnection {
    target: MemberId,
    url: Option<String>,
    channels: PeerChannels,
    /// The open append stream to this member, if any (reopened after any failure).
    stream: Option<AppendStream>,
    /// The open raw append stream (`http://` peers, see [`crate::peer_stream`]).
    raw: Option<RawStream>,
    /// The peer closed a fresh raw stream without answering (a member of an older build):
    /// use the gRPC append stream with it from now on.
    raw_refused: bool,
    log_sync: Option<Arc<crate::log_sync::LogSync>>,
    /// Round trips and bytes with this member (`etcd_network_peer_*`).
    metrics: Arc<crate::metrics::PeerMetrics>,
}

/// Requests waiting to go out on one append stream (openraft sends one at a time per
/// member, so this only absorbs a request abandoned by a timeout).
pub const APPEND_STREAM_QUEUE: usize = 2;

/// A long-lived `AppendStream` call: AppendEntries (and heartbeats) to one member as
/// one message each way on an HTTP/2 stream that stays open, instead of a new stream,
/// headers and trailers per request.
struct AppendStream {
    requests: tokio::sync::mpsc::Sender<Blob>,
    responses: tonic::Streaming<Blob>,
    next_seq: u64,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: MemberId, node: &Member) -> Self::Network {
        PeerConnection {
            target,
            url: node.peer_urls.first().cloned(),
            channels: self.channels.clone(),
            stream: None,
            raw: None,
            raw_refused: false,
            log_sync: self.log_sync.clone(),
            metrics: crate::metrics::peer(target),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerConnection {
    /// A failed call's status as openraft's error: unreachable when no connection could
    /// be made, otherwise a network error (after noting a "you were removed" refusal).
    fn status_error<E: std::error::Error>(
        &self,
        status: tonic::Status,
    ) -> RPCError<MemberId, Member, RaftError<MemberId, E>> {
        if status.code() == tonic::Code::Unavailable {
            return RPCError::Unreachable(Unreachable::new(&TransportError(
                status.message().to_string(),
            )));
        }
        self.channels.note_status(&status);
        RPCError::Network(NetworkError::new(&TransportError(
            status.message().to_string(),
        )))
    }

    /// A client for this member (unreachable: it has no peer URL, or the URL is bad).
    fn peer_client<E: std::error::Error>(
        &self,
    ) -> Result<PeerClient<Channel>, RPCError<MemberId, Member, RaftError<MemberId, E>>> {
        let unreachable =
            |msg: String| RPCError::Unreachable(Unreachable::new(&TransportError(msg)));
        #[cfg(feature = "chaos-bugs")]
        if crate::chaos_bugs::failpoint("peer-send") {
            return Err(unreachable("failpoint peer-send".into()));
        }
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| unreachable(format!("member {:x} has no peer URL", self.target)))?;
        self.channels
            .client(url)
            .map_err(|e| unreachable(e.to_string()))
    }

    /// AppendEntries over this member's append stream, opening it first if needed.
    async fn append_streamed(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>>
    {
        let unreachable =
            |msg: String| RPCError::Unreachable(Unreachable::new(&TransportError(msg)));
        let network = |msg: String| RPCError::Network(NetworkError::new(&TransportError(msg)));
        let deadline = tokio::time::Instant::now() + option.hard_ttl();
        if self.stream.is_none() {
            let mut client = self.peer_client()?;
            let (requests, queue) = tokio::sync::mpsc::channel(APPEND_STREAM_QUEUE);
            let opened = tokio::time::timeout_at(
                deadline,
                client.append_stream(tokio_stream::wrappers::ReceiverStream::new(queue)),
            )
            .await;
            match opened {
                Err(_) => return Err(network("timed out opening the append stream".into())),
                Ok(Err(status)) => return Err(self.status_error(status)),
                Ok(Ok(response)) => {
                    self.stream = Some(AppendStream {
                        requests,
                        responses: response.into_inner(),
                        next_seq: 0,
                    });
                }
            }
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(unreachable("append stream not open".into()));
        };
        stream.next_seq += 1;
        let seq = stream.next_seq;
        let blob = to_blob(&(seq, rpc)).map_err(|e| network(e.message().into()))?;
        let sent = blob.data.len() as u64;
        if stream.requests.send(blob).await.is_err() {
            self.stream = None;
            return Err(unreachable("append stream closed".into()));
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Err(unreachable("append stream not open".into()));
            };
            let failure = match tokio::time::timeout_at(deadline, stream.responses.message()).await
            {
                Ok(Ok(Some(blob))) => {
                    self.metrics.sent_bytes.fetch_add(sent, Relaxed);
                    let received = blob.data.len() as u64;
                    self.metrics.received_bytes.fetch_add(received, Relaxed);
                    let (answered, result): (
                        u64,
                        Result<AppendEntriesResponse<MemberId>, RaftError<MemberId>>,
                    ) = from_blob(&blob).map_err(|e| network(e.message().into()))?;
                    if answered < seq {
                        // The answer to a request whose caller gave up waiting.
                        continue;
                    }
                    return result
                        .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)));
                }
                Ok(Ok(None)) => unreachable("append stream ended".into()),
                Ok(Err(status)) => self.status_error(status),
                Err(_) => network("append entries timed out".into()),
            };
            self.stream = None;
            return Err(failure);
        }
    }

    /// AppendEntries over this member's raw append stream (`http://` peers), opening it
    /// first if needed; `Ok(None)`: use the gRPC append stream instead.
    async fn append_raw(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<
        Option<AppendEntriesResponse<MemberId>>,
        RPCError<MemberId, Member, RaftError<MemberId>>,
    > {
        let unreachable =
            |msg: String| RPCError::Unreachable(Unreachable::new(&TransportError(msg)));
        let network = |msg: String| RPCError::Network(NetworkError::new(&TransportError(msg)));
        if self.raw_refused {
            return Ok(None);
        }
        let Some(addr) = self.url.as_deref().and_then(crate::peer_stream::plain_addr) else {
            return Ok(None);
        };
        #[cfg(feature = "chaos-bugs")]
        if crate::chaos_bugs::failpoint("peer-send") {
            return Err(unreachable("failpoint peer-send".into()));
        }
        let deadline = tokio::time::Instant::now() + option.hard_ttl();
        if self.raw.as_ref().is_some_and(RawStream::abandoned) {
            // openraft's timeout dropped the last call after it was sent: its answer would
            // be read as this request's. Start over on a new connection.
            self.raw = None;
        }
        let fresh = self.raw.is_none();
        if fresh {
            let connect =
                tokio::time::timeout_at(deadline, RawStream::connect(addr, Duration::from_secs(1)));
            match connect.await {
                Err(_) => return Err(network("timed out opening the append stream".into())),
                Ok(Err(e)) => return Err(unreachable(e.to_string())),
                Ok(Ok(stream)) => self.raw = Some(stream),
            }
        }
        let Some(stream) = self.raw.as_mut() else {
            return Err(unreachable("append stream not open".into()));
        };
        let outcome = tokio::time::timeout_at(deadline, stream.call(rpc, &self.metrics)).await;
        let failure = match outcome {
            Ok(Ok(Some(Answer::Raft(result)))) => {
                return result
                    .map(Some)
                    .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)));
            }
            Ok(Ok(Some(Answer::Removed))) => {
                self.channels.mark_removed();
                network(Error::MemberRemoved.to_string())
            }
            Ok(Ok(Some(Answer::Invalid(msg)))) => network(format!("append stream: {msg}")),
            Ok(Ok(None)) if fresh => {
                tracing::info!(
                    target_member = %format!("{:x}", self.target),
                    "peer does not take raw append streams; using gRPC"
                );
                self.raw = None;
                self.raw_refused = true;
                return Ok(None);
            }
            Ok(Ok(None)) => unreachable("append stream ended".into()),
            Ok(Err(e @ StreamError::Io(_))) => unreachable(format!("append stream: {e}")),
            Ok(Err(e)) => network(format!("append stream: {e}")),
            Err(_) => network("append entries timed out".into()),
        };
        self.raw = None;
        Err(failure)
    }

    async fn call<Req, Resp, E>(
        &self,
        method: &'static str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<MemberId, Member, RaftError<MemberId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self.peer_client()?;
        let blob = to_blob(request).map_err(|e| {
            RPCError::Network(NetworkError::new(&TransportError(e.message().into())))
        })?;
        let sent = blob.data.len() as u64;
        let mut req = tonic::Request::new(blob);
        req.set_timeout(option.hard_ttl());
        let resp = match method {
            "vote" => client.vote(req).await,
            _ => client.install_snapshot(req).await,
        };
        let resp = resp.map_err(|status| self.status_error(status))?;
        self.metrics.sent_bytes.fetch_add(sent, Relaxed);
        let received = resp.get_ref().data.len() as u64;
        self.metrics.received_bytes.fetch_add(received, Relaxed);
        let decoded: Result<Resp, RaftError<MemberId, E>> =
            from_blob(resp.get_ref()).map_err(|e| {
                RPCError::Network(NetworkError::new(&TransportError(e.message().into())))
            })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>>
    {
        // Followers never learn of a commit beyond what this leader has on disk.
        if let Some(sync) = &self.log_sync {
            rpc.leader_commit = sync.clamp_commit(rpc.leader_commit);
        }
        // A heartbeat's round trip (no entries, so no disk write in it) is etcd's
        // etcd_network_peer_round_trip_time_seconds.
        let started = rpc.entries.is_empty().then(std::time::Instant::now);
        let response = match self.append_raw(&rpc, &option).await? {
            Some(response) => response,
            None => self.append_streamed(&rpc, &option).await?,
        };
        if let Some(started) = started {
            self.metrics.round_trip.observe(started.elapsed());
        }
        plausible_append_response(&rpc, response).map_err(|why| {
            tracing::warn!(target = %self.target, "{why}");
            RPCError::Network(NetworkError::new(&std::io::Error::other(why)))
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<MemberId>,
        RPCError<MemberId, Member, RaftError<MemberId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// A peer's answer to AppendEntries that openraft may act on: one it could not have sent
/// (a conflict before the first entry, a match outside what was sent, a "higher" vote that
/// is not higher) is refused as a network failure, so the leader retries instead of
/// asserting on it — no member panics on what a peer reports.
pub fn plausible_append_response(
    rpc: &AppendEntriesRequest<TypeConfig>,
    response: AppendEntriesResponse<MemberId>,
) -> Result<AppendEntriesResponse<MemberId>, String> {
    let last_sent = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
    match &response {
        AppendEntriesResponse::Conflict if rpc.prev_log_id.is_none() => {
            Err("peer reported a log conflict before its first entry".into())
        }
        AppendEntriesResponse::PartialSuccess(matching)
            if *matching < rpc.prev_log_id || *matching > last_sent =>
        {
            Err(format!(
                "peer reported a match ({matching:?}) outside the entries sent"
            ))
        }
        AppendEntriesResponse::HigherVote(vote) if *vote <= rpc.vote => {
            Err(format!("peer reported a vote ({vote}) that is not higher"))
        }
        _ => Ok(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_append_responses_are_refused() {
        use openraft::{CommittedLeaderId, Vote};
        let id = |i| openraft::LogId::new(CommittedLeaderId::new(2, 1), i);
        let from_start = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        assert!(plausible_append_response(&from_start, AppendEntriesResponse::Conflict).is_err());
        let later = AppendEntriesRequest::<TypeConfig> {
            prev_log_id: Some(id(5)),
            ..from_start.clone()
        };
        assert!(plausible_append_response(&later, AppendEntriesResponse::Conflict).is_ok());
        assert!(
            plausible_append_response(&later, AppendEntriesResponse::PartialSuccess(Some(id(9))))
                .is_err()
        );
        assert!(
            plausible_append_response(&later, AppendEntriesResponse::PartialSuccess(Some(id(5))))
                .is_ok()
        );
        assert!(
            plausible_append_response(
                &later,
                AppendEntriesResponse::HigherVote(Vote::new_committed(1, 3))
            )
            .is_err()
        );
        assert!(
            plausible_append_response(&later, AppendEntriesResponse::HigherVote(Vote::new(3, 3)))
                .is_ok()
        );
    }

    /// A follower on a raw append stream that answers a request with no `prev_log_id` with
    /// `Success` after `delay`, and any other at once with `Conflict`.
    async fn slow_raw_follower(delay: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut magic = [0u8; 8];
                    if conn.read_exact(&mut magic).await.is_err() {
                        return;
                    }
                    loop {
                        let mut len = [0u8; 4];
                        if conn.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
                        if conn.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let rpc: AppendEntriesRequest<TypeConfig> =
                            postcard::from_bytes(&body).unwrap();
                        let answer = if rpc.prev_log_id.is_none() {
                            tokio::time::sleep(delay).await;
                            AppendEntriesResponse::Success
                        } else {
                            AppendEntriesResponse::Conflict
                        };
                        let out =
                            postcard::to_stdvec(&crate::peer_stream::Answer::Raft(Ok(answer)))
                                .unwrap();
                        let mut frame = (out.len() as u32).to_le_bytes().to_vec();
                        frame.extend(out);
                        if conn.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn an_answer_to_an_abandoned_append_is_never_taken_for_the_next_ones() {
        use openraft::{CommittedLeaderId, Vote};
        let url = slow_raw_follower(Duration::from_millis(300)).await;
        let mut network = Network {
            channels: PeerChannels::new(None),
            log_sync: None,
        };
        let member = Member {
            name: "f".into(),
            peer_urls: vec![url],
        };
        let mut peer = network.new_client(2, &member).await;
        let first = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let option = RPCOption::new(Duration::from_secs(2));
        // As openraft's replication task does: its own timeout drops the call once sent.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(100),
            peer.append_entries(first, option.clone()),
        )
        .await;
        assert!(gave_up.is_err(), "the first call was to be abandoned");
        let second = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(openraft::LogId::new(CommittedLeaderId::new(2, 1), 7)),
            entries: vec![],
            leader_commit: None,
        };
        let answer = peer.append_entries(second, option).await;
        assert!(
            matches!(answer, Ok(AppendEntriesResponse::Conflict)),
            "the second request got {answer:?}, the abandoned first one's answer"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_as_never_sent() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let channels = PeerChannels::new(None);
        let outcome = channels
            .forward(
                &format!("http://127.0.0.1:{port}"),
                &Forwarded::Write(Command::Put(Vec::new())),
                Duration::from_secs(2),
            )
            .await;
        assert!(
            matches!(outcome, Ok(ForwardOutcome::NotLeader)),
            "{outcome:?}"
        );
    }
}
