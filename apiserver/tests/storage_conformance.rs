//! The storage conformance suite against both backends: embedded on a temp
//! directory, and a real etcd server started for the test.

use std::sync::Arc;

use skiff_apiserver::storage::conformance;
use skiff_apiserver::storage::embedded::EmbeddedStorage;
use skiff_apiserver::storage::etcd::EtcdStorage;
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
    use skiff_apiserver::storage::Storage;
    assert_eq!(s.get("/k").await.unwrap(), Some(created));
    assert_eq!(s.current_revision().await.unwrap(), rev);
}
