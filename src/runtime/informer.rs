//! Shared informers: one watch per (kind, namespace, selectors) in a
//! process, however many controllers read it. Each informer keeps a
//! [`Store`] and broadcasts what changed.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use tokio::sync::broadcast;

use super::store::{Change, Store, Writer};
use super::watcher::{WatcherConfig, watcher};
use crate::Resource;
use crate::client::{Client, Multiplexer, ResourceClient};

/// Capacity of each informer's change broadcast; a subscriber that falls
/// further behind is told to resync.
const CHANGES_CAPACITY: usize = 4096;

/// A running informer: its store and its changes.
pub struct Informer<K> {
    store: Store<K>,
    changes: broadcast::Sender<Change<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<K: ResourceClient> Informer<K> {
    /// Starts watching `K` in `namespace` (empty: all) with `config`; runs
    /// until the returned task is aborted.
    pub fn start(
        client: &Client,
        namespace: &str,
        config: WatcherConfig,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::from_stream(watcher(client.api::<K>(namespace), config))
    }
}

impl<K: Resource> Informer<K> {
    /// An informer fed by any stream of watcher events (tests feed plain streams).
    pub fn from_stream(
        events: impl futures::Stream<Item = crate::client::Result<super::watcher::Event<K>>>
        + Send
        + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let writer = Writer::<K>::new();
        let store = writer.store();
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let tx = changes.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(item) = events.next().await {
                match item {
                    Ok(event) => {
                        if let Some(change) = writer.apply(&event) {
                            // No subscribers yet is fine.
                            let _ = tx.send(change);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(kind = K::INFO.kind, error = %e, "watch failed; retrying")
                    }
                }
            }
        });
        (Self { store, changes }, task)
    }

    /// The informer's store.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Changes from now on. A receiver that lags gets `RecvError::Lagged`
    /// and should treat it as a resync.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct InformerKey {
    kind: &'static str,
    namespace: String,
    labels: String,
    fields: String,
}

/// Hands out shared informers: the same (kind, namespace, selectors) always
/// gets the same informer, and all of them watch over one multiplexed
/// stream.
pub struct InformerFactory {
    client: Client,
    multiplexer: Multiplexer,
    informers: Mutex<HashMap<InformerKey, Box<dyn Any + Send + Sync>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl InformerFactory {
    /// A factory making informers through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            multiplexer: Multiplexer::new(client.transport()),
            client,
            informers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The client informers use.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The informer of `K` in `namespace` (empty: all) with `config`'s
    /// selectors, started on first use.
    pub fn informer<K: ResourceClient>(
        &self,
        namespace: &str,
        config: WatcherConfig,
    ) -> Informer<K> {
        let key = InformerKey {
            kind: K::INFO.message_name,
            namespace: namespace.to_owned(),
            labels: config.label_selector.clone(),
            fields: config.field_selector.clone(),
        };
        let mut informers = self.informers.lock().expect("informer lock");
        if let Some(existing) = informers
            .get(&key)
            .and_then(|b| b.downcast_ref::<Informer<K>>())
        {
            return existing.clone();
        }
        let config = WatcherConfig {
            multiplexer: config
                .multiplexer
                .or_else(|| Some(self.multiplexer.clone())),
            ..config
        };
        let (informer, task) = Informer::<K>::start(&self.client, namespace, config);
        informers.insert(key, Box::new(informer.clone()));
        self.tasks.lock().expect("task lock").push(task);
        informer
    }

    /// The informer of every `K` (all namespaces, no selectors).
    pub fn all<K: ResourceClient>(&self) -> Informer<K> {
        self.informer("", WatcherConfig::default())
    }

    /// The stream every informer of this factory watches over.
    pub fn multiplexer(&self) -> &Multiplexer {
        &self.multiplexer
    }

    /// Number of distinct informers (watches) running.
    pub fn len(&self) -> usize {
        self.informers.lock().expect("informer lock").len()
    }

    /// Whether no informer runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for InformerFactory {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("task lock").drain(..) {
            t.abort();
        }
    }
}
