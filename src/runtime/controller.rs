//! The controller runtime: changes of a primary kind, and of other kinds
//! mapped to primary keys (owned objects through their controller owner
//! reference, or any function), feed a [`WorkQueue`]; N workers reconcile
//! keys, never one key twice at once. A reconcile returns "done" or
//! "requeue after"; an error retries with backoff.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::informer::Informer;
use super::queue::WorkQueue;
use super::store::{Change, ObjectKey, Store};
use super::watcher::Backoff;
use crate::{KindInfo, Resource};

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes.
    Done,
    /// Look again after this long (e.g. to check a timeout).
    RequeueAfter(Duration),
}

/// The key to reconcile and the object as the store has it (`None`: deleted).
#[derive(Debug, Clone)]
pub struct Request<K> {
    /// Namespace and name.
    pub key: ObjectKey,
    /// The object, if it still exists.
    pub object: Option<Arc<K>>,
}

type Starter = Box<dyn FnOnce(WorkQueue<ObjectKey>) -> tokio::task::JoinHandle<()> + Send>;

/// A source of keys to reconcile, other than the primary kind itself. Its
/// store counts as one the controller reads: no reconcile runs before it
/// has synced.
pub struct Trigger {
    start: Starter,
    synced: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Trigger {
    /// Changes of `informer`'s objects enqueue the keys `map` gives.
    pub fn mapped<C: Resource>(
        informer: &Informer<C>,
        map: impl Fn(&C) -> Vec<ObjectKey> + Send + Sync + 'static,
    ) -> Self {
        let informer = informer.clone();
        let synced = {
            let store = informer.store();
            Box::pin(async move { store.wait_until_ready().await })
        };
        Self {
            synced,
            start: Box::new(move |queue| {
                let mut changes = informer.subscribe();
                let store = informer.store();
                tokio::spawn(async move {
                    // Everything known so far counts as a change.
                    enqueue_all(&store, &map, &queue);
                    loop {
                        match changes.recv().await {
                            Ok(Change::Applied(o) | Change::Deleted(o)) => {
                                for k in map(&o) {
                                    queue.add(k);
                                }
                            }
                            Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => {
                                enqueue_all(&store, &map, &queue)
                            }
                            Err(RecvError::Closed) => return,
                        }
                    }
                })
            }),
        }
    }

    /// Every change of `signal` enqueues every object of `informer` (e.g. a
    /// test clock moved by hand: every schedule is looked at again).
    pub fn on_signal<C: Resource>(
        informer: &Informer<C>,
        mut signal: tokio::sync::watch::Receiver<()>,
    ) -> Self {
        let store = informer.store();
        let synced = {
            let store = store.clone();
            Box::pin(async move { store.wait_until_ready().await })
        };
        Self {
            synced,
            start: Box::new(move |queue| {
                tokio::spawn(async move {
                    while signal.changed().await.is_ok() {
                        for o in store.list() {
                            queue.add(ObjectKey::of(&*o));
                        }
                    }
                })
            }),
        }
    }

    /// Changes of objects controlled by an owner of kind `owner` (through
    /// their controller owner reference) enqueue that owner.
    pub fn owned<C: Resource>(informer: &Informer<C>, owner: &'static KindInfo) -> Self {
        Self::mapped(informer, move |o: &C| {
            controller_of(o, owner).into_iter().collect()
        })
    }
}

/// The key of `obj`'s controller if it is of kind `owner`.
pub fn controller_of<C: Resource>(obj: &C, owner: &KindInfo) -> Option<ObjectKey> {
    obj.meta()
        .owner_references
        .iter()
        .find(|r| {
            r.controller == Some(true) && r.kind == owner.kind && r.api_version == owner.api_version
        })
        .map(|r| ObjectKey::new(&obj.meta().namespace, &r.name))
}

fn enqueue_all<C: Resource>(
    store: &Store<C>,
    map: &impl Fn(&C) -> Vec<ObjectKey>,
    queue: &WorkQueue<ObjectKey>,
) {
    for o in store.list() {
        for k in map(&o) {
            queue.add(k);
        }
    }
}

/// An error a reconcile may fail with: shown in the log, and perhaps
/// saying how long to wait before trying again.
pub trait ReconcileError: Display {
    /// How long the server asked to wait (`google.rpc.RetryInfo`), if it did;
    /// the retry comes no sooner.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl ReconcileError for crate::client::Error {
    fn retry_after(&self) -> Option<Duration> {
        crate::client::Error::retry_after(self)
    }
}
impl ReconcileError for std::convert::Infallible {}
impl ReconcileError for String {}
impl ReconcileError for &str {}

/// How a controller runs.
pub struct ControllerConfig<K> {
    /// The kind reconciled.
    pub primary: Informer<K>,
    /// Other sources of keys.
    pub triggers: Vec<Trigger>,
    /// Concurrent reconciles (of different keys).
    pub workers: usize,
    /// Retry backoff after reconcile errors.
    pub backoff: Backoff,
}

impl<K> ControllerConfig<K> {
    /// A controller of `primary` with 4 workers and no other triggers.
    pub fn new(primary: Informer<K>) -> Self {
        Self {
            primary,
            triggers: Vec::new(),
            workers: 4,
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_secs(60),
            },
        }
    }
}

