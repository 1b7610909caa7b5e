//! Per-key linearizability checking of register and key-value histories.
//!
//! [`check`] partitions a history by `key` (linearizability is compositional, so each key is checked
//! on its own), picks the model from the functions used on the key, and runs the Wing–Gong / Lowe
//! search (module `wgl`) on each partition, under one wall-clock deadline for the whole history.
//!
//! **Register** (`read` / `write` / `cas`; the register starts absent):
//! - `ok` read: returned `value` (`null` = absent); `ok` write: set `value`;
//!   `ok` cas `[from, to]`: the register was present and equal to `from`, and became `to`;
//! - `fail` cas without `error`: the compare failed (the register was absent or not `from`) —
//!   a definite observation with no effect;
//! - any other `fail` (including a cas with an `error`, and `:fail :read :timed-out`): the
//!   operation did not take effect and observed nothing, so it is left out;
//! - `info`, or no completion at all: indeterminate. Writes and cas may have taken effect at any
//!   point after their invocation, or never (they "return at +infinity"); reads are left out, as a
//!   read with an unknown result constrains nothing.
//!
//! **Key-value** (`get` / `put` / `append`; Porcupine's `kv` model): a key reads as `""` until
//! written (a `null` get result is read as `""`), `put` replaces the string, `append` concatenates
//! to it; completions are read as for the register.
//!
//! Keys are searched in rounds with a doubling step budget (each key's search resumes where it
//! paused), so a quick violation on any key is found before the time goes into a hard one — the
//! effect Porcupine gets from checking partitions in parallel and stopping at the first failure.
//! The deadline (and a memo memory budget) is polled every few thousand search steps, so it may be
//! overrun by a fraction of a second.
//!
//! The verdict is [`Verdict::Linearizable`], [`Verdict::NotLinearizable`] with a small
//! [`Counterexample`] (the key, the end of the longest linearizable prefix, and the operations that
//! could not be linearized after it), or [`Verdict::Unknown`] when the deadline passed first — the
//! checker never guesses.
//!
//! The submodules hold the other checkers of the suite: [`revisions`] (global revision order),
//! [`append`] (Elle-style list-append), [`watch`] (watch guarantees), [`lease`] (lease safety) and
//! [`k8s`] (the Kubernetes-like traffic profile).

pub mod append;
pub mod k8s;
pub mod lease;
mod model;
pub mod revisions;
pub mod watch;
mod wgl;

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::history::{F, History, HistoryError, Op, OpPair, OpType, Process, Value};
use model::{KvModel, KvOp, Model, RegisterModel, RegisterOp};
use wgl::{Entry, Outcome, Progress, Search};

/// A history the checker cannot interpret.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The history is malformed (unpaired or mismatched events).
    #[error(transparent)]
    History(#[from] HistoryError),
    /// A client operation whose function no model understands.
    #[error("event {position}: no linearizability model for function {f:?}")]
    UnsupportedFunction {
        /// 0-based position of its invocation.
        position: usize,
        /// The function.
        f: F,
    },
    /// One key is used both as a register (`read`/`write`/`cas`) and as a key-value string
    /// (`get`/`put`/`append`).
    #[error("key {key:?}: register and key-value operations are mixed (event {position})")]
    MixedModels {
        /// The key.
        key: Option<String>,
        /// 0-based position of the first operation that disagrees.
        position: usize,
    },
    /// An operation's argument or result does not fit its model.
    #[error("event {position}: {message}")]
    BadValue {
        /// 0-based position of the offending event.
        position: usize,
        /// What is wrong.
        message: String,
    },
}

/// Settings of a check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Wall-clock budget for the whole history; when it runs out the verdict is
    /// [`Verdict::Unknown`]. `None` = no limit.
    pub timeout: Option<Duration>,
    /// At most this many operations are shown from the linearizable prefix, and at most this many
    /// concurrent candidates, in a counterexample.
    pub excerpt_ops: usize,
    /// Stop at the first key found not linearizable (the verdict is decided then).
    pub stop_at_first_violation: bool,
    /// Memory budget of the search's memo tables, all keys together (approximate bytes); a key
    /// whose search would need more is reported undecided.
    pub max_memo_bytes: usize,
}

