//! Leadership transfer (`MoveLeader`), built from openraft 0.9's runtime switches since it
//! has no transfer API: the leader asks every other voter to hold its elections, stops its
//! own heartbeats, waits until followers' leader leases have run out, and asks the target
//! to campaign at once. The target is the only member that may start an election then, so
//! it wins as long as its log is up to date (checked first). Every pause carries a
//! deadline and is lifted by the member itself when it passes, so a leader that dies
//! mid-transfer leaves no member unable to campaign. Best effort, as in etcd: a transfer
//! that does not finish in time reports etcd's timeout error.

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
            node.raft.runtime_config().elect(false);
            let raft = node.raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                raft.runtime_config().elect(true);
            });
        }
        TransferStep::ResumeElections => node.raft.runtime_config().elect(true),
        TransferStep::Campaign => {
            node.raft.runtime_config().elect(true);
            if node.raft.trigger().elect().await.is_err() {
                return ForwardOutcome::Failed(Error::Stopped);
            }
        }
    }
    ForwardOutcome::Admin(crate::network::AdminReply::Done)
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
    // 1. The target must have the whole log, or it could not win.
    let deadline = Instant::now() + election * 3;
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let voters: Vec<MemberId> = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != node.id && *id != target)
        .collect();
    // 2. Nobody but the target may campaign for the duration of the transfer.
    let hold = election * 6;
    for voter in &voters {
        send_step(
            node,
            *voter,
            TransferStep::HoldElections {
                millis: hold.as_millis() as u64,
            },
            rpc_timeout,
        )
        .await;
    }
    node.raft.runtime_config().elect(false);
    node.raft.runtime_config().heartbeat(false);
    // 3. Followers refuse votes while their leader lease lasts (one election timeout
    //    since the last heartbeat); let it run out, then ask the target to campaign.
    tokio::time::sleep(election + election / 2).await;
    let asked = send_step(node, target, TransferStep::Campaign, rpc_timeout).await;
    let moved = asked
        && node
            .raft
            .wait(Some(election * 3))
            .metrics(
                |m| m.current_leader == Some(target),
                "leadership moved to the target",
            )
            .await
            .is_ok();
    // 4. Back to normal everywhere, whatever happened.
    node.raft.runtime_config().heartbeat(true);
    node.raft.runtime_config().elect(true);
    for voter in &voters {
        send_step(node, *voter, TransferStep::ResumeElections, rpc_timeout).await;
    }
    if moved {
        Ok(())
    } else {
        Err(Error::LeaderTransferTimeout)
    }
}
