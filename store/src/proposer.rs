//! Proposal batching: concurrent client writes are gathered into one Raft log entry
//! (`Command::Batch`), so they share one append, one fsync and one apply. Batches form
//! naturally while earlier ones are in flight, as in etcd's raft loop.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::Error;
use crate::types::{Command, MemberId, Raft, Reply};

/// Proposals waiting to be batched; a full queue makes proposers wait.
pub const PROPOSAL_QUEUE: usize = 4096;
/// Most commands in one log entry.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// Most encoded bytes of commands in one log entry (a single larger command goes alone).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches replicating at the same time.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// What became of one proposal.
#[derive(Clone, Debug)]
pub enum Proposed {
    Applied(Reply),
    /// Not proposed: this member is not the leader (the leader, if known).
    NotLeader(Option<MemberId>),
    Failed(Error),
}

type Waiter = oneshot::Sender<Proposed>;

/// Handle for submitting proposals to the batching task.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<(Command, usize, Waiter)>,
}

impl Proposer {
    /// Start the batching task for `raft` (needs a tokio runtime).
    pub fn start(raft: Raft) -> Proposer {
        let (queue, rx) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(batch_loop(raft, rx));
        Proposer { queue }
    }

    /// Propose one command and wait for its outcome.
    pub async fn propose(&self, command: Command) -> Proposed {
        let size = command.encoded_len();
        let (tx, rx) = oneshot::channel();
        if self.queue.send((command, size, tx)).await.is_err() {
            return Proposed::Failed(Error::Stopped);
        }
        rx.await.unwrap_or(Proposed::Failed(Error::Stopped))
    }
}

async fn batch_loop(raft: Raft, mut rx: mpsc::Receiver<(Command, usize, Waiter)>) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    let mut carry: Option<(Command, usize, Waiter)> = None;
    loop {
        // Wait for a free slot first: proposals arriving meanwhile join the next batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut bytes = first.1;
        let mut commands = vec![first.0];
        let mut waiters = vec![first.2];
        while commands.len() < MAX_BATCH_COMMANDS {
            match rx.try_recv() {
                Ok(item) if bytes + item.1 <= MAX_BATCH_BYTES => {
                    bytes += item.1;
                    commands.push(item.0);
                    waiters.push(item.2);
                }
                Ok(item) => {
                    carry = Some(item);
                    break;
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let single = commands.len() == 1;
            let command = if single {
                commands.pop().unwrap_or(Command::Batch(Vec::new()))
            } else {
                Command::Batch(commands)
            };
            let outcome = match raft.client_write(command).await {
                Ok(response) => Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(Proposed::NotLeader(f.leader_id))
                }
                Err(RaftError::APIError(e)) => {
                    Err(Proposed::Failed(Error::Internal(e.to_string())))
                }
                Err(RaftError::Fatal(_)) => Err(Proposed::Failed(Error::Stopped)),
            };
            match outcome {
                Ok(Reply::Batch(replies)) if !single && replies.len() == waiters.len() => {
                    for (waiter, reply) in waiters.into_iter().zip(replies) {
                        let _ = waiter.send(Proposed::Applied(reply));
                    }
                }
                Ok(reply) if single => {
                    for waiter in waiters {
                        let _ = waiter.send(Proposed::Applied(reply.clone()));
                    }
                }
                Ok(_) => {
                    for waiter in waiters {
                        let _ = waiter.send(Proposed::Failed(Error::Internal(
                            "batch reply does not match the batch".into(),
                        )));
                    }
                }
                Err(outcome) => {
                    for waiter in waiters {
                        let _ = waiter.send(outcome.clone());
                    }
                }
            }
        });
    }
}
