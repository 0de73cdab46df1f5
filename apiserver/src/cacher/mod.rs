//! The cacher: an [`ObjectStore`] decorator that serves every list, get and
//! watch of one kind from memory. Writes pass through to the storage-backed
//! store and come back through the API server's one storage watch, the
//! [`feed::Feed`], which applies them to this kind's watch cache; the
//! cacher's dispatcher task then broadcasts them to its cache watchers. The
//! feed never waits for the dispatcher, so writes and reads never wait on
//! fan-out.
//!
//! Reads say how fresh they must be: "0" is served at once; N waits
//! (briefly) for the cache to reach N; unset is a consistent read — the
//! cacher asks storage for its current revision and answers once the feed
//! has caught up (see the feed for how that is proved on etcd 3.4). A read
//! the cache cannot serve in time goes to storage, and is counted with its
//! reason; a watch never does: it is refused with a retry hint instead, so
//! the number of storage watches never depends on clients.

pub mod cache_watcher;
pub mod delivery;
pub mod dispatcher;
pub mod feed;
pub mod watch_cache;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use skiff::Resource;
use skiff::api::meta::v1::ListMeta;
use skiff::metrics::CounterVec;
use skiff::wire::{ListResponse, OutgoingEvent};
use tokio::sync::{Notify, watch};

use self::cache_watcher::{CacheWatcher, CloseReason, OnDrop, WatcherStream};
use self::delivery::DeliveryLog;
use self::dispatcher::WatcherIndex;
use self::feed::{Feed, FeedConfig, KindCache};
use self::watch_cache::{CacheMiss, Cached, RingConfig, WatchCache};
use crate::error::ApiError;
use crate::object_store::keys;
use crate::object_store::kind::ServedKind;
use crate::object_store::{
    ContinueToken, EventStream, FrameStream, ListOptions, ObjectStore, ReadVersion, StorageStore,
    WatchOptions, WatchStart, decode_object,
};
use crate::registry::strategy::Strategy;
use crate::storage::{Event, EventKind, RangeRequest, Revision, Storage, StorageError};

/// Tuning of every cacher.
#[derive(Debug, Clone, Copy)]
pub struct CacherConfig {
    /// Sizing of the event ring (and of the delivery log: a watcher may
    /// lag by as many events as the ring holds).
    pub ring: RingConfig,
    /// How often watchers that asked for them get bookmarks.
    pub bookmark_interval: Duration,
    /// How long a read waits for the cache to be ready or to reach a revision.
    pub wait_timeout: Duration,
    /// Objects per page when a cache lists storage.
    pub list_page: usize,
    /// Tuning of the storage watch shared by every kind.
    pub feed: FeedConfig,
}

impl Default for CacherConfig {
    fn default() -> Self {
        Self {
            ring: RingConfig::default(),
            bookmark_interval: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(3),
            list_page: 1000,
            feed: FeedConfig::default(),
        }
    }
}

/// Why a read went to storage instead of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The cache was (re)loading.
    NotReady = 0,
    /// The cache could not confirm it had reached storage's revision in time.
    NotFresh = 1,
    /// A page token's revision is older than the event ring.
    PageOlderThanRing = 2,
    /// A page token's revision is newer than the cache reached in time.
    PageAheadOfCache = 3,
}

impl Fallback {
    /// Every reason, in order.
    pub const ALL: [Fallback; 4] = [
        Fallback::NotReady,
        Fallback::NotFresh,
        Fallback::PageOlderThanRing,
        Fallback::PageAheadOfCache,
    ];

    /// The reason's label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NotReady => "not_ready",
            Fallback::NotFresh => "not_fresh",
            Fallback::PageOlderThanRing => "page_older_than_ring",
            Fallback::PageAheadOfCache => "page_ahead_of_cache",
        }
    }
}

fn fallback_metric() -> &'static Arc<CounterVec> {
    static M: OnceLock<Arc<CounterVec>> = OnceLock::new();
    M.get_or_init(|| {
        skiff::metrics::global().counter(
            "apiserver_watch_cache_fallbacks_total",
            "Reads served from storage because the watch cache could not serve them, by reason.",
            &["kind", "reason"],
        )
    })
}

