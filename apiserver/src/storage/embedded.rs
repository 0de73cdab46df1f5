//! Embedded storage: a durable store inside the API server process, on redb.
//!
//! Tables: `kv` holds the latest record of every key; `log` holds one record
//! per revision (the change and the key's previous state) until compaction,
//! which serves watches from a past revision and reads at a past revision;
//! `meta` holds the current and compacted revisions. Compaction takes
//! effect at once (reads and watches before the compacted revision are
//! refused) while its log records are removed a bounded number per commit,
//! so that a compaction never holds the writes of one commit for long.
//!
//! All writes go through one writer thread that takes every request waiting
//! in its queue and commits them in one transaction (one fsync for the
//! batch), then publishes the batch's events to watchers. Woken by a batch's
//! first write, the writer first lets the request tasks that are ready run,
//! so that a busy core commits a hundred writes at a time rather than a
//! handful. An acknowledged
//! write has been committed with `Durability::Immediate`.
//!
//! Owns its files and its writer thread; must not know about objects or kinds
//! (keys and bytes only).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use skiff::metrics::global;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Deleted, Event, EventKind, KeyValue, RangeRequest, RangeResponse, Result, Revision, Storage,
    StorageError, WatchBatch, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Most write requests committed in one transaction.
const MAX_BATCH: usize = 1024;
/// redb's page cache. Reads are served by the watch cache, so redb's pages
/// are read only by the writer (the B-tree path of each key it writes);
/// redb's default of 1 GiB kept every page of the file resident (1.3 KB per
/// cached pod at 150,000 pods), and misses here are reads from the kernel's
/// page cache.
const PAGE_CACHE_BYTES: usize = 32 << 20;
/// Most log records a catching-up watcher reads at once.
const LOG_CHUNK: usize = 1024;
/// Most times the writer lets request tasks run before cutting a batch
/// (it stops as soon as the queue stops growing).
const MAX_YIELDS: usize = 8;
/// Most compacted log records removed in a commit that carries writes.
const PURGE_WITH_WRITES: u64 = 1024;
/// Most compacted log records removed in a commit of their own (taken when
/// no write waits).
const PURGE_IDLE: u64 = 16 * 1024;
/// Buckets of the commit batch size histogram.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

#[derive(Clone, PartialEq, prost::Message)]
struct KvRecord {
    #[prost(bytes = "bytes", tag = "1")]
    value: Bytes,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LogRecord {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bool, tag = "2")]
    delete: bool,
    #[prost(message, optional, tag = "3")]
    kv: Option<KvRecord>,
    #[prost(message, optional, tag = "4")]
    prev: Option<KvRecord>,
}

impl KvRecord {
    fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
    fn from_kv(kv: &KeyValue) -> Self {
        Self {
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        }
    }
}

impl LogRecord {
    fn into_event(self, revision: Revision) -> Event {
        let prev = self.prev.map(|p| p.into_kv(self.key.clone()));
        let kind = if self.delete {
            EventKind::Delete
        } else {
            EventKind::Put
        };
        let kv = match self.kv {
            Some(kv) => kv.into_kv(self.key),
            None => KeyValue {
                key: self.key,
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
            },
        };
        Event { kind, kv, prev }
    }
}

fn db_err(e: impl Into<redb::Error>) -> StorageError {
    StorageError::unavailable(e.into())
}

fn corrupt(key: &str, e: prost::DecodeError) -> StorageError {
    StorageError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Put {
        key: String,
        value: Bytes,
    },
    Compact {
        revision: Revision,
    },
}

enum OpResult {
    Put(KeyValue),
    Deleted(Deleted),
    Compacted,
}

struct WriteRequest {
    op: Op,
    reply: oneshot::Sender<Result<OpResult>>,
}

struct Inner {
    db: Database,
    revision: AtomicI64,
    compacted: AtomicI64,
    events: broadcast::Sender<Arc<Committed>>,
}

/// One committed batch: its events and the revision after it.
struct Committed {
    events: Vec<Event>,
    revision: Revision,
}

/// The embedded backend. Cloning shares the same database.
#[derive(Clone)]
pub struct EmbeddedStorage {
    inner: Arc<Inner>,
    writes: mpsc::Sender<WriteRequest>,
}

