//! Leases, as etcd's lessor has them.
//!
//! Two halves:
//! - [`Lessor`], the replicated half, lives in [`Mvcc`](crate::mvcc::Mvcc): every lease's
//!   granted TTL (persisted in the engine's `Meta` table under `lease/` + ID, big-endian, in
//!   the same batch as the apply that changed it) and, in memory only, the keys attached to
//!   it (rebuilt on load from the live keys' `lease` field). Grant and revoke are Raft
//!   commands (`Command::LeaseGrant`/`LeaseRevoke`); a put attaches its key, a delete or a
//!   put with another lease detaches it. Revoking deletes every attached key in one
//!   revision.
//! - [`Primary`], the leader's half, is not replicated: the expiry instant of every lease.
//!   Only the member that leads *and* has applied the first entry of its term (etcd's
//!   "primary lessor") keeps it; on promotion every lease expires `election timeout + TTL`
//!   from now, as in etcd without checkpoints, so a failover never expires leases en masse.
//!   Keep-alives refresh an expiry on the primary (followers forward them); a task proposes
//!   `LeaseRevoke` for expired leases, a bounded number at a time.
//!
//! The `Lease` gRPC service ([`LeaseApi`]) serves Grant, Revoke, KeepAlive, TimeToLive and
//! Leases with etcd's semantics, error strings and codes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::ServerState;
use prost::Message;
use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::config::StoreConfig;
use crate::engine::{EngineError, ReadView, Table, WriteBatch};
use crate::error::Error;
use crate::mvcc::LeaseId;
use crate::network::{ForwardOutcome, Forwarded};
use crate::node::StoreNode;
use crate::proposer::Proposed;
use crate::types::{Command, Reply};

/// etcd's `MaxLeaseTTL`: the largest TTL a lease may be granted with, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How often the primary looks for expired leases.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// etcd's `leaseRevokeRate`: expired leases revoked per second, at most.
pub const LEASE_REVOKE_RATE: usize = 1000;
/// Expired leases the primary hands to Raft per check (`LEASE_REVOKE_RATE` per second).
pub const REVOKES_PER_CHECK: usize =
    LEASE_REVOKE_RATE * EXPIRY_CHECK_INTERVAL.as_millis() as usize / 1000;
/// etcd's `maxPendingRevokes`: revocations in flight at once.
pub const MAX_PENDING_REVOKES: usize = 16;
/// etcd's `expiredLeaseRetryInterval`: an expired lease whose revocation has not been
/// applied by then is proposed again.
pub const EXPIRED_LEASE_RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// Responses queued per KeepAlive stream before the stream stops reading requests.
pub const KEEPALIVE_RESPONSE_QUEUE: usize = 16;
/// etcd's `maxNoLeaderCnt`: a `hasleader` stream is cancelled after this many election
/// timeouts without a leader.
const MAX_NO_LEADER_CHECKS: u32 = 3;
/// Pause between two attempts to reach the primary.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

const META_LEASE_PREFIX: &[u8] = b"lease/";
const LEASE_FORMAT: u8 = 1;

/// etcd's `minLeaseTTL`: `(3 * election ticks / 2) * heartbeat`, rounded up to seconds
/// (2 s with the default 100 ms heartbeat and 1000 ms election timeout).
pub fn min_lease_ttl(config: &StoreConfig) -> i64 {
    let heartbeat = config.heartbeat_interval.as_millis().max(1);
    let ticks = config.election_timeout.as_millis() / heartbeat;
    let min_ms = (3 * ticks / 2) * heartbeat;
    min_ms.div_ceil(1000) as i64
}

/// Identifies one grant in this process (never persisted): a lease revoked and granted
/// again under the same ID is a different grant, and so is every lease after a reload.
static GRANT_SEQ: AtomicU64 = AtomicU64::new(1);

fn next_seq() -> u64 {
    GRANT_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The engine key of a lease: `lease/` + ID big-endian (etcd's lease bucket key).
pub fn lease_meta_key(id: LeaseId) -> Vec<u8> {
    let mut key = META_LEASE_PREFIX.to_vec();
    key.extend((id as u64).to_be_bytes());
    key
}

/// One lease as the state machine knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
    seq: u64,
}

impl Lease {
    /// The TTL the lease was granted with (after raising it to the minimum).
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The live keys attached to the lease, sorted.
    pub fn keys(&self) -> &BTreeSet<Vec<u8>> {
        &self.keys
    }
}

/// What a lease looks like in the `Meta` table.
#[derive(Serialize, Deserialize)]
struct StoredLease {
    ttl: i64,
}

/// The replicated lease state: every granted lease and the keys attached to it.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: BTreeMap<LeaseId, Lease>,
    /// Changes whenever a lease is granted or revoked (for the primary's bookkeeping).
    epoch: u64,
}

impl Lessor {
    pub fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// Every lease, by ID.
    pub fn iter(&self) -> impl Iterator<Item = (LeaseId, &Lease)> {
        self.leases.iter().map(|(id, lease)| (*id, lease))
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    /// etcd's `lessor.Grant` (the TTL was raised to the minimum before proposing).
    pub(crate) fn grant(
        &mut self,
        id: LeaseId,
        ttl: i64,
        batch: &mut WriteBatch,
    ) -> Result<i64, Error> {
        if id == 0 {
            return Err(Error::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(Error::LeaseExists);
        }
        let seq = next_seq();
        self.epoch = seq;
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: BTreeSet::new(),
                seq,
            },
        );
        batch.put(Table::Meta, lease_meta_key(id), encode_lease(ttl));
        Ok(ttl)
    }

