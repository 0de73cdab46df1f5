//! Randomized history: writers create, relabel, bind and delete pods across
//! namespaces while watchers start at random resource versions (or from the
//! current state) with random label, field and namespace selectors. Every
//! watcher must receive exactly the committed history that matches its
//! selector — nothing missing, duplicated or out of order — as a model
//! computed from the writers' acknowledged writes says. Runs on both
//! storage backends. The seed is printed; set SKIFF_TEST_SEED to replay one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff::Resource;
use skiff::api::core::v1::{
    BindPodRequest, Container, Namespace, Pod, PodSpec, pod_service_client::PodServiceClient,
};
use skiff::api::meta::v1::{EventType, ObjectMeta};
use skiff::client::{ResourceClient, Transport};
use skiff::params::{DeleteParams, WatchParams};
use skiff::selector::{FieldSelector, LabelSelector};
use skiff_apiserver::ServerConfig;
use skiff_apiserver::store::INITIAL_EVENTS_END;
use skiff_apiserver::testing::TestServer;
use tokio_stream::StreamExt;

const NAMESPACES: &[&str] = &["default", "ns-a", "ns-b"];
const WRITERS: usize = 4;
const OPS_PER_WRITER: usize = 120;
const WATCHERS: usize = 16;

/// One acknowledged write: the revision and the object after it (None: deleted).
#[derive(Debug, Clone)]
struct Ack {
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
fn expected_after(history: &[Ack], start: i64, sel: &Selector) -> Vec<Seen> {
    let mut state: BTreeMap<String, Pod> = BTreeMap::new();
    let mut out = Vec::new();
    for ack in history {
        let prev = match &ack.after {
            Some(p) => state.insert(ack.key.clone(), p.clone()),
            None => state.remove(&ack.key),
        };
        if ack.revision <= start {
            continue;
        }
        let prev_match = prev.as_ref().is_some_and(|p| sel.matches(p));
        let cur_match = ack.after.as_ref().is_some_and(|p| sel.matches(p));
        let at = |p: &Pod| {
            let mut p = p.clone();
            p.meta_mut().resource_version = ack.revision.to_string();
            p
        };
        match (&ack.after, cur_match, prev_match) {
            (Some(cur), true, true) => out.push(seen_of(EventType::Modified, cur)),
            (Some(cur), true, false) => out.push(seen_of(EventType::Added, cur)),
            (_, false, true) => out.push(seen_of(EventType::Deleted, &at(prev.as_ref().unwrap()))),
            _ => {}
        }
    }
    out
}

/// The objects matching `sel` at revision `at`, as ADDED events in key order.
fn state_at(history: &[Ack], at: i64, sel: &Selector) -> Vec<Seen> {
    let mut state: BTreeMap<String, Pod> = BTreeMap::new();
    for ack in history.iter().take_while(|a| a.revision <= at) {
        match &ack.after {
            Some(p) => state.insert(ack.key.clone(), p.clone()),
            None => state.remove(&ack.key),
        };
    }
    state
        .values()
        .filter(|p| sel.matches(p))
        .map(|p| seen_of(EventType::Added, p))
        .collect()
}

async fn write(t: Transport, seed: u64, acks: Arc<Mutex<Vec<Ack>>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pods = PodServiceClient::new(t.clone());
    for _ in 0..OPS_PER_WRITER {
        let ns = NAMESPACES[rng.random_range(0..NAMESPACES.len())];
        let name = format!("p{}", rng.random_range(0..10));
        let app = ["a", "b", "c"][rng.random_range(0..3)];
        let tier = ["x", "y"][rng.random_range(0..2)];
        let key = format!("{ns}/{name}");
        // (revision, object after the write or None when deleted)
        let ack: Option<(i64, Option<Pod>)> = match rng.random_range(0..10) {
            0..=3 => Pod::create_in(t.clone(), pod(ns, &name, app, tier))
                .await
                .ok()
                .map(|p| (p.resource_version() as i64, Some(p))),
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
                        Pod::update_in(t.clone(), p)
                            .await
                            .ok()
                            // An update that changes nothing writes nothing.
                            .filter(|p| p.resource_version() != before)
                            .map(|p| (p.resource_version() as i64, Some(p)))
                    }
                    Err(_) => None,
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
                .ok()
                .and_then(|r| r.into_inner().pod)
                .map(|p| (p.resource_version() as i64, Some(p))),
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
            .ok()
            // The response is the last state, stamped with the deletion's revision.
            .map(|deleted| (deleted.resource_version() as i64, None)),
        };
        if let Some((revision, after)) = ack {
            acks.lock().unwrap().push(Ack {
                revision,
                key,
                after,
            });
        }
    }
}

