//! Tiny hand-written histories with known verdicts, and a cross-check of the search against a
//! brute-force enumeration on random small histories.

use std::time::Duration;

use super::*;

/// Builds histories event by event.
#[derive(Default)]
struct H {
    h: History,
    key: Option<String>,
}

impl H {
    fn new() -> H {
        H::default()
    }

    fn key(&mut self, key: &str) -> &mut H {
        self.key = Some(key.to_owned());
        self
    }

    fn ev(&mut self, p: u64, kind: OpType, f: F, value: Value, error: Option<&str>) -> &mut H {
        let mut op = Op::new(Process::Client(p), kind, f, value);
        op.key = self.key.clone();
        op.error = error.map(str::to_owned);
        self.h.push(op);
        self
    }

    fn invoke(&mut self, p: u64, f: F, value: impl Into<Value>) -> &mut H {
        self.ev(p, OpType::Invoke, f, value.into(), None)
    }

    fn ok(&mut self, p: u64, f: F, value: impl Into<Value>) -> &mut H {
        self.ev(p, OpType::Ok, f, value.into(), None)
    }

    fn fail(&mut self, p: u64, f: F, value: impl Into<Value>) -> &mut H {
        self.ev(p, OpType::Fail, f, value.into(), None)
    }

    fn info(&mut self, p: u64, f: F) -> &mut H {
        self.ev(p, OpType::Info, f, Value::Null, Some("timed-out"))
    }

    // Whole operations, invoked and completed back to back.
    fn write(&mut self, p: u64, v: i64) -> &mut H {
        self.invoke(p, F::Write, v).ok(p, F::Write, v)
    }

    fn read(&mut self, p: u64, v: Option<i64>) -> &mut H {
        let got = v.map_or(Value::Null, Value::Int);
        self.invoke(p, F::Read, Value::Null).ok(p, F::Read, got)
    }

    fn verdict(&self) -> Verdict {
        check(
            &self.h,
            &CheckOptions::with_timeout(Duration::from_secs(10)),
        )
        .unwrap()
    }
}

fn cas(from: i64, to: i64) -> Value {
    Value::List(vec![from.into(), to.into()])
}

