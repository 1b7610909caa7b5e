//! A rate-limited work queue with client-go's semantics: a key is queued at most once however
//! often it is added; a key being processed is never handed to a second worker — adding it
//! meanwhile marks it dirty and it is queued again when the worker is done; failures back off
//! per key exponentially (5 ms doubling to 1,000 s, client-go's default); delayed adds wait in
//! a timer set. The queue holds at most `max` keys (queued plus delayed); an add beyond that is
//! dropped and counted — controllers resync periodically, so a dropped key is only late.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// First retry delay of a failing key.
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(5);
/// Longest retry delay of a failing key.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(1000);

/// The queue's state; one lock.
struct State<K> {
    /// Ready keys in arrival order.
    ready: VecDeque<K>,
    /// The keys in `ready` (so an add of a queued key is a no-op).
    queued: HashSet<K>,
    /// Keys a worker holds.
    processing: HashSet<K>,
    /// Keys added while a worker held them: queued again at `done`.
    dirty: HashSet<K>,
    /// Delayed keys by due time; `sequence` keeps equal times apart.
    delayed: BTreeSet<(Instant, u64, K)>,
    /// The due time of each delayed key (only the earliest is kept).
    due: HashMap<K, (Instant, u64)>,
    /// Consecutive failures per key.
    failures: HashMap<K, u32>,
    sequence: u64,
    dropped: u64,
    shut_down: bool,
}

