//! A store of one kind kept by a watcher: read concurrently (objects are
//! `Arc`s), with indexes and a readiness gate; and [`reflector`], the stream
//! stage that keeps it while passing events through.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use tokio::sync::watch;

use super::watcher::Event;
use crate::Resource;
use crate::client::Result;

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `obj`.
    pub fn of<K: Resource>(obj: &K) -> Self {
        Self {
            namespace: obj.meta().namespace.clone(),
            name: obj.meta().name.clone(),
        }
    }

    /// A key from parts.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// What a store change means to those who react to it.
#[derive(Debug)]
pub enum Change<K> {
    /// An object was added or changed (as now stored).
    Applied(Arc<K>),
    /// An object was deleted (its last state).
    Deleted(Arc<K>),
    /// A whole new state was swapped in: everything may have changed.
    Resynced,
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(o) => Change::Applied(o.clone()),
            Change::Deleted(o) => Change::Deleted(o.clone()),
            Change::Resynced => Change::Resynced,
        }
    }
}

/// A function giving the index values of an object.
pub type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// Name of the built-in index by namespace.
pub const BY_NAMESPACE: &str = "namespace";
/// Name of the built-in index by label (values are "key=value").
pub const BY_LABEL: &str = "label";

struct State<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    indexers: Vec<(String, IndexFn<K>)>,
    indexes: HashMap<String, HashMap<String, HashSet<ObjectKey>>>,
    /// The initial state being received, swapped in at `InitDone`.
    incoming: Option<HashMap<ObjectKey, Arc<K>>>,
}

impl<K: Resource> State<K> {
    fn index_values(&self, obj: &K) -> Vec<(usize, Vec<String>)> {
        self.indexers
            .iter()
            .enumerate()
            .map(|(i, (_, f))| (i, f(obj)))
            .collect()
    }

    fn unindex(&mut self, key: &ObjectKey, obj: &K) {
        for (i, values) in self.index_values(obj) {
            let name = &self.indexers[i].0;
            if let Some(index) = self.indexes.get_mut(name) {
                for v in values {
                    if let Some(set) = index.get_mut(&v) {
                        set.remove(key);
                        if set.is_empty() {
                            index.remove(&v);
                        }
                    }
                }
            }
        }
    }

    fn index(&mut self, key: &ObjectKey, obj: &K) {
        for (i, values) in self.index_values(obj) {
            let name = self.indexers[i].0.clone();
            let index = self.indexes.entry(name).or_default();
            for v in values {
                index.entry(v).or_default().insert(key.clone());
            }
        }
    }

    fn put(&mut self, obj: Arc<K>) {
        let key = ObjectKey::of(&*obj);
        if let Some(old) = self.objects.insert(key.clone(), obj.clone()) {
            self.unindex(&key, &old);
        }
        self.index(&key, &obj);
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some(old) = self.objects.remove(key) {
            self.unindex(key, &old);
        }
    }

    fn replace(&mut self, objects: HashMap<ObjectKey, Arc<K>>) {
        self.objects = objects;
        self.indexes.clear();
        let all: Vec<(ObjectKey, Arc<K>)> = self
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, o) in all {
            self.index(&k, &o);
        }
    }
}

/// The reading side of a store; cheap to clone.
pub struct Store<K> {
    state: Arc<RwLock<State<K>>>,
    ready: watch::Receiver<bool>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            ready: self.ready.clone(),
        }
    }
}

/// The writing side of a store (one per store, fed by a reflector).
pub struct Writer<K> {
    state: Arc<RwLock<State<K>>>,
    ready: watch::Sender<bool>,
}

impl<K: Resource> Writer<K> {
    /// A store with the built-in indexes (by namespace, by label).
    pub fn new() -> Self {
        let (ready, _) = watch::channel(false);
        let mut w = Self {
            state: Arc::new(RwLock::new(State {
                objects: HashMap::new(),
                indexers: Vec::new(),
                indexes: HashMap::new(),
                incoming: None,
            })),
            ready,
        };
        w.add_index(BY_NAMESPACE, |o: &K| vec![o.meta().namespace.clone()]);
        w.add_index(BY_LABEL, |o: &K| {
            o.meta()
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        });
        w
    }

    /// Adds an index (e.g. pods by node name); existing objects are indexed.
    pub fn add_index(&mut self, name: &str, f: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) {
        add_index(&self.state, name, Arc::new(f));
    }

    /// The reading side.
    pub fn store(&self) -> Store<K> {
        Store {
            state: self.state.clone(),
            ready: self.ready.subscribe(),
        }
    }

