//! Property tests of the MVCC layer against a simple model of etcd's history: after any
//! sequence of puts, deletes, txns and compactions, every readable revision shows exactly
//! the model's state, revisions bump once per changing request, and an index rebuilt
//! from the persisted records (in-memory and redb engines) answers identically.

use std::collections::BTreeMap;

use proptest::prelude::*;
use skiff_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use skiff_store::engine::{Durability, Engine, MemEngine, RedbEngine, WriteBatch};
use skiff_store::error::Error;
use skiff_store::mvcc::Mvcc;

/// Model value of a key: (value, create_revision, mod_revision, version).
type ModelKv = (Vec<u8>, i64, i64, i64);
type ModelState = BTreeMap<Vec<u8>, ModelKv>;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    DeleteRange(u8, u8),
    /// Txn: if key's version == v then put(key2, val) else delete(key2).
    CasTxn(u8, i64, u8, u8),
    Compact(u8),
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', b'a' + (k % 6)]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u8..4).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..6).prop_map(Op::Delete),
        1 => (0u8..6, 0u8..6).prop_map(|(a, b)| Op::DeleteRange(a, b)),
        2 => (0u8..6, 0i64..3, 0u8..6, 0u8..4).prop_map(|(a, v, b, x)| Op::CasTxn(a, v, b, x)),
        1 => (0u8..100).prop_map(Op::Compact),
    ]
}

struct Model {
    /// history[r] = state at revision r (index 0 unused; revision 1 is empty).
    history: Vec<ModelState>,
    compacted: i64,
}

impl Model {
    fn new() -> Self {
        Model {
            history: vec![ModelState::new(), ModelState::new()],
            compacted: 0,
        }
    }
    fn current(&self) -> i64 {
        self.history.len() as i64 - 1
    }
    fn state(&self) -> &ModelState {
        self.history.last().unwrap()
    }
    fn put_in(state: &mut ModelState, rev: i64, k: Vec<u8>, v: Vec<u8>) {
        let entry = match state.get(&k) {
            Some((_, create, _, version)) => (v, *create, rev, version + 1),
            None => (v, rev, rev, 1),
        };
        state.insert(k, entry);
    }
    fn commit(&mut self, next: ModelState, changed: bool) {
        if changed {
            self.history.push(next);
        }
    }
}

fn put_req(k: u8, v: u8) -> PutRequest {
    PutRequest {
        key: key(k),
        value: vec![b'v', v],
        prev_kv: true,
        ..Default::default()
    }
}

fn check_all_revisions(mvcc: &Mvcc, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(mvcc.current_revision(), model.current());
    for rev in 1..=model.current() {
        let req = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        };
        let result = mvcc.range(&req);
        if rev < model.compacted {
            prop_assert_eq!(result.unwrap_err(), Error::Compacted);
            continue;
        }
        let resp = result.map_err(|e| TestCaseError::fail(format!("range at {rev}: {e}")))?;
        prop_assert_eq!(resp.header.unwrap().revision, model.current());
        let expected = &model.history[rev as usize];
        prop_assert_eq!(resp.count as usize, expected.len());
        let got: ModelState = resp
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    kv.key,
                    (kv.value, kv.create_revision, kv.mod_revision, kv.version),
                )
            })
            .collect();
        prop_assert_eq!(&got, expected, "state at revision {}", rev);
    }
    let future = RangeRequest {
        key: key(0),
        revision: model.current() + 1,
        ..Default::default()
    };
    prop_assert_eq!(mvcc.range(&future).unwrap_err(), Error::FutureRev);
    Ok(())
}

