//! Test-only fault injection for `skiff-chaos` (cargo feature `chaos-bugs`; never in default
//! or release builds): named **bug switches** that break one guarantee each, so `skiff-chaos
//! bugcheck` can prove its checkers catch them, the **power-loss engine** switch
//! ([`crate::engine::powerloss`]) and **failpoints** (the `fail` crate).
//!
//! Everything is off unless enabled at process start:
//! - `SKIFF_CHAOS_BUGS=name[,name]` turns on bug switches (see [`Bug::ALL`] for the names);
//! - `SKIFF_CHAOS_POWERLOSS=1` keeps un-fsynced writes in memory only, so SIGKILL loses them
//!   as a power cut would;
//! - `FAILPOINTS=name=actions;...` configures failpoints (`fail` syntax: `panic`, `sleep(ms)`,
//!   `delay(ms)`, `return`, with `p%` and `n*` prefixes). A panic at a failpoint aborts the
//!   process (a crash at that point), printing `chaos failpoint crash: ...` to stderr.
//!
//! Failpoint names: `raft-log-append`, `raft-log-flush` (before the group-commit fsync),
//! `sm-apply`, `sm-install-snapshot`, `peer-send` (`return` fails the Raft RPC).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use skiff_proto::etcdserverpb::{PutResponse, TxnRequest};
use skiff_proto::mvccpb::Event;

use crate::engine::{Durability, Engine, WriteBatch};
use crate::error::Error;
use crate::node::StoreNode;
use crate::state_machine::{SmState, StateMachineStore};
use crate::types::{Applied, Command, Entry, LogId, Proposal};

/// One injected bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// Linearizable reads skip the read index: served from local state on any member.
    ReadLocal,
    /// A Put is acknowledged as soon as it is proposed, before it commits.
    AckBeforeCommit,
    /// Entries are applied to the state machine when appended to the log, before commit.
    ApplyBeforeCommit,
    /// Durable engine writes are not fsynced (only matters with the power-loss engine).
    SkipFsync,
    /// A Txn's compares are evaluated on the receiving member before replication, and the
    /// chosen branch is replicated unconditionally (read-then-write race).
    CasBeforeReplication,
    /// After a restart the revision counter resumes 3 revisions too low.
    RevisionRegress,
    /// Every 10th watch event is dropped.
    WatchDrop,
    /// Every 10th watch response repeats its last event.
    WatchDup,
    /// The events of one revision are split over two watch responses.
    WatchSplit,
    /// A watch created with a start revision starts one revision later.
    WatchResumeLate,
    /// Keep-alives are acknowledged without re-arming the lease's expiry: the expiry task
    /// revokes at the grant-time deadline.
    LeaseNoRecheck,
    /// An installed Raft snapshot omits the records of its last revision.
    SnapshotOffByOne,
    /// Opening a damaged WAL silently drops everything from the damage on, synced or not
    /// (the behaviour before the sync mark).
    WalTruncateSilently,
}

impl Bug {
    /// Every switch.
    pub const ALL: [Bug; 13] = [
        Bug::ReadLocal,
        Bug::AckBeforeCommit,
        Bug::ApplyBeforeCommit,
        Bug::SkipFsync,
        Bug::CasBeforeReplication,
        Bug::RevisionRegress,
        Bug::WatchDrop,
        Bug::WatchDup,
        Bug::WatchSplit,
        Bug::WatchResumeLate,
        Bug::LeaseNoRecheck,
        Bug::SnapshotOffByOne,
        Bug::WalTruncateSilently,
    ];

    /// The switch's name in `SKIFF_CHAOS_BUGS`.
    pub fn name(self) -> &'static str {
        match self {
            Bug::ReadLocal => "read-local",
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::ApplyBeforeCommit => "apply-before-commit",
            Bug::SkipFsync => "skip-fsync",
            Bug::CasBeforeReplication => "cas-before-replication",
            Bug::RevisionRegress => "revision-regress",
            Bug::WatchDrop => "watch-drop",
            Bug::WatchDup => "watch-dup",
            Bug::WatchSplit => "watch-split",
            Bug::WatchResumeLate => "watch-resume-late",
            Bug::LeaseNoRecheck => "lease-no-recheck",
            Bug::SnapshotOffByOne => "snapshot-off-by-one",
            Bug::WalTruncateSilently => "wal-truncate-silently",
        }
    }

    /// The switch named `name`.
    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name.trim())
    }
}

/// Parse a `SKIFF_CHAOS_BUGS` value; unknown names are returned separately.
pub fn parse_list(value: &str) -> (Vec<Bug>, Vec<String>) {
    let mut bugs = Vec::new();
    let mut unknown = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Bug::parse(name) {
            Some(b) => bugs.push(b),
            None => unknown.push(name.to_owned()),
        }
    }
    (bugs, unknown)
}

static ENABLED: OnceLock<Vec<Bug>> = OnceLock::new();