impl EmbeddedStorage {
    /// Opens (or creates) the store in `dir`, as `dir/skiff.redb`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(
            dir,
            PurgeLimits {
                with_writes: PURGE_WITH_WRITES,
                idle: PURGE_IDLE,
            },
        )
    }

    fn open_with(dir: &Path, limits: PurgeLimits) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(StorageError::unavailable)?;
        let db = redb::Builder::new()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(dir.join("skiff.redb"))
            .map_err(db_err)?;
        let (revision, compacted, purged) = {
            let txn = db.begin_write().map_err(db_err)?;
            let (revision, compacted, purged) = {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                txn.open_table(KV).map_err(db_err)?;
                let log = txn.open_table(LOG).map_err(db_err)?;
                let revision = meta
                    .get(META_REVISION)
                    .map_err(db_err)?
                    .map(|g| g.value())
                    .unwrap_or(1);
                let compacted = meta
                    .get(META_COMPACTED)
                    .map_err(db_err)?
                    .map(|g| g.value())
                    .unwrap_or(0);
                meta.insert(META_REVISION, revision).map_err(db_err)?;
                // Records below the compacted revision a previous run had
                // not removed yet are removed from here on.
                let purged = log
                    .first()
                    .map_err(db_err)?
                    .map_or(compacted, |(k, _)| k.value().min(compacted));
                (revision, compacted, purged)
            };
            txn.commit().map_err(db_err)?;
            (revision as i64, compacted as i64, purged)
        };
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            db,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            events,
        });
        let (writes, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("skiff-storage-writer".into())
            .spawn(move || writer_loop(&writer, rx, purged, limits))
            .map_err(StorageError::unavailable)?;
        Ok(Self { inner, writes })
    }

    async fn submit(&self, op: Op) -> Result<OpResult> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| StorageError::unavailable(Closed))?;
        rx.await.map_err(|_| StorageError::unavailable(Closed))?
    }
}

#[derive(Debug, thiserror::Error)]
#[error("embedded storage writer has stopped")]
struct Closed;

/// How many compacted log records a commit removes.
#[derive(Debug, Clone, Copy)]
struct PurgeLimits {
    with_writes: u64,
    idle: u64,
}

