//! Broadcast of each event to the watchers that can want it. Each cacher
//! has one dispatcher task (`run`) that follows its watch cache's ring:
//! it sends every event after the last one it sent, so the feed that fills
//! the cache never waits for watchers. An index of triggers (namespace, and
//! for pods `spec.nodeName`) picks the candidate watchers; each gets a
//! non-blocking send first, then the blocked ones share a small time
//! budget, and whoever still cannot take the event is closed rather than
//! allowed to stall everyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use skiff::Resource;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::cache_watcher::{CacheWatcher, CloseReason};
use super::watch_cache::{CacheEvent, CacheMiss};
use super::{CacherConfig, Shared};
use crate::storage::Revision;

/// Where a watcher is registered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    All,
    Namespace(String),
    Trigger(String),
}

/// Counters of a dispatcher.
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Events handed to watchers.
    pub delivered: AtomicU64,
    /// Watchers closed because their buffer stayed full.
    pub closed_slow: AtomicU64,
    /// Events processed.
    pub events: AtomicU64,
    /// Watchers examined for an event (what the trigger index keeps small).
    pub considered: AtomicU64,
}

/// The watchers of one kind, indexed by trigger.
pub struct WatcherIndex {
    trigger_field: Option<&'static str>,
    slots: HashMap<Slot, HashMap<u64, Arc<CacheWatcher>>>,
    where_is: HashMap<u64, Slot>,
}

impl WatcherIndex {
    /// An empty index; `trigger_field` is a field worth indexing watchers by.
    pub fn new(trigger_field: Option<&'static str>) -> Self {
        Self {
            trigger_field,
            slots: HashMap::new(),
            where_is: HashMap::new(),
        }
    }

    /// Number of watchers.
    pub fn len(&self) -> usize {
        self.where_is.len()
    }

    /// Whether there are no watchers.
    pub fn is_empty(&self) -> bool {
        self.where_is.is_empty()
    }

    fn slot_for(&self, w: &CacheWatcher) -> Slot {
        if let Some(field) = self.trigger_field
            && let Some(v) = w.predicate.fields.exact(field)
        {
            return Slot::Trigger(v.to_owned());
        }
        match &w.predicate.namespace {
            Some(ns) => Slot::Namespace(ns.clone()),
            None => Slot::All,
        }
    }

    /// Adds a watcher.
    pub fn insert(&mut self, w: Arc<CacheWatcher>) {
        let slot = self.slot_for(&w);
        self.where_is.insert(w.id, slot.clone());
        self.slots.entry(slot).or_default().insert(w.id, w);
    }

    /// Removes a watcher; returns it if it was there.
    pub fn remove(&mut self, id: u64) -> Option<Arc<CacheWatcher>> {
        let slot = self.where_is.remove(&id)?;
        let map = self.slots.get_mut(&slot)?;
        let w = map.remove(&id);
        if map.is_empty() {
            self.slots.remove(&slot);
        }
        w
    }

    /// Removes every watcher, closing each with `reason`.
    pub fn close_all(&mut self, reason: CloseReason) {
        for (_, map) in self.slots.drain() {
            for (_, w) in map {
                w.close(reason);
            }
        }
        self.where_is.clear();
    }

    /// Every watcher (for bookmarks).
    pub fn all(&self) -> impl Iterator<Item = &Arc<CacheWatcher>> {
        self.slots.values().flat_map(|m| m.values())
    }
}

/// A budget of time the dispatcher may spend waiting for slow watchers:
/// refilled at `refill` per second up to `max`.
#[derive(Debug)]
pub struct TimeBudget {
    available: Duration,
    max: Duration,
    refill: Duration,
    last: Instant,
}

impl TimeBudget {
    /// A full budget of `max`, refilled at `max` per second.
    pub fn new(max: Duration) -> Self {
        Self {
            available: max,
            max,
            refill: max,
            last: Instant::now(),
        }
    }

    /// Takes all available time.
    pub fn take(&mut self) -> Duration {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last);
        self.last = now;
        self.available =
            (self.available + self.refill.mul_f64(elapsed.as_secs_f64().min(1.0))).min(self.max);
        std::mem::take(&mut self.available)
    }

    /// Gives back time that was not used.
    pub fn give_back(&mut self, unused: Duration) {
        self.available = (self.available + unused).min(self.max);
    }
}

/// Watchers an event is handed to before the dispatcher lets other tasks
/// (requests) run.
const DISPATCH_CHUNK: usize = 256;