fn enabled_list() -> &'static [Bug] {
    ENABLED.get_or_init(|| {
        let (bugs, unknown) = parse_list(&std::env::var("SKIFF_CHAOS_BUGS").unwrap_or_default());
        for name in unknown {
            eprintln!("skiff: unknown SKIFF_CHAOS_BUGS switch {name:?} ignored");
        }
        bugs
    })
}

/// Whether a bug switch is on (read once from `SKIFF_CHAOS_BUGS`).
pub fn enabled(bug: Bug) -> bool {
    enabled_list().contains(&bug)
}

/// Whether `SKIFF_CHAOS_POWERLOSS=1`: the member runs on the power-loss engine.
pub fn power_loss_engine() -> bool {
    std::env::var("SKIFF_CHAOS_POWERLOSS").is_ok_and(|v| v == "1" || v == "true")
}

/// Server start hook: with `SKIFF_CHAOS_POWERLOSS=1`, replace the member's redb engine by the
/// power-loss engine on the same file (the redb handle is dropped first to free the file).
pub fn choose_engine(
    engine: Arc<dyn Engine>,
    member_dir: &std::path::Path,
) -> Result<Arc<dyn Engine>, Error> {
    if !power_loss_engine() {
        return Ok(engine);
    }
    drop(engine);
    let engine = crate::engine::powerloss::PowerLossEngine::open(&member_dir.join("store.redb"))
        .map_err(|e| Error::Config(format!("open data dir (power-loss engine): {e}")))?;
    Ok(Arc::new(crate::engine::CountingEngine::new(engine)))
}

/// Called once when a member starts: logs the switches and configures failpoints.
pub fn init() {
    for bug in enabled_list() {
        tracing::warn!(bug = bug.name(), "chaos bug switch ON (test build)");
    }
    if power_loss_engine() {
        tracing::warn!("power-loss engine ON: writes not fsynced are lost on SIGKILL");
    }
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return;
    };
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if payload.contains("failpoint") {
                // The crash the failpoint asked for: not a bug, so no panic report.
                eprintln!("chaos failpoint crash: {payload}");
                std::process::abort();
            }
            default(info);
        }));
    });
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, actions)) = item.split_once('=') else {
            eprintln!("skiff: FAILPOINTS item {item:?} ignored (expected name=actions)");
            continue;
        };
        match fail::cfg(name.trim(), actions.trim()) {
            Ok(()) => tracing::warn!(failpoint = name, actions, "failpoint configured"),
            Err(e) => eprintln!("skiff: failpoint {name}: {e}"),
        }
    }
}

/// Evaluate failpoint `name`: sleeps, delays and panics happen here; `true` when its action is
/// `return` (the caller then fails the operation).
pub fn failpoint(name: &str) -> bool {
    fail::eval(name, |_| ()).is_some()
}

// ---- ack-before-commit -------------------------------------------------------------

/// `ack-before-commit`: propose the Put in the background and answer at once with the
/// revision it would get if nothing else were in flight.
pub fn ack_put_early(
    node: &Arc<StoreNode>,
    raw: &[u8],
    require_leader: bool,
) -> Option<PutResponse> {
    if !enabled(Bug::AckBeforeCommit) {
        return None;
    }
    let revision = node.sm.read().mvcc.current_revision() + 1;
    let bg = Arc::clone(node);
    let command = Command::Put(raw.to_vec());
    tokio::spawn(async move {
        let _ = bg.write(command, require_leader).await;
    });
    Some(PutResponse {
        header: Some(node.header(revision)),
        prev_kv: None,
    })
}

// ---- cas-before-replication --------------------------------------------------------

/// `cas-before-replication`: decide the txn's branch from this member's local state (no read
/// index) and return the txn to replicate without compares, plus the decision.
pub fn decide_txn_locally(
    node: &StoreNode,
    req: &TxnRequest,
) -> Result<Option<(TxnRequest, bool)>, Error> {
    if !enabled(Bug::CasBeforeReplication) || req.compare.is_empty() {
        return Ok(None);
    }
    let probe = TxnRequest {
        compare: req.compare.clone(),
        success: Vec::new(),
        failure: Vec::new(),
    };
    let succeeded = node.sm.read().mvcc.read_only_txn(&probe)?.succeeded;
    let decided = TxnRequest {
        compare: Vec::new(),
        success: if succeeded {
            req.success.clone()
        } else {
            req.failure.clone()
        },
        failure: Vec::new(),
    };
    Ok(Some((decided, succeeded)))
}

// ---- apply-before-commit -----------------------------------------------------------

type ApplyFn = fn(&mut SmState, &Proposal, &mut WriteBatch) -> Applied;

/// The state machine `apply-before-commit` applies appended entries to.
static STATE_MACHINE: OnceLock<StateMachineStore> = OnceLock::new();
/// Replies of entries applied early, by log id, for when openraft applies them (bounded: the
/// oldest are forgotten past this many).
static EARLY: Mutex<Option<BTreeMap<LogId, Applied>>> = Mutex::new(None);
const EARLY_LIMIT: usize = 100_000;

