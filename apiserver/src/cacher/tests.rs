//! The cacher and its feed over embedded storage behind a fault injector:
//! one storage watch for every kind, resumption without re-listing, progress
//! markers where storage reports no progress, and no watch registered on a
//! state that is being replaced.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use skiff::api::core::v1::{Node, Pod};
use skiff::api::meta::v1::{EventType, ObjectMeta};
use skiff::testing::until;

use super::*;
use crate::object_store::predicate::Predicate;
use crate::storage::embedded::EmbeddedStorage;
use crate::storage::faults::FaultyStorage;

fn pod(name: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(name: &str) -> Node {
    Node {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    embedded: Arc<EmbeddedStorage>,
    faulty: Arc<FaultyStorage>,
    feed: Arc<Feed>,
    pods: Arc<Cacher<Pod>>,
    nodes: Arc<Cacher<Node>>,
}

async fn fixture(progress: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStorage::open(dir.path()).unwrap());
    let faulty = if progress {
        FaultyStorage::new(embedded.clone())
    } else {
        FaultyStorage::without_progress(embedded.clone())
    };
    let feed = Feed::start(faulty.clone(), FeedConfig::default());
    let config = CacherConfig::default();
    let pods = Arc::new(Cacher::<Pod>::new(&feed, config));
    let nodes = Arc::new(Cacher::<Node>::new(&feed, config));
    Fixture {
        _dir: dir,
        embedded,
        faulty,
        feed,
        pods,
        nodes,
    }
}

fn everything(start: WatchStart) -> WatchOptions {
    WatchOptions {
        predicate: Predicate::everything(),
        start,
        initial_events_end_bookmark: false,
        allow_bookmarks: false,
    }
}

fn consistent() -> ListOptions {
    ListOptions {
        predicate: Predicate::everything(),
        version: ReadVersion::Latest,
        limit: 0,
        continue_token: None,
    }
}

/// Names of ADDED/MODIFIED events until `want` distinct names or `within`.
async fn names(stream: &mut EventStream<Pod>, want: usize, within: Duration) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while seen.len() < want {
        let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        let ev = skiff::wire::WatchEvent::<Pod>::decode(
            item.unwrap().into_event().encode_to_vec().as_slice(),
        )
        .unwrap();
        if matches!(ev.event_type(), EventType::Added | EventType::Modified) {
            seen.insert(ev.object.unwrap().meta().name.clone());
        }
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_and_every_client_share_one_storage_watch() {
    let f = fixture(true).await;
    f.pods.create(pod("a")).await.unwrap();
    f.nodes.create(node("n")).await.unwrap();
    let mut streams = Vec::new();
    for i in 0..50 {
        let start = if i % 2 == 0 {
            WatchStart::CurrentState
        } else {
            WatchStart::AnyState
        };
        streams.push(f.pods.watch(everything(start)).await.unwrap());
        let nodes = f.nodes.watch(WatchOptions {
            predicate: Predicate::everything(),
            start: WatchStart::CurrentState,
            initial_events_end_bookmark: false,
            allow_bookmarks: false,
        });
        let _ = nodes.await.unwrap();
        f.pods.list(consistent()).await.unwrap();
        f.nodes.list(consistent()).await.unwrap();
    }
    assert_eq!(f.faulty.calls().watches, 1, "one storage watch in all");
    assert_eq!(f.feed.stats().watches_opened, 1);
    assert_eq!(f.pods.stats().storage_fallbacks, 0);
    assert_eq!(f.nodes.stats().storage_fallbacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_storage_watch_resumes_and_client_watches_see_only_a_pause() {
    let f = fixture(true).await;
    f.pods.create(pod("before")).await.unwrap();
    let mut w = f
        .pods
        .watch(everything(WatchStart::CurrentState))
        .await
        .unwrap();
    assert_eq!(
        names(&mut w, 1, Duration::from_secs(10)).await,
        set(&["before"])
    );
    f.faulty.hold_watches(true);
    f.faulty.cut_watches();
    // Written while the cache is cut off: it must arrive after the resume.
    f.pods.create(pod("during")).await.unwrap();
    until("the feed noticed the cut", Duration::from_secs(20), || {
        f.feed.stats().resumes >= 1
    })
    .await;
    f.faulty.hold_watches(false);
    f.pods.create(pod("after")).await.unwrap();
    assert_eq!(
        names(&mut w, 2, Duration::from_secs(10)).await,
        set(&["during", "after"])
    );
    assert_eq!(f.pods.stats().relists, 0, "no re-list");
    assert_eq!(f.feed.stats().relists, 0);
    assert_eq!(f.feed.stats().watches_opened, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_passed_its_checks_before_a_relist_misses_nothing() {
    let f = fixture(true).await;
    f.pods.create(pod("a")).await.unwrap();
    f.pods.list(consistent()).await.unwrap();
    let gate = f.pods.hold_watches();
    let pods = f.pods.clone();
    let mut watch =
        tokio::spawn(async move { pods.watch(everything(WatchStart::CurrentState)).await });
    gate.arrived.notified().await;
    // The watch has passed its freshness checks. Now storage loses the
    // history the cache would resume from: cut its watch, write, compact.
    f.faulty.hold_watches(true);
    f.faulty.hold_ranges(true);
    f.faulty.cut_watches();
    until("the feed noticed the cut", Duration::from_secs(20), || {
        f.feed.stats().resumes >= 1
    })
    .await;
    f.pods.create(pod("b")).await.unwrap();
    f.pods.create(pod("c")).await.unwrap();
    let now = f.embedded.current_revision().await.unwrap();
    f.embedded.compact(now).await.unwrap();
    f.faulty.hold_watches(false);
    // The feed finds its revision compacted: the cache ends its watchers and
    // lists again (held here, mid-way).
    until(
        "the cache began its re-list",
        Duration::from_secs(20),
        || f.pods.stats().relists >= 1,
    )
    .await;
    gate.go.notify_one();
    // While the re-list is held, the watch must not be handed the old state.
    let early = tokio::time::timeout(Duration::from_millis(200), &mut watch).await;
    f.faulty.hold_ranges(false);
    let result = match early {
        Ok(joined) => joined.unwrap(),
        Err(_) => watch.await.unwrap(),
    };
    match result {
        Ok(mut stream) => assert_eq!(
            names(&mut stream, 3, Duration::from_secs(5)).await,
            set(&["a", "b", "c"]),
            "a watch registered across a re-list sees the new state whole"
        ),
        Err(e) => assert!(
            matches!(e, ApiError::Unavailable { .. } | ApiError::Expired(_)),
            "a refusal must be resumable: {e:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_progress_reports_a_marker_proves_freshness_past_foreign_writes() {
    let f = fixture(false).await;
    f.pods.create(pod("a")).await.unwrap();
    assert_eq!(f.pods.list(consistent()).await.unwrap().len(), 1);
    // Another cluster sharing the store writes under its own prefix: the
    // revision moves, and the feed's watch never hears of it.
    for i in 0..5 {
        f.embedded
            .put(&format!("/other-cluster/k{i}"), "x".into())
            .await
            .unwrap();
    }
    let before = f.feed.stats().markers;
    let listed = f.pods.list(consistent()).await.unwrap();
    assert_eq!(listed.len(), 1);
    let now = f.embedded.current_revision().await.unwrap();
    assert!(
        listed.list_meta().resource_version.parse::<i64>().unwrap() >= now,
        "the list is at least as new as storage was"
    );
    assert!(f.feed.stats().markers > before, "a marker was written");
    assert_eq!(f.pods.stats().storage_fallbacks, 0, "served from the cache");
    // Gets and watches take the same path.
    f.embedded
        .put("/other-cluster/k9", "x".into())
        .await
        .unwrap();
    assert!(
        f.pods
            .get("default", "a", ReadVersion::Latest)
            .await
            .unwrap()
            .is_some()
    );
    f.embedded
        .put("/other-cluster/k10", "x".into())
        .await
        .unwrap();
    let mut w = f
        .pods
        .watch(everything(WatchStart::CurrentState))
        .await
        .unwrap();
    assert_eq!(names(&mut w, 1, Duration::from_secs(5)).await, set(&["a"]));
    assert_eq!(f.pods.stats().storage_fallbacks, 0);
    assert_eq!(f.faulty.calls().watches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_loaded_in_pages_holds_every_object() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStorage::open(dir.path()).unwrap());
    let store = StorageStore::<Pod>::new(embedded.clone());
    for i in 0..25 {
        store.create(pod(&format!("p{i:02}"))).await.unwrap();
    }
    let feed = Feed::start(embedded.clone(), FeedConfig::default());
    let pods = Cacher::<Pod>::new(
        &feed,
        CacherConfig {
            list_page: 4,
            ..Default::default()
        },
    );
    let listed = pods.list(consistent()).await.unwrap();
    assert_eq!(listed.len(), 25);
    assert_eq!(pods.stats().storage_fallbacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_read_your_writes_see_a_delete_the_cache_has_not_seen() {
    let f = fixture(true).await;
    let nodes = crate::object_store::ReadYourWrites::new(f.nodes.clone());
    nodes.create(node("gone")).await.unwrap();
    // A consistent read returns once the cache holds the node.
    let cached = f.nodes.get("", "gone", ReadVersion::Latest).await.unwrap();
    assert!(cached.is_some());
    f.faulty.hold_watches(true);
    f.faulty.cut_watches();
    nodes.delete("", "gone", None).await.unwrap();
    // The cache alone still answers with the node it last saw...
    let stale = f.nodes.get("", "gone", ReadVersion::Any).await.unwrap();
    assert!(stale.is_some(), "the cut cache has not seen the delete");
    // ...while a read through the decorator waits for its own delete.
    let seen = nodes.get("", "gone", ReadVersion::Any).await.unwrap();
    assert!(seen.is_none(), "this server's delete is seen");
    f.faulty.hold_watches(false);
}

/// The first `n` frames of `stream`, each split into its type and object.
async fn framed_events(stream: &mut FrameStream, n: usize) -> Vec<(i32, Pod)> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .unwrap();
        let (t, object) =
            skiff::wire::watch_event_parts(&frame[skiff::wire::GRPC_PREFIX..]).unwrap();
        out.push((t, Pod::decode(object).unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_watches_from_the_cache_and_from_storage_carry_the_same_events() {
    let f = fixture(true).await;
    f.pods.create(pod("a")).await.unwrap();
    let store = StorageStore::<Pod>::new(f.embedded.clone());
    let mut cached = f
        .pods
        .watch_frames(everything(WatchStart::CurrentState))
        .await
        .unwrap();
    let mut stored = store
        .watch_frames(everything(WatchStart::CurrentState))
        .await
        .unwrap();
    f.pods.create(pod("b")).await.unwrap();
    f.pods.delete("default", "a", None).await.unwrap();
    let from_cache = framed_events(&mut cached, 3).await;
    let from_storage = framed_events(&mut stored, 3).await;
    let summary = |events: &[(i32, Pod)]| -> Vec<(i32, String, String)> {
        events
            .iter()
            .map(|(t, p)| (*t, p.meta().name.clone(), p.meta().resource_version.clone()))
            .collect()
    };
    assert_eq!(summary(&from_cache), summary(&from_storage));
    let types: Vec<i32> = from_cache.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        types,
        [EventType::Added, EventType::Added, EventType::Deleted].map(|t| t as i32)
    );
}
