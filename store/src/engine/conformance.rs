//! Behavioural test suite every [`Engine`] backend must pass.
//!
//! This is test-support code, public so that the integration tests of any
//! backend can call it: [`run_all`] runs the fixed cases (panicking on the
//! first failure, like any test), and [`check_against_model`] replays a list
//! of [`ModelOp`]s against an engine and a plain [`BTreeMap`] model, reporting
//! the first divergence as an `Err` (meant to be driven by proptest).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Durability, Engine, EngineError, KeyValue, ReadView, Table, WriteBatch};

/// The reference model: every table as an ordered map.
pub type Model = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

type Entries = Vec<KeyValue>;

const MIB: usize = 1024 * 1024;

/// Runs every conformance case, each against a fresh, empty engine from `make`.
///
/// Panics with the case name and the mismatch on the first failure.
pub fn run_all(make: &dyn Fn() -> Box<dyn Engine>) {
    type Case = fn(&dyn Engine);
    let cases: &[(&str, Case)] = &[
        ("empty_tables", empty_tables),
        ("put_get_overwrite", put_get_overwrite),
        ("tables_are_isolated", tables_are_isolated),
        ("batch_is_atomic", batch_is_atomic),
        ("batch_ops_apply_in_order", batch_ops_apply_in_order),
        (
            "concurrent_readers_see_whole_batches",
            concurrent_readers_see_whole_batches,
        ),
        ("delete_semantics", delete_semantics),
        ("delete_range_semantics", delete_range_semantics),
        ("clear_semantics", clear_semantics),
        ("scan_bounds_and_early_stop", scan_bounds_and_early_stop),
        (
            "scan_rev_bounds_and_early_stop",
            scan_rev_bounds_and_early_stop,
        ),
        ("byte_order", byte_order),
        ("first_last", first_last),
        ("point_in_time_view", point_in_time_view),
        (
            "view_unaffected_by_write_during_scan",
            view_unaffected_by_write_during_scan,
        ),
        ("buffered_and_durable_visible", buffered_and_durable_visible),
        ("large_values", large_values),
        ("sizes", sizes),
        ("concurrent_writers", concurrent_writers),
        ("defragment_keeps_data", defragment_keeps_data),
    ];
    for (name, case) in cases {
        let engine = make();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&*engine)));
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            panic!("engine conformance case `{name}` failed: {msg}");
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn ok<T>(result: Result<T, EngineError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{what} failed: {err}"),
    }
}

fn write(engine: &dyn Engine, batch: WriteBatch, durability: Durability) {
    ok(engine.write(batch, durability), "write");
}

fn put(engine: &dyn Engine, table: Table, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(table, key, value);
    write(engine, batch, Durability::Durable);
}

fn view(engine: &dyn Engine) -> Box<dyn ReadView + '_> {
    ok(engine.read(), "read")
}

fn get(view: &dyn ReadView, table: Table, key: &[u8]) -> Option<Vec<u8>> {
    ok(view.get(table, key), "get")
}

fn scan(view: &dyn ReadView, table: Table, start: &[u8], end: Option<&[u8]>) -> Entries {
    scan_limit(view, table, start, end, usize::MAX, false)
}

fn scan_rev(view: &dyn ReadView, table: Table, start: &[u8], end: Option<&[u8]>) -> Entries {
    scan_limit(view, table, start, end, usize::MAX, true)
}

/// Collects at most `limit` entries (at least one visit is always made).
fn scan_limit(
    view: &dyn ReadView,
    table: Table,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    reverse: bool,
) -> Entries {
    ok(try_scan(view, table, start, end, limit, reverse), "scan")
}

fn try_scan(
    view: &dyn ReadView,
    table: Table,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    reverse: bool,
) -> Result<Entries, EngineError> {
    let mut out = Vec::new();
    let mut f = |k: &[u8], v: &[u8]| {
        out.push((k.to_vec(), v.to_vec()));
        out.len() < limit
    };
    if reverse {
        view.scan_rev(table, start, end, &mut f)?;
    } else {
        view.scan(table, start, end, &mut f)?;
    }
    Ok(out)
}

fn keys(entries: &Entries) -> Vec<Vec<u8>> {
    entries.iter().map(|(k, _)| k.clone()).collect()
}

fn byte_keys(keys: &[u8]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| vec![*k]).collect()
}