/// Remember the member's state machine (server start).
pub fn register_state_machine(sm: &StateMachineStore) {
    let _ = STATE_MACHINE.set(sm.clone());
}

/// Log append hook: with `apply-before-commit`, apply the entries now.
pub fn appended(entries: &[Entry]) {
    if !enabled(Bug::ApplyBeforeCommit) {
        return;
    }
    if let Some(sm) = STATE_MACHINE.get() {
        sm.chaos_apply_early(entries);
    }
}

/// The body of [`StateMachineStore::chaos_apply_early`]: apply normal entries to the state
/// and the engine (buffered) without moving `last_applied`, keeping their replies.
pub(crate) fn apply_early(
    state: &RwLock<SmState>,
    engine: &Arc<dyn Engine>,
    entries: &[Entry],
    apply: ApplyFn,
) {
    let mut batch = WriteBatch::new();
    let mut replies = Vec::new();
    {
        let mut state = state.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            if let openraft::EntryPayload::Normal(command) = &entry.payload {
                replies.push((entry.log_id, apply(&mut state, command, &mut batch)));
            }
        }
        if !batch.is_empty() && engine.write(batch, Durability::Buffered).is_err() {
            return;
        }
    }
    let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
    let map = early.get_or_insert_with(BTreeMap::new);
    if map.len() > EARLY_LIMIT {
        map.clear();
    }
    map.extend(replies);
}

/// State machine apply hook: the reply of an entry already applied early, if any.
pub fn take_early_reply(log_id: &LogId) -> Option<Applied> {
    if !enabled(Bug::ApplyBeforeCommit) {
        return None;
    }
    EARLY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .and_then(|m| m.remove(log_id))
}

// ---- revision-regress --------------------------------------------------------------

/// State machine load hook: with `revision-regress`, resume the revision counter 3 lower.
pub fn after_load(mut state: SmState) -> SmState {
    if enabled(Bug::RevisionRegress) {
        let current = state.mvcc.current_revision();
        let floor = state.mvcc.compact_revision() + 1;
        state
            .mvcc
            .chaos_set_current((current - 3).max(floor).max(1));
    }
    state
}

// ---- snapshot-off-by-one -----------------------------------------------------------

/// Snapshot install hook: with `snapshot-off-by-one`, drop the `Kv` records of the last
/// revision (records are keyed by big-endian `(revision, sub)`).
pub fn snapshot_kv(mut kv: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    if !enabled(Bug::SnapshotOffByOne) {
        return kv;
    }
    let revision = |k: &[u8]| k.get(..8).map(|b| b.to_vec());
    if let Some(last) = kv.iter().filter_map(|(k, _)| revision(k)).max() {
        kv.retain(|(k, _)| revision(k).as_ref() != Some(&last));
        tracing::warn!("snapshot-off-by-one: dropped the last revision's records");
    }
    kv
}

// ---- watch -------------------------------------------------------------------------

static WATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether any watch-delivery switch is on.
pub fn watch_delivery_bug() -> bool {
    enabled(Bug::WatchDrop) || enabled(Bug::WatchDup) || enabled(Bug::WatchSplit)
}

/// Watch delivery hook: the responses (event lists) to send instead of one with `events`.
pub fn mangle_watch_events(mut events: Vec<Event>) -> Vec<Vec<Event>> {
    let n = WATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
    if enabled(Bug::WatchDrop) {
        let before = events.len();
        let mut i = 0u64;
        events.retain(|_| {
            i += 1;
            !(n + i).is_multiple_of(10)
        });
        if events.is_empty() && before > 0 {
            return Vec::new();
        }
    }
    if enabled(Bug::WatchDup)
        && n % 10 == 9
        && let Some(last) = events.last().cloned()
    {
        events.push(last);
    }
    if enabled(Bug::WatchSplit) && events.len() >= 2 {
        let rev = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        if let Some(cut) = (1..events.len()).find(|&i| rev(&events[i]) == rev(&events[i - 1])) {
            let tail = events.split_off(cut);
            return vec![events, tail];
        }
    }
    vec![events]
}

/// Watch create hook: with `watch-resume-late`, a watch from a given revision starts one later.
pub fn watch_start_revision(start_revision: i64) -> i64 {
    if enabled(Bug::WatchResumeLate) && start_revision > 0 {
        start_revision + 1
    } else {
        start_revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in Bug::ALL {
            assert_eq!(Bug::parse(bug.name()), Some(bug));
        }
        let (bugs, unknown) = parse_list("read-local, watch-dup,nope");
        assert_eq!(bugs, vec![Bug::ReadLocal, Bug::WatchDup]);
        assert_eq!(unknown, vec!["nope".to_owned()]);
    }

    #[test]
    fn snapshot_kv_is_untouched_when_off() {
        let kv = vec![(vec![0, 0, 0, 0, 0, 0, 0, 2, 0], vec![1])];
        assert_eq!(snapshot_kv(kv.clone()), kv);
    }
}
