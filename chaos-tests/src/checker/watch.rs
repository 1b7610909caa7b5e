//! Watch guarantees, checked against the reference history read after the run (the `ok`
//! `final-watch` session from revision 1; see `workload::watch` for the history format).
//!
//! The reference itself must be ordered, unique, and agree with the writes:
//! - every acknowledged `put`/`mput`/`delete` (that deleted something) appears at exactly the
//!   revision it reported (`lost-write`, `wrong-revision`) — "no acknowledged write lost";
//! - every event's value was written by some attempted put (`phantom-event`), never by one that
//!   definitely failed (`aborted-write-visible`);
//! - `prev_kv` of each event equals the key's previous state (`wrong-prev-kv`);
//! - the last event of each key agrees with the `final-read` (`final-state-mismatch`).
//!
//! Every watcher session must be (etcd robustness's properties):
//! - **ordered**: event revisions never decrease (`unordered`);
//! - **unique**: a watcher never gets the same (revision, key) twice over all its sessions
//!   (`duplicate-event`);
//! - **atomic**: one revision's events arrive in one response (`split-revision`);
//! - **correct**: each event equals the reference event, prev_kv included when asked
//!   (`event-mismatch`);
//! - **resumable**: a session from revision S starts with the first reference event ≥ S
//!   (`resume-mismatch`);
//! - **reliable**: no reference event between S and the highest revision the session knows it has
//!   (last event or progress notification) is missing (`missed-event`);
//! - **bookmarkable**: nothing at or below a progress notification's revision arrives after it
//!   (`event-after-progress`).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{History, Op, OpType, Process, Value};
use crate::results::{CheckResult, Validity};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    rev: i64,
    key: String,
    delete: bool,
    value: Option<String>,
    prev: Option<String>,
}

#[derive(Debug)]
enum Resp {
    Events(Vec<Ev>),
    Progress(i64),
}

#[derive(Debug)]
struct Session {
    invoke: usize,
    complete: usize,
    process: Process,
    start: i64,
    prev_kv: bool,
    responses: Vec<Resp>,
}