/// Sends `event` to every interested watcher of `index`. With `paced`, the
/// watchers get it in chunks with other tasks (requests) let in between:
/// the fan-out of a lone event then never holds a write back for long,
/// while a run of queued events (sent unpaced) keeps batching.
pub async fn dispatch<K: Resource>(
    index: &Mutex<WatcherIndex>,
    budget: &mut TimeBudget,
    stats: &DispatchStats,
    event: &CacheEvent<K>,
    paced: bool,
) {
    stats.events.fetch_add(1, Ordering::Relaxed);
    let mut targets: Vec<(Arc<CacheWatcher>, Bytes)> = Vec::new();
    let mut blocked: Vec<(Arc<CacheWatcher>, Bytes)> = Vec::new();
    let mut gone: Vec<u64> = Vec::new();
    let mut delivered = 0u64;
    let mut considered = 0u64;
    {
        let index = index.lock().expect("watcher index lock");
        if index.is_empty() {
            return;
        }
        let mut slots: Vec<Slot> = vec![Slot::All];
        let ns = event.namespace();
        if !ns.is_empty() {
            slots.push(Slot::Namespace(ns.to_owned()));
        }
        if let Some(field) = index.trigger_field {
            let cur = event.current.as_ref().and_then(|c| c.object.field(field));
            let prev = event.prev.as_ref().and_then(|c| c.object.field(field));
            if let Some(v) = &cur {
                slots.push(Slot::Trigger(v.to_string()));
            }
            if let Some(v) = prev
                && Some(&v) != cur.as_ref()
            {
                slots.push(Slot::Trigger(v.into_owned()));
            }
        }
        for slot in &slots {
            let Some(watchers) = index.slots.get(slot) else {
                continue;
            };
            considered += watchers.len() as u64;
            for w in watchers.values() {
                if event.revision < w.min_revision {
                    continue;
                }
                if let Some(frame) = event.frame_for(w.everything, &w.predicate) {
                    targets.push((w.clone(), frame));
                }
            }
        }
    }
    let chunk = if paced { DISPATCH_CHUNK } else { usize::MAX };
    let mut chunks = targets.chunks(chunk.max(1)).peekable();
    while let Some(chunk) = chunks.next() {
        for (w, frame) in chunk {
            match w.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full(frame)) => blocked.push((w.clone(), frame)),
                Err(TrySendError::Closed(_)) => gone.push(w.id),
            }
        }
        if chunks.peek().is_some() {
            tokio::task::yield_now().await;
        }
    }
    if !blocked.is_empty() {
        let available = budget.take();
        let start = Instant::now();
        let deadline = start + available;
        for (w, frame) in blocked {
            if w.send_until(frame, deadline).await {
                delivered += 1;
            } else {
                w.close(CloseReason::TooSlow);
                stats.closed_slow.fetch_add(1, Ordering::Relaxed);
                gone.push(w.id);
            }
        }
        budget.give_back(available.saturating_sub(start.elapsed()));
    }
    stats.delivered.fetch_add(delivered, Ordering::Relaxed);
    stats.considered.fetch_add(considered, Ordering::Relaxed);
    if !gone.is_empty() {
        let mut index = index.lock().expect("watcher index lock");
        for id in gone {
            index.remove(id);
        }
    }
}

/// Follows the cache of `shared` and broadcasts its events, and bookmarks
/// every `bookmark_interval`, until the cacher is dropped.
pub(super) async fn run<K: Resource>(shared: Arc<Shared<K>>, config: CacherConfig) {
    let mut budget = TimeBudget::new(config.dispatch_budget);
    let mut ticker = tokio::time::interval(config.bookmark_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // The listed state (epoch) and the revision of the last event sent.
    let mut cursor: Option<(u64, Revision)> = None;
    loop {
        let bookmark_due = tokio::select! {
            _ = shared.wake.notified() => false,
            _ = ticker.tick() => true,
        };
        loop {
            let (epoch, events, revision) = {
                let cache = shared.lock();
                if !cache.ready() {
                    break;
                }
                let epoch = cache.epoch();
                let after = match cursor {
                    Some((e, r)) if e == epoch => r,
                    // A new listed state: its watchers start from it.
                    _ => cache.oldest(),
                };
                match cache.events_after(after) {
                    Ok(events) => (epoch, events, cache.revision()),
                    Err(CacheMiss::TooOld { .. }) => {
                        // The ring moved past events not yet sent: nobody can
                        // vouch for the watchers' streams any more.
                        tracing::warn!(
                            kind = K::INFO.kind,
                            "watch cache: dispatch fell behind the event ring; ending every watch"
                        );
                        shared
                            .watchers
                            .lock()
                            .expect("watcher index lock")
                            .close_all(CloseReason::Relist);
                        cursor = Some((epoch, cache.revision()));
                        continue;
                    }
                    Err(CacheMiss::TooNew { .. }) => break,
                }
            };
            let Some(last) = events.last().map(|e| e.revision) else {
                if bookmark_due {
                    let object = crate::object_store::bookmark_object::<K>(revision, false);
                    let frame = skiff::wire::encode_watch_event(
                        skiff::api::meta::v1::EventType::Bookmark,
                        &prost::Message::encode_to_vec(&object),
                    );
                    bookmark(&shared.watchers, revision, &frame);
                }
                break;
            };
            for (i, event) in events.iter().enumerate() {
                // Only the last of what was waiting is paced: under a stream
                // of events, watchers take several per wake-up.
                let paced = i + 1 == events.len();
                dispatch(&shared.watchers, &mut budget, &shared.stats, event, paced).await;
            }
            cursor = Some((epoch, last));
        }
    }
}

/// Sends a bookmark at `revision` to every watcher that asked for them and
/// has room; watchers with a full buffer simply miss this one.
pub fn bookmark(index: &Mutex<WatcherIndex>, revision: Revision, frame: &Bytes) {
    let index = index.lock().expect("watcher index lock");
    for w in index.all() {
        if w.allow_bookmarks && revision + 1 >= w.min_revision {
            let _ = w.try_send(frame.clone());
        }
    }
}
