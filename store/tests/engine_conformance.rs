//! Runs the engine conformance suite and the model-based property test
//! against both backends, plus backend-specific durability tests: redb data
//! surviving a reopen, and `MemEngine::crash` dropping exactly the buffered
//! writes not followed by a durable one.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::Config;
use skiff_store::engine::conformance::{ModelOp, check_against_model, run_all};
use skiff_store::engine::{
    CoalescingEngine, Durability, Engine, MemEngine, ReadView, RedbEngine, Table, WriteBatch,
};

// ---------------------------------------------------------------------------
// Conformance suite

#[test]
fn mem_engine_conformance() {
    run_all(&|| -> Box<dyn Engine> { Box::new(MemEngine::new()) });
}

#[test]
fn redb_engine_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let next = AtomicUsize::new(0);
    run_all(&|| -> Box<dyn Engine> {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("conformance-{n}.redb"));
        Box::new(RedbEngine::open(&path).expect("open redb engine"))
    });
}

#[test]
fn coalescing_engine_conformance() {
    run_all(&|| -> Box<dyn Engine> { Box::new(CoalescingEngine::new(MemEngine::new())) });
    let dir = tempfile::tempdir().expect("tempdir");
    let next = AtomicUsize::new(0);
    run_all(&|| -> Box<dyn Engine> {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("coalescing-{n}.redb"));
        Box::new(CoalescingEngine::new(
            RedbEngine::open(&path).expect("open redb engine"),
        ))
    });
}

// ---------------------------------------------------------------------------
// Model-based property test

fn table() -> impl Strategy<Value = Table> {
    proptest::sample::select(Table::ALL.to_vec())
}

/// Few distinct short keys, so operations collide often.
fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..4, 0..3)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..6)
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![Just(Durability::Durable), Just(Durability::Buffered)]
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        6 => (table(), key(), value()).prop_map(|(t, k, v)| ModelOp::Put(t, k, v)),
        2 => (table(), key()).prop_map(|(t, k)| ModelOp::Delete(t, k)),
        1 => (table(), key(), proptest::option::of(key()))
            .prop_map(|(t, s, e)| ModelOp::DeleteRange(t, s, e)),
        1 => table().prop_map(ModelOp::Clear),
        3 => durability().prop_map(ModelOp::Commit),
        1 => Just(ModelOp::Snapshot),
        1 => (table(), key()).prop_map(|(t, k)| ModelOp::Get(t, k)),
        2 => (table(), key(), proptest::option::of(key()), 0usize..4, any::<bool>()).prop_map(
            |(table, start, end, limit, reverse)| ModelOp::Scan {
                table,
                start,
                end,
                limit,
                reverse,
            }
        ),
    ]
}