/// Counters and gauges of one cacher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacherStats {
    /// Open watchers.
    pub watchers: usize,
    /// Objects in the cache.
    pub objects: usize,
    /// Events in the ring and its capacity.
    pub ring: (usize, usize),
    /// Revision the cache has reached.
    pub revision: Revision,
    /// Events processed.
    pub events: u64,
    /// Event deliveries to watchers.
    pub delivered: u64,
    /// Watchers examined for events (what the trigger index keeps small).
    pub considered: u64,
    /// Watchers closed for being slow.
    pub closed_slow: u64,
    /// Times the cache listed storage again after losing history.
    pub relists: u64,
    /// Reads served from storage instead of the cache, in all.
    pub storage_fallbacks: u64,
    /// The same by reason, in the order of [`Fallback::ALL`].
    pub fallbacks_by_reason: [u64; 4],
    /// Reads and watches that had to wait for the cache to catch up.
    pub fresh_waits: u64,
}

/// A test's hold on a watch between its freshness check and its
/// registration: `arrived` is signalled there, and the watch goes on at `go`.
#[cfg(test)]
#[derive(Clone, Default)]
struct Gate {
    arrived: Arc<Notify>,
    go: Arc<Notify>,
}

struct Shared<K: Resource> {
    /// The kind cached.
    kind: Arc<ServedKind<K>>,
    cache: Mutex<WatchCache<K>>,
    watchers: Mutex<WatcherIndex>,
    /// Whether the cache holds a listed state.
    ready: watch::Sender<bool>,
    /// The feed's progress: every event up to it has been applied.
    progress: watch::Receiver<Revision>,
    /// New events for the dispatcher.
    wake: Notify,
    /// What watchers read their live events from.
    log: Arc<DeliveryLog<K>>,
    list_page: usize,
    relists: AtomicU64,
    fallbacks: [AtomicU64; 4],
    fresh_waits: AtomicU64,
    next_id: AtomicU64,
    #[cfg(test)]
    gate: Mutex<Option<Gate>>,
}

impl<K: Resource> Shared<K> {
    /// The cache, advanced to the feed's progress. The progress is read
    /// before the lock: every event up to it is in the cache by then.
    fn lock(&self) -> MutexGuard<'_, WatchCache<K>> {
        let progress = *self.progress.borrow();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.ready() {
            cache.advance(progress);
        }
        cache
    }
}