fn run_ops(ops: &[Op], engine: &dyn Engine) -> Result<(), TestCaseError> {
    let mut mvcc = Mvcc::default();
    let mut model = Model::new();
    for op in ops {
        let mut batch = WriteBatch::new();
        let rev = model.current() + 1;
        let mut next = model.state().clone();
        match op {
            Op::Put(k, v) => {
                let applied = mvcc.put(&put_req(*k, *v), &mut batch).unwrap();
                let prev = model.state().get(&key(*k)).map(|e| e.0.clone());
                prop_assert_eq!(applied.response.prev_kv.map(|kv| kv.value), prev);
                Model::put_in(&mut next, rev, key(*k), vec![b'v', *v]);
                model.commit(next, true);
            }
            Op::Delete(k) => {
                let req = DeleteRangeRequest {
                    key: key(*k),
                    ..Default::default()
                };
                let applied = mvcc.delete_range(&req, &mut batch).unwrap();
                let existed = next.remove(&key(*k)).is_some();
                prop_assert_eq!(applied.response.deleted, i64::from(existed));
                prop_assert_eq!(applied.changed, existed);
                model.commit(next, existed);
            }
            Op::DeleteRange(a, b) => {
                let (start, end) = (key(*a), key(*b));
                let req = DeleteRangeRequest {
                    key: start.clone(),
                    range_end: end.clone(),
                    ..Default::default()
                };
                let applied = mvcc.delete_range(&req, &mut batch).unwrap();
                let doomed: Vec<Vec<u8>> = next
                    .keys()
                    .filter(|k| **k >= start && **k < end)
                    .cloned()
                    .collect();
                for k in &doomed {
                    next.remove(k);
                }
                prop_assert_eq!(applied.response.deleted as usize, doomed.len());
                model.commit(next, !doomed.is_empty());
            }
            Op::CasTxn(a, version, b, x) => {
                let req = TxnRequest {
                    compare: vec![Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Version as i32,
                        key: key(*a),
                        range_end: vec![],
                        target_union: Some(compare::TargetUnion::Version(*version)),
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(put_req(*b, *x))),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: key(*b),
                                ..Default::default()
                            },
                        )),
                    }],
                };
                let applied = mvcc.txn(&req, &mut batch).unwrap();
                let actual_version = model.state().get(&key(*a)).map(|e| e.3).unwrap_or(0);
                let succeeded = actual_version == *version;
                prop_assert_eq!(applied.response.succeeded, succeeded);
                let changed = if succeeded {
                    Model::put_in(&mut next, rev, key(*b), vec![b'v', *x]);
                    true
                } else {
                    next.remove(&key(*b)).is_some()
                };
                prop_assert_eq!(applied.changed, changed);
                model.commit(next, changed);
            }
            Op::Compact(pick) => {
                let target = 1 + i64::from(*pick) % (model.current() + 1);
                let result = mvcc.compact(target, &mut batch);
                if target <= model.compacted {
                    prop_assert_eq!(result.unwrap_err(), Error::Compacted);
                } else if target > model.current() {
                    prop_assert_eq!(result.unwrap_err(), Error::FutureRev);
                } else {
                    result.unwrap();
                    model.compacted = target;
                }
            }
        }
        engine
            .write(batch, Durability::Buffered)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_all_revisions(&mvcc, &model)?;
    }
    // The persisted records rebuild an identical index.
    let view = engine
        .read()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let reloaded = Mvcc::load(view.as_ref()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(reloaded.compact_revision(), model.compacted.max(0));
    check_all_revisions(&reloaded, &model)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_model_in_memory(ops in prop::collection::vec(op_strategy(), 1..60)) {
        let engine = MemEngine::new();
        run_ops(&ops, &engine)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_model_on_redb(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let engine = RedbEngine::open(&dir.path().join("db.redb")).unwrap();
        run_ops(&ops, &engine)?;
    }
}

#[test]
fn revision_starts_at_one_and_noops_do_not_bump_it() {
    let mut mvcc = Mvcc::default();
    let mut batch = WriteBatch::new();
    assert_eq!(mvcc.current_revision(), 1);
    let del = DeleteRangeRequest {
        key: b"missing".to_vec(),
        ..Default::default()
    };
    let applied = mvcc.delete_range(&del, &mut batch).unwrap();
    assert!(!applied.changed);
    assert_eq!(applied.response.header.unwrap().revision, 1);
    let applied = mvcc.put(&put_req(0, 1), &mut batch).unwrap();
    assert_eq!(applied.response.header.unwrap().revision, 2);
    // A txn's writes share one revision.
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(put_req(1, 1))),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(put_req(2, 1))),
            },
        ],
        failure: vec![],
    };
    let applied = mvcc.txn(&txn, &mut batch).unwrap();
    assert_eq!(applied.response.header.unwrap().revision, 3);
    assert_eq!(mvcc.current_revision(), 3);
}