/// Puts `[k] -> [k, k]` for every `k` of `keys` into `table`, in one batch.
fn put_byte_keys(engine: &dyn Engine, table: Table, keys: &[u8]) {
    let mut batch = WriteBatch::new();
    for k in keys {
        batch.put(table, vec![*k], vec![*k, *k]);
    }
    write(engine, batch, Durability::Durable);
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn assert_table_empty(view: &dyn ReadView, table: Table) {
    assert_eq!(scan(view, table, b"", None), vec![], "{table:?} not empty");
    assert_eq!(ok(view.first(table), "first"), None, "{table:?} first");
    assert_eq!(ok(view.last(table), "last"), None, "{table:?} last");
}

// ---------------------------------------------------------------------------
// Cases

fn empty_tables(engine: &dyn Engine) {
    assert!(
        engine.size_bytes() > 0,
        "size_bytes of an empty engine is 0"
    );
    assert!(engine.size_in_use_bytes() <= engine.size_bytes());
    {
        let v = view(engine);
        for table in Table::ALL {
            assert_eq!(get(&*v, table, b"missing"), None);
            assert_eq!(get(&*v, table, b""), None);
            assert_table_empty(&*v, table);
            assert_eq!(scan_rev(&*v, table, b"", None), vec![]);
            assert_eq!(scan(&*v, table, b"a", Some(b"z")), vec![]);
        }
    }
    // Empty batches and removals on empty tables are fine.
    write(engine, WriteBatch::new(), Durability::Durable);
    write(engine, WriteBatch::new(), Durability::Buffered);
    let mut batch = WriteBatch::new();
    for table in Table::ALL {
        batch.delete(table, b"missing".to_vec());
        batch.delete_range(table, b"".to_vec(), None);
        batch.delete_range(table, b"a".to_vec(), Some(b"b".to_vec()));
        batch.clear(table);
    }
    write(engine, batch, Durability::Durable);
    let v = view(engine);
    for table in Table::ALL {
        assert_table_empty(&*v, table);
    }
    assert!(engine.size_bytes() > 0);
}

fn put_get_overwrite(engine: &dyn Engine) {
    put(engine, Table::Kv, b"k", b"v1");
    assert_eq!(get(&*view(engine), Table::Kv, b"k"), Some(b"v1".to_vec()));
    put(engine, Table::Kv, b"k", b"v2");
    assert_eq!(get(&*view(engine), Table::Kv, b"k"), Some(b"v2".to_vec()));
    // An empty value is a value, distinct from absence; an empty key is a key.
    put(engine, Table::Kv, b"empty", b"");
    put(engine, Table::Kv, b"", b"empty key");
    let v = view(engine);
    assert_eq!(get(&*v, Table::Kv, b"empty"), Some(vec![]));
    assert_eq!(get(&*v, Table::Kv, b""), Some(b"empty key".to_vec()));
    assert_eq!(get(&*v, Table::Kv, b"k\0"), None);
    assert_eq!(get(&*v, Table::Kv, b"K"), None);
    assert_eq!(
        keys(&scan(&*v, Table::Kv, b"", None)),
        vec![b"".to_vec(), b"empty".to_vec(), b"k".to_vec()]
    );
}

fn tables_are_isolated(engine: &dyn Engine) {
    let mut batch = WriteBatch::new();
    for (i, table) in Table::ALL.into_iter().enumerate() {
        batch.put(table, b"same".to_vec(), vec![i as u8]);
    }
    write(engine, batch, Durability::Durable);
    let v = view(engine);
    for (i, table) in Table::ALL.into_iter().enumerate() {
        assert_eq!(get(&*v, table, b"same"), Some(vec![i as u8]));
        assert_eq!(scan(&*v, table, b"", None).len(), 1);
    }
    drop(v);
    let mut batch = WriteBatch::new();
    batch.delete(Table::RaftLog, b"same".to_vec());
    batch.clear(Table::RaftMeta);
    batch.delete_range(Table::Kv, b"".to_vec(), None);
    write(engine, batch, Durability::Durable);
    let v = view(engine);
    assert_table_empty(&*v, Table::RaftLog);
    assert_table_empty(&*v, Table::RaftMeta);
    assert_table_empty(&*v, Table::Kv);
    assert_eq!(get(&*v, Table::Meta, b"same"), Some(vec![3]));
}

fn batch_is_atomic(engine: &dyn Engine) {
    put(engine, Table::Kv, b"doomed", b"x");
    let before = view(engine);
    let mut batch = WriteBatch::new();
    for i in 0..200u32 {
        let table = Table::ALL[(i % 4) as usize];
        batch.put(table, i.to_be_bytes().to_vec(), pattern(100, u64::from(i)));
    }
    batch.delete(Table::Kv, b"doomed".to_vec());
    assert_eq!(batch.len(), 201);
    assert!(!batch.is_empty());
    write(engine, batch, Durability::Durable);

    // The view taken before sees none of it...
    for table in Table::ALL {
        let expected = if table == Table::Kv { 1 } else { 0 };
        assert_eq!(scan(&*before, table, b"", None).len(), expected);
    }
    assert_eq!(get(&*before, Table::Kv, b"doomed"), Some(b"x".to_vec()));
    // ...a view taken after sees all of it.
    let after = view(engine);
    for i in 0..200u32 {
        let table = Table::ALL[(i % 4) as usize];
        assert_eq!(
            get(&*after, table, &i.to_be_bytes()),
            Some(pattern(100, u64::from(i)))
        );
    }
    assert_eq!(get(&*after, Table::Kv, b"doomed"), None);
    for table in Table::ALL {
        assert_eq!(scan(&*after, table, b"", None).len(), 50);
    }
}

fn batch_ops_apply_in_order(engine: &dyn Engine) {
    put_byte_keys(engine, Table::Meta, &[1, 2, 3]);
    let mut batch = WriteBatch::new();
    // put then delete: absent
    batch.put(Table::Kv, b"put-del".to_vec(), b"x".to_vec());
    batch.delete(Table::Kv, b"put-del".to_vec());
    // delete then put: present
    batch.delete(Table::Kv, b"del-put".to_vec());
    batch.put(Table::Kv, b"del-put".to_vec(), b"y".to_vec());
    // last put wins
    batch.put(Table::Kv, b"twice".to_vec(), b"first".to_vec());
    batch.put(Table::Kv, b"twice".to_vec(), b"second".to_vec());
    // put then clear: table empty
    batch.put(Table::RaftLog, b"gone".to_vec(), b"z".to_vec());
    batch.clear(Table::RaftLog);
    // clear then put: only the new key
    batch.clear(Table::Meta);
    batch.put(Table::Meta, vec![9], vec![9]);
    // put inside a range, then delete the range, then put again
    batch.put(Table::RaftMeta, b"b1".to_vec(), b"old".to_vec());
    batch.put(Table::RaftMeta, b"b2".to_vec(), b"old".to_vec());
    batch.delete_range(Table::RaftMeta, b"b".to_vec(), Some(b"c".to_vec()));
    batch.put(Table::RaftMeta, b"b2".to_vec(), b"new".to_vec());
    write(engine, batch, Durability::Durable);

    let v = view(engine);
    assert_eq!(get(&*v, Table::Kv, b"put-del"), None);
    assert_eq!(get(&*v, Table::Kv, b"del-put"), Some(b"y".to_vec()));
    assert_eq!(get(&*v, Table::Kv, b"twice"), Some(b"second".to_vec()));
    assert_table_empty(&*v, Table::RaftLog);
    assert_eq!(scan(&*v, Table::Meta, b"", None), vec![(vec![9], vec![9])]);
    assert_eq!(
        scan(&*v, Table::RaftMeta, b"", None),
        vec![(b"b2".to_vec(), b"new".to_vec())]
    );
}

fn concurrent_readers_see_whole_batches(engine: &dyn Engine) {
    const KEYS: u8 = 8;
    const ROUNDS: u8 = 40;
    let write_round = |round: u8| {
        let mut batch = WriteBatch::new();
        for k in 0..KEYS {
            let table = Table::ALL[usize::from(k % 4)];
            batch.put(table, vec![k], vec![round]);
        }
        let durability = if round.is_multiple_of(2) {
            Durability::Durable
        } else {
            Durability::Buffered
        };
        write(engine, batch, durability);
    };
    write_round(0);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut last = 0u8;
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the last batch never became visible"
                );
                let v = view(engine);
                let values: Vec<Option<Vec<u8>>> = (0..KEYS)
                    .map(|k| get(&*v, Table::ALL[usize::from(k % 4)], &[k]))
                    .collect();
                let first = values[0].clone();
                assert!(
                    values.iter().all(|value| *value == first),
                    "torn batch visible: {values:?}"
                );
                let round = first.and_then(|value| value.first().copied()).unwrap_or(0);
                assert!(round >= last, "view went back in time: {round} < {last}");
                last = round;
                if round == ROUNDS {
                    break;
                }
                std::thread::yield_now();
            }
        });
        for round in 1..=ROUNDS {
            write_round(round);
        }
        if let Err(panic) = reader.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

