//! Fault injection: what faults exist, when they happen ([`schedule`], pure and seeded) and how
//! they are installed and removed on a running [`Cluster`] ([`Nemesis`]).
//!
//! Every fault is journaled in the history as `info` events of process `nemesis`: a start event
//! (`kill`, `pause`, `start-partition`, `start-loss`, `remove-member`, `bump-clock`,
//! `power-loss`, `enable-failpoints`, `corrupt-wal`) and an end event (`start`, `resume`,
//! `stop-partition`, `stop-loss`, `add-member`, `reset-clock`, `power-on`, `disable-failpoints`,
//! `recover-member`), both
//! with `value = {"fault": id, "mode": ..., ...}`; a fault that could not be installed has an
//! `"error"` in its start event and no end event. After the workload, [`Nemesis::heal_all`]
//! undoes everything (event `heal`) and waits for the cluster to agree on a leader again
//! (`healthy`, or `unhealthy` after 30 s).
//!
//! Nemesis names on the command line are a fault *kind* (all its modes, in a seeded rotation) or
//! one *mode*: see [`Mode`]. Two kinds need a test build of skiff (`--features chaos-bugs`, see
//! `store/src/chaos_bugs.rs`) and are refused (journaled with an error, so coverage fails)
//! when the members do not confirm them in their logs: `power-loss` (members run the power-loss
//! engine, which keeps un-fsynced writes in memory only, so SIGKILL loses them like a power
//! cut) and `failpoints` (a member restarted with `FAILPOINTS` set: crashes, slow disk or a
//! failing Raft transport at named points; restarted without them when the fault ends).
//!
//! One kind needs skiff's on-disk format (refused on `--target etcd`): `corrupt` (issue 11)
//! SIGKILLs members, flips bytes inside WAL records they had synced ([`corrupt`]) and restarts
//! them. A correct member refuses to start naming the damaged segment; the fault journals each
//! member's outcome (`refused`, `exited`, `started`; the `corruption` check turns the last two
//! into anomalies) and, when it ends, recovers the refusing members: `corrupt-one` as an operator
//! would (MemberRemove, wipe, MemberAdd with the same peer URL, start with
//! `--initial-cluster-state existing`), `corrupt-majority` by writing the original bytes back
//! (with a majority refusing there is no quorum to remove them through; this stands in for a
//! restore from a backup).

pub mod corrupt;
pub mod partition;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::client::Recorder;
use crate::cluster::{Cluster, node_name};
use crate::history::Value;
use partition::Grudge;

/// One fault mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// SIGKILL a random member, restart it after the hold.
    KillOne,
    /// SIGKILL the leader.
    KillLeader,
    /// SIGKILL every member, restart them all.
    KillAll,
    /// SIGSTOP a random member, SIGCONT after the hold.
    PauseOne,
    /// SIGSTOP the leader.
    PauseLeader,
    /// Isolate a random member.
    PartitionOne,
    /// Isolate the leader (leader in the minority).
    PartitionLeader,
    /// Random majority/minority split (leader on either side).
    PartitionMajority,
    /// Majorities ring.
    PartitionRing,
    /// Two halves joined by one bridge node.
    PartitionBridge,
    /// One node stops hearing the others (it can still send).
    PartitionOneWay,
    /// Random packet loss (10–40 %) on every member.
    Loss,
    /// Remove a random member; re-add it with a wiped data dir and a new ID after the hold.
    MemberRemove,
    /// Remove the leader; re-add it wiped.
    MemberRemoveLeader,
    /// Shift one member's wall clock by ±30–300 s (libfaketime; monotonic time untouched).
    ClockBump,
    /// Run one member's wall clock at 0.5× or 2×.
    ClockRate,
    /// Power-cut a random member (SIGKILL on the power-loss engine: un-fsynced writes are lost).
    PowerLossOne,
    /// Power-cut every member at once.
    PowerLossAll,
    /// Restart a member with failpoints that crash it at a storage or Raft point.
    FailpointsCrash,
    /// Restart a member with failpoints that make its disk slow.
    FailpointsSlow,
    /// Restart a member with failpoints that fail or delay its Raft messages.
    FailpointsNet,
    /// SIGKILL a random member, flip bytes in the middle of its WAL's synced records, restart
    /// it: it must refuse; then replace it (remove, wipe, add back).
    CorruptOne,
    /// SIGKILL every member, flip bytes near the end of the synced records of the leader and
    /// enough others to make a majority, restart those first and the rest once they are
    /// settled: they must refuse; then write the original bytes back.
    CorruptMajority,
}

/// Every mode, in a stable order.
pub const ALL_MODES: [Mode; 23] = [
    Mode::KillOne,
    Mode::KillLeader,
    Mode::KillAll,
    Mode::PauseOne,
    Mode::PauseLeader,
    Mode::PartitionOne,
    Mode::PartitionLeader,
    Mode::PartitionMajority,
    Mode::PartitionRing,
    Mode::PartitionBridge,
    Mode::PartitionOneWay,
    Mode::Loss,
    Mode::MemberRemove,
    Mode::MemberRemoveLeader,
    Mode::ClockBump,
    Mode::ClockRate,
    Mode::PowerLossOne,
    Mode::PowerLossAll,
    Mode::FailpointsCrash,
    Mode::FailpointsSlow,
    Mode::FailpointsNet,
    Mode::CorruptOne,
    Mode::CorruptMajority,
];

/// Fault kinds (the names that expand to all their modes) that work on any store.
pub const KINDS: [&str; 6] = ["kill", "pause", "partition", "loss", "member", "clock"];

/// Fault kinds that need a skiff test build (`chaos-bugs`).
pub const TEST_BUILD_KINDS: [&str; 2] = ["power-loss", "failpoints"];

/// Fault kinds that need skiff's on-disk format (any skiff build; not `--target etcd`).
pub const SKIFF_KINDS: [&str; 1] = ["corrupt"];

/// Every fault kind.
pub fn all_kinds() -> impl Iterator<Item = &'static str> {
    KINDS
        .iter()
        .chain(TEST_BUILD_KINDS.iter())
        .chain(SKIFF_KINDS.iter())
        .copied()
}

