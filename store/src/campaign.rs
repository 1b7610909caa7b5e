//! When a member campaigns: etcd's pre-vote in front of openraft 0.9's elections.
//!
//! openraft 0.9 has no pre-vote: a member that loses touch with the leader raises its term
//! and, once the partition heals, the leader's next AppendEntries learns of the higher
//! term and steps down — a healthy leader deposed by a member that was merely cut off.
//! Its own election timer also waits the leader lease *plus* the election timeout after
//! the last heartbeat (3–4 s with etcd's default 1 s timeout).
//!
//! So openraft's timer is off (`enable_elect: false`) and this module runs the timer
//! instead, as etcd's raft does with `PreVote` and `CheckQuorum`:
//! - a voter that has heard nothing from a leader for a randomized election timeout
//!   (`[timeout, 2 × timeout)`, drawn afresh for every attempt, as etcd does) first asks
//!   the other voters whether they *would* vote for it ([`PreVoteRequest`]); its term does
//!   not change;
//! - a voter says yes only if it is not the leader, has not heard from a leader within
//!   the election timeout itself (its leader lease), and the candidate's log is at least
//!   as up to date as its own ([`would_vote`]);
//! - only with a quorum of yeses (in every half of a joint configuration) does the member
//!   start a real openraft election.
//!
//! openraft's own leader lease (followers refuse real votes that soon after a heartbeat)
//! is then only a short guard ([`openraft_timeouts`]): a real vote comes only after a
//! quorum agreed the leader is gone, or from a leadership transfer's target
//! ([`crate::transfer`]), which campaigns without a pre-vote like etcd's `MsgTimeoutNow`.
//!
//! Elections can be held (not started here) for a while, which a transfer uses so that
//! only its target campaigns; a hold always carries a deadline and lifts by itself.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::{LogId, ServerState};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::StoreConfig;
use crate::network::{ForwardOutcome, Forwarded};
use crate::node::StoreNode;
use crate::types::MemberId;

/// A candidate's question to the other voters: would you vote for me now?
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: MemberId,
    /// The candidate's last log id (term and index).
    pub last_log: Option<LogId<MemberId>>,
}

/// openraft's `(election_timeout_min, election_timeout_max)` in milliseconds. openraft's
/// timer is off; the maximum is also its leader lease (the time after a heartbeat in which
/// a follower refuses real votes), kept short: pre-votes do the real guarding.
pub fn openraft_timeouts(config: &StoreConfig) -> (u64, u64) {
    if !config.pre_vote {
        // openraft's own timer: the election timeout, randomized up to twice it.
        let election = config.election_timeout.as_millis() as u64;
        return (election, election * 2);
    }
    let heartbeat = config.heartbeat_interval.as_millis() as u64;
    (heartbeat * 2, heartbeat * 3)
}

/// openraft's leader lease under [`openraft_timeouts`].
pub fn openraft_lease(config: &StoreConfig) -> Duration {
    Duration::from_millis(openraft_timeouts(config).1)
}

/// Elections held until a deadline (see [`crate::transfer`]), and whether the leader this
/// member follows has been silent for an election timeout.
#[derive(Default)]
pub struct ElectionHold {
    until: Mutex<Option<Instant>>,
    leader_silent: AtomicBool,
}

impl ElectionHold {
    /// Start no election for `duration` (or until [`ElectionHold::resume`]).
    pub fn hold_for(&self, duration: Duration) {
        *self.lock() = Some(Instant::now() + duration);
    }

    pub fn resume(&self) {
        *self.lock() = None;
    }

    pub fn is_held(&self) -> bool {
        matches!(*self.lock(), Some(until) if Instant::now() < until)
    }

    /// Whether the leader openraft still names has been silent for an election timeout:
    /// this member then counts as having no leader (etcd's pre-candidate has none), though
    /// openraft keeps naming it until another is elected.
    pub fn leader_silent(&self) -> bool {
        self.leader_silent.load(Ordering::Relaxed)
    }

