//! openraft's state machine (storage-v2 `RaftStateMachine`): applies committed commands to
//! the MVCC store and persists them in the engine.
//!
//! Invariants:
//! - one `apply` call writes the MVCC records of all its entries, `last_applied` and the
//!   membership in ONE engine batch, so after a crash the engine holds a prefix of the log;
//! - that batch is `Buffered`: the log entries are already fsynced on a quorum, so a lost
//!   apply is re-applied from the log on restart. Every durable log write (append, vote,
//!   purge) makes earlier buffered writes durable, and logs are purged only after a
//!   snapshot at an index the state machine has applied, so a purged entry is never needed;
//! - readers (gRPC handlers) see the in-memory [`SmState`] through a `RwLock`, updated only
//!   after the batch is written.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta};
use prost::Message;
use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, ResponseHeader, TxnRequest,
};

use crate::engine::{Durability, Engine, EngineError, ReadView, Table, WriteBatch};
use crate::error::Error;
use crate::mvcc::Mvcc;
use crate::raft_log::{decode, encode, io_error};
use crate::types::{
    Applied, Command, LogId, Member, MemberAttrs, MemberId, Proposal, Reply, StorageError,
    StoredMembership, TypeConfig,
};

pub(crate) const KEY_APPLIED: &[u8] = b"sm/last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"sm/membership";
pub(crate) const KEY_ATTRS: &[u8] = b"sm/member_attrs";
pub(crate) const KEY_REMOVED: &[u8] = b"sm/removed_members";

/// Everything the state machine holds, as readers see it.
#[derive(Debug, Default)]
pub struct SmState {
    pub mvcc: Mvcc,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// Names and client URLs published by started members.
    pub attrs: BTreeMap<MemberId, MemberAttrs>,
    /// Every member ever removed: IDs are never reused.
    pub removed: BTreeSet<MemberId>,
    /// Active alarms (NOSPACE, ...), replicated like etcd's alarm store.
    pub alarms: crate::maintenance::Alarms,
    /// Users, roles, permissions and the auth switch (replicated, see [`crate::auth`]).
    pub auth: crate::auth::AuthData,
    /// This member's simple tokens (in memory; assigned as `Authenticate`s apply).
    pub tokens: Arc<crate::auth::Tokens>,
}

impl SmState {
    fn load(view: &dyn ReadView) -> Result<SmState, EngineError> {
        let get = |key: &[u8]| view.get(Table::Meta, key);
        Ok(SmState {
            mvcc: Mvcc::load(view)?,
            last_applied: get(KEY_APPLIED)?
                .map(|raw| decode::<Option<LogId>>(&raw))
                .transpose()?
                .flatten(),
            membership: get(KEY_MEMBERSHIP)?
                .map(|raw| decode(&raw))
                .transpose()?
                .unwrap_or_default(),
            attrs: get(KEY_ATTRS)?
                .map(|raw| decode(&raw))
                .transpose()?
                .unwrap_or_default(),
            removed: get(KEY_REMOVED)?
                .map(|raw| decode(&raw))
                .transpose()?
                .unwrap_or_default(),
            alarms: crate::maintenance::Alarms::load(view)?,
            auth: get(crate::auth::KEY_AUTH)?
                .map(|raw| decode(&raw))
                .transpose()?
                .unwrap_or_default(),
            tokens: Arc::default(),
        })
    }
}

/// The serialised form of a snapshot: the whole `Kv` and `Meta` tables.
#[derive(Serialize, Deserialize)]
struct SnapshotBlob {
    kv: Vec<(Vec<u8>, Vec<u8>)>,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<MemberId, Member>,
    data: Vec<u8>,
}

/// Shared handle on the state machine: openraft drives it, gRPC handlers read from it.
#[derive(Clone)]
pub struct StateMachineStore {
    engine: Arc<dyn Engine>,
    state: Arc<RwLock<SmState>>,
    snapshot: Arc<std::sync::Mutex<Option<StoredSnapshot>>>,
    snapshot_seq: Arc<std::sync::atomic::AtomicU64>,
    /// The current store revision, published after every apply (watchers wait on it).
    revision: Arc<tokio::sync::watch::Sender<crate::mvcc::Revision>>,
    /// How far this member's log is durable: nothing is applied beyond it.
    log_sync: Option<Arc<crate::log_sync::LogSync>>,
}