/// Failpoint settings (`FAILPOINTS`) a failpoints mode picks from.
pub fn failpoint_choices(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::FailpointsCrash => &[
            "raft-log-append=2%panic",
            "raft-log-flush=3%panic",
            "sm-apply=3%panic",
            "peer-send=1%panic",
        ],
        Mode::FailpointsSlow => &[
            "raft-log-flush=50%sleep(150)",
            "raft-log-append=30%sleep(100)",
            "sm-apply=30%sleep(100)",
        ],
        Mode::FailpointsNet => &["peer-send=30%return", "peer-send=10%sleep(200)"],
        _ => &[],
    }
}

impl Mode {
    /// The mode's name, e.g. `partition-leader`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::KillOne => "kill-one",
            Mode::KillLeader => "kill-leader",
            Mode::KillAll => "kill-all",
            Mode::PauseOne => "pause-one",
            Mode::PauseLeader => "pause-leader",
            Mode::PartitionOne => "partition-one",
            Mode::PartitionLeader => "partition-leader",
            Mode::PartitionMajority => "partition-majority",
            Mode::PartitionRing => "partition-ring",
            Mode::PartitionBridge => "partition-bridge",
            Mode::PartitionOneWay => "partition-one-way",
            Mode::Loss => "loss",
            Mode::MemberRemove => "member-remove",
            Mode::MemberRemoveLeader => "member-remove-leader",
            Mode::ClockBump => "clock-bump",
            Mode::ClockRate => "clock-rate",
            Mode::PowerLossOne => "power-loss-one",
            Mode::PowerLossAll => "power-loss-all",
            Mode::FailpointsCrash => "failpoints-crash",
            Mode::FailpointsSlow => "failpoints-slow",
            Mode::FailpointsNet => "failpoints-net",
            Mode::CorruptOne => "corrupt-one",
            Mode::CorruptMajority => "corrupt-majority",
        }
    }

    /// The kind: `kill`, `pause`, `partition`, `loss`, `member` or `clock`.
    pub fn kind(self) -> &'static str {
        let n = self.name();
        all_kinds()
            .find(|k| n == *k || n.starts_with(&format!("{k}-")))
            .unwrap_or(n)
    }

    /// The history `f` of the fault's start and end events.
    pub fn event_names(self) -> (&'static str, &'static str) {
        match self.kind() {
            "kill" => ("kill", "start"),
            "pause" => ("pause", "resume"),
            "partition" => ("start-partition", "stop-partition"),
            "loss" => ("start-loss", "stop-loss"),
            "member" => ("remove-member", "add-member"),
            "power-loss" => ("power-loss", "power-on"),
            "failpoints" => ("enable-failpoints", "disable-failpoints"),
            "corrupt" => (corrupt::START_EVENT, corrupt::END_EVENT),
            _ => ("bump-clock", "reset-clock"),
        }
    }

    /// How long the fault is held (ms range).
    fn hold_ms(self) -> (u64, u64) {
        match self {
            Mode::KillAll | Mode::PowerLossAll => (2_000, 4_000),
            Mode::FailpointsCrash | Mode::FailpointsSlow | Mode::FailpointsNet => (4_000, 8_000),
            Mode::MemberRemove | Mode::MemberRemoveLeader => (4_000, 8_000),
            Mode::CorruptOne => (3_000, 6_000),
            // The cluster has no quorum while a correct store's majority refuses.
            Mode::CorruptMajority => (2_000, 4_000),
            Mode::PauseOne | Mode::PauseLeader => (1_000, 6_000),
            _ => (3_000, 8_000),
        }
    }

    /// Whether the mode needs at least this many members.
    pub fn min_nodes(self) -> usize {
        match self {
            Mode::MemberRemove | Mode::MemberRemoveLeader => 3,
            Mode::CorruptOne | Mode::CorruptMajority => 3,
            Mode::PartitionRing | Mode::PartitionBridge | Mode::PartitionMajority => 3,
            _ => 1,
        }
    }
}

/// A parsed `--nemesis` list: the names as given (for coverage) and the modes they expand to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisSpec {
    /// The names as requested (kinds or modes), `none` dropped.
    pub requested: Vec<String>,
    /// The modes to rotate through.
    pub modes: Vec<Mode>,
}

impl NemesisSpec {
    /// Parses `none`, or a comma-separated list of kinds and modes.
    pub fn parse(text: &str) -> Result<NemesisSpec, String> {
        let mut spec = NemesisSpec::default();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "none" {
                continue;
            }
            let modes: Vec<Mode> = if all_kinds().any(|k| k == name) {
                ALL_MODES
                    .iter()
                    .copied()
                    .filter(|m| m.kind() == name)
                    .collect()
            } else if let Some(m) = ALL_MODES.iter().find(|m| m.name() == name) {
                vec![*m]
            } else {
                return Err(format!(
                    "unknown nemesis {name:?} (kinds: {}; modes: {})",
                    all_kinds().collect::<Vec<_>>().join(", "),
                    ALL_MODES.map(Mode::name).join(", ")
                ));
            };
            if !spec.requested.iter().any(|r| r == name) {
                spec.requested.push(name.to_owned());
            }
            for m in modes {
                if !spec.modes.contains(&m) {
                    spec.modes.push(m);
                }
            }
        }
        Ok(spec)
    }

    /// Whether a mode of this kind is requested.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.modes.iter().any(|m| m.kind() == kind)
    }

    /// Whether the requested name `name` is satisfied by an installed `mode`.
    pub fn covers(name: &str, mode: Mode) -> bool {
        mode.name() == name || mode.kind() == name
    }
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    /// Start, ms after the workload starts.
    pub at_ms: u64,
    /// How long it is held.
    pub hold_ms: u64,
    /// The mode.
    pub mode: Mode,
}

