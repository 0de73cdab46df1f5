//! Randomized history: writers create, relabel, bind and delete pods across
//! namespaces while watchers start at random resource versions (or from the
//! current state) with random label, field and namespace selectors. Every
//! watcher must receive exactly the committed history that matches its
//! selector — nothing missing, duplicated or out of order — across its own
//! reconnects: when its stream ends it watches again from the last resource
//! version it saw, and lists again (watch-list) only when told the version
//! is too old. The committed history is read off storage by a watch of its
//! own, beside the API server, so writes whose outcome the writer never
//! learnt (storage killed mid-request) count as what they were.
//!
//! Runs on both backends, without faults and with them: the storage watch
//! cut, a compaction past the cache's revision (the cache must list again),
//! etcd killed and restarted, a three-member etcd losing its leader and a
//! follower; while another kind is written through the API and another
//! cluster writes under its own prefix of the same storage. The seed is
//! printed; set SKIFF_TEST_SEED to replay one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff::Resource;
use skiff::api::core::v1::{
    BindPodRequest, Container, Namespace, Pod, PodSpec, Secret,
    pod_service_client::PodServiceClient,
};
use skiff::api::meta::v1::{EventType, ObjectMeta};
use skiff::client::{Api, Multiplexer, ResourceClient, Transport};
use skiff::params::{DeleteParams, WatchParams};
use skiff::selector::{FieldSelector, LabelSelector};
use skiff::wire::WatchEvent;
use skiff_apiserver::ServerConfig;
use skiff_apiserver::object_store::{INITIAL_EVENTS_END, decode_object};
use skiff_apiserver::storage::embedded::EmbeddedStorage;
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::storage::faults::FaultyStorage;
use skiff_apiserver::storage::{EventKind, Revision, Storage};
use skiff_apiserver::testing::{EtcdCluster, EtcdServer, TestServer};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::Code;

const NAMESPACES: &[&str] = &["default", "ns-a", "ns-b"];
const WRITERS: usize = 4;
const OPS_PER_WRITER: usize = 120;
const WATCHERS: usize = 16;
const PODS: &str = "/registry/pods/";

/// One committed change: the revision and the object after it (None: deleted).
#[derive(Debug, Clone)]
struct Change {
    revision: i64,
    key: String,
    after: Option<Pod>,
}

/// What a watcher saw or should see: type, namespace/name, revision, app label.
type Seen = (EventType, String, i64, String);