fn delete_semantics(engine: &dyn Engine) {
    put_byte_keys(engine, Table::Kv, &[1, 2, 3]);
    let mut batch = WriteBatch::new();
    batch.delete(Table::Kv, vec![2]);
    batch.delete(Table::Kv, vec![7]); // absent: no-op
    batch.delete(Table::Meta, vec![1]); // other table: no-op
    write(engine, batch, Durability::Durable);
    let v = view(engine);
    assert_eq!(keys(&scan(&*v, Table::Kv, b"", None)), byte_keys(&[1, 3]));
    assert_eq!(get(&*v, Table::Kv, &[2]), None);
    assert_eq!(get(&*v, Table::Kv, &[1]), Some(vec![1, 1]));
}

fn delete_range_semantics(engine: &dyn Engine) {
    let all: Vec<Vec<u8>> = [&b"a"[..], b"b", b"b\0", b"bz", b"c", b"d", b"e"]
        .iter()
        .map(|k| k.to_vec())
        .collect();
    let mut batch = WriteBatch::new();
    for k in &all {
        batch.put(Table::Kv, k.clone(), b"v".to_vec());
        batch.put(Table::Meta, k.clone(), b"v".to_vec());
    }
    write(engine, batch, Durability::Durable);

    let kv_keys = |engine: &dyn Engine| keys(&scan(&*view(engine), Table::Kv, b"", None));
    let delete_range = |start: &[u8], end: Option<&[u8]>| {
        let mut batch = WriteBatch::new();
        batch.delete_range(Table::Kv, start, end.map(<[u8]>::to_vec));
        write(engine, batch, Durability::Durable);
    };

    // Empty and inverted ranges delete nothing.
    delete_range(b"c", Some(b"c"));
    delete_range(b"d", Some(b"b"));
    assert_eq!(kv_keys(engine), all);

    // [b, c): start included, end excluded, keys with `b` as prefix included.
    delete_range(b"b", Some(b"c"));
    assert_eq!(
        kv_keys(engine),
        vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
    );

    // Bounds that are not keys.
    delete_range(b"bb", Some(b"cc"));
    assert_eq!(
        kv_keys(engine),
        vec![b"a".to_vec(), b"d".to_vec(), b"e".to_vec()]
    );

    // Open end: to the end of the table.
    delete_range(b"d", None);
    assert_eq!(kv_keys(engine), vec![b"a".to_vec()]);

    // The other table is untouched.
    assert_eq!(keys(&scan(&*view(engine), Table::Meta, b"", None)), all);

    // From the empty key to the end: everything.
    delete_range(b"", None);
    assert_table_empty(&*view(engine), Table::Kv);
}

