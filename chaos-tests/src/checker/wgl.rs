//! The Wing–Gong / Lowe linearizability search over one partition (Porcupine's `checkSingle`).
//!
//! Call and return events are kept in a doubly linked list in real-time order. The search walks
//! the list from the front: at a call it tries to linearize that operation now (the model must
//! accept it, and the pair (set of linearized operations, model state) must not have been seen
//! before — that memo is what makes the search tractable); when it reaches the return of an
//! operation that is not yet linearized, no extension of the current prefix exists and it
//! backtracks. Linearized operations are unlinked ("lifted") so the walk restarts at the front.
//!
//! Refinements on top of plain WGL (after Lowe, "Testing for linearizability", 2017):
//! - *just-in-time linearization*: an operation is only linearized while its call precedes the
//!   first pending return, i.e. when some return forces a decision; operations that never return
//!   (`info`) never force anything, so once only they remain the history is linearizable (each is
//!   always legal, and placing it last is the same as it never having happened);
//! - *read-only operations are linearized eagerly*: if a read is legal now, a linearization that
//!   places it later can always be rearranged to place it now (it changes no state, and moving it
//!   earlier breaks no real-time constraint, since everything that returned before it was invoked
//!   is already linearized), so alternatives that postpone it are never explored;
//! - the search is resumable ([`Search::run`] takes a step budget), so the checker can interleave
//!   keys and find an easy violation before sinking its budget into a hard key;
//! - the wall-clock deadline and a memo byte budget are polled every few thousand steps and end
//!   the search undecided.
//!
//! On failure the search reports the longest linearizable prefix it found, the operation whose
//! return could not be passed at that point, and the concurrent operations it tried there.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Instant;

use super::model::Model;

/// One operation of a partition.
pub(crate) struct Entry<O> {
    /// The operation with its outcome.
    pub op: O,
    /// Position of its invocation in real-time order.
    pub call: usize,
    /// Position of its completion; `None` = never definitely returned (at +infinity).
    pub ret: Option<usize>,
}

/// How the search ended.
pub(crate) enum Outcome<S> {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists.
    Violation {
        /// Entry indexes of the longest linearizable prefix found, in linearization order.
        prefix: Vec<usize>,
        /// The model state after that prefix.
        state: S,
        /// The entry whose return was reached without it being linearizable.
        stuck: usize,
        /// The other not-yet-linearized entries invoked before that return (the candidates
        /// tried), at most `max_pending` of them.
        pending: Vec<usize>,
        /// How many candidates there were in all.
        pending_total: usize,
    },
    /// The deadline passed first.
    Deadline,
    /// The memo table outgrew its byte budget.
    MemoLimit,
}

/// Result of [`Search::run`].
pub(crate) enum Progress<S> {
    /// The search ended.
    Done(Outcome<S>),
    /// The step budget of this call ran out; call again to continue.
    Paused,
}

const NIL: usize = usize::MAX;
/// Deadline polling period (steps), a power of two.
const POLL: u64 = 1 << 12;

/// The longest prefix seen so far: (prefix, state after it, stuck entry, pending, pending total).
type Best<S> = (Vec<usize>, S, usize, Vec<usize>, usize);

/// A resumable search over one partition.
pub(crate) struct Search<S> {
    head: usize,
    next: Vec<usize>,
    prev: Vec<usize>,
    linearized: Bitset,
    cache: HashSet<(Bitset, S), BuildHasherDefault<FxHasher>>,
    /// Approximate bytes held by `cache`.
    memo_bytes: usize,
    /// (call node, state before it, linearized eagerly)
    calls: Vec<(usize, S, bool)>,
    state: S,
    /// The node the walk is at.
    node: usize,
    explored: u64,
    best: Option<Best<S>>,
    max_pending: usize,
}

impl<S: Clone + Eq + Hash> Search<S> {
    /// Prepares a search over `entries` (in any order).
    pub(crate) fn new<M: Model<State = S>>(
        model: &M,
        entries: &[Entry<M::Op>],
        max_pending: usize,
    ) -> Search<S> {
        let n = entries.len();
        // Node 2i is the call of entry i, node 2i+1 its return; node 2n is the list head.
        let head = 2 * n;
        let mut order: Vec<usize> = (0..2 * n).collect();
        order.sort_by_key(|&node| {
            let e = &entries[node / 2];
            if node.is_multiple_of(2) {
                (e.call, 0u8, node)
            } else {
                (e.ret.unwrap_or(usize::MAX), 1u8, node)
            }
        });
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![NIL; 2 * n + 1];
        let mut last = head;
        for &node in &order {
            next[last] = node;
            prev[node] = last;
            last = node;
        }
        let node = next[head];
        Search {
            head,
            next,
            prev,
            linearized: Bitset::new(n),
            cache: HashSet::default(),
            memo_bytes: 0,
            calls: Vec::new(),
            state: model.init(),
            node,
            explored: 0,
            best: None,
            max_pending,
        }
    }