fn pod(ns: &str, name: &str, app: &str, tier: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            labels: [
                ("app".to_string(), app.to_string()),
                ("tier".to_string(), tier.to_string()),
            ]
            .into(),
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

fn key_of(p: &Pod) -> String {
    format!("{}/{}", p.meta().namespace, p.meta().name)
}

fn seen_of(t: EventType, p: &Pod) -> Seen {
    (
        t,
        key_of(p),
        p.resource_version() as i64,
        p.meta().labels.get("app").cloned().unwrap_or_default(),
    )
}

#[derive(Debug, Clone)]
struct Selector {
    namespace: String,
    labels: String,
    fields: String,
}

impl Selector {
    fn matches(&self, p: &Pod) -> bool {
        (self.namespace.is_empty() || p.meta().namespace == self.namespace)
            && LabelSelector::parse(&self.labels)
                .unwrap()
                .matches(&p.meta().labels)
            && FieldSelector::parse(&self.fields)
                .unwrap()
                .matches(|f| p.field(f))
    }
}

/// The events a watcher with `sel` starting after `start` must see.
fn expected_after(history: &[Change], start: i64, sel: &Selector) -> Vec<Seen> {
    let mut state: BTreeMap<String, Pod> = BTreeMap::new();
    let mut out = Vec::new();
    for change in history {
        let prev = match &change.after {
            Some(p) => state.insert(change.key.clone(), p.clone()),
            None => state.remove(&change.key),
        };
        if change.revision <= start {
            continue;
        }
        let prev_match = prev.as_ref().is_some_and(|p| sel.matches(p));
        let cur_match = change.after.as_ref().is_some_and(|p| sel.matches(p));
        let at = |p: &Pod| {
            let mut p = p.clone();
            p.meta_mut().resource_version = change.revision.to_string();
            p
        };
        match (&change.after, cur_match, prev_match) {
            (Some(cur), true, true) => out.push(seen_of(EventType::Modified, cur)),
            (Some(cur), true, false) => out.push(seen_of(EventType::Added, cur)),
            (_, false, true) => out.push(seen_of(EventType::Deleted, &at(prev.as_ref().unwrap()))),
            _ => {}
        }
    }
    out
}

/// The objects matching `sel` at revision `at`, as ADDED events in key order.
fn state_at(history: &[Change], at: i64, sel: &Selector) -> Vec<Seen> {
    let mut state: BTreeMap<String, Pod> = BTreeMap::new();
    for change in history.iter().take_while(|a| a.revision <= at) {
        match &change.after {
            Some(p) => state.insert(change.key.clone(), p.clone()),
            None => state.remove(&change.key),
        };
    }
    state
        .values()
        .filter(|p| sel.matches(p))
        .map(|p| seen_of(EventType::Added, p))
        .collect()
}

/// Every committed pod change, read by a storage watch of its own that
/// resumes from its last revision across outages.
struct Recorder {
    changes: Arc<Mutex<Vec<Change>>>,
    progress: watch::Receiver<Revision>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(truth: Arc<dyn Storage>) -> Self {
        let start = truth.current_revision().await.unwrap() + 1;
        let changes = Arc::new(Mutex::new(Vec::new()));
        let (tx, progress) = watch::channel(start - 1);
        let out = changes.clone();
        let task = tokio::spawn(async move {
            let mut next = start;
            loop {
                let Ok(mut stream) = truth.watch(PODS, next).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while let Some(Ok(batch)) = stream.next().await {
                    for e in batch.events {
                        let rev = e.revision();
                        let key = e.kv.key.trim_start_matches(PODS).to_owned();
                        let after = match e.kind {
                            EventKind::Put => Some(
                                decode_object::<Pod>(&e.kv.key, &e.kv.value, rev)
                                    .expect("stored pods decode"),
                            ),
                            EventKind::Delete => None,
                        };
                        out.lock().unwrap().push(Change {
                            revision: rev,
                            key,
                            after,
                        });
                        next = rev + 1;
                        tx.send_replace(rev);
                    }
                }
            }
        });
        Self {
            changes,
            progress,
            task,
        }
    }

    /// Waits until every change up to `revision` has been recorded.
    async fn reach(&mut self, revision: Revision) {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.progress.wait_for(|p| *p >= revision),
        )
        .await
        .expect("the recorder catches up")
        .unwrap();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One acknowledged write, to check none was lost.
type Ack = (i64, String, bool);

async fn write(t: Transport, seed: u64, acks: Arc<Mutex<Vec<Ack>>>, ops: Arc<AtomicUsize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pods = PodServiceClient::new(t.clone());
    for _ in 0..OPS_PER_WRITER {
        ops.fetch_add(1, Ordering::Relaxed);
        let ns = NAMESPACES[rng.random_range(0..NAMESPACES.len())];
        let name = format!("p{}", rng.random_range(0..10));
        let app = ["a", "b", "c"][rng.random_range(0..3)];
        let tier = ["x", "y"][rng.random_range(0..2)];
        let key = format!("{ns}/{name}");
        // (revision, whether the object remains) of an acknowledged write
        let result: Result<Option<(i64, bool)>, tonic::Status> = match rng.random_range(0..10) {
            0..=3 => Pod::create_in(t.clone(), pod(ns, &name, app, tier))
                .await
                .map(|p| Some((p.resource_version() as i64, true))),
            4..=6 => {
                // A relabel of whatever is there (unconditional update).
                let current = Pod::get_in(
                    t.clone(),
                    skiff::params::GetParams {
                        namespace: ns.into(),
                        name: name.clone(),
                        ..Default::default()
                    },
                )
                .await;
                match current {
                    Ok(current) => {
                        let before = current.resource_version();
                        let mut p = pod(ns, &name, app, tier);
                        p.spec = current.spec;
                        Pod::update_in(t.clone(), p).await.map(|p| {
                            // An update that changes nothing writes nothing.
                            (p.resource_version() != before)
                                .then_some((p.resource_version() as i64, true))
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            7 => pods
                .bind_pod(BindPodRequest {
                    namespace: ns.into(),
                    name: name.clone(),
                    node_name: ["n1", "n2"][rng.random_range(0..2)].into(),
                    uid: String::new(),
                })
                .await
                .map(|r| {
                    r.into_inner()
                        .pod
                        .map(|p| (p.resource_version() as i64, true))
                }),
            _ => Pod::delete_in(
                t.clone(),
                DeleteParams {
                    namespace: ns.into(),
                    name: name.clone(),
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            // The response is the last state, stamped with the deletion's revision.
            .map(|deleted| Some((deleted.resource_version() as i64, false))),
        };
        match result {
            Ok(Some((revision, remains))) => acks.lock().unwrap().push((revision, key, remains)),
            Ok(None) => {}
            // Storage is away (a fault): give it a moment.
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(_) => {}
        }
    }
}

/// Where a stretch of one watcher's stream started.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    /// Watch-list: the current state, then a BOOKMARK at this version.
    Initial,
    /// Changes after this version.
    After(i64),
}

/// What one watch call of a watcher delivered.
#[derive(Debug, Clone)]
struct Segment {
    start: Start,
    initial_end: Option<i64>,
    events: Vec<Seen>,
}

/// A client watch that reconnects from its last resource version.
struct Watcher {
    selector: Selector,
    segments: Arc<Mutex<Vec<Segment>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How watchers watch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    /// Each its own `WatchPods` call on its own connection.
    OwnCalls,
    /// Watches on two shared multiplexed streams, each watcher cancelling
    /// its watch at random moments and adding it again from where it was,
    /// beside other watches added and cancelled on the same streams.
    Multiplexed,
}

/// A watch's events; an error says whether the version was too old.
type Events = std::pin::Pin<Box<dyn futures::Stream<Item = Result<WatchEvent<Pod>, bool>> + Send>>;

/// Opens one watch of pods through `mux`, or a call of its own.
async fn open(
    t: &Transport,
    mux: Option<&Multiplexer>,
    params: WatchParams,
) -> Result<Events, bool> {
    match mux {
        None => match Pod::watch_in(t.clone(), params).await {
            Ok(s) => Ok(Box::pin(
                s.map(|r| r.map_err(|e| e.code() == Code::OutOfRange)),
            )),
            Err(e) => Err(e.code() == Code::OutOfRange),
        },
        Some(m) => match m.watch(&Api::<Pod>::new(t.clone(), ""), &params).await {
            Ok(s) => Ok(Box::pin(s.map(|r| r.map_err(|e| e.is_expired())))),
            Err(e) => Err(e.is_expired()),
        },
    }
}

/// Adds and cancels watches of another kind on `mux` until aborted.
fn churn(mux: Multiplexer, t: Transport, seed: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let api = Api::<Secret>::new(t, "default");
        loop {
            let w = mux.watch(&api, &WatchParams::default()).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(1..40))).await;
            drop(w);
        }
    })
}

fn spawn_watcher(
    t: Transport,
    selector: Selector,
    start: Option<i64>,
    mux: Option<Multiplexer>,
    seed: u64,
) -> Watcher {
    let segments: Arc<Mutex<Vec<Segment>>> = Arc::new(Mutex::new(Vec::new()));
    let out = segments.clone();
    let sel = selector.clone();
    let task = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last = start;
        loop {
            let params = WatchParams {
                namespace: sel.namespace.clone(),
                label_selector: sel.labels.clone(),
                field_selector: sel.fields.clone(),
                resource_version: last.map(|s| s.to_string()).unwrap_or_default(),
                send_initial_events: last.is_none(),
                ..Default::default()
            };
            let mut stream = match open(&t, mux.as_ref(), params).await {
                Ok(s) => s,
                Err(true) => {
                    last = None;
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let index = {
                let mut segs = out.lock().unwrap();
                segs.push(Segment {
                    start: match last {
                        None => Start::Initial,
                        Some(s) => Start::After(s),
                    },
                    initial_end: None,
                    events: Vec::new(),
                });
                segs.len() - 1
            };
            let mut initial = last.is_none();
            loop {
                match stream.next().await {
                    Some(Ok(ev)) => {
                        let obj = ev.object.clone().unwrap();
                        let rv = obj.resource_version() as i64;
                        let mut segs = out.lock().unwrap();
                        if ev.event_type() == EventType::Bookmark {
                            if obj.meta().annotations.contains_key(INITIAL_EVENTS_END) {
                                segs[index].initial_end = Some(rv);
                                initial = false;
                                last = Some(rv);
                            }
                            continue;
                        }
                        segs[index].events.push(seen_of(ev.event_type(), &obj));
                        if !initial {
                            last = Some(rv);
                        }
                        drop(segs);
                        // On a shared stream: cancel now and then, and add
                        // the watch again from where it was.
                        if mux.is_some() && rng.random_range(0..25) == 0 {
                            if initial {
                                last = None;
                            }
                            break;
                        }
                    }
                    Some(Err(true)) => {
                        last = None;
                        break;
                    }
                    // Ended or broken: watch again from the last version seen
                    // (an initial state cut short starts over).
                    _ => {
                        if initial {
                            last = None;
                        }
                        break;
                    }
                }
            }
        }
    });
    Watcher {
        selector,
        segments,
        task,
    }
}

/// Why a watcher's stream is not the committed history, if it is not yet.
fn check(w: &Watcher, history: &[Change], complete: bool) -> Result<(), String> {
    let segments = w.segments.lock().unwrap().clone();
    let Some(last_index) = segments.len().checked_sub(1) else {
        return Err("no watch opened".into());
    };
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i == last_index;
        let (head, from) = match (seg.start, seg.initial_end) {
            (Start::After(s), _) => (Vec::new(), s),
            (Start::Initial, Some(r)) => (state_at(history, r, &w.selector), r),
            (Start::Initial, None) if is_last && complete => {
                return Err(format!("segment {i}: the initial state never ended"));
            }
            // Cut short before its end: a fresh one followed.
            (Start::Initial, None) => continue,
        };
        let mut expected = head;
        expected.extend(expected_after(history, from, &w.selector));
        let got = &seg.events;
        let ok = if is_last && complete {
            got == &expected
        } else {
            got.len() <= expected.len() && got[..] == expected[..got.len()]
        };
        if !ok {
            let first = got
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(expected.len()));
            return Err(format!(
                "segment {i} of {} ({:?}, initial end {:?}): got {} events, expected {}{}; first difference at {first}: got {:?}, expected {:?}",
                segments.len(),
                seg.start,
                seg.initial_end,
                got.len(),
                expected.len(),
                if is_last { "" } else { " or a prefix" },
                got.get(first),
                expected.get(first),
            ));
        }
        // The next stretch resumes exactly where this one stopped.
        if let Some(next) = segments.get(i + 1)
            && let Start::After(s) = next.start
        {
            let resumed_from = got.last().map(|e| e.2).or(seg.initial_end).unwrap_or(from);
            if s != resumed_from {
                return Err(format!(
                    "segment {} resumed from {s}, the last version seen was {resumed_from}",
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

/// A fault to inject while the writers run.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// End the API server's storage watch.
    CutWatch,
    /// Cut the watch, write, compact past the cache's revision, let it
    /// watch again: the cache must list again and its watchers resume or
    /// list again themselves.
    CompactPastCache,
    /// SIGKILL the (only) etcd and start it again.
    RestartEtcd,
    /// SIGKILL the leader of a three-member etcd, then restart it.
    KillLeader,
    /// SIGKILL a follower of a three-member etcd, then restart it.
    KillFollower,
}

/// What the test runs against.
enum Backend {
    Embedded(#[allow(dead_code)] tempfile::TempDir),
    Etcd(EtcdServer),
    Cluster(EtcdCluster),
}

struct Run {
    server: TestServer,
    faulty: Arc<FaultyStorage>,
    /// Storage as the API server does not see it: for the recorder,
    /// compaction, and another cluster's writes under another prefix.
    truth: Arc<dyn Storage>,
    foreign: Arc<dyn Storage>,
    /// Where the other cluster's keys start in `foreign`.
    foreign_prefix: &'static str,
    backend: Backend,
}

async fn embedded() -> Run {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(EmbeddedStorage::open(dir.path()).unwrap());
    let faulty = FaultyStorage::new(storage.clone());
    Run {
        server: TestServer::start_with(faulty.clone(), ServerConfig::default()).await,
        faulty,
        // Another cluster's keys in the same store, outside our prefix.
        foreign: storage.clone(),
        foreign_prefix: "/other-cluster",
        truth: storage,
        backend: Backend::Embedded(dir),
    }
}

async fn on_etcd(backend: Backend) -> Run {
    let endpoints = match &backend {
        Backend::Etcd(e) => vec![e.endpoint.clone()],
        Backend::Cluster(c) => c.endpoints(),
        Backend::Embedded(_) => unreachable!("not etcd"),
    };
    let connect = async |prefix: &str| -> Arc<dyn Storage> {
        let storage = EtcdStorage::connect(&endpoints, prefix).await.unwrap();
        Arc::new(storage) as Arc<dyn Storage>
    };
    let faulty = FaultyStorage::new(connect("/skiff").await);
    let truth = connect("/skiff").await;
    let foreign = connect("/other-cluster").await;
    Run {
        server: TestServer::start_with(faulty.clone(), ServerConfig::default()).await,
        faulty,
        truth,
        foreign,
        // The other cluster's storage has its own key prefix.
        foreign_prefix: "",
        backend,
    }
}

async fn wait_ops(ops: &AtomicUsize, at_least: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ops.load(Ordering::Relaxed) < at_least {
        assert!(tokio::time::Instant::now() < deadline, "writers progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn inject(
    fault: Fault,
    run: &mut Run,
    ops: &AtomicUsize,
    recorded: &watch::Receiver<Revision>,
) {
    let now = ops.load(Ordering::Relaxed);
    match fault {
        Fault::CutWatch => run.faulty.cut_watches(),
        Fault::CompactPastCache => {
            run.faulty.hold_watches(true);
            run.faulty.cut_watches();
            wait_ops(ops, now + 20).await;
            // Everything up to here is recorded; the cache is behind it.
            let target = *recorded.borrow();
            match run.truth.compact(target).await {
                Ok(()) | Err(skiff_apiserver::storage::StorageError::Compacted { .. }) => {}
                Err(e) => panic!("compact: {e}"),
            }
            run.faulty.hold_watches(false);
        }
        Fault::RestartEtcd => {
            let Backend::Etcd(etcd) = &mut run.backend else {
                panic!("not a single etcd")
            };
            etcd.kill();
            etcd.restart().await;
        }
        Fault::KillLeader | Fault::KillFollower => {
            let Backend::Cluster(cluster) = &mut run.backend else {
                panic!("not an etcd cluster")
            };
            let leader = cluster.leader().await;
            let victim = match fault {
                Fault::KillLeader => leader,
                _ => (leader + 1) % cluster.members.len(),
            };
            cluster.kill(victim);
            wait_ops(ops, now + 20).await;
            cluster.restart(victim).await;
        }
    }
}

async fn run_history(run: Run, faults: &[Fault]) {
    run_history_via(run, faults, Via::OwnCalls).await
}

async fn run_history_via(mut run: Run, faults: &[Fault], via: Via) {
    let seed: u64 = std::env::var("SKIFF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!(
        "watch history seed: {seed} (replay with SKIFF_TEST_SEED={seed}), faults {faults:?}, via {via:?}"
    );
    let mut recorder = Recorder::start(run.truth.clone()).await;
    let t = run.server.transport().await;
    for ns in &NAMESPACES[1..] {
        Namespace::create_in(
            t.clone(),
            Namespace {
                metadata: Some(ObjectMeta {
                    name: (*ns).into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::new(Mutex::new(Vec::new()));
    let ops = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Each writer has its own connection.
        let t = run.server.transport().await;
        writers.push(tokio::spawn(write(
            t,
            seed.wrapping_add(w as u64 + 1),
            acks.clone(),
            ops.clone(),
        )));
    }
    // Interleaved: another kind through the API, another cluster's pods
    // under its own prefix of the same storage.
    let background = {
        let (t, foreign, ops) = (t.clone(), run.foreign.clone(), ops.clone());
        let foreign_prefix = run.foreign_prefix;
        tokio::spawn(async move {
            for i in 0u64.. {
                let secret = Secret {
                    metadata: Some(ObjectMeta {
                        name: format!("s{}", i % 7),
                        namespace: "default".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                if i % 2 == 0 {
                    let _ = Secret::create_in(t.clone(), secret).await;
                } else {
                    let _ = Secret::delete_in(
                        t.clone(),
                        DeleteParams {
                            namespace: "default".into(),
                            name: format!("s{}", (i - 1) % 7),
                            ..Default::default()
                        },
                    )
                    .await;
                }
                let foreign_pod = pod("default", &format!("p{}", i % 10), "a", "x");
                let _ = foreign
                    .put(
                        &format!("{foreign_prefix}{PODS}default/p{}", i % 10),
                        prost::Message::encode_to_vec(&foreign_pod).into(),
                    )
                    .await;
                if ops.load(Ordering::Relaxed) >= WRITERS * OPS_PER_WRITER {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut muxes = Vec::new();
    let mut churners = Vec::new();
    if via == Via::Multiplexed {
        for i in 0..2 {
            let t = run.server.transport().await;
            let mux = Multiplexer::new(t.clone());
            churners.push(churn(mux.clone(), t.clone(), seed.wrapping_add(100 + i)));
            muxes.push((mux, t));
        }
    }
    // Start watchers while the writers run, faults in between.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut watchers = Vec::new();
    let mut faults = faults.iter().copied().peekable();
    for i in 0..WATCHERS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        let selector = Selector {
            namespace: ["", "", "ns-a", "default"][rng.random_range(0..4)].into(),
            labels: ["", "app=a", "app in (a,b)", "tier!=x", "app!=c,tier=y"]
                [rng.random_range(0..5)]
            .into(),
            fields: [
                "",
                "",
                "spec.nodeName=n1",
                "spec.nodeName!=n1",
                "metadata.name=p3",
            ][rng.random_range(0..5)]
            .into(),
        };
        // Every fourth watcher starts from the current state; the others at
        // a revision some writer has been told about.
        let start = if i % 4 == 3 {
            None
        } else {
            let acks = acks.lock().unwrap();
            (!acks.is_empty()).then(|| acks[rng.random_range(0..acks.len())].0)
        };
        let watcher_seed = seed.wrapping_add(1000 + i as u64);
        watchers.push(match muxes.get(i % 2) {
            Some((mux, t)) => {
                spawn_watcher(t.clone(), selector, start, Some(mux.clone()), watcher_seed)
            }
            None => spawn_watcher(
                run.server.transport().await,
                selector,
                start,
                None,
                watcher_seed,
            ),
        });
        if i % 4 == 1
            && let Some(fault) = faults.next()
        {
            inject(fault, &mut run, &ops, &recorder.progress).await;
        }
    }
    for fault in faults {
        inject(fault, &mut run, &ops, &recorder.progress).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    background.await.unwrap();
    let end = loop {
        match run.truth.current_revision().await {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // The last revision may be another kind's or cluster's: wait for a pod
    // write after it, so the recorder has provably seen everything.
    let last = Pod::create_in(t.clone(), pod("default", "the-end", "z", "z"))
        .await
        .unwrap();
    assert!(last.resource_version() as i64 > end);
    recorder.reach(last.resource_version() as i64).await;
    let history = recorder.changes.lock().unwrap().clone();
    assert!(
        history.windows(2).all(|w| w[0].revision < w[1].revision),
        "the recorded history is in revision order"
    );
    // No acknowledged write is missing from what storage committed.
    let committed: BTreeMap<i64, &Change> = history.iter().map(|c| (c.revision, c)).collect();
    let acked = acks.lock().unwrap().clone();
    assert!(
        acked.len() > WRITERS * OPS_PER_WRITER / 4,
        "enough writes succeeded: {}",
        acked.len()
    );
    for (revision, key, remains) in &acked {
        let c = committed.get(revision).unwrap_or_else(|| {
            panic!("seed {seed}: acknowledged write {key}@{revision} is not in storage")
        });
        assert_eq!((&c.key, c.after.is_some()), (key, *remains));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (i, w) in watchers.iter().enumerate() {
        loop {
            match check(w, &history, true) {
                Ok(()) => break,
                Err(why) => {
                    // Not there yet is fine while it can still catch up; a
                    // wrong event never becomes right.
                    if let Err(wrong) = check(w, &history, false) {
                        panic!("seed {seed}: watcher {i} {:?}: {wrong}", w.selector);
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "seed {seed}: watcher {i} {:?}: {why}",
                        w.selector
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    for c in churners {
        c.abort();
    }
    let pods = run.server.stats.kind("Pod").unwrap();
    let segments: Vec<Vec<Segment>> = watchers
        .iter()
        .map(|w| w.segments.lock().unwrap().clone())
        .collect();
    println!(
        "history of {} changes; {} acknowledged; pod cache re-listed {} times; feed {:?}; \
         watchers reconnected {} times, listed again {} times",
        history.len(),
        acked.len(),
        pods.relists,
        run.server.stats.feed(),
        segments.iter().map(|s| s.len() - 1).sum::<usize>(),
        segments
            .iter()
            .map(|s| s
                .iter()
                .skip(1)
                .filter(|x| x.start == Start::Initial)
                .count())
            .sum::<usize>(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_exactly_their_history_on_embedded_storage() {
    run_history(embedded().await, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_exactly_their_history_on_etcd() {
    run_history(on_etcd(Backend::Etcd(EtcdServer::start().await)).await, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_exactly_their_history_across_watch_cuts_and_compaction_on_embedded_storage()
 {
    run_history(
        embedded().await,
        &[Fault::CutWatch, Fault::CompactPastCache, Fault::CutWatch],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_exactly_their_history_across_etcd_restarts_watch_cuts_and_compaction() {
    run_history(
        on_etcd(Backend::Etcd(EtcdServer::start().await)).await,
        &[Fault::CutWatch, Fault::RestartEtcd, Fault::CompactPastCache],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_exactly_their_history_on_three_etcd_members_losing_leader_and_follower() {
    run_history(
        on_etcd(Backend::Cluster(EtcdCluster::start(3).await)).await,
        &[Fault::KillLeader, Fault::CutWatch, Fault::KillFollower],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_watches_added_and_cancelled_at_random_receive_exactly_their_history_on_embedded_storage()
 {
    run_history_via(
        embedded().await,
        &[Fault::CutWatch, Fault::CompactPastCache],
        Via::Multiplexed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_watches_added_and_cancelled_at_random_receive_exactly_their_history_across_etcd_restarts()
 {
    run_history_via(
        on_etcd(Backend::Etcd(EtcdServer::start().await)).await,
        &[Fault::CutWatch, Fault::RestartEtcd, Fault::CompactPastCache],
        Via::Multiplexed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_watches_added_and_cancelled_at_random_receive_exactly_their_history_on_three_etcd_members_losing_their_leader()
 {
    run_history_via(
        on_etcd(Backend::Cluster(EtcdCluster::start(3).await)).await,
        &[Fault::KillLeader],
        Via::Multiplexed,
    )
    .await;
}