fn clear_semantics(engine: &dyn Engine) {
    for table in Table::ALL {
        put_byte_keys(engine, table, &[1, 2, 3]);
    }
    let mut batch = WriteBatch::new();
    batch.clear(Table::Kv);
    write(engine, batch, Durability::Durable);
    let v = view(engine);
    assert_table_empty(&*v, Table::Kv);
    for table in [Table::RaftLog, Table::RaftMeta, Table::Meta] {
        assert_eq!(keys(&scan(&*v, table, b"", None)), byte_keys(&[1, 2, 3]));
    }
    drop(v);
    // The cleared table is still usable.
    put(engine, Table::Kv, &[5], &[5]);
    assert_eq!(
        scan(&*view(engine), Table::Kv, b"", None),
        vec![(vec![5], vec![5])]
    );
}

fn scan_bounds_and_early_stop(engine: &dyn Engine) {
    put_byte_keys(engine, Table::RaftLog, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let v = view(engine);
    let t = Table::RaftLog;
    let entries = scan(&*v, t, &[3], Some(&[7]));
    assert_eq!(keys(&entries), byte_keys(&[3, 4, 5, 6]));
    assert_eq!(entries[0].1, vec![3, 3], "scan returns the values");
    assert_eq!(
        keys(&scan(&*v, t, &[3], None)),
        byte_keys(&[3, 4, 5, 6, 7, 8, 9])
    );
    assert_eq!(keys(&scan(&*v, t, b"", Some(&[2]))), byte_keys(&[0, 1]));
    assert_eq!(scan(&*v, t, b"", None).len(), 10);
    // Bounds between keys.
    assert_eq!(
        keys(&scan(&*v, t, &[3, 0], Some(&[5, 0]))),
        byte_keys(&[4, 5])
    );
    // Empty, inverted and out-of-range bounds.
    assert_eq!(scan(&*v, t, &[4], Some(&[4])), vec![]);
    assert_eq!(scan(&*v, t, &[7], Some(&[3])), vec![]);
    assert_eq!(scan(&*v, t, &[10], None), vec![]);
    assert_eq!(scan(&*v, t, &[4, 0], Some(&[5])), vec![]);
    // Early stop: `f` returning false ends the scan.
    assert_eq!(
        keys(&scan_limit(&*v, t, &[3], None, 2, false)),
        byte_keys(&[3, 4])
    );
    assert_eq!(
        keys(&scan_limit(&*v, t, b"", None, 1, false)),
        byte_keys(&[0])
    );
    let mut visits = 0;
    ok(
        v.scan(t, b"", None, &mut |_, _| {
            visits += 1;
            false
        }),
        "scan",
    );
    assert_eq!(visits, 1, "scan continued after f returned false");
    // Other tables are not scanned.
    assert_eq!(scan(&*v, Table::Kv, b"", None), vec![]);
}

fn scan_rev_bounds_and_early_stop(engine: &dyn Engine) {
    put_byte_keys(engine, Table::Kv, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let v = view(engine);
    let t = Table::Kv;
    let entries = scan_rev(&*v, t, &[3], Some(&[7]));
    assert_eq!(keys(&entries), byte_keys(&[6, 5, 4, 3]));
    assert_eq!(entries[0].1, vec![6, 6], "scan_rev returns the values");
    assert_eq!(
        keys(&scan_rev(&*v, t, &[3], None)),
        byte_keys(&[9, 8, 7, 6, 5, 4, 3])
    );
    assert_eq!(keys(&scan_rev(&*v, t, b"", Some(&[2]))), byte_keys(&[1, 0]));
    assert_eq!(
        keys(&scan_rev(&*v, t, &[3, 0], Some(&[5, 0]))),
        byte_keys(&[5, 4])
    );
    assert_eq!(scan_rev(&*v, t, &[4], Some(&[4])), vec![]);
    assert_eq!(scan_rev(&*v, t, &[7], Some(&[3])), vec![]);
    assert_eq!(scan_rev(&*v, t, &[10], None), vec![]);
    // Early stop yields the highest keys of the range.
    assert_eq!(
        keys(&scan_limit(&*v, t, &[3], Some(&[7]), 2, true)),
        byte_keys(&[6, 5])
    );
    assert_eq!(
        keys(&scan_limit(&*v, t, b"", None, 1, true)),
        byte_keys(&[9])
    );
    let mut visits = 0;
    ok(
        v.scan_rev(t, b"", None, &mut |_, _| {
            visits += 1;
            false
        }),
        "scan_rev",
    );
    assert_eq!(visits, 1, "scan_rev continued after f returned false");
}

fn byte_order(engine: &dyn Engine) {
    // Keys sort as unsigned bytes, shorter prefix first.
    let sorted: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x01],
        vec![0x01, 0x02],
        vec![0x7f],
        vec![0x80],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff, 0xff],
    ];
    let mut batch = WriteBatch::new();
    for k in sorted.iter().rev() {
        batch.put(Table::Kv, k.clone(), k.clone());
    }
    write(engine, batch, Durability::Durable);
    let v = view(engine);
    assert_eq!(keys(&scan(&*v, Table::Kv, b"", None)), sorted);
    let mut reversed = sorted.clone();
    reversed.reverse();
    assert_eq!(keys(&scan_rev(&*v, Table::Kv, b"", None)), reversed);
    assert_eq!(
        keys(&scan(&*v, Table::Kv, &[0x01], Some(&[0x80]))),
        vec![vec![0x01], vec![0x01, 0x02], vec![0x7f]]
    );
    assert_eq!(ok(v.first(Table::Kv), "first"), Some((vec![], vec![])));
    assert_eq!(
        ok(v.last(Table::Kv), "last"),
        Some((vec![0xff, 0xff, 0xff], vec![0xff, 0xff, 0xff]))
    );
}