impl Default for CheckOptions {
    /// 30 s, 5-operation excerpts, stop at the first violation, 1 GiB of memo.
    fn default() -> CheckOptions {
        CheckOptions {
            timeout: Some(Duration::from_secs(30)),
            excerpt_ops: 5,
            stop_at_first_violation: true,
            max_memo_bytes: 1 << 30,
        }
    }
}

impl CheckOptions {
    /// The defaults with another timeout.
    pub fn with_timeout(timeout: Duration) -> CheckOptions {
        CheckOptions {
            timeout: Some(timeout),
            ..CheckOptions::default()
        }
    }
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key has a linearization.
    Linearizable,
    /// Some key has none; the counterexample is for the first such key.
    NotLinearizable {
        /// A small excerpt explaining the violation.
        counterexample: Box<Counterexample>,
    },
    /// Not decided (the deadline passed); never a guess.
    Unknown {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// Jepsen's `valid?`: `Some(true)`, `Some(false)`, or `None` for unknown.
    pub fn valid(&self) -> Option<bool> {
        match self {
            Verdict::Linearizable => Some(true),
            Verdict::NotLinearizable { .. } => Some(false),
            Verdict::Unknown { .. } => None,
        }
    }

    /// `"true"`, `"false"` or `"unknown"`.
    pub fn label(&self) -> &'static str {
        match self.valid() {
            Some(true) => "true",
            Some(false) => "false",
            None => "unknown",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable { counterexample } => {
                write!(f, "not linearizable: {counterexample}")
            }
            Verdict::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// One operation as shown in a counterexample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSummary {
    /// Its process.
    pub process: Process,
    /// Its function.
    pub f: F,
    /// Its argument (the invocation's value).
    pub value: Value,
    /// How it completed; [`OpType::Invoke`] if it never did.
    pub outcome: OpType,
    /// The completion's value for `ok` reads and gets (what was read); `null` otherwise.
    pub result: Value,
    /// `index` of the invocation event (its position when the history has none).
    pub invoke_index: u64,
    /// `index` of the completion event.
    pub complete_index: Option<u64>,
    /// Invocation time (ns), when recorded.
    pub invoke_time: Option<u64>,
    /// Completion time (ns), when recorded.
    pub complete_time: Option<u64>,
}

impl fmt::Display for OpSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {} {}", self.process, self.f)?;
        match self.f {
            F::Read | F::Get => {}
            _ => write!(f, " {}", self.value)?,
        }
        match self.outcome {
            OpType::Ok if matches!(self.f, F::Read | F::Get) => write!(f, " -> {}", self.result)?,
            OpType::Ok => f.write_str(" ok")?,
            OpType::Fail => f.write_str(" failed (compare false)")?,
            OpType::Info => f.write_str(" indeterminate (info)")?,
            OpType::Invoke => f.write_str(" indeterminate (never completed)")?,
        }
        match self.complete_index {
            Some(c) => write!(f, ", events {}..{}", self.invoke_index, c)?,
            None => write!(f, ", invoked at event {}", self.invoke_index)?,
        }
        if let Some(t) = self.invoke_time {
            write!(f, ", t={:.6}s", t as f64 / 1e9)?;
            if let Some(c) = self.complete_time {
                write!(f, "..{:.6}s", c as f64 / 1e9)?;
            }
        }
        Ok(())
    }
}

