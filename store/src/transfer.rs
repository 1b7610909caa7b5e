//! Leadership transfer (`MoveLeader`, and a stopping leader's hand-off), built on the
//! election timer of [`crate::campaign`] since openraft 0.9 has no transfer API. As etcd's
//! raft does it: the leader stops taking proposals, waits until the target has its whole
//! log, holds every other voter's elections, stops its heartbeats, lets openraft's short
//! leader lease run out on the followers, and tells the target to campaign at once (no
//! pre-vote: etcd's `MsgTimeoutNow`). The target is then the only member campaigning, with
//! a log as long as anyone's, so it wins one election; it is asked again if the first
//! vote races a lease. Every hold carries a deadline and lifts by itself, so a leader that
//! dies mid-transfer leaves no member unable to campaign. Best effort, as in etcd: a
//! transfer that does not finish in time reports etcd's timeout error.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::Error;
use crate::network::{ForwardOutcome, Forwarded};
use crate::node::StoreNode;
use crate::types::MemberId;

/// What the leader asks of other members during a transfer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TransferStep {
    /// Do not start elections for this long (then resume by yourself).
    HoldElections { millis: u64 },
    /// Resume elections now.
    ResumeElections,
    /// Campaign now.
    Campaign,
}

/// Run on any member: apply one transfer step.
pub async fn handle_step(node: &StoreNode, step: TransferStep) -> ForwardOutcome {
    match step {
        TransferStep::HoldElections { millis } => {
            hold_elections(node, Duration::from_millis(millis.min(MAX_HOLD_MILLIS)));
        }
        TransferStep::ResumeElections => resume_elections(node),
        TransferStep::Campaign => {
            resume_elections(node);
            if node.raft.trigger().elect().await.is_err() {
                return ForwardOutcome::Failed(Error::Stopped);
            }
        }
    }
    ForwardOutcome::Admin(crate::network::AdminReply::Done)
}

/// The longest election hold a member accepts (a hold always ends by itself).
const MAX_HOLD_MILLIS: u64 = 60_000;

/// Start no election for `duration`: the pre-vote timer's hold, or without `--pre-vote`
/// openraft's own timer switched off and back on by itself after `duration`.
fn hold_elections(node: &StoreNode, duration: Duration) {
    node.election_hold.hold_for(duration);
    if !node.config.pre_vote {
        node.raft.runtime_config().elect(false);
        let raft = node.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            raft.runtime_config().elect(true);
        });
    }
}

fn resume_elections(node: &StoreNode) {
    node.election_hold.resume();
    if !node.config.pre_vote {
        node.raft.runtime_config().elect(true);
    }
}

async fn send_step(
    node: &StoreNode,
    member: MemberId,
    step: TransferStep,
    timeout: Duration,
) -> bool {
    let Some(url) = node.leader_url(member) else {
        return false;
    };
    matches!(
        node.channels
            .forward(&url, &Forwarded::Transfer(step), timeout)
            .await,
        Ok(ForwardOutcome::Admin(_))
    )
}

/// Move leadership from this member (the leader) to `target` (a voter).
pub async fn move_leader(node: &StoreNode, target: MemberId) -> Result<(), Error> {
    let election = node.config.election_timeout;
    let rpc_timeout = election;
    let lease = crate::campaign::openraft_lease(&node.config);
    let started = Instant::now();
    // Every hold below ends by itself by then, whatever happens to this task.
    let hold = election * 4 + lease * 2;
    node.proposer.hold_until(started + hold);
    let restore = RestoreOnDrop(node);
    let moved = transfer(node, target, hold, lease, rpc_timeout).await;
    // Back to normal everywhere, whatever happened.
    drop(restore);
    let others = other_voters(node, target);
    for voter in others.iter().chain([&target]) {
        send_step(node, *voter, TransferStep::ResumeElections, rpc_timeout).await;
    }
    match moved {
        Ok(()) => {
            tracing::info!(
                to = %format!("{target:x}"),
                took_ms = started.elapsed().as_millis() as u64,
                "leadership transferred"
            );
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// Puts this member's heartbeats, elections and proposals back to normal when dropped —
/// also when the transfer's future is dropped midway (its caller went away).
struct RestoreOnDrop<'a>(&'a StoreNode);

impl Drop for RestoreOnDrop<'_> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
        resume_elections(self.0);
        self.0.proposer.release();
    }
}

fn other_voters(node: &StoreNode, target: MemberId) -> Vec<MemberId> {
    node.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != node.id && *id != target)
        .collect()
}

async fn transfer(
    node: &StoreNode,
    target: MemberId,
    hold: Duration,
    lease: Duration,
    rpc_timeout: Duration,
) -> Result<(), Error> {
    let election = node.config.election_timeout;
    // 1. The target must have the whole log (no new entries come now), or it could not win.
    let deadline = Instant::now() + election * 2;
    loop {
        let metrics = node.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(node.id) {
            return Err(Error::NotLeader);
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&target).cloned().flatten())
            .map(|log_id| log_id.index)
            .unwrap_or(0);
        if matched >= last {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::LeaderTransferTimeout);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 2. Nobody but the target campaigns until the transfer is over.
    hold_elections(node, hold);
    let millis = hold.as_millis() as u64;
    for voter in other_voters(node, target) {
        send_step(
            node,
            voter,
            TransferStep::HoldElections { millis },
            rpc_timeout,
        )
        .await;
    }
    // 3. No more heartbeats: the followers' openraft lease (refusing votes right after a
    //    heartbeat) runs out, then the target campaigns; asked again if a vote raced it.
    node.raft.runtime_config().heartbeat(false);
    let heartbeat = node.config.heartbeat_interval;
    tokio::time::sleep(lease + heartbeat).await;
    let deadline = Instant::now() + election * 2;
    while Instant::now() < deadline {
        if !send_step(node, target, TransferStep::Campaign, rpc_timeout).await {
            tokio::time::sleep(heartbeat).await;
            continue;
        }
        let won = node
            .raft
            .wait(Some(lease * 2 + heartbeat * 2))
            .metrics(
                |m| m.current_leader == Some(target),
                "leadership moved to the target",
            )
            .await
            .is_ok();
        if won {
            return Ok(());
        }
    }
    Err(Error::LeaderTransferTimeout)
}

/// A stopping leader hands leadership to its most up-to-date voter first (etcd does the
/// same), within `budget`; then the rest of the cluster does not wait out an election
/// timeout. Returns whether it moved.
pub async fn hand_off_before_stop(node: &StoreNode, budget: Duration) -> bool {
    let metrics = node.raft.metrics().borrow().clone();
    if metrics.current_leader != Some(node.id) {
        return false;
    }
    let voters: Vec<MemberId> = metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != node.id)
        .collect();
    let matched = |id: &MemberId| {
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(id).cloned().flatten())
            .map(|log_id| log_id.index)
    };
    let Some(target) = voters.iter().copied().max_by_key(|id| matched(id)) else {
        return false;
    };
    tracing::info!(to = %format!("{target:x}"), "leader stopping: handing leadership over");
    match tokio::time::timeout(budget, move_leader(node, target)).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!("leadership hand-off before stop failed: {err}");
            false
        }
        Err(_) => {
            tracing::warn!(
                "leadership hand-off before stop did not finish within {} ms",
                budget.as_millis()
            );
            false
        }
    }
}