    /// Search steps taken so far.
    pub(crate) fn explored(&self) -> u64 {
        self.explored
    }

    /// Approximate bytes held by the memo table.
    pub(crate) fn memo_bytes(&self) -> usize {
        self.memo_bytes
    }

    /// Continues the search for at most `steps` steps, until `deadline`, with at most
    /// `memo_limit` bytes of memo. `model` and `entries` must be the ones given to [`Search::new`].
    pub(crate) fn run<M: Model<State = S>>(
        &mut self,
        model: &M,
        entries: &[Entry<M::Op>],
        steps: u64,
        deadline: Option<Instant>,
        memo_limit: usize,
    ) -> Progress<S> {
        let entry_bytes = std::mem::size_of::<(Bitset, S)>() * 8 / 7
            + 1
            + std::mem::size_of_val(&*self.linearized.0)
            + 16;
        let head = self.head;
        let mut taken: u64 = 0;
        loop {
            if taken == steps {
                return Progress::Paused;
            }
            taken += 1;
            self.explored += 1;
            if self.explored.is_multiple_of(POLL) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Progress::Done(Outcome::Deadline);
                }
                if self.memo_bytes > memo_limit {
                    return Progress::Done(Outcome::MemoLimit);
                }
            }
            let node = self.node;
            if node == NIL {
                return Progress::Done(Outcome::Linearizable);
            }
            let i = node / 2;
            if node.is_multiple_of(2) {
                // A call: try to linearize entry i now.
                let mut backtrack = false;
                if let Some(new_state) = model.step(&self.state, &entries[i].op) {
                    let eager = model.is_read_only(&entries[i].op);
                    self.linearized.set(i);
                    let bytes = entry_bytes + model.heap_bytes(&new_state);
                    if self
                        .cache
                        .insert((self.linearized.clone(), new_state.clone()))
                    {
                        self.memo_bytes += bytes;
                        let before = std::mem::replace(&mut self.state, new_state);
                        self.calls.push((node, before, eager));
                        lift(&mut self.next, &mut self.prev, node);
                        self.node = self.next[head];
                        continue;
                    }
                    self.linearized.clear(i);
                    // Already explored without success; for an eager read that settles this
                    // state.
                    backtrack = eager;
                }
                if !backtrack {
                    self.node = self.next[node];
                    continue;
                }
            } else {
                // The return of an entry that is not linearized yet.
                if entries[i].ret.is_none() {
                    // Only operations that never returned are left; each is always legal.
                    return Progress::Done(Outcome::Linearizable);
                }
                if self
                    .best
                    .as_ref()
                    .is_none_or(|b| self.calls.len() > b.0.len())
                {
                    self.record_best(node);
                }
            }
            // Backtrack: undo the last linearization that was a real choice.
            loop {
                let Some((call, before, eager)) = self.calls.pop() else {
                    let (prefix, state, stuck, pending, pending_total) = match self.best.take() {
                        Some(b) => b,
                        None => (Vec::new(), model.init(), i, Vec::new(), 0),
                    };
                    return Progress::Done(Outcome::Violation {
                        prefix,
                        state,
                        stuck,
                        pending,
                        pending_total,
                    });
                };
                self.state = before;
                self.linearized.clear(call / 2);
                unlift(&mut self.next, &mut self.prev, call);
                if !eager {
                    self.node = self.next[call];
                    break;
                }
            }
        }
    }

    /// Records the current prefix as the longest, stuck at the return node `node`.
    fn record_best(&mut self, node: usize) {
        let stuck = node / 2;
        let prefix = self.calls.iter().map(|c| c.0 / 2).collect();
        let mut pending = Vec::new();
        let mut total = 0;
        let mut p = self.next[self.head];
        while p != node && p != NIL {
            if p.is_multiple_of(2) && p / 2 != stuck {
                total += 1;
                if pending.len() < self.max_pending {
                    pending.push(p / 2);
                }
            }
            p = self.next[p];
        }
        self.best = Some((prefix, self.state.clone(), stuck, pending, total));
    }
}

/// Unlinks a call node and its return node (the return is `call + 1`).
fn lift(next: &mut [usize], prev: &mut [usize], call: usize) {
    for node in [call, call + 1] {
        let (p, n) = (prev[node], next[node]);
        next[p] = n;
        if n != NIL {
            prev[n] = p;
        }
    }
}

/// Relinks what [`lift`] unlinked, in reverse order.
fn unlift(next: &mut [usize], prev: &mut [usize], call: usize) {
    for node in [call + 1, call] {
        let (p, n) = (prev[node], next[node]);
        next[p] = node;
        if n != NIL {
            prev[n] = node;
        }
    }
}

/// A fixed-size set of entry indexes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(n: usize) -> Bitset {
        Bitset(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The Firefox/rustc hash: fast, and good enough for memo keys.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
