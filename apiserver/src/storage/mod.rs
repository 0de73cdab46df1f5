//! The storage contract: a key-value store with etcd v3 semantics (one global
//! revision, compare-and-swap, watch from a revision with previous values,
//! compaction). Two backends implement it, [`embedded`] and [`etcd`]; the
//! cacher decorates it one level up. This module knows bytes and revisions,
//! never API objects.

pub mod compactor;
pub mod embedded;
pub mod etcd;
pub mod metered;

#[cfg(any(test, feature = "testing"))]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "test support, built only for tests: a failed step fails the test"
)]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "test support, built only for tests: a failed step fails the test"
)]
pub mod faults;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// A storage revision. Every successful write gets the next one.
pub type Revision = i64;

/// A key with its value and revisions, as etcd reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty for deletions in watch events).
    pub value: Bytes,
    /// Revision of the key's creation.
    pub create_revision: Revision,
    /// Revision of the key's last modification.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 on creation).
    pub version: i64,
}

/// What a range reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// Keys starting with this prefix.
    pub prefix: String,
    /// Start after this key (exclusive), for paging; empty starts at the prefix.
    pub start_after: String,
    /// Read at this revision; `None` reads the latest.
    pub revision: Option<Revision>,
    /// Maximum keys to return; 0 means no limit.
    pub limit: usize,
}

/// What a range returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// Matching keys in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys follow the limit.
    pub more: bool,
    /// The revision the read reflects.
    pub revision: Revision,
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change in a storage watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for deletes, its value is empty and its
    /// mod_revision is the revision of the deletion.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// Revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The result of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Revision of the deletion.
    pub revision: Revision,
    /// The key as it was before the deletion.
    pub prev: KeyValue,
}

/// One item of a watch: events in revision order, and how far the watch has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchBatch {
    /// Changes under the watched prefix, in revision order (may be empty).
    pub events: Vec<Event>,
    /// Every change under the prefix with a revision up to this one has been
    /// delivered. Backends that can tell (embedded) report the store's
    /// revision even when no watched key changed; others report the last
    /// event's revision.
    pub progress: Revision,
}

/// A stream of watch batches.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, StorageError>> + Send>>;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The key exists already.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// A compare-and-swap saw another revision.
    #[error("key {key} changed: expected revision {expected}, found {}", current.mod_revision)]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The key as it is now.
        current: Box<KeyValue>,
    },
    /// The revision asked for is older than what is kept.
    #[error("revision {requested} has been compacted; the oldest kept is {compacted}")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The compaction revision.
        compacted: Revision,
    },
    /// The revision asked for is newer than the store's.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// The backend cannot be reached or failed.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data could not be decoded.
    #[error("stored data for {key} is corrupt: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl StorageError {
    /// An unavailable error from any cause.
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(e))
    }
}

/// Result of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A key-value store with etcd v3 semantics.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Reads one key at the latest revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Reads keys under a prefix, in key order, optionally at a past revision.
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse>;
    /// Creates a key; fails with `AlreadyExists` if it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;
    /// Replaces a key's value if its mod_revision equals `expected`.
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue>;
    /// Deletes a key, if its mod_revision equals `expected` when given.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted>;
    /// Writes a key whatever it holds (etcd's plain put).
    async fn put(&self, key: &str, value: Bytes) -> Result<KeyValue>;
    /// Streams every change under `prefix` with revision >= `start` (with
    /// previous values). `start` older than the compaction is `Compacted`.
    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream>;
    /// Like [`watch`](Self::watch), for a caller that keeps every key's
    /// state itself: events may come without previous values, which spares
    /// etcd a read per event.
    async fn watch_without_prev(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        self.watch(prefix, start).await
    }
    /// Discards history before `revision`.
    async fn compact(&self, revision: Revision) -> Result<()>;
    /// The latest revision, read from the backend (a quorum read on etcd).
    async fn current_revision(&self) -> Result<Revision>;
    /// Whether watches report progress past revisions of other prefixes
    /// (so a per-kind cache can tell it is fresh without reading storage).
    fn reports_progress(&self) -> bool;
}

/// The exclusive end of the key range of `prefix` (etcd's "prefix end").
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