fn first_last(engine: &dyn Engine) {
    let mut batch = WriteBatch::new();
    for i in [5u64, 1, 9, 3, 7] {
        batch.put(Table::RaftLog, i.to_be_bytes().to_vec(), vec![i as u8]);
    }
    batch.put(Table::Meta, b"only".to_vec(), b"one".to_vec());
    write(engine, batch, Durability::Durable);
    let v = view(engine);
    assert_eq!(
        ok(v.first(Table::RaftLog), "first"),
        Some((1u64.to_be_bytes().to_vec(), vec![1]))
    );
    assert_eq!(
        ok(v.last(Table::RaftLog), "last"),
        Some((9u64.to_be_bytes().to_vec(), vec![9]))
    );
    let only = Some((b"only".to_vec(), b"one".to_vec()));
    assert_eq!(ok(v.first(Table::Meta), "first"), only);
    assert_eq!(ok(v.last(Table::Meta), "last"), only);
    assert_eq!(ok(v.first(Table::Kv), "first"), None);
    drop(v);

    // Removing the ends moves them.
    let mut batch = WriteBatch::new();
    batch.delete(Table::RaftLog, 1u64.to_be_bytes().to_vec());
    batch.delete_range(Table::RaftLog, 8u64.to_be_bytes().to_vec(), None);
    write(engine, batch, Durability::Durable);
    let v = view(engine);
    assert_eq!(
        ok(v.first(Table::RaftLog), "first"),
        Some((3u64.to_be_bytes().to_vec(), vec![3]))
    );
    assert_eq!(
        ok(v.last(Table::RaftLog), "last"),
        Some((7u64.to_be_bytes().to_vec(), vec![7]))
    );
}

fn point_in_time_view(engine: &dyn Engine) {
    let mut batch = WriteBatch::new();
    batch.put(Table::Kv, b"a".to_vec(), b"1".to_vec());
    batch.put(Table::Kv, b"b".to_vec(), b"1".to_vec());
    batch.put(Table::Meta, b"m".to_vec(), b"1".to_vec());
    write(engine, batch, Durability::Durable);
    let old = view(engine);
    let old_kv = scan(&*old, Table::Kv, b"", None);

    let mut batch = WriteBatch::new();
    batch.put(Table::Kv, b"a".to_vec(), b"2".to_vec());
    batch.delete(Table::Kv, b"b".to_vec());
    batch.put(Table::Kv, b"c".to_vec(), b"2".to_vec());
    batch.clear(Table::Meta);
    batch.put(Table::RaftLog, b"r".to_vec(), b"2".to_vec());
    write(engine, batch, Durability::Durable);
    let mid = view(engine);

    let mut batch = WriteBatch::new();
    batch.put(Table::Kv, b"a".to_vec(), b"3".to_vec());
    write(engine, batch, Durability::Buffered);

    // The oldest view still sees exactly the first state.
    assert_eq!(scan(&*old, Table::Kv, b"", None), old_kv);
    assert_eq!(get(&*old, Table::Kv, b"a"), Some(b"1".to_vec()));
    assert_eq!(get(&*old, Table::Kv, b"b"), Some(b"1".to_vec()));
    assert_eq!(get(&*old, Table::Kv, b"c"), None);
    assert_eq!(get(&*old, Table::Meta, b"m"), Some(b"1".to_vec()));
    assert_table_empty(&*old, Table::RaftLog);
    assert_eq!(
        ok(old.last(Table::Kv), "last"),
        Some((b"b".to_vec(), b"1".to_vec()))
    );
    assert_eq!(
        keys(&scan_rev(&*old, Table::Kv, b"", None)),
        vec![b"b".to_vec(), b"a".to_vec()]
    );

    // The middle one the second.
    assert_eq!(get(&*mid, Table::Kv, b"a"), Some(b"2".to_vec()));
    assert_eq!(get(&*mid, Table::Kv, b"b"), None);
    assert_eq!(get(&*mid, Table::Kv, b"c"), Some(b"2".to_vec()));
    assert_table_empty(&*mid, Table::Meta);
    assert_eq!(get(&*mid, Table::RaftLog, b"r"), Some(b"2".to_vec()));

    // A new view sees the latest.
    let new = view(engine);
    assert_eq!(get(&*new, Table::Kv, b"a"), Some(b"3".to_vec()));
    drop(old);
    drop(mid);
    assert_eq!(get(&*new, Table::Kv, b"c"), Some(b"2".to_vec()));
}