/// The cacher of kind `K`.
pub struct Cacher<K: Resource> {
    inner: StorageStore<K>,
    shared: Arc<Shared<K>>,
    feed: Arc<Feed>,
    config: CacherConfig,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl<K: Resource> Drop for Cacher<K> {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

enum Freshness {
    Cache,
    Storage(Fallback),
}

impl<K: Strategy> Cacher<K> {
    /// Starts caching kind `K`, fed by `feed`.
    pub fn new(feed: &Arc<Feed>, config: CacherConfig) -> Self {
        Self::for_kind(feed, config, Arc::new(ServedKind::of_type()))
    }

    /// Starts caching `kind`, fed by `feed`.
    pub fn for_kind(feed: &Arc<Feed>, config: CacherConfig, kind: Arc<ServedKind<K>>) -> Self {
        let shared = Arc::new(Shared {
            kind: kind.clone(),
            cache: Mutex::new(WatchCache::new(config.ring)),
            watchers: Mutex::new(WatcherIndex::new()),
            ready: watch::channel(false).0,
            progress: feed.progress(),
            wake: Notify::new(),
            log: Arc::new(DeliveryLog::default()),
            list_page: config.list_page.max(1),
            relists: AtomicU64::new(0),
            fallbacks: Default::default(),
            fresh_waits: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            #[cfg(test)]
            gate: Mutex::new(None),
        });
        feed.register(Arc::new(Fed(shared.clone())));
        let dispatcher = tokio::spawn(dispatcher::run(shared.clone(), config));
        Self {
            inner: StorageStore::for_kind(feed.storage().clone(), kind),
            shared,
            feed: feed.clone(),
            config,
            dispatcher,
        }
    }

    /// Counters and gauges.
    pub fn stats(&self) -> CacherStats {
        let (objects, ring, revision) = {
            let c = self.shared.lock();
            (c.len(), c.ring_usage(), c.revision())
        };
        let fallbacks_by_reason = Fallback::ALL.map(|r| {
            self.shared
                .fallbacks
                .get(r as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        });
        CacherStats {
            watchers: self
                .shared
                .watchers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len(),
            objects,
            ring,
            revision,
            events: self.shared.log.stats.events.load(Ordering::Relaxed),
            delivered: self.shared.log.stats.delivered.load(Ordering::Relaxed),
            considered: self.shared.log.stats.considered.load(Ordering::Relaxed),
            closed_slow: self.shared.log.stats.closed_slow.load(Ordering::Relaxed),
            relists: self.shared.relists.load(Ordering::Relaxed),
            storage_fallbacks: fallbacks_by_reason.iter().sum(),
            fallbacks_by_reason,
            fresh_waits: self.shared.fresh_waits.load(Ordering::Relaxed),
        }
    }

    /// Waits up to `within` for the cache to hold a listed state.
    async fn wait_ready(&self, within: Duration) -> bool {
        let mut rx = self.shared.ready.subscribe();
        tokio::time::timeout(within, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn reached(&self, revision: Revision) -> bool {
        *self.shared.progress.borrow() >= revision
    }

    /// Waits for the feed to reach `revision` (counted when it must wait).
    async fn wait_fresh(&self, revision: Revision, within: Duration) -> bool {
        if self.reached(revision) {
            return true;
        }
        self.shared.fresh_waits.fetch_add(1, Ordering::Relaxed);
        self.feed.wait_fresh(revision, within).await
    }

    async fn storage_revision(&self) -> Result<Revision, ApiError> {
        self.inner
            .storage()
            .current_revision()
            .await
            .map_err(|e| ApiError::from_storage(self.shared.kind.info.kind, "", e))
    }

    fn too_new(&self, n: Revision) -> ApiError {
        ApiError::Unavailable {
            message: format!(
                "too large resource version: {n}, the {} cache has reached {}; retry",
                self.shared.kind.info.kind,
                *self.shared.progress.borrow()
            ),
            retry_after: Some(Duration::from_secs(1)),
        }
    }

    /// Refuses `n` at once if storage has not reached it either.
    async fn check_not_future(&self, n: Revision) -> Result<(), ApiError> {
        if !self.reached(n) && self.storage_revision().await? < n {
            return Err(self.too_new(n));
        }
        Ok(())
    }

    /// Decides whether a read at `version` may be answered from the cache.
    async fn freshness(&self, version: ReadVersion) -> Result<Freshness, ApiError> {
        let target = match version {
            ReadVersion::Any => None,
            ReadVersion::AtLeast(n) | ReadVersion::Exact(n) => {
                self.check_not_future(n).await?;
                Some(n)
            }
            ReadVersion::Latest => Some(self.storage_revision().await?),
        };
        if !self.wait_ready(self.config.wait_timeout).await {
            return Ok(Freshness::Storage(Fallback::NotReady));
        }
        match target {
            Some(t) if !self.wait_fresh(t, self.config.wait_timeout).await => {
                Ok(Freshness::Storage(Fallback::NotFresh))
            }
            _ => Ok(Freshness::Cache),
        }
    }

    fn fallback(&self, reason: Fallback) {
        if let Some(c) = self.shared.fallbacks.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        fallback_metric()
            .with(&[self.shared.kind.info.kind, reason.as_str()])
            .inc();
        tracing::debug!(
            kind = self.shared.kind.info.kind,
            reason = reason.as_str(),
            "watch cache: read served from storage"
        );
    }

    /// Holds watches between freshness and registration (tests only).
    #[cfg(test)]
    fn hold_watches(&self) -> Gate {
        let gate = Gate::default();
        *self.shared.gate.lock().unwrap() = Some(gate.clone());
        gate
    }

    #[cfg(test)]
    async fn pass_gate(&self) {
        let gate = self.shared.gate.lock().unwrap().take();
        if let Some(g) = gate {
            g.arrived.notify_one();
            g.go.notified().await;
        }
    }

    /// Registers a watcher on a ready cache; `None` if a re-list began since
    /// the caller's checks (it must wait for the new state).
    fn register(&self, options: &WatchOptions) -> Result<Option<WatcherStream<K>>, ApiError> {
        let prefix = keys::prefix(&*self.shared.kind, options.predicate.namespace.as_deref());
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        // The initial events and the registration are taken under the cache
        // lock, so that every later event reaches the watcher exactly once.
        type Frames = Box<dyn Iterator<Item = bytes::Bytes> + Send>;
        let (initial, watcher, cursor, snapshot_rev): (Frames, _, _, _) = {
            let cache = self.shared.lock();
            if !cache.ready() {
                return Ok(None);
            }
            let revision = cache.revision();
            let predicate = options.predicate.clone();
            let initial: Frames = match options.start {
                WatchStart::CurrentState | WatchStart::AnyState => {
                    let objects = cache.snapshot(&prefix);
                    Box::new(
                        objects
                            .into_iter()
                            .filter(move |c| c.matches(&predicate))
                            .map(|c| c.added_frame()),
                    )
                }
                WatchStart::After(n) => {
                    let events = cache.events_after(n).map_err(|miss| match miss {
                        CacheMiss::TooOld { oldest } => ApiError::Expired(format!(
                            "too old resource version: {n} (the oldest {} version kept is {oldest}); list again",
                            self.shared.kind.info.kind
                        )),
                        CacheMiss::TooNew { .. } => self.too_new(n),
                    })?;
                    let everything = predicate.is_everything();
                    Box::new(
                        events
                            .into_iter()
                            .filter_map(move |e| e.frame_for(everything, &predicate)),
                    )
                }
            };
            // Live events start at the log's end: what is logged already
            // is in the cache, so in the initial events or before them.
            let cursor = self.shared.log.end();
            let watcher = Arc::new(CacheWatcher::new(
                id,
                options.predicate.clone(),
                revision + 1,
                options.allow_bookmarks,
                K::TRIGGER_FIELD,
                cursor,
            ));
            self.shared
                .watchers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(watcher.clone());
            (initial, watcher, cursor, revision)
        };
        let initial: Frames = if options.initial_events_end_bookmark
            && matches!(
                options.start,
                WatchStart::CurrentState | WatchStart::AnyState
            ) {
            let end = skiff::wire::grpc_frame(&prost::Message::encode_to_vec(
                &crate::object_store::bookmark::<K>(snapshot_rev, true),
            ));
            Box::new(initial.chain(std::iter::once(end)))
        } else {
            initial
        };
        let weak = Arc::downgrade(&self.shared);
        let guard = OnDrop::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared
                    .watchers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(id);
            }
        });
        Ok(Some(WatcherStream::new(
            initial,
            watcher,
            self.shared.log.clone(),
            cursor,
            guard,
        )))
    }
}

/// The feed's handle on one kind's cache.
struct Fed<K: Resource>(Arc<Shared<K>>);

#[async_trait::async_trait]
impl<K: Strategy> KindCache for Fed<K> {
    fn kind(&self) -> &'static str {
        self.0.kind.info.kind
    }

    fn plural(&self) -> &'static str {
        self.0.kind.segment
    }

