//! The log every watcher of one kind reads its live events from: a
//! sequence-numbered window of the watch cache's recent events, as long as
//! the cache's ring, appended to by the dispatcher and read by each
//! watcher's own task through its cursor. Holding an event here costs one
//! entry for all watchers (the event and its encoded frames are shared),
//! so an idle watcher costs no buffer, and a slow one only a position.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use skiff::Resource;

use super::cache_watcher::{CacheWatcher, slot_hash};
use super::watch_cache::CacheEvent;
use crate::storage::Revision;

/// Counters of one kind's delivery.
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Events handed to watchers.
    pub delivered: AtomicU64,
    /// Watchers closed because they fell behind the log.
    pub closed_slow: AtomicU64,
    /// Events processed.
    pub events: AtomicU64,
    /// Watchers examined for events (what the trigger index keeps small).
    pub considered: AtomicU64,
}

/// One position of the log.
pub enum Entry<K> {
    /// A change, with the slot hashes of its namespace and trigger values
    /// (current and previous object).
    Event {
        /// The change, shared with the cache's ring.
        event: Arc<CacheEvent<K>>,
        /// [`slot_hash`] of its namespace.
        namespace: u64,
        /// [`slot_hash`] of the trigger field's current and previous value.
        triggers: [Option<u64>; 2],
    },
    /// A bookmark at a revision, for watchers that asked for them.
    Bookmark {
        /// The revision it vouches for.
        revision: Revision,
        /// Its encoded watch event.
        frame: Bytes,
    },
}

impl<K: Resource> Entry<K> {
    /// The entry of `event`, hashed for a kind indexed by `trigger_field`.
    pub fn event(event: Arc<CacheEvent<K>>, trigger_field: Option<&'static str>) -> Self {
        let namespace = slot_hash(event.namespace());
        let mut triggers = [None, None];
        if let Some(field) = trigger_field {
            let cur = event.current.as_ref().and_then(|c| c.kept_field(field));
            let prev = event.prev.as_ref().and_then(|c| c.kept_field(field));
            triggers[0] = cur.map(slot_hash);
            if prev != cur {
                triggers[1] = prev.map(slot_hash);
            }
        }
        Entry::Event {
            event,
            namespace,
            triggers,
        }
    }
}

/// A watcher's cursor points before the log's first entry: events it may
/// have wanted are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

struct Window<K> {
    /// Position of `entries[0]`.
    first: u64,
    entries: VecDeque<Entry<K>>,
}

/// The sequence-numbered event log of one kind.
pub struct DeliveryLog<K> {
    window: RwLock<Window<K>>,
    /// Delivery counters of the kind.
    pub stats: DispatchStats,
}

impl<K: Resource> Default for DeliveryLog<K> {
    fn default() -> Self {
        Self {
            window: RwLock::new(Window {
                first: 0,
                entries: VecDeque::new(),
            }),
            stats: DispatchStats::default(),
        }
    }
}

impl<K: Resource> DeliveryLog<K> {
    /// The position the next entry will take.
    pub fn end(&self) -> u64 {
        let w = self
            .window
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.first + w.entries.len() as u64
    }

    /// Appends `entries`, keeping at most `capacity` in all. Returns the
    /// position of the first appended and the log's first position after.
    pub fn append(
        &self,
        entries: impl IntoIterator<Item = Entry<K>>,
        capacity: usize,
    ) -> (u64, u64) {
        let mut w = self
            .window
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = w.first + w.entries.len() as u64;
        w.entries.extend(entries);
        let excess = w.entries.len().saturating_sub(capacity.max(1));
        if excess > 0 {
            w.entries.drain(..excess);
            w.first += excess as u64;
        }
        if w.entries.capacity() > 4 * capacity.max(1024) {
            // The ring shrank after churn: give the memory back too.
            w.entries.shrink_to(capacity.max(1024));
        }
        (start, w.first)
    }

    /// Frames for `watcher` from position `from` on, at most `max` of them,
    /// into `out`. Returns the position after the last one examined and
    /// whether more entries follow it.
    pub fn collect(
        &self,
        watcher: &CacheWatcher,
        from: u64,
        max: usize,
        out: &mut VecDeque<Bytes>,
    ) -> Result<(u64, bool), Lagged> {
        let w = self
            .window
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if from < w.first {
            return Err(Lagged);
        }
        let end = w.first + w.entries.len() as u64;
        let mut pos = from;
        let mut taken = 0;
        while pos < end && taken < max {
            let Some(entry) = w.entries.get((pos - w.first) as usize) else {
                break;
            };
            pos += 1;
            let frame = match entry {
                Entry::Event {
                    event,
                    namespace,
                    triggers,
                } => {
                    if event.revision < watcher.min_revision
                        || !watcher.in_slot(*namespace, triggers)
                    {
                        continue;
                    }
                    event.frame_for(watcher.everything, &watcher.predicate)
                }
                Entry::Bookmark { revision, frame } => (watcher.allow_bookmarks
                    && revision + 1 >= watcher.min_revision)
                    .then(|| frame.clone()),
            };
            if let Some(f) = frame {
                out.push_back(f);
                taken += 1;
            }
        }
        self.stats
            .delivered
            .fetch_add(taken as u64, std::sync::atomic::Ordering::Relaxed);
        Ok((pos, pos < end))
    }
}
