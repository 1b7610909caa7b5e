//! Readers for the two history formats of the linearizability corpus (Porcupine's test data).
//!
//! - **Jepsen logs** (`jepsen-etcd/etcd_NNN.log`): lines `INFO  jepsen.util - PROCESS :TYPE :F VALUE`,
//!   fields separated by tabs or spaces. Lines of any other shape (setup, nemesis chatter) are
//!   skipped; a line that starts like an operation (`PROCESS :TYPE`) but is malformed is an error.
//!   A completion whose value is a bare keyword (`:info :write :timed-out`) carries that keyword as
//!   its `error` and no value.
//! - **EDN lines** (`kv/cNN-*.txt`): one Jepsen op map per line,
//!   `{:process P, :type :invoke, :f :append, :key "K", :value "V"}`.
//!
//! Events keep the file's order, which is their real-time order; `index` is the event's position
//! and `time` is left empty (the files carry no timestamps).

use std::path::Path;

use crate::edn::{self, Edn};
use crate::history::{F, History, HistoryError, Op, OpType, Process, Value};

/// Parses a Jepsen log.
pub fn parse_jepsen_log(text: &str) -> Result<History, HistoryError> {
    let mut history = History::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let Some(rest) = strip_log_prefix(line) else {
            continue;
        };
        let Some((process_tok, rest)) = next_token(rest) else {
            continue;
        };
        let process = if let Ok(p) = process_tok.parse::<u64>() {
            Process::Client(p)
        } else if let Some(name) = process_tok.strip_prefix(':') {
            Process::Named(name.to_owned())
        } else {
            continue;
        };
        let Some((type_tok, rest)) = next_token(rest) else {
            continue;
        };
        let Some(kind) = type_tok.strip_prefix(':').and_then(OpType::from_name) else {
            continue;
        };
        let syntax = |message: String| HistoryError::Syntax {
            line: line_no,
            message,
        };
        let Some((f_tok, value_text)) = next_token(rest) else {
            return Err(syntax("operation line without a function".into()));
        };
        let f = match f_tok.strip_prefix(':') {
            Some(name) if !name.is_empty() => F::from(name),
            _ => return Err(syntax(format!("function {f_tok:?} is not a keyword"))),
        };
        let value_text = value_text.trim();
        if value_text.is_empty() {
            return Err(syntax("operation line without a value".into()));
        }
        let mut op = Op::new(process, kind, f, Value::Null);
        match edn::parse(value_text) {
            Ok(Edn::Keyword(k)) if kind != OpType::Invoke => op.error = Some(k),
            Ok(edn) => match edn.to_value() {
                Some(v) => op.value = v,
                None if !op.process.is_client() => op.value = Value::Str(value_text.to_owned()),
                None => return Err(syntax(format!("unsupported value {value_text:?}"))),
            },
            Err(_) if !op.process.is_client() => op.value = Value::Str(value_text.to_owned()),
            Err(e) => return Err(syntax(format!("value {value_text:?}: {e}"))),
        }
        history.push(op);
    }
    Ok(history)
}

/// Parses EDN op maps, one per line (blank lines are skipped).
pub fn parse_edn_lines(text: &str) -> Result<History, HistoryError> {
    let mut history = History::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let syntax = |message: String| HistoryError::Syntax {
            line: n + 1,
            message,
        };
        let map = edn::parse(line).map_err(|e| syntax(e.to_string()))?;
        if !matches!(map, Edn::Map(_)) {
            return Err(syntax("expected an op map {...}".into()));
        }
        let process = match map.get("process") {
            Some(Edn::Int(p)) if *p >= 0 => Process::Client(*p as u64),
            Some(Edn::Keyword(name)) => Process::Named(name.clone()),
            other => return Err(syntax(format!("bad :process {}", show(other)))),
        };
        let kind = match map.get("type") {
            Some(Edn::Keyword(t)) => OpType::from_name(t),
            _ => None,
        }
        .ok_or_else(|| syntax(format!("bad :type {}", show(map.get("type")))))?;
        let f = match map.get("f") {
            Some(Edn::Keyword(f)) => F::from(f.as_str()),
            other => return Err(syntax(format!("bad :f {}", show(other)))),
        };
        let value = match map.get("value") {
            None => Value::Null,
            Some(v) => v
                .to_value()
                .ok_or_else(|| syntax(format!("unsupported :value {v}")))?,
        };
        let mut op = Op::new(process, kind, f, value);
        op.key = match map.get("key") {
            None | Some(Edn::Nil) => None,
            Some(Edn::Str(k)) => Some(k.clone()),
            Some(Edn::Int(k)) => Some(k.to_string()),
            other => return Err(syntax(format!("bad :key {}", show(other)))),
        };
        op.error = match map.get("error") {
            None | Some(Edn::Nil) => None,
            Some(Edn::Keyword(e) | Edn::Str(e)) => Some(e.clone()),
            Some(other) => Some(other.to_string()),
        };
        history.push(op);
    }
    Ok(history)
}