fn view_unaffected_by_write_during_scan(engine: &dyn Engine) {
    put_byte_keys(engine, Table::Kv, &[0, 2, 4, 6, 8]);
    let v = view(engine);
    let mut seen = Vec::new();
    ok(
        v.scan(Table::Kv, b"", None, &mut |k, _| {
            seen.push(k.to_vec());
            // Insert a key the scan has yet to reach and delete one too.
            let mut batch = WriteBatch::new();
            batch.put(Table::Kv, vec![k[0] + 1], b"new".to_vec());
            batch.delete(Table::Kv, vec![k[0] + 2]);
            write(engine, batch, Durability::Buffered);
            true
        }),
        "scan",
    );
    assert_eq!(seen, byte_keys(&[0, 2, 4, 6, 8]));
    drop(v);
    let now = keys(&scan(&*view(engine), Table::Kv, b"", None));
    assert_eq!(now, byte_keys(&[0, 1, 3, 5, 7, 9]));
}

fn buffered_and_durable_visible(engine: &dyn Engine) {
    let mut batch = WriteBatch::new();
    batch.put(Table::Kv, b"buffered".to_vec(), b"1".to_vec());
    write(engine, batch, Durability::Buffered);
    assert_eq!(
        get(&*view(engine), Table::Kv, b"buffered"),
        Some(b"1".to_vec())
    );
    let mut batch = WriteBatch::new();
    batch.put(Table::Kv, b"durable".to_vec(), b"2".to_vec());
    write(engine, batch, Durability::Durable);
    let mut batch = WriteBatch::new();
    batch.delete(Table::Kv, b"buffered".to_vec());
    write(engine, batch, Durability::Buffered);
    let v = view(engine);
    assert_eq!(get(&*v, Table::Kv, b"buffered"), None);
    assert_eq!(get(&*v, Table::Kv, b"durable"), Some(b"2".to_vec()));
}

fn large_values(engine: &dyn Engine) {
    let big = pattern(MIB, 1);
    put(engine, Table::Kv, b"big", &big);
    assert_eq!(get(&*view(engine), Table::Kv, b"big"), Some(big.clone()));
    assert!(
        engine.size_bytes() >= MIB as u64,
        "size_bytes {} < 1 MiB after storing 1 MiB",
        engine.size_bytes()
    );

    // Several in one batch, in several tables, plus a large key.
    let mut batch = WriteBatch::new();
    for (i, table) in Table::ALL.into_iter().enumerate() {
        batch.put(table, format!("big{i}"), pattern(MIB + i, i as u64 + 10));
    }
    let big_key = pattern(64 * 1024, 99);
    batch.put(Table::Meta, big_key.clone(), b"big key".to_vec());
    write(engine, batch, Durability::Buffered);
    let v = view(engine);
    for (i, table) in Table::ALL.into_iter().enumerate() {
        assert_eq!(
            get(&*v, table, format!("big{i}").as_bytes()),
            Some(pattern(MIB + i, i as u64 + 10))
        );
    }
    assert_eq!(get(&*v, Table::Meta, &big_key), Some(b"big key".to_vec()));
    let scanned = scan(&*v, Table::Kv, b"big", Some(b"bih"));
    assert_eq!(scanned.len(), 2);
    assert_eq!(scanned[0].1, big);
    drop(v);

    // Overwrite with a small value and delete.
    put(engine, Table::Kv, b"big", b"small");
    assert_eq!(
        get(&*view(engine), Table::Kv, b"big"),
        Some(b"small".to_vec())
    );
    let mut batch = WriteBatch::new();
    batch.delete(Table::Kv, b"big".to_vec());
    write(engine, batch, Durability::Durable);
    assert_eq!(get(&*view(engine), Table::Kv, b"big"), None);
    assert!(engine.size_in_use_bytes() <= engine.size_bytes());
}

fn sizes(engine: &dyn Engine) {
    let empty_in_use = engine.size_in_use_bytes();
    assert!(engine.size_bytes() > 0);
    assert!(empty_in_use <= engine.size_bytes());

    let mut batch = WriteBatch::new();
    for i in 0..100u32 {
        batch.put(
            Table::Kv,
            i.to_be_bytes().to_vec(),
            pattern(1000, u64::from(i)),
        );
    }
    write(engine, batch, Durability::Durable);
    let full_in_use = engine.size_in_use_bytes();
    assert!(
        full_in_use >= 100 * 1000,
        "size_in_use_bytes {full_in_use} below the 100 kB of live data"
    );
    assert!(full_in_use <= engine.size_bytes());
    assert!(engine.size_bytes() >= 100 * 1000);

    let mut batch = WriteBatch::new();
    batch.clear(Table::Kv);
    write(engine, batch, Durability::Durable);
    let cleared_in_use = engine.size_in_use_bytes();
    assert!(
        cleared_in_use < full_in_use,
        "size_in_use_bytes did not shrink after clear: {cleared_in_use} >= {full_in_use}"
    );
    assert!(cleared_in_use <= engine.size_bytes());
    assert!(engine.size_bytes() > 0);
}

