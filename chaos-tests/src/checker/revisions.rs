//! Global revision checks beside the per-key linearizability search (chaos.md §2.1, "global
//! revision caveat"): etcd revisions are global, so a per-key partition cannot see them.
//!
//! Over the key-value operations that report a response revision (`revision` on `ok`
//! completions of `read`, `write`, `cas`, `txn`, `put`, `mput`, `delete`, `lread`,
//! `final-read`, `final-lread`):
//! - **monotonic in real time**: an operation invoked after another completed reports a revision
//!   at least as high (`revision-regression` otherwise);
//! - **writes are new**: an acknowledged write (ok `write`, ok `cas`, ok `txn` with an append,
//!   ok `put`/`mput`, ok `delete` that deleted something) reports a revision higher than every
//!   revision completed before it was invoked (`stale-write-revision`), and no two acknowledged
//!   writes report the same revision (`duplicate-write-revision`).

use std::collections::HashMap;

use crate::history::{History, Op, OpType, Value};
use crate::results::{CheckResult, Validity};

const CHECKED: [&str; 10] = [
    "read",
    "write",
    "cas",
    "txn",
    "put",
    "mput",
    "delete",
    "lread",
    "final-read",
    "final-lread",
];

fn is_write(inv: &Op, done: &Op) -> bool {
    match inv.f.as_str() {
        "write" | "cas" | "put" | "mput" => true,
        "txn" => {
            matches!(&inv.value, Value::List(ops) if ops.iter().any(|m| matches!(m, Value::List(x) if x.first() == Some(&Value::Str("append".into())))))
        }
        "delete" => matches!(done.value, Value::Int(n) if n > 0),
        _ => false,
    }
}

/// Runs the checks.
pub fn check(history: &History) -> CheckResult {
    let mut res = CheckResult::new(Validity::True);
    let ops = history.ops();
    let Ok(pairs) = history.pairs() else {
        return CheckResult::new(Validity::Unknown).with("reason", "history does not pair");
    };
    // completion position -> invoke position, for checked ops with a revision.
    let mut by_completion: HashMap<usize, usize> = HashMap::new();
    for p in &pairs {
        if let Some(c) = p.complete {
            let inv = &ops[p.invoke];
            let done = &ops[c];
            if done.kind == OpType::Ok
                && done.revision.is_some_and(|r| r > 0)
                && CHECKED.contains(&inv.f.as_str())
            {
                by_completion.insert(c, p.invoke);
            }
        }
    }
    // The highest completed revision so far, and which op reported it.
    let mut floor: (i64, Option<usize>) = (0, None);
    let mut floor_at_invoke: HashMap<usize, (i64, Option<usize>)> = HashMap::new();
    let mut write_revs: HashMap<i64, usize> = HashMap::new();
    let mut checked = 0usize;
    for (pos, op) in ops.iter().enumerate() {
        if !op.process.is_client() {
            continue;
        }
        if op.kind == OpType::Invoke {
            floor_at_invoke.insert(pos, floor);
            continue;
        }
        let Some(&inv_pos) = by_completion.get(&pos) else {
            continue;
        };
        checked += 1;
        let rev = op.revision.unwrap_or(0);
        let (f0, src) = floor_at_invoke.get(&inv_pos).copied().unwrap_or((0, None));
        let inv = &ops[inv_pos];
        let write = is_write(inv, op);
        let excerpt = |src: Option<usize>| {
            let mut v = Vec::new();
            if let Some(s) = src {
                v.push(ops[s].clone());
            }
            v.push(inv.clone());
            v.push(op.clone());
            v
        };
        if rev < f0 {
            res.anomaly(
                "revisions",
                "revision-regression",
                format!(
                    "{} by process {} reported revision {rev}, but revision {f0} had already been \
                     reported by an operation that completed before it was invoked",
                    inv.f, inv.process
                ),
                excerpt(src),
            );
        } else if write && rev == f0 {
            res.anomaly(
                "revisions",
                "stale-write-revision",
                format!(
                    "acknowledged {} by process {} reported revision {rev}, not above revision {f0} \
                     completed before it was invoked",
                    inv.f, inv.process
                ),
                excerpt(src),
            );
        }
        if write {
            if let Some(&other) = write_revs.get(&rev) {
                res.anomaly(
                    "revisions",
                    "duplicate-write-revision",
                    format!("two acknowledged writes reported revision {rev}"),
                    vec![ops[other].clone(), op.clone()],
                );
            } else {
                write_revs.insert(rev, pos);
            }
        }
        if rev > floor.0 {
            floor = (rev, Some(pos));
        }
    }
    res.set("checked", checked);
    res.set("max-revision", floor.0);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{F, Process};

    fn op(p: u64, kind: OpType, f: &str, rev: Option<i64>) -> Op {
        let mut o = Op::new(Process::Client(p), kind, F::from(f), Value::Int(1));
        o.key = Some("k".into());
        o.revision = rev;
        o
    }

    #[test]
    fn accepts_monotonic_and_flags_regressions() {
        let good = History::from_ops(vec![
            op(1, OpType::Invoke, "write", None),
            op(1, OpType::Ok, "write", Some(5)),
            op(2, OpType::Invoke, "read", None),
            op(2, OpType::Ok, "read", Some(5)),
            op(1, OpType::Invoke, "write", None),
            op(1, OpType::Ok, "write", Some(6)),
        ]);
        assert_eq!(check(&good).valid, Validity::True);
        let stale = History::from_ops(vec![
            op(1, OpType::Invoke, "write", None),
            op(1, OpType::Ok, "write", Some(5)),
            op(2, OpType::Invoke, "read", None),
            op(2, OpType::Ok, "read", Some(4)),
        ]);
        let r = check(&stale);
        assert_eq!(r.valid, Validity::False);
        assert_eq!(r.anomalies[0].kind, "revision-regression");
        let dup = History::from_ops(vec![
            op(1, OpType::Invoke, "write", None),
            op(2, OpType::Invoke, "write", None),
            op(1, OpType::Ok, "write", Some(5)),
            op(2, OpType::Ok, "write", Some(5)),
        ]);
        assert_eq!(check(&dup).anomalies[0].kind, "duplicate-write-revision");
        let not_new = History::from_ops(vec![
            op(1, OpType::Invoke, "read", None),
            op(1, OpType::Ok, "read", Some(5)),
            op(2, OpType::Invoke, "write", None),
            op(2, OpType::Ok, "write", Some(5)),
        ]);
        assert_eq!(check(&not_new).anomalies[0].kind, "stale-write-revision");
    }
}
