//! Broadcast of each event to the watchers that can want it. Each cacher
//! has one dispatcher task (`run`) that follows its watch cache's ring: it
//! appends every event after the last one it handled to the kind's
//! [`DeliveryLog`], so the feed that fills the cache never waits for
//! watchers. An index of slots (namespace, and for pods `spec.nodeName`)
//! picks the candidate watchers, and each is only told where in the log its
//! next event may be: filtering and framing happen on the watchers' own
//! tasks, spread over the runtime, and no watcher can stall another — one
//! that falls further behind than the log holds is closed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use skiff::Resource;

use super::cache_watcher::{CacheWatcher, CloseReason, Slot};
use super::delivery::{DeliveryLog, Entry};
use super::watch_cache::{CacheEvent, CacheMiss};
use super::{CacherConfig, Shared};
use crate::storage::Revision;

/// The watchers of one kind, indexed by slot.
pub struct WatcherIndex {
    slots: HashMap<Slot, HashMap<u64, Arc<CacheWatcher>>>,
    where_is: HashMap<u64, Slot>,
}

impl Default for WatcherIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl WatcherIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
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

    /// Adds a watcher.
    pub fn insert(&mut self, w: Arc<CacheWatcher>) {
        self.where_is.insert(w.id, w.slot);
        self.slots.entry(w.slot).or_default().insert(w.id, w);
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

/// Appends `events` to `log` (kept as long as `capacity`) and tells every
/// watcher in a slot they touch where its first one is.
pub fn dispatch<K: Resource>(
    index: &Mutex<WatcherIndex>,
    log: &DeliveryLog<K>,
    trigger_field: Option<&'static str>,
    events: &[Arc<CacheEvent<K>>],
    capacity: usize,
) {
    if events.is_empty() {
        return;
    }
    let stats = &log.stats;
    stats
        .events
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    // Slots each event touches, computed before any lock is taken.
    let entries: Vec<Entry<K>> = events
        .iter()
        .map(|e| Entry::event(e.clone(), trigger_field))
        .collect();
    let touched: Vec<(Revision, [Option<Slot>; 4])> = entries
        .iter()
        .map(|e| match e {
            Entry::Event {
                event,
                namespace,
                triggers,
            } => (
                event.revision,
                [
                    Some(Slot::All),
                    (!event.namespace().is_empty()).then_some(Slot::Namespace(*namespace)),
                    triggers[0].map(Slot::Trigger),
                    triggers[1].map(Slot::Trigger),
                ],
            ),
            Entry::Bookmark { revision, .. } => (*revision, [None; 4]),
        })
        .collect();
    let (start, oldest) = log.append(entries, capacity);
    let index = index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if index.is_empty() {
        return;
    }
    let mut considered = 0u64;
    let mut closed = 0u64;
    for (i, (revision, slots)) in touched.iter().enumerate() {
        let seq = start + i as u64;
        for slot in slots.iter().flatten() {
            let Some(watchers) = index.slots.get(slot) else {
                continue;
            };
            considered += watchers.len() as u64;
            for w in watchers.values() {
                if *revision >= w.min_revision && w.notify(seq, oldest) {
                    closed += 1;
                }
            }
        }
    }
    stats.considered.fetch_add(considered, Ordering::Relaxed);
    stats.closed_slow.fetch_add(closed, Ordering::Relaxed);
}

/// Follows the cache of `shared` and logs its events for its watchers,
/// and bookmarks every `bookmark_interval`, until the cacher is dropped.
pub(super) async fn run<K: crate::registry::strategy::Strategy>(
    shared: Arc<Shared<K>>,
    config: CacherConfig,
) {
    let mut ticker = tokio::time::interval(config.bookmark_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // The listed state (epoch) and the revision of the last event logged.
    let mut cursor: Option<(u64, Revision)> = None;
    loop {
        let bookmark_due = tokio::select! {
            _ = shared.wake.notified() => false,
            _ = ticker.tick() => true,
        };
        loop {
            let (epoch, events, revision, capacity) = {
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
                    Ok(events) => (epoch, events, cache.revision(), cache.ring_usage().1),
                    Err(CacheMiss::TooOld { .. }) => {
                        // The ring moved past events not yet logged: nobody
                        // can vouch for the watchers' streams any more.
                        tracing::warn!(
                            kind = shared.kind.info.kind,
                            "watch cache: dispatch fell behind the event ring; ending every watch"
                        );
                        shared
                            .watchers
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
                    let frame = skiff::wire::frame_watch_event(
                        skiff::api::meta::v1::EventType::Bookmark,
                        &prost::Message::encode_to_vec(&object),
                    );
                    bookmark(&shared.watchers, &shared.log, revision, frame, capacity);
                }
                break;
            };
            dispatch(
                &shared.watchers,
                &shared.log,
                K::TRIGGER_FIELD,
                &events,
                capacity,
            );
            cursor = Some((epoch, last));
            // Let the watchers (and requests) run before the next batch.
            tokio::task::yield_now().await;
        }
    }
}

/// Logs a bookmark at `revision` and tells every watcher that asked for
/// bookmarks.
pub fn bookmark<K: Resource>(
    index: &Mutex<WatcherIndex>,
    log: &DeliveryLog<K>,
    revision: Revision,
    frame: Bytes,
    capacity: usize,
) {
    let (seq, oldest) = log.append([Entry::Bookmark { revision, frame }], capacity);
    let index = index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut closed = 0;
    for w in index.all() {
        if w.allow_bookmarks && revision + 1 >= w.min_revision && w.notify(seq, oldest) {
            closed += 1;
        }
    }
    log.stats.closed_slow.fetch_add(closed, Ordering::Relaxed);
}
