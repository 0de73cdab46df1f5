//! The cacher: an [`ObjectStore`] decorator that serves every list and
//! watch of one kind from memory. Writes pass through to the storage-backed
//! store; the cacher keeps one storage watch open and feeds its watch cache,
//! then broadcasts each event to its cache watchers.
//!
//! Reads say how fresh they must be: "0" is served at once; N waits
//! (briefly) for the cache to reach N; unset is a consistent read — the
//! cacher asks storage for its current revision and answers once the cache
//! has caught up. Backends that report watch progress (embedded) let the
//! cache catch up even when the last writes were to other kinds; on etcd
//! 3.4, which cannot, a read the cache cannot confirm fresh goes to storage.

pub mod cache_watcher;
pub mod dispatcher;
pub mod watch_cache;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::api::meta::v1::ListMeta;
use skiff::wire::{ListResponse, WatchEvent};
use tokio::sync::watch;

use self::cache_watcher::{CacheWatcher, CloseReason, OnDrop, watcher_stream};
use self::dispatcher::{DispatchStats, TimeBudget, WatcherIndex, bookmark, dispatch};
use self::watch_cache::{CacheMiss, Cached, RingConfig, WatchCache};
use crate::error::ApiError;
use crate::keys;
use crate::storage::{EventKind, Revision, Storage, StorageError};
use crate::store::{
    ContinueToken, EventStream, ListOptions, ObjectStore, ReadVersion, StorageStore, WatchOptions,
    WatchStart, decode_object,
};
use crate::strategy::Strategy;

/// Tuning of every cacher.
#[derive(Debug, Clone, Copy)]
pub struct CacherConfig {
    /// Sizing of the event ring.
    pub ring: RingConfig,
    /// Buffer of each watcher, in events.
    pub watcher_buffer: usize,
    /// Time per second the dispatcher may wait for slow watchers.
    pub dispatch_budget: Duration,
    /// How often watchers that asked for them get bookmarks.
    pub bookmark_interval: Duration,
    /// How long a read waits for the cache to reach a revision.
    pub wait_timeout: Duration,
    /// How long a consistent read waits for a backend without progress
    /// reports before reading storage instead.
    pub fresh_wait_without_progress: Duration,
}

impl Default for CacherConfig {
    fn default() -> Self {
        Self {
            ring: RingConfig::default(),
            watcher_buffer: 1000,
            dispatch_budget: Duration::from_millis(100),
            bookmark_interval: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(3),
            fresh_wait_without_progress: Duration::from_millis(50),
        }
    }
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
    /// Times the cache re-listed storage.
    pub relists: u64,
    /// Reads served from storage because the cache could not confirm freshness.
    pub storage_fallbacks: u64,
}

struct Shared<K: Resource> {
    cache: Mutex<WatchCache<K>>,
    watchers: Mutex<WatcherIndex>,
    /// The cache's revision, published after each change (0 = not ready).
    revision: watch::Sender<Revision>,
    stats: DispatchStats,
    relists: AtomicU64,
    fallbacks: AtomicU64,
    next_id: AtomicU64,
}

/// The cacher of kind `K`.
pub struct Cacher<K: Resource> {
    inner: StorageStore<K>,
    shared: Arc<Shared<K>>,
    config: CacherConfig,
    task: tokio::task::JoinHandle<()>,
}

impl<K: Resource> Drop for Cacher<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Freshness {
    Cache,
    Storage,
}