/// The writer thread. `purged`: every log record below it is removed.
fn writer_loop(
    inner: &Inner,
    mut rx: mpsc::Receiver<WriteRequest>,
    mut purged: u64,
    limits: PurgeLimits,
) {
    let batch_sizes = global()
        .histogram(
            "skiff_storage_commit_batch_size",
            "Write requests committed together in one transaction of embedded storage.",
            &[],
            BATCH_BUCKETS,
        )
        .with(&[]);
    while let Some(first) = rx.blocking_recv() {
        // Let the request tasks that are ready enqueue their writes before
        // the batch is cut: on a busy core this thread is woken by the first
        // write, and a commit's cost grows far slower than its size.
        for _ in 0..MAX_YIELDS {
            let waiting = rx.len();
            if waiting + 1 >= MAX_BATCH {
                break;
            }
            std::thread::yield_now();
            if rx.len() == waiting {
                break;
            }
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        batch_sizes.observe(batch.len() as f64);
        commit_batch(inner, batch, &mut purged, limits.with_writes);
        // What a compaction left is removed while nothing else waits.
        while purged < inner.compacted.load(Ordering::Acquire) as u64 && rx.is_empty() {
            let before = purged;
            commit_batch(inner, Vec::new(), &mut purged, limits.idle);
            if purged == before {
                break;
            }
        }
    }
}

/// Commits `batch` in one transaction, with at most `purge_limit` log
/// records below the compacted revision removed from `purged` on.
fn commit_batch(inner: &Inner, batch: Vec<WriteRequest>, purged: &mut u64, purge_limit: u64) {
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    let mut new_purged = *purged;
    let outcome = (|| -> Result<Revision> {
        let txn = inner.db.begin_write().map_err(db_err)?;
        let mut revision = inner.revision.load(Ordering::Acquire);
        let mut compacted = inner.compacted.load(Ordering::Acquire);
        {
            let mut kv = txn.open_table(KV).map_err(db_err)?;
            let mut log = txn.open_table(LOG).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            for req in &batch {
                let r = apply(&mut kv, &mut log, &mut revision, &mut compacted, &req.op)?;
                results.push(r.map(|(result, event)| {
                    events.extend(event);
                    result
                }));
            }
            let purge_to = (compacted as u64).min(purged.saturating_add(purge_limit));
            if *purged < purge_to {
                log.retain_in(*purged..purge_to, |_, _| false)
                    .map_err(db_err)?;
            }
            new_purged = purge_to.max(*purged);
            meta.insert(META_REVISION, revision as u64)
                .map_err(db_err)?;
            meta.insert(META_COMPACTED, compacted as u64)
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        inner.compacted.store(compacted, Ordering::Release);
        Ok(revision)
    })();
    if outcome.is_ok() {
        *purged = new_purged;
    }
    match outcome {
        Ok(revision) => {
            inner.revision.store(revision, Ordering::Release);
            if !events.is_empty() {
                // No receivers is fine: nobody watches.
                let _ = inner.events.send(Arc::new(Committed { events, revision }));
            }
            for (req, r) in batch.into_iter().zip(results) {
                let _ = req.reply.send(r);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for req in batch {
                let _ = req
                    .reply
                    .send(Err(StorageError::unavailable(CommitFailed(msg.clone()))));
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("commit failed: {0}")]
struct CommitFailed(String);

type KvTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;
type LogTable<'t> = redb::Table<'t, u64, &'static [u8]>;

fn read_kv(kv: &KvTable<'_>, key: &str) -> Result<Option<KeyValue>> {
    match kv.get(key).map_err(db_err)? {
        Some(g) => {
            let rec = KvRecord::decode(g.value()).map_err(|e| corrupt(key, e))?;
            Ok(Some(rec.into_kv(key.to_owned())))
        }
        None => Ok(None),
    }
}

/// Applies one op inside the batch's transaction. `Err` aborts the whole
/// batch (a database failure); `Ok(Err(..))` is this op's own failure.
fn apply(
    kv: &mut KvTable<'_>,
    log: &mut LogTable<'_>,
    revision: &mut Revision,
    compacted: &mut Revision,
    op: &Op,
) -> Result<Result<(OpResult, Option<Event>)>> {
    match op {
        Op::Create { key, value } => {
            if read_kv(kv, key)?.is_some() {
                return Ok(Err(StorageError::AlreadyExists { key: key.clone() }));
            }
            let rev = *revision + 1;
            let new = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            };
            write_put(kv, log, &new, None)?;
            *revision = rev;
            let event = Event {
                kind: EventKind::Put,
                kv: new.clone(),
                prev: None,
            };
            Ok(Ok((OpResult::Put(new), Some(event))))
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(current) = read_kv(kv, key)? else {
                return Ok(Err(StorageError::NotFound { key: key.clone() }));
            };
            if current.mod_revision != *expected {
                return Ok(Err(StorageError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    current: Box::new(current),
                }));
            }
            let rev = *revision + 1;
            let new = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: current.create_revision,
                mod_revision: rev,
                version: current.version + 1,
            };
            write_put(kv, log, &new, Some(&current))?;
            *revision = rev;
            let event = Event {
                kind: EventKind::Put,
                kv: new.clone(),
                prev: Some(current),
            };
            Ok(Ok((OpResult::Put(new), Some(event))))
        }
        Op::Put { key, value } => {
            let current = read_kv(kv, key)?;
            let rev = *revision + 1;
            let new = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: current.as_ref().map_or(rev, |c| c.create_revision),
                mod_revision: rev,
                version: current.as_ref().map_or(1, |c| c.version + 1),
            };
            write_put(kv, log, &new, current.as_ref())?;
            *revision = rev;
            let event = Event {
                kind: EventKind::Put,
                kv: new.clone(),
                prev: current,
            };
            Ok(Ok((OpResult::Put(new), Some(event))))
        }
        Op::Delete { key, expected } => {
            let Some(current) = read_kv(kv, key)? else {
                return Ok(Err(StorageError::NotFound { key: key.clone() }));
            };
            if let Some(expected) = expected
                && current.mod_revision != *expected
            {
                return Ok(Err(StorageError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    current: Box::new(current),
                }));
            }
            let rev = *revision + 1;
            kv.remove(key.as_str()).map_err(db_err)?;
            let rec = LogRecord {
                key: key.clone(),
                delete: true,
                kv: None,
                prev: Some(KvRecord::from_kv(&current)),
            };
            log.insert(rev as u64, rec.encode_to_vec().as_slice())
                .map_err(db_err)?;
            *revision = rev;
            let event = Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    value: Bytes::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                },
                prev: Some(current.clone()),
            };
            Ok(Ok((
                OpResult::Deleted(Deleted {
                    revision: rev,
                    prev: current,
                }),
                Some(event),
            )))
        }
        Op::Compact { revision: target } => {
            if *target > *revision {
                return Ok(Err(StorageError::FutureRevision {
                    requested: *target,
                    current: *revision,
                }));
            }
            if *target < *compacted {
                return Ok(Err(StorageError::Compacted {
                    requested: *target,
                    compacted: *compacted,
                }));
            }
            // The records go a chunk per commit (see `commit_batch`).
            *compacted = *target;
            Ok(Ok((OpResult::Compacted, None)))
        }
    }
}