/// Why a key is not linearizable, in a few operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// The key (`None` for an un-keyed history).
    pub key: Option<String>,
    /// Operations of the key that the checker considered.
    pub ops: usize,
    /// Length of the longest linearizable prefix found.
    pub prefix_len: usize,
    /// Its last operations, in linearization order (at most `excerpt_ops`).
    pub prefix_tail: Vec<OpSummary>,
    /// The model state after that prefix.
    pub state: String,
    /// The operation that completed without any way to linearize it after the prefix.
    pub stuck: OpSummary,
    /// Other operations concurrent with it that were tried there (at most `excerpt_ops`).
    pub concurrent: Vec<OpSummary>,
    /// How many concurrent candidates there were in all.
    pub concurrent_total: usize,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "key {k:?}: ")?,
            None => f.write_str("history: ")?,
        }
        writeln!(
            f,
            "the longest linearizable prefix has {} of {} operations and leaves the state at {}; \
             after it, [{}] cannot be linearized{}",
            self.prefix_len,
            self.ops,
            self.state,
            self.stuck,
            if self.concurrent_total == 0 {
                String::new()
            } else {
                format!(
                    " in any order with its {} concurrent pending operation(s)",
                    self.concurrent_total
                )
            }
        )?;
        if !self.prefix_tail.is_empty() {
            writeln!(
                f,
                "  end of the linearizable prefix ({} of {}):",
                self.prefix_tail.len(),
                self.prefix_len
            )?;
            for op in &self.prefix_tail {
                writeln!(f, "    {op}")?;
            }
        }
        writeln!(f, "  cannot be linearized: {}", self.stuck)?;
        if !self.concurrent.is_empty() {
            writeln!(
                f,
                "  concurrent candidates tried ({} of {}):",
                self.concurrent.len(),
                self.concurrent_total
            )?;
            for op in &self.concurrent {
                writeln!(f, "    {op}")?;
            }
        }
        Ok(())
    }
}

/// The result for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport {
    /// The key.
    pub key: Option<String>,
    /// Operations checked (after leaving out those that constrain nothing).
    pub ops: usize,
    /// Its verdict; `Unknown` also for keys skipped after the deadline or a violation.
    pub verdict: Verdict,
    /// Search steps taken.
    pub explored: u64,
    /// Time spent on this key.
    pub elapsed: Duration,
}

/// The result of a check, with per-key detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The overall verdict: not linearizable if any key is, else unknown if any key is, else
    /// linearizable.
    pub verdict: Verdict,
    /// Per key, in order of first invocation.
    pub keys: Vec<KeyReport>,
    /// Wall-clock time of the check.
    pub elapsed: Duration,
}

/// Checks a history; see the module documentation for the semantics.
pub fn check(history: &History, options: &CheckOptions) -> Result<Verdict, CheckError> {
    Ok(check_report(history, options)?.verdict)
}

/// Checks a history and reports per key.
///
/// Keys are searched in rounds with a growing step budget, so that a key with a quick violation is
/// found before the budget goes into a hard key; the search of each key resumes where it paused.
pub fn check_report(history: &History, options: &CheckOptions) -> Result<CheckReport, CheckError> {
    let start = Instant::now();
    let deadline = options.timeout.map(|t| start + t);
    let partitions = partition(history)?;
    let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(partitions.len());
    for part in &partitions {
        jobs.push(match part.family {
            Family::Register => compile_register(history, part)?,
            Family::Kv => compile_kv(history, part)?,
        });
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; jobs.len()];
    let mut elapsed = vec![Duration::ZERO; jobs.len()];
    let mut violation: Option<usize> = None;
    let mut steps: u64 = FIRST_ROUND_STEPS;
    'rounds: while verdicts.iter().any(Option::is_none) {
        for i in 0..jobs.len() {
            if violation.is_some() && options.stop_at_first_violation {
                break 'rounds;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break 'rounds;
            }
            if verdicts[i].is_some() {
                continue;
            }
            let others: usize =
                jobs.iter().map(|j| j.memo_bytes()).sum::<usize>() - jobs[i].memo_bytes();
            let ctx = Ctx {
                history,
                part: &partitions[i],
                options,
                deadline,
                memo_limit: options.max_memo_bytes.saturating_sub(others),
            };
            let t = Instant::now();
            let result = jobs[i].advance(steps, &ctx);
            elapsed[i] += t.elapsed();
            if let Some(verdict) = result {
                if violation.is_none() && verdict.valid() == Some(false) {
                    violation = Some(i);
                }
                verdicts[i] = Some(verdict);
            }
        }
        steps = steps.saturating_mul(2);
    }
    let keys: Vec<KeyReport> = partitions
        .iter()
        .zip(verdicts)
        .zip(&jobs)
        .zip(elapsed)
        .map(|(((part, verdict), job), elapsed)| KeyReport {
            key: part.key.clone(),
            ops: job.ops(),
            verdict: verdict.unwrap_or_else(|| Verdict::Unknown {
                reason: if violation.is_some() && options.stop_at_first_violation {
                    "not checked further: another key is not linearizable".to_owned()
                } else {
                    format!(
                        "undecided when the deadline of {:?} passed ({} search steps)",
                        options.timeout.unwrap_or_default(),
                        job.explored()
                    )
                },
            }),
            explored: job.explored(),
            elapsed,
        })
        .collect();
    let verdict = match violation {
        Some(i) => keys[i].verdict.clone(),
        None => {
            let unknown: Vec<&KeyReport> = keys
                .iter()
                .filter(|k| k.verdict.valid().is_none())
                .collect();
            if unknown.is_empty() {
                Verdict::Linearizable
            } else {
                let mut reason = format!("{} of {} key(s) undecided", unknown.len(), keys.len());
                for k in unknown.iter().take(3) {
                    if let Verdict::Unknown { reason: why } = &k.verdict {
                        reason.push_str(&format!("; key {:?}: {why}", k.key));
                    }
                }
                Verdict::Unknown { reason }
            }
        }
    };
    Ok(CheckReport {
        verdict,
        keys,
        elapsed: start.elapsed(),
    })
}