/// The fault plan of a run: the first fault after `min(5 s, limit/6)`, then faults held for their
/// mode's range and separated by 2–5 s. Faults come in rounds: every round has one fault per
/// requested name, in a seeded random order, so every requested name comes up as early as
/// possible; a kind's modes are dealt from a shuffled deck, so they rotate without repeats.
/// Every fault ends at least 1 s before the time limit.
pub fn schedule(spec: &NemesisSpec, time_limit: Duration, seed: u64) -> Vec<Planned> {
    let mut out = Vec::new();
    let groups: Vec<Vec<Mode>> = spec
        .requested
        .iter()
        .map(|name| {
            spec.modes
                .iter()
                .copied()
                .filter(|m| NemesisSpec::covers(name, *m))
                .collect::<Vec<Mode>>()
        })
        .filter(|g| !g.is_empty())
        .collect();
    if groups.is_empty() {
        return out;
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let limit = time_limit.as_millis() as u64;
    let end = limit.saturating_sub(1_000);
    let mut t = (limit / 6).min(5_000);
    let mut decks: Vec<Vec<Mode>> = vec![Vec::new(); groups.len()];
    let mut round: Vec<usize> = Vec::new();
    loop {
        if round.is_empty() {
            round = (0..groups.len()).collect();
            round.shuffle(&mut rng);
        }
        let g = round.pop().expect("non-empty");
        if decks[g].is_empty() {
            decks[g] = groups[g].clone();
            decks[g].shuffle(&mut rng);
        }
        let mode = decks[g].pop().expect("non-empty");
        let (lo, hi) = mode.hold_ms();
        let mut hold = rng.random_range(lo..=hi);
        if t + hold > end {
            // Shorten the last fault to fit, but never below the mode's minimum.
            if t + lo <= end {
                hold = end - t;
            } else {
                break;
            }
        }
        out.push(Planned {
            at_ms: t,
            hold_ms: hold,
            mode,
        });
        t += hold + rng.random_range(2_000..=5_000);
    }
    out
}

/// What a member on the power-loss engine logs at start.
pub const POWER_LOSS_MARK: &str = "power-loss engine ON";
/// What a member logs for each failpoint it configured.
pub const FAILPOINT_MARK: &str = "failpoint configured";

/// What must be undone when a fault ends.
#[derive(Debug)]
enum Undo {
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    ClearFailpoints(usize),
    Flush(Vec<usize>),
    ReAdd(usize),
    ResetClock(usize),
    /// Members that refused their damaged WAL: replaced (`corrupt-one`) or given their
    /// original bytes back (`corrupt-majority`).
    Recover {
        slots: Vec<usize>,
        replace: bool,
    },
}

/// An installed fault.
#[derive(Debug)]
pub struct Active {
    id: u64,
    mode: Mode,
    undo: Undo,
}

/// The fault injector of one run.
pub struct Nemesis {
    cluster: Arc<Cluster>,
    rec: Arc<Recorder>,
    rng: StdRng,
    next_id: u64,
    rpc_timeout: Duration,
    /// WALs damaged by a corrupt fault whose members refused them and are not recovered yet.
    damaged: BTreeMap<usize, corrupt::Damage>,
    /// Currently installed fault (at most one at a time), for the progress line.
    pub current: Arc<std::sync::Mutex<Option<String>>>,
}

/// How long a damaged member has to refuse (a correct one exits within milliseconds).
const REFUSAL_LIMIT: Duration = Duration::from_secs(10);
/// How long `corrupt-majority` waits for the restarted damaged members to elect a leader
/// before it starts the others.
const SETTLE_LIMIT: Duration = Duration::from_secs(8);
/// Attempts of a membership change while replacing a refusing member (1 s apart).
const MEMBERSHIP_ATTEMPTS: usize = 6;

/// Watches a damaged member after its restart until it exits (refusing, or not saying why) or
/// serves (or is still running when `limit` passes).
async fn await_outcome(
    cluster: &Cluster,
    slot: usize,
    segment: &str,
    limit: Duration,
) -> corrupt::Outcome {
    let t0 = tokio::time::Instant::now();
    loop {
        if let Some(status) = cluster.poll_exit(slot) {
            let log = cluster.log_since_start(slot);
            return match corrupt::parse_refusal(&log) {
                Some(r) if r.names(segment) => corrupt::Outcome::Refused(r),
                _ => corrupt::Outcome::Exited {
                    status,
                    tail: corrupt::tail(&log, 3),
                },
            };
        }
        let after_ms = t0.elapsed().as_millis() as u64;
        if cluster
            .status_of(slot, Duration::from_millis(300))
            .await
            .is_some()
        {
            // It opened its log: a member serves only after that.
            return corrupt::Outcome::Started {
                after_ms,
                answered: true,
            };
        }
        if t0.elapsed() >= limit {
            return corrupt::Outcome::Started {
                after_ms: t0.elapsed().as_millis() as u64,
                answered: false,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Nemesis {
    /// A nemesis for `cluster`, journaling to `rec`.
    pub fn new(cluster: Arc<Cluster>, rec: Arc<Recorder>, seed: u64) -> Nemesis {
        Nemesis {
            cluster,
            rec,
            rng: StdRng::seed_from_u64(seed ^ 0x6661_756c_7473),
            next_id: 1,
            rpc_timeout: Duration::from_secs(2),
            damaged: BTreeMap::new(),
            current: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    fn set_current(&self, s: Option<String>) {
        if let Ok(mut c) = self.current.lock() {
            *c = s;
        }
    }

    /// Runs the plan, relative to `start`, until its end or until `stop` fires.
    pub async fn run_plan(
        &mut self,
        plan: &[Planned],
        start: tokio::time::Instant,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        for p in plan {
            if *stop.borrow() {
                return;
            }
            tokio::time::sleep_until(start + Duration::from_millis(p.at_ms)).await;
            if *stop.borrow() {
                return;
            }
            let active = self.start(p.mode).await;
            if let Some(a) = active {
                tokio::time::sleep(Duration::from_millis(p.hold_ms)).await;
                self.stop(a).await;
            }
        }
    }

    fn value(&self, id: u64, mode: Mode, extra: Vec<(&str, Value)>) -> Value {
        let mut m = BTreeMap::new();
        m.insert("fault".to_owned(), Value::Int(id as i64));
        m.insert("mode".to_owned(), Value::Str(mode.name().to_owned()));
        for (k, v) in extra {
            m.insert(k.to_owned(), v);
        }
        Value::Map(m)
    }

    fn nodes_value(slots: &[usize]) -> Value {
        Value::List(slots.iter().map(|&s| Value::Str(node_name(s))).collect())
    }

    fn skipped(&mut self, mode: Mode, reason: &str) -> Option<Active> {
        let id = self.next_id;
        self.next_id += 1;
        let v = self.value(id, mode, vec![("error", Value::Str(reason.to_owned()))]);
        self.rec.nemesis(mode.event_names().0, v);
        None
    }

    async fn leader(&self) -> Option<usize> {
        for _ in 0..6 {
            if let Some(l) = self.cluster.leader(Duration::from_millis(700)).await {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    async fn iptables(&self, slot: usize, args: Vec<String>) -> Result<(), String> {
        let mut full = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.cluster.topology.node_ns(slot),
            "iptables".to_owned(),
        ];
        full.extend(args);
        crate::net::run_async("ip", &full)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Installs one fault; `None` if it could not be (journaled with an error).
    pub async fn start(&mut self, mode: Mode) -> Option<Active> {
        let members = self.cluster.members();
        if members.len() < mode.min_nodes() {
            return self.skipped(mode, "not enough members");
        }
        let live = self.cluster.live();
        let (f, _) = mode.event_names();
        let id = self.next_id;
        match mode {
            Mode::KillOne | Mode::KillLeader | Mode::KillAll => {
                let targets = match mode {
                    Mode::KillAll => members.clone(),
                    Mode::KillLeader => match self.leader().await {
                        Some(l) => vec![l],
                        None => return self.skipped(mode, "no leader"),
                    },
                    _ => match live.choose(&mut self.rng) {
                        Some(&s) => vec![s],
                        None => return self.skipped(mode, "no live member"),
                    },
                };
                self.next_id += 1;
                for &s in &targets {
                    self.cluster.kill(s);
                }
                let v = self.value(id, mode, vec![("nodes", Self::nodes_value(&targets))]);
                self.rec.nemesis(f, v);
                self.set_current(Some(format!("{} {:?}", mode.name(), targets)));
                Some(Active {
                    id,
                    mode,
                    undo: Undo::Restart(targets),
                })
            }
            Mode::PauseOne | Mode::PauseLeader => {
                let target = match mode {
                    Mode::PauseLeader => self.leader().await,
                    _ => live.choose(&mut self.rng).copied(),
                };
                let Some(target) = target else {
                    return self.skipped(mode, "no target");
                };
                self.next_id += 1;
                self.cluster.pause(target);
                let v = self.value(id, mode, vec![("nodes", Self::nodes_value(&[target]))]);
                self.rec.nemesis(f, v);
                self.set_current(Some(format!("{} n{target}", mode.name())));
                Some(Active {
                    id,
                    mode,
                    undo: Undo::Resume(vec![target]),
                })
            }
            Mode::PartitionOne
            | Mode::PartitionLeader
            | Mode::PartitionMajority
            | Mode::PartitionRing
            | Mode::PartitionBridge
            | Mode::PartitionOneWay => {
                let mut shuffled = members.clone();
                shuffled.shuffle(&mut self.rng);
                let mut extra = Vec::new();
                let grudge: Grudge = match mode {
                    Mode::PartitionOne => partition::isolate(&members, shuffled[0]),
                    Mode::PartitionLeader => match self.leader().await {
                        Some(l) => {
                            extra.push(("leader", Value::Str(node_name(l))));
                            partition::isolate(&members, l)
                        }
                        None => return self.skipped(mode, "no leader"),
                    },
                    Mode::PartitionMajority => {
                        let leader = self.leader().await;
                        let (a, b) = shuffled.split_at(shuffled.len() / 2);
                        if let Some(l) = leader {
                            extra.push(("leader", Value::Str(node_name(l))));
                            let side = if a.contains(&l) {
                                "minority"
                            } else {
                                "majority"
                            };
                            extra.push(("leader-side", Value::Str(side.into())));
                        }
                        partition::split(a, b)
                    }
                    Mode::PartitionRing => partition::majorities_ring(&shuffled),
                    Mode::PartitionBridge => partition::bridge(&shuffled),
                    _ => partition::one_way(&members, shuffled[0]),
                };
                self.next_id += 1;
                let mut errors = Vec::new();
                for (slot, args) in partition::rules(&grudge) {
                    if let Err(e) = self.iptables(slot, args).await {
                        errors.push(e);
                    }
                }
                let grudge_v = Value::Map(
                    partition::describe(&grudge)
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                k,
                                Value::List(
                                    v.into_iter().map(|s| Value::Str(node_name(s))).collect(),
                                ),
                            )
                        })
                        .collect(),
                );
                extra.push(("grudge", grudge_v));
                if !errors.is_empty() {
                    extra.push(("error", Value::Str(errors.join("; "))));
                }
                let v = self.value(id, mode, extra);
                self.rec.nemesis(f, v);
                self.set_current(Some(mode.name().to_owned()));
                Some(Active {
                    id,
                    mode,
                    undo: Undo::Flush(members),
                })
            }
            Mode::Loss => {
                let p = self.rng.random_range(0.10..0.40);
                self.next_id += 1;
                let mut errors = Vec::new();
                for &s in &members {
                    if let Err(e) = self.iptables(s, partition::loss_rule(p)).await {
                        errors.push(e);
                    }
                }
                let mut extra = vec![
                    ("probability", Value::Str(format!("{p:.3}"))),
                    ("nodes", Self::nodes_value(&members)),
                ];
                if !errors.is_empty() {
                    extra.push(("error", Value::Str(errors.join("; "))));
                }
                let v = self.value(id, mode, extra);
                self.rec.nemesis(f, v);
                self.set_current(Some(format!("loss {:.0}%", p * 100.0)));
                Some(Active {
                    id,
                    mode,
                    undo: Undo::Flush(members),
                })
            }
            Mode::MemberRemove | Mode::MemberRemoveLeader => {
                let target = match mode {
                    Mode::MemberRemoveLeader => self.leader().await,
                    _ => live.choose(&mut self.rng).copied(),
                };
                let Some(target) = target else {
                    return self.skipped(mode, "no target");
                };
                // Learn ids, then ask another live member (the change is forwarded to the leader).
                self.cluster.statuses(Duration::from_secs(1)).await;
                let Some(old_id) = self.cluster.id(target) else {
                    return self.skipped(mode, "member id unknown");
                };
                let via = live
                    .iter()
                    .copied()
                    .filter(|&s| s != target)
                    .collect::<Vec<_>>()
                    .choose(&mut self.rng)
                    .copied()
                    .unwrap_or(target);
                self.next_id += 1;
                // Not a member from now on, so that its own exit once it learns of the removal
                // is not reported as a crash; restored if the removal did not happen.
                self.cluster.set_member(target, false);
                let result = self
                    .cluster
                    .member_remove(target, via, self.rpc_timeout)
                    .await;
                let removed = match &result {
                    Ok(()) => true,
                    Err(_) => {
                        // Indeterminate: look at the membership.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match self.cluster.member_list(self.rpc_timeout).await {
                            Some(list) => !list.iter().any(|(id, _, _)| *id == old_id),
                            None => false,
                        }
                    }
                };
                let mut extra = vec![
                    ("nodes", Self::nodes_value(&[target])),
                    ("id", Value::Str(format!("{old_id:x}"))),
                    ("via", Value::Str(node_name(via))),
                ];
                if let Err(e) = &result {
                    extra.push(("rpc-error", Value::Str(e.clone())));
                }
                if !removed {
                    self.cluster.set_member(target, true);
                    extra.push(("error", Value::Str("member not removed".into())));
                    let v = self.value(id, mode, extra);
                    self.rec.nemesis(f, v);
                    return None;
                }
                self.cluster.set_member(target, false);
                self.cluster.kill(target);
                let wiped = self.cluster.wipe(target);
                if let Err(e) = wiped {
                    extra.push(("wipe-error", Value::Str(e.to_string())));
                }
                let v = self.value(id, mode, extra);
                self.rec.nemesis(f, v);
                self.set_current(Some(format!("{} n{target}", mode.name())));
                Some(Active {
                    id,
                    mode,
                    undo: Undo::ReAdd(target),
                })
            }
            Mode::PowerLossOne | Mode::PowerLossAll => {
                let targets = match mode {
                    Mode::PowerLossAll => members.clone(),
                    _ => match live.choose(&mut self.rng) {
                        Some(&s) => vec![s],
                        None => return self.skipped(mode, "no live member"),
                    },
                };
                if let Some(&s) = targets.iter().find(|&&s| {
                    self.cluster.running(s) && !self.cluster.log_contains(s, POWER_LOSS_MARK)
                }) {
                    return self.skipped(
                        mode,
                        &format!(
                            "n{s} does not run the power-loss engine (needs a skiff chaos-bugs build)"
                        ),
                    );
                }
                self.next_id += 1;
                for &s in &targets {
                    self.cluster.kill(s);
                }
                let v = self.value(id, mode, vec![("nodes", Self::nodes_value(&targets))]);
                self.rec.nemesis(f, v);
                self.set_current(Some(format!("{} {:?}", mode.name(), targets)));
                Some(Active {
                    id,
                    mode,
                    undo: Undo::Restart(targets),
                })
            }
            Mode::FailpointsCrash | Mode::FailpointsSlow | Mode::FailpointsNet => {
                let Some(&target) = live.choose(&mut self.rng) else {
                    return self.skipped(mode, "no live member");
                };
                let Some(&spec) = failpoint_choices(mode).choose(&mut self.rng) else {
                    return self.skipped(mode, "no failpoints for this mode");
                };
                self.next_id += 1;
                self.cluster
                    .set_slot_env(target, vec![("FAILPOINTS".to_owned(), spec.to_owned())]);
                self.cluster.set_expect_exit(target, true);
                self.cluster.kill(target);
                let mut extra = vec![
                    ("nodes", Self::nodes_value(&[target])),
                    ("failpoints", Value::Str(spec.to_owned())),
                ];
                if let Err(e) = self.cluster.restart(target) {
                    extra.push(("error", Value::Str(format!("restart: {e}"))));
                } else {
                    // The member logs each failpoint it configured right at start.
                    let mut confirmed = false;
                    for _ in 0..20 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if self.cluster.log_contains(target, FAILPOINT_MARK) {
                            confirmed = true;
                            break;
                        }
                    }
                    if !confirmed {
                        extra.push((
                            "error",
                            Value::Str(
                                "the member did not confirm its failpoints (needs a skiff chaos-bugs build)"
                                    .into(),
                            ),
                        ));
                    }
                }
                let v = self.value(id, mode, extra);
                self.rec.nemesis(f, v);
                self.set_current(Some(format!("{} n{target} {spec}", mode.name())));
                Some(Active {
                    id,
                    mode,
                    undo: Undo::ClearFailpoints(target),
                })
            }
            Mode::CorruptOne | Mode::CorruptMajority => {
                self.start_corrupt(mode, id, &members, &live).await
            }
            Mode::ClockBump | Mode::ClockRate => {
                if !self.cluster.spec.faketime {
                    return self.skipped(mode, "members not started under libfaketime");
                }
                let Some(&target) = live.choose(&mut self.rng) else {
                    return self.skipped(mode, "no live member");
                };
                let skew = if mode == Mode::ClockBump {
                    let secs = self.rng.random_range(30..=300);
                    if self.rng.random_bool(0.5) {
                        format!("+{secs}")
                    } else {
                        format!("-{secs}")
                    }
                } else if self.rng.random_bool(0.5) {
                    "+0 x2".to_owned()
                } else {
                    "+0 x0.5".to_owned()
                };
                self.next_id += 1;
                let mut extra = vec![
                    ("nodes", Self::nodes_value(&[target])),
                    ("skew", Value::Str(skew.clone())),
                ];
                if let Err(e) = self.cluster.set_skew(target, &skew) {
                    extra.push(("error", Value::Str(e.to_string())));
                }
                let v = self.value(id, mode, extra);
                self.rec.nemesis(f, v);
                self.set_current(Some(format!("{} n{target} {skew}", mode.name())));
                Some(Active {
                    id,
                    mode,
                    undo: Undo::ResetClock(target),
                })
            }
        }
    }

    /// Removes an installed fault.
    pub async fn stop(&mut self, active: Active) {
        let (_, f) = active.mode.event_names();
        let mut extra = Vec::new();
        match active.undo {
            Undo::Restart(slots) => {
                let mut errors = Vec::new();
                for &s in &slots {
                    if let Err(e) = self.cluster.restart(s) {
                        errors.push(format!("n{s}: {e}"));
                    }
                }
                extra.push(("nodes", Self::nodes_value(&slots)));
                if !errors.is_empty() {
                    extra.push(("error", Value::Str(errors.join("; "))));
                }
            }
            Undo::ClearFailpoints(slot) => {
                extra.push(("nodes", Self::nodes_value(&[slot])));
                if let Err(e) = self.clear_failpoints(slot) {
                    extra.push(("error", Value::Str(e)));
                }
            }
            Undo::Resume(slots) => {
                for &s in &slots {
                    self.cluster.resume(s);
                }
                extra.push(("nodes", Self::nodes_value(&slots)));
            }
            Undo::Flush(slots) => {
                let mut errors = Vec::new();
                for &s in &slots {
                    if let Err(e) = self.iptables(s, partition::heal_rule()).await {
                        errors.push(e);
                    }
                }
                if !errors.is_empty() {
                    extra.push(("error", Value::Str(errors.join("; "))));
                }
            }
            Undo::ReAdd(slot) => {
                extra.push(("nodes", Self::nodes_value(&[slot])));
                match self.re_add(slot).await {
                    Ok(new_id) => extra.push(("id", Value::Str(format!("{new_id:x}")))),
                    Err(e) => extra.push(("error", Value::Str(e))),
                }
            }
            Undo::ResetClock(slot) => {
                extra.push(("nodes", Self::nodes_value(&[slot])));
                if let Err(e) = self.cluster.set_skew(slot, "+0") {
                    extra.push(("error", Value::Str(e.to_string())));
                }
            }
            Undo::Recover { slots, replace } => {
                extra.push(("nodes", Self::nodes_value(&slots)));
                let mut how = BTreeMap::new();
                let mut errors = Vec::new();
                for &slot in &slots {
                    let result = if replace {
                        self.replace(slot)
                            .await
                            .map(|id| format!("replaced as {id:x}"))
                    } else {
                        self.restore(slot)
                            .map(|()| "original bytes restored".to_owned())
                    };
                    match result {
                        Ok(h) => {
                            how.insert(node_name(slot), Value::Str(h));
                        }
                        Err(e) => errors.push(format!("n{slot}: {e}")),
                    }
                }
                if slots.is_empty() {
                    extra.push((
                        "note",
                        Value::Str("nothing to recover: no member refused".into()),
                    ));
                }
                extra.push(("recovered", Value::Map(how)));
                if !errors.is_empty() {
                    extra.push(("error", Value::Str(errors.join("; "))));
                }
            }
        }
        let v = self.value(active.id, active.mode, extra);
        self.rec.nemesis(f, v);
        self.set_current(None);
    }

    /// The WAL directory of a slot.
    fn wal_dir(&self, slot: usize) -> std::path::PathBuf {
        self.cluster.data_dir(slot).join(corrupt::WAL_DIR)
    }

    /// A corrupt fault: kill, damage, restart, watch each damaged member refuse (or not).
    async fn start_corrupt(
        &mut self,
        mode: Mode,
        id: u64,
        members: &[usize],
        live: &[usize],
    ) -> Option<Active> {
        let (f, _) = mode.event_names();
        if self.cluster.spec.target != crate::cluster::Target::Skiff {
            return self.skipped(mode, "the corrupt nemesis knows skiff's WAL only");
        }
        // Learn member ids (a refusing member is removed by id).
        self.cluster.statuses(Duration::from_secs(1)).await;
        let majority = mode == Mode::CorruptMajority;
        let mut term = 0;
        let targets: Vec<usize> = if majority {
            let Some(leader) = self.leader().await else {
                return self.skipped(mode, "no leader");
            };
            term = self
                .cluster
                .status_of(leader, Duration::from_secs(1))
                .await
                .map_or(0, |s| s.raft_term);
            let mut others: Vec<usize> = members.iter().copied().filter(|&s| s != leader).collect();
            others.shuffle(&mut self.rng);
            let mut t = vec![leader];
            t.extend(others.into_iter().take(members.len() / 2));
            t
        } else {
            match live.choose(&mut self.rng) {
                Some(&s) => vec![s],
                None => return self.skipped(mode, "no live member"),
            }
        };
        // corrupt-majority stops everyone: the intact members must not win the election
        // with their longer logs before the damaged ones have started (or refused).
        let stopped: Vec<usize> = if majority {
            members.to_vec()
        } else {
            targets.clone()
        };
        self.next_id += 1;
        for &s in &stopped {
            self.cluster.kill(s);
        }
        let span = if majority {
            corrupt::NEAR_END
        } else {
            corrupt::MIDDLE
        };
        let mut damage: Vec<(usize, corrupt::Damage)> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for &t in &targets {
            let count = self.rng.random_range(1..=3);
            match corrupt::damage(&self.wal_dir(t), span, count, &mut self.rng) {
                Ok(d) => damage.push((t, d)),
                Err(e) => errors.push(format!("n{t}: {e}")),
            }
        }
        let mut extra = vec![("nodes", Self::nodes_value(&targets))];
        if majority {
            extra.push(("stopped", Self::nodes_value(&stopped)));
        }
        if !errors.is_empty() {
            // Not installed: undo what was done and bring everyone back.
            for (_, d) in &damage {
                if let Err(e) = corrupt::undo(d) {
                    errors.push(format!("undo: {e}"));
                }
            }
            for &s in &stopped {
                if let Err(e) = self.cluster.restart(s) {
                    errors.push(format!("n{s} restart: {e}"));
                }
            }
            extra.push(("error", Value::Str(errors.join("; "))));
            let v = self.value(id, mode, extra);
            self.rec.nemesis(f, v);
            return None;
        }
        self.set_current(Some(format!("{} {:?}", mode.name(), targets)));
        for &(t, _) in &damage {
            self.cluster.set_expect_exit(t, true);
            if let Err(e) = self.cluster.restart(t) {
                errors.push(format!("n{t} restart: {e}"));
            }
        }
        let cluster = self.cluster.clone();
        let outcomes: Vec<corrupt::Outcome> =
            futures::future::join_all(damage.iter().map(|(t, d)| {
                let cluster = cluster.clone();
                let segment = d.file_name();
                async move { await_outcome(&cluster, *t, &segment, REFUSAL_LIMIT).await }
            }))
            .await;
        let mut refused = Vec::new();
        let mut started = Vec::new();
        for ((t, d), o) in damage.iter().zip(&outcomes) {
            if matches!(o, corrupt::Outcome::Started { .. }) {
                // It runs: from now on its exits are crashes again.
                self.cluster.set_expect_exit(*t, false);
                started.push(*t);
            } else {
                refused.push(*t);
                self.damaged.insert(*t, d.clone());
            }
        }
        if majority {
            if !started.is_empty() {
                // Let the damaged members elect a leader among themselves first: one that
                // reports itself leader in a term after the crash (a follower's restored vote
                // names the old leader, which is no leader until it wins a new election).
                let t0 = tokio::time::Instant::now();
                'settle: while t0.elapsed() < SETTLE_LIMIT {
                    for &s in &started {
                        if let Some(st) =
                            self.cluster.status_of(s, Duration::from_millis(300)).await
                            && st.raft_term > term
                            && st.leader != 0
                            && st.header.as_ref().is_some_and(|h| h.member_id == st.leader)
                        {
                            extra.push(("new-leader", Value::Str(node_name(s))));
                            break 'settle;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            for &s in stopped.iter().filter(|s| !targets.contains(s)) {
                if let Err(e) = self.cluster.restart(s) {
                    errors.push(format!("n{s} restart: {e}"));
                }
            }
        }
        let by_node = |f: &dyn Fn(&corrupt::Outcome) -> String| {
            Value::Map(
                damage
                    .iter()
                    .zip(&outcomes)
                    .map(|((t, _), o)| (node_name(*t), Value::Str(f(o))))
                    .collect(),
            )
        };
        extra.push((
            "damage",
            Value::Map(
                damage
                    .iter()
                    .map(|(t, d)| (node_name(*t), d.value()))
                    .collect(),
            ),
        ));
        extra.push(("outcomes", by_node(&|o| o.label().to_owned())));
        extra.push(("details", by_node(&|o| o.detail())));
        if !errors.is_empty() {
            extra.push(("restart-error", Value::Str(errors.join("; "))));
        }
        let v = self.value(id, mode, extra);
        self.rec.nemesis(f, v);
        Some(Active {
            id,
            mode,
            undo: Undo::Recover {
                slots: refused,
                replace: !majority,
            },
        })
    }

    /// Replaces a member that refused its log, as an operator would: MemberRemove of its id
    /// through a live member, wipe its data directory, MemberAdd with the same peer URL, start
    /// it with `--initial-cluster-state existing`. Returns the new member id. If the removal
    /// cannot be made, the original bytes are written back and it restarts as it was.
    async fn replace(&mut self, slot: usize) -> Result<u64, String> {
        self.cluster.kill(slot);
        let Some(old_id) = self.cluster.id(slot) else {
            self.restore(slot)?;
            return Err("member id unknown: restored the original bytes instead".into());
        };
        // Not a member from now on (its exits are not crashes, it is not picked as a target).
        self.cluster.set_member(slot, false);
        let mut removed = false;
        let mut last_error = String::new();
        for attempt in 0..MEMBERSHIP_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let Some(&via) = self.cluster.live().choose(&mut self.rng) else {
                last_error = "no live member".into();
                continue;
            };
            match self
                .cluster
                .member_remove(slot, via, self.rpc_timeout)
                .await
            {
                Ok(()) => removed = true,
                Err(e) => {
                    last_error = e;
                    // Indeterminate: look at the membership.
                    if let Some(list) = self.cluster.member_list(self.rpc_timeout).await {
                        removed = !list.iter().any(|(id, _, _)| *id == old_id);
                    }
                }
            }
            if removed {
                break;
            }
        }
        if !removed {
            self.cluster.set_member(slot, true);
            self.restore(slot)?;
            return Err(format!(
                "member remove failed ({last_error}): restored the original bytes instead"
            ));
        }
        self.damaged.remove(&slot);
        self.cluster.set_expect_exit(slot, false);
        let mut result = Err(String::new());
        for attempt in 0..MEMBERSHIP_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            result = self.re_add(slot).await;
            if result.is_ok() {
                break;
            }
        }
        // If the add failed, `heal_all` adds it back (the slot is no member now).
        result.map_err(|e| format!("removed, but member add failed: {e}"))
    }

    /// Writes the bytes a corrupt fault flipped back and restarts the member.
    fn restore(&mut self, slot: usize) -> Result<(), String> {
        if let Some(d) = self.damaged.remove(&slot) {
            self.cluster.kill(slot);
            corrupt::undo(&d).map_err(|e| e.to_string())?;
        }
        self.cluster.set_expect_exit(slot, false);
        self.cluster
            .restart(slot)
            .map_err(|e| format!("restart: {e}"))
    }

    /// Restarts a member without failpoints (it may have crashed at one meanwhile).
    fn clear_failpoints(&mut self, slot: usize) -> Result<(), String> {
        self.cluster.set_slot_env(slot, Vec::new());
        self.cluster.kill(slot);
        let result = self
            .cluster
            .restart(slot)
            .map_err(|e| format!("restart: {e}"));
        self.cluster.set_expect_exit(slot, false);
        result
    }

    /// Adds a removed slot back: `MemberAdd` through a live member, then start it wiped with
    /// `--initial-cluster-state existing`.
    async fn re_add(&mut self, slot: usize) -> Result<u64, String> {
        let live = self.cluster.live();
        let Some(&via) = live.choose(&mut self.rng) else {
            return Err("no live member to add through".into());
        };
        let id = self.cluster.member_add(slot, via, self.rpc_timeout).await?;
        self.cluster.wipe(slot).map_err(|e| e.to_string())?;
        self.cluster.join(slot).map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Undoes everything: flush every node's INPUT chain, resume paused and restart killed
    /// members, reset clocks, re-add removed initial members. Journaled as `heal`.
    pub async fn heal_all(&mut self) {
        let mut notes: Vec<String> = Vec::new();
        // A damaged WAL still waiting for its recovery (a fault cut short): original bytes back.
        let damaged: Vec<usize> = self.damaged.keys().copied().collect();
        for slot in damaged {
            match self.restore(slot) {
                Ok(()) => notes.push(format!("n{slot} restored its WAL's original bytes")),
                Err(e) => notes.push(format!("n{slot} restore: {e}")),
            }
        }
        for slot in 1..=self.cluster.slot_count() {
            if let Err(e) = self.iptables(slot, partition::heal_rule()).await {
                notes.push(format!("n{slot} flush: {e}"));
            }
            if self.cluster.paused(slot) {
                self.cluster.resume(slot);
                notes.push(format!("n{slot} resumed"));
            }
            if self.cluster.has_slot_env(slot) {
                match self.clear_failpoints(slot) {
                    Ok(()) => notes.push(format!("n{slot} restarted without failpoints")),
                    Err(e) => notes.push(format!("n{slot} {e}")),
                }
            }
            if self.cluster.spec.faketime {
                let _ = self.cluster.set_skew(slot, "+0");
            }
        }
        for slot in self.cluster.members() {
            if !self.cluster.running(slot) {
                match self.cluster.restart(slot) {
                    Ok(()) => notes.push(format!("n{slot} restarted")),
                    Err(e) => notes.push(format!("n{slot} restart: {e}")),
                }
            }
        }
        for slot in 1..=self.cluster.spec.nodes {
            if !self.cluster.members().contains(&slot) {
                // Try for a while: the cluster may still be electing.
                let mut result = Err(String::new());
                for _ in 0..10 {
                    result = self.re_add(slot).await;
                    if result.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                match result {
                    Ok(id) => notes.push(format!("n{slot} re-added as {id:x}")),
                    Err(e) => notes.push(format!("n{slot} re-add failed: {e}")),
                }
            }
        }
        self.set_current(None);
        self.rec.nemesis(
            "heal",
            Value::List(notes.into_iter().map(Value::Str).collect()),
        );
    }

    /// Waits (≤ `limit`) until every member answers and all agree on one live leader;
    /// journals `healthy` or `unhealthy`. Returns the seconds it took, or `None`.
    pub async fn await_healthy(&mut self, limit: Duration) -> Option<f64> {
        let t0 = tokio::time::Instant::now();
        let members = self.cluster.members();
        loop {
            let st = self.cluster.statuses(Duration::from_secs(1)).await;
            let leaders: std::collections::BTreeSet<u64> =
                st.values().map(|(_, l, _)| *l).collect();
            let all_answer = members.iter().all(|m| st.contains_key(m));
            if all_answer
                && leaders.len() == 1
                && leaders.iter().all(|&l| l != 0)
                && leaders.iter().all(|&l| {
                    self.cluster
                        .slot_of_id(l)
                        .is_some_and(|s| members.contains(&s))
                })
            {
                let secs = t0.elapsed().as_secs_f64();
                self.rec.nemesis(
                    "healthy",
                    Value::Map(BTreeMap::from([(
                        "after-s".to_owned(),
                        Value::Str(format!("{secs:.2}")),
                    )])),
                );
                return Some(secs);
            }
            if t0.elapsed() >= limit {
                let answering: Vec<usize> = st.keys().copied().collect();
                self.rec.nemesis(
                    "unhealthy",
                    Value::Map(BTreeMap::from([
                        ("answering".to_owned(), Self::nodes_value(&answering)),
                        ("members".to_owned(), Self::nodes_value(&members)),
                        (
                            "leaders".to_owned(),
                            Value::List(
                                leaders
                                    .iter()
                                    .map(|l| Value::Str(format!("{l:x}")))
                                    .collect(),
                            ),
                        ),
                    ])),
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_kinds_and_modes() {
        let s = NemesisSpec::parse("partition,kill-leader").unwrap();
        assert_eq!(s.requested, vec!["partition", "kill-leader"]);
        assert_eq!(s.modes.len(), 7);
        assert!(s.modes.contains(&Mode::PartitionOneWay));
        assert!(s.modes.contains(&Mode::KillLeader));
        assert!(!s.modes.contains(&Mode::KillOne));
        assert_eq!(NemesisSpec::parse("none").unwrap(), NemesisSpec::default());
        assert!(NemesisSpec::parse("flood").is_err());
        for m in ALL_MODES {
            assert!(all_kinds().any(|k| k == m.kind()), "{m:?}");
            assert!(NemesisSpec::covers(m.kind(), m));
        }
        assert_eq!(Mode::PartitionOneWay.kind(), "partition");
        assert_eq!(Mode::Loss.kind(), "loss");
        let c = NemesisSpec::parse("corrupt").unwrap();
        assert_eq!(c.modes, vec![Mode::CorruptOne, Mode::CorruptMajority]);
        assert_eq!(Mode::CorruptMajority.kind(), "corrupt");
        assert_eq!(
            Mode::CorruptOne.event_names(),
            ("corrupt-wal", "recover-member")
        );
        assert_eq!(
            NemesisSpec::parse("corrupt-majority").unwrap().modes,
            vec![Mode::CorruptMajority]
        );
    }

    #[test]
    fn schedule_is_seeded_fits_and_rotates() {
        let spec = NemesisSpec::parse("partition,kill").unwrap();
        let a = schedule(&spec, Duration::from_secs(120), 7);
        let b = schedule(&spec, Duration::from_secs(120), 7);
        assert_eq!(a, b);
        assert_ne!(a, schedule(&spec, Duration::from_secs(120), 8));
        assert_eq!(a[0].at_ms, 5_000);
        for w in a.windows(2) {
            assert!(w[0].at_ms + w[0].hold_ms + 2_000 <= w[1].at_ms);
        }
        let last = a.last().unwrap();
        assert!(last.at_ms + last.hold_ms <= 119_000);
        // Every round has one fault per requested name.
        for round in a.chunks(2).filter(|c| c.len() == 2) {
            let kinds: std::collections::BTreeSet<&str> =
                round.iter().map(|p| p.mode.kind()).collect();
            assert_eq!(kinds.len(), 2, "{round:?}");
        }
        // A kind's modes rotate without repeats.
        let partitions: Vec<Mode> = a
            .iter()
            .map(|p| p.mode)
            .filter(|m| m.kind() == "partition")
            .take(6)
            .collect();
        let distinct: std::collections::BTreeSet<Mode> = partitions.iter().copied().collect();
        assert_eq!(distinct.len(), partitions.len());
        assert!(schedule(&NemesisSpec::default(), Duration::from_secs(60), 1).is_empty());
        // Short runs start earlier, and still cover every requested name.
        let spec = NemesisSpec::parse("kill,partition-leader").unwrap();
        let s = schedule(&spec, Duration::from_secs(20), 42);
        assert_eq!(s[0].at_ms, 3_333);
        assert!(s.iter().all(|p| p.at_ms + p.hold_ms <= 19_000));
        assert!(s.iter().any(|p| p.mode == Mode::PartitionLeader));
        assert!(s.iter().any(|p| p.mode.kind() == "kill"));
    }
}
