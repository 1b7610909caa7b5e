//! Proposal batching: concurrent client writes are gathered into one Raft log entry
//! (`Proposal::Batch`), so they share one append, one fsync and one apply. Batches form
//! naturally while earlier ones are in flight, as in etcd's raft loop. A proposal that
//! finds nothing in flight and nobody queued is proposed straight from its caller's task
//! (no hand-off to the batching task: two thread switches less for a lone writer).

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::Error;
use crate::types::{Applied, Command, MemberId, Proposal, Raft, Reply};

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
    raft: Raft,
    slots: Arc<Slots>,
    /// While a leadership transfer runs, new proposals wait (see [`Proposer::hold_until`]).
    hold: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
}

/// Proposals in flight (batches and direct proposals), at most [`MAX_BATCHES_IN_FLIGHT`].
#[derive(Default)]
struct Slots {
    in_flight: AtomicUsize,
    freed: Notify,
}

impl Slots {
    fn try_acquire(&self, limit: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// Releases a slot when dropped (also when the proposing caller goes away).
struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Proposer {
    /// Start the batching task for `raft` (needs a tokio runtime).
    pub fn start(raft: Raft) -> Proposer {
        let (queue, rx) = mpsc::channel(PROPOSAL_QUEUE);
        let slots = Arc::new(Slots::default());
        tokio::spawn(batch_loop(raft.clone(), rx, slots.clone()));
        Proposer {
            queue,
            raft,
            slots,
            hold: tokio::sync::watch::Sender::new(None),
        }
    }

    /// New proposals wait until [`Proposer::release`] or `deadline`, whichever comes
    /// first, as etcd's raft drops proposals while a leadership transfer runs: an entry
    /// replicated meanwhile would renew the followers' leader lease and make them refuse
    /// the transferee's votes.
    pub fn hold_until(&self, deadline: tokio::time::Instant) {
        self.hold.send_replace(Some(deadline));
    }

    pub fn release(&self) {
        self.hold.send_replace(None);
    }

    async fn wait_while_held(&self) {
        let mut hold = self.hold.subscribe();
        loop {
            let Some(deadline) = *hold.borrow_and_update() else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                changed = hold.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Propose one command and wait for its outcome.
    pub async fn propose(&self, command: Command) -> Proposed {
        if self.hold.borrow().is_some() {
            self.wait_while_held().await;
        }
        // Alone: nothing queued and nothing in flight.
        if self.queue.capacity() == self.queue.max_capacity() && self.slots.try_acquire(1) {
            let _slot = SlotGuard(self.slots.clone());
            return match write(&self.raft, Proposal::One(command)).await {
                Ok(Applied::One(reply)) => Proposed::Applied(reply),
                Ok(Applied::Batch(_)) => {
                    Proposed::Failed(Error::Internal("batch reply to a single command".into()))
                }
                Err(outcome) => outcome,
            };
        }
        let size = command.encoded_len();
        let (tx, rx) = oneshot::channel();
        if self.queue.send((command, size, tx)).await.is_err() {
            return Proposed::Failed(Error::Stopped);
        }
        rx.await.unwrap_or(Proposed::Failed(Error::Stopped))
    }
}

async fn batch_loop(
    raft: Raft,
    mut rx: mpsc::Receiver<(Command, usize, Waiter)>,
    slots: Arc<Slots>,
) {
    // Batches in flight are driven by this task itself (no task per batch): the reply
    // from Raft wakes this task, which answers the batch's waiters.
    let mut in_flight = FuturesUnordered::new();
    let mut carry: Option<(Command, usize, Waiter)> = None;
    let mut open = true;
    loop {
        if let Some(first) = carry.take() {
            if slots.try_acquire(MAX_BATCHES_IN_FLIGHT) {
                let (batch, rest) = gather(first, &mut rx);
                carry = rest;
                in_flight.push(drive(raft.clone(), batch, SlotGuard(slots.clone())));
                continue;
            }
            carry = Some(first);
            // Wait for a slot: one of our batches, or a direct proposal, finishing.
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                () = slots.freed.notified() => {}
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            item = rx.recv(), if open => match item {
                Some(first) => carry = Some(first),
                None => open = false,
            },
            else => return,
        }
    }
}

/// Commands of one batch and who waits for each.
type Batch = (Vec<Command>, Vec<Waiter>);

/// `first` plus whatever else is queued, within the batch limits; a proposal that does
/// not fit is returned to start the next batch.
fn gather(
    first: (Command, usize, Waiter),
    rx: &mut mpsc::Receiver<(Command, usize, Waiter)>,
) -> (Batch, Option<(Command, usize, Waiter)>) {
    let mut bytes = first.1;
    let mut commands = vec![first.0];
    let mut waiters = vec![first.2];
    let mut rest = None;
    while commands.len() < MAX_BATCH_COMMANDS {
        match rx.try_recv() {
            Ok(item) if bytes + item.1 <= MAX_BATCH_BYTES => {
                bytes += item.1;
                commands.push(item.0);
                waiters.push(item.2);
            }
            Ok(item) => {
                rest = Some(item);
                break;
            }
            Err(_) => break,
        }
    }
    ((commands, waiters), rest)
}

/// Propose one log entry and return the state machine's replies.
async fn write(raft: &Raft, proposal: Proposal) -> Result<Applied, Proposed> {
    match raft.client_write(proposal).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(Proposed::NotLeader(f.leader_id))
        }
        Err(RaftError::APIError(e)) => Err(Proposed::Failed(Error::Internal(e.to_string()))),
        Err(RaftError::Fatal(_)) => Err(Proposed::Failed(Error::Stopped)),
    }
}

/// Propose one batch as one log entry and answer its waiters.
async fn drive(raft: Raft, (mut commands, waiters): Batch, _slot: SlotGuard) {
    let single = commands.len() == 1;
    let proposal = match commands.pop() {
        Some(command) if single => Proposal::One(command),
        Some(last) => {
            commands.push(last);
            Proposal::Batch(commands)
        }
        None => return,
    };
    let outcome = write(&raft, proposal).await;
    match outcome {
        Ok(Applied::Batch(replies)) if !single && replies.len() == waiters.len() => {
            for (waiter, reply) in waiters.into_iter().zip(replies) {
                let _ = waiter.send(Proposed::Applied(reply));
            }
        }
        Ok(Applied::One(reply)) if single => {
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
}