/// Step budget of every key in the first round; it doubles every round.
const FIRST_ROUND_STEPS: u64 = 1 << 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Register,
    Kv,
}

struct Partition {
    key: Option<String>,
    family: Family,
    pairs: Vec<OpPair>,
}

/// Client operations grouped by key, in order of first invocation.
fn partition(history: &History) -> Result<Vec<Partition>, CheckError> {
    let ops = history.ops();
    let mut parts: Vec<Partition> = Vec::new();
    let mut by_key: HashMap<Option<&str>, usize> = HashMap::new();
    for pair in history.pairs()? {
        let inv = &ops[pair.invoke];
        if !inv.process.is_client() {
            continue;
        }
        let family = match inv.f {
            F::Read | F::Write | F::Cas => Family::Register,
            F::Get | F::Put | F::Append => Family::Kv,
            F::Other(_) => {
                return Err(CheckError::UnsupportedFunction {
                    position: pair.invoke,
                    f: inv.f.clone(),
                });
            }
        };
        let slot = *by_key.entry(inv.key.as_deref()).or_insert_with(|| {
            parts.push(Partition {
                key: inv.key.clone(),
                family,
                pairs: Vec::new(),
            });
            parts.len() - 1
        });
        let part = &mut parts[slot];
        if part.family != family {
            return Err(CheckError::MixedModels {
                key: part.key.clone(),
                position: pair.invoke,
            });
        }
        part.pairs.push(pair);
    }
    Ok(parts)
}

/// How a pair completed, for the models.
enum Completion<'a> {
    Ok(&'a Op),
    /// `fail` without an error.
    FailNoError,
    /// `fail` with an error: did not happen, observed nothing.
    FailWithError,
    /// `info` or no completion.
    Unknown,
}

fn completion<'a>(ops: &'a [Op], pair: &OpPair) -> Completion<'a> {
    match pair.complete.map(|c| &ops[c]) {
        Some(op) if op.kind == OpType::Ok => Completion::Ok(op),
        Some(op) if op.kind == OpType::Fail && op.error.is_none() => Completion::FailNoError,
        Some(op) if op.kind == OpType::Fail => Completion::FailWithError,
        _ => Completion::Unknown,
    }
}

