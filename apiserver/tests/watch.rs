//! Watch behaviour through a real gRPC server: slow watchers are closed
//! without stalling fast ones, resuming from a resource version, too-old
//! versions, initial events, bookmarks, timeouts, the trigger index,
//! consistent reads from the cache, and re-listing when storage breaks.

use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::{
    BindPodRequest, Container, Node, Pod, PodSpec, pod_service_client::PodServiceClient,
};
use skiff::api::meta::v1::{EventType, ObjectMeta};
use skiff::client::{ResourceClient, Transport};
use skiff::params::{DeleteParams, ListParams, WatchParams};
use skiff::testing::until;
use skiff::wire::WatchEvent;
use skiff_apiserver::ServerConfig;
use skiff_apiserver::cacher::CacherConfig;
use skiff_apiserver::cacher::watch_cache::RingConfig;
use skiff_apiserver::object_store::INITIAL_EVENTS_END;
use skiff_apiserver::testing::TestServer;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

fn config(f: impl FnOnce(&mut CacherConfig)) -> ServerConfig {
    let mut c = CacherConfig::default();
    f(&mut c);
    ServerConfig {
        watch_cache: Some(c),
        compaction_interval: None,
        ..Default::default()
    }
}

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

async fn next(w: &mut Streaming<WatchEvent<Pod>>) -> WatchEvent<Pod> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("no error")
}

async fn watch(t: &Transport, params: WatchParams) -> Streaming<WatchEvent<Pod>> {
    Pod::watch_in(t.clone(), params).await.unwrap()
}

fn from(rv: &str) -> WatchParams {
    WatchParams {
        resource_version: rv.into(),
        ..Default::default()
    }
}

/// A server whose watch cache keeps 64 events (so a watch may lag by 64).
async fn server_with_a_short_ring(dir: &std::path::Path) -> TestServer {
    TestServer::embedded_with(
        dir,
        config(|c| {
            c.ring = RingConfig {
                initial_capacity: 64,
                max_capacity: 64,
                min_history: Duration::from_secs(75),
            };
        }),
    )
    .await
}

/// A transport on its own connection with HTTP/2 windows of `stream` and
/// `connection` bytes (hyper's client defaults are megabytes).
async fn transport_with_windows(server: &TestServer, stream: u32, connection: u32) -> Transport {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(stream)
        .initial_connection_window_size(connection)
        .connect()
        .await
        .unwrap();
    Transport::from_channel(channel, skiff::client::Credentials::none())
}

/// Opens a watch on `slow_t` that is never read and one on `fast_t` that
/// is, from the current version, writes `n` pods big enough to fill the
/// slow one's window, and checks that the fast one saw every event in
/// order and the slow one was closed. Returns the slow stream, the
/// version it started from, and the written versions.
async fn slow_and_fast_watches(
    server: &TestServer,
    slow_t: &Transport,
    fast_t: &Transport,
    n: usize,
) -> (Streaming<WatchEvent<Pod>>, String, Vec<u64>) {
    let t = server.transport().await;
    let start = Pod::list_in(t.clone(), ListParams::default())
        .await
        .unwrap()
        .list_meta()
        .resource_version;
    let slow = watch(slow_t, from(&start)).await;
    let mut fast = watch(fast_t, from(&start)).await;
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < n {
            let ev = next(&mut fast).await;
            seen.push(ev.object.unwrap().resource_version());
        }
        seen
    });
    let mut written = Vec::new();
    for i in 0..n {
        let mut p = pod(&format!("p{i}"));
        p.meta_mut()
            .annotations
            .insert("pad".into(), "x".repeat(4096));
        written.push(
            Pod::create_in(t.clone(), p)
                .await
                .unwrap()
                .resource_version(),
        );
    }
    let seen = collector.await.unwrap();
    assert_eq!(seen, written, "the fast watch saw every event, in order");
    until(
        "the slow watch to be closed",
        Duration::from_secs(20),
        || server.stats.kind("Pod").unwrap().closed_slow == 1,
    )
    .await;
    (slow, start, written)
}