struct Watcher {
    selector: Selector,
    start: Option<i64>,
    received: Arc<Mutex<Vec<Seen>>>,
    initial_end: Arc<Mutex<Option<i64>>>,
}

async fn run_history(server: &TestServer) {
    let seed: u64 = std::env::var("SKIFF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("watch history seed: {seed} (replay with SKIFF_TEST_SEED={seed})");
    let t = server.transport().await;
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
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Each writer has its own connection.
        let t = server.transport().await;
        writers.push(tokio::spawn(write(
            t,
            seed.wrapping_add(w as u64 + 1),
            acks.clone(),
        )));
    }

    // Start watchers while the writers run.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut watchers = Vec::new();
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
            Some(if acks.is_empty() {
                0
            } else {
                acks[rng.random_range(0..acks.len())].revision.max(1)
            })
        };
        let params = WatchParams {
            namespace: selector.namespace.clone(),
            label_selector: selector.labels.clone(),
            field_selector: selector.fields.clone(),
            resource_version: start.map(|s| s.to_string()).unwrap_or_default(),
            send_initial_events: start.is_none(),
            ..Default::default()
        };
        let params = if start == Some(0) {
            WatchParams {
                resource_version: String::new(),
                send_initial_events: true,
                ..params
            }
        } else {
            params
        };
        let start = if start == Some(0) { None } else { start };
        let received = Arc::new(Mutex::new(Vec::new()));
        let initial_end = Arc::new(Mutex::new(None));
        let mut stream = Pod::watch_in(t.clone(), params).await.unwrap();
        let (r, e) = (received.clone(), initial_end.clone());
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let ev = ev.expect("watch stream stays healthy");
                let obj = ev.object.clone().unwrap();
                if ev.event_type() == EventType::Bookmark {
                    if obj.meta().annotations.contains_key(INITIAL_EVENTS_END) {
                        *e.lock().unwrap() = Some(obj.resource_version() as i64);
                    }
                    continue;
                }
                r.lock().unwrap().push(seen_of(ev.event_type(), &obj));
            }
        });
        watchers.push(Watcher {
            selector,
            start,
            received,
            initial_end,
        });
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut history = acks.lock().unwrap().clone();
    history.sort_by_key(|a| a.revision);
    // An update that was a no-op against a newer state returns that state:
    // the same write acknowledged twice.
    history.dedup_by_key(|a| a.revision);
    assert!(
        history.len() > WRITERS * OPS_PER_WRITER / 3,
        "enough writes succeeded: {}",
        history.len()
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (i, w) in watchers.iter().enumerate() {
        let start = match w.start {
            Some(s) => s,
            None => loop {
                if let Some(r) = *w.initial_end.lock().unwrap() {
                    break r;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "watcher {i} got its initial state"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            },
        };
        let mut expected = if w.start.is_none() {
            state_at(&history, start, &w.selector)
        } else {
            Vec::new()
        };
        expected.extend(expected_after(&history, start, &w.selector));
        loop {
            if w.received.lock().unwrap().len() >= expected.len() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let received = w.received.lock().unwrap().clone();
        if received != expected {
            let first = received
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(received.len().min(expected.len()));
            panic!(
                "seed {seed}: watcher {i} {:?} from {:?} (initial end {start}) got {} events, expected {}; \
                 first difference at {first}: got {:?}, expected {:?}",
                w.selector,
                w.start,
                received.len(),
                expected.len(),
                received.get(first),
                expected.get(first),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_exactly_their_history_on_embedded_storage() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded_with(dir.path(), ServerConfig::default()).await;
    run_history(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_exactly_their_history_on_etcd() {
    let (server, _etcd) = TestServer::on_etcd(ServerConfig::default()).await;
    run_history(&server).await;
}