fn model_ops() -> impl Strategy<Value = Vec<ModelOp>> {
    proptest::collection::vec(model_op(), 0..80)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Keep failing cases out of the source tree; the shrunk case is printed.
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(256))]
    #[test]
    fn mem_engine_matches_model(ops in model_ops()) {
        let engine = MemEngine::new();
        check_against_model(&engine, &ops).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(config(64))]
    #[test]
    fn redb_engine_matches_model(ops in model_ops()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = RedbEngine::open(&dir.path().join("model.redb")).expect("open redb engine");
        check_against_model(&engine, &ops).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(config(256))]
    #[test]
    fn coalescing_engine_matches_model(ops in model_ops()) {
        let engine = CoalescingEngine::new(MemEngine::new());
        check_against_model(&engine, &ops).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn get(engine: &dyn Engine, table: Table, key: &[u8]) -> Option<Vec<u8>> {
    engine.read().expect("read").get(table, key).expect("get")
}

fn all(view: &dyn ReadView, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    view.scan(table, b"", None, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .expect("scan");
    out
}

fn write_one(engine: &dyn Engine, durability: Durability, f: impl FnOnce(&mut WriteBatch)) {
    let mut batch = WriteBatch::new();
    f(&mut batch);
    engine.write(batch, durability).expect("write");
}

fn open(path: &Path) -> RedbEngine {
    RedbEngine::open(path).expect("open redb engine")
}

// ---------------------------------------------------------------------------
// redb: durability across reopen

#[test]
fn redb_durable_writes_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reopen.redb");

    let (in_use, kv_before) = {
        let engine = open(&path);
        write_one(&engine, Durability::Durable, |b| {
            for i in 0u64..100 {
                b.put(Table::RaftLog, i.to_be_bytes(), format!("entry {i}"));
            }
            b.put(Table::RaftMeta, b"vote", b"term 3");
            b.put(Table::Kv, b"a", b"1");
            b.put(Table::Kv, b"b", b"2");
            b.put(Table::Meta, b"applied", 42u64.to_be_bytes());
        });
        write_one(&engine, Durability::Durable, |b| {
            b.delete_range(
                Table::RaftLog,
                0u64.to_be_bytes(),
                Some(10u64.to_be_bytes().to_vec()),
            );
            b.delete(Table::Kv, b"b");
        });
        // Buffered, then made durable by the next durable write.
        write_one(&engine, Durability::Buffered, |b| {
            b.put(Table::Kv, b"c", b"3")
        });
        write_one(&engine, Durability::Durable, |b| {
            b.put(Table::Kv, b"d", b"4")
        });
        let kv = all(&*engine.read().expect("read"), Table::Kv);
        (engine.size_in_use_bytes(), kv)
    };

    let engine = open(&path);
    let view = engine.read().expect("read");
    assert_eq!(all(&*view, Table::Kv), kv_before);
    assert_eq!(
        all(&*view, Table::Kv),
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"c".to_vec(), b"3".to_vec()),
            (b"d".to_vec(), b"4".to_vec()),
        ]
    );
    assert_eq!(
        view.first(Table::RaftLog).expect("first"),
        Some((10u64.to_be_bytes().to_vec(), b"entry 10".to_vec()))
    );
    assert_eq!(
        view.last(Table::RaftLog).expect("last"),
        Some((99u64.to_be_bytes().to_vec(), b"entry 99".to_vec()))
    );
    assert_eq!(all(&*view, Table::RaftLog).len(), 90);
    assert_eq!(
        view.get(Table::RaftMeta, b"vote").expect("get"),
        Some(b"term 3".to_vec())
    );
    assert_eq!(
        view.get(Table::Meta, b"applied").expect("get"),
        Some(42u64.to_be_bytes().to_vec())
    );
    drop(view);
    // The live-bytes accounting survives the reopen too.
    assert_eq!(engine.size_in_use_bytes(), in_use);
    assert!(engine.size_bytes() >= in_use);

    // A second round on the reopened file.
    write_one(&engine, Durability::Durable, |b| {
        b.clear(Table::RaftLog);
        b.put(Table::Kv, b"e", b"5");
    });
    drop(engine);
    let engine = open(&path);
    assert_eq!(all(&*engine.read().expect("read"), Table::RaftLog), vec![]);
    assert_eq!(get(&engine, Table::Kv, b"e"), Some(b"5".to_vec()));
    assert!(engine.size_in_use_bytes() < in_use);
}

#[test]
fn redb_open_errors_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");

    // The file is locked while open.
    let path = dir.path().join("locked.redb");
    let engine = open(&path);
    assert!(RedbEngine::open(&path).is_err());
    drop(engine);
    assert!(RedbEngine::open(&path).is_ok());

    // Not a redb file.
    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, vec![0xAB; 8192]).expect("write junk");
    assert!(RedbEngine::open(&junk).is_err());

    // A missing parent directory.
    assert!(RedbEngine::open(&dir.path().join("missing").join("db.redb")).is_err());
}

// ---------------------------------------------------------------------------
// MemEngine: simulated power loss

