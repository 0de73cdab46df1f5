//! One client watch on a cacher: its filter, its own bounded input channel of
//! encoded events, and the stream the RPC reads (initial events first, then
//! live ones). It must not touch the cache or other watchers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::error::ApiError;
use crate::object_store::predicate::Predicate;
use crate::storage::Revision;

/// Why a watcher stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Still open (or the client went away).
    Open = 0,
    /// Its buffer stayed full beyond the dispatch budget.
    TooSlow = 1,
    /// The cache re-listed storage; the client must re-watch.
    Relist = 2,
}

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
    tx: mpsc::Sender<Bytes>,
    closed: Arc<AtomicU8>,
}

impl CacheWatcher {
    /// A watcher and the receiving end its stream reads.
    pub fn new(
        id: u64,
        predicate: Predicate,
        min_revision: Revision,
        allow_bookmarks: bool,
        buffer: usize,
    ) -> (Self, mpsc::Receiver<Bytes>, Arc<AtomicU8>) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let closed = Arc::new(AtomicU8::new(CloseReason::Open as u8));
        let everything = predicate.labels.is_everything()
            && predicate.fields.is_everything()
            && predicate.namespace.is_none();
        (
            Self {
                id,
                predicate,
                everything,
                min_revision,
                allow_bookmarks,
                tx,
                closed: closed.clone(),
            },
            rx,
            closed,
        )
    }

    /// Sends without waiting.
    pub fn try_send(&self, frame: Bytes) -> Result<(), TrySendError<Bytes>> {
        self.tx.try_send(frame)
    }

    /// Sends, waiting until `deadline` at most; false if it did not fit in time.
    pub async fn send_until(&self, frame: Bytes, deadline: tokio::time::Instant) -> bool {
        matches!(
            tokio::time::timeout_at(deadline, self.tx.send(frame)).await,
            Ok(Ok(()))
        )
    }

    /// Marks why the watcher is closing; dropping it then ends its stream.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.closed.compare_exchange(
            CloseReason::Open as u8,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
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

/// The frames a client receives: `initial` (lazily), then `live` until the
/// watcher is closed; a watcher closed for being slow ends with an error.
/// Dropping the stream (the client went away) runs `guard`.
pub fn watcher_stream(
    initial: impl Iterator<Item = Bytes> + Send + 'static,
    live: mpsc::Receiver<Bytes>,
    closed: Arc<AtomicU8>,
    guard: OnDrop,
) -> impl Stream<Item = Result<Bytes, ApiError>> + Send + 'static {
    let end = futures::stream::once(async move {
        let _guard = guard;
        if closed.load(Ordering::Acquire) == CloseReason::TooSlow as u8 {
            Some(Err(ApiError::ResourceExhausted {
                message: "watch closed: the client did not keep up with events; watch again from the last resource version"
                    .into(),
                retry_after: None,
            }))
        } else {
            None
        }
    })
    .filter_map(futures::future::ready);
    futures::stream::iter(initial.map(Ok))
        .chain(tokio_stream::wrappers::ReceiverStream::new(live).map(Ok))
        .chain(end)
}