fn defragment_keeps_data(engine: &dyn Engine) {
    // An empty engine defragments.
    ok(engine.defragment(), "defragment of an empty engine");

    // Fill several tables, delete most of it, keep a little (durable and buffered).
    let mut batch = WriteBatch::new();
    for i in 0..200u32 {
        batch.put(
            Table::Kv,
            i.to_be_bytes().to_vec(),
            pattern(4000, u64::from(i)),
        );
        batch.put(
            Table::RaftLog,
            i.to_be_bytes().to_vec(),
            pattern(1000, u64::from(i)),
        );
    }
    batch.put(Table::Meta, b"meta".to_vec(), b"kept".to_vec());
    write(engine, batch, Durability::Durable);
    let mut batch = WriteBatch::new();
    batch.delete_range(Table::Kv, 10u32.to_be_bytes(), None);
    batch.clear(Table::RaftLog);
    write(engine, batch, Durability::Durable);
    let mut batch = WriteBatch::new();
    batch.put(
        Table::RaftMeta,
        b"buffered".to_vec(),
        b"still here".to_vec(),
    );
    write(engine, batch, Durability::Buffered);
    let before = scan(&*view(engine), Table::Kv, b"", None);
    assert_eq!(before.len(), 10);
    let size_before = engine.size_bytes();
    let in_use_before = engine.size_in_use_bytes();

    ok(engine.defragment(), "defragment");
    assert!(
        engine.size_bytes() <= size_before,
        "defragment grew the engine: {} > {size_before}",
        engine.size_bytes()
    );
    assert_eq!(engine.size_in_use_bytes(), in_use_before);
    assert!(engine.size_in_use_bytes() <= engine.size_bytes());
    let v = view(engine);
    assert_eq!(scan(&*v, Table::Kv, b"", None), before);
    assert_table_empty(&*v, Table::RaftLog);
    assert_eq!(get(&*v, Table::Meta, b"meta"), Some(b"kept".to_vec()));
    assert_eq!(
        get(&*v, Table::RaftMeta, b"buffered"),
        Some(b"still here".to_vec())
    );
    drop(v);

    // The engine keeps working, and a second defragment changes nothing.
    put(engine, Table::Kv, b"after", b"1");
    ok(engine.defragment(), "second defragment");
    let v = view(engine);
    assert_eq!(get(&*v, Table::Kv, b"after"), Some(b"1".to_vec()));
    assert_eq!(scan(&*v, Table::Kv, b"", None).len(), 11);
}

fn concurrent_writers(engine: &dyn Engine) {
    const THREADS: u8 = 4;
    const WRITES: u8 = 25;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for i in 0..WRITES {
                    let mut batch = WriteBatch::new();
                    batch.put(Table::Kv, vec![t, i], vec![t, i]);
                    batch.put(Table::RaftLog, vec![t, i], vec![i]);
                    let durability = if i % 5 == 0 {
                        Durability::Durable
                    } else {
                        Durability::Buffered
                    };
                    write(engine, batch, durability);
                }
            });
        }
    });
    let v = view(engine);
    let kv = scan(&*v, Table::Kv, b"", None);
    assert_eq!(kv.len(), usize::from(THREADS) * usize::from(WRITES));
    for (k, value) in &kv {
        assert_eq!(k, value);
    }
    assert_eq!(
        scan(&*v, Table::RaftLog, b"", None).len(),
        usize::from(THREADS) * usize::from(WRITES)
    );
}

// ---------------------------------------------------------------------------
// Model-based checking

/// One step of [`check_against_model`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelOp {
    /// Add a put to the pending batch.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Add a delete to the pending batch.
    Delete(Table, Vec<u8>),
    /// Add a range delete of `[start, end)` to the pending batch.
    DeleteRange(Table, Vec<u8>, Option<Vec<u8>>),
    /// Add a clear to the pending batch.
    Clear(Table),
    /// Write the pending batch (possibly empty), then compare the whole
    /// engine with the model.
    Commit(Durability),
    /// Take a view now; it is compared, at the end, with the model as of now.
    Snapshot,
    /// Compare one `get` with the model.
    Get(Table, Vec<u8>),
    /// Compare one scan, stopped after `limit` entries (`0` = no limit).
    Scan {
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        reverse: bool,
    },
}

