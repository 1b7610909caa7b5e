//! etcd's Maintenance service: Status, Alarm, Hash, HashKV, Defragment, Snapshot and
//! MoveLeader, plus what backs them in the state machine — the replicated alarm list and
//! the backend quota (`--quota-backend-bytes`) that raises the NOSPACE alarm.
//!
//! Like etcd:
//! - a Put or a Txn with writes that would take the data file past the quota proposes an
//!   `ACTIVATE NOSPACE` alarm for this member through Raft and fails with "etcdserver:
//!   mvcc: database space exceeded" (`ResourceExhausted`);
//! - while any NOSPACE alarm is active, the state machine refuses every command that grows
//!   the store ([`needs_space`]); deletes, compactions and reads still work, and `etcdctl
//!   alarm disarm` (DEACTIVATE through Raft) lifts it;
//! - HashKV hashes the MVCC records up to a revision: every member that applied the same
//!   log and compacted at the same revision returns the same hash;
//! - Defragment is per member (not replicated), compacts the redb file and returns freed
//!   memory to the OS ([`crate::memory`]);
//! - Snapshot streams this member's state machine (see [`crate::snapshot`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use skiff_proto::etcdserverpb::{
    self as pb, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, PutRequest, RequestOp,
    TxnRequest, alarm_request::AlarmAction, maintenance_server::Maintenance, request_op,
};
use tonic::{Request, Response, Status};

use crate::engine::{EngineError, ReadView, Table, WriteBatch};
use crate::error::Error;
use crate::grpc::{ETCD_CLUSTER_VERSION, ETCD_VERSION, EtcdApi};
use crate::mvcc::{Revision, record_key};
use crate::node::StoreNode;
use crate::raft_log::{decode, encode};
use crate::types::{Command, MemberId, Reply};

/// `Meta` key of the replicated alarm list.
pub const KEY_ALARMS: &[u8] = b"sm/alarms";

/// etcd's estimate of the bytes a key's metadata costs (`kvOverhead`).
pub const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of the bytes a lease costs (`leaseOverhead`): the cost of a LeaseGrant.
pub const LEASE_OVERHEAD: u64 = 64;

// ---------------------------------------------------------------------------
// Alarms (state machine side)

/// The active alarms: (member, alarm type) pairs, like etcd's `AlarmStore`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    active: BTreeSet<(MemberId, i32)>,
}

impl Alarms {
    /// Load the persisted list (empty when none was ever raised).
    pub fn load(view: &dyn ReadView) -> Result<Alarms, EngineError> {
        let active: Vec<(MemberId, i32)> = match view.get(Table::Meta, KEY_ALARMS)? {
            Some(raw) => decode(&raw)?,
            None => Vec::new(),
        };
        Ok(Alarms {
            active: active.into_iter().collect(),
        })
    }

    /// Whether a NOSPACE alarm is active on any member.
    pub fn nospace(&self) -> bool {
        self.active
            .iter()
            .any(|(_, alarm)| *alarm == AlarmType::Nospace as i32)
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// The active alarms of type `alarm` (`NONE`: all of them), as etcd lists them.
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.active
            .iter()
            .filter(|(_, a)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|(member_id, alarm)| AlarmMember {
                member_id: *member_id,
                alarm: *alarm,
            })
            .collect()
    }

    /// etcd's `AlarmMember.String()`, as `endpoint status` shows it in `errors`.
    pub fn describe(&self) -> Vec<String> {
        self.active
            .iter()
            .map(|(member_id, alarm)| {
                let name = AlarmType::try_from(*alarm)
                    .map(|a| a.as_str_name().to_string())
                    .unwrap_or_else(|_| alarm.to_string());
                format!("memberID:{member_id} alarm:{name} ")
            })
            .collect()
    }