fn get<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    match v {
        Value::Map(m) => m.get(k),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_session(invoke: usize, complete: usize, op: &Op) -> Session {
    let v = &op.value;
    let mut responses = Vec::new();
    if let Some(Value::List(rs)) = get(v, "responses") {
        for r in rs {
            if get(r, "progress") == Some(&Value::Bool(true)) {
                responses.push(Resp::Progress(int(get(r, "rev")).unwrap_or(0)));
            } else if let Some(Value::List(evs)) = get(r, "events") {
                let evs = evs
                    .iter()
                    .filter_map(|e| match e {
                        Value::List(x) if x.len() == 5 => Some(Ev {
                            rev: int(Some(&x[0]))?,
                            key: string(&x[1])?,
                            delete: x[2] == Value::Str("delete".into()),
                            value: string(&x[3]),
                            prev: string(&x[4]),
                        }),
                        _ => None,
                    })
                    .collect();
                responses.push(Resp::Events(evs));
            }
        }
    }
    Session {
        invoke,
        complete,
        process: op.process.clone(),
        start: int(get(v, "start")).unwrap_or(1),
        prev_kv: get(v, "prev-kv") == Some(&Value::Bool(true)),
        responses,
    }
}

/// Runs the checks.
pub fn check(history: &History) -> CheckResult {
    let ops = history.ops();
    let Ok(pairs) = history.pairs() else {
        return CheckResult::new(Validity::Unknown).with("reason", "history does not pair");
    };
    let mut sessions = Vec::new();
    let mut reference: Option<Session> = None;
    let mut final_read: Option<&Op> = None;
    let mut writes = Vec::new();
    for p in &pairs {
        let inv = &ops[p.invoke];
        let done = p.complete.map(|c| (c, &ops[c]));
        match inv.f.as_str() {
            "watch" => {
                if let Some((c, d)) = done {
                    sessions.push(parse_session(p.invoke, c, d));
                }
            }
            "final-watch" => {
                if let Some((c, d)) = done
                    && d.kind == OpType::Ok
                {
                    reference = Some(parse_session(p.invoke, c, d));
                }
            }
            "final-read" => {
                if let Some((_, d)) = done
                    && d.kind == OpType::Ok
                {
                    final_read = Some(d);
                }
            }
            "put" | "mput" | "delete" => writes.push(*p),
            _ => {}
        }
    }
    let Some(reference) = reference else {
        return CheckResult::new(Validity::Unknown)
            .with("reason", "no complete final watch history was read");
    };
    let mut res = CheckResult::new(Validity::True);
    let ref_op = |extra: Vec<Op>| {
        let mut v = extra;
        v.push(ops[reference.invoke].clone());
        v
    };
    // The reference, flattened.
    let mut ref_events: Vec<Ev> = Vec::new();
    for r in &reference.responses {
        if let Resp::Events(evs) = r {
            ref_events.extend(evs.iter().cloned());
        }
    }
    let mut by_rk: HashMap<(i64, String), Ev> = HashMap::new();
    let mut last_rev = 0;
    for e in &ref_events {
        if e.rev < last_rev {
            res.anomaly(
                "watch",
                "unordered",
                format!(
                    "the reference history goes back from revision {last_rev} to {}",
                    e.rev
                ),
                ref_op(vec![]),
            );
        }
        last_rev = last_rev.max(e.rev);
        if by_rk.insert((e.rev, e.key.clone()), e.clone()).is_some() {
            res.anomaly(
                "watch",
                "duplicate-event",
                format!(
                    "the reference history has {} at revision {} twice",
                    e.key, e.rev
                ),
                ref_op(vec![]),
            );
        }
    }
    // prev_kv of the reference against the replayed state.
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    let mut prev_bad = 0;
    for e in &ref_events {
        let before = state.get(&e.key).cloned();
        if e.prev != before && prev_bad < 3 {
            prev_bad += 1;
            res.anomaly(
                "watch",
                "wrong-prev-kv",
                format!(
                    "reference event {} at revision {} carries prev value {:?}, but the key held {:?}",
                    e.key, e.rev, e.prev, before
                ),
                ref_op(vec![]),
            );
        }
        if e.delete {
            state.remove(&e.key);
        } else if let Some(v) = &e.value {
            state.insert(e.key.clone(), v.clone());
        }
    }
    // Final state.
    if let Some(fr) = final_read {
        let read: BTreeMap<String, String> = match &fr.value {
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| string(v).map(|s| (k.clone(), s)))
                .collect(),
            _ => BTreeMap::new(),
        };
        if read != state {
            res.anomaly(
                "watch",
                "final-state-mismatch",
                format!(
                    "the final Range returned {} keys that differ from the state replayed from the \
                     event history (e.g. {:?})",
                    read.len(),
                    read.iter()
                        .find(|(k, v)| state.get(*k) != Some(*v))
                        .map(|(k, _)| k.clone())
                        .or_else(|| state.keys().find(|k| !read.contains_key(*k)).cloned())
                ),
                vec![fr.clone()],
            );
        }
    }
    // Writes.
    let mut written_by: HashMap<String, OpType> = HashMap::new();
    for p in &writes {
        let inv = &ops[p.invoke];
        let done = p.complete.map(|c| &ops[c]);
        let kind = done.map_or(OpType::Info, |d| d.kind);
        let mut puts: Vec<(String, String)> = Vec::new();
        match inv.f.as_str() {
            "put" => {
                if let (Some(k), Some(v)) = (&inv.key, string(&inv.value)) {
                    puts.push((k.clone(), v));
                }
            }
            "mput" => {
                if let Value::List(kvs) = &inv.value {
                    for kv in kvs {
                        if let Value::List(x) = kv
                            && let (Some(k), Some(v)) =
                                (x.first().and_then(string), x.get(1).and_then(string))
                        {
                            puts.push((k, v));
                        }
                    }
                }
            }
            _ => {}
        }
        for (_, v) in &puts {
            written_by.insert(v.clone(), kind);
        }
        let Some(d) = done.filter(|d| d.kind == OpType::Ok) else {
            continue;
        };
        let rev = d.revision.unwrap_or(0);
        for (k, v) in &puts {
            match by_rk.get(&(rev, k.clone())) {
                Some(e) if !e.delete && e.value.as_deref() == Some(v.as_str()) => {}
                _ => {
                    let found = ref_events
                        .iter()
                        .find(|e| e.value.as_deref() == Some(v.as_str()));
                    let (kind, why) = match found {
                        Some(e) => (
                            "wrong-revision",
                            format!(
                                "acknowledged put {k}={v} reported revision {rev}, but the history has it at revision {}",
                                e.rev
                            ),
                        ),
                        None => (
                            "lost-write",
                            format!(
                                "acknowledged put {k}={v} (revision {rev}) is missing from the event history"
                            ),
                        ),
                    };
                    res.anomaly("watch", kind, why, ref_op(vec![inv.clone(), d.clone()]));
                }
            }
        }
        if inv.f.as_str() == "delete"
            && matches!(d.value, Value::Int(n) if n > 0)
            && let Some(k) = &inv.key
            && !by_rk.get(&(rev, k.clone())).is_some_and(|e| e.delete)
        {
            res.anomaly(
                "watch",
                "lost-write",
                format!(
                    "acknowledged delete of {k} (revision {rev}) is missing from the event history"
                ),
                ref_op(vec![inv.clone(), d.clone()]),
            );
        }
    }
    for e in &ref_events {
        if let Some(v) = &e.value {
            match written_by.get(v) {
                None => res.anomaly(
                    "watch",
                    "phantom-event",
                    format!("event {}={v} at revision {} matches no write", e.key, e.rev),
                    ref_op(vec![]),
                ),
                Some(OpType::Fail) => res.anomaly(
                    "watch",
                    "aborted-write-visible",
                    format!(
                        "event {}={v} at revision {} comes from a write that definitely failed",
                        e.key, e.rev
                    ),
                    ref_op(vec![]),
                ),
                _ => {}
            }
        }
    }
    // Sessions.
    let mut seen_by_process: HashMap<Process, HashSet<(i64, String)>> = HashMap::new();
    let mut events_total = 0usize;
    for s in &sessions {
        let ex = || vec![ops[s.invoke].clone(), ops[s.complete].clone()];
        let mut last = 0i64;
        let mut high = s.start - 1;
        let mut progress_floor = 0i64;
        let mut first: Option<&Ev> = None;
        let mut rev_response: HashMap<i64, usize> = HashMap::new();
        let mut got: HashSet<(i64, String)> = HashSet::new();
        let seen = seen_by_process.entry(s.process.clone()).or_default();
        for (ri, r) in s.responses.iter().enumerate() {
            match r {
                Resp::Progress(rev) => {
                    progress_floor = progress_floor.max(*rev);
                    high = high.max(*rev);
                }
                Resp::Events(evs) => {
                    for e in evs {
                        events_total += 1;
                        first.get_or_insert(e);
                        if e.rev < last {
                            res.anomaly(
                                "watch",
                                "unordered",
                                format!("a session delivered revision {} after {last}", e.rev),
                                ex(),
                            );
                        }
                        if e.rev <= progress_floor {
                            res.anomaly("watch", "event-after-progress", format!("event at revision {} arrived after a progress notification at revision {progress_floor}", e.rev), ex());
                        }
                        if let Some(&other) = rev_response.get(&e.rev)
                            && other != ri
                        {
                            res.anomaly(
                                "watch",
                                "split-revision",
                                format!(
                                    "the events of revision {} arrived in two responses",
                                    e.rev
                                ),
                                ex(),
                            );
                        }
                        rev_response.insert(e.rev, ri);
                        if !seen.insert((e.rev, e.key.clone())) {
                            res.anomaly(
                                "watch",
                                "duplicate-event",
                                format!(
                                    "watcher {} received {} at revision {} twice",
                                    s.process, e.key, e.rev
                                ),
                                ex(),
                            );
                        }
                        got.insert((e.rev, e.key.clone()));
                        match by_rk.get(&(e.rev, e.key.clone())) {
                            None => res.anomaly("watch", "phantom-event", format!("a session received {} at revision {}, which the reference history does not have", e.key, e.rev), ex()),
                            Some(r) => {
                                let same = r.delete == e.delete
                                    && r.value == e.value
                                    && (!s.prev_kv || r.prev == e.prev);
                                if !same {
                                    res.anomaly("watch", "event-mismatch", format!("a session received {e:?}, the reference history has {r:?}"), ex());
                                }
                            }
                        }
                        last = last.max(e.rev);
                        high = high.max(e.rev);
                    }
                }
            }
        }
        // Resumable and reliable against the reference.
        let expected: Vec<&Ev> = ref_events
            .iter()
            .filter(|e| e.rev >= s.start && e.rev <= high)
            .collect();
        if let Some(f) = first
            && f.rev < s.start
        {
            res.anomaly(
                "watch",
                "resume-mismatch",
                format!(
                    "a session from revision {} delivered an event at revision {}",
                    s.start, f.rev
                ),
                ex(),
            );
        }
        if let (Some(f), Some(e0)) = (first, expected.first())
            && (f.rev, &f.key) != (e0.rev, &e0.key)
            && f.rev > e0.rev
        {
            res.anomaly(
                "watch",
                "resume-mismatch",
                format!(
                    "a session from revision {} started with revision {}, but the first event at or after it is at revision {}",
                    s.start, f.rev, e0.rev
                ),
                ex(),
            );
        }
        if let Some(missing) = expected
            .iter()
            .find(|e| !got.contains(&(e.rev, e.key.clone())))
        {
            res.anomaly(
                "watch",
                "missed-event",
                format!(
                    "a session from revision {} that got up to revision {high} never received {} at revision {}",
                    s.start, missing.key, missing.rev
                ),
                ex(),
            );
        }
    }
    res.set("sessions", sessions.len());
    res.set("events", events_total);
    res.set("reference-events", ref_events.len());
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::F;

    fn ev(rev: i64, key: &str, value: &str, prev: Option<&str>) -> Value {
        Value::List(vec![
            Value::Int(rev),
            Value::Str(key.into()),
            Value::Str("put".into()),
            Value::Str(value.into()),
            prev.map_or(Value::Null, |p| Value::Str(p.into())),
        ])
    }

    fn session(start: i64, responses: Vec<Value>) -> Value {
        Value::Map(BTreeMap::from([
            ("start".to_owned(), Value::Int(start)),
            ("prev-kv".to_owned(), Value::Bool(true)),
            ("responses".to_owned(), Value::List(responses)),
        ]))
    }

    fn resp(events: Vec<Value>) -> Value {
        let rev = match &events[0] {
            Value::List(x) => x[0].clone(),
            _ => Value::Int(0),
        };
        Value::Map(BTreeMap::from([
            ("rev".to_owned(), rev),
            ("events".to_owned(), Value::List(events)),
        ]))
    }

    fn history(watch: Vec<Value>) -> History {
        let mut h = History::new();
        let c = |p| Process::Client(p);
        let put = |h: &mut History, p, k: &str, v: &str, rev| {
            h.push(Op::new(c(p), OpType::Invoke, F::Put, Value::Str(v.into())).with_key(k));
            let mut o = Op::new(c(p), OpType::Ok, F::Put, Value::Str(v.into())).with_key(k);
            o.revision = Some(rev);
            h.push(o);
        };
        put(&mut h, 0, "w/1", "v1", 2);
        put(&mut h, 0, "w/1", "v2", 3);
        put(&mut h, 0, "w/2", "v3", 4);
        h.push(Op::new(
            c(1),
            OpType::Invoke,
            F::from("watch"),
            session(1, vec![]),
        ));
        h.push(Op::new(
            c(1),
            OpType::Ok,
            F::from("watch"),
            session(1, watch),
        ));
        let all = vec![
            resp(vec![ev(2, "w/1", "v1", None)]),
            resp(vec![ev(3, "w/1", "v2", Some("v1"))]),
            resp(vec![ev(4, "w/2", "v3", None)]),
        ];
        h.push(Op::new(
            c(9),
            OpType::Invoke,
            F::from("final-read"),
            Value::Null,
        ));
        let mut fr = Op::new(
            c(9),
            OpType::Ok,
            F::from("final-read"),
            Value::Map(BTreeMap::from([
                ("w/1".to_owned(), Value::Str("v2".into())),
                ("w/2".to_owned(), Value::Str("v3".into())),
            ])),
        );
        fr.revision = Some(4);
        h.push(fr);
        h.push(Op::new(
            c(9),
            OpType::Invoke,
            F::from("final-watch"),
            session(1, vec![]),
        ));
        h.push(Op::new(
            c(9),
            OpType::Ok,
            F::from("final-watch"),
            session(1, all),
        ));
        h
    }

    fn kinds(r: &CheckResult) -> Vec<String> {
        r.anomalies.iter().map(|a| a.kind.clone()).collect()
    }

    #[test]
    fn complete_session_passes() {
        let r = check(&history(vec![
            resp(vec![ev(2, "w/1", "v1", None)]),
            resp(vec![ev(3, "w/1", "v2", Some("v1"))]),
        ]));
        assert_eq!(r.valid, Validity::True, "{:?}", kinds(&r));
    }

    #[test]
    fn gaps_duplicates_and_wrong_values_are_caught() {
        let r = check(&history(vec![
            resp(vec![ev(2, "w/1", "v1", None)]),
            resp(vec![ev(4, "w/2", "v3", None)]),
        ]));
        assert_eq!(kinds(&r), vec!["missed-event"]);
        let r = check(&history(vec![
            resp(vec![ev(2, "w/1", "v1", None)]),
            resp(vec![ev(2, "w/1", "v1", None)]),
        ]));
        assert!(
            kinds(&r).contains(&"duplicate-event".to_owned()),
            "{:?}",
            kinds(&r)
        );
        let r = check(&history(vec![resp(vec![ev(3, "w/1", "v2", Some("v1"))])]));
        assert!(
            kinds(&r).contains(&"resume-mismatch".to_owned()),
            "{:?}",
            kinds(&r)
        );
        let r = check(&history(vec![resp(vec![ev(2, "w/1", "vX", None)])]));
        assert!(
            kinds(&r).contains(&"event-mismatch".to_owned()),
            "{:?}",
            kinds(&r)
        );
    }
}
