//! Jepsen-style operation histories and their `history.jsonl` form.
//!
//! A history is the journal of what the chaos suite's worker processes did: every operation appears
//! as an `invoke` event followed, on the same process, by its completion (`ok`, `fail` or `info`).
//! The meaning of the completion types is Jepsen's:
//!
//! - `ok`: the operation definitely happened; `value` is its result (for a read, the value read);
//! - `fail`: the operation definitely did not happen (for a `cas` recorded without an `error`, the
//!   compare was evaluated and came out false: an observation that the register did not hold the
//!   expected value);
//! - `info`: indeterminate — it may have taken effect at any time after its invocation, or never.
//!   An invocation that never completes is read the same way.
//!
//! Events are in real-time order: the position of an event in the history is what the checkers use
//! for "happened before". `time` (nanoseconds since the start of the test) and `index` are recorded
//! for people and plots; [`History::push`] fills `index` in.
//!
//! On disk a history is `history.jsonl`: one JSON object per event with Jepsen's field names, e.g.
//! `{"index":17,"time":1234567890,"type":"invoke","process":4,"f":"cas","key":"r12","value":[1,3]}`.
//! Nemesis events use `"process":"nemesis"`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Errors while reading, writing or pairing a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A `history.jsonl` line is not a valid operation.
    #[error("line {line}: invalid operation: {source}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// The decoder's complaint.
        source: serde_json::Error,
    },
    /// A corpus or log line is malformed.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A completion event has no open invocation on its process.
    #[error("event {position}: {kind} on process {process} without an open invocation")]
    UnmatchedCompletion {
        /// 0-based position of the event in the history.
        position: usize,
        /// Its process.
        process: Process,
        /// Its type.
        kind: OpType,
    },
    /// A process invoked a second operation before the first completed.
    #[error(
        "event {position}: process {process} invokes again while its invocation at event {pending} is open"
    )]
    OverlappingInvocation {
        /// 0-based position of the second invocation.
        position: usize,
        /// The process.
        process: Process,
        /// 0-based position of the open invocation.
        pending: usize,
    },
    /// A completion does not describe the same operation as its invocation.
    #[error(
        "event {position}: completion has {field} {found}, its invocation (event {invoke}) has {expected}"
    )]
    MismatchedCompletion {
        /// 0-based position of the completion.
        position: usize,
        /// 0-based position of the invocation.
        invoke: usize,
        /// The field that differs (`f` or `key`).
        field: &'static str,
        /// The invocation's value of that field.
        expected: String,
        /// The completion's value of that field.
        found: String,
    },
}

/// The type of an event: an invocation or one of the three completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The operation was called.
    Invoke,
    /// It definitely happened.
    Ok,
    /// It definitely did not happen (for `cas` without `error`: the compare failed).
    Fail,
    /// Indeterminate: it may or may not have happened.
    Info,
}

impl OpType {
    /// Jepsen's name: `invoke`, `ok`, `fail`, `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpType::Invoke => "invoke",
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            OpType::Info => "info",
        }
    }

    /// Parses Jepsen's name (without a leading colon).
    pub fn from_name(name: &str) -> Option<OpType> {
        match name {
            "invoke" => Some(OpType::Invoke),
            "ok" => Some(OpType::Ok),
            "fail" => Some(OpType::Fail),
            "info" => Some(OpType::Info),
            _ => None,
        }
    }
}

impl fmt::Display for OpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who performed an event: a numbered worker process or a named one such as `nemesis`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    /// A logically single-threaded client worker.
    Client(u64),
    /// A named process; the fault injector is `"nemesis"`.
    Named(String),
}

impl Process {
    /// The fault injector's process.
    pub fn nemesis() -> Process {
        Process::Named("nemesis".to_owned())
    }

    /// Whether this is a client worker (whose operations the checkers look at).
    pub fn is_client(&self) -> bool {
        matches!(self, Process::Client(_))
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(n) => write!(f, "{n}"),
            Process::Named(s) => f.write_str(s),
        }
    }
}

/// The function an operation applies. The register workload uses `read`/`write`/`cas`, the
/// key-value one `get`/`put`/`append`; anything else (nemesis actions, future workloads) is kept
/// as [`F::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum F {
    /// Register read; the `ok` value is the value read (`null` = absent).
    Read,
    /// Register write of `value`.
    Write,
    /// Register compare-and-set; `value` is `[from, to]`.
    Cas,
    /// Key-value get; the `ok` value is the value read.
    Get,
    /// Key-value put of `value`.
    Put,
    /// Key-value append of the string `value`.
    Append,
    /// Any other function.
    Other(String),
}

