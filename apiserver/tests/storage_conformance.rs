//! The storage conformance suite against both backends: embedded on a temp
//! directory, and a real etcd server started for the test.

use std::sync::Arc;

use skiff_apiserver::storage::conformance;
use skiff_apiserver::storage::embedded::EmbeddedStorage;
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::storage::{RangeRequest, Storage, StorageError};
use skiff_apiserver::testing::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_storage_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let storage = EmbeddedStorage::open(dir.path()).unwrap();
    conformance::run_all(Arc::new(storage), "/conformance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_storage_passes_conformance() {
    let etcd = EtcdServer::start().await;
    let storage = EtcdStorage::connect(std::slice::from_ref(&etcd.endpoint), "/skiff-test")
        .await
        .unwrap();
    conformance::run_all(Arc::new(storage), "/conformance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_storage_keeps_data_and_revision_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (created, rev) = {
        let s = EmbeddedStorage::open(dir.path()).unwrap();
        let created = s.create("/k", "v".into()).await.unwrap();
        let rev = skiff_apiserver::storage::Storage::current_revision(&s)
            .await
            .unwrap();
        (created, rev)
    };
    // The writer thread of the first instance exits once its handle is gone;
    // give it a moment to release the file lock.
    let s = loop {
        match EmbeddedStorage::open(dir.path()) {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert_eq!(s.get("/k").await.unwrap(), Some(created));
    assert_eq!(s.current_revision().await.unwrap(), rev);
}

async fn periodic_compaction_discards_old_history(storage: Arc<dyn Storage>) {
    let first = storage.create("/compaction/a", "1".into()).await.unwrap();
    let task = tokio::spawn(skiff_apiserver::storage::compactor::run(
        storage.clone(),
        std::time::Duration::from_millis(100),
    ));
    // Keep writing so that each round has a newer revision to compact to.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut kv = first.clone();
    loop {
        kv = storage
            .update("/compaction/a", "x".into(), kv.mod_revision)
            .await
            .unwrap();
        let old = storage
            .range(RangeRequest {
                prefix: "/compaction/".into(),
                revision: Some(first.mod_revision),
                ..Default::default()
            })
            .await;
        if matches!(old, Err(StorageError::Compacted { .. })) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history was never compacted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    task.abort();
    // The present is intact.
    assert_eq!(storage.get("/compaction/a").await.unwrap().unwrap(), kv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compaction_runs_on_embedded_storage() {
    let dir = tempfile::tempdir().unwrap();
    periodic_compaction_discards_old_history(Arc::new(EmbeddedStorage::open(dir.path()).unwrap()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compaction_runs_on_etcd() {
    let etcd = EtcdServer::start().await;
    let storage = EtcdStorage::connect(std::slice::from_ref(&etcd.endpoint), "/skiff-test")
        .await
        .unwrap();
    periodic_compaction_discards_old_history(Arc::new(storage)).await;
}