    fn set_leader_silent(&self, silent: bool) {
        self.leader_silent.store(silent, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How long since this member last heard from a leader (or granted a vote, or campaigned):
/// openraft's vote time, refreshed by every AppendEntries from the leader. `None` if it
/// has not heard anything since it started. Also whether that vote is a committed one
/// (a leader's).
async fn quiet_time(node: &StoreNode) -> Option<(bool, Option<Duration>)> {
    node.raft
        .with_raft_state(|state| {
            let since = state
                .vote_last_modified()
                .map(|at| Instant::now().saturating_duration_since(at));
            (state.vote_ref().is_committed(), since)
        })
        .await
        .ok()
}

/// A voter's answer to a pre-vote (see the module docs).
pub async fn would_vote(node: &StoreNode, request: &PreVoteRequest) -> bool {
    if node.raft.metrics().borrow().state == ServerState::Leader {
        return false;
    }
    let Some((committed, since)) = quiet_time(node).await else {
        return false;
    };
    if committed && since.is_some_and(|since| since < node.config.election_timeout) {
        return false;
    }
    let mine = node.raft.data_metrics().borrow().last_log;
    request.last_log >= mine
}

/// A fresh randomized election timeout, `[timeout, 2 × timeout)` as etcd draws it.
fn randomized(timeout: Duration) -> Duration {
    let millis = timeout.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(millis..millis * 2))
}

/// The election timer: runs on every member until `stop`.
pub async fn run(node: Arc<StoreNode>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let election = node.config.election_timeout;
    let tick = (node.config.heartbeat_interval / 2).max(Duration::from_millis(10));
    let mut timeout = randomized(election);
    // Attempts are spaced by a timeout too, and the first waits one from start.
    let mut last_attempt = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let metrics = node.raft.metrics().borrow().clone();
        if metrics.state == ServerState::Leader || node.election_hold.is_held() {
            node.election_hold.set_leader_silent(false);
            last_attempt = Instant::now();
            continue;
        }
        let Some((_, since)) = quiet_time(&node).await else {
            return; // Raft has stopped.
        };
        node.election_hold
            .set_leader_silent(since.is_some_and(|since| since >= election));
        let membership = metrics.membership_config.membership().clone();
        if !membership.voter_ids().any(|id| id == node.id) {
            continue;
        }
        let alone = membership.voter_ids().all(|id| id == node.id);
        let quiet = since.map_or(last_attempt.elapsed(), |since| {
            since.min(last_attempt.elapsed())
        });
        if !alone && quiet < timeout {
            continue;
        }
        if alone && metrics.state == ServerState::Candidate && quiet < timeout {
            continue;
        }
        last_attempt = Instant::now();
        timeout = randomized(election);
        let request = PreVoteRequest {
            candidate: node.id,
            last_log: node.raft.data_metrics().borrow().last_log,
        };
        let configs = membership.get_joint_config().clone();
        if alone || pre_vote(&node, &configs, &request, election / 2).await {
            tracing::info!(
                term = metrics.current_term,
                "no leader heard from for {} ms and a quorum would vote for this member: campaigning",
                quiet.as_millis()
            );
            if node.raft.trigger().elect().await.is_err() {
                return;
            }
        } else {
            tracing::debug!("pre-vote lost: not campaigning");
        }
    }
}

/// Asks every other voter; true once the yeses (this member's own included) are a
/// majority of every configuration in `configs`.
async fn pre_vote(
    node: &StoreNode,
    configs: &[BTreeSet<MemberId>],
    request: &PreVoteRequest,
    timeout: Duration,
) -> bool {
    let mut yes = BTreeSet::from([node.id]);
    let quorum = |yes: &BTreeSet<MemberId>| {
        configs
            .iter()
            .all(|c| c.intersection(yes).count() * 2 > c.len())
    };
    if quorum(&yes) {
        return true;
    }
    let others: BTreeSet<MemberId> = configs.iter().flatten().copied().collect();
    let mut asks: FuturesUnordered<_> = others
        .into_iter()
        .filter(|id| *id != node.id)
        .filter_map(|id| node.leader_url(id).map(|url| (id, url)))
        .map(|(id, url)| async move {
            let outcome = node
                .channels
                .forward(&url, &Forwarded::PreVote(request.clone()), timeout)
                .await;
            (
                id,
                matches!(outcome, Ok(ForwardOutcome::PreVote { granted: true })),
            )
        })
        .collect();
    while let Some((id, granted)) = asks.next().await {
        if granted {
            yes.insert(id);
            if quorum(&yes) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn randomized_timeouts_stay_within_one_to_two_timeouts() {
        let base = Duration::from_millis(1000);
        for _ in 0..1000 {
            let t = randomized(base);
            assert!(t >= base && t < base * 2, "{t:?}");
        }
    }

    #[test]
    fn a_hold_lifts_by_itself_and_on_resume() {
        let hold = ElectionHold::default();
        assert!(!hold.is_held());
        hold.hold_for(Duration::from_secs(60));
        assert!(hold.is_held());
        hold.resume();
        assert!(!hold.is_held());
        hold.hold_for(Duration::ZERO);
        assert!(!hold.is_held());
    }

    #[test]
    fn openraft_lease_is_short_and_valid() {
        let mut config = StoreConfig::single("a");
        config.pre_vote = true;
        let (min, max) = openraft_timeouts(&config);
        assert!(min > config.heartbeat_interval.as_millis() as u64 && max > min);
        assert!(openraft_lease(&config) < config.election_timeout);
    }
}