impl<K: Strategy> Cacher<K> {
    /// Starts caching kind `K` from `storage`.
    pub fn new(storage: Arc<dyn Storage>, config: CacherConfig) -> Self {
        let (revision, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            cache: Mutex::new(WatchCache::new(config.ring)),
            watchers: Mutex::new(WatcherIndex::new(K::TRIGGER_FIELD)),
            revision,
            stats: DispatchStats::default(),
            relists: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        });
        let inner = StorageStore::<K>::new(storage);
        let task = tokio::spawn(reflect(inner.clone(), shared.clone(), config));
        Self {
            inner,
            shared,
            config,
            task,
        }
    }

    /// Counters and gauges.
    pub fn stats(&self) -> CacherStats {
        let (objects, ring, revision) = {
            let c = self.shared.cache.lock().expect("cache lock");
            (c.len(), c.ring_usage(), c.revision())
        };
        CacherStats {
            watchers: self.shared.watchers.lock().expect("watcher lock").len(),
            objects,
            ring,
            revision,
            events: self.shared.stats.events.load(Ordering::Relaxed),
            delivered: self.shared.stats.delivered.load(Ordering::Relaxed),
            considered: self.shared.stats.considered.load(Ordering::Relaxed),
            closed_slow: self.shared.stats.closed_slow.load(Ordering::Relaxed),
            relists: self.shared.relists.load(Ordering::Relaxed),
            storage_fallbacks: self.shared.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Waits until the cache has reached `revision`, up to `within`.
    async fn wait_for(&self, revision: Revision, within: Duration) -> bool {
        let mut rx = self.shared.revision.subscribe();
        matches!(
            tokio::time::timeout(within, rx.wait_for(|r| *r > 0 && *r >= revision)).await,
            Ok(Ok(_))
        )
    }

    fn too_new(&self, n: Revision) -> ApiError {
        ApiError::Unavailable {
            message: format!(
                "too large resource version: {n}, the {} cache has reached {}; retry",
                K::INFO.kind,
                *self.shared.revision.borrow()
            ),
            retry_after: Some(Duration::from_secs(1)),
        }
    }

    /// Decides whether a read at `version` may be answered from the cache.
    async fn freshness(&self, version: ReadVersion) -> Result<Freshness, ApiError> {
        let progress = self.inner.storage().reports_progress();
        match version {
            ReadVersion::Any => {
                if self.wait_for(1, self.config.wait_timeout).await {
                    Ok(Freshness::Cache)
                } else {
                    Ok(Freshness::Storage)
                }
            }
            ReadVersion::AtLeast(n) | ReadVersion::Exact(n) => {
                if self.wait_for(n, self.config.wait_timeout).await {
                    return Ok(Freshness::Cache);
                }
                let current = self
                    .inner
                    .storage()
                    .current_revision()
                    .await
                    .map_err(|e| ApiError::from_storage(K::INFO.kind, "", e))?;
                if current >= n && !progress {
                    Ok(Freshness::Storage)
                } else {
                    Err(self.too_new(n))
                }
            }
            ReadVersion::Latest => {
                let current = self
                    .inner
                    .storage()
                    .current_revision()
                    .await
                    .map_err(|e| ApiError::from_storage(K::INFO.kind, "", e))?;
                let within = if progress {
                    self.config.wait_timeout
                } else {
                    self.config.fresh_wait_without_progress
                };
                if self.wait_for(current, within).await {
                    Ok(Freshness::Cache)
                } else {
                    Ok(Freshness::Storage)
                }
            }
        }
    }

    fn fallback(&self) {
        self.shared.fallbacks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Feeds the cache from storage forever: list, watch, re-list when the
/// watch breaks or its revision is compacted; dispatches events and
/// bookmarks to watchers.
async fn reflect<K: Strategy>(
    inner: StorageStore<K>,
    shared: Arc<Shared<K>>,
    config: CacherConfig,
) {
    let prefix = keys::prefix(&K::INFO, None);
    let mut backoff = Duration::from_millis(100);
    let mut budget = TimeBudget::new(config.dispatch_budget);
    let mut first = true;
    loop {
        if !first {
            // Watchers resume from their last revision or re-list; the cache
            // never hands them events it cannot vouch for.
            shared
                .watchers
                .lock()
                .expect("watcher lock")
                .close_all(CloseReason::Relist);
            shared.relists.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let listed = match inner.list_all(None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(kind = K::INFO.kind, error = %e, "cache list failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (items, revision) = listed;
        let items = items
            .into_iter()
            .map(|o| (keys::object_key(&K::INFO, o.namespace(), o.name()), o))
            .collect();
        shared
            .cache
            .lock()
            .expect("cache lock")
            .replace(items, revision);
        shared.revision.send_replace(revision);
        let stream = match inner.storage().watch(&prefix, revision + 1).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(kind = K::INFO.kind, error = %e, "cache watch failed; re-listing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut stream = stream;
        let mut ticker = tokio::time::interval(config.bookmark_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                batch = stream.next() => {
                    let batch = match batch {
                        Some(Ok(b)) => b,
                        Some(Err(StorageError::Compacted { .. })) => {
                            tracing::info!(kind = K::INFO.kind, "cache watch compacted; re-listing");
                            break;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(kind = K::INFO.kind, error = %e, "cache watch failed; re-listing");
                            break;
                        }
                        None => {
                            tracing::warn!(kind = K::INFO.kind, "cache watch ended; re-listing");
                            break;
                        }
                    };
                    if !ingest(&shared, &mut budget, batch).await {
                        break;
                    }
                }
                _ = ticker.tick() => {
                    let revision = *shared.revision.borrow();
                    let object = crate::store::bookmark_object::<K>(revision, false);
                    let frame = skiff::wire::encode_watch_event(
                        skiff::api::meta::v1::EventType::Bookmark,
                        &prost::Message::encode_to_vec(&object),
                    );
                    bookmark(&shared.watchers, revision, &frame);
                }
            }
        }
        shared.cache.lock().expect("cache lock").set_unready();
        shared.revision.send_replace(0);
    }
}

/// Applies a storage batch to the cache and dispatches its events; false if
/// the batch could not be decoded (the cache then re-lists).
async fn ingest<K: Strategy>(
    shared: &Arc<Shared<K>>,
    budget: &mut TimeBudget,
    batch: crate::storage::WatchBatch,
) -> bool {
    let now = std::time::Instant::now();
    // Decode and encode outside the lock.
    let mut decoded = Vec::with_capacity(batch.events.len());
    for e in batch.events {
        let current = match e.kind {
            EventKind::Put => match decode_object::<K>(&e.kv.key, &e.kv.value, e.kv.mod_revision) {
                Ok(o) => Some(Arc::new(Cached::new(o))),
                Err(err) => {
                    tracing::error!(kind = K::INFO.kind, error = %err, "undecodable object in storage");
                    return false;
                }
            },
            EventKind::Delete => None,
        };
        let fallback_prev = e
            .prev
            .as_ref()
            .and_then(|p| decode_object::<K>(&p.key, &p.value, p.mod_revision).ok());
        decoded.push((e.kind, e.kv.key, e.kv.mod_revision, current, fallback_prev));
    }
    let (events, revision) = {
        let mut cache = shared.cache.lock().expect("cache lock");
        let events: Vec<_> = decoded
            .into_iter()
            .map(|(kind, key, rev, current, prev)| cache.apply(kind, key, rev, current, prev, now))
            .collect();
        cache.advance(batch.progress);
        (events, cache.revision())
    };
    shared.revision.send_replace(revision);
    for event in &events {
        dispatch(&shared.watchers, budget, &shared.stats, event).await;
    }
    true
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
            Freshness::Storage => {
                self.fallback();
                self.inner.get(namespace, name, version).await
            }
            Freshness::Cache => {
                let key = keys::object_key(&K::INFO, namespace, name);
                let cache = self.shared.cache.lock().expect("cache lock");
                Ok(cache.get(&key).map(|c| c.object.clone()))
            }
        }
    }

    async fn list(&self, options: ListOptions) -> Result<ListResponse<K>, ApiError> {
        let prefix = keys::prefix(&K::INFO, options.predicate.namespace.as_deref());
        let (at, start_after) = match &options.continue_token {
            Some(t) => (Some(t.revision), t.start_after.clone()),
            None => {
                if let Freshness::Storage = self.freshness(options.version).await? {
                    self.fallback();
                    return self.inner.list(options).await;
                }
                (None, String::new())
            }
        };
        let page = {
            let cache = self.shared.cache.lock().expect("cache lock");
            if !cache.ready() {
                Err(CacheMiss::TooNew { current: 0 })
            } else {
                cache.list(&prefix, &start_after, at, &options.predicate, options.limit)
            }
        };
        let page = match page {
            Ok(p) => p,
            Err(CacheMiss::TooNew { .. }) if at.is_some() => {
                // A page token from a revision the cache has not reached (another server's).
                let n = at.unwrap_or(0);
                if self.wait_for(n, self.config.wait_timeout).await {
                    let cache = self.shared.cache.lock().expect("cache lock");
                    cache
                        .list(&prefix, &start_after, at, &options.predicate, options.limit)
                        .map_err(|_| self.too_new(n))?
                } else {
                    self.fallback();
                    return self.inner.list(options).await;
                }
            }
            Err(_) => {
                // Older than the ring, or not ready: storage can still serve it
                // (or say the token expired).
                self.fallback();
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
        // Make sure the cache can serve this start, or hand it to storage.
        match options.start {
            WatchStart::CurrentState => {
                if let Freshness::Storage = self.freshness(ReadVersion::Latest).await? {
                    self.fallback();
                    return self.inner.watch(options).await;
                }
            }
            WatchStart::After(n) => {
                if !self.wait_for(n, Duration::ZERO).await {
                    let progress = self.inner.storage().reports_progress();
                    let within = if progress {
                        self.config.wait_timeout
                    } else {
                        self.config.fresh_wait_without_progress
                    };
                    if !self.wait_for(n, within).await {
                        let current = self
                            .inner
                            .storage()
                            .current_revision()
                            .await
                            .map_err(|e| ApiError::from_storage(K::INFO.kind, "", e))?;
                        if current < n {
                            return Err(self.too_new(n));
                        }
                        self.fallback();
                        return self.inner.watch(options).await;
                    }
                }
            }
        }
        let prefix = keys::prefix(&K::INFO, options.predicate.namespace.as_deref());
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Registration and the initial events are taken under the cache lock,
        // so that every later event reaches the watcher exactly once.
        let (initial, rx, closed, snapshot_rev): (
            Box<dyn Iterator<Item = bytes::Bytes> + Send>,
            _,
            _,
            _,
        ) = {
            let cache = self.shared.cache.lock().expect("cache lock");
            let revision = cache.revision();
            let predicate = options.predicate.clone();
            let initial: Box<dyn Iterator<Item = bytes::Bytes> + Send> = match options.start {
                WatchStart::CurrentState => {
                    let objects = cache.snapshot(&prefix);
                    Box::new(
                        objects
                            .into_iter()
                            .filter(move |c| predicate.matches(&c.object))
                            .map(|c| c.added_frame()),
                    )
                }
                WatchStart::After(n) => {
                    let events = cache.events_after(n).map_err(|miss| match miss {
                        CacheMiss::TooOld { oldest } => ApiError::Expired(format!(
                            "too old resource version: {n} (the oldest {} version kept is {oldest}); list again",
                            K::INFO.kind
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
            let (watcher, rx, closed) = CacheWatcher::new(
                id,
                options.predicate.clone(),
                revision + 1,
                options.allow_bookmarks,
                self.config.watcher_buffer,
            );
            self.shared
                .watchers
                .lock()
                .expect("watcher lock")
                .insert(Arc::new(watcher));
            (initial, rx, closed, revision)
        };
        let initial: Box<dyn Iterator<Item = bytes::Bytes> + Send> =
            if options.initial_events_end_bookmark && options.start == WatchStart::CurrentState {
                let end = bytes::Bytes::from(prost::Message::encode_to_vec(
                    &crate::store::bookmark::<K>(snapshot_rev, true),
                ));
                Box::new(initial.chain(std::iter::once(end)))
            } else {
                initial
            };
        let weak = Arc::downgrade(&self.shared);
        let guard = OnDrop::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.watchers.lock().expect("watcher lock").remove(id);
            }
        });
        let stream =
            watcher_stream(initial, rx, closed, guard).map(|r| r.map(WatchEvent::pre_encoded));
        Ok(Box::pin(stream))
    }
}
