//! Read-index batching: linearizable reads that arrive together share one read index.
//! A reader queues itself; one task per kind takes every queued reader, obtains ONE read
//! index (a leadership check through a quorum on the leader, or a request to the leader
//! from a follower) and hands it to all of them. Readers arriving while a check is running
//! wait for the next one, so every read index was obtained after its reader arrived —
//! what linearizability needs (etcd batches its ReadIndex requests the same way).

use std::sync::Weak;

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::node::StoreNode;

/// Readers waiting for the next read index; a full queue makes readers wait.
pub const READ_INDEX_QUEUE: usize = 4096;

/// The outcome of one read-index request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadIndex {
    /// Reads are linearizable once this member has applied this log index.
    At(Option<u64>),
    /// No leader or no quorum right now: try again shortly.
    Retry,
}

type Waiter = oneshot::Sender<Result<ReadIndex, Error>>;

/// Which read index a batcher obtains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadIndexKind {
    /// For this member's own reads: through the leader, wherever it is.
    Local,
    /// For followers asking this member as leader: refused when it is not the leader.
    AsLeader,
}

/// Handle for queueing a reader.
pub struct ReadIndexBatcher {
    queue: mpsc::Sender<Waiter>,
}

/// The batching task's side of a [`ReadIndexBatcher`] (see [`ReadIndexQueue::spawn`]).
pub struct ReadIndexQueue {
    queue: mpsc::Receiver<Waiter>,
    kind: ReadIndexKind,
}

impl ReadIndexBatcher {
    pub fn new(kind: ReadIndexKind) -> (ReadIndexBatcher, ReadIndexQueue) {
        let (queue, rx) = mpsc::channel(READ_INDEX_QUEUE);
        (
            ReadIndexBatcher { queue },
            ReadIndexQueue { queue: rx, kind },
        )
    }

    /// A read index obtained after this call began.
    pub async fn read_index(&self) -> Result<ReadIndex, Error> {
        let (tx, rx) = oneshot::channel();
        self.queue.send(tx).await.map_err(|_| Error::Stopped)?;
        rx.await.unwrap_or(Err(Error::Stopped))
    }
}

impl ReadIndexQueue {
    /// Start the batching task for `node` (it ends with the node).
    pub fn spawn(self, node: Weak<StoreNode>) {
        tokio::spawn(self.run(node));
    }

    async fn run(mut self, node: Weak<StoreNode>) {
        let mut waiters = Vec::new();
        while let Some(first) = self.queue.recv().await {
            waiters.push(first);
            while let Ok(next) = self.queue.try_recv() {
                waiters.push(next);
            }
            let Some(node) = node.upgrade() else {
                return;
            };
            let outcome = match self.kind {
                ReadIndexKind::Local => node.read_index_once().await,
                ReadIndexKind::AsLeader => node.leader_read_index_once().await,
            };
            drop(node);
            for waiter in waiters.drain(..) {
                let _ = waiter.send(outcome.clone());
            }
        }
    }
}