    async fn load(&self, storage: &dyn Storage, revision: Revision) -> Result<(), StorageError> {
        let prefix = keys::prefix(&*self.0.kind, None);
        let mut items = Vec::new();
        let mut start_after = String::new();
        loop {
            let page = storage
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    start_after: std::mem::take(&mut start_after),
                    revision: Some(revision),
                    limit: self.0.list_page,
                })
                .await?;
            for kv in &page.kvs {
                match decode_object::<K>(&kv.key, &kv.value, kv.mod_revision) {
                    Ok(o) => {
                        items.push((kv.key.clone(), Arc::new(Cached::new(o, K::TRIGGER_FIELD))))
                    }
                    Err(e) => {
                        tracing::error!(kind = self.0.kind.info.kind, error = %e, "watch cache: skipping an object that does not decode")
                    }
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => start_after = last.key.clone(),
                _ => break,
            }
        }
        self.0
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(items, revision);
        self.0.ready.send_replace(true);
        self.0.wake.notify_one();
        Ok(())
    }

    fn apply(&self, events: Vec<Event>) {
        let now = Instant::now();
        // Decode and encode outside the lock; previous states come from the store.
        let decoded: Vec<_> = events
            .into_iter()
            .filter_map(|e| {
                let current = match e.kind {
                    EventKind::Put => {
                        match decode_object::<K>(&e.kv.key, &e.kv.value, e.kv.mod_revision) {
                            Ok(o) => Some(Arc::new(Cached::new(o, K::TRIGGER_FIELD))),
                            Err(err) => {
                                tracing::error!(kind = self.0.kind.info.kind, error = %err, "watch cache: skipping a change that does not decode");
                                return None;
                            }
                        }
                    }
                    EventKind::Delete => None,
                };
                Some((e.kind, e.kv.key, e.kv.mod_revision, current))
            })
            .collect();
        {
            let mut cache = self
                .0
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (kind, key, revision, current) in decoded {
                cache.apply(kind, key, revision, current, now);
            }
        }
        self.0.wake.notify_one();
    }

    fn invalidate(&self) {
        {
            // One critical section: no watch can register on the old state
            // once its watchers have been told to go.
            let mut cache = self
                .0
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.set_unready();
            self.0
                .watchers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .close_all(CloseReason::Relist);
        }
        self.0.ready.send_replace(false);
        self.0.relists.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl<K: Strategy> ObjectStore<K> for Cacher<K> {
    async fn create(&self, obj: K) -> Result<K, ApiError> {
        self.inner.create(obj).await
    }

    async fn get(
        &self,
        namespace: &str,
        name: &str,
        version: ReadVersion,
    ) -> Result<Option<K>, ApiError> {
        match self.freshness(version).await? {
            Freshness::Cache => {
                let key = keys::object_key(&*self.shared.kind, namespace, name);
                let cache = self.shared.lock();
                if cache.ready() {
                    let cached = cache.get(&key);
                    drop(cache);
                    return Ok(cached.map(|c| c.object()));
                }
                drop(cache);
                self.fallback(Fallback::NotReady);
            }
            Freshness::Storage(reason) => self.fallback(reason),
        }
        self.inner.get(namespace, name, version).await
    }

    async fn list(&self, options: ListOptions) -> Result<ListResponse<K>, ApiError> {
        let prefix = keys::prefix(&*self.shared.kind, options.predicate.namespace.as_deref());
        let (at, start_after) = match &options.continue_token {
            Some(t) => (Some(t.revision), t.start_after.clone()),
            None => {
                if let Freshness::Storage(reason) = self.freshness(options.version).await? {
                    self.fallback(reason);
                    return self.inner.list(options).await;
                }
                (None, String::new())
            }
        };
        let page = {
            let cache = self.shared.lock();
            if !cache.ready() {
                Err(CacheMiss::TooNew { current: 0 })
            } else {
                cache.list(&prefix, &start_after, at, &options.predicate, options.limit)
            }
        };
        let page = match (page, at) {
            (Ok(p), _) => p,
            (Err(CacheMiss::TooNew { .. }), Some(n)) => {
                // A page token from a revision the cache has not reached (another server's).
                let retried = if self.wait_fresh(n, self.config.wait_timeout).await {
                    let cache = self.shared.lock();
                    cache
                        .list(&prefix, &start_after, at, &options.predicate, options.limit)
                        .ok()
                } else {
                    None
                };
                match retried {
                    Some(p) => p,
                    None => {
                        self.fallback(Fallback::PageAheadOfCache);
                        return self.inner.list(options).await;
                    }
                }
            }
            (Err(CacheMiss::TooOld { .. }), Some(_)) => {
                // Storage can still serve it (or say the token expired).
                self.fallback(Fallback::PageOlderThanRing);
                return self.inner.list(options).await;
            }
            (Err(_), _) => {
                self.fallback(Fallback::NotReady);
                return self.inner.list(options).await;
            }
        };
        let next_page_token = if page.more {
            ContinueToken {
                revision: page.revision,
                start_after: page.last_key.clone(),
            }
            .encode()
        } else {
            String::new()
        };
        let encoded = page.items.iter().map(|c| c.encoded.clone()).collect();
        Ok(ListResponse::pre_encoded(
            ListMeta {
                resource_version: page.revision.to_string(),
                next_page_token,
                remaining_item_count: None,
            },
            encoded,
        ))
    }

    async fn update(&self, obj: K, expected: Revision) -> Result<K, ApiError> {
        self.inner.update(obj, expected).await
    }

    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        expected: Option<Revision>,
    ) -> Result<K, ApiError> {
        self.inner.delete(namespace, name, expected).await
    }

    async fn watch(&self, options: WatchOptions) -> Result<EventStream<K>, ApiError> {
        let stream = self.watcher_stream(options).await?;
        Ok(Box::pin(stream.map(|r| r.map(OutgoingEvent::Framed))))
    }

    async fn watch_frames(&self, options: WatchOptions) -> Result<FrameStream, ApiError> {
        Ok(Box::pin(self.watcher_stream(options).await?))
    }
}

impl<K: Strategy> Cacher<K> {
    /// A watcher of the cache, once it is ready and fresh enough for `options`.
    async fn watcher_stream(&self, options: WatchOptions) -> Result<WatcherStream<K>, ApiError> {
        let deadline = tokio::time::Instant::now() + self.config.wait_timeout;
        let target = match options.start {
            WatchStart::CurrentState => Some(self.storage_revision().await?),
            WatchStart::AnyState => None,
            WatchStart::After(n) => {
                self.check_not_future(n).await?;
                Some(n)
            }
        };
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.wait_ready(left).await {
                return Err(ApiError::Unavailable {
                    message: format!(
                        "the {} watch cache is loading from storage; retry",
                        self.shared.kind.info.kind
                    ),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            if let Some(t) = target
                && !self.wait_fresh(t, left).await
            {
                return Err(ApiError::Unavailable {
                    message: format!(
                        "the {} watch cache has not caught up with storage revision {t}; retry",
                        self.shared.kind.info.kind
                    ),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            #[cfg(test)]
            self.pass_gate().await;
            if let Some(stream) = self.register(&options)? {
                return Ok(stream);
            }
            // A re-list began after the checks: wait for the new state.
        }
    }
}

#[cfg(test)]
mod tests;
