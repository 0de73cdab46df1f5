//! The feed: one storage watch over every key of the cluster, shared by the
//! watch caches of every kind. (Kubernetes' cacher holds one etcd watch per
//! kind; an API server here holds one in all, however many kinds and
//! clients.) Each event goes to the cache of its kind; after each batch the
//! revision it reached is published as the progress of every cache: each
//! then knows it holds every write of its kind up to there, even when the
//! last writes were to other kinds.
//!
//! A broken watch resumes from the last revision + 1 (on another etcd member
//! if need be) and the caches see only a pause; only a compaction past that
//! revision makes every cache list again, all at one revision.
//!
//! A backend without progress reports (etcd 3.4) cannot say that revisions
//! written by others sharing the etcd under another prefix are behind us. A
//! consistent read that waits for such a revision asks the feed for a
//! progress marker: a write of one key under our prefix, whose event proves
//! every cache has caught up to a revision at least as new as the one the
//! read is waiting for. A marker that does not come back in time means the
//! watch is stuck (a member cut off), and the feed watches again.
//!
//! The feed owns no watchers: each cache dispatches its own events.
//!
//! Owns the storage watch and the progress markers; must not filter or send
//! to client watches (the dispatchers do).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, watch};

use crate::object_store::keys;
use crate::storage::{Event, Revision, Storage, StorageError};

/// What the feed needs of the cache of one kind.
#[async_trait::async_trait]
pub trait KindCache: Send + Sync + 'static {
    /// The kind, for logs.
    fn kind(&self) -> &'static str;
    /// The plural naming the kind's keys (`/registry/<plural>/…`).
    fn plural(&self) -> &'static str;
    /// Replaces the cache's state with every object of the kind as of
    /// `revision`, read from `storage` in pages.
    async fn load(&self, storage: &dyn Storage, revision: Revision) -> Result<(), StorageError>;
    /// Applies changes of the kind, in revision order.
    fn apply(&self, events: Vec<Event>);
    /// The cache can no longer vouch for its state (history was lost):
    /// stop serving and end every watcher until the next [`load`](Self::load).
    fn invalidate(&self);
}

/// Tuning of the feed.
#[derive(Debug, Clone, Copy)]
pub struct FeedConfig {
    /// How long a consistent read waits for its revision to arrive on its
    /// own before a progress marker is written (backends without progress
    /// reports only).
    pub progress_request_delay: Duration,
    /// How long a written marker may take to come back before the watch is
    /// considered stuck and opened again.
    pub stall_timeout: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            progress_request_delay: Duration::from_millis(5),
            stall_timeout: Duration::from_secs(3),
        }
    }
}

/// Counters of the feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Storage watches opened (one, plus one per resume or re-list).
    pub watches_opened: u64,
    /// Times the watch broke and was resumed from its last revision.
    pub resumes: u64,
    /// Times every cache listed storage again (compaction, start-up).
    pub relists: u64,
    /// Progress markers written.
    pub markers: u64,
    /// Revision every ready cache has reached.
    pub progress: Revision,
}

#[derive(Default)]
struct Counters {
    watches_opened: AtomicU64,
    resumes: AtomicU64,
    relists: AtomicU64,
    markers: AtomicU64,
}

struct Shared {
    storage: Arc<dyn Storage>,
    config: FeedConfig,
    progress: watch::Sender<Revision>,
    /// False while the storage watch is known to be down (broken, not yet
    /// open again): reads need not wait for what cannot arrive.
    watching: watch::Sender<bool>,
    /// Highest revision a consistent read asked the feed to confirm.
    requested: watch::Sender<Revision>,
    pending: Mutex<Vec<Arc<dyn KindCache>>>,
    /// Plurals of kinds no longer served (their definition was deleted).
    leaving: Mutex<Vec<String>>,
    registered: Notify,
    stalled: Notify,
    counters: Counters,
}

/// The one storage watch of an API server, feeding every kind's cache.
pub struct Feed {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Feed {
    /// Starts feeding from `storage`; caches join with [`register`](Self::register).
    pub fn start(storage: Arc<dyn Storage>, config: FeedConfig) -> Arc<Self> {
        let shared = Arc::new(Shared {
            storage,
            config,
            progress: watch::channel(0).0,
            watching: watch::channel(true).0,
            requested: watch::channel(0).0,
            pending: Mutex::new(Vec::new()),
            leaving: Mutex::new(Vec::new()),
            registered: Notify::new(),
            stalled: Notify::new(),
            counters: Counters::default(),
        });
        let mut tasks = vec![tokio::spawn(run(shared.clone()))];
        if !shared.storage.reports_progress() {
            tasks.push(tokio::spawn(write_markers(shared.clone())));
        }
        Arc::new(Self { shared, tasks })
    }

    /// The storage the feed watches.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    /// Adds a kind's cache: it is loaded at the feed's current revision and
    /// fed from there.
    pub fn register(&self, cache: Arc<dyn KindCache>) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(cache);
        self.shared.registered.notify_one();
    }