    /// Forget a lease (its keys were deleted by the caller in the same batch).
    pub(crate) fn remove(&mut self, id: LeaseId, batch: &mut WriteBatch) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.epoch = next_seq();
        batch.delete(Table::Meta, lease_meta_key(id));
        Some(lease)
    }

    pub(crate) fn attach(&mut self, id: LeaseId, key: &[u8]) {
        match self.leases.get_mut(&id) {
            Some(lease) => {
                lease.keys.insert(key.to_vec());
            }
            // Puts are checked against the lessor first; this cannot happen.
            None => tracing::error!(lease = %format!("{id:x}"), "key attached to a missing lease"),
        }
    }

    pub(crate) fn detach(&mut self, id: LeaseId, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// Read every lease from the `Meta` table (attached keys are added by the caller).
    pub(crate) fn load(view: &dyn ReadView) -> Result<Lessor, EngineError> {
        let mut lessor = Lessor::default();
        let mut end = META_LEASE_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut failure = None;
        view.scan(
            Table::Meta,
            META_LEASE_PREFIX,
            Some(&end),
            &mut |key, value| match decode_lease(key, value) {
                Ok((id, stored)) => {
                    lessor.leases.insert(
                        id,
                        Lease {
                            ttl: stored.ttl,
                            keys: BTreeSet::new(),
                            seq: next_seq(),
                        },
                    );
                    true
                }
                Err(err) => {
                    failure = Some(err);
                    false
                }
            },
        )?;
        if let Some(err) = failure {
            return Err(err);
        }
        lessor.epoch = next_seq();
        Ok(lessor)
    }
}

fn encode_lease(ttl: i64) -> Vec<u8> {
    let mut out = vec![LEASE_FORMAT];
    // A struct of one integer always serialises.
    out.extend(postcard::to_stdvec(&StoredLease { ttl }).unwrap_or_default());
    out
}

fn decode_lease(key: &[u8], value: &[u8]) -> Result<(LeaseId, StoredLease), EngineError> {
    let id_bytes: [u8; 8] = key
        .strip_prefix(META_LEASE_PREFIX)
        .and_then(|rest| rest.try_into().ok())
        .ok_or_else(|| EngineError::Corrupt("lease key is not lease/ + 8 bytes".into()))?;
    let id = u64::from_be_bytes(id_bytes) as LeaseId;
    match value.split_first() {
        Some((&LEASE_FORMAT, rest)) => postcard::from_bytes(rest)
            .map(|stored| (id, stored))
            .map_err(|e| EngineError::Corrupt(format!("lease {id:x}: {e}"))),
        _ => Err(EngineError::Corrupt(format!(
            "lease {id:x}: unknown format"
        ))),
    }
}

/// TimeToLive as the primary answers it (also carried from the leader to a follower).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTtl {
    /// Seconds left (truncated, as etcd's `int64(Remaining().Seconds())`).
    pub ttl: i64,
    pub granted_ttl: i64,
    /// Attached keys, sorted (only when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// The primary's answer to a keep-alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Refreshed: the lease now lives its granted TTL from now.
    Renewed(i64),
    NotFound,
    /// Expired and waiting for its revocation to apply (etcd makes the renewal wait).
    Expired,
    /// This member is not the primary lessor.
    NotPrimary,
}

/// The primary's bookkeeping for one lease.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    seq: u64,
    expiry: Instant,
    /// When the expiry queue looks at the lease next (the expiry, or a retry after a
    /// revocation was proposed).
    check_at: Instant,
}

#[derive(Debug, Default)]
struct PrimaryState {
    /// The term in which this member became the primary lessor; `None` otherwise.
    term: Option<u64>,
    tracked: HashMap<LeaseId, Tracked>,
    queue: BTreeSet<(Instant, LeaseId)>,
    /// The lessor epoch the tracked set was last reconciled with.
    epoch_seen: u64,
}

impl PrimaryState {
    fn set(&mut self, id: LeaseId, seq: u64, expiry: Instant) {
        if let Some(old) = self.tracked.insert(
            id,
            Tracked {
                seq,
                expiry,
                check_at: expiry,
            },
        ) {
            self.queue.remove(&(old.check_at, id));
        }
        self.queue.insert((expiry, id));
    }

    fn forget(&mut self, id: LeaseId) {
        if let Some(old) = self.tracked.remove(&id) {
            self.queue.remove(&(old.check_at, id));
        }
    }

    fn clear(&mut self) {
        self.tracked.clear();
        self.queue.clear();
    }

    /// etcd's `lessor.Promote(extend)`: every lease lives `extend + TTL` from now; with
    /// many leases, expiries are spread so that at most 3/4 of the revoke rate expire in
    /// any second.
    fn promote(&mut self, term: u64, lessor: &Lessor, extend: Duration, now: Instant) {
        self.clear();
        self.term = Some(term);
        self.epoch_seen = lessor.epoch();
        for (id, lease) in lessor.iter() {
            self.set(id, lease.seq, expiry_after(now, extend, lease.ttl));
        }
        if lessor.len() < LEASE_REVOKE_RATE {
            return;
        }
        let mut leases: Vec<(Instant, LeaseId, u64, i64)> = lessor
            .iter()
            .map(|(id, lease)| (self.tracked[&id].expiry, id, lease.seq, lease.ttl))
            .collect();
        leases.sort();
        let remaining = |expiry: Instant| expiry.saturating_duration_since(now).as_secs_f64();
        let mut base_window = remaining(leases[0].0);
        let mut next_window = base_window + 1.0;
        let mut expires = 0usize;
        let target_per_second = 3 * LEASE_REVOKE_RATE / 4;
        for (expiry, id, seq, ttl) in leases {
            let remaining = remaining(expiry);
            if remaining > next_window {
                base_window = remaining;
                next_window = base_window + 1.0;
                expires = 1;
                continue;
            }
            expires += 1;
            if expires <= target_per_second {
                continue;
            }
            // If leases are extended by n seconds, leases n seconds ahead of the base
            // window are extended by only one second.
            let delay = expires as f64 / target_per_second as f64 - (remaining - base_window);
            next_window = base_window + delay;
            let extended = expiry_after(now, extend, ttl);
            let expiry = if delay >= 0.0 {
                extended + Duration::from_secs_f64(delay)
            } else {
                extended
                    .checked_sub(Duration::from_secs_f64(-delay))
                    .unwrap_or(now)
            };
            self.set(id, seq, expiry);
        }
    }