impl F {
    /// The function's name.
    pub fn as_str(&self) -> &str {
        match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
            F::Get => "get",
            F::Put => "put",
            F::Append => "append",
            F::Other(s) => s,
        }
    }
}

impl From<&str> for F {
    fn from(s: &str) -> F {
        match s {
            "read" => F::Read,
            "write" => F::Write,
            "cas" => F::Cas,
            "get" => F::Get,
            "put" => F::Put,
            "append" => F::Append,
            other => F::Other(other.to_owned()),
        }
    }
}

impl From<String> for F {
    fn from(s: String) -> F {
        match F::from(s.as_str()) {
            F::Other(_) => F::Other(s),
            known => known,
        }
    }
}

impl From<F> for String {
    fn from(f: F) -> String {
        match f {
            F::Other(s) => s,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for F {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation's argument or result: the JSON values Jepsen histories use, except floats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// `null` (Jepsen's `nil`): no value, or an absent register.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// A list, e.g. a `cas` argument `[from, to]`.
    List(Vec<Value>),
    /// A map with string keys.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl fmt::Display for Value {
    /// Compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => f.write_str("<unprintable>"),
        }
    }
}

/// One event of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (filled in by [`History::push`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Nanoseconds since the start of the test, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// Invocation or completion type.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The process that performed it.
    pub process: Process,
    /// The function.
    pub f: F,
    /// The key the operation works on, for per-key workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Argument (on `invoke`) or result (on `ok`).
    #[serde(default)]
    pub value: Value,
    /// Why a `fail`/`info` happened (`"timed-out"`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node a client talked to, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The store revision in the response header of a completion, when the store reported one
    /// (for an acknowledged write, the revision it created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

impl Op {
    /// An event with no index, time, key, error or node.
    pub fn new(process: Process, kind: OpType, f: F, value: Value) -> Op {
        Op {
            index: None,
            time: None,
            kind,
            process,
            f,
            key: None,
            value,
            error: None,
            node: None,
            revision: None,
        }
    }

    /// The same event on `key`.
    pub fn with_key(mut self, key: impl Into<String>) -> Op {
        self.key = Some(key.into());
        self
    }

    /// The same event with an error.
    pub fn with_error(mut self, error: impl Into<String>) -> Op {
        self.error = Some(error.into());
        self
    }

    /// The same event at `time` ns.
    pub fn at(mut self, time: u64) -> Op {
        self.time = Some(time);
        self
    }
}

/// An invocation and its completion, as positions in [`History::ops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpPair {
    /// Position of the `invoke` event.
    pub invoke: usize,
    /// Position of the completion; `None` if the operation never completed.
    pub complete: Option<usize>,
}