fn write_put(
    kv: &mut KvTable<'_>,
    log: &mut LogTable<'_>,
    new: &KeyValue,
    prev: Option<&KeyValue>,
) -> Result<()> {
    let rec = KvRecord::from_kv(new);
    kv.insert(new.key.as_str(), rec.encode_to_vec().as_slice())
        .map_err(db_err)?;
    let entry = LogRecord {
        key: new.key.clone(),
        delete: false,
        kv: Some(rec),
        prev: prev.map(KvRecord::from_kv),
    };
    log.insert(new.mod_revision as u64, entry.encode_to_vec().as_slice())
        .map_err(db_err)?;
    Ok(())
}

impl Inner {
    fn snapshot_meta(txn: &redb::ReadTransaction) -> Result<(Revision, Revision)> {
        let meta = txn.open_table(META).map_err(db_err)?;
        let revision = meta
            .get(META_REVISION)
            .map_err(db_err)?
            .map(|g| g.value())
            .unwrap_or(1) as i64;
        let compacted = meta
            .get(META_COMPACTED)
            .map_err(db_err)?
            .map(|g| g.value())
            .unwrap_or(0) as i64;
        Ok((revision, compacted))
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let (current, compacted) = Self::snapshot_meta(&txn)?;
        let at = req.revision.unwrap_or(current);
        if at > current {
            return Err(StorageError::FutureRevision {
                requested: at,
                current,
            });
        }
        if at < compacted {
            return Err(StorageError::Compacted {
                requested: at,
                compacted,
            });
        }
        let kv = txn.open_table(KV).map_err(db_err)?;
        let in_range = |k: &str| {
            k.starts_with(req.prefix.as_str())
                && (req.start_after.is_empty() || k > req.start_after.as_str())
        };
        // Keys changed after `at`, with their state at `at` (None = absent).
        let mut undo: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
        if at < current {
            let log = txn.open_table(LOG).map_err(db_err)?;
            for entry in log
                .range((at as u64 + 1)..=(current as u64))
                .map_err(db_err)?
            {
                let (rev, value) = entry.map_err(db_err)?;
                let rec = LogRecord::decode(value.value())
                    .map_err(|e| corrupt(&format!("log@{}", rev.value()), e))?;
                if in_range(&rec.key) && !undo.contains_key(&rec.key) {
                    let prev = rec.prev.map(|p| p.into_kv(rec.key.clone()));
                    undo.insert(rec.key, prev);
                }
            }
        }
        let start = if req.start_after.is_empty() {
            req.prefix.clone()
        } else {
            format!("{}\0", req.start_after)
        };
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit
        };
        let mut kvs = Vec::new();
        let mut more = false;
        let mut undo_iter = undo.into_iter().peekable();
        let mut current_iter = kv.range(start.as_str()..).map_err(db_err)?;
        let mut next_current: Option<KeyValue> = None;
        let mut current_done = false;
        loop {
            if next_current.is_none() && !current_done {
                match current_iter.next() {
                    Some(entry) => {
                        let (k, v) = entry.map_err(db_err)?;
                        let key = k.value().to_owned();
                        if !key.starts_with(req.prefix.as_str()) {
                            current_done = true;
                        } else {
                            let rec = KvRecord::decode(v.value()).map_err(|e| corrupt(&key, e))?;
                            next_current = Some(rec.into_kv(key));
                        }
                    }
                    None => current_done = true,
                }
            }
            // Merge the current keys with the undo map, in key order.
            let take_undo = match (&next_current, undo_iter.peek()) {
                (None, None) => break,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(c), Some((k, _))) => k.as_str() <= c.key.as_str(),
            };
            let item = if take_undo {
                let Some((k, v)) = undo_iter.next() else {
                    break;
                };
                if next_current.as_ref().is_some_and(|c| c.key == k) {
                    next_current = None;
                }
                v
            } else {
                next_current.take()
            };
            if let Some(item) = item {
                if kvs.len() == limit {
                    more = true;
                    break;
                }
                kvs.push(item);
            }
        }
        Ok(RangeResponse {
            kvs,
            more,
            revision: at,
        })
    }

    /// Reads up to `LOG_CHUNK` events under `prefix` from revision `from`.
    /// Returns the events and the revision read up to.
    fn read_log(&self, prefix: &str, from: Revision) -> Result<(Vec<Event>, Revision)> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let (current, compacted) = Self::snapshot_meta(&txn)?;
        if from < compacted {
            return Err(StorageError::Compacted {
                requested: from,
                compacted,
            });
        }
        let log = txn.open_table(LOG).map_err(db_err)?;
        let mut events = Vec::new();
        let mut upto = from - 1;
        if from <= current {
            for entry in log
                .range((from as u64)..=(current as u64))
                .map_err(db_err)?
            {
                let (rev, value) = entry.map_err(db_err)?;
                let rev = rev.value() as i64;
                upto = rev;
                let rec = LogRecord::decode(value.value())
                    .map_err(|e| corrupt(&format!("log@{rev}"), e))?;
                if rec.key.starts_with(prefix) {
                    events.push(rec.into_event(rev));
                    if events.len() >= LOG_CHUNK {
                        return Ok((events, upto));
                    }
                }
            }
            upto = current;
        }
        Ok((events, upto))
    }
}