    fn demote(&mut self) {
        self.clear();
        self.term = None;
    }

    /// Track leases granted (and forget leases revoked) since the last look.
    fn reconcile(&mut self, lessor: &Lessor, now: Instant) {
        if self.term.is_none() || self.epoch_seen == lessor.epoch() {
            return;
        }
        self.epoch_seen = lessor.epoch();
        let gone: Vec<LeaseId> = self
            .tracked
            .keys()
            .filter(|id| !lessor.contains(**id))
            .copied()
            .collect();
        for id in gone {
            self.forget(id);
        }
        for (id, lease) in lessor.iter() {
            self.track(id, lease, now);
        }
    }

    /// The tracked state of a lease, starting its clock (granted now) if it is new.
    fn track(&mut self, id: LeaseId, lease: &Lease, now: Instant) -> Tracked {
        match self.tracked.get(&id) {
            Some(tracked) if tracked.seq == lease.seq => *tracked,
            _ => {
                self.set(id, lease.seq, expiry_after(now, Duration::ZERO, lease.ttl));
                self.tracked[&id]
            }
        }
    }

    /// etcd's `lessor.Renew`.
    fn renew(&mut self, id: LeaseId, lessor: &Lessor, now: Instant) -> Renewal {
        if self.term.is_none() {
            return Renewal::NotPrimary;
        }
        let Some(lease) = lessor.get(id) else {
            self.forget(id);
            return Renewal::NotFound;
        };
        if self.track(id, lease, now).expiry <= now {
            return Renewal::Expired;
        }
        #[cfg(feature = "chaos-bugs")]
        if crate::chaos_bugs::enabled(crate::chaos_bugs::Bug::LeaseNoRecheck) {
            return Renewal::Renewed(lease.ttl);
        }
        self.set(id, lease.seq, expiry_after(now, Duration::ZERO, lease.ttl));
        Renewal::Renewed(lease.ttl)
    }

    /// etcd's TimeToLive on the primary; `Err(())` when not the primary.
    fn time_to_live(
        &mut self,
        id: LeaseId,
        lessor: &Lessor,
        keys: bool,
        now: Instant,
    ) -> Result<Option<LeaseTtl>, ()> {
        if self.term.is_none() {
            return Err(());
        }
        let Some(lease) = lessor.get(id) else {
            return Ok(None);
        };
        let expiry = self.track(id, lease, now).expiry;
        // Go's int64(d.Seconds()) truncates toward zero, also for a lease past its expiry.
        let ttl = if expiry >= now {
            (expiry - now).as_secs() as i64
        } else {
            -((now - expiry).as_secs() as i64)
        };
        Ok(Some(LeaseTtl {
            ttl,
            granted_ttl: lease.ttl,
            keys: if keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }))
    }

    /// The next expired lease to revoke, if any; it is looked at again after
    /// `EXPIRED_LEASE_RETRY_INTERVAL` in case the revocation does not apply.
    fn pop_expired(&mut self, now: Instant) -> Option<LeaseId> {
        loop {
            let &(check_at, id) = self.queue.first()?;
            if check_at > now {
                return None;
            }
            self.queue.remove(&(check_at, id));
            let Some(tracked) = self.tracked.get_mut(&id) else {
                continue;
            };
            if tracked.expiry > now {
                tracked.check_at = tracked.expiry;
                self.queue.insert((tracked.expiry, id));
                continue;
            }
            tracked.check_at = now + EXPIRED_LEASE_RETRY_INTERVAL;
            self.queue.insert((tracked.check_at, id));
            return Some(id);
        }
    }
}

