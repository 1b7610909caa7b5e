//! openraft's own storage test suite, run against our log store and state machine on
//! every backend: entries in the in-memory engine, in redb, and in the WAL (with redb
//! for the rest, as `skiff store` runs).

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use skiff_store::engine::{Engine, MemEngine, RedbEngine};
use skiff_store::raft_log::LogStore;
use skiff_store::state_machine::StateMachineStore;
use skiff_store::types::{StorageError, TypeConfig};

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for MemBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError> {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let sm = StateMachineStore::open(engine.clone()).expect("open state machine");
        Ok(((), LogStore::new(engine)?, sm))
    }
}

/// Entries in redb's `RaftLog` table (`wal: false`) or in the WAL beside the redb file;
/// `leader`: the log knows its member ID, so entries of that member's own committed vote
/// take the flusher thread (reported flushed at once, synced in the background).
struct RedbBuilder {
    wal: bool,
    leader: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine: Arc<dyn Engine> =
            Arc::new(RedbEngine::open(&dir.path().join("store.redb")).expect("open redb"));
        let sm = StateMachineStore::open(engine.clone()).expect("open state machine");
        let log = if self.wal {
            let log = LogStore::with_wal(engine, &dir.path().join("wal"))?;
            if self.leader {
                log.for_member(skiff_store::types::MemberId::default())?
            } else {
                log
            }
        } else {
            LogStore::new(engine)?
        };
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_suite_on_wal() {
    Suite::test_all(RedbBuilder {
        wal: true,
        leader: false,
    })
    .expect("openraft storage suite (wal + redb)");
}

#[test]
fn openraft_suite_on_wal_with_leader_flusher() {
    Suite::test_all(RedbBuilder {
        wal: true,
        leader: true,
    })
    .expect("openraft storage suite (wal + redb, leader appends on the flusher)");
}

#[test]
fn openraft_suite_on_memory_engine() {
    Suite::test_all(MemBuilder).expect("openraft storage suite (memory)");
}

#[test]
fn openraft_suite_on_redb_engine() {
    Suite::test_all(RedbBuilder {
        wal: false,
        leader: false,
    })
    .expect("openraft storage suite (redb)");
}