fn compile_register(history: &History, part: &Partition) -> Result<Box<dyn Job>, CheckError> {
    let ops = history.ops();
    let mut model = RegisterModel::new();
    let mut entries = Vec::new();
    let mut sources = Vec::new();
    for pair in &part.pairs {
        let inv = &ops[pair.invoke];
        let bad = |message: String| CheckError::BadValue {
            position: pair.invoke,
            message,
        };
        let done = completion(ops, pair);
        let (op, definite) = match (&inv.f, done) {
            (F::Read, Completion::Ok(c)) => (RegisterOp::Read(model.intern(&c.value)), true),
            (F::Read, _) => continue,
            (F::Write, done) => {
                if inv.value.is_null() {
                    return Err(bad("write of null".into()));
                }
                let v = model.intern(&inv.value);
                match done {
                    Completion::Ok(_) => (RegisterOp::Write(v), true),
                    Completion::Unknown => (RegisterOp::Write(v), false),
                    Completion::FailNoError | Completion::FailWithError => continue,
                }
            }
            (F::Cas, done) => {
                let (from, to) = match &inv.value {
                    Value::List(l) if l.len() == 2 && !l[1].is_null() => {
                        (model.intern(&l[0]), model.intern(&l[1]))
                    }
                    other => {
                        return Err(bad(format!(
                            "cas argument must be [from, to] with a non-null to, found {other}"
                        )));
                    }
                };
                match done {
                    Completion::Ok(_) => (RegisterOp::CasOk { from, to }, true),
                    Completion::FailNoError => (RegisterOp::CasFail { from }, true),
                    Completion::FailWithError => continue,
                    Completion::Unknown => (RegisterOp::CasUnknown { from, to }, false),
                }
            }
            (f, _) => {
                return Err(CheckError::UnsupportedFunction {
                    position: pair.invoke,
                    f: f.clone(),
                });
            }
        };
        entries.push(Entry {
            op,
            call: pair.invoke,
            ret: if definite { pair.complete } else { None },
        });
        sources.push(*pair);
    }
    Ok(Box::new(KeyJob::new(model, entries, sources)))
}

fn compile_kv(history: &History, part: &Partition) -> Result<Box<dyn Job>, CheckError> {
    let ops = history.ops();
    let mut entries = Vec::new();
    let mut sources = Vec::new();
    for pair in &part.pairs {
        let inv = &ops[pair.invoke];
        let done = completion(ops, pair);
        let string = |v: &Value, position: usize, what: &str| match v {
            Value::Str(s) => Ok(Rc::<str>::from(s.as_str())),
            Value::Null if what == "get result" => Ok(Rc::<str>::from("")),
            other => Err(CheckError::BadValue {
                position,
                message: format!("{what} must be a string, found {other}"),
            }),
        };
        let (op, definite) = match (&inv.f, done) {
            (F::Get, Completion::Ok(c)) => {
                let position = pair.complete.unwrap_or(pair.invoke);
                (KvOp::Get(string(&c.value, position, "get result")?), true)
            }
            (F::Get, _) => continue,
            (F::Put | F::Append, Completion::FailNoError | Completion::FailWithError) => continue,
            (f @ (F::Put | F::Append), done) => {
                let v = string(&inv.value, pair.invoke, &format!("{f} argument"))?;
                let op = if *f == F::Put {
                    KvOp::Put(v)
                } else {
                    KvOp::Append(v)
                };
                (op, matches!(done, Completion::Ok(_)))
            }
            (f, _) => {
                return Err(CheckError::UnsupportedFunction {
                    position: pair.invoke,
                    f: f.clone(),
                });
            }
        };
        entries.push(Entry {
            op,
            call: pair.invoke,
            ret: if definite { pair.complete } else { None },
        });
        sources.push(*pair);
    }
    Ok(Box::new(KeyJob::new(KvModel, entries, sources)))
}

/// What a job needs to know to advance and to describe its result.
struct Ctx<'a> {
    history: &'a History,
    part: &'a Partition,
    options: &'a CheckOptions,
    deadline: Option<Instant>,
    memo_limit: usize,
}

