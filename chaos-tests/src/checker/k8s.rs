//! Checks of the Kubernetes-like traffic profile (see `workload::k8s` for the history format).
//!
//! - `informer-cache-mismatch`: an informer's cache (a list plus the watch events after it) differs
//!   from a list at the revision the cache reached;
//! - `watch-created-count`: a watch that did not fail saw `created` twice, or never although it
//!   received events or a cancel;
//! - `bad-compaction-cancel`: a watch was cancelled for compaction although its start revision was
//!   not below the reported compact revision, or without a compaction at or above it requested;
//! - `mod-revision-regression`: an informer saw an object's `mod_revision` go back;
//! - `conflicting-writes-succeeded`: two optimistic writes of one object guarded by the same
//!   `mod_revision` both succeeded (a lost update: the second must have conflicted);
//! - `stale-guard-succeeded`: an optimistic write succeeded with a revision not above the one it
//!   was guarded by;
//! - `replica-list-mismatch`: two members listed different objects at the same revision after
//!   healing.

use std::collections::HashMap;

use crate::history::{History, Op, OpType, Value};
use crate::results::{CheckResult, Validity};

fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    match v {
        Value::Map(m) => m.get(k),
        _ => None,
    }
}

fn int(v: &Value, k: &str) -> Option<i64> {
    match field(v, k) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    }
}