    /// Applies one watcher event; says what changed for readers.
    pub fn apply(&self, event: &Event<K>) -> Option<Change<K>> {
        let mut s = self.state.write().expect("store lock");
        match event {
            Event::Init => {
                s.incoming = Some(HashMap::new());
                None
            }
            Event::InitApply(o) => {
                let key = ObjectKey::of(o);
                match s.incoming.as_mut() {
                    Some(incoming) => {
                        incoming.insert(key, Arc::new(o.clone()));
                    }
                    None => s.put(Arc::new(o.clone())),
                }
                None
            }
            Event::InitDone => {
                if let Some(incoming) = s.incoming.take() {
                    s.replace(incoming);
                }
                drop(s);
                self.ready.send_replace(true);
                Some(Change::Resynced)
            }
            Event::Apply(o) => {
                let o = Arc::new(o.clone());
                s.put(o.clone());
                Some(Change::Applied(o))
            }
            Event::Delete(o) => {
                s.remove(&ObjectKey::of(o));
                Some(Change::Deleted(Arc::new(o.clone())))
            }
        }
    }
}

fn add_index<K: Resource>(state: &RwLock<State<K>>, name: &str, f: IndexFn<K>) {
    let mut s = state.write().expect("store lock");
    if s.indexers.iter().any(|(n, _)| n == name) {
        return;
    }
    s.indexers.push((name.to_owned(), f));
    let objects = std::mem::take(&mut s.objects);
    s.replace(objects);
}

impl<K: Resource> Default for Writer<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Resource> Store<K> {
    /// Adds an index to a running store (a no-op if one of that name exists).
    pub fn add_index(&self, name: &str, f: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) {
        add_index(&self.state, name, Arc::new(f));
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.state
            .read()
            .expect("store lock")
            .objects
            .get(key)
            .cloned()
    }

    /// Every object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.state
            .read()
            .expect("store lock")
            .objects
            .values()
            .cloned()
            .collect()
    }

    /// Every key.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.state
            .read()
            .expect("store lock")
            .objects
            .keys()
            .cloned()
            .collect()
    }

    /// Objects whose index `index` has value `value`.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let s = self.state.read().expect("store lock");
        let Some(keys) = s.indexes.get(index).and_then(|i| i.get(value)) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| s.objects.get(k).cloned())
            .collect()
    }

    /// Objects in a namespace.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.by_index(BY_NAMESPACE, namespace)
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.state.read().expect("store lock").objects.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a full initial state has been received.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until a full initial state has been received.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// Keeps `writer`'s store from `stream`, passing every item through.
pub fn reflector<K: Resource>(
    writer: Writer<K>,
    stream: impl Stream<Item = Result<Event<K>>> + Send,
) -> impl Stream<Item = Result<Event<K>>> + Send {
    stream.inspect(move |item| {
        if let Ok(event) = item {
            let _ = writer.apply(event);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::core::v1::{Pod, PodSpec};
    use crate::api::meta::v1::ObjectMeta;

    fn pod(ns: &str, name: &str, node: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: ns.into(),
                labels: [("app".to_string(), name.to_string())].into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: node.into(),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[tokio::test]
    async fn the_store_swaps_whole_initial_states_and_keeps_indexes() {
        let mut w = Writer::<Pod>::new();
        w.add_index("node", |p: &Pod| {
            vec![
                p.spec
                    .as_ref()
                    .map(|s| s.node_name.clone())
                    .unwrap_or_default(),
            ]
        });
        let store = w.store();
        let events = vec![
            Event::Init,
            Event::InitApply(pod("a", "p1", "n1")),
            Event::InitApply(pod("b", "p2", "n1")),
            Event::InitDone,
            Event::Apply(pod("a", "p3", "n2")),
            Event::Apply(pod("b", "p2", "n2")),
            Event::Delete(pod("a", "p1", "n1")),
        ];
        assert!(!store.is_ready());
        let out: Vec<_> = reflector(w, futures::stream::iter(events.clone().into_iter().map(Ok)))
            .collect()
            .await;
        let out: Vec<Event<Pod>> = out.into_iter().map(|e| e.unwrap()).collect();
        assert_eq!(out, events, "events pass through");
        assert!(store.is_ready());
        store.wait_until_ready().await;
        let mut names: Vec<_> = store.list().iter().map(|p| p.meta().name.clone()).collect();
        names.sort();
        assert_eq!(names, ["p2", "p3"]);
        assert_eq!(store.by_index("node", "n2").len(), 2);
        assert!(
            store.by_index("node", "n1").is_empty(),
            "moved and deleted objects leave the index"
        );
        assert_eq!(store.in_namespace("b").len(), 1);
        assert_eq!(store.by_index(BY_LABEL, "app=p3").len(), 1);
        assert!(store.get(&ObjectKey::new("a", "p1")).is_none());
    }

    #[tokio::test]
    async fn a_relist_replaces_state_only_when_complete() {
        let w = Writer::<Pod>::new();
        let store = w.store();
        w.apply(&Event::Init);
        w.apply(&Event::InitApply(pod("a", "old", "")));
        w.apply(&Event::InitDone);
        w.apply(&Event::Init);
        w.apply(&Event::InitApply(pod("a", "new", "")));
        // Until InitDone, readers see the old state.
        assert!(store.get(&ObjectKey::new("a", "old")).is_some());
        w.apply(&Event::InitDone);
        assert!(store.get(&ObjectKey::new("a", "old")).is_none());
        assert!(store.get(&ObjectKey::new("a", "new")).is_some());
    }
}
