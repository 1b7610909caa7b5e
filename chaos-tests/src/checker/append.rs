//! An Elle-style ("Elle-lite") checker for list-append transactions (`f = "txn"`, micro-ops
//! `["r", k, list]` / `["append", k, x]`, every appended `x` unique per key).
//!
//! Non-cyclic anomalies, per read of an `ok` transaction:
//! - `duplicate-elements`: a list holds an element twice;
//! - `garbage-read`: an element no transaction ever tried to append to that key;
//! - `G1a` (aborted read): an element appended only by a transaction that `fail`ed;
//! - `incompatible-order`: two reads of a key that are not prefixes of one another (so there is
//!   no single version order);
//! - `lost-append`: an acknowledged append missing from a read invoked after the append completed
//!   — this includes the final reads, so it is also the "no acknowledged write lost" check;
//! - `stale-read`: a read shorter than a read of the same key that completed before it was
//!   invoked.
//!
//! Cycles: with the version order of each key taken from its longest read, it infers ww
//! (consecutive appends), wr (writer of a read's last element → reader) and rw (reader → writer of
//! the element after what it read) edges between transactions that committed (or whose effects
//! were observed), and reports a cycle of every strongly connected component, classified as `G0`
//! (ww only), `G1c` (ww/wr), `G-single` (one rw) or `G2` (more rw). Real-time and process edges
//! are not added (the per-key real-time checks above cover stale reads and lost appends).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{History, Op, OpType, Value};
use crate::results::{CheckResult, Validity};

#[derive(Debug)]
struct Txn {
    invoke: usize,
    complete: Option<usize>,
    kind: OpType,
    /// (key, element) appends.
    appends: Vec<(String, i64)>,
    /// (key, list) reads, for ok transactions.
    reads: Vec<(String, Vec<i64>)>,
}

