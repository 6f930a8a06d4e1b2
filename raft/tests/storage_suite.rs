//! openraft's storage Suite against txlog's WAL log store and state machine (record file + sled indexes).

use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::StorageError;
use txlog_raft::LogStore;
use txlog_raft::StateMachine;
use txlog_raft::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(dir.path().join("wal"), Default::default()).expect("open wal");
        let sm = StateMachine::open(dir.path().join("state")).expect("open state machine");
        Ok((dir, log, sm))
    }
}

/// Runs every case of openraft's log-storage suite (log, vote, purge, truncate, apply, snapshot transfer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("openraft storage suite");
}