#[test]
fn mem_crash_drops_only_unflushed_buffered_writes() {
    let engine = MemEngine::new();

    write_one(&engine, Durability::Durable, |b| {
        b.put(Table::Kv, b"durable", b"1");
        b.put(Table::RaftLog, b"log", b"1");
    });
    write_one(&engine, Durability::Buffered, |b| {
        b.put(Table::Kv, b"lost", b"2");
        b.put(Table::Kv, b"durable", b"overwritten");
        b.clear(Table::RaftLog);
    });
    // Buffered writes are visible until the crash.
    assert_eq!(get(&engine, Table::Kv, b"lost"), Some(b"2".to_vec()));
    assert_eq!(
        get(&engine, Table::Kv, b"durable"),
        Some(b"overwritten".to_vec())
    );
    let in_use_durable_only = {
        let probe = MemEngine::new();
        write_one(&probe, Durability::Durable, |b| {
            b.put(Table::Kv, b"durable", b"1");
            b.put(Table::RaftLog, b"log", b"1");
        });
        probe.size_in_use_bytes()
    };

    engine.crash();
    assert_eq!(get(&engine, Table::Kv, b"lost"), None);
    assert_eq!(get(&engine, Table::Kv, b"durable"), Some(b"1".to_vec()));
    assert_eq!(get(&engine, Table::RaftLog, b"log"), Some(b"1".to_vec()));
    assert_eq!(engine.size_in_use_bytes(), in_use_durable_only);

    // A buffered write followed by a durable one survives.
    write_one(&engine, Durability::Buffered, |b| {
        b.put(Table::Kv, b"flushed", b"3")
    });
    write_one(&engine, Durability::Buffered, |b| {
        b.delete(Table::Kv, b"durable")
    });
    write_one(&engine, Durability::Durable, |b| {
        b.put(Table::Meta, b"sync", b"4")
    });
    engine.crash();
    assert_eq!(get(&engine, Table::Kv, b"flushed"), Some(b"3".to_vec()));
    assert_eq!(get(&engine, Table::Kv, b"durable"), None);
    assert_eq!(get(&engine, Table::Meta, b"sync"), Some(b"4".to_vec()));

    // An empty durable batch is enough to flush.
    write_one(&engine, Durability::Buffered, |b| {
        b.put(Table::Kv, b"synced", b"5")
    });
    engine
        .write(WriteBatch::new(), Durability::Durable)
        .expect("write");
    write_one(&engine, Durability::Buffered, |b| {
        b.put(Table::Kv, b"lost-again", b"6")
    });
    engine.crash();
    assert_eq!(get(&engine, Table::Kv, b"synced"), Some(b"5".to_vec()));
    assert_eq!(get(&engine, Table::Kv, b"lost-again"), None);

    // Crashing twice in a row, or with nothing buffered, changes nothing.
    let before = all(&*engine.read().expect("read"), Table::Kv);
    engine.crash();
    engine.crash();
    assert_eq!(all(&*engine.read().expect("read"), Table::Kv), before);

    // The engine keeps working after a crash.
    write_one(&engine, Durability::Durable, |b| {
        b.put(Table::Kv, b"after", b"7")
    });
    engine.crash();
    assert_eq!(get(&engine, Table::Kv, b"after"), Some(b"7".to_vec()));
}

// ---------------------------------------------------------------------------
// redb: defragment gives space back and waits for open views

#[test]
fn redb_defragment_shrinks_the_file_and_waits_for_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("defrag.redb");
    let engine = open(&path);
    for round in 0u32..8 {
        write_one(&engine, Durability::Durable, |b| {
            for i in 0u32..256 {
                let key = [round.to_be_bytes(), i.to_be_bytes()].concat();
                b.put(Table::Kv, key, vec![round as u8; 4096]);
            }
        });
    }
    write_one(&engine, Durability::Durable, |b| {
        b.delete_range(Table::Kv, 1u32.to_be_bytes(), None)
    });
    let kept = all(&*engine.read().expect("read"), Table::Kv);
    assert_eq!(kept.len(), 256);
    let before = std::fs::metadata(&path).expect("stat").len();

    // A view opened before the defragment: it keeps its snapshot, and the defragment
    // waits until it is dropped.
    let engine = std::sync::Arc::new(engine);
    let view = engine.read().expect("read");
    let (tx, rx) = std::sync::mpsc::channel();
    let defrag = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let result = engine.defragment();
            tx.send(()).expect("send");
            result
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(all(&*view, Table::Kv), kept);
    assert!(
        rx.try_recv().is_err(),
        "defragment finished while a view was open"
    );
    drop(view);
    defrag.join().expect("join").expect("defragment");

    let after = std::fs::metadata(&path).expect("stat").len();
    assert!(
        after < before,
        "defragment did not shrink the file: {after} >= {before}"
    );
    assert_eq!(all(&*engine.read().expect("read"), Table::Kv), kept);
    drop(engine);
    // And the compacted file reopens with the same data.
    let engine = open(&path);
    assert_eq!(all(&*engine.read().expect("read"), Table::Kv), kept);
}