/// Runs the checks.
pub fn check(history: &History) -> CheckResult {
    let ops = history.ops();
    let Ok(pairs) = history.pairs() else {
        return CheckResult::new(Validity::Unknown).with("reason", "history does not pair");
    };
    let mut res = CheckResult::new(Validity::True);
    let mut informers = 0usize;
    let mut compared = 0usize;
    let mut max_compact = 0i64;
    // (key, guard) -> the ok write that used it.
    let mut guards: HashMap<(String, i64), usize> = HashMap::new();
    let mut final_lists: Vec<&Op> = Vec::new();
    let mut writes = 0usize;
    for p in &pairs {
        if let (Some(c), "compact") = (p.complete, ops[p.invoke].f.as_str())
            && ops[c].kind != OpType::Fail
            && let Value::Int(n) = ops[p.invoke].value
        {
            // Acknowledged or indeterminate: it may have happened.
            max_compact = max_compact.max(n);
        }
    }
    for p in &pairs {
        let inv = &ops[p.invoke];
        let Some(c) = p.complete else { continue };
        let done = &ops[c];
        match inv.f.as_str() {
            "informer" if done.kind == OpType::Ok => {
                informers += 1;
                let v = &done.value;
                let ex = || vec![inv.clone(), done.clone()];
                // A session the harness ended before the server answered may have none; one
                // that got events or a cancel must have had exactly one, and never two.
                let created = int(v, "created").unwrap_or(0);
                let answered = int(v, "events").unwrap_or(0) > 0 || int(v, "canceled").is_some();
                if created > 1 || (created == 0 && answered) {
                    res.anomaly(
                        "k8s",
                        "watch-created-count",
                        format!(
                            "a watch from revision {} saw created {} times",
                            int(v, "start").unwrap_or(0),
                            int(v, "created").unwrap_or(0)
                        ),
                        ex(),
                    );
                }
                if int(v, "mod-revision-regressions").unwrap_or(0) > 0 {
                    res.anomaly(
                        "k8s",
                        "mod-revision-regression",
                        "an informer received an event whose mod_revision was not above the cached one".into(),
                        ex(),
                    );
                }
                if let Some(compact) = int(v, "canceled") {
                    let start = int(v, "start").unwrap_or(0);
                    if start >= compact || compact > max_compact {
                        res.anomaly(
                            "k8s",
                            "bad-compaction-cancel",
                            format!(
                                "a watch from revision {start} was cancelled with compact revision {compact} (highest compaction requested: {max_compact})"
                            ),
                            ex(),
                        );
                    }
                } else if let (Some(cache), Some(list)) = (field(v, "cache"), field(v, "list")) {
                    compared += 1;
                    if cache != list {
                        res.anomaly(
                            "k8s",
                            "informer-cache-mismatch",
                            format!(
                                "an informer's cache at revision {} differs from the list at that revision",
                                int(v, "revision").unwrap_or(0)
                            ),
                            ex(),
                        );
                    }
                }
            }
            "k-create" | "k-update" | "k-delete" if done.kind == OpType::Ok => {
                writes += 1;
                let (Some(key), Some(guard)) = (&inv.key, int(&inv.value, "expect")) else {
                    continue;
                };
                if let Some(rev) = done.revision
                    && rev <= guard
                {
                    res.anomaly(
                        "k8s",
                        "stale-guard-succeeded",
                        format!("{key}: a write guarded by mod_revision {guard} succeeded at revision {rev}"),
                        vec![inv.clone(), done.clone()],
                    );
                }
                // A create (guard 0) may legitimately follow a delete and reuse guard 0.
                if guard == 0 {
                    continue;
                }
                if let Some(&other) = guards.get(&(key.clone(), guard)) {
                    res.anomaly(
                        "k8s",
                        "conflicting-writes-succeeded",
                        format!("{key}: two writes guarded by mod_revision {guard} both succeeded"),
                        vec![ops[other].clone(), inv.clone(), done.clone()],
                    );
                } else {
                    guards.insert((key.clone(), guard), c);
                }
            }
            "final-list" if done.kind == OpType::Ok => final_lists.push(done),
            _ => {}
        }
    }
    if let Some(first) = final_lists.first() {
        for other in &final_lists[1..] {
            if other.revision == first.revision && other.value != first.value {
                res.anomaly(
                    "k8s",
                    "replica-list-mismatch",
                    format!(
                        "members {} and {} listed different objects at revision {}",
                        first.node.as_deref().unwrap_or("?"),
                        other.node.as_deref().unwrap_or("?"),
                        first.revision.unwrap_or(0)
                    ),
                    vec![(*first).clone(), (*other).clone()],
                );
            }
        }
    }
    res.set("informer-sessions", informers);
    res.set("caches-compared", compared);
    res.set("writes", writes);
    res.set("final-lists", final_lists.len());
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{F, Process};
    use std::collections::BTreeMap;

    fn op(p: u64, kind: OpType, f: &str, key: Option<&str>, value: Value) -> Op {
        let mut o = Op::new(Process::Client(p), kind, F::from(f), value);
        o.key = key.map(str::to_owned);
        o
    }

    fn m(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn informer(cache: Value, list: Value, created: i64) -> Vec<Op> {
        vec![
            op(
                1,
                OpType::Invoke,
                "informer",
                None,
                m(vec![("start", Value::Int(5))]),
            ),
            op(
                1,
                OpType::Ok,
                "informer",
                None,
                m(vec![
                    ("start", Value::Int(5)),
                    ("revision", Value::Int(9)),
                    ("created", Value::Int(created)),
                    ("mod-revision-regressions", Value::Int(0)),
                    ("canceled", Value::Null),
                    ("cache", cache),
                    ("list", list),
                ]),
            ),
        ]
    }

    fn kinds(r: &CheckResult) -> Vec<String> {
        r.anomalies.iter().map(|a| a.kind.clone()).collect()
    }

    #[test]
    fn a_consistent_informer_passes() {
        let items = m(vec![(
            "k/1",
            Value::List(vec![Value::Str("a".into()), Value::Int(7)]),
        )]);
        let r = check(&History::from_ops(informer(items.clone(), items, 1)));
        assert_eq!(r.valid, Validity::True, "{:?}", kinds(&r));
    }

    #[test]
    fn cache_mismatch_and_created_twice_are_caught() {
        let a = m(vec![(
            "k/1",
            Value::List(vec![Value::Str("a".into()), Value::Int(7)]),
        )]);
        let b = m(vec![]);
        let r = check(&History::from_ops(informer(a, b, 2)));
        assert_eq!(r.valid, Validity::False);
        assert!(kinds(&r).contains(&"informer-cache-mismatch".to_owned()));
        assert!(kinds(&r).contains(&"watch-created-count".to_owned()));
    }

    #[test]
    fn created_is_required_once_a_watch_answered() {
        let items = m(vec![]);
        // Ended by the harness before any answer: no verdict on `created`.
        let r = check(&History::from_ops(informer(
            items.clone(),
            items.clone(),
            0,
        )));
        assert_eq!(r.valid, Validity::True, "{:?}", kinds(&r));
        let mut h = informer(items.clone(), items, 0);
        if let Value::Map(v) = &mut h[1].value {
            v.insert("events".into(), Value::Int(3));
        }
        assert_eq!(
            kinds(&check(&History::from_ops(h))),
            vec!["watch-created-count".to_owned()]
        );
    }

    #[test]
    fn two_writes_on_one_guard_are_a_lost_update() {
        let arg = m(vec![
            ("value", Value::Str("x".into())),
            ("expect", Value::Int(4)),
        ]);
        let mut h = Vec::new();
        for p in [2, 4] {
            h.push(op(p, OpType::Invoke, "k-update", Some("k/3"), arg.clone()));
            let mut done = op(p, OpType::Ok, "k-update", Some("k/3"), arg.clone());
            done.revision = Some(10 + p as i64);
            h.push(done);
        }
        let r = check(&History::from_ops(h));
        assert_eq!(kinds(&r), vec!["conflicting-writes-succeeded".to_owned()]);
    }

    #[test]
    fn a_cancel_without_compaction_is_caught() {
        let h = vec![
            op(
                1,
                OpType::Invoke,
                "informer",
                None,
                m(vec![("start", Value::Int(5))]),
            ),
            op(
                1,
                OpType::Ok,
                "informer",
                None,
                m(vec![
                    ("start", Value::Int(5)),
                    ("created", Value::Int(1)),
                    ("canceled", Value::Int(8)),
                ]),
            ),
        ];
        let r = check(&History::from_ops(h));
        assert_eq!(kinds(&r), vec!["bad-compaction-cancel".to_owned()]);
    }
}