/// A controller: triggers, a queue and workers around a reconcile function.
pub struct Controller<K> {
    config: ControllerConfig<K>,
    queue: WorkQueue<ObjectKey>,
}

impl<K: Resource> Controller<K> {
    /// A controller as `config` says.
    pub fn new(config: ControllerConfig<K>) -> Self {
        let queue = WorkQueue::named(K::INFO.plural, config.backoff);
        Self { config, queue }
    }

    /// The controller's queue (to enqueue keys from elsewhere).
    pub fn queue(&self) -> WorkQueue<ObjectKey> {
        self.queue.clone()
    }

    /// Reconciles until `shutdown` completes; in-flight reconciles finish
    /// first. The first reconcile waits until the primary store and every
    /// trigger's store have synced (Kubernetes' `WaitForCacheSync`), so no
    /// decision is taken on a partial view; `shutdown` is honoured meanwhile.
    pub async fn run<F, Fut, E>(self, reconcile: F, shutdown: impl Future<Output = ()>)
    where
        F: Fn(Request<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send,
        E: ReconcileError,
    {
        let Controller { config, queue } = self;
        let store = config.primary.store();
        let mut triggers = config.triggers;
        let mut shutdown = std::pin::pin!(shutdown);
        let synced = async {
            store.wait_until_ready().await;
            for t in &mut triggers {
                (&mut t.synced).await;
            }
        };
        tokio::select! {
            _ = synced => {}
            _ = &mut shutdown => {
                queue.shut_down();
                return;
            }
        }
        let mut tasks = Vec::new();
        let own = Trigger::mapped(&config.primary, |o: &K| vec![ObjectKey::of(o)]);
        tasks.push((own.start)(queue.clone()));
        for t in triggers {
            tasks.push((t.start)(queue.clone()));
        }
        let reconcile = Arc::new(reconcile);
        let mut workers = Vec::new();
        for _ in 0..config.workers.max(1) {
            let queue = queue.clone();
            let store = store.clone();
            let reconcile = reconcile.clone();
            workers.push(tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    let object = store.get(&key);
                    let result = reconcile(Request {
                        key: key.clone(),
                        object,
                    })
                    .await;
                    match result {
                        Ok(Action::Done) => queue.forget(&key),
                        Ok(Action::RequeueAfter(d)) => {
                            queue.forget(&key);
                            queue.add_after(key.clone(), d);
                        }
                        Err(e) => {
                            tracing::warn!(kind = K::INFO.kind, key = %key, error = %e, "reconcile failed; retrying");
                            let floor = e.retry_after().unwrap_or_default();
                            queue.add_rate_limited_at_least(key.clone(), floor);
                        }
                    }
                    queue.done(&key);
                }
            }));
        }
        shutdown.await;
        queue.shut_down();
        for w in workers {
            let _ = w.await;
        }
        for t in tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::{Notify, mpsc, oneshot};
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;
    use crate::api::apps::v1::ReplicaSet;
    use crate::api::core::v1::Pod;
    use crate::api::meta::v1::{ObjectMeta, OwnerReference};
    use crate::runtime::watcher::Event;

    fn meta(name: &str, version: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            namespace: "ns".into(),
            resource_version: version.into(),
            ..Default::default()
        })
    }

    fn pod(name: &str, version: &str) -> Pod {
        Pod {
            metadata: meta(name, version),
            ..Default::default()
        }
    }

    type Feed<K> = mpsc::UnboundedSender<crate::client::Result<Event<K>>>;

    fn informer<K: Resource>(initial: Vec<K>) -> (Informer<K>, Feed<K>) {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Ok(Event::Init)).unwrap();
        for o in initial {
            tx.send(Ok(Event::InitApply(o))).unwrap();
        }
        tx.send(Ok(Event::InitDone)).unwrap();
        let (informer, _task) = Informer::from_stream(UnboundedReceiverStream::new(rx));
        (informer, tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_reconcile_runs_before_every_trigger_store_has_synced() {
        let (pods, _pods_feed) = informer(vec![pod("a", "1")]);
        // The secondary kind's initial state has begun but not ended.
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Ok(Event::Init)).unwrap();
        let (replica_sets, _task) =
            Informer::<ReplicaSet>::from_stream(UnboundedReceiverStream::new(rx));
        let reconciled: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let secondary = replica_sets.store();
        let controller = Controller::new(ControllerConfig {
            triggers: vec![Trigger::mapped(&replica_sets, |_: &ReplicaSet| Vec::new())],
            ..ControllerConfig::new(pods)
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let r = reconciled.clone();
        let run = tokio::spawn(controller.run(
            move |req: Request<Pod>| {
                let (r, secondary) = (r.clone(), secondary.clone());
                async move {
                    r.lock()
                        .unwrap()
                        .push((req.key.name.clone(), secondary.is_ready()));
                    Ok::<_, std::convert::Infallible>(Action::Done)
                }
            },
            async {
                let _ = stopped.await;
            },
        ));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            reconciled.lock().unwrap().is_empty(),
            "nothing reconciled on a partial view"
        );
        tx.send(Ok(Event::InitDone)).unwrap();
        crate::testing::until(
            "a reconcile once every store synced",
            Duration::from_secs(5),
            || !reconciled.lock().unwrap().is_empty(),
        )
        .await;
        assert_eq!(reconciled.lock().unwrap()[0], ("a".to_string(), true));
        stop.send(()).unwrap();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_is_honoured_while_waiting_for_sync() {
        let (tx, rx) = mpsc::unbounded_channel::<crate::client::Result<Event<Pod>>>();
        tx.send(Ok(Event::Init)).unwrap();
        let (pods, _task) = Informer::from_stream(UnboundedReceiverStream::new(rx));
        let controller = Controller::new(ControllerConfig::new(pods));
        tokio::time::timeout(
            Duration::from_secs(5),
            controller.run(
                |_req: Request<Pod>| async { Ok::<_, std::convert::Infallible>(Action::Done) },
                async {},
            ),
        )
        .await
        .expect("run returns at shutdown though nothing has synced");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_is_never_reconciled_twice_at_once_and_changes_meanwhile_coalesce() {
        let (informer, feed) = informer(vec![pod("a", "1"), pod("b", "1")]);
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let overlap = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Notify::new());
        let controller = Controller::new(ControllerConfig {
            workers: 4,
            ..ControllerConfig::new(informer.clone())
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (c, f, o, g) = (
            counts.clone(),
            in_flight.clone(),
            overlap.clone(),
            gate.clone(),
        );
        let run = tokio::spawn(controller.run(
            move |req: Request<Pod>| {
                let (c, f, o, g) = (c.clone(), f.clone(), o.clone(), g.clone());
                async move {
                    let key = req.key.name.clone();
                    if !f.lock().unwrap().insert(key.clone()) {
                        o.store(true, Ordering::SeqCst);
                    }
                    let n = {
                        let mut c = c.lock().unwrap();
                        *c.entry(key.clone()).or_default() += 1;
                        c[&key]
                    };
                    if key == "a" && n == 1 {
                        g.notified().await;
                    }
                    f.lock().unwrap().remove(&key);
                    Ok::<_, std::convert::Infallible>(Action::Done)
                }
            },
            async {
                let _ = stopped.await;
            },
        ));
        crate::testing::until("the first reconcile of a", Duration::from_secs(5), || {
            counts.lock().unwrap().get("a") == Some(&1)
        })
        .await;
        // Five changes to "a" while its first reconcile is still running.
        for v in 2..7 {
            feed.send(Ok(Event::Apply(pod("a", &v.to_string()))))
                .unwrap();
        }
        crate::testing::until(
            "the store to hold the change",
            Duration::from_secs(5),
            || {
                informer
                    .store()
                    .get(&ObjectKey::new("ns", "a"))
                    .is_some_and(|p| p.meta().resource_version == "6")
            },
        )
        .await;
        gate.notify_one();
        crate::testing::until("a second reconcile of a", Duration::from_secs(5), || {
            counts.lock().unwrap().get("a") == Some(&2)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            counts.lock().unwrap()["a"],
            2,
            "five changes, one more reconcile"
        );
        assert_eq!(counts.lock().unwrap()["b"], 1);
        assert!(
            !overlap.load(Ordering::SeqCst),
            "never two reconciles of one key at once"
        );
        let _ = stop.send(());
        run.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_reconcile_retries_no_sooner_than_the_server_asked() {
        let asked = Duration::from_millis(300);
        let (primary, _feed) = informer(vec![pod("a", "1")]);
        let controller = Controller::new(ControllerConfig {
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(10),
            },
            ..ControllerConfig::new(primary)
        });
        let calls = Arc::new(Mutex::new(Vec::<std::time::Instant>::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let c = calls.clone();
        let run = tokio::spawn(controller.run(
            move |_req: Request<Pod>| {
                let c = c.clone();
                async move {
                    let n = {
                        let mut c = c.lock().unwrap();
                        c.push(std::time::Instant::now());
                        c.len()
                    };
                    if n == 1 {
                        Err(crate::client::Error::ResourceExhausted {
                            message: "busy".into(),
                            retry_after: Some(asked),
                        })
                    } else {
                        Ok(Action::Done)
                    }
                }
            },
            async {
                let _ = stopped.await;
            },
        ));
        crate::testing::until("a retry", Duration::from_secs(5), || {
            calls.lock().unwrap().len() == 2
        })
        .await;
        let calls = calls.lock().unwrap().clone();
        assert!(
            calls[1] - calls[0] >= asked,
            "retried after {:?}; the server asked for {asked:?} (backoff 1 ms)",
            calls[1] - calls[0]
        );
        let _ = stop.send(());
        run.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn owned_objects_trigger_their_owner_and_errors_retry() {
        let rs = ReplicaSet {
            metadata: meta("rs1", "1"),
            ..Default::default()
        };
        let (primary, _pfeed) = informer(vec![rs]);
        let (pods, pod_feed) = informer::<Pod>(vec![]);
        let calls = Arc::new(Mutex::new(Vec::<String>::new()));
        let controller = Controller::new(ControllerConfig {
            triggers: vec![Trigger::owned(&pods, &ReplicaSet::INFO)],
            ..ControllerConfig::new(primary)
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let c = calls.clone();
        let run = tokio::spawn(controller.run(
            move |req: Request<ReplicaSet>| {
                let c = c.clone();
                async move {
                    let n = {
                        let mut c = c.lock().unwrap();
                        c.push(req.key.name.clone());
                        c.len()
                    };
                    // The first two attempts fail; retries follow with backoff.
                    if n <= 2 {
                        Err("not yet")
                    } else {
                        Ok(Action::Done)
                    }
                }
            },
            async {
                let _ = stopped.await;
            },
        ));
        crate::testing::until("two failures and a success", Duration::from_secs(5), || {
            calls.lock().unwrap().len() == 3
        })
        .await;
        let mut owned = pod("rs1-x", "1");
        owned.meta_mut().owner_references.push(OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "rs1".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        });
        pod_feed.send(Ok(Event::Apply(owned))).unwrap();
        pod_feed.send(Ok(Event::Apply(pod("orphan", "1")))).unwrap();
        crate::testing::until(
            "the owned pod to trigger its owner",
            Duration::from_secs(5),
            || calls.lock().unwrap().len() == 4,
        )
        .await;
        assert!(calls.lock().unwrap().iter().all(|n| n == "rs1"));
        let _ = stop.send(());
        run.await.unwrap();
    }
}