    /// Apply an ACTIVATE or DEACTIVATE (etcd's `applierV3backend.Alarm`); the response
    /// lists the alarm that was raised (or already active) or lowered.
    pub fn apply(&mut self, req: &AlarmRequest, batch: &mut WriteBatch) -> AlarmResponse {
        let entry = (req.member_id, req.alarm);
        let mut alarms = Vec::new();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate) if req.alarm != AlarmType::None as i32 => {
                if self.active.insert(entry) {
                    tracing::warn!(member_id = %format!("{:x}", req.member_id), alarm = req.alarm, "alarm raised");
                    self.persist(batch);
                }
                alarms.push(AlarmMember {
                    member_id: req.member_id,
                    alarm: req.alarm,
                });
            }
            Ok(AlarmAction::Deactivate) => {
                let lowered = self.active.remove(&entry);
                if lowered {
                    tracing::warn!(member_id = %format!("{:x}", req.member_id), alarm = req.alarm, "alarm cleared");
                    self.persist(batch);
                    alarms.push(AlarmMember {
                        member_id: req.member_id,
                        alarm: req.alarm,
                    });
                }
            }
            Ok(AlarmAction::Get) => alarms = self.get(req.alarm),
            _ => {}
        }
        AlarmResponse {
            header: None,
            alarms,
        }
    }

    /// [`Alarms::apply`] on a protobuf-encoded request, for the state machine.
    pub fn apply_encoded(&mut self, raw: &[u8], batch: &mut WriteBatch) -> Result<Vec<u8>, Error> {
        let req =
            AlarmRequest::decode(raw).map_err(|e| Error::Internal(format!("decode alarm: {e}")))?;
        Ok(self.apply(&req, batch).encode_to_vec())
    }

    fn persist(&self, batch: &mut WriteBatch) {
        let list: Vec<(MemberId, i32)> = self.active.iter().copied().collect();
        batch.put(Table::Meta, KEY_ALARMS, encode(&list));
    }
}

/// Commands the state machine refuses while a NOSPACE alarm is active (etcd's
/// `applierV3Capped`): those that grow the store.
pub fn needs_space(command: &Command) -> bool {
    matches!(
        command,
        Command::Put(_) | Command::Txn(_) | Command::LeaseGrant(_)
    )
}

// ---------------------------------------------------------------------------
// Quota (request side)

/// etcd's `costPut`.
pub fn put_cost(req: &PutRequest) -> u64 {
    KV_OVERHEAD + req.key.len() as u64 + req.value.len() as u64
}

/// etcd's `costTxn`: the larger branch's puts (nested txns are not counted, as in etcd).
pub fn txn_cost(req: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(put)) => put_cost(put),
                _ => 0,
            })
            .sum()
    };
    branch(&req.success).max(branch(&req.failure))
}

/// etcd's `quotaAlarmer.check`: if a request costing `cost` bytes would take the data file
/// past the quota, raise NOSPACE for this member through Raft and refuse the request.
pub async fn check_quota(node: &StoreNode, cost: u64) -> Result<(), Error> {
    let Some(quota) = node.config.quota_bytes() else {
        return Ok(());
    };
    if node.sm.engine().size_bytes().saturating_add(cost) < quota {
        return Ok(());
    }
    let raised = node
        .sm
        .read()
        .alarms
        .get(AlarmType::Nospace as i32)
        .iter()
        .any(|a| a.member_id == node.id);
    if !raised {
        let req = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: node.id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(err) = node.write(Command::Alarm(req.encode_to_vec()), false).await {
            tracing::warn!("raising the NOSPACE alarm failed: {err}");
        }
    }
    Err(Error::NoSpace)
}

// ---------------------------------------------------------------------------
// Hashes

/// A 32-bit hash of a sequence of (key, value) records: the first four bytes of a SHA-256
/// over every record's length-prefixed key and value, in order.
pub struct RecordHasher(Sha256);

impl Default for RecordHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordHasher {
    pub fn new() -> Self {
        RecordHasher(Sha256::new())
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.0.update((key.len() as u64).to_be_bytes());
        self.0.update(key);
        self.0.update((value.len() as u64).to_be_bytes());
        self.0.update(value);
    }

    pub fn finish(self) -> u32 {
        let digest = self.0.finalize();
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    }
}

