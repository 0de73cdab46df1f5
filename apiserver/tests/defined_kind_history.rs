//! Randomized history on a kind defined at run time: writers create,
//! relabel, recolour and delete widgets in two namespaces while watchers
//! with random namespace, label and field selectors (the field declared
//! selectable by the definition) start at the version they listed and
//! reconnect from the last version they saw each time their stream ends.
//! Every watcher must receive exactly the committed history that matches
//! its selector — nothing missing, duplicated or out of order. The history
//! is read off storage by a watch of its own. Both backends; the seed is
//! printed, SKIFF_TEST_SEED replays one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use skiff::api::meta::v1::EventType;
use skiff::client::dynamic::{DynamicClient, DynamicKind};
use skiff::params::{DeleteParams, ListParams, WatchParams};
use skiff_apiserver::storage::{EventKind, Storage};
use skiff_apiserver::testing::{EtcdServer, TestServer};

const DEFINITION: &str = include_str!("../../examples/widgets/widgets.yaml");
const PREFIX: &str = "/registry/widgets.acme.example.com/";
const NAMESPACES: [&str; 2] = ["default", "kube-public"];

/// What selectors read of a widget.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    tier: String,
    color: String,
}

/// One committed change, read off storage.
#[derive(Debug, Clone)]
struct Change {
    revision: i64,
    key: String,
    now: Option<State>,
}

/// One event a watcher received: type, "namespace/name", version.
type Seen = (EventType, String, i64);

#[derive(Debug, Clone)]
struct Selector {
    namespace: String,
    tier: Option<&'static str>,
    color: Option<&'static str>,
}

impl Selector {
    fn matches(&self, key: &str, s: &State) -> bool {
        (self.namespace.is_empty() || key.starts_with(&format!("{}/", self.namespace)))
            && self.tier.is_none_or(|t| s.tier == t)
            && self.color.is_none_or(|c| s.color == c)
    }
}

fn state_of(v: &Value) -> State {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    State {
        tier: s("/metadata/labels/tier"),
        color: s("/spec/color"),
    }
}

/// "namespace/name" of a storage key.
fn key_of(storage_key: &str) -> String {
    storage_key.trim_start_matches(PREFIX).to_owned()
}

/// What a watcher with `sel` must see after `start`.
fn expected(history: &[Change], start: i64, sel: &Selector) -> Vec<Seen> {
    let mut state: BTreeMap<String, State> = BTreeMap::new();
    let mut out = Vec::new();
    for c in history {
        let before = state
            .get(&c.key)
            .filter(|s| sel.matches(&c.key, s))
            .is_some();
        let after = c.now.as_ref().is_some_and(|s| sel.matches(&c.key, s));
        match &c.now {
            Some(s) => state.insert(c.key.clone(), s.clone()),
            None => state.remove(&c.key),
        };
        if c.revision <= start {
            continue;
        }
        let t = match (before, after) {
            (false, true) => EventType::Added,
            (true, true) => EventType::Modified,
            (true, false) => EventType::Deleted,
            (false, false) => continue,
        };
        out.push((t, c.key.clone(), c.revision));
    }
    out
}