    /// Stops feeding the cache of the kind whose keys are under `plural`
    /// (a kind defined at run time, no longer served).
    pub fn unregister(&self, plural: &str) {
        self.shared
            .leaving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(plural.to_owned());
        self.shared.registered.notify_one();
    }

    /// A receiver of the revision every ready cache has reached.
    pub fn progress(&self) -> watch::Receiver<Revision> {
        self.shared.progress.subscribe()
    }

    /// Counters.
    pub fn stats(&self) -> FeedStats {
        let c = &self.shared.counters;
        FeedStats {
            watches_opened: c.watches_opened.load(Ordering::Relaxed),
            resumes: c.resumes.load(Ordering::Relaxed),
            relists: c.relists.load(Ordering::Relaxed),
            markers: c.markers.load(Ordering::Relaxed),
            progress: *self.shared.progress.borrow(),
        }
    }

    /// Whether the storage watch is up (not known to be down).
    pub fn watching(&self) -> bool {
        *self.shared.watching.borrow()
    }

    /// Waits up to `within` for the caches to reach `revision`, which
    /// storage has reached: on a backend without progress reports, a
    /// revision that does not arrive on its own soon is confirmed with a
    /// progress marker. False if it did not arrive in time, or at once when
    /// the storage watch is down (nothing would arrive).
    pub async fn wait_fresh(&self, revision: Revision, within: Duration) -> bool {
        let mut rx = self.shared.progress.subscribe();
        if *rx.borrow() >= revision {
            return true;
        }
        let mut watching = self.shared.watching.subscribe();
        tokio::select! {
            fresh = self.wait_progress(&mut rx, revision, within) => fresh,
            _ = watching.wait_for(|w| !*w) => *rx.borrow() >= revision,
        }
    }

    async fn wait_progress(
        &self,
        rx: &mut watch::Receiver<Revision>,
        revision: Revision,
        within: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        if !self.shared.storage.reports_progress() {
            let delay = self.shared.config.progress_request_delay.min(within);
            if tokio::time::timeout(delay, rx.wait_for(|p| *p >= revision))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return true;
            }
            self.shared.requested.send_if_modified(|r| {
                let more = revision > *r;
                if more {
                    *r = revision;
                }
                more
            });
        }
        tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Lists every cache at one revision, then follows the watch; resumes a
/// broken watch, re-lists after a compaction.
async fn run(shared: Arc<Shared>) {
    let mut kinds: Vec<Arc<dyn KindCache>> = Vec::new();
    let mut routes: HashMap<&'static str, usize> = HashMap::new();
    let mut loaded = false;
    let mut backoff = Backoff::default();
    // The next revision to watch from; None: every cache must list again.
    let mut from: Option<Revision> = None;
    loop {
        // Caches registered meanwhile join the next listing.
        leave(&shared, &mut kinds, &mut routes);
        for k in std::mem::take(
            &mut *shared
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ) {
            join(&mut kinds, &mut routes, k);
        }
        let start = match from {
            Some(r) => r,
            None => {
                if loaded {
                    shared.counters.relists.fetch_add(1, Ordering::Relaxed);
                    for k in &kinds {
                        k.invalidate();
                    }
                }
                match list_all(&shared, &kinds).await {
                    Ok(r) => {
                        loaded = true;
                        r + 1
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache: cannot list storage; retrying");
                        backoff.wait().await;
                        continue;
                    }
                }
            }
        };
        from = Some(start);
        shared
            .counters
            .watches_opened
            .fetch_add(1, Ordering::Relaxed);
        let mut stream = match shared.storage.watch_without_prev(keys::ROOT, start).await {
            Ok(s) => {
                shared.watching.send_replace(true);
                s
            }
            Err(StorageError::Compacted { .. }) => {
                tracing::info!(
                    revision = start,
                    "watch cache: history compacted past its revision; listing again"
                );
                from = None;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, revision = start, "watch cache: cannot watch storage; retrying");
                shared.watching.send_replace(false);
                backoff.wait().await;
                continue;
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = shared.registered.notified() => {
                    leave(&shared, &mut kinds, &mut routes);
                    let joining = std::mem::take(&mut *shared.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                    let at = *shared.progress.borrow();
                    let mut failed = false;
                    for k in joining {
                        // Between batches, so the cache starts exactly where the feed is.
                        if let Err(e) = k.load(&*shared.storage, at).await {
                            tracing::warn!(kind = k.kind(), error = %e, "watch cache: cannot list a new kind; listing everything again");
                            failed = true;
                        }
                        join(&mut kinds, &mut routes, k);
                    }
                    if failed {
                        from = None;
                        shared.watching.send_replace(false);
                        break;
                    }
                }
                _ = shared.stalled.notified() => {
                    tracing::warn!(revision = from, "watch cache: storage watch is stuck; watching again");
                    shared.counters.resumes.fetch_add(1, Ordering::Relaxed);
                    shared.watching.send_replace(false);
                    break;
                }
                batch = stream.next() => match batch {
                    Some(Ok(batch)) => {
                        backoff.reset();
                        let reached = route(&kinds, &routes, batch.events).max(batch.progress);
                        shared.progress.send_if_modified(|p| {
                            let more = reached > *p;
                            if more {
                                *p = reached;
                            }
                            more
                        });
                        from = Some(from.unwrap_or(0).max(reached + 1));
                    }
                    Some(Err(StorageError::Compacted { .. })) => {
                        tracing::info!(revision = from, "watch cache: history compacted past its revision; listing again");
                        shared.watching.send_replace(false);
                        from = None;
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, revision = from, "watch cache: storage watch broke; resuming");
                        shared.watching.send_replace(false);
                        shared.counters.resumes.fetch_add(1, Ordering::Relaxed);
                        backoff.wait().await;
                        break;
                    }
                    None => {
                        tracing::warn!(revision = from, "watch cache: storage watch ended; resuming");
                        shared.watching.send_replace(false);
                        shared.counters.resumes.fetch_add(1, Ordering::Relaxed);
                        backoff.wait().await;
                        break;
                    }
                }
            }
        }
    }
}