fn expiry_after(now: Instant, extend: Duration, ttl: i64) -> Instant {
    // TTLs are at most MAX_LEASE_TTL seconds (~285 years): Instant arithmetic is safe,
    // but stay clear of panics on any platform.
    let ttl = Duration::from_secs(ttl.max(0) as u64);
    now.checked_add(extend + ttl)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// The leader's lease clocks (not replicated), shared by the expiry task and handlers.
///
/// Lock order: the state machine's lock first (to read the [`Lessor`]), then this one.
#[derive(Debug, Default)]
pub struct Primary {
    state: Mutex<PrimaryState>,
}

impl Primary {
    fn lock(&self) -> std::sync::MutexGuard<'_, PrimaryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this member is the primary lessor now.
    pub fn is_primary(&self) -> bool {
        self.lock().term.is_some()
    }
}

/// Follow leadership: become the primary lessor once this member leads and has applied
/// the first entry of its term (etcd promotes its lessor when it applies the leader's
/// empty entry), stop being it as soon as it does not lead.
fn observe_leadership(node: &StoreNode) {
    let (state, term, applied_term) = {
        let metrics = node.raft.metrics();
        let metrics = metrics.borrow();
        (
            metrics.state,
            metrics.current_term,
            metrics.last_applied.map(|id| id.leader_id.term),
        )
    };
    let wanted = (state == ServerState::Leader && applied_term == Some(term)).then_some(term);
    if node.leases.lock().term == wanted {
        return;
    }
    match wanted {
        Some(term) => {
            let sm = node.sm.read();
            let mut primary = node.leases.lock();
            primary.promote(
                term,
                sm.mvcc.lessor(),
                node.config.election_timeout,
                Instant::now(),
            );
            tracing::info!(
                term,
                leases = sm.mvcc.lessor().len(),
                "primary lessor: lease expiries start now"
            );
        }
        None => {
            node.leases.lock().demote();
            tracing::debug!("no longer the primary lessor");
        }
    }
}

/// Hand expired leases to Raft, at most `REVOKES_PER_CHECK` per call and
/// `MAX_PENDING_REVOKES` in flight.
///
/// The expiries are this member's own clock, valid only while it leads. A leader that was
/// paused (or cut off) wakes up with leases expired that the leader elected meanwhile has
/// kept alive, so, as etcd's `ensureLeadership`, a batch is revoked only after a quorum
/// confirms this member still leads, only while its lessor is still the primary of the
/// term the batch was taken in, and only by proposing here: a revocation is never
/// forwarded to another leader (whose clocks it would overrule).
fn revoke_expired(node: &Arc<StoreNode>, pending: &Arc<Semaphore>) {
    let term = {
        let sm = node.sm.read();
        let mut primary = node.leases.lock();
        primary.reconcile(sm.mvcc.lessor(), Instant::now());
        primary.term
    };
    let Some(term) = term else {
        return;
    };
    let now = Instant::now();
    let mut batch = Vec::new();
    while batch.len() < REVOKES_PER_CHECK {
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            break;
        };
        let Some(id) = node.leases.lock().pop_expired(now) else {
            break;
        };
        batch.push((id, permit));
    }
    if batch.is_empty() {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        // Expired leases stay queued (looked at again after EXPIRED_LEASE_RETRY_INTERVAL)
        // if this member turns out not to lead: the new primary decides then.
        if !confirm_leadership(&node).await {
            tracing::info!(
                leases = batch.len(),
                "not revoking expired leases: leadership not confirmed by a quorum"
            );
            return;
        }
        for (id, permit) in batch {
            if node.leases.lock().term != Some(term) {
                return;
            }
            let node = node.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let command = Command::LeaseRevoke(LeaseRevokeRequest { id }.encode_to_vec());
                let proposed =
                    tokio::time::timeout(node.request_timeout(), node.proposer.propose(command));
                match proposed.await {
                    Ok(Proposed::Applied(Reply::Failed(Error::LeaseNotFound))) => {}
                    Ok(Proposed::Applied(Reply::Failed(err))) | Ok(Proposed::Failed(err)) => {
                        tracing::warn!(lease = %format!("{id:x}"), "revoking an expired lease: {err}")
                    }
                    Ok(Proposed::Applied(_)) => {
                        tracing::debug!(lease = %format!("{id:x}"), "expired lease revoked")
                    }
                    Ok(Proposed::NotLeader(_)) => tracing::debug!(
                        lease = %format!("{id:x}"),
                        "not revoking an expired lease: no longer the leader"
                    ),
                    Err(_) => tracing::warn!(
                        lease = %format!("{id:x}"),
                        "revoking an expired lease: {}",
                        Error::Timeout
                    ),
                }
            });
        }
    });
}

/// Start the lessor task: it follows leadership and, on the primary, revokes expired
/// leases. It ends when `stop` turns true.
pub fn start(node: Arc<StoreNode>, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut metrics = node.raft.metrics();
        let mut tick = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pending = Arc::new(Semaphore::new(MAX_PENDING_REVOKES));
        loop {
            let check = tokio::select! {
                _ = tick.tick() => true,
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = async { let _ = stop.wait_for(|stop| *stop).await; } => return,
            };
            observe_leadership(&node);
            if check && node.leases.is_primary() {
                revoke_expired(&node, &pending);
            }
        }
    })
}

/// Whether a quorum still follows this member (etcd's `ensureLeadership`).
async fn confirm_leadership(node: &StoreNode) -> bool {
    let confirm = node.raft.get_read_log_id();
    matches!(
        tokio::time::timeout(node.config.election_timeout, confirm).await,
        Ok(Ok(_))
    )
}