/// The revision a `Kv` record key (`record_key(revision, sub)`) belongs to.
pub fn record_revision(key: &[u8]) -> Option<Revision> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes) as Revision)
}

/// HashKV's hash: every MVCC record with revision ≤ `revision`, from a consistent view.
pub fn kv_hash(view: &dyn ReadView, revision: Revision) -> Result<u32, EngineError> {
    let mut hasher = RecordHasher::new();
    let end = record_key(revision.saturating_add(1).max(0), 0);
    view.scan(Table::Kv, &[], Some(&end), &mut |key, value| {
        hasher.add(key, value);
        true
    })?;
    Ok(hasher.finish())
}

/// `Meta` keys that describe this cluster (its members, its Raft position, its alarms)
/// rather than the key-value state: left out of the whole-state hash and of a restored
/// member (see [`crate::snapshot`]).
pub fn is_cluster_meta(key: &[u8]) -> bool {
    use crate::state_machine::{KEY_APPLIED, KEY_ATTRS, KEY_MEMBERSHIP, KEY_REMOVED};
    [
        KEY_APPLIED,
        KEY_MEMBERSHIP,
        KEY_ATTRS,
        KEY_REMOVED,
        KEY_ALARMS,
    ]
    .contains(&key)
}

/// Hash's hash: the whole key-value state (every MVCC record plus the store metadata that
/// is not about the cluster's members or Raft position).
pub fn state_hash(view: &dyn ReadView) -> Result<u32, EngineError> {
    let mut hasher = RecordHasher::new();
    view.scan(Table::Kv, &[], None, &mut |key, value| {
        hasher.add(key, value);
        true
    })?;
    view.scan(Table::Meta, &[], None, &mut |key, value| {
        if !is_cluster_meta(key) {
            hasher.add(key, value);
        }
        true
    })?;
    Ok(hasher.finish())
}

/// What HashKV answers: the hash, the revision it covers, the store's current revision
/// and compact revision (etcd's `compactMainRev`: -1 until the first compaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub hash_revision: Revision,
    pub current_revision: Revision,
    pub compact_revision: Revision,
}

/// HashKV at `revision` (0 = current), with etcd's `HashByRev` checks.
pub fn hash_kv(
    sm: &crate::state_machine::StateMachineStore,
    revision: Revision,
) -> Result<KvHash, Error> {
    // The view and the revisions are taken under the state lock, so they agree.
    let (view, current, compacted) = {
        let state = sm.read();
        let view = sm.engine().read()?;
        (
            view,
            state.mvcc.current_revision(),
            state.mvcc.compact_main_revision(),
        )
    };
    if revision > 0 && revision <= compacted {
        return Err(Error::Compacted);
    }
    if revision > 0 && revision > current {
        return Err(Error::FutureRev);
    }
    let hash_revision = if revision == 0 { current } else { revision };
    Ok(KvHash {
        hash: kv_hash(view.as_ref(), hash_revision)?,
        hash_revision,
        current_revision: current,
        compact_revision: compacted,
    })
}

