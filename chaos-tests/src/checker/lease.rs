//! Lease safety (see `workload::lease` for the history format).
//!
//! - `revoked-key-visible`: a read invoked after an acknowledged `revoke` of a key's lease still
//!   returns the key;
//! - `early-expiry`: a key is gone although its lease was certainly alive: the read was invoked
//!   before `t + TTL` for some acknowledged `grant` or `keepalive` invoked at `t` (the server saw
//!   it no earlier than `t`, and a lease lives at least its TTL from then), the key's `put` had
//!   completed, and no `revoke` of the lease had been invoked;
//! - `lease-never-expired`: a `final-lread`, taken after every lease must have run out, still
//!   finds the key.

use std::collections::HashMap;

use crate::history::{History, Op, OpType, Value};
use crate::results::{CheckResult, Validity};

fn int(v: &Value, k: &str) -> Option<i64> {
    match v {
        Value::Map(m) => match m.get(k) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        },
        Value::Int(n) if k.is_empty() => Some(*n),
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
    // lease -> latest certain expiry lower bound (ns), with the op that set it.
    let mut alive_until: HashMap<i64, (u64, usize)> = HashMap::new();
    // key -> (lease, put completion position)
    let mut key_lease: HashMap<String, (i64, usize)> = HashMap::new();
    // lease -> first revoke invoke position, and ok revoke completion position
    let mut revoke_invoked: HashMap<i64, usize> = HashMap::new();
    let mut revoke_done: HashMap<i64, usize> = HashMap::new();
    let mut reads = Vec::new();
    let mut leases = 0usize;
    for p in &pairs {
        let inv = &ops[p.invoke];
        let done = p.complete.map(|c| &ops[c]).filter(|d| d.kind == OpType::Ok);
        let t_inv = inv.time.unwrap_or(0);
        match inv.f.as_str() {
            "grant" => {
                if let Some(d) = done
                    && let (Some(id), Some(ttl)) = (int(&d.value, "id"), int(&d.value, "ttl"))
                {
                    leases += 1;
                    let until = t_inv + (ttl.max(0) as u64) * 1_000_000_000;
                    let e = alive_until.entry(id).or_insert((until, p.invoke));
                    if until > e.0 {
                        *e = (until, p.invoke);
                    }
                }
            }
            "keepalive" => {
                if let (Some(d), Some(id)) = (done, int(&inv.value, ""))
                    && let Some(ttl) = int(&d.value, "")
                    && ttl > 0
                {
                    let until = t_inv + (ttl as u64) * 1_000_000_000;
                    let e = alive_until.entry(id).or_insert((until, p.invoke));
                    if until > e.0 {
                        *e = (until, p.invoke);
                    }
                }
            }
            "put" => {
                if let (Some(d), Some(k), Some(l)) = (done, &inv.key, int(&inv.value, "lease")) {
                    let _ = d;
                    key_lease.insert(k.clone(), (l, p.complete.unwrap_or(usize::MAX)));
                }
            }
            "revoke" => {
                if let Some(id) = int(&inv.value, "") {
                    revoke_invoked.entry(id).or_insert(p.invoke);
                    if done.is_some() {
                        revoke_done
                            .entry(id)
                            .or_insert(p.complete.unwrap_or(usize::MAX));
                    }
                }
            }
            "lread" | "final-lread" => {
                if let Some(d) = done {
                    reads.push((p.invoke, p.complete.unwrap_or(usize::MAX), inv, d));
                }
            }
            _ => {}
        }
    }
    let mut checked = 0;
    for (ip, cp, inv, d) in &reads {
        let Some(key) = &inv.key else { continue };
        let Some(&(lease, put_done)) = key_lease.get(key) else {
            continue;
        };
        checked += 1;
        let present = !d.value.is_null();
        let ex = |extra: Option<usize>| {
            let mut v: Vec<Op> = Vec::new();
            if let Some(e) = extra {
                v.push(ops[e].clone());
            }
            v.push((*inv).clone());
            v.push((*d).clone());
            v
        };
        if inv.f.as_str() == "final-lread" {
            if present {
                res.anomaly(
                    "lease",
                    "lease-never-expired",
                    format!(
                        "{key} (lease {lease:x}) still exists after every lease must have expired"
                    ),
                    ex(None),
                );
            }
            continue;
        }
        if present
            && let Some(&rc) = revoke_done.get(&lease)
            && rc < *ip
        {
            res.anomaly(
                "lease",
                "revoked-key-visible",
                format!("{key} was read after the revoke of its lease {lease:x} was acknowledged"),
                ex(Some(rc)),
            );
        }
        if !present
            && put_done < *ip
            && revoke_invoked.get(&lease).is_none_or(|&r| r > *cp)
            && let Some(&(until, src)) = alive_until.get(&lease)
            && inv.time.unwrap_or(u64::MAX) < until
        {
            res.anomaly(
                "lease",
                "early-expiry",
                format!(
                    "{key} was gone {:.3} s before its lease {lease:x} could have expired",
                    (until - inv.time.unwrap_or(0)) as f64 / 1e9
                ),
                ex(Some(src)),
            );
        }
    }
    res.set("leases", leases);
    res.set("reads-checked", checked);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{F, Process};
    use std::collections::BTreeMap;

    fn at(op: Op, t: u64) -> Op {
        op.at(t * 1_000_000_000)
    }

    #[test]
    fn early_expiry_and_revoke_visibility() {
        let c = Process::Client;
        let grant_ok = Value::Map(BTreeMap::from([
            ("id".to_owned(), Value::Int(7)),
            ("ttl".to_owned(), Value::Int(5)),
        ]));
        let put_v = Value::Map(BTreeMap::from([
            ("value".to_owned(), Value::Str("x".into())),
            ("lease".to_owned(), Value::Int(7)),
        ]));
        let base = vec![
            at(
                Op::new(c(1), OpType::Invoke, F::from("grant"), Value::Int(5)),
                0,
            ),
            at(Op::new(c(1), OpType::Ok, F::from("grant"), grant_ok), 0),
            at(
                Op::new(c(1), OpType::Invoke, F::Put, put_v.clone()).with_key("l/1"),
                1,
            ),
            at(Op::new(c(1), OpType::Ok, F::Put, put_v).with_key("l/1"), 1),
        ];
        let mut h = base.clone();
        h.push(at(
            Op::new(c(1), OpType::Invoke, F::from("lread"), Value::Null).with_key("l/1"),
            2,
        ));
        h.push(at(
            Op::new(c(1), OpType::Ok, F::from("lread"), Value::Null).with_key("l/1"),
            2,
        ));
        let r = check(&History::from_ops(h));
        assert_eq!(r.anomalies[0].kind, "early-expiry");
        let mut h = base.clone();
        h.push(at(
            Op::new(c(1), OpType::Invoke, F::from("lread"), Value::Null).with_key("l/1"),
            9,
        ));
        h.push(at(
            Op::new(c(1), OpType::Ok, F::from("lread"), Value::Null).with_key("l/1"),
            9,
        ));
        assert_eq!(check(&History::from_ops(h)).valid, Validity::True);
        let mut h = base;
        h.push(at(
            Op::new(c(1), OpType::Invoke, F::from("revoke"), Value::Int(7)),
            2,
        ));
        h.push(at(
            Op::new(c(1), OpType::Ok, F::from("revoke"), Value::Int(7)),
            2,
        ));
        h.push(at(
            Op::new(c(1), OpType::Invoke, F::from("lread"), Value::Null).with_key("l/1"),
            3,
        ));
        h.push(at(
            Op::new(c(1), OpType::Ok, F::from("lread"), Value::Str("x".into())).with_key("l/1"),
            3,
        ));
        assert_eq!(
            check(&History::from_ops(h)).anomalies[0].kind,
            "revoked-key-visible"
        );
    }
}