/// Renew on this member if it is the primary, waiting (like etcd) while the lease is
/// expired but not yet revoked. `Ok(None)`: not the primary, or a primary that cannot
/// confirm its leadership with a quorum (etcd 3.5 `ensureLeadership`: a leader cut off
/// from the cluster must not keep leases alive that the real leader expires).
async fn renew_on_primary(
    node: &StoreNode,
    id: LeaseId,
    deadline: tokio::time::Instant,
) -> Result<Option<Option<i64>>, Error> {
    if !node.leases.is_primary() || !confirm_leadership(node).await {
        return Ok(None);
    }
    loop {
        let renewal = {
            let sm = node.sm.read();
            node.leases
                .lock()
                .renew(id, sm.mvcc.lessor(), Instant::now())
        };
        match renewal {
            Renewal::Renewed(ttl) => return Ok(Some(Some(ttl))),
            Renewal::NotFound => return Ok(Some(None)),
            Renewal::NotPrimary => return Ok(None),
            Renewal::Expired => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Timeout);
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Answer a keep-alive or TimeToLive if this member is the primary; `NotLeader` if not.
async fn answer_on_primary(
    node: &StoreNode,
    request: &Forwarded,
    deadline: tokio::time::Instant,
) -> ForwardOutcome {
    match request {
        Forwarded::LeaseKeepAlive(id) => match renew_on_primary(node, *id, deadline).await {
            Ok(Some(ttl)) => ForwardOutcome::LeaseKeepAlive(ttl),
            Ok(None) => ForwardOutcome::NotLeader,
            Err(err) => ForwardOutcome::Failed(err),
        },
        Forwarded::LeaseTimeToLive { id, keys } => {
            let answer = {
                let sm = node.sm.read();
                node.leases
                    .lock()
                    .time_to_live(*id, sm.mvcc.lessor(), *keys, Instant::now())
            };
            match answer {
                Ok(ttl) => ForwardOutcome::LeaseTimeToLive(ttl),
                Err(()) => ForwardOutcome::NotLeader,
            }
        }
        _ => ForwardOutcome::Failed(Error::Internal("not a lease request".into())),
    }
}

/// The leader's half of a forwarded keep-alive or TimeToLive (see
/// [`StoreNode::handle_forward`]). `NotLeader` when not the primary: the follower retries.
pub async fn handle_forward(node: &StoreNode, request: Forwarded) -> ForwardOutcome {
    let deadline = tokio::time::Instant::now() + node.request_timeout();
    answer_on_primary(node, &request, deadline).await
}

/// Ask the primary, wherever it is: answer here if this member is the primary, else
/// forward to the leader, retrying until the request deadline (keep-alives and TimeToLive
/// are idempotent). Never answers `NotLeader`.
async fn ask_primary(node: &StoreNode, request: Forwarded) -> Result<ForwardOutcome, Error> {
    let deadline = tokio::time::Instant::now() + node.request_timeout();
    loop {
        match answer_on_primary(node, &request, deadline).await {
            // The primary could not confirm its leadership: let the client try another
            // member (etcd answers a non-primary error there too).
            ForwardOutcome::NotLeader if node.leases.is_primary() => {
                return Err(Error::LeaderChanged);
            }
            ForwardOutcome::NotLeader => {}
            ForwardOutcome::Failed(err) => return Err(err),
            outcome => return Ok(outcome),
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(Error::Timeout);
        }
        // A leader that is not the primary yet (still applying its predecessor's entries)
        // answers as soon as it is: wait here rather than forward to ourselves.
        let leader = node.current_leader().filter(|leader| *leader != node.id);
        if let Some(url) = leader.and_then(|leader| node.leader_url(leader)) {
            match node.channels.forward(&url, &request, remaining).await {
                Ok(ForwardOutcome::NotLeader) | Err(_) => {}
                Ok(ForwardOutcome::Failed(err)) => return Err(err),
                Ok(outcome) => return Ok(outcome),
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// etcd's `LeaseRenew`: renew on the primary, wherever it is. `Ok(None)`: no such lease.
pub async fn renew(node: &StoreNode, id: LeaseId) -> Result<Option<i64>, Error> {
    match ask_primary(node, Forwarded::LeaseKeepAlive(id)).await? {
        ForwardOutcome::LeaseKeepAlive(ttl) => Ok(ttl),
        other => Err(Error::Internal(format!(
            "unexpected keep-alive answer {other:?}"
        ))),
    }
}

/// etcd's `LeaseTimeToLive`: asked of the primary, wherever it is. `Ok(None)`: no such
/// lease.
pub async fn time_to_live(
    node: &StoreNode,
    id: LeaseId,
    keys: bool,
) -> Result<Option<LeaseTtl>, Error> {
    match ask_primary(node, Forwarded::LeaseTimeToLive { id, keys }).await? {
        ForwardOutcome::LeaseTimeToLive(ttl) => Ok(ttl),
        other => Err(Error::Internal(format!(
            "unexpected TimeToLive answer {other:?}"
        ))),
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

/// The etcd `Lease` gRPC service.
#[derive(Clone)]
pub struct LeaseApi {
    pub node: Arc<StoreNode>,
    /// Turns true when the server stops: open KeepAlive streams end then.
    pub stop: watch::Receiver<bool>,
}

impl LeaseApi {
    /// `hasleader` metadata and learners, like the KV handlers; returns whether the
    /// request requires a leader.
    fn check<T>(&self, request: &Request<T>) -> Result<bool, Status> {
        let require_leader = crate::grpc::requires_leader(request);
        if require_leader && self.node.current_leader().is_none() {
            return Err(Error::NoLeader.into());
        }
        if self.node.is_learner() {
            return Err(Error::NotSupportedForLearner.into());
        }
        Ok(require_leader)
    }

    fn current_header(&self) -> skiff_proto::etcdserverpb::ResponseHeader {
        let revision = self.node.sm.read().mvcc.current_revision();
        self.node.header(revision)
    }

    /// Replicate a lease command; the reply's header gets this member's fields.
    async fn replicate<T: Message + Default + 'static>(
        &self,
        command: Command,
        require_leader: bool,
        header: impl Fn(&mut T) -> &mut Option<skiff_proto::etcdserverpb::ResponseHeader>,
    ) -> Result<T, Status> {
        let len = command.encoded_len();
        if len > self.node.config.max_request_bytes {
            return Err(Error::RequestTooLarge.into());
        }
        match self.node.write(command, require_leader).await? {
            Reply::Response(bytes) => {
                let mut response = skiff_proto::depth::decode_bounded::<T>(bytes.as_slice())
                    .map_err(|e| Status::internal(format!("decode reply: {e}")))?;
                let revision = header(&mut response)
                    .as_ref()
                    .map(|h| h.revision)
                    .unwrap_or_default();
                // Like a KV write: answer once this member has applied the revision, so a
                // serializable read here sees a revocation's deletes.
                let applied_here = |_: &_| self.node.sm.read().mvcc.current_revision() >= revision;
                let _ = self
                    .node
                    .raft
                    .wait(Some(self.node.request_timeout()))
                    .metrics(applied_here, "lease write applied locally")
                    .await;
                *header(&mut response) = Some(self.node.header(revision));
                Ok(response)
            }
            Reply::Failed(err) => Err(err.into()),
            Reply::Done => Err(Status::internal("unexpected reply kind")),
        }
    }
}

#[tonic::async_trait]
impl lease_server::Lease for LeaseApi {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let require_leader = self.check(&request)?;
        // etcd's quotaLeaseServer: a grant is refused while the backend quota is exceeded.
        crate::maintenance::check_quota(&self.node, crate::maintenance::LEASE_OVERHEAD).await?;
        let mut req = request.into_inner();
        // etcd: the member receiving the request picks a positive ID.
        while req.id == 0 {
            req.id = rand::random::<i64>() & i64::MAX;
        }
        req.ttl = req.ttl.max(min_lease_ttl(&self.node.config));
        let response = self
            .replicate(
                Command::LeaseGrant(req.encode_to_vec()),
                require_leader,
                |r: &mut LeaseGrantResponse| &mut r.header,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let require_leader = self.check(&request)?;
        let caller = crate::auth_grpc::caller(&request);
        let req = request.into_inner();
        let command = crate::auth_grpc::guard_lease_revoke(
            &self.node,
            caller.as_ref(),
            req.id,
            Command::LeaseRevoke(req.encode_to_vec()),
        )?;
        let response = self
            .replicate(command, require_leader, |r: &mut LeaseRevokeResponse| {
                &mut r.header
            })
            .await?;
        Ok(Response::new(response))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let require_leader = self.check(&request)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_RESPONSE_QUEUE);
        let api = self.clone();
        let mut stop = self.stop.clone();
        let stopped = tx.clone();
        tokio::spawn(async move {
            let _open = api.node.open_streams.keep_alive();
            tokio::select! {
                () = keep_alive_stream(api.clone(), inbound, tx, require_leader) => {}
                // The member stops: the stream ends wherever it waited (on the client, on
                // a renewal) with etcd's status for a stopped server; a client that reads
                // nothing has a full queue, and its stream ends with the transport.
                _ = stop.wait_for(|stop| *stop) => {
                    let _ = stopped.try_send(Err(Error::Stopped.into()));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.check(&request)?;
        let caller = crate::auth_grpc::caller(&request);
        let req = request.into_inner();
        if req.keys {
            crate::auth_grpc::check_lease_read(&self.node, caller.as_ref(), req.id)?;
        }
        let response = match time_to_live(&self.node, req.id, req.keys).await? {
            Some(ttl) => LeaseTimeToLiveResponse {
                header: Some(self.current_header()),
                id: req.id,
                ttl: ttl.ttl,
                granted_ttl: ttl.granted_ttl,
                keys: ttl.keys,
            },
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                header: Some(self.current_header()),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.check(&request)?;
        self.node.linearizable_barrier().await?;
        let (revision, leases) = {
            let sm = self.node.sm.read();
            let leases = sm
                .mvcc
                .lessor()
                .iter()
                .map(|(id, _)| LeaseStatus { id })
                .collect();
            (sm.mvcc.current_revision(), leases)
        };
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(revision)),
            leases,
        }))
    }
}

/// One KeepAlive stream: requests are answered in order, one at a time; at most
/// `KEEPALIVE_RESPONSE_QUEUE` answers wait for the client before reading stops.
async fn keep_alive_stream(
    api: LeaseApi,
    mut inbound: Streaming<LeaseKeepAliveRequest>,
    tx: mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>,
    require_leader: bool,
) {
    let node = &api.node;
    let election = node.config.election_timeout;
    let mut leader_check =
        tokio::time::interval_at(tokio::time::Instant::now() + election, election);
    let mut without_leader = 0;
    loop {
        let request = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => request,
                // The client closed its side, or the connection broke.
                Ok(None) | Err(_) => return,
            },
            _ = leader_check.tick(), if require_leader => {
                // etcd's monitorLeader: cancel `hasleader` streams after a while without one.
                if node.current_leader().is_none() {
                    without_leader += 1;
                } else {
                    without_leader = 0;
                }
                if without_leader >= MAX_NO_LEADER_CHECKS {
                    let _ = tx.send(Err(Error::NoLeader.into())).await;
                    return;
                }
                continue;
            }
            _ = tx.closed() => return,
        };
        // The header is taken before renewing (etcd does the same): its revision is at
        // most the one at which the keep-alive happened.
        let header = api.current_header();
        let ttl = match renew(node, request.id).await {
            Ok(Some(ttl)) => ttl,
            Ok(None) => 0,
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        };
        let response = LeaseKeepAliveResponse {
            header: Some(header),
            id: request.id,
            ttl,
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use skiff_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    use super::*;
    use crate::engine::{Durability, Engine, MemEngine};
    use crate::mvcc::Mvcc;

    fn grant(mvcc: &mut Mvcc, batch: &mut WriteBatch, id: LeaseId, ttl: i64) -> LeaseGrantResponse {
        mvcc.lease_grant(&LeaseGrantRequest { ttl, id }, batch)
            .expect("grant")
    }

    fn put(
        mvcc: &mut Mvcc,
        batch: &mut WriteBatch,
        key: &str,
        lease: LeaseId,
    ) -> Result<i64, Error> {
        let req = PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        };
        mvcc.put(&req, batch)
            .map(|applied| applied.response.header.unwrap_or_default().revision)
    }

    fn keys_of(mvcc: &Mvcc, id: LeaseId) -> Vec<String> {
        mvcc.lessor()
            .get(id)
            .expect("lease")
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    fn get(mvcc: &Mvcc, key: &str) -> Option<skiff_proto::mvccpb::KeyValue> {
        let req = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        mvcc.range(&req).expect("range").kvs.into_iter().next()
    }

    #[test]
    fn min_ttl_follows_etcd() {
        let mut config = StoreConfig::single("a");
        assert_eq!(min_lease_ttl(&config), 2);
        config.election_timeout = Duration::from_millis(5000);
        assert_eq!(min_lease_ttl(&config), 8);
        config.heartbeat_interval = Duration::from_millis(10);
        config.election_timeout = Duration::from_millis(100);
        assert_eq!(min_lease_ttl(&config), 1);
    }

    #[test]
    fn grant_checks_like_etcd() {
        let mut mvcc = Mvcc::default();
        let mut batch = WriteBatch::new();
        let response = grant(&mut mvcc, &mut batch, 7, 5);
        assert_eq!((response.id, response.ttl), (7, 5));
        assert_eq!(response.header.unwrap().revision, 1);
        let exists = mvcc.lease_grant(&LeaseGrantRequest { ttl: 5, id: 7 }, &mut batch);
        assert_eq!(exists.unwrap_err(), Error::LeaseExists);
        let too_large = mvcc.lease_grant(
            &LeaseGrantRequest {
                ttl: MAX_LEASE_TTL + 1,
                id: 8,
            },
            &mut batch,
        );
        assert_eq!(too_large.unwrap_err(), Error::LeaseTtlTooLarge);
        let zero = mvcc.lease_grant(&LeaseGrantRequest { ttl: 5, id: 0 }, &mut batch);
        assert_eq!(zero.unwrap_err(), Error::LeaseNotFound);
        assert_eq!(
            mvcc.current_revision(),
            1,
            "grants do not bump the revision"
        );
    }

    #[test]
    fn put_attaches_detaches_and_unknown_lease_fails() {
        let mut mvcc = Mvcc::default();
        let mut batch = WriteBatch::new();
        assert_eq!(
            put(&mut mvcc, &mut batch, "a", 1),
            Err(Error::LeaseNotFound)
        );
        grant(&mut mvcc, &mut batch, 1, 10);
        grant(&mut mvcc, &mut batch, 2, 10);
        put(&mut mvcc, &mut batch, "a", 1).unwrap();
        put(&mut mvcc, &mut batch, "b", 1).unwrap();
        assert_eq!(keys_of(&mvcc, 1), ["a", "b"]);
        assert_eq!(get(&mvcc, "a").unwrap().lease, 1);
        // Another lease moves the key; no lease detaches it.
        put(&mut mvcc, &mut batch, "a", 2).unwrap();
        assert_eq!(keys_of(&mvcc, 1), ["b"]);
        assert_eq!(keys_of(&mvcc, 2), ["a"]);
        put(&mut mvcc, &mut batch, "b", 0).unwrap();
        assert!(keys_of(&mvcc, 1).is_empty());
        // ignore_lease keeps the key's lease.
        let req = PutRequest {
            key: b"a".to_vec(),
            value: b"w".to_vec(),
            ignore_lease: true,
            ..Default::default()
        };
        mvcc.put(&req, &mut batch).unwrap();
        assert_eq!(get(&mvcc, "a").unwrap().lease, 2);
        assert_eq!(keys_of(&mvcc, 2), ["a"]);
        // A delete detaches.
        let del = DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        };
        mvcc.delete_range(&del, &mut batch).unwrap();
        assert!(keys_of(&mvcc, 2).is_empty());
    }

    #[test]
    fn revoke_deletes_attached_keys_in_one_revision() {
        let mut mvcc = Mvcc::default();
        let mut batch = WriteBatch::new();
        grant(&mut mvcc, &mut batch, 9, 10);
        put(&mut mvcc, &mut batch, "x", 9).unwrap();
        put(&mut mvcc, &mut batch, "y", 9).unwrap();
        put(&mut mvcc, &mut batch, "z", 0).unwrap();
        let before = mvcc.current_revision();
        let applied = mvcc
            .lease_revoke(&LeaseRevokeRequest { id: 9 }, &mut batch)
            .unwrap();
        assert!(applied.changed);
        assert_eq!(mvcc.current_revision(), before + 1);
        assert_eq!(applied.response.header.unwrap().revision, before + 1);
        assert!(get(&mvcc, "x").is_none() && get(&mvcc, "y").is_none());
        assert!(get(&mvcc, "z").is_some());
        assert!(!mvcc.lessor().contains(9));
        // Both keys still exist one revision earlier.
        let at_before = RangeRequest {
            key: b"x".to_vec(),
            range_end: b"z".to_vec(),
            revision: before,
            ..Default::default()
        };
        assert_eq!(mvcc.range(&at_before).unwrap().count, 2);
        let again = mvcc.lease_revoke(&LeaseRevokeRequest { id: 9 }, &mut batch);
        assert_eq!(again.unwrap_err(), Error::LeaseNotFound);
        // A lease without keys is revoked without a new revision.
        grant(&mut mvcc, &mut batch, 10, 10);
        let applied = mvcc
            .lease_revoke(&LeaseRevokeRequest { id: 10 }, &mut batch)
            .unwrap();
        assert!(!applied.changed);
        assert_eq!(mvcc.current_revision(), before + 1);
    }

    #[test]
    fn load_rebuilds_leases_and_attached_keys() {
        let engine = MemEngine::new();
        let mut mvcc = Mvcc::default();
        let mut batch = WriteBatch::new();
        grant(&mut mvcc, &mut batch, 1, 10);
        grant(&mut mvcc, &mut batch, 2, 20);
        grant(&mut mvcc, &mut batch, 3, 30);
        put(&mut mvcc, &mut batch, "a", 1).unwrap();
        put(&mut mvcc, &mut batch, "b", 1).unwrap();
        put(&mut mvcc, &mut batch, "b", 2).unwrap();
        put(&mut mvcc, &mut batch, "c", 3).unwrap();
        mvcc.lease_revoke(&LeaseRevokeRequest { id: 3 }, &mut batch)
            .unwrap();
        mvcc.compact(mvcc.current_revision(), &mut batch).unwrap();
        engine.write(batch, Durability::Durable).unwrap();
        let view = engine.read().unwrap();
        let loaded = Mvcc::load(view.as_ref()).unwrap();
        let ids: Vec<LeaseId> = loaded.lessor().iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(loaded.lessor().get(2).unwrap().ttl(), 20);
        assert_eq!(keys_of(&loaded, 1), ["a"]);
        assert_eq!(keys_of(&loaded, 2), ["b"]);
    }

    fn lessor_with(leases: &[(LeaseId, i64)]) -> Lessor {
        let mut lessor = Lessor::default();
        let mut batch = WriteBatch::new();
        for (id, ttl) in leases {
            lessor.grant(*id, *ttl, &mut batch).unwrap();
        }
        lessor
    }

    #[test]
    fn primary_renews_expires_and_retries() {
        let lessor = lessor_with(&[(1, 5), (2, 10)]);
        let mut primary = PrimaryState::default();
        let now = Instant::now();
        assert_eq!(primary.renew(1, &lessor, now), Renewal::NotPrimary);
        let extend = Duration::from_secs(1);
        primary.promote(3, &lessor, extend, now);
        // After promotion: election timeout + TTL.
        let ttl = primary
            .time_to_live(1, &lessor, false, now)
            .unwrap()
            .unwrap();
        assert_eq!((ttl.ttl, ttl.granted_ttl), (6, 5));
        assert_eq!(primary.pop_expired(now + Duration::from_secs(5)), None);
        let later = now + Duration::from_secs(4);
        assert_eq!(primary.renew(1, &lessor, later), Renewal::Renewed(5));
        // Renewed at `later`: expires at later + 5 s, not at now + 6 s.
        assert_eq!(primary.pop_expired(now + Duration::from_secs(8)), None);
        let expired_at = later + Duration::from_secs(11);
        assert_eq!(primary.renew(1, &lessor, expired_at), Renewal::Expired);
        let mut popped = vec![
            primary.pop_expired(expired_at).unwrap(),
            primary.pop_expired(expired_at).unwrap(),
        ];
        popped.sort();
        assert_eq!(popped, [1, 2]);
        assert_eq!(primary.pop_expired(expired_at), None);
        // Not revoked in time: proposed again after the retry interval.
        let retry = expired_at + EXPIRED_LEASE_RETRY_INTERVAL;
        assert!(primary.pop_expired(retry).is_some());
        assert_eq!(primary.renew(7, &lessor, now), Renewal::NotFound);
        assert_eq!(primary.time_to_live(7, &lessor, true, now), Ok(None));
        primary.demote();
        assert_eq!(primary.renew(2, &lessor, now), Renewal::NotPrimary);
    }

    #[test]
    fn primary_tracks_new_grants_and_forgets_revoked_ones() {
        let mut lessor = lessor_with(&[(1, 5)]);
        let mut primary = PrimaryState::default();
        let now = Instant::now();
        primary.promote(1, &lessor, Duration::ZERO, now);
        let mut batch = WriteBatch::new();
        lessor.grant(2, 7, &mut batch).unwrap();
        lessor.remove(1, &mut batch);
        let later = now + Duration::from_secs(2);
        primary.reconcile(&lessor, later);
        assert!(!primary.tracked.contains_key(&1));
        assert_eq!(primary.tracked[&2].expiry, later + Duration::from_secs(7));
        // A lease granted again under the same ID starts a new clock.
        lessor.remove(2, &mut batch);
        lessor.grant(2, 7, &mut batch).unwrap();
        let ttl = primary
            .time_to_live(2, &lessor, false, later + Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(ttl.ttl, 7);
    }

    #[test]
    fn promotion_spreads_piled_up_expiries() {
        let leases: Vec<(LeaseId, i64)> = (1..=2000).map(|id| (id, 10)).collect();
        let lessor = lessor_with(&leases);
        let mut primary = PrimaryState::default();
        let now = Instant::now();
        primary.promote(1, &lessor, Duration::from_secs(1), now);
        // At most 3/4 of the revoke rate expire in the first second of the window.
        let first = now + Duration::from_secs(11);
        let in_first_second = primary
            .tracked
            .values()
            .filter(|t| t.expiry <= first + Duration::from_millis(999))
            .count();
        assert!(
            in_first_second <= 3 * LEASE_REVOKE_RATE / 4 + 1,
            "{in_first_second}"
        );
        assert!(primary.tracked.values().all(|t| t.expiry >= first));
    }
}