/// Reads a corpus file, choosing the format by extension: `.log` is a Jepsen log, `.jsonl` is
/// `history.jsonl`, anything else EDN lines.
pub fn load_history(path: impl AsRef<Path>) -> Result<History, HistoryError> {
    let path = path.as_ref();
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => History::load_jsonl(path),
        Some("log") => parse_jepsen_log(&std::fs::read_to_string(path)?),
        _ => parse_edn_lines(&std::fs::read_to_string(path)?),
    }
}

fn show(v: Option<&Edn>) -> String {
    v.map_or_else(|| "(missing)".to_owned(), Edn::to_string)
}

/// `INFO  jepsen.util - REST` → `REST`.
fn strip_log_prefix(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("INFO")?;
    let rest = require_ws(rest)?.strip_prefix("jepsen.util")?;
    let rest = require_ws(rest)?.strip_prefix('-')?;
    require_ws(rest)
}

/// Strips at least one whitespace character.
fn require_ws(s: &str) -> Option<&str> {
    let trimmed = s.trim_start();
    (trimmed.len() < s.len()).then_some(trimmed)
}

/// The first whitespace-delimited token and what follows it.
fn next_token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jepsen_log_lines() {
        let text = "INFO  jepsen.util - 0\t:invoke\t:read\tnil\n\
                    INFO  jepsen.core - Running test\n\
                    INFO  jepsen.util - 0\t:ok\t:read\t3\n\
                    INFO  jepsen.util - 2   :invoke :cas    [3 0]\n\
                    INFO  jepsen.util - 2   :fail   :cas    [3 0]\n\
                    INFO  jepsen.util - :nemesis\t:info\t:start\t{\"n1\" [\"n2\"]}\n\
                    INFO  jepsen.util - 4\t:invoke\t:write\t1\n\
                    INFO  jepsen.util - 4\t:info\t:write\t:timed-out\n\
                    INFO  jepsen.util - 5\t:fail\t:read\t:timed-out\n";
        let h = parse_jepsen_log(text).unwrap();
        assert_eq!(h.len(), 8);
        let ops = h.ops();
        assert_eq!(ops[1].value, Value::Int(3));
        assert_eq!(ops[1].index, Some(1));
        assert_eq!(ops[2].f, F::Cas);
        assert_eq!(ops[2].value, Value::List(vec![3.into(), 0.into()]));
        assert_eq!(ops[3].kind, OpType::Fail);
        assert_eq!(ops[3].error, None);
        assert_eq!(ops[4].process, Process::nemesis());
        assert_eq!(ops[6].error.as_deref(), Some("timed-out"));
        assert_eq!(ops[6].value, Value::Null);
        assert_eq!(ops[7].error.as_deref(), Some("timed-out"));
    }

    #[test]
    fn jepsen_log_errors_name_the_line() {
        let err = parse_jepsen_log("INFO  jepsen.util - 0\t:ok\t:read\t[1\n").unwrap_err();
        assert!(matches!(err, HistoryError::Syntax { line: 1, .. }), "{err}");
        let err = parse_jepsen_log("\nINFO  jepsen.util - 0\t:ok\tread\t1\n").unwrap_err();
        assert!(matches!(err, HistoryError::Syntax { line: 2, .. }), "{err}");
    }

    #[test]
    fn edn_lines() {
        let text = "{:process 0, :type :invoke, :f :get, :key \"5\", :value nil}\n\
                    {:process 0, :type :ok, :f :get, :key \"5\", :value \"x 0 0 y\"}\n";
        let h = parse_edn_lines(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.ops()[1].key.as_deref(), Some("5"));
        assert_eq!(h.ops()[1].value, Value::Str("x 0 0 y".into()));
        let err = parse_edn_lines("{:process 0, :type :bogus, :f :get}\n").unwrap_err();
        assert!(matches!(err, HistoryError::Syntax { line: 1, .. }), "{err}");
        let err = parse_edn_lines("\n(1 2)\n").unwrap_err();
        assert!(matches!(err, HistoryError::Syntax { line: 2, .. }), "{err}");
    }
}