/// Reads the slow watch to its end: what was already on its way, then the
/// error saying why. Returns the last version it saw and the error.
async fn drain_to_error(
    slow: &mut Streaming<WatchEvent<Pod>>,
    start: &str,
) -> (u64, tonic::Status) {
    let mut last: u64 = start.parse().unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .unwrap()
        {
            Some(Ok(ev)) => last = ev.object.unwrap().resource_version(),
            Some(Err(e)) => return (last, e),
            None => panic!("a slow watch's stream ends with an error"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watch_is_closed_with_a_resumable_error_while_a_fast_one_on_its_connection_sees_every_event()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_a_short_ring(dir.path()).await;
    // One connection for both watches: small windows per stream (the slow
    // one's fills and the server stops sending on it), a large one for the
    // connection (the unread stream does not hold the other back).
    let shared = transport_with_windows(&server, 65_535, 64 << 20).await;
    let (mut slow, start, written) = slow_and_fast_watches(&server, &shared, &shared, 300).await;
    let (last, err) = drain_to_error(&mut slow, &start).await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("watch again from the last resource version"),
        "{err:?}"
    );
    assert_ne!(last, *written.last().unwrap(), "the slow watch fell behind");
    // Resuming from there: the ring (64 events) no longer reaches back that
    // far, so the answer is OUT_OF_RANGE — list again — as Kubernetes says.
    match Pod::watch_in(shared.clone(), from(&last.to_string())).await {
        Err(e) => assert_eq!(e.code(), Code::OutOfRange, "{e:?}"),
        Ok(mut w) => {
            let e = tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .unwrap()
                .expect("an answer")
                .expect_err("too old a version");
            assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_is_closed_while_a_fast_one_sees_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_a_short_ring(dir.path()).await;
    // Separate connections, the slow one with HTTP/2's default 64 KiB
    // windows, so backpressure reaches the server soon.
    let slow_t = transport_with_windows(&server, 65_535, 65_535).await;
    let fast_t = server.transport().await;
    let (mut slow, start, written) = slow_and_fast_watches(&server, &slow_t, &fast_t, 400).await;
    let (last, err) = drain_to_error(&mut slow, &start).await;
    assert!(
        last < *written.last().unwrap(),
        "the slow watcher did not get everything"
    );
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resumes_from_its_last_version_gets_exactly_the_missed_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let t = server.transport().await;
    let start = Pod::list_in(t.clone(), ListParams::default())
        .await
        .unwrap()
        .list_meta()
        .resource_version;
    let mut w = watch(&t, from(&start)).await;
    for i in 0..3 {
        Pod::create_in(t.clone(), pod(&format!("a{i}")))
            .await
            .unwrap();
    }
    let mut last = String::new();
    for _ in 0..3 {
        last = next(&mut w)
            .await
            .object
            .unwrap()
            .meta()
            .resource_version
            .clone();
    }
    drop(w);
    // While disconnected:
    let mut missed = Vec::new();
    for i in 0..3 {
        let p = Pod::create_in(t.clone(), pod(&format!("b{i}")))
            .await
            .unwrap();
        missed.push((EventType::Added, p.name().to_owned(), p.resource_version()));
    }
    let mut p = Pod::get_in(
        t.clone(),
        skiff::params::GetParams {
            namespace: "default".into(),
            name: "a0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    p.meta_mut().labels.insert("x".into(), "y".into());
    let p = Pod::update_in(t.clone(), p).await.unwrap();
    missed.push((EventType::Modified, "a0".into(), p.resource_version()));
    let d = Pod::delete_in(
        t.clone(),
        DeleteParams {
            namespace: "default".into(),
            name: "a1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    missed.push((EventType::Deleted, "a1".into(), d.resource_version()));

    let mut w = watch(&t, from(&last)).await;
    let mut got = Vec::new();
    for _ in 0..missed.len() {
        let ev = next(&mut w).await;
        let o = ev.object.clone().unwrap();
        got.push((ev.event_type(), o.name().to_owned(), o.resource_version()));
    }
    assert_eq!(got, missed);
    // And nothing else is pending: the next event is a new write.
    let p = Pod::create_in(t.clone(), pod("c0")).await.unwrap();
    assert_eq!(
        next(&mut w).await.object.unwrap().resource_version(),
        p.resource_version()
    );
}

async fn too_far_behind(server: &TestServer) {
    let t = server.transport().await;
    let first = Pod::create_in(t.clone(), pod("first")).await.unwrap();
    for i in 0..20 {
        Pod::create_in(t.clone(), pod(&format!("p{i}")))
            .await
            .unwrap();
    }
    // Make sure the cache has seen them all.
    let last = Pod::create_in(t.clone(), pod("last")).await.unwrap();
    Pod::list_in(
        t.clone(),
        ListParams {
            resource_version: last.meta().resource_version.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let err = Pod::watch_in(t.clone(), from(&first.meta().resource_version))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too old"), "{}", err.message());
    // A recent version is fine.
    let mut w = watch(&t, from(&last.meta().resource_version)).await;
    let p = Pod::create_in(t.clone(), pod("after")).await.unwrap();
    assert_eq!(
        next(&mut w).await.object.unwrap().resource_version(),
        p.resource_version()
    );
}

fn tiny_ring() -> ServerConfig {
    config(|c| {
        c.ring = RingConfig {
            initial_capacity: 8,
            max_capacity: 8,
            min_history: Duration::ZERO,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_too_far_behind_is_out_of_range_on_embedded_storage() {
    let dir = tempfile::tempdir().unwrap();
    too_far_behind(&TestServer::embedded_with(dir.path(), tiny_ring()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_too_far_behind_is_out_of_range_on_etcd() {
    let (server, _etcd) = TestServer::on_etcd(tiny_ring()).await;
    too_far_behind(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_initial_events_sends_the_state_then_a_bookmark_then_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let t = server.transport().await;
    for name in ["a", "b", "c"] {
        Pod::create_in(t.clone(), pod(name)).await.unwrap();
    }
    let mut w = watch(
        &t,
        WatchParams {
            send_initial_events: true,
            ..Default::default()
        },
    )
    .await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let ev = next(&mut w).await;
        assert_eq!(ev.event_type(), EventType::Added);
        names.push(ev.object.unwrap().name().to_owned());
    }
    assert_eq!(names, ["a", "b", "c"]);
    let end = next(&mut w).await;
    assert_eq!(end.event_type(), EventType::Bookmark);
    let end = end.object.unwrap();
    assert_eq!(
        end.meta()
            .annotations
            .get(INITIAL_EVENTS_END)
            .map(String::as_str),
        Some("true")
    );
    assert!(end.resource_version() > 0);
    let d = Pod::create_in(t.clone(), pod("d")).await.unwrap();
    let ev = next(&mut w).await;
    assert_eq!(
        (ev.event_type(), ev.object.unwrap().resource_version()),
        (EventType::Added, d.resource_version())
    );
    // Unset resource version without send_initial_events: the state as ADDED, no bookmark.
    let mut plain = watch(&t, WatchParams::default()).await;
    for _ in 0..4 {
        assert_eq!(next(&mut plain).await.event_type(), EventType::Added);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_bookmarks_gives_periodic_bookmarks_with_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded_with(
        dir.path(),
        config(|c| c.bookmark_interval = Duration::from_millis(200)),
    )
    .await;
    let t = server.transport().await;
    let p = Pod::create_in(t.clone(), pod("a")).await.unwrap();
    // Writes to another kind move the revision; the pod bookmark follows.
    let n = Node::create_in(
        t.clone(),
        Node {
            metadata: Some(ObjectMeta {
                name: "n1".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut w = watch(
        &t,
        WatchParams {
            allow_bookmarks: true,
            ..from(&p.meta().resource_version)
        },
    )
    .await;
    let mut plain = watch(&t, from(&p.meta().resource_version)).await;
    loop {
        let ev = next(&mut w).await;
        assert_eq!(ev.event_type(), EventType::Bookmark);
        if ev.object.unwrap().resource_version() >= n.resource_version() {
            break;
        }
    }
    // Watchers that did not ask get none: their next event is a real one.
    let q = Pod::create_in(t.clone(), pod("b")).await.unwrap();
    assert_eq!(
        next(&mut plain).await.object.unwrap().resource_version(),
        q.resource_version()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_seconds_ends_the_stream_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let t = server.transport().await;
    let mut w = watch(
        &t,
        WatchParams {
            timeout_seconds: 1,
            ..Default::default()
        },
    )
    .await;
    let end = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "a clean end, not an error: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_index_only_considers_watchers_that_can_want_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let t = server.transport().await;
    let mut by_node = Vec::new();
    for i in 0..50 {
        by_node.push(
            watch(
                &t,
                WatchParams {
                    field_selector: format!("spec.nodeName=n{i}"),
                    ..from("0")
                },
            )
            .await,
        );
    }
    let mut other_ns = Vec::new();
    for _ in 0..20 {
        let w = Pod::watch_in(
            t.clone(),
            WatchParams {
                namespace: "skiff-system".into(),
                ..from("0")
            },
        )
        .await
        .unwrap();
        other_ns.push(w);
    }
    until("watchers registered", Duration::from_secs(20), || {
        server.stats.kind("Pod").unwrap().watchers == 70
    })
    .await;
    let before = server.stats.kind("Pod").unwrap();
    Pod::create_in(t.clone(), pod("web")).await.unwrap();
    PodServiceClient::new(t.clone())
        .bind_pod(BindPodRequest {
            namespace: "default".into(),
            name: "web".into(),
            node_name: "n7".into(),
            uid: String::new(),
        })
        .await
        .unwrap();
    let ev = next(&mut by_node[7]).await;
    assert_eq!(
        ev.event_type(),
        EventType::Added,
        "a pod bound to n7 enters n7's watch"
    );
    let after = server.stats.kind("Pod").unwrap();
    assert_eq!(after.events - before.events, 2);
    assert!(
        after.considered - before.considered <= 2,
        "2 events with 70 watchers examined {} watchers",
        after.considered - before.considered
    );
}

async fn consistent_reads(server: &TestServer) {
    let t = server.transport().await;
    // Read your own writes, even straight after the write.
    for i in 0..10 {
        let p = Pod::create_in(t.clone(), pod(&format!("p{i}")))
            .await
            .unwrap();
        let listed = Pod::list_in(t.clone(), ListParams::default())
            .await
            .unwrap();
        assert!(listed.items.iter().any(|x| x.name() == p.name()));
        assert!(
            listed.list_meta().resource_version.parse::<i64>().unwrap()
                >= p.resource_version() as i64
        );
    }
    // The last writes go to another kind; pods are still listed consistently.
    for i in 0..10 {
        Node::create_in(
            t.clone(),
            Node {
                metadata: Some(ObjectMeta {
                    name: format!("n{i}"),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let before = server.stats.kind("Pod").unwrap().storage_fallbacks;
    let listed = Pod::list_in(t.clone(), ListParams::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 10);
    let fallbacks = server.stats.kind("Pod").unwrap().storage_fallbacks - before;
    assert_eq!(
        fallbacks, 0,
        "every write of the cluster advances every cache, so it knows it is fresh"
    );
    // "0" is served from the cache at once; a future version is refused with a retry hint.
    let any = Pod::list_in(
        t.clone(),
        ListParams {
            resource_version: "0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(any.items.len(), 10);
    let err = Pod::list_in(
        t.clone(),
        ListParams {
            resource_version: "999999".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.get_details_retry_info().is_some(), "a retry hint");
}

fn short_waits() -> ServerConfig {
    config(|c| c.wait_timeout = Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_lists_come_from_the_cache_after_writes_to_other_kinds_on_embedded_storage() {
    let dir = tempfile::tempdir().unwrap();
    consistent_reads(&TestServer::embedded_with(dir.path(), short_waits()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_lists_come_from_the_cache_after_writes_to_other_kinds_on_etcd() {
    let (server, _etcd) = TestServer::on_etcd(short_waits()).await;
    consistent_reads(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_resumes_when_etcd_restarts_and_its_watchers_see_only_a_pause() {
    let (server, mut etcd) = TestServer::on_etcd(ServerConfig::default()).await;
    let t = server.transport().await;
    Pod::create_in(t.clone(), pod("before")).await.unwrap();
    let mut w = watch(&t, from("0")).await;
    assert_eq!(next(&mut w).await.object.unwrap().name(), "before");
    etcd.kill();
    etcd.restart().await;
    let after = loop {
        match Pod::create_in(t.clone(), pod("after")).await {
            Ok(p) => break p,
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    // The same watch goes on: the storage watch resumed from its revision.
    let ev = next(&mut w).await;
    assert_eq!(ev.event_type(), EventType::Added);
    assert_eq!(ev.object.unwrap().name(), after.name());
    let stats = server.stats.kind("Pod").unwrap();
    assert_eq!(
        stats.relists, 0,
        "a broken watch resumes, it does not re-list"
    );
    assert!(server.stats.feed().unwrap().resumes >= 1);
    let listed = Pod::list_in(t.clone(), ListParams::default())
        .await
        .unwrap();
    let names: Vec<_> = listed.items.iter().map(|p| p.name().to_owned()).collect();
    assert_eq!(names, ["after", "before"]);
}