/// Adds a kind's cache to those fed, in place of one with its plural.
fn join(
    kinds: &mut Vec<Arc<dyn KindCache>>,
    routes: &mut HashMap<&'static str, usize>,
    k: Arc<dyn KindCache>,
) {
    match routes.get(k.plural()) {
        Some(&i) => {
            if let Some(slot) = kinds.get_mut(i) {
                *slot = k;
            }
        }
        None => {
            routes.insert(k.plural(), kinds.len());
            kinds.push(k);
        }
    }
}

/// Drops the caches of the kinds that left.
fn leave(
    shared: &Shared,
    kinds: &mut Vec<Arc<dyn KindCache>>,
    routes: &mut HashMap<&'static str, usize>,
) {
    let leaving = std::mem::take(
        &mut *shared
            .leaving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if leaving.is_empty() {
        return;
    }
    kinds.retain(|k| !leaving.iter().any(|p| p == k.plural()));
    routes.clear();
    for (i, k) in kinds.iter().enumerate() {
        routes.insert(k.plural(), i);
    }
}

/// Lists every cache at storage's current revision, which becomes the
/// progress.
async fn list_all(shared: &Shared, kinds: &[Arc<dyn KindCache>]) -> Result<Revision, StorageError> {
    let at = shared.storage.current_revision().await?;
    for k in kinds {
        k.load(&*shared.storage, at).await?;
    }
    shared.progress.send_if_modified(|p| {
        let more = at > *p;
        if more {
            *p = at;
        }
        more
    });
    Ok(at)
}

/// Hands each event to its kind's cache; returns the last revision seen.
fn route(
    kinds: &[Arc<dyn KindCache>],
    routes: &HashMap<&'static str, usize>,
    events: Vec<Event>,
) -> Revision {
    let last = events.last().map(Event::revision).unwrap_or(0);
    let mut by_kind: Vec<(usize, Vec<Event>)> = Vec::new();
    for e in events {
        let Some(&i) = keys::plural_of(&e.kv.key).and_then(|p| routes.get(p)) else {
            continue;
        };
        match by_kind.iter_mut().find(|(k, _)| *k == i) {
            Some((_, v)) => v.push(e),
            None => by_kind.push((i, vec![e])),
        }
    }
    for (i, events) in by_kind {
        if let Some(kind) = kinds.get(i) {
            kind.apply(events);
        }
    }
    last
}

/// Writes a progress marker whenever a consistent read waits for a revision
/// that neither the feed nor an earlier marker has reached.
async fn write_markers(shared: Arc<Shared>) {
    let mut requested = shared.requested.subscribe();
    let mut progress = shared.progress.subscribe();
    // Revision of the last marker written: reads asked for before it was
    // written are covered by it (it is newer than anything they saw).
    let mut written: Revision = 0;
    loop {
        if requested.changed().await.is_err() {
            return;
        }
        let wanted = *requested.borrow_and_update();
        if wanted <= written || *progress.borrow() >= wanted {
            continue;
        }
        // Counted before the put: a read the marker frees may look at the
        // counter before this task runs again.
        shared.counters.markers.fetch_add(1, Ordering::Relaxed);
        match shared
            .storage
            .put(keys::PROGRESS_MARKER, bytes::Bytes::new())
            .await
        {
            Ok(kv) => {
                written = kv.mod_revision;
                let back = tokio::time::timeout(
                    shared.config.stall_timeout,
                    progress.wait_for(|p| *p >= written),
                )
                .await;
                if back.is_err() {
                    // The watch is not delivering: open it again (elsewhere).
                    written = 0;
                    shared.stalled.notify_one();
                }
            }
            Err(e) => {
                shared.counters.markers.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "watch cache: cannot write a progress marker");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Exponential backoff between 100 ms and 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::ZERO)
    }
}

impl Backoff {
    async fn wait(&mut self) {
        self.0 = (self.0 * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::time::sleep(self.0).await;
    }

    fn reset(&mut self) {
        self.0 = Duration::ZERO;
    }
}