fn micro(v: &Value) -> Vec<(String, String, Value)> {
    match v {
        Value::List(ops) => ops
            .iter()
            .filter_map(|m| match m {
                Value::List(x) if x.len() == 3 => match (&x[0], &x[1]) {
                    (Value::Str(f), Value::Str(k)) => Some((f.clone(), k.clone(), x[2].clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn list(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::List(xs) => xs
            .iter()
            .map(|x| match x {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect(),
        Value::Null => Some(Vec::new()),
        _ => None,
    }
}

/// Runs the checker over the `txn` operations of a history.
pub fn check(history: &History) -> CheckResult {
    let ops = history.ops();
    let Ok(pairs) = history.pairs() else {
        return CheckResult::new(Validity::Unknown).with("reason", "history does not pair");
    };
    let mut txns: Vec<Txn> = Vec::new();
    for p in pairs {
        let inv = &ops[p.invoke];
        if inv.f.as_str() != "txn" {
            continue;
        }
        let done = p.complete.map(|c| &ops[c]);
        let kind = done.map_or(OpType::Info, |d| d.kind);
        let appends = micro(&inv.value)
            .into_iter()
            .filter(|(f, _, _)| f == "append")
            .filter_map(|(_, k, x)| match x {
                Value::Int(n) => Some((k, n)),
                _ => None,
            })
            .collect();
        let reads = match done {
            Some(d) if d.kind == OpType::Ok => micro(&d.value)
                .into_iter()
                .filter(|(f, _, _)| f == "r")
                .filter_map(|(_, k, v)| list(&v).map(|l| (k, l)))
                .collect(),
            _ => Vec::new(),
        };
        txns.push(Txn {
            invoke: p.invoke,
            complete: p.complete,
            kind,
            appends,
            reads,
        });
    }
    let mut res = CheckResult::new(Validity::True);
    res.set("txns", txns.len());
    res.set("ok", txns.iter().filter(|t| t.kind == OpType::Ok).count());
    let ex = |t: &Txn| -> Vec<Op> {
        let mut v = vec![ops[t.invoke].clone()];
        if let Some(c) = t.complete {
            v.push(ops[c].clone());
        }
        v
    };
    // Writers of each (key, element).
    let mut writer: HashMap<(String, i64), usize> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for (k, x) in &t.appends {
            writer.insert((k.clone(), *x), i);
        }
    }
    // Per-read checks and the longest read of each key.
    let mut longest: BTreeMap<String, (Vec<i64>, usize)> = BTreeMap::new();
    for (i, t) in txns.iter().enumerate() {
        for (k, l) in &t.reads {
            let mut seen = HashSet::new();
            for x in l {
                if !seen.insert(*x) {
                    res.anomaly(
                        "append",
                        "duplicate-elements",
                        format!("a read of {k} holds element {x} twice: {l:?}"),
                        ex(t),
                    );
                }
                match writer.get(&(k.clone(), *x)) {
                    None => res.anomaly(
                        "append",
                        "garbage-read",
                        format!("a read of {k} holds {x}, which no transaction appended to {k}"),
                        ex(t),
                    ),
                    Some(&w) if txns[w].kind == OpType::Fail => {
                        let mut v = ex(t);
                        v.extend(ex(&txns[w]));
                        res.anomaly(
                            "append",
                            "G1a",
                            format!(
                                "a read of {k} observed {x}, appended by a transaction that failed"
                            ),
                            v,
                        )
                    }
                    _ => {}
                }
            }
            let e = longest.entry(k.clone()).or_insert((Vec::new(), i));
            if l.len() > e.0.len() {
                *e = (l.clone(), i);
            }
        }
    }
    // Prefix consistency.
    for (i, t) in txns.iter().enumerate() {
        for (k, l) in &t.reads {
            let (long, j) = &longest[k];
            if long[..l.len()] != l[..] {
                let mut v = ex(t);
                v.extend(ex(&txns[*j]));
                res.anomaly(
                    "append",
                    "incompatible-order",
                    format!(
                        "reads of {k} disagree on the order: {l:?} is not a prefix of {long:?}"
                    ),
                    v,
                );
            }
            let _ = i;
        }
    }
    // Real-time: lost appends and stale reads, per key, sweeping positions.
    // Acknowledged appends by completion position.
    let mut acked: HashMap<String, Vec<(usize, i64, usize)>> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        if t.kind == OpType::Ok
            && let Some(c) = t.complete
        {
            for (k, x) in &t.appends {
                acked.entry(k.clone()).or_default().push((c, *x, i));
            }
        }
    }
    for v in acked.values_mut() {
        v.sort_unstable();
    }
    // Completed reads by completion position: (pos, len, txn).
    let mut completed_reads: HashMap<String, Vec<(usize, usize, usize)>> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        if let Some(c) = t.complete {
            for (k, l) in &t.reads {
                completed_reads
                    .entry(k.clone())
                    .or_default()
                    .push((c, l.len(), i));
            }
        }
    }
    for v in completed_reads.values_mut() {
        v.sort_unstable();
    }
    let mut lost_reported: HashSet<(String, i64)> = HashSet::new();
    for t in &txns {
        for (k, l) in &t.reads {
            let set: HashSet<i64> = l.iter().copied().collect();
            if let Some(a) = acked.get(k) {
                for &(c, x, w) in a.iter().take_while(|(c, _, _)| *c < t.invoke) {
                    let _ = c;
                    if !set.contains(&x) && lost_reported.insert((k.clone(), x)) {
                        let mut v = ex(&txns[w]);
                        v.extend(ex(t));
                        res.anomaly(
                            "append",
                            "lost-append",
                            format!(
                                "the append of {x} to {k} was acknowledged, but a read of {k} \
                                 invoked afterwards does not hold it ({l:?})"
                            ),
                            v,
                        );
                    }
                }
            }
            if let Some(rs) = completed_reads.get(k)
                && let Some(&(_, len, j)) = rs
                    .iter()
                    .take_while(|(c, _, _)| *c < t.invoke)
                    .max_by_key(|(_, len, _)| *len)
                && l.len() < len
            {
                let mut v = ex(&txns[j]);
                v.extend(ex(t));
                res.anomaly(
                    "append",
                    "stale-read",
                    format!(
                        "a read of {k} returned {} elements, but a read that completed before it \
                         was invoked had already returned {len}",
                        l.len()
                    ),
                    v,
                );
            }
        }
    }
    // Dependency graph.
    let committed = |i: usize| txns[i].kind == OpType::Ok;
    let mut edges: HashMap<usize, Vec<(usize, &'static str)>> = HashMap::new();
    let mut add = |a: usize, b: usize, kind: &'static str| {
        if a != b {
            edges.entry(a).or_default().push((b, kind));
        }
    };
    for (k, (order, _)) in &longest {
        let w = |x: i64| writer.get(&(k.clone(), x)).copied();
        for pair in order.windows(2) {
            if let (Some(a), Some(b)) = (w(pair[0]), w(pair[1])) {
                add(a, b, "ww");
            }
        }
        for (i, t) in txns.iter().enumerate() {
            if !committed(i) {
                continue;
            }
            for (rk, l) in &t.reads {
                if rk != k {
                    continue;
                }
                if let Some(&last) = l.last()
                    && let Some(a) = w(last)
                {
                    add(a, i, "wr");
                }
                if let Some(&next) = order.get(l.len())
                    && let Some(b) = w(next)
                {
                    add(i, b, "rw");
                }
            }
        }
    }
    let cycles = find_cycles(txns.len(), &edges);
    res.set("cycles", cycles.len());
    for cycle in cycles.into_iter().take(5) {
        let rw = cycle.iter().filter(|(_, k)| *k == "rw").count();
        let wr = cycle.iter().filter(|(_, k)| *k == "wr").count();
        let class = match (rw, wr) {
            (0, 0) => "G0",
            (0, _) => "G1c",
            (1, _) => "G-single",
            _ => "G2",
        };
        let steps: Vec<String> = cycle
            .iter()
            .map(|(t, k)| format!("T{} -{k}->", ops[txns[*t].invoke].index.unwrap_or(0)))
            .collect();
        let v: Vec<Op> = cycle.iter().flat_map(|(t, _)| ex(&txns[*t])).collect();
        res.anomaly(
            "append",
            class,
            format!(
                "dependency cycle (T<n> = transaction invoked at event n): {} back to the start",
                steps.join(" ")
            ),
            v,
        );
    }
    res
}

/// One cycle (as `(node, kind of the edge leaving it)`) per non-trivial strongly connected
/// component.
fn find_cycles(
    n: usize,
    edges: &HashMap<usize, Vec<(usize, &'static str)>>,
) -> Vec<Vec<(usize, &'static str)>> {
    // Tarjan, iteratively.
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut comp = vec![usize::MAX; n];
    let mut comps: Vec<Vec<usize>> = Vec::new();
    let mut counter = 0;
    let empty = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut ei)) = call.last_mut() {
            let out = edges.get(&v).unwrap_or(&empty);
            if *ei < out.len() {
                let w = out[*ei].0;
                *ei += 1;
                if index[w] == usize::MAX {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut c = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp[w] = comps.len();
                        c.push(w);
                        if w == v {
                            break;
                        }
                    }
                    comps.push(c);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (ci, c) in comps.iter().enumerate() {
        if c.len() < 2 {
            continue;
        }
        // BFS from c[0] back to itself inside the component.
        let start = c[0];
        let mut prev: HashMap<usize, (usize, &'static str)> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut found = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for &(w, k) in edges.get(&v).unwrap_or(&empty) {
                if comp[w] != ci {
                    continue;
                }
                if w == start {
                    found = Some((v, k));
                    break 'bfs;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(w) {
                    e.insert((v, k));
                    queue.push_back(w);
                }
            }
        }
        if let Some((last, k)) = found {
            let mut cycle = vec![(last, k)];
            let mut v = last;
            while v != start {
                let (p, pk) = prev[&v];
                cycle.push((p, pk));
                v = p;
            }
            cycle.reverse();
            out.push(cycle);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{F, Process};

    fn m(f: &str, k: &str, v: Value) -> Value {
        Value::List(vec![Value::Str(f.into()), Value::Str(k.into()), v])
    }

    fn l(xs: &[i64]) -> Value {
        Value::List(xs.iter().map(|&x| Value::Int(x)).collect())
    }

    struct B(History);

    impl B {
        fn txn(&mut self, p: u64, inv: Vec<Value>, kind: OpType, done: Vec<Value>) -> &mut B {
            self.0.push(Op::new(
                Process::Client(p),
                OpType::Invoke,
                F::from("txn"),
                Value::List(inv),
            ));
            self.0.push(Op::new(
                Process::Client(p),
                kind,
                F::from("txn"),
                Value::List(done),
            ));
            self
        }
    }

    fn kinds(r: &CheckResult) -> Vec<String> {
        r.anomalies.iter().map(|a| a.kind.clone()).collect()
    }

    #[test]
    fn valid_history_passes() {
        let mut b = B(History::new());
        b.txn(
            1,
            vec![m("append", "a", Value::Int(1))],
            OpType::Ok,
            vec![m("append", "a", Value::Int(1))],
        )
        .txn(
            2,
            vec![m("r", "a", Value::Null), m("append", "a", Value::Int(2))],
            OpType::Ok,
            vec![m("r", "a", l(&[1])), m("append", "a", Value::Int(2))],
        )
        .txn(
            3,
            vec![m("r", "a", Value::Null)],
            OpType::Ok,
            vec![m("r", "a", l(&[1, 2]))],
        );
        let r = check(&b.0);
        assert_eq!(r.valid, Validity::True, "{:?}", kinds(&r));
    }

    #[test]
    fn flags_lost_stale_aborted_and_duplicate() {
        let mut b = B(History::new());
        b.txn(
            1,
            vec![m("append", "a", Value::Int(1))],
            OpType::Ok,
            vec![m("append", "a", Value::Int(1))],
        )
        .txn(
            2,
            vec![m("r", "a", Value::Null)],
            OpType::Ok,
            vec![m("r", "a", l(&[]))],
        );
        assert!(kinds(&check(&b.0)).contains(&"lost-append".to_owned()));

        let mut b = B(History::new());
        b.txn(
            1,
            vec![m("append", "a", Value::Int(1))],
            OpType::Fail,
            vec![m("append", "a", Value::Int(1))],
        )
        .txn(
            2,
            vec![m("r", "a", Value::Null)],
            OpType::Ok,
            vec![m("r", "a", l(&[1, 1]))],
        );
        let k = kinds(&check(&b.0));
        assert!(
            k.contains(&"G1a".to_owned()) && k.contains(&"duplicate-elements".to_owned()),
            "{k:?}"
        );

        let mut b = B(History::new());
        b.txn(
            1,
            vec![
                m("append", "a", Value::Int(1)),
                m("append", "a", Value::Int(2)),
            ],
            OpType::Info,
            vec![],
        )
        .txn(
            2,
            vec![m("r", "a", Value::Null)],
            OpType::Ok,
            vec![m("r", "a", l(&[1, 2]))],
        )
        .txn(
            3,
            vec![m("r", "a", Value::Null)],
            OpType::Ok,
            vec![m("r", "a", l(&[1]))],
        )
        .txn(
            4,
            vec![m("r", "a", Value::Null)],
            OpType::Ok,
            vec![m("r", "a", l(&[2]))],
        );
        let k = kinds(&check(&b.0));
        assert!(
            k.contains(&"stale-read".to_owned()) && k.contains(&"incompatible-order".to_owned()),
            "{k:?}"
        );
    }

    #[test]
    fn finds_a_g_single_cycle() {
        // T1 reads a=[] and appends b=1; T2 reads b=[] and appends a=2: write skew (G2/G-single).
        let mut h = History::new();
        let p = |n| Process::Client(n);
        h.push(Op::new(
            p(1),
            OpType::Invoke,
            F::from("txn"),
            Value::List(vec![
                m("r", "a", Value::Null),
                m("append", "b", Value::Int(1)),
            ]),
        ));
        h.push(Op::new(
            p(2),
            OpType::Invoke,
            F::from("txn"),
            Value::List(vec![
                m("r", "b", Value::Null),
                m("append", "a", Value::Int(2)),
            ]),
        ));
        h.push(Op::new(
            p(1),
            OpType::Ok,
            F::from("txn"),
            Value::List(vec![m("r", "a", l(&[])), m("append", "b", Value::Int(1))]),
        ));
        h.push(Op::new(
            p(2),
            OpType::Ok,
            F::from("txn"),
            Value::List(vec![m("r", "b", l(&[])), m("append", "a", Value::Int(2))]),
        ));
        h.push(Op::new(
            p(3),
            OpType::Invoke,
            F::from("txn"),
            Value::List(vec![m("r", "a", Value::Null), m("r", "b", Value::Null)]),
        ));
        h.push(Op::new(
            p(3),
            OpType::Ok,
            F::from("txn"),
            Value::List(vec![m("r", "a", l(&[2])), m("r", "b", l(&[1]))]),
        ));
        let r = check(&h);
        assert!(kinds(&r).contains(&"G2".to_owned()), "{:?}", kinds(&r));
    }
}