/// A deduplicating, rate-limited work queue shared by a controller's event handlers and its
/// workers. Cloning gives another handle to the same queue.
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    wake: Arc<Notify>,
    max: usize,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            wake: self.wake.clone(),
            max: self.max,
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> WorkQueue<K> {
    /// A queue holding at most `max` keys (ready plus delayed).
    pub fn new(max: usize) -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                delayed: BTreeSet::new(),
                due: HashMap::new(),
                failures: HashMap::new(),
                sequence: 0,
                dropped: 0,
                shut_down: false,
            })),
            wake: Arc::new(Notify::new()),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `key` now (a no-op if it is queued; dirty if a worker holds it).
    pub fn add(&self, key: K) {
        let mut state = self.lock();
        if self.add_locked(&mut state, key) {
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Whether the key became ready (so a worker should wake).
    fn add_locked(&self, state: &mut State<K>, key: K) -> bool {
        if state.shut_down || state.queued.contains(&key) {
            return false;
        }
        if state.processing.contains(&key) {
            state.dirty.insert(key);
            return false;
        }
        if state.ready.len() + state.delayed.len() >= self.max {
            state.dropped += 1;
            return false;
        }
        if let Some((at, seq)) = state.due.remove(&key) {
            state.delayed.remove(&(at, seq, key.clone()));
        }
        state.queued.insert(key.clone());
        state.ready.push_back(key);
        true
    }

    /// Queues `key` after `delay` (at once if zero); an earlier pending time wins.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut state = self.lock();
        if state.shut_down || state.queued.contains(&key) {
            return;
        }
        if let Some(&(current, seq)) = state.due.get(&key) {
            if current <= at {
                return;
            }
            state.delayed.remove(&(current, seq, key.clone()));
        } else if state.ready.len() + state.delayed.len() >= self.max {
            state.dropped += 1;
            return;
        }
        state.sequence += 1;
        let seq = state.sequence;
        state.delayed.insert((at, seq, key.clone()));
        state.due.insert(key, (at, seq));
        drop(state);
        // A sleeping worker may need to wake earlier than it planned.
        self.wake.notify_one();
    }

    /// Queues `key` after its back-off: 5 ms doubling per consecutive failure, at most
    /// 1,000 s. Returns the delay.
    pub fn add_rate_limited(&self, key: K) -> Duration {
        let failures = {
            let mut state = self.lock();
            let count = state.failures.entry(key.clone()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        let delay = retry_delay(failures);
        self.add_after(key, delay);
        delay
    }

    /// Clears `key`'s failure count (after a successful sync).
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Consecutive failures of `key`.
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process, waiting for one; `None` once the queue is shut down. The
    /// caller must call [`WorkQueue::done`] with it.
    pub async fn get(&self) -> Option<K> {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let next_due = {
                let mut state = self.lock();
                let now = Instant::now();
                while let Some((at, _, _)) = state.delayed.first() {
                    if *at > now {
                        break;
                    }
                    let Some((_, _, key)) = state.delayed.pop_first() else {
                        break;
                    };
                    state.due.remove(&key);
                    if state.processing.contains(&key) {
                        state.dirty.insert(key);
                    } else if state.queued.insert(key.clone()) {
                        state.ready.push_back(key);
                    }
                }
                if let Some(key) = state.ready.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    let more = !state.ready.is_empty();
                    drop(state);
                    if more {
                        self.wake.notify_one();
                    }
                    return Some(key);
                }
                if state.shut_down {
                    drop(state);
                    // Let the other workers see the shutdown too.
                    self.wake.notify_one();
                    return None;
                }
                state.delayed.first().map(|(at, _, _)| *at)
            };
            match next_due {
                Some(at) => {
                    tokio::select! {
                        _ = &mut wake => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    /// Marks `key` processed; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &K) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.remove(key) && self.add_locked(&mut state, key.clone()) {
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Stops handing out keys: waiting and future `get`s return `None`.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Keys ready or delayed.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.ready.len() + state.delayed.len()
    }

    /// Whether no key is ready or delayed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

/// The back-off after `failures` consecutive failures.
pub fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    RETRY_BASE_DELAY
        .saturating_mul(1u32 << exponent)
        .min(RETRY_MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_never_held_by_two_workers() {
        let queue = WorkQueue::new(16);
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        let first = queue.get().await.unwrap();
        assert_eq!(first, "a");
        // Added while held: not handed out again until done.
        queue.add("a");
        assert_eq!(queue.get().await.unwrap(), "b");
        let nothing = tokio::time::timeout(Duration::from_millis(20), queue.get()).await;
        assert!(nothing.is_err(), "a held key was handed out twice");
        queue.done(&"a");
        assert_eq!(queue.get().await.unwrap(), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_and_rate_limited_keys_wait_their_turn() {
        let queue = WorkQueue::new(16);
        queue.add_after("late", Duration::from_secs(5));
        queue.add_after("soon", Duration::from_secs(1));
        let started = Instant::now();
        assert_eq!(queue.get().await.unwrap(), "soon");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(queue.get().await.unwrap(), "late");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        queue.done(&"soon");
        assert_eq!(queue.add_rate_limited("soon"), Duration::from_millis(5));
        queue.done(&"late");
        // A second failure backs off longer; the pending earlier time stays.
        assert_eq!(queue.add_rate_limited("soon"), Duration::from_millis(10));
        assert_eq!(queue.get().await.unwrap(), "soon");
        queue.done(&"soon");
        assert_eq!(queue.add_rate_limited("soon"), Duration::from_millis(20));
        queue.forget(&"soon");
        assert_eq!(queue.failures(&"soon"), 0);
        // An immediate add overtakes the pending delay.
        queue.add("soon");
        let before = Instant::now();
        assert_eq!(queue.get().await.unwrap(), "soon");
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[test]
    fn back_off_doubles_to_its_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(5));
        assert_eq!(retry_delay(2), Duration::from_millis(10));
        assert_eq!(retry_delay(100), RETRY_MAX_DELAY);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let queue = WorkQueue::new(2);
        queue.add(1);
        queue.add(2);
        queue.add(3);
        queue.add_after(4, Duration::from_secs(1));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.dropped(), 2);
    }

    #[tokio::test]
    async fn shut_down_releases_waiting_workers() {
        let queue: WorkQueue<u32> = WorkQueue::new(4);
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.get().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.shut_down();
        assert_eq!(waiting.await.unwrap(), None);
        queue.add(1);
        assert_eq!(queue.get().await, None);
    }
}