async fn define(client: &DynamicClient) -> DynamicKind {
    let docs = skiff::manifest::parse_kind(DEFINITION, "widgets.yaml", "ResourceDefinition");
    let def = docs
        .into_iter()
        .next()
        .expect("the example holds a definition");
    client
        .create(&def.kind, def.object)
        .await
        .expect("define widgets");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let _ = client.learn_defined_kinds().await;
        if let Some(kind) = DynamicKind::find("widgets.acme.example.com")
            && client.list(&kind, &ListParams::default()).await.is_ok()
        {
            return kind;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "widgets were never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn widget(
    kind: &DynamicKind,
    ns: &str,
    name: &str,
    tier: &str,
    color: &str,
    rv: &str,
) -> prost_reflect::DynamicMessage {
    let mut meta = json!({"name": name, "namespace": ns, "labels": {"tier": tier}});
    if !rv.is_empty() {
        meta["resourceVersion"] = json!(rv);
    }
    skiff::manifest::to_message(
        &kind.message,
        json!({"metadata": meta, "spec": {"size": 1, "color": color}}),
        "test",
    )
    .expect("a widget")
}

async fn write(client: DynamicClient, kind: DynamicKind, seed: u64, ops: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..ops {
        let ns = NAMESPACES[rng.random_range(0..NAMESPACES.len())];
        let name = format!("w{}", rng.random_range(0..8));
        let tier = ["gold", "silver"][rng.random_range(0..2)];
        let color = ["red", "blue"][rng.random_range(0..2)];
        match rng.random_range(0..4) {
            0 => {
                let _ = client
                    .create(&kind, widget(&kind, ns, &name, tier, color, ""))
                    .await;
            }
            1 | 2 => {
                if let Ok(current) = client.get(&kind, ns, &name).await {
                    let v = skiff::manifest::message_value(&current);
                    let rv = v
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let _ = client
                        .update(&kind, widget(&kind, ns, &name, tier, color, &rv))
                        .await;
                }
            }
            _ => {
                let _ = client
                    .delete(
                        &kind,
                        &DeleteParams {
                            namespace: ns.into(),
                            name,
                            ..Default::default()
                        },
                    )
                    .await;
            }
        }
    }
}

/// Watches from the listed version until `done` says the history ended at
/// a version this watcher has had time to reach; returns its start and events.
async fn watch(
    client: DynamicClient,
    kind: DynamicKind,
    sel: Selector,
    seed: u64,
    done: tokio::sync::watch::Receiver<Option<i64>>,
) -> (i64, Vec<Seen>) {
    let mut rng = StdRng::seed_from_u64(seed);
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
    let labels = sel.tier.map(|t| format!("tier={t}")).unwrap_or_default();
    let fields = sel
        .color
        .map(|c| format!("spec.color={c}"))
        .unwrap_or_default();
    let (_, list_meta) = client
        .list(
            &kind,
            &ListParams {
                namespace: sel.namespace.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let start: i64 = list_meta.resource_version.parse().expect("a version");
    let mut last = start;
    let mut seen = Vec::new();
    loop {
        let finished_at = *done.borrow();
        let params = WatchParams {
            namespace: sel.namespace.clone(),
            label_selector: labels.clone(),
            field_selector: fields.clone(),
            resource_version: last.to_string(),
            timeout_seconds: rng.random_range(1..3),
            ..Default::default()
        };
        let mut stream = client.watch(&kind, &params).await.expect("watch");
        while let Some(item) = stream.next().await {
            let (t, obj) = item.expect("a watch event");
            let v = skiff::manifest::message_value(&obj);
            let rv: i64 = v
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .expect("every event has a version");
            if t == EventType::Bookmark {
                last = rv;
                continue;
            }
            let s = |p: &str| {
                v.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            seen.push((
                t,
                format!("{}/{}", s("/metadata/namespace"), s("/metadata/name")),
                rv,
            ));
            last = rv;
        }
        // A whole watch began after the history ended: it has all of it.
        if finished_at.is_some() {
            return (start, seen);
        }
    }
}

async fn run(server: &TestServer, storage: Arc<dyn Storage>) {
    let seed = std::env::var("SKIFF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("SKIFF_TEST_SEED={seed}");
    let client = DynamicClient::new(server.transport().await);
    let kind = define(&client).await;
    let from = storage.current_revision().await.expect("revision");
    // The truth: every change to widgets, off storage.
    let mut truth_stream = storage
        .watch(PREFIX, from + 1)
        .await
        .expect("storage watch");
    let mut rng = StdRng::seed_from_u64(seed);
    let (done_tx, done_rx) = tokio::sync::watch::channel(None);
    let mut watchers = Vec::new();
    for i in 0..6 {
        let sel = Selector {
            namespace: ["", "default"][rng.random_range(0..2)].to_owned(),
            tier: [None, Some("gold")][rng.random_range(0..2)],
            color: [None, Some("red")][rng.random_range(0..2)],
        };
        let task = tokio::spawn(watch(
            client.clone(),
            kind.clone(),
            sel.clone(),
            seed.wrapping_add(100 + i),
            done_rx.clone(),
        ));
        watchers.push((sel, task));
    }
    let writers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(write(
                client.clone(),
                kind.clone(),
                seed.wrapping_add(i),
                120,
            ))
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let end = storage.current_revision().await.expect("revision");
    let mut history = Vec::new();
    let mut reached = from;
    while reached < end {
        let batch = tokio::time::timeout(Duration::from_secs(20), truth_stream.next())
            .await
            .expect("the storage watch reaches the end")
            .expect("the storage watch goes on")
            .expect("storage events");
        for e in batch.events {
            reached = reached.max(e.revision());
            if !e.kv.key.starts_with(PREFIX) {
                continue;
            }
            let now = match e.kind {
                EventKind::Delete => None,
                EventKind::Put => {
                    let msg = prost_reflect::DynamicMessage::decode(
                        kind.message.clone(),
                        &e.kv.value[..],
                    )
                    .expect("a stored widget decodes");
                    Some(state_of(&skiff::manifest::message_value(&msg)))
                }
            };
            history.push(Change {
                revision: e.revision(),
                key: key_of(&e.kv.key),
                now,
            });
        }
        reached = reached.max(batch.progress);
    }
    assert!(
        history.len() > 50,
        "too little happened to tell: {}",
        history.len()
    );
    done_tx.send_replace(Some(end));
    for (sel, task) in watchers {
        let (start, seen) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the watcher finishes")
            .expect("watcher task");
        let want = expected(&history, start, &sel);
        assert_eq!(
            seen, want,
            "watcher {sel:?} from {start} (seed {seed}) did not see exactly its history"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_a_defined_kind_receive_exactly_their_history_on_embedded_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage: Arc<dyn Storage> = Arc::new(
        skiff_apiserver::storage::embedded::EmbeddedStorage::open(dir.path()).expect("open"),
    );
    let server = TestServer::start(storage.clone()).await;
    run(&server, storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_a_defined_kind_receive_exactly_their_history_on_etcd() {
    let etcd = EtcdServer::start().await;
    let storage: Arc<dyn Storage> = Arc::new(
        skiff_apiserver::storage::etcd::EtcdStorage::connect(
            std::slice::from_ref(&etcd.endpoint),
            "/skiff",
        )
        .await
        .expect("connect"),
    );
    let server = TestServer::start(storage.clone()).await;
    run(&server, storage).await;
}
