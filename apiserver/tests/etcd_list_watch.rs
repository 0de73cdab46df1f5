//! List-watch on a real etcd as the design says: one etcd watch stream per
//! API server however many clients watch and list (read off etcd's own
//! metrics); consistent reads from the cache that see writes made through
//! another API server; a kind far over gRPC's default message size; and a
//! three-member cluster that loses its leader.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, Secret, ServiceAccount};
use skiff::api::meta::v1::{EventType, ObjectMeta};
use skiff::client::{ResourceClient, Transport};
use skiff::params::{GetParams, ListParams, WatchParams};
use skiff::testing::until;
use skiff_apiserver::ServerConfig;
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::testing::{EtcdCluster, EtcdServer, TestServer, etcd_metric};
use tonic::Code;

fn meta(ns: &str, name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        ..Default::default()
    })
}

fn pod(ns: &str, name: &str) -> Pod {
    Pod {
        metadata: meta(ns, name),
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

async fn on_etcd(endpoints: &[String], prefix: &str) -> TestServer {
    let storage = EtcdStorage::connect(endpoints, prefix).await.unwrap();
    TestServer::start_with(Arc::new(storage), ServerConfig::default()).await
}

fn fallbacks(server: &TestServer) -> u64 {
    server
        .stats
        .get()
        .iter()
        .map(|(_, s)| s.storage_fallbacks)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_holds_one_etcd_watch_stream_however_many_clients_watch_and_list() {
    let etcd = EtcdServer::start().await;
    let streams_before =
        etcd_metric(&etcd.endpoint, "etcd_debugging_mvcc_watch_stream_total").await;
    let server = on_etcd(std::slice::from_ref(&etcd.endpoint), "/one-watch").await;
    let t = server.transport().await;
    Namespace::create_in(
        t.clone(),
        Namespace {
            metadata: meta("", "other"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for i in 0..5 {
        Pod::create_in(t.clone(), pod("default", &format!("p{i}")))
            .await
            .unwrap();
    }
    let mut connections = Vec::new();
    for _ in 0..8 {
        connections.push(server.transport().await);
    }
    let mut watches = Vec::new();
    for i in 0..300 {
        let c = connections[i % connections.len()].clone();
        let params = WatchParams {
            namespace: ["default", "other", ""][i % 3].into(),
            label_selector: ["", "app=web", "app!=db"][i % 3].into(),
            resource_version: ["", "0", ""][i % 3].into(),
            send_initial_events: i % 5 == 0,
            ..Default::default()
        };
        // Every kind: each is served by its cache.
        let stream = match i % 4 {
            0 => Pod::watch_in(c, params)
                .await
                .map(|s| s.map(|_| ()).boxed()),
            1 => Node::watch_in(
                c,
                WatchParams {
                    namespace: String::new(),
                    ..params
                },
            )
            .await
            .map(|s| s.map(|_| ()).boxed()),
            2 => Secret::watch_in(c, params)
                .await
                .map(|s| s.map(|_| ()).boxed()),
            _ => ServiceAccount::watch_in(c, params)
                .await
                .map(|s| s.map(|_| ()).boxed()),
        };
        watches.push(stream.unwrap());
    }
    for i in 0..100 {
        let c = connections[i % connections.len()].clone();
        let listed = Pod::list_in(
            c.clone(),
            ListParams {
                namespace: "default".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(listed.items.len(), 5);
        Node::list_in(c.clone(), ListParams::default())
            .await
            .unwrap();
        Pod::get_in(
            c,
            GetParams {
                namespace: "default".into(),
                name: "p1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let stats = server.stats.clone();
    until(
        "every client watch is registered",
        Duration::from_secs(30),
        // The server's own watch of resource definitions (the kinds it
        // serves from them) is not a client's.
        || {
            stats
                .get()
                .iter()
                .filter(|(kind, _)| *kind != "ResourceDefinition")
                .map(|(_, s)| s.watchers)
                .sum::<usize>()
                == 300
        },
    )
    .await;
    let streams_after = etcd_metric(&etcd.endpoint, "etcd_debugging_mvcc_watch_stream_total").await;
    let watchers = etcd_metric(&etcd.endpoint, "etcd_debugging_mvcc_watcher_total").await;
    assert_eq!(
        streams_after - streams_before,
        1.0,
        "one etcd watch stream for 300 client watches and 200 consistent reads"
    );
    assert_eq!(watchers, 1.0, "one etcd watcher");
    assert_eq!(server.stats.feed().unwrap().watches_opened, 1);
    assert_eq!(fallbacks(&server), 0, "nothing went to storage");
    drop(watches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_read_through_one_api_server_sees_a_write_through_another() {
    let etcd = EtcdServer::start().await;
    let endpoints = std::slice::from_ref(&etcd.endpoint);
    let a = on_etcd(endpoints, "/shared").await;
    let b = on_etcd(endpoints, "/shared").await;
    let (ta, tb) = (a.transport().await, b.transport().await);
    for i in 0..20 {
        let name = format!("p{i}");
        let created = Pod::create_in(ta.clone(), pod("default", &name))
            .await
            .unwrap();
        // At once, through the other server: a list, a get and a watch.
        let listed = Pod::list_in(tb.clone(), ListParams::default())
            .await
            .unwrap();
        assert_eq!(listed.items.len(), i + 1, "B lists A's write {name}");
        assert!(
            listed.list_meta().resource_version.parse::<u64>().unwrap()
                >= created.resource_version()
        );
        let got = Pod::get_in(
            tb.clone(),
            GetParams {
                namespace: "default".into(),
                name: name.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(got.resource_version(), created.resource_version());
        // The last write was to another kind: still fresh.
        Node::create_in(
            ta.clone(),
            Node {
                metadata: meta("", &format!("n{i}")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let listed = Pod::list_in(tb.clone(), ListParams::default())
            .await
            .unwrap();
        assert_eq!(listed.items.len(), i + 1);
    }
    let mut w = Pod::watch_in(
        tb.clone(),
        WatchParams {
            send_initial_events: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut initial = 0;
    while let Some(ev) = w.next().await {
        if ev.unwrap().event_type() == EventType::Bookmark {
            break;
        }
        initial += 1;
    }
    assert_eq!(initial, 20);
    assert_eq!(fallbacks(&b), 0, "B answered every read from its cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_over_16_mib_loads_lists_and_watches_from_the_cache_on_etcd() {
    let etcd = EtcdServer::start().await;
    let endpoints = std::slice::from_ref(&etcd.endpoint);
    let writer = on_etcd(endpoints, "/big").await;
    let t = writer.transport().await;
    // 20 secrets of 1 MiB: 20 MiB of one kind, five times gRPC's default limit.
    let data = vec![7u8; 1 << 20];
    for i in 0..20 {
        Secret::create_in(
            t.clone(),
            Secret {
                metadata: meta("default", &format!("s{i:02}")),
                data: [("blob".to_string(), data.clone())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    // A server that starts now must load all of it.
    let reader = on_etcd(endpoints, "/big").await;
    let tr = reader.transport().await;
    let listed = Secret::list_in(tr.clone(), ListParams::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 20);
    assert!(listed.items.iter().all(|s| s.data["blob"].len() == 1 << 20));
    let stats = reader.stats.kind("Secret").unwrap();
    assert_eq!(stats.objects, 20);
    assert_eq!(stats.storage_fallbacks, 0, "served from the cache");
    let from_zero = Secret::list_in(
        tr.clone(),
        ListParams {
            resource_version: "0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(from_zero.items.len(), 20);
    let mut w = Secret::watch_in(
        tr.clone(),
        WatchParams {
            resource_version: "0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for _ in 0..20 {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ev.event_type(), EventType::Added);
    }
}

/// Creates `name`, retrying while etcd elects a leader; returns how long it took.
async fn create_through_election(t: &Transport, name: &str) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        match Pod::create_in(t.clone(), pod("default", name)).await {
            Ok(_) => return start.elapsed(),
            Err(e) if e.code() == Code::Unavailable => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "writes resume after an election: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A create retried after an unknown outcome may find itself done.
            Err(e) if e.code() == Code::AlreadyExists => return start.elapsed(),
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_three_members_the_cache_and_its_watchers_survive_the_leader_killed_and_restarted() {
    let mut cluster = EtcdCluster::start(3).await;
    let server = on_etcd(&cluster.endpoints(), "/three").await;
    let t = server.transport().await;
    Pod::create_in(t.clone(), pod("default", "before"))
        .await
        .unwrap();
    let mut w = Pod::watch_in(
        t.clone(),
        WatchParams {
            resource_version: "0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        w.next().await.unwrap().unwrap().object.unwrap().name(),
        "before"
    );
    for round in 0..2 {
        let victim = if round == 0 {
            cluster.leader().await
        } else {
            // A follower this time.
            (cluster.leader().await + 1) % 3
        };
        cluster.kill(victim);
        let name = format!("while-{round}");
        create_through_election(&t, &name).await;
        // Once the cluster has a leader, nothing fails any more.
        for i in 0..30 {
            Pod::create_in(t.clone(), pod("default", &format!("steady-{round}-{i}")))
                .await
                .unwrap();
            let listed = Pod::list_in(t.clone(), ListParams::default())
                .await
                .unwrap();
            assert!(listed.items.iter().any(|p| p.name() == name));
        }
        cluster.restart(victim).await;
        // The same client watch saw every write, in order, with no re-list.
        let mut names = Vec::new();
        while names.len() < 31 {
            let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
                .await
                .expect("the watch keeps delivering")
                .expect("the watch stays open")
                .unwrap();
            if ev.event_type() == EventType::Added {
                names.push(ev.object.unwrap().name().to_owned());
            }
        }
        assert_eq!(names[0], name);
        assert_eq!(names[30], format!("steady-{round}-29"));
        // Reads went to storage only while the storage watch was down; once
        // it is back, the cache serves them again.
        let before = fallbacks(&server);
        for _ in 0..30 {
            Pod::list_in(t.clone(), ListParams::default())
                .await
                .unwrap();
        }
        assert_eq!(
            fallbacks(&server),
            before,
            "steady reads come from the cache"
        );
    }
    assert_eq!(server.stats.kind("Pod").unwrap().relists, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_starts_and_serves_with_one_of_three_etcd_members_down() {
    let mut cluster = EtcdCluster::start(3).await;
    // Whatever the order of endpoints, the dead one first included.
    cluster.kill(0);
    let server = on_etcd(&cluster.endpoints(), "/one-down").await;
    let t = server.transport().await;
    create_through_election(&t, "first").await;
    for i in 0..30 {
        Pod::create_in(t.clone(), pod("default", &format!("p{i}")))
            .await
            .expect("no steady error with a member down");
        Pod::list_in(t.clone(), ListParams::default())
            .await
            .expect("no steady error with a member down");
    }
    cluster.restart(0).await;
    let listed = Pod::list_in(t.clone(), ListParams::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 31);
}