#[async_trait::async_trait]
impl Storage for EmbeddedStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let txn = inner.db.begin_read().map_err(db_err)?;
            let kv = txn.open_table(KV).map_err(db_err)?;
            match kv.get(key.as_str()).map_err(db_err)? {
                Some(g) => {
                    let rec = KvRecord::decode(g.value()).map_err(|e| corrupt(&key, e))?;
                    Ok(Some(rec.into_kv(key)))
                }
                None => Ok(None),
            }
        })
        .await
        .map_err(StorageError::unavailable)?
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.range(&request))
            .await
            .map_err(StorageError::unavailable)?
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        match self
            .submit(Op::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            OpResult::Put(kv) => Ok(kv),
            _ => unreachable!("create yields a put"),
        }
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        match self
            .submit(Op::Update {
                key: key.to_owned(),
                value,
                expected,
            })
            .await?
        {
            OpResult::Put(kv) => Ok(kv),
            _ => unreachable!("update yields a put"),
        }
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        match self
            .submit(Op::Put {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            OpResult::Put(kv) => Ok(kv),
            _ => unreachable!("put yields a put"),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        match self
            .submit(Op::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?
        {
            OpResult::Deleted(d) => Ok(d),
            _ => unreachable!("delete yields a deletion"),
        }
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        // Subscribe before reading the log, so nothing falls between the two.
        let mut live = self.inner.events.subscribe();
        let current = self.inner.revision.load(Ordering::Acquire);
        let start = if start <= 0 { current + 1 } else { start };
        let compacted = self.inner.compacted.load(Ordering::Acquire);
        if start < compacted {
            return Err(StorageError::Compacted {
                requested: start,
                compacted,
            });
        }
        let (tx, rx) = mpsc::channel::<Result<WatchBatch>>(64);
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut next = start;
            'outer: loop {
                // Catch up from the log.
                loop {
                    let reader = inner.clone();
                    let p = prefix.clone();
                    let read = tokio::task::spawn_blocking(move || reader.read_log(&p, next)).await;
                    let (events, upto) = match read {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(StorageError::unavailable(e))).await;
                            return;
                        }
                    };
                    let caught_up = upto >= inner.revision.load(Ordering::Acquire);
                    next = upto + 1;
                    let batch = WatchBatch {
                        events,
                        progress: upto,
                    };
                    if tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                    if caught_up {
                        break;
                    }
                }
                // Follow live batches, until the consumer goes away.
                loop {
                    let received = tokio::select! {
                        r = live.recv() => r,
                        _ = tx.closed() => return,
                    };
                    match received {
                        Ok(committed) => {
                            if committed.revision < next {
                                continue;
                            }
                            let events: Vec<Event> = committed
                                .events
                                .iter()
                                .filter(|e| e.revision() >= next && e.kv.key.starts_with(&prefix))
                                .cloned()
                                .collect();
                            next = committed.revision + 1;
                            // Progress is sent even when no watched key changed.
                            let batch = WatchBatch {
                                events,
                                progress: committed.revision,
                            };
                            if tx.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'outer,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.submit(Op::Compact { revision }).await? {
            OpResult::Compacted => Ok(()),
            _ => unreachable!("compact yields compacted"),
        }
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.revision.load(Ordering::Acquire))
    }

    fn reports_progress(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log records below `revision` still stored.
    fn records_below(s: &EmbeddedStorage, revision: Revision) -> usize {
        records_in(s, 0, revision)
    }

    /// Log records of revisions `from..to` stored.
    fn records_in(s: &EmbeddedStorage, from: Revision, to: Revision) -> usize {
        let txn = s.inner.db.begin_read().unwrap();
        let log = txn.open_table(LOG).unwrap();
        log.range(from as u64..to as u64).unwrap().count()
    }

    async fn write_many(s: &EmbeddedStorage, n: usize) -> Revision {
        let writes = (0..n).map(|i| s.create_or_put(format!("/k/{i}")));
        futures::future::join_all(writes).await;
        s.current_revision().await.unwrap()
    }

    impl EmbeddedStorage {
        async fn create_or_put(&self, key: String) {
            self.submit(Op::Put {
                key,
                value: Bytes::from_static(b"v"),
            })
            .await
            .unwrap();
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_refuses_old_revisions_at_once_and_removes_its_records_a_chunk_per_commit()
    {
        let dir = tempfile::tempdir().unwrap();
        let limits = PurgeLimits {
            with_writes: 10,
            idle: 50,
        };
        let s = EmbeddedStorage::open_with(dir.path(), limits).unwrap();
        let rev = write_many(&s, 600).await;
        assert!(records_below(&s, rev) >= 599);
        s.compact(rev).await.unwrap();
        // Refused at once, whatever is still stored.
        match s.watch("/k/", rev - 100).await {
            Err(StorageError::Compacted { compacted, .. }) => assert_eq!(compacted, rev),
            Err(e) => panic!("expected Compacted, got {e}"),
            Ok(_) => panic!("a watch from a compacted revision must fail"),
        }
        // The compacted revision itself is still readable.
        let at = s
            .range(RangeRequest {
                prefix: "/k/".into(),
                revision: Some(rev),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(at.kvs.len(), 600);
        // Removed a chunk per idle commit: every one of them, in the end.
        until("the compacted records to be removed", || {
            records_below(&s, rev) == 0
        })
        .await;
        // Writes go on and stay in the log.
        let later = write_many(&s, 20).await;
        assert_eq!(
            records_in(&s, rev, later + 1),
            21,
            "the compacted revision's and the new"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_a_compaction_left_are_removed_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rev = {
            // Limits of 0: nothing is removed by this instance.
            let none = PurgeLimits {
                with_writes: 0,
                idle: 0,
            };
            let s = EmbeddedStorage::open_with(dir.path(), none).unwrap();
            let rev = write_many(&s, 200).await;
            s.compact(rev).await.unwrap();
            write_many(&s, 5).await;
            assert!(records_below(&s, rev) >= 199, "nothing removed yet");
            rev
        };
        let s = loop {
            match EmbeddedStorage::open(dir.path()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        // The next commit takes the first chunk; idle commits the rest.
        write_many(&s, 1).await;
        until("the records left behind to be removed", || {
            records_below(&s, rev) == 0
        })
        .await;
        assert_eq!(
            records_in(&s, rev, rev + 6),
            6,
            "the compacted revision's and those after it kept"
        );
    }
}