/// A sequence of events in real-time order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// A history of these events, in this order (indexes are kept as given).
    pub fn from_ops(ops: Vec<Op>) -> History {
        History { ops }
    }

    /// Appends an event, setting its `index` to its position when it has none.
    pub fn push(&mut self, mut op: Op) {
        if op.index.is_none() {
            op.index = Some(self.ops.len() as u64);
        }
        self.ops.push(op);
    }

    /// The events.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Reads `history.jsonl` text: one JSON object per line; blank lines are skipped.
    pub fn read_jsonl<R: BufRead>(reader: R) -> Result<History, HistoryError> {
        let mut ops = Vec::new();
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op: Op = serde_json::from_str(&line).map_err(|source| HistoryError::Json {
                line: n + 1,
                source,
            })?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    /// Writes `history.jsonl` text.
    pub fn write_jsonl<W: Write>(&self, mut writer: W) -> Result<(), HistoryError> {
        for op in &self.ops {
            serde_json::to_writer(&mut writer, op).map_err(std::io::Error::from)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        Ok(())
    }

    /// Reads a `history.jsonl` file.
    pub fn load_jsonl(path: impl AsRef<Path>) -> Result<History, HistoryError> {
        History::read_jsonl(BufReader::new(File::open(path)?))
    }

    /// Writes a `history.jsonl` file.
    pub fn save_jsonl(&self, path: impl AsRef<Path>) -> Result<(), HistoryError> {
        self.write_jsonl(BufWriter::new(File::create(path)?))
    }

    /// Pairs every client invocation with its completion on the same process, in invocation
    /// order.
    ///
    /// A completion's `f` must equal its invocation's, and so must its `key` when it has one.
    /// Events of named processes (the nemesis) are not paired: Jepsen journals them as `info`
    /// events that need not follow an invocation.
    pub fn pairs(&self) -> Result<Vec<OpPair>, HistoryError> {
        // Process -> slot in `pairs` of its open invocation.
        let mut open: HashMap<&Process, usize> = HashMap::new();
        let mut pairs: Vec<OpPair> = Vec::new();
        for (position, op) in self.ops.iter().enumerate() {
            if !op.process.is_client() {
                continue;
            }
            if op.kind == OpType::Invoke {
                if let Some(&slot) = open.get(&op.process) {
                    return Err(HistoryError::OverlappingInvocation {
                        position,
                        process: op.process.clone(),
                        pending: pairs[slot].invoke,
                    });
                }
                open.insert(&op.process, pairs.len());
                pairs.push(OpPair {
                    invoke: position,
                    complete: None,
                });
                continue;
            }
            let Some(slot) = open.remove(&op.process) else {
                return Err(HistoryError::UnmatchedCompletion {
                    position,
                    process: op.process.clone(),
                    kind: op.kind,
                });
            };
            let invoke = pairs[slot].invoke;
            let inv = &self.ops[invoke];
            if inv.f != op.f {
                return Err(HistoryError::MismatchedCompletion {
                    position,
                    invoke,
                    field: "f",
                    expected: inv.f.to_string(),
                    found: op.f.to_string(),
                });
            }
            if op.key.is_some() && op.key != inv.key {
                return Err(HistoryError::MismatchedCompletion {
                    position,
                    invoke,
                    field: "key",
                    expected: format!("{:?}", inv.key),
                    found: format!("{:?}", op.key),
                });
            }
            pairs[slot].complete = Some(position);
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trip_uses_jepsen_field_names() {
        let mut h = History::new();
        h.push(
            Op::new(
                Process::Client(4),
                OpType::Invoke,
                F::Cas,
                Value::List(vec![1.into(), 3.into()]),
            )
            .with_key("r12")
            .at(1_234_567_890),
        );
        h.push(
            Op::new(Process::Client(4), OpType::Info, F::Cas, Value::Null)
                .with_key("r12")
                .with_error("timed-out")
                .at(1_234_567_999),
        );
        h.push(Op::new(
            Process::nemesis(),
            OpType::Info,
            F::Other("start-partition".into()),
            Value::Str("majority".into()),
        ));
        let mut buf = Vec::new();
        h.write_jsonl(&mut buf).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            r#"{"index":0,"time":1234567890,"type":"invoke","process":4,"f":"cas","key":"r12","value":[1,3]}"#
        );
        assert!(text.contains(r#""process":"nemesis","f":"start-partition""#));
        let back = History::read_jsonl(&buf[..]).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let text = "{\"type\":\"invoke\",\"process\":1,\"f\":\"read\"}\n\n{\"type\":\"bogus\",\"process\":1,\"f\":\"read\"}\n";
        let err = History::read_jsonl(text.as_bytes()).unwrap_err();
        assert!(matches!(err, HistoryError::Json { line: 3, .. }), "{err}");
    }

    #[test]
    fn pairs_follow_processes() {
        let mut h = History::new();
        h.push(Op::new(
            Process::Client(1),
            OpType::Invoke,
            F::Write,
            1.into(),
        ));
        h.push(Op::new(
            Process::Client(2),
            OpType::Invoke,
            F::Read,
            Value::Null,
        ));
        h.push(Op::new(Process::Client(2), OpType::Ok, F::Read, 1.into()));
        h.push(Op::new(
            Process::Client(3),
            OpType::Invoke,
            F::Read,
            Value::Null,
        ));
        let pairs = h.pairs().unwrap();
        assert_eq!(
            pairs,
            vec![
                OpPair {
                    invoke: 0,
                    complete: None
                },
                OpPair {
                    invoke: 1,
                    complete: Some(2)
                },
                OpPair {
                    invoke: 3,
                    complete: None
                },
            ]
        );
    }

    #[test]
    fn pairing_errors_are_reported() {
        let h = History::from_ops(vec![Op::new(
            Process::Client(1),
            OpType::Ok,
            F::Read,
            Value::Null,
        )]);
        assert!(matches!(
            h.pairs(),
            Err(HistoryError::UnmatchedCompletion { position: 0, .. })
        ));
        let h = History::from_ops(vec![
            Op::new(Process::Client(1), OpType::Invoke, F::Read, Value::Null),
            Op::new(Process::Client(1), OpType::Invoke, F::Read, Value::Null),
        ]);
        assert!(matches!(
            h.pairs(),
            Err(HistoryError::OverlappingInvocation {
                position: 1,
                pending: 0,
                ..
            })
        ));
        let h = History::from_ops(vec![
            Op::new(Process::Client(1), OpType::Invoke, F::Read, Value::Null),
            Op::new(Process::Client(1), OpType::Ok, F::Write, Value::Null),
        ]);
        assert!(matches!(
            h.pairs(),
            Err(HistoryError::MismatchedCompletion { field: "f", .. })
        ));
    }
}
