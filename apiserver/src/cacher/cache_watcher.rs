//! One client watch on a cacher: its filter, a cursor into the cacher's
//! shared [`DeliveryLog`], and the stream the RPC reads (initial events
//! first, then live ones). A watcher holds no queue of its own: the
//! dispatcher only tells it where the first event it may want sits in the
//! log, and the watcher's own task (the RPC's, on any runtime worker)
//! filters and frames from there. It must not touch the cache or other
//! watchers.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use futures::task::AtomicWaker;
use skiff::Resource;

use super::delivery::{DeliveryLog, Lagged};
use crate::error::ApiError;
use crate::object_store::predicate::Predicate;
use crate::storage::Revision;

/// Why a watcher stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Still open (or the client went away).
    Open = 0,
    /// It fell further behind than the event log holds.
    TooSlow = 1,
    /// The cache re-listed storage; the client must re-watch.
    Relist = 2,
}

/// A short hash of a namespace or trigger value: what the dispatcher and
/// the log compare instead of strings (a collision only costs a predicate
/// check, which decides).
pub fn slot_hash(value: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Where a watcher is registered: which events can concern it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Every event.
    All,
    /// Events of one namespace (by [`slot_hash`]).
    Namespace(u64),
    /// Events whose object has, or had, one trigger value (by [`slot_hash`]).
    Trigger(u64),
}

/// "Nothing pending" in [`CacheWatcher`]'s pending position.
const NONE: u64 = u64::MAX;

/// The dispatcher's side of a client watch.
pub struct CacheWatcher {
    /// Unique id within its cacher.
    pub id: u64,
    /// Which objects it wants.
    pub predicate: Predicate,
    /// Whether the predicate accepts everything (skips per-event checks).
    pub everything: bool,
    /// Events before this revision reached it as initial events.
    pub min_revision: Revision,
    /// Whether it asked for periodic bookmarks.
    pub allow_bookmarks: bool,
    /// Its slot in the watcher index.
    pub slot: Slot,
    /// Log position of the first event it was told of and has not read.
    pending_from: AtomicU64,
    closed: AtomicU8,
    waker: AtomicWaker,
}

impl CacheWatcher {
    /// A watcher whose live events start at log position `cursor`;
    /// `trigger_field` is the field its kind indexes watchers by.
    pub fn new(
        id: u64,
        predicate: Predicate,
        min_revision: Revision,
        allow_bookmarks: bool,
        trigger_field: Option<&'static str>,
        cursor: u64,
    ) -> Self {
        let everything = predicate.is_everything();
        let slot = match trigger_field.and_then(|f| predicate.fields.exact(f)) {
            Some(v) => Slot::Trigger(slot_hash(v)),
            None => match &predicate.namespace {
                Some(ns) => Slot::Namespace(slot_hash(ns)),
                None => Slot::All,
            },
        };
        Self {
            id,
            predicate,
            everything,
            min_revision,
            allow_bookmarks,
            slot,
            // Events logged between registration and the first poll were
            // sent before the watcher was in the index: read from the start.
            pending_from: AtomicU64::new(cursor),
            closed: AtomicU8::new(CloseReason::Open as u8),
            waker: AtomicWaker::new(),
        }
    }

    /// Tells the watcher that log position `seq` may concern it, waking
    /// its task unless it already had something to read. `oldest` is the
    /// log's first position: a watcher whose unread events fell out of it
    /// is closed. Returns whether it was closed for being slow just now.
    pub fn notify(&self, seq: u64, oldest: u64) -> bool {
        let prev = self.pending_from.fetch_min(seq, Ordering::AcqRel);
        if prev == NONE {
            self.waker.wake();
            false
        } else if prev < oldest {
            self.close(CloseReason::TooSlow)
        } else {
            false
        }
    }

    /// Marks why the watcher is closing and wakes its stream, which then
    /// ends. Returns whether this call closed it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let closed = self
            .closed
            .compare_exchange(
                CloseReason::Open as u8,
                reason as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        self.waker.wake();
        closed
    }

    fn close_reason(&self) -> CloseReason {
        match self.closed.load(Ordering::Acquire) {
            0 => CloseReason::Open,
            1 => CloseReason::TooSlow,
            _ => CloseReason::Relist,
        }
    }

    /// Whether an event with these slot hashes can concern the watcher.
    pub fn in_slot(&self, namespace: u64, triggers: &[Option<u64>; 2]) -> bool {
        match self.slot {
            Slot::All => true,
            Slot::Namespace(h) => namespace == h,
            Slot::Trigger(h) => triggers.contains(&Some(h)),
        }
    }
}

/// Runs a closure when dropped (unregisters a watcher whose client went away).
pub struct OnDrop(Option<Box<dyn FnOnce() + Send + Sync>>);

impl OnDrop {
    /// Calls `f` on drop.
    pub fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(f)))
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Frames a watcher takes from the log per look (bounds the time a read
/// lock is held and the frames held per watcher).
const BATCH: usize = 64;

/// The frames a client receives: `initial` (lazily), then live events read
/// from the log until the watcher is closed; a watcher closed for being
/// slow ends with a resumable error. Dropping the stream (the client went
/// away) runs the guard.
pub struct WatcherStream<K> {
    initial: Option<Box<dyn Iterator<Item = Bytes> + Send>>,
    watcher: Arc<CacheWatcher>,
    log: Arc<DeliveryLog<K>>,
    cursor: u64,
    ready: VecDeque<Bytes>,
    finished: bool,
    _guard: OnDrop,
}

impl<K: Resource> WatcherStream<K> {
    /// The stream of `watcher`, whose live events start at log position
    /// `cursor`, after `initial`.
    pub fn new(
        initial: Box<dyn Iterator<Item = Bytes> + Send>,
        watcher: Arc<CacheWatcher>,
        log: Arc<DeliveryLog<K>>,
        cursor: u64,
        guard: OnDrop,
    ) -> Self {
        Self {
            initial: Some(initial),
            watcher,
            log,
            cursor,
            ready: VecDeque::new(),
            finished: false,
            _guard: guard,
        }
    }
}

fn too_slow() -> ApiError {
    ApiError::ResourceExhausted {
        message: "watch closed: the client did not keep up with events; watch again from the last resource version"
            .into(),
        retry_after: None,
    }
}

impl<K: Resource> Stream for WatcherStream<K> {
    type Item = Result<Bytes, ApiError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(initial) = &mut this.initial {
            if let Some(frame) = initial.next() {
                return Poll::Ready(Some(Ok(frame)));
            }
            this.initial = None;
        }
        loop {
            if let Some(frame) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            let w = &this.watcher;
            w.waker.register(cx.waker());
            match w.close_reason() {
                CloseReason::Open => {}
                CloseReason::TooSlow => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(too_slow())));
                }
                CloseReason::Relist => {
                    this.finished = true;
                    return Poll::Ready(None);
                }
            }
            let from = w.pending_from.swap(NONE, Ordering::AcqRel);
            if from == NONE {
                return Poll::Pending;
            }
            match this
                .log
                .collect(w, from.max(this.cursor), BATCH, &mut this.ready)
            {
                Ok((next, more)) => {
                    this.cursor = next;
                    if more {
                        w.pending_from.fetch_min(next, Ordering::AcqRel);
                    }
                }
                Err(Lagged) => {
                    if w.close(CloseReason::TooSlow) {
                        this.log.stats.closed_slow.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