impl StateMachineStore {
    /// Open the state machine persisted in `engine`.
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self, Error> {
        let view = engine.read()?;
        let state = SmState::load(view.as_ref())?;
        #[cfg(feature = "chaos-bugs")]
        let state = crate::chaos_bugs::after_load(state);
        drop(view);
        let (revision, _) = tokio::sync::watch::channel(state.mvcc.current_revision());
        Ok(StateMachineStore {
            engine,
            state: Arc::new(RwLock::new(state)),
            snapshot: Arc::new(std::sync::Mutex::new(None)),
            snapshot_seq: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            revision: Arc::new(revision),
            log_sync: None,
        })
    }

    /// Apply entries only once this member's log is durable up to them (see
    /// [`crate::log_sync`]); without it, applies assume a log synced before every append.
    pub fn with_log_sync(mut self, log_sync: Arc<crate::log_sync::LogSync>) -> Self {
        self.log_sync = Some(log_sync);
        self
    }

    /// Simple tokens live `ttl` without use (`--auth-token-ttl`).
    pub fn with_token_ttl(self, ttl: std::time::Duration) -> Self {
        self.state.write().unwrap_or_else(|p| p.into_inner()).tokens =
            Arc::new(crate::auth::Tokens::new(ttl));
        self
    }

    /// Read access for request handlers.
    pub fn read(&self) -> RwLockReadGuard<'_, SmState> {
        // A poisoned lock means a writer panicked mid-update; the data it guards is still
        // the last consistent state because the engine batch is written first.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Follow the store revision: changes after every apply that may have written.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<crate::mvcc::Revision> {
        self.revision.subscribe()
    }

    fn publish_revision(&self) {
        let current = self.read().mvcc.current_revision();
        self.revision.send_replace(current);
    }

    /// Apply one log entry's commands in order.
    fn apply_proposal(state: &mut SmState, proposal: &Proposal, batch: &mut WriteBatch) -> Applied {
        match proposal {
            Proposal::One(command) => Applied::One(Self::apply_command(state, command, batch)),
            Proposal::Batch(commands) => Applied::Batch(
                commands
                    .iter()
                    .map(|command| Self::apply_command(state, command, batch))
                    .collect(),
            ),
        }
    }

    /// Apply one command; a command that fails its checks fails alone. A client write
    /// applies only if its permission check still holds (see [`crate::auth`]).
    fn apply_command(state: &mut SmState, command: &Command, batch: &mut WriteBatch) -> Reply {
        match command {
            Command::Guarded {
                auth_revision,
                command,
            } => {
                let inner = match postcard::from_bytes::<Command>(command) {
                    Ok(
                        inner @ (Command::Put(_)
                        | Command::DeleteRange(_)
                        | Command::Txn(_)
                        | Command::LeaseRevoke(_)),
                    ) => inner,
                    Ok(_) => {
                        return Reply::Failed(Error::Internal(
                            "a guarded command must be a client request".into(),
                        ));
                    }
                    Err(e) => {
                        return Reply::Failed(Error::Internal(format!(
                            "decode guarded command: {e}"
                        )));
                    }
                };
                if state.auth.enabled && *auth_revision < state.auth.revision {
                    return Reply::Failed(Error::AuthOldRevision);
                }
                Self::apply_checked(state, &inner, batch)
            }
            // Checked while auth was off, applied after it was turned on: no user.
            Command::Put(_) | Command::DeleteRange(_) | Command::Txn(_) if state.auth.enabled => {
                Reply::Failed(Error::UserEmpty)
            }
            Command::Auth(op) => {
                let index = state.last_applied.map_or(0, |id| id.index);
                match state.auth.apply(op, index) {
                    Ok(effect) => {
                        let reply = match &effect {
                            crate::auth::TokenEffect::Assign { token, .. } => {
                                token.clone().into_bytes()
                            }
                            _ => {
                                batch.put(Table::Meta, crate::auth::KEY_AUTH, encode(&state.auth));
                                Vec::new()
                            }
                        };
                        state.tokens.take_effect(effect);
                        Reply::Response(reply)
                    }
                    Err(err) => Reply::Failed(err),
                }
            }
            command => Self::apply_checked(state, command, batch),
        }
    }

    /// Apply a command that passed the auth checks (or needs none).
    fn apply_checked(state: &mut SmState, command: &Command, batch: &mut WriteBatch) -> Reply {
        // etcd's capped applier: while a NOSPACE alarm is active, writes that grow the
        // store are refused (deletes and compactions still apply).
        if state.alarms.nospace() && crate::maintenance::needs_space(command) {
            return Reply::Failed(Error::NoSpace);
        }
        let result: Result<Vec<u8>, Error> = match command {
            Command::Put(raw) => PutRequest::decode(raw.as_slice())
                .map_err(|e| Error::Internal(format!("decode put: {e}")))
                .and_then(|req| crate::checks::check_put(&req).map(|()| req))
                .and_then(|req| state.mvcc.put(&req, batch))
                .map(|applied| applied.response.encode_to_vec()),
            Command::DeleteRange(raw) => DeleteRangeRequest::decode(raw.as_slice())
                .map_err(|e| Error::Internal(format!("decode delete: {e}")))
                .and_then(|req| crate::checks::check_delete(&req).map(|()| req))
                .and_then(|req| state.mvcc.delete_range(&req, batch))
                .map(|applied| applied.response.encode_to_vec()),
            Command::Txn(raw) => skiff_proto::depth::decode_bounded::<TxnRequest>(raw)
                .map_err(|e| Error::Internal(format!("decode txn: {e}")))
                // Structural checks only: the op limit is a flag, checked before proposing.
                .and_then(|req| crate::checks::check_txn_request(&req, usize::MAX).map(|()| req))
                .and_then(|req| state.mvcc.txn(&req, batch))
                .map(|applied| applied.response.encode_to_vec()),
            Command::Compact(raw) => CompactionRequest::decode(raw.as_slice())
                .map_err(|e| Error::Internal(format!("decode compact: {e}")))
                .and_then(|req| state.mvcc.compact(req.revision, batch))
                .map(|()| {
                    CompactionResponse {
                        header: Some(ResponseHeader {
                            revision: state.mvcc.current_revision(),
                            ..Default::default()
                        }),
                    }
                    .encode_to_vec()
                }),
            Command::PublishMember { id, attrs } => {
                state.attrs.insert(*id, attrs.clone());
                batch.put(Table::Meta, KEY_ATTRS, encode(&state.attrs));
                return Reply::Done;
            }
            Command::Alarm(raw) => state.alarms.apply_encoded(raw, batch),
            Command::LeaseGrant(raw) => LeaseGrantRequest::decode(raw.as_slice())
                .map_err(|e| Error::Internal(format!("decode lease grant: {e}")))
                .and_then(|req| state.mvcc.lease_grant(&req, batch))
                .map(|response| response.encode_to_vec()),
            Command::LeaseRevoke(raw) => LeaseRevokeRequest::decode(raw.as_slice())
                .map_err(|e| Error::Internal(format!("decode lease revoke: {e}")))
                .and_then(|req| state.mvcc.lease_revoke(&req, batch))
                .map(|applied| applied.response.encode_to_vec()),
            Command::Auth(_) | Command::Guarded { .. } => Err(Error::Internal(
                "auth commands are applied by apply_command".into(),
            )),
        };
        match result {
            Ok(bytes) => Reply::Response(bytes),
            Err(err) => Reply::Failed(err),
        }
    }

    /// chaos-bugs `apply-before-commit`: apply entries as soon as they are appended.
    #[cfg(feature = "chaos-bugs")]
    pub(crate) fn chaos_apply_early(&self, entries: &[crate::types::Entry]) {
        crate::chaos_bugs::apply_early(&self.state, &self.engine, entries, Self::apply_proposal);
        self.publish_revision();
    }

    fn build(&self) -> Result<StoredSnapshot, StorageError> {
        let sm_err = |e: &EngineError| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e);
        // The engine view and the in-memory state are taken under the same lock so the
        // snapshot's metadata matches its data exactly.
        let (view, last_applied, membership) = {
            let state = self.read();
            let view = self.engine.read().map_err(|e| sm_err(&e))?;
            (view, state.last_applied, state.membership.clone())
        };
        let mut blob = SnapshotBlob {
            kv: Vec::new(),
            meta: Vec::new(),
        };
        view.scan(Table::Kv, &[], None, &mut |k, v| {
            blob.kv.push((k.to_vec(), v.to_vec()));
            true
        })
        .map_err(|e| sm_err(&e))?;
        view.scan(Table::Meta, &[], None, &mut |k, v| {
            blob.meta.push((k.to_vec(), v.to_vec()));
            true
        })
        .map_err(|e| sm_err(&e))?;
        let data = encode(&blob);
        let seq = self
            .snapshot_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, seq),
            None => format!("0-0-{seq}"),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            data,
        };
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored.clone());
        Ok(stored)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let stored = tokio::task::spawn_blocking(move || this.build())
            .await
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))??;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = crate::types::Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<crate::types::Entry> = entries.into_iter().collect();
        if let (Some(sync), Some(last)) = (&self.log_sync, entries.last()) {
            // A leader's own entries may still be on their way to its disk.
            sync.wait_synced(last.log_id.index)
                .await
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        }
        let mut replies = Vec::new();
        let mut batch = WriteBatch::new();
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            #[cfg(feature = "chaos-bugs")]
            crate::chaos_bugs::failpoint("sm-apply");
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                #[cfg(feature = "chaos-bugs")]
                if let Some(reply) = crate::chaos_bugs::take_early_reply(&entry.log_id) {
                    replies.push(reply);
                    continue;
                }
                let reply = match &entry.payload {
                    EntryPayload::Blank => Applied::One(Reply::Done),
                    EntryPayload::Normal(proposal) => {
                        Self::apply_proposal(&mut state, proposal, &mut batch)
                    }
                    EntryPayload::Membership(membership) => {
                        let before: BTreeSet<MemberId> =
                            state.membership.nodes().map(|(id, _)| *id).collect();
                        let after: BTreeSet<MemberId> =
                            membership.nodes().map(|(id, _)| *id).collect();
                        let removed: Vec<MemberId> = before.difference(&after).copied().collect();
                        if !removed.is_empty() {
                            for id in removed {
                                state.removed.insert(id);
                                state.attrs.remove(&id);
                            }
                            batch.put(Table::Meta, KEY_REMOVED, encode(&state.removed));
                            batch.put(Table::Meta, KEY_ATTRS, encode(&state.attrs));
                        }
                        state.membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        batch.put(Table::Meta, KEY_MEMBERSHIP, encode(&state.membership));
                        Applied::One(Reply::Done)
                    }
                };
                replies.push(reply);
            }
            batch.put(Table::Meta, KEY_APPLIED, encode(&state.last_applied));
            // Written while holding the lock so readers never see state the engine lacks
            // for longer than this write takes, and two applies never interleave.
            self.engine
                .write(batch, Durability::Buffered)
                .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, &e))?;
        }
        self.publish_revision();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<MemberId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let snap_err = |e: &EngineError| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        let data = snapshot.into_inner();
        let blob: SnapshotBlob = decode(&data).map_err(|e| snap_err(&e))?;
        #[cfg(feature = "chaos-bugs")]
        crate::chaos_bugs::failpoint("sm-install-snapshot");
        #[cfg(feature = "chaos-bugs")]
        let blob = SnapshotBlob {
            kv: crate::chaos_bugs::snapshot_kv(blob.kv),
            meta: blob.meta,
        };
        let mut batch = WriteBatch::new();
        batch.clear(Table::Kv);
        batch.clear(Table::Meta);
        for (k, v) in blob.kv {
            batch.put(Table::Kv, k, v);
        }
        for (k, v) in blob.meta {
            batch.put(Table::Meta, k, v);
        }
        // The snapshot's own metadata wins over whatever the blob carried.
        batch.put(Table::Meta, KEY_APPLIED, encode(&meta.last_log_id));
        batch.put(Table::Meta, KEY_MEMBERSHIP, encode(&meta.last_membership));
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        self.engine
            .write(batch, Durability::Durable)
            .map_err(|e| snap_err(&e))?;
        let view = self.engine.read().map_err(|e| snap_err(&e))?;
        let tokens = state.tokens.clone();
        *state = SmState::load(view.as_ref()).map_err(|e| snap_err(&e))?;
        // Tokens are this member's (etcd keeps them across a snapshot install too).
        state.tokens = tokens;
        drop(state);
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        self.publish_revision();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let existing = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stored = match existing {
            Some(stored) => stored,
            // None kept (e.g. after a restart): a snapshot of the current state is valid.
            None => {
                if self.read().last_applied.is_none() {
                    return Ok(None);
                }
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.build())
                    .await
                    .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))??
            }
        };
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
