//! The SDK runtime against a real API server in this process: the watcher
//! and its store through a server restart and a forced OUT_OF_RANGE, shared
//! informers, and leader election handing over when a leader stops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::api::core::v1::{Container, Pod, PodSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use skiff::params::{DeleteParams, ListParams};
use skiff::runtime::{
    Backoff, Event, InformerFactory, LeaderElectionConfig, LeaderElector, WatcherConfig, Writer,
    reflector, watcher,
};
use skiff::testing::until;
use skiff_apiserver::ServerConfig;
use skiff_apiserver::cacher::CacherConfig;
use skiff_apiserver::cacher::watch_cache::RingConfig;
use skiff_apiserver::testing::{TestServer, reopen_embedded};

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

fn tiny_ring() -> ServerConfig {
    ServerConfig {
        watch_cache: Some(CacherConfig {
            ring: RingConfig {
                initial_capacity: 8,
                max_capacity: 8,
                min_history: Duration::ZERO,
            },
            ..Default::default()
        }),
        compaction_interval: None,
        ..Default::default()
    }
}

fn names(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.into_iter().collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_survives_a_server_restart_and_a_forced_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let storage = reopen_embedded(dir.path()).await;
    let server = TestServer::start_with(Arc::new(storage), tiny_ring()).await;
    let addr = server.addr;
    let client = Client::connect_to(&addr.to_string()).await.unwrap();
    let pods = client.pods("default");
    for i in 0..5 {
        pods.create(&pod(&format!("before-{i}"))).await.unwrap();
    }

    let writer = Writer::<Pod>::new();
    let store = writer.store();
    let inits = Arc::new(AtomicUsize::new(0));
    let counted = inits.clone();
    // A long backoff, so that the writes below happen before it resumes.
    let config = WatcherConfig {
        backoff: Backoff {
            initial: Duration::from_secs(3),
            max: Duration::from_secs(3),
        },
        ..Default::default()
    };
    let stream = reflector(writer, watcher(pods.clone(), config));
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Ok(Event::Init) = item {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    store.wait_until_ready().await;
    assert_eq!(store.len(), 5);

    // Restart the server on the same address and data.
    server.stop().await;
    let storage = reopen_embedded(dir.path()).await;
    let server = TestServer::start_on(addr, Arc::new(storage), tiny_ring()).await;
    // While the watcher backs off: more writes than the new server's ring
    // holds, so its last resource version is too old when it resumes.
    let writes = Client::connect_to(&addr.to_string()).await.unwrap();
    let wpods = writes.pods("default");
    for i in 0..20 {
        wpods.create(&pod(&format!("after-{i}"))).await.unwrap();
    }
    wpods
        .delete("before-0", &DeleteParams::default())
        .await
        .unwrap();

    let expected = names(
        wpods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| p.name().to_owned()),
    );
    until(
        "the store to match the server",
        Duration::from_secs(30),
        || names(store.list().iter().map(|p| p.name().to_owned())) == expected,
    )
    .await;
    assert!(
        inits.load(Ordering::SeqCst) >= 2,
        "the watcher listed again after OUT_OF_RANGE"
    );
    // And it keeps following live changes.
    wpods.create(&pod("live")).await.unwrap();
    until("the live change", Duration::from_secs(30), || {
        store
            .get(&skiff::runtime::ObjectKey::new("default", "live"))
            .is_some()
    })
    .await;
    task.abort();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informers_are_shared_one_watch_per_kind_and_selector() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
    let factory = InformerFactory::new(client.clone());
    let a = factory.all::<Pod>();
    let b = factory.all::<Pod>();
    let c = factory.informer::<Pod>("", WatcherConfig::default().labels("app=web"));
    assert_eq!(factory.len(), 2, "same kind and selector share an informer");
    client.pods("default").create(&pod("p")).await.unwrap();
    for store in [a.store(), b.store()] {
        store.wait_until_ready().await;
        until("the pod in the store", Duration::from_secs(30), || {
            store.len() == 1
        })
        .await;
    }
    c.store().wait_until_ready().await;
    assert!(c.store().is_empty());
    until("two watches at the server", Duration::from_secs(30), || {
        server.stats.kind("Pod").unwrap().watchers == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_has_one_leader_and_hands_over_when_it_stops_renewing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
    let lease_duration = Duration::from_secs(2);
    let leaders: Arc<Mutex<BTreeMap<String, tokio::time::Instant>>> = Arc::default();
    let mut tasks = BTreeMap::new();
    for id in ["a", "b"] {
        let config = LeaderElectionConfig {
            lease_duration,
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(200),
            ..LeaderElectionConfig::new("default", "test-lock", id)
        };
        let elector = LeaderElector::new(client.leases("default"), config);
        let leaders = leaders.clone();
        tasks.insert(
            id,
            tokio::spawn(async move {
                let _ = elector
                    .run(|mut lost| async move {
                        leaders
                            .lock()
                            .unwrap()
                            .insert(id.to_owned(), tokio::time::Instant::now());
                        let _ = lost.wait_for(|l| *l).await;
                        leaders.lock().unwrap().remove(id);
                    })
                    .await;
            }),
        );
    }
    until("a leader", Duration::from_secs(30), || {
        leaders.lock().unwrap().len() == 1
    })
    .await;
    // Only one, for a while (several renewals).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(leaders.lock().unwrap().len(), 1, "never two leaders");
    }
    let first = leaders.lock().unwrap().keys().next().unwrap().clone();
    // The leader stops renewing (its process dies).
    tasks.remove(first.as_str()).unwrap().abort();
    leaders.lock().unwrap().clear();
    let stopped = tokio::time::Instant::now();
    until(
        "the other replica to take over",
        Duration::from_secs(30),
        || leaders.lock().unwrap().len() == 1,
    )
    .await;
    let took = stopped.elapsed();
    let second = leaders.lock().unwrap().keys().next().unwrap().clone();
    assert_ne!(first, second);
    assert!(
        took >= lease_duration / 2,
        "no takeover while the lease was still valid (took {took:?})"
    );
    assert!(
        took <= lease_duration * 3,
        "takeover about one lease duration after renewals stopped (took {took:?})"
    );
    let lease = client.leases("default").get("test-lock").await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
}

/// A leader whose lease writes fail past the renew deadline stops leading
/// (its work is told to stop), campaigns again in the same process, and
/// leads again once writes work; on shutdown it releases the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down_and_campaigns_again_in_process() {
    use skiff_apiserver::storage::faults::FaultyStorage;
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new(Arc::new(reopen_embedded(dir.path()).await));
    let server = TestServer::start(storage.clone()).await;
    let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
    let config = LeaderElectionConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaderElectionConfig::new("default", "resilient-lock", "a")
    };
    let elector = LeaderElector::new(client.leases("default"), config);
    // Each term: (started, ended).
    let terms: Arc<Mutex<Vec<(bool, bool)>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let t = terms.clone();
    let task = tokio::spawn(async move {
        elector
            .lead_until(
                |stop| {
                    let t = t.clone();
                    async move {
                        let i = {
                            let mut t = t.lock().unwrap();
                            t.push((true, false));
                            t.len() - 1
                        };
                        stop.await;
                        t.lock().unwrap()[i].1 = true;
                    }
                },
                async {
                    let _ = stop_rx.await;
                },
            )
            .await;
    });
    until("a first term", Duration::from_secs(30), || {
        terms.lock().unwrap().len() == 1
    })
    .await;
    // Storage loses its quorum for writes: renewals fail.
    storage.refuse_writes(true);
    until("the leader to step down", Duration::from_secs(30), || {
        terms.lock().unwrap()[0].1
    })
    .await;
    assert!(
        !task.is_finished(),
        "a lost lease never ends the process's campaign"
    );
    storage.refuse_writes(false);
    until(
        "a second term in the same process",
        Duration::from_secs(30),
        || terms.lock().unwrap().len() == 2,
    )
    .await;
    // Shutdown: the term ends, the campaign returns, the lease is released.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("shutdown ends the campaign")
        .unwrap();
    assert_eq!(*terms.lock().unwrap(), [(true, true), (true, true)]);
    let lease = client
        .leases("default")
        .get("resilient-lock")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity,
        None,
        "released on shutdown"
    );
}