/// Replays `ops` against `engine`, which must start empty, and against a
/// [`Model`], returning a description of the first difference.
///
/// Operations accumulate in a pending batch that is only written on
/// [`ModelOp::Commit`] (and never at the end), so the checks also verify that
/// unwritten operations stay invisible. Durability is not modelled: a
/// buffered write must be as visible as a durable one.
pub fn check_against_model(engine: &dyn Engine, ops: &[ModelOp]) -> Result<(), String> {
    let mut model = Model::new();
    let mut pending = Vec::new();
    let mut batch = WriteBatch::new();
    let mut snapshots: Vec<(usize, Box<dyn ReadView + '_>, Model)> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        let at = |what: &str| format!("step {step} ({op:?}): {what}");
        match op {
            ModelOp::Put(table, key, value) => {
                batch.put(*table, key.clone(), value.clone());
                pending.push(op.clone());
            }
            ModelOp::Delete(table, key) => {
                batch.delete(*table, key.clone());
                pending.push(op.clone());
            }
            ModelOp::DeleteRange(table, start, end) => {
                batch.delete_range(*table, start.clone(), end.clone());
                pending.push(op.clone());
            }
            ModelOp::Clear(table) => {
                batch.clear(*table);
                pending.push(op.clone());
            }
            ModelOp::Commit(durability) => {
                engine
                    .write(std::mem::take(&mut batch), *durability)
                    .map_err(|e| at(&format!("write failed: {e}")))?;
                for pending_op in pending.drain(..) {
                    apply_to_model(&mut model, &pending_op);
                }
                let view = engine
                    .read()
                    .map_err(|e| at(&format!("read failed: {e}")))?;
                compare_view(&*view, &model).map_err(|e| at(&e))?;
                if engine.size_bytes() == 0 {
                    return Err(at("size_bytes is 0"));
                }
                if engine.size_in_use_bytes() > engine.size_bytes() {
                    return Err(at("size_in_use_bytes > size_bytes"));
                }
            }
            ModelOp::Snapshot => {
                let view = engine
                    .read()
                    .map_err(|e| at(&format!("read failed: {e}")))?;
                snapshots.push((step, view, model.clone()));
            }
            ModelOp::Get(table, key) => {
                let view = engine
                    .read()
                    .map_err(|e| at(&format!("read failed: {e}")))?;
                let got = view
                    .get(*table, key)
                    .map_err(|e| at(&format!("get failed: {e}")))?;
                let expected = model.get(table).and_then(|m| m.get(key)).cloned();
                if got != expected {
                    return Err(at(&format!("get returned {got:?}, model has {expected:?}")));
                }
            }
            ModelOp::Scan {
                table,
                start,
                end,
                limit,
                reverse,
            } => {
                let view = engine
                    .read()
                    .map_err(|e| at(&format!("read failed: {e}")))?;
                let limit = if *limit == 0 { usize::MAX } else { *limit };
                let got = try_scan(&*view, *table, start, end.as_deref(), limit, *reverse)
                    .map_err(|e| at(&format!("scan failed: {e}")))?;
                let expected = model_scan(&model, *table, start, end.as_deref(), limit, *reverse);
                if got != expected {
                    return Err(at(&format!(
                        "scan returned {got:?}, model has {expected:?}"
                    )));
                }
            }
        }
    }

    let view = engine
        .read()
        .map_err(|e| format!("final read failed: {e}"))?;
    compare_view(&*view, &model).map_err(|e| format!("final state: {e}"))?;
    for (step, view, snapshot_model) in &snapshots {
        compare_view(&**view, snapshot_model)
            .map_err(|e| format!("view taken at step {step} changed: {e}"))?;
    }
    Ok(())
}

fn apply_to_model(model: &mut Model, op: &ModelOp) {
    match op {
        ModelOp::Put(table, key, value) => {
            model
                .entry(*table)
                .or_default()
                .insert(key.clone(), value.clone());
        }
        ModelOp::Delete(table, key) => {
            if let Some(map) = model.get_mut(table) {
                map.remove(key);
            }
        }
        ModelOp::DeleteRange(table, start, end) => {
            if let Some(map) = model.get_mut(table) {
                map.retain(|k, _| !in_range(k, start, end.as_deref()));
            }
        }
        ModelOp::Clear(table) => {
            model.remove(table);
        }
        ModelOp::Commit(_) | ModelOp::Snapshot | ModelOp::Get(..) | ModelOp::Scan { .. } => {}
    }
}

fn in_range(key: &[u8], start: &[u8], end: Option<&[u8]>) -> bool {
    key >= start && end.is_none_or(|end| key < end)
}

fn model_scan(
    model: &Model,
    table: Table,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    reverse: bool,
) -> Entries {
    let Some(map) = model.get(&table) else {
        return Vec::new();
    };
    if matches!(end, Some(end) if end <= start) {
        return Vec::new();
    }
    let range = map.range::<[u8], _>((
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    ));
    let cloned = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
    if reverse {
        range.rev().take(limit).map(cloned).collect()
    } else {
        range.take(limit).map(cloned).collect()
    }
}

/// Compares everything `view` shows with `model`.
fn compare_view(view: &dyn ReadView, model: &Model) -> Result<(), String> {
    for table in Table::ALL {
        let expected: Entries = model
            .get(&table)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let got = try_scan(view, table, b"", None, usize::MAX, false)
            .map_err(|e| format!("{table:?}: scan failed: {e}"))?;
        if got != expected {
            return Err(format!(
                "{table:?}: scan returned {got:?}, model has {expected:?}"
            ));
        }
        let mut got_rev = try_scan(view, table, b"", None, usize::MAX, true)
            .map_err(|e| format!("{table:?}: scan_rev failed: {e}"))?;
        got_rev.reverse();
        if got_rev != expected {
            return Err(format!(
                "{table:?}: scan_rev returned (reversed) {got_rev:?}, model has {expected:?}"
            ));
        }
        let first = view
            .first(table)
            .map_err(|e| format!("{table:?}: first failed: {e}"))?;
        if first.as_ref() != expected.first() {
            return Err(format!(
                "{table:?}: first returned {first:?}, model has {:?}",
                expected.first()
            ));
        }
        let last = view
            .last(table)
            .map_err(|e| format!("{table:?}: last failed: {e}"))?;
        if last.as_ref() != expected.last() {
            return Err(format!(
                "{table:?}: last returned {last:?}, model has {:?}",
                expected.last()
            ));
        }
        for (key, value) in &expected {
            let got = view
                .get(table, key)
                .map_err(|e| format!("{table:?}: get failed: {e}"))?;
            if got.as_ref() != Some(value) {
                return Err(format!(
                    "{table:?}: get({key:?}) returned {got:?}, model has {value:?}"
                ));
            }
        }
    }
    Ok(())
}