fn counterexample(v: Verdict) -> Counterexample {
    match v {
        Verdict::NotLinearizable { counterexample } => *counterexample,
        other => panic!("expected a violation, got {other}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_eq!(H::new().verdict(), Verdict::Linearizable);
}

#[test]
fn sequential_history_is_linearizable() {
    let v = H::new()
        .read(1, None)
        .write(1, 1)
        .read(2, Some(1))
        .write(2, 2)
        .read(1, Some(2))
        .verdict();
    assert_eq!(v, Verdict::Linearizable);
}

#[test]
fn stale_read_is_not_linearizable() {
    let v = H::new().write(1, 1).write(2, 2).read(3, Some(1)).verdict();
    let c = counterexample(v);
    assert_eq!(c.key, None);
    assert_eq!(c.ops, 3);
    assert_eq!(c.prefix_len, 2);
    assert_eq!(c.state, "2");
    assert_eq!(c.stuck.f, F::Read);
    assert_eq!(c.stuck.result, Value::Int(1));
    assert_eq!(c.stuck.invoke_index, 4);
    assert_eq!(c.stuck.complete_index, Some(5));
    assert!(c.concurrent.is_empty());
    let text = c.to_string();
    assert!(text.contains("process 3 read -> 1"), "{text}");
}

#[test]
fn read_of_a_value_never_written_is_not_linearizable() {
    let c = counterexample(H::new().write(1, 1).read(2, Some(7)).verdict());
    assert_eq!(c.prefix_len, 1);
    assert_eq!(c.stuck.result, Value::Int(7));
}

#[test]
fn concurrent_write_and_read_may_order_either_way() {
    for seen in [None, Some(1)] {
        let got = seen.map_or(Value::Null, Value::Int);
        // The read is entirely inside the write.
        let v = H::new()
            .invoke(1, F::Write, 1)
            .invoke(2, F::Read, Value::Null)
            .ok(2, F::Read, got.clone())
            .ok(1, F::Write, 1)
            .verdict();
        assert_eq!(v, Verdict::Linearizable, "read {got} inside the write");
        // The write is entirely inside the read.
        let v = H::new()
            .invoke(2, F::Read, Value::Null)
            .write(1, 1)
            .ok(2, F::Read, got.clone())
            .verdict();
        assert_eq!(v, Verdict::Linearizable, "write inside the read of {got}");
    }
}

#[test]
fn indeterminate_write_may_have_taken_effect() {
    // The write timed out, yet a later read sees it: it must be assumed applied.
    let v = H::new()
        .invoke(1, F::Write, 1)
        .info(1, F::Write)
        .read(2, None)
        .read(2, Some(1))
        .verdict();
    assert_eq!(v, Verdict::Linearizable);
    // An invocation that never completed is read the same way, and may also never happen.
    let v = H::new()
        .invoke(1, F::Write, 1)
        .read(2, Some(1))
        .write(3, 2)
        .read(2, Some(2))
        .verdict();
    assert_eq!(v, Verdict::Linearizable);
    let v = H::new().invoke(1, F::Write, 1).read(2, None).verdict();
    assert_eq!(v, Verdict::Linearizable);
}

#[test]
fn indeterminate_write_takes_effect_once_and_not_before_its_invocation() {
    // Seen before it was invoked.
    let c = counterexample(
        H::new()
            .read(2, Some(1))
            .invoke(1, F::Write, 1)
            .info(1, F::Write)
            .verdict(),
    );
    assert_eq!(c.prefix_len, 0);
    // Seen, overwritten, and seen again: it cannot take effect twice.
    let c = counterexample(
        H::new()
            .invoke(1, F::Write, 1)
            .info(1, F::Write)
            .read(2, Some(1))
            .write(3, 2)
            .read(2, Some(1))
            .verdict(),
    );
    assert_eq!(c.state, "2");
    assert_eq!(c.prefix_len, 3);
}

#[test]
fn cas_semantics() {
    // Succeeds only on a present, equal register.
    let v = H::new()
        .write(1, 1)
        .invoke(2, F::Cas, cas(1, 2))
        .ok(2, F::Cas, cas(1, 2))
        .read(3, Some(2))
        .verdict();
    assert_eq!(v, Verdict::Linearizable);
    let c = counterexample(
        H::new()
            .invoke(2, F::Cas, cas(1, 2))
            .ok(2, F::Cas, cas(1, 2))
            .verdict(),
    );
    assert_eq!(c.state, "absent");
    // A fail without an error is a compare that came out false: definite, no effect.
    let v = H::new()
        .write(1, 1)
        .invoke(2, F::Cas, cas(3, 4))
        .fail(2, F::Cas, cas(3, 4))
        .read(3, Some(1))
        .verdict();
    assert_eq!(v, Verdict::Linearizable);
    let v = H::new()
        .invoke(2, F::Cas, cas(3, 4))
        .fail(2, F::Cas, cas(3, 4))
        .read(3, None)
        .verdict();
    assert_eq!(
        v,
        Verdict::Linearizable,
        "compare fails on an absent register"
    );
    let c = counterexample(
        H::new()
            .write(1, 1)
            .invoke(2, F::Cas, cas(1, 2))
            .fail(2, F::Cas, cas(1, 2))
            .verdict(),
    );
    assert_eq!(c.stuck.f, F::Cas);
    assert_eq!(c.stuck.outcome, OpType::Fail);
    // ... and it has no effect.
    let c = counterexample(
        H::new()
            .write(1, 3)
            .invoke(2, F::Cas, cas(1, 4))
            .fail(2, F::Cas, cas(1, 4))
            .read(3, Some(4))
            .verdict(),
    );
    assert_eq!(c.state, "3");
    // A fail with an error did not happen and observed nothing.
    let v = H::new()
        .write(1, 1)
        .invoke(2, F::Cas, cas(1, 2))
        .ev(2, OpType::Fail, F::Cas, cas(1, 2), Some("not-leader"))
        .read(3, Some(1))
        .verdict();
    assert_eq!(v, Verdict::Linearizable);
    // An indeterminate cas applies only if its compare holds.
    let v = H::new()
        .write(1, 1)
        .invoke(2, F::Cas, cas(1, 2))
        .info(2, F::Cas)
        .read(3, Some(2))
        .verdict();
    assert_eq!(v, Verdict::Linearizable);
    let c = counterexample(
        H::new()
            .write(1, 5)
            .invoke(2, F::Cas, cas(1, 2))
            .info(2, F::Cas)
            .read(3, Some(2))
            .verdict(),
    );
    assert_eq!(c.state, "5");
    assert_eq!(c.prefix_len, 2, "the write, then the cas without effect");
}

#[test]
fn timed_out_reads_and_failed_writes_constrain_nothing() {
    let v = H::new()
        .write(1, 1)
        .invoke(2, F::Read, Value::Null)
        .ev(2, OpType::Fail, F::Read, Value::Null, Some("timed-out"))
        .invoke(3, F::Write, 2)
        .fail(3, F::Write, 2)
        .read(4, Some(1))
        .verdict();
    assert_eq!(v, Verdict::Linearizable);
}

#[test]
fn keys_are_checked_independently_and_named() {
    let mut h = H::new();
    h.key("a").write(1, 1);
    h.key("b").write(2, 1);
    h.key("a").read(3, Some(1));
    h.key("b").write(2, 2).read(3, Some(1));
    let report = check_report(&h.h, &CheckOptions::default()).unwrap();
    assert_eq!(report.keys.len(), 2);
    assert_eq!(report.keys[0].key.as_deref(), Some("a"));
    assert_eq!(report.keys[0].verdict, Verdict::Linearizable);
    let c = counterexample(report.verdict);
    assert_eq!(c.key.as_deref(), Some("b"));
    assert!(c.to_string().starts_with("key \"b\""));
}

#[test]
fn kv_append_concatenates() {
    let mut h = H::new();
    h.key("k")
        .invoke(1, F::Get, Value::Null)
        .ok(1, F::Get, "")
        .invoke(1, F::Append, "x 1 y")
        .invoke(2, F::Append, "x 2 y")
        .ok(2, F::Append, "x 2 y")
        .ok(1, F::Append, "x 1 y")
        .invoke(3, F::Get, Value::Null)
        .ok(3, F::Get, "x 2 yx 1 y")
        .invoke(3, F::Put, "z")
        .ok(3, F::Put, "z")
        .invoke(3, F::Get, Value::Null)
        .ok(3, F::Get, "z");
    assert_eq!(h.verdict(), Verdict::Linearizable);
    // Both appends completed before the get, which misses one of them.
    h.invoke(4, F::Append, "w")
        .ok(4, F::Append, "w")
        .invoke(1, F::Get, Value::Null)
        .ok(1, F::Get, "z");
    let c = counterexample(h.verdict());
    assert_eq!(c.state, "\"zw\"");
}

#[test]
fn deadline_gives_unknown() {
    // Twenty overlapping writes followed by a read of a value nobody wrote: refuting it needs
    // millions of search steps, far more than 20 ms.
    let mut h = H::new();
    for p in 0..20 {
        h.invoke(p, F::Write, p as i64);
    }
    for p in 0..20 {
        h.ok(p, F::Write, p as i64);
    }
    h.read(100, Some(1000));
    let v = check(&h.h, &CheckOptions::with_timeout(Duration::from_millis(20))).unwrap();
    assert!(
        matches!(&v, Verdict::Unknown { reason } if reason.contains("deadline")),
        "{v}"
    );
    // A deadline that has already passed leaves every key undecided.
    let v = check(&h.h, &CheckOptions::with_timeout(Duration::ZERO)).unwrap();
    assert_eq!(v.valid(), None);
}

#[test]
fn memo_budget_gives_unknown() {
    let mut h = H::new();
    for p in 0..20 {
        h.invoke(p, F::Write, p as i64);
    }
    for p in 0..20 {
        h.ok(p, F::Write, p as i64);
    }
    h.read(100, Some(1000));
    let options = CheckOptions {
        timeout: None,
        max_memo_bytes: 1 << 20,
        ..CheckOptions::default()
    };
    let v = check(&h.h, &options).unwrap();
    assert!(
        matches!(&v, Verdict::Unknown { reason } if reason.contains("memo budget")),
        "{v}"
    );
}

#[test]
fn easy_violation_on_a_later_key_is_found_before_a_hard_key_finishes() {
    let mut h = H::new();
    // Key "hard": the 20-write refutation from `deadline_gives_unknown`.
    h.key("hard");
    for p in 0..20 {
        h.invoke(p, F::Write, p as i64);
    }
    for p in 0..20 {
        h.ok(p, F::Write, p as i64);
    }
    h.read(100, Some(1000));
    h.key("easy").write(200, 1).write(200, 2).read(201, Some(1));
    let report = check_report(&h.h, &CheckOptions::with_timeout(Duration::from_secs(10))).unwrap();
    assert_eq!(counterexample(report.verdict).key.as_deref(), Some("easy"));
    assert_eq!(
        report.keys[0].verdict.valid(),
        None,
        "the hard key was not finished"
    );
    assert!(report.elapsed < Duration::from_secs(5));
}

#[test]
fn counterexample_excerpts_are_capped() {
    // Twelve writes, then twelve concurrent indeterminate writes, then a read nobody wrote.
    let mut h = H::new();
    for v in 0..12 {
        h.write(1, v);
    }
    for p in 10..22 {
        h.invoke(p, F::Write, 100 + p as i64).info(p, F::Write);
    }
    h.read(2, Some(-1));
    let options = CheckOptions {
        excerpt_ops: 3,
        ..CheckOptions::default()
    };
    let c = counterexample(check(&h.h, &options).unwrap());
    assert_eq!(c.prefix_tail.len(), 3);
    assert!(c.prefix_len >= 12);
    assert!(c.concurrent.len() <= 3);
    assert_eq!(c.stuck.result, Value::Int(-1));
    assert!(c.to_string().lines().count() <= 12, "{c}");
}

#[test]
fn malformed_histories_are_errors() {
    let mut h = H::new();
    h.invoke(1, F::Other("txn".into()), Value::Null);
    assert!(matches!(
        check(&h.h, &CheckOptions::default()),
        Err(CheckError::UnsupportedFunction { position: 0, .. })
    ));
    let mut h = H::new();
    h.write(1, 1)
        .invoke(2, F::Get, Value::Null)
        .ok(2, F::Get, "");
    assert!(matches!(
        check(&h.h, &CheckOptions::default()),
        Err(CheckError::MixedModels { position: 2, .. })
    ));
    let mut h = H::new();
    h.invoke(1, F::Cas, 3).ok(1, F::Cas, 3);
    assert!(matches!(
        check(&h.h, &CheckOptions::default()),
        Err(CheckError::BadValue { position: 0, .. })
    ));
    let mut h = H::new();
    h.ok(1, F::Read, 3);
    assert!(matches!(
        check(&h.h, &CheckOptions::default()),
        Err(CheckError::History(_))
    ));
    // Nemesis events are not checked.
    let mut h = H::new();
    h.write(1, 1);
    h.h.push(Op::new(
        Process::nemesis(),
        OpType::Info,
        F::Other("kill".into()),
        Value::Null,
    ));
    assert_eq!(h.verdict(), Verdict::Linearizable);
}

/// Decides linearizability by enumerating orders, without memo or any refinement.
fn brute_force(entries: &[Entry<RegisterOp>], model: &RegisterModel) -> bool {
    fn go(
        entries: &[Entry<RegisterOp>],
        model: &RegisterModel,
        placed: &mut Vec<bool>,
        state: u32,
    ) -> bool {
        let unplaced_definite = (0..entries.len()).any(|i| !placed[i] && entries[i].ret.is_some());
        if !unplaced_definite {
            return true;
        }
        for i in 0..entries.len() {
            if placed[i] {
                continue;
            }
            // Everything that returned before i was invoked must already be placed.
            let ready = (0..entries.len())
                .all(|j| placed[j] || j == i || entries[j].ret.is_none_or(|r| r > entries[i].call));
            if !ready {
                continue;
            }
            if let Some(next) = model.step(&state, &entries[i].op) {
                placed[i] = true;
                if go(entries, model, placed, next) {
                    return true;
                }
                placed[i] = false;
            }
        }
        false
    }
    go(
        entries,
        model,
        &mut vec![false; entries.len()],
        model.init(),
    )
}

#[test]
fn search_agrees_with_brute_force_on_random_histories() {
    // xorshift64*: deterministic, no dependency.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rand = move |n: u64| {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
    };
    let (mut linearizable, mut not) = (0, 0);
    for _ in 0..3000 {
        let mut model = RegisterModel::new();
        let ids: Vec<u32> = (0..3).map(|v| model.intern(&Value::Int(v))).collect();
        let value = |r: u64| if r == 3 { 0 } else { ids[r as usize] };
        let n = 2 + rand(6) as usize;
        // Random intervals on a timeline of 2n distinct points.
        let mut points: Vec<usize> = (0..2 * n).collect();
        for i in (1..points.len()).rev() {
            points.swap(i, rand(i as u64 + 1) as usize);
        }
        let mut entries = Vec::new();
        for k in 0..n {
            let (a, b) = (points[2 * k], points[2 * k + 1]);
            let (call, ret) = (a.min(b), a.max(b));
            let indeterminate = rand(5) == 0;
            let op = match rand(5) {
                0 | 1 => RegisterOp::Read(value(rand(4))),
                2 => RegisterOp::Write(ids[rand(3) as usize]),
                _ => {
                    let (from, to) = (ids[rand(3) as usize], ids[rand(3) as usize]);
                    match (indeterminate, rand(2)) {
                        (true, _) => RegisterOp::CasUnknown { from, to },
                        (false, 0) => RegisterOp::CasOk { from, to },
                        (false, _) => RegisterOp::CasFail { from },
                    }
                }
            };
            let definite = !indeterminate || matches!(op, RegisterOp::Read(_));
            entries.push(Entry {
                op,
                call,
                ret: definite.then_some(ret),
            });
        }
        let expected = brute_force(&entries, &model);
        // Small step budgets exercise pausing and resuming.
        let mut search = Search::new(&model, &entries, 5);
        let got = loop {
            match search.run(&model, &entries, 1 + rand(7), None, usize::MAX) {
                Progress::Paused => continue,
                Progress::Done(Outcome::Linearizable) => break true,
                Progress::Done(Outcome::Violation { .. }) => break false,
                Progress::Done(_) => unreachable!("no deadline or memo limit"),
            }
        };
        assert_eq!(got, expected, "entries: {:?}", entries_debug(&entries));
        if expected {
            linearizable += 1;
        } else {
            not += 1;
        }
    }
    assert!(linearizable > 300 && not > 300, "{linearizable} / {not}");
}

fn entries_debug(entries: &[Entry<RegisterOp>]) -> Vec<String> {
    entries
        .iter()
        .map(|e| format!("{:?} {}..{:?}", e.op, e.call, e.ret))
        .collect()
}
