//! Writes never wait on fan-out: a create, an update and a delete each cost
//! exactly one storage round trip and no wait for the watch cache, with a
//! thousand watchers of the same kind as with none — updates and deletes
//! start from the cached object and compare-and-swap (Kubernetes'
//! `cachedExistingObject`). Counted, not timed, on both backends.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::api::core::v1::{Container, Pod, PodSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::ResourceClient;
use skiff::params::{DeleteParams, WatchParams};
use skiff::testing::until;
use skiff_apiserver::ServerConfig;
use skiff_apiserver::storage::Storage;
use skiff_apiserver::storage::embedded::EmbeddedStorage;
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::storage::faults::{Calls, FaultyStorage};
use skiff_apiserver::testing::{EtcdServer, TestServer};

const PODS: &str = "/registry/pods/";

fn pod(name: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "busybox".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// What each write cost: storage calls on pod keys (and every
/// `current_revision`), and the reads that waited for the cache.
#[derive(Debug, PartialEq, Eq)]
struct Cost {
    op: &'static str,
    calls: Calls,
    waits: u64,
}

async fn costs(storage: Arc<dyn Storage>, watchers: usize) -> Vec<Cost> {
    let faulty = FaultyStorage::new(storage);
    // Only the writes measured touch storage: no health probe in between.
    let config = ServerConfig {
        storage_health_interval: None,
        ..Default::default()
    };
    let server = TestServer::start_with(faulty.clone(), config).await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(server.transport().await);
    }
    let t = connections[0].clone();
    let mut drains = Vec::new();
    for i in 0..watchers {
        let mut s = Pod::watch_in(
            connections[i % connections.len()].clone(),
            WatchParams {
                namespace: "default".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        drains.push(tokio::spawn(
            async move { while s.next().await.is_some() {} },
        ));
    }
    let stats = server.stats.clone();
    until("every watcher registered", Duration::from_secs(30), || {
        stats.kind("Pod").unwrap().watchers == watchers
    })
    .await;
    let cached = |rv: u64| {
        let stats = stats.clone();
        async move {
            until("the cache to catch up", Duration::from_secs(30), || {
                stats.kind("Pod").unwrap().revision >= rv as i64
            })
            .await
        }
    };
    let mut out = Vec::new();
    let mut record = |op, before: Calls, waits_before: u64| {
        out.push(Cost {
            op,
            calls: faulty.calls_under(PODS) - before,
            waits: server.stats.kind("Pod").unwrap().fresh_waits - waits_before,
        });
    };
    for i in 0..5 {
        let name = format!("p{i}");
        let (before, waits) = (
            faulty.calls_under(PODS),
            stats.kind("Pod").unwrap().fresh_waits,
        );
        let created = Pod::create_in(t.clone(), pod(&name)).await.unwrap();
        record("create", before, waits);
        cached(created.resource_version()).await;

        let mut changed = created.clone();
        changed
            .meta_mut()
            .labels
            .insert("round".into(), i.to_string());
        let (before, waits) = (
            faulty.calls_under(PODS),
            stats.kind("Pod").unwrap().fresh_waits,
        );
        let updated = Pod::update_in(t.clone(), changed).await.unwrap();
        record("update", before, waits);
        cached(updated.resource_version()).await;

        let (before, waits) = (
            faulty.calls_under(PODS),
            stats.kind("Pod").unwrap().fresh_waits,
        );
        let deleted = Pod::delete_in(
            t.clone(),
            DeleteParams {
                namespace: "default".into(),
                name: name.clone(),
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        record("delete", before, waits);
        cached(deleted.resource_version()).await;
    }
    for d in drains {
        d.abort();
    }
    out
}

fn assert_one_round_trip_each(costs: &[Cost]) {
    for c in costs {
        let writes = c.calls.creates + c.calls.updates + c.calls.deletes;
        assert_eq!(
            (writes, c.calls.total(), c.waits),
            (1, 1, 0),
            "{c:?}: one storage write, nothing else, no wait"
        );
    }
}

async fn writes_do_not_depend_on_watchers(open: impl AsyncFn() -> Arc<dyn Storage>) {
    let idle = costs(open().await, 0).await;
    assert_one_round_trip_each(&idle);
    let watched = costs(open().await, 1000).await;
    assert_one_round_trip_each(&watched);
    assert_eq!(
        idle, watched,
        "the same cost with 1,000 watchers as with none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_costs_one_storage_round_trip_with_or_without_watchers_on_embedded_storage() {
    let dirs = std::sync::Mutex::new(Vec::new());
    writes_do_not_depend_on_watchers(async || {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(EmbeddedStorage::open(dir.path()).unwrap());
        dirs.lock().unwrap().push(dir);
        storage as Arc<dyn Storage>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_costs_one_storage_round_trip_with_or_without_watchers_on_etcd() {
    let etcd = EtcdServer::start().await;
    let prefixes = std::sync::atomic::AtomicUsize::new(0);
    writes_do_not_depend_on_watchers(async || {
        let n = prefixes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let storage = EtcdStorage::connect(
            std::slice::from_ref(&etcd.endpoint),
            &format!("/write-path-{n}"),
        )
        .await
        .unwrap();
        Arc::new(storage) as Arc<dyn Storage>
    })
    .await;
}