/// One key's search, independent of its model type.
trait Job {
    /// Searches for at most `steps` more steps; the verdict once decided (then the search's
    /// memory is released).
    fn advance(&mut self, steps: u64, ctx: &Ctx<'_>) -> Option<Verdict>;
    /// Search steps taken.
    fn explored(&self) -> u64;
    /// Bytes held by the memo table.
    fn memo_bytes(&self) -> usize;
    /// Operations searched over.
    fn ops(&self) -> usize;
}

struct KeyJob<M: Model> {
    model: M,
    entries: Vec<Entry<M::Op>>,
    /// The history pair of each entry.
    sources: Vec<OpPair>,
    search: Option<Search<M::State>>,
    explored: u64,
}

impl<M: Model> KeyJob<M> {
    fn new(model: M, entries: Vec<Entry<M::Op>>, sources: Vec<OpPair>) -> KeyJob<M> {
        KeyJob {
            model,
            entries,
            sources,
            search: None,
            explored: 0,
        }
    }
}

impl<M: Model> Job for KeyJob<M> {
    fn advance(&mut self, steps: u64, ctx: &Ctx<'_>) -> Option<Verdict> {
        let (model, entries) = (&self.model, &self.entries[..]);
        let search = self
            .search
            .get_or_insert_with(|| Search::new(model, entries, ctx.options.excerpt_ops));
        let progress = search.run(model, entries, steps, ctx.deadline, ctx.memo_limit);
        self.explored = search.explored();
        let memo = search.memo_bytes();
        let Progress::Done(outcome) = progress else {
            return None;
        };
        self.search = None;
        let n = self.entries.len();
        let key = &ctx.part.key;
        Some(match outcome {
            Outcome::Linearizable => Verdict::Linearizable,
            Outcome::Deadline => Verdict::Unknown {
                reason: format!(
                    "the deadline passed while checking key {key:?} ({n} operations, {} search steps)",
                    self.explored
                ),
            },
            Outcome::MemoLimit => Verdict::Unknown {
                reason: format!(
                    "the memo budget of {} MiB ran out while checking key {key:?} ({n} operations, \
                     {memo} bytes, {} search steps)",
                    ctx.options.max_memo_bytes >> 20,
                    self.explored
                ),
            },
            Outcome::Violation {
                prefix,
                state,
                stuck,
                pending,
                pending_total,
            } => {
                let summary = |i: usize| summarize(ctx.history, &self.sources[i]);
                let tail_from = prefix.len().saturating_sub(ctx.options.excerpt_ops);
                Verdict::NotLinearizable {
                    counterexample: Box::new(Counterexample {
                        key: key.clone(),
                        ops: n,
                        prefix_len: prefix.len(),
                        prefix_tail: prefix[tail_from..].iter().map(|&i| summary(i)).collect(),
                        state: self.model.describe_state(&state),
                        stuck: summary(stuck),
                        concurrent: pending.iter().map(|&i| summary(i)).collect(),
                        concurrent_total: pending_total,
                    }),
                }
            }
        })
    }

    fn explored(&self) -> u64 {
        self.explored
    }

    fn memo_bytes(&self) -> usize {
        self.search.as_ref().map_or(0, Search::memo_bytes)
    }

    fn ops(&self) -> usize {
        self.entries.len()
    }
}

fn summarize(history: &History, pair: &OpPair) -> OpSummary {
    let ops = history.ops();
    let inv = &ops[pair.invoke];
    let done = pair.complete.map(|c| &ops[c]);
    let index = |op: &Op, position: usize| op.index.unwrap_or(position as u64);
    OpSummary {
        process: inv.process.clone(),
        f: inv.f.clone(),
        value: inv.value.clone(),
        outcome: done.map_or(OpType::Invoke, |c| c.kind),
        result: match done {
            Some(c) if c.kind == OpType::Ok && matches!(inv.f, F::Read | F::Get) => c.value.clone(),
            _ => Value::Null,
        },
        invoke_index: index(inv, pair.invoke),
        complete_index: pair.complete.zip(done).map(|(p, c)| index(c, p)),
        invoke_time: inv.time,
        complete_time: done.and_then(|c| c.time),
    }
}

#[cfg(test)]
mod tests;