// ---------------------------------------------------------------------------
// The gRPC service

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("maintenance task: {e}")))?
}

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for EtcdApi {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        self.check_leader(&request)?;
        let req = request.into_inner();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                let reply = self
                    .node
                    .write(Command::Alarm(req.encode_to_vec()), false)
                    .await?;
                match reply {
                    Reply::Response(bytes) => {
                        let mut response = AlarmResponse::decode(bytes.as_slice())
                            .map_err(|e| Status::internal(format!("decode reply: {e}")))?;
                        response.header = Some(self.current_header());
                        Ok(Response::new(response))
                    }
                    Reply::Failed(err) => Err(err.into()),
                    Reply::Done => Err(Status::internal("unexpected reply kind")),
                }
            }
            // etcd answers GET through Raft: a linearizable read of the alarm list.
            _ => {
                self.node.linearizable_barrier().await?;
                let alarms = self.node.sm.read().alarms.get(req.alarm);
                Ok(Response::new(AlarmResponse {
                    header: Some(self.current_header()),
                    alarms,
                }))
            }
        }
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.check_leader(&request)?;
        let metrics = self.node.raft.metrics().borrow().clone();
        let engine = self.node.sm.engine();
        let db_size = engine.size_bytes().max(1) as i64;
        let mut errors = Vec::new();
        if metrics.current_leader.is_none() {
            errors.push(Error::NoLeader.to_string());
        }
        errors.extend(self.node.sm.read().alarms.describe());
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.current_header()),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
            errors,
            db_size_in_use: (engine.size_in_use_bytes() as i64).clamp(1, db_size),
            is_learner: metrics.state == openraft::ServerState::Learner,
            storage_version: ETCD_CLUSTER_VERSION.to_string(),
            db_size_quota: self.node.config.quota_bytes().unwrap_or(0) as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.check_leader(&request)?;
        let engine = Arc::clone(self.node.sm.engine());
        let before = engine.size_bytes();
        let started = std::time::Instant::now();
        blocking(move || {
            engine.defragment().map_err(Error::from)?;
            // What the old file's pages and caches held goes back to the OS.
            crate::memory::release_freed_memory();
            Ok(())
        })
        .await?;
        tracing::info!(
            size_before = before,
            size_after = self.node.sm.engine().size_bytes(),
            took = ?started.elapsed(),
            "defragmented"
        );
        // etcd answers an empty DefragmentResponse: no header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.check_leader(&request)?;
        let sm = self.node.sm.clone();
        let (hash, revision) = blocking(move || {
            let (view, revision) = {
                let state = sm.read();
                (sm.engine().read()?, state.mvcc.current_revision())
            };
            Ok((state_hash(view.as_ref())?, revision))
        })
        .await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.node.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.check_leader(&request)?;
        let revision = request.into_inner().revision;
        let sm = self.node.sm.clone();
        let result = blocking(move || hash_kv(&sm, revision)).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.node.header(result.current_revision)),
            hash: result.hash,
            compact_revision: result.compact_revision,
            hash_revision: result.hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_leader(&request)?;
        let stream = crate::snapshot::stream(self.node.clone())?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.check_leader(&request)?;
        let target = request.into_inner().target_id;
        let metrics = self.node.raft.metrics().borrow().clone();
        // etcd's checks, in etcd's order: only the leader moves leadership, and only to a
        // voting member.
        if metrics.current_leader != Some(self.node.id) {
            return Err(Error::NotLeader.into());
        }
        let membership = metrics.membership_config.membership();
        if !membership.voter_ids().any(|id| id == target) {
            return Err(Error::BadLeaderTransferee.into());
        }
        // etcd answers an empty MoveLeaderResponse (no header), also for a move to itself.
        if target != self.node.id {
            crate::transfer::move_leader(&self.node, target).await?;
        }
        Ok(Response::new(pb::MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented("skiff: downgrade is not supported"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Durability, Engine, MemEngine};
    use crate::mvcc::Mvcc;

    fn activate(member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    fn deactivate(member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            ..activate(member_id, alarm)
        }
    }

    #[test]
    fn alarms_activate_deactivate_and_persist() {
        let engine = MemEngine::new();
        let mut alarms = Alarms::default();
        let mut batch = WriteBatch::new();
        let resp = alarms.apply(&activate(7, AlarmType::Nospace), &mut batch);
        assert_eq!(resp.alarms.len(), 1);
        assert!(alarms.nospace());
        // Activating again answers the existing alarm and changes nothing.
        let again = alarms.apply(&activate(7, AlarmType::Nospace), &mut batch);
        assert_eq!(again.alarms, resp.alarms);
        // NONE is not an alarm one can raise.
        assert!(
            alarms
                .apply(&activate(8, AlarmType::None), &mut batch)
                .alarms
                .is_empty()
        );
        alarms.apply(&activate(9, AlarmType::Corrupt), &mut batch);
        engine.write(batch, Durability::Durable).unwrap();

        let loaded = Alarms::load(engine.read().unwrap().as_ref()).unwrap();
        assert_eq!(loaded, alarms);
        assert_eq!(loaded.get(AlarmType::None as i32).len(), 2);
        assert_eq!(loaded.get(AlarmType::Nospace as i32).len(), 1);
        assert_eq!(
            loaded.describe(),
            vec![
                "memberID:7 alarm:NOSPACE ".to_string(),
                "memberID:9 alarm:CORRUPT ".to_string()
            ]
        );

        let mut batch = WriteBatch::new();
        // Deactivating an alarm that is not raised answers nothing.
        assert!(
            alarms
                .apply(&deactivate(9, AlarmType::Nospace), &mut batch)
                .alarms
                .is_empty()
        );
        assert_eq!(
            alarms
                .apply(&deactivate(7, AlarmType::Nospace), &mut batch)
                .alarms
                .len(),
            1
        );
        assert!(!alarms.nospace());
        engine.write(batch, Durability::Durable).unwrap();
        let loaded = Alarms::load(engine.read().unwrap().as_ref()).unwrap();
        assert_eq!(loaded.get(AlarmType::None as i32).len(), 1);
    }

    #[test]
    fn costs_follow_etcd() {
        let put = PutRequest {
            key: b"key".to_vec(),
            value: vec![0; 100],
            ..Default::default()
        };
        assert_eq!(put_cost(&put), 256 + 3 + 100);
        let op = RequestOp {
            request: Some(request_op::Request::RequestPut(put.clone())),
        };
        let txn = TxnRequest {
            compare: vec![],
            success: vec![op.clone()],
            failure: vec![op.clone(), op],
        };
        assert_eq!(txn_cost(&txn), 2 * put_cost(&put));
        assert!(needs_space(&Command::Put(vec![])));
        assert!(needs_space(&Command::Txn(vec![])));
        assert!(needs_space(&Command::LeaseGrant(vec![])));
        assert!(!needs_space(&Command::LeaseRevoke(vec![])));
        assert!(!needs_space(&Command::DeleteRange(vec![])));
        assert!(!needs_space(&Command::Compact(vec![])));
    }

    /// Apply puts through `Mvcc` and persist them, like the state machine does.
    fn put_all(engine: &MemEngine, mvcc: &mut Mvcc, keys: &[(&str, &str)]) {
        for (key, value) in keys {
            let mut batch = WriteBatch::new();
            let req = PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            };
            mvcc.put(&req, &mut batch).unwrap();
            engine.write(batch, Durability::Buffered).unwrap();
        }
    }

    #[test]
    fn kv_hash_covers_exactly_the_records_up_to_the_revision() {
        let a = MemEngine::new();
        let b = MemEngine::new();
        let (mut ma, mut mb) = (Mvcc::default(), Mvcc::default());
        put_all(&a, &mut ma, &[("x", "1"), ("y", "2")]);
        put_all(&b, &mut mb, &[("x", "1"), ("y", "2")]);
        let hash = |e: &MemEngine, rev| kv_hash(e.read().unwrap().as_ref(), rev).unwrap();
        assert_eq!(hash(&a, 3), hash(&b, 3));
        // b moves on: its hash at revision 3 stays, the current one differs.
        put_all(&b, &mut mb, &[("x", "3")]);
        assert_eq!(hash(&a, 3), hash(&b, 3));
        assert_ne!(hash(&b, 4), hash(&b, 3));
        assert_ne!(hash(&a, 2), hash(&a, 3));
        // A different value at the same revision changes the hash.
        let c = MemEngine::new();
        let mut mc = Mvcc::default();
        put_all(&c, &mut mc, &[("x", "1"), ("y", "other")]);
        assert_ne!(hash(&a, 3), hash(&c, 3));
        // The whole-state hash ignores cluster metadata.
        let before = state_hash(a.read().unwrap().as_ref()).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Meta,
            b"sm/last_applied".to_vec(),
            b"anything".to_vec(),
        );
        a.write(batch, Durability::Buffered).unwrap();
        assert_eq!(state_hash(a.read().unwrap().as_ref()).unwrap(), before);
        assert_eq!(record_revision(&record_key(42, 3)), Some(42));
    }
}
