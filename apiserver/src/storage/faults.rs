//! A storage decorator for tests that injects faults: it ends every open
//! watch on demand, holds new watches or ranges until released, and counts
//! the calls that reach storage (round trips per request).
//!
//! For tests only; must not be used by the server's own assembly.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::{
    Deleted, KeyValue, RangeRequest, RangeResponse, Result, Revision, Storage, StorageError,
    WatchStream,
};

/// Calls that reached storage, by operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// `get`.
    pub gets: u64,
    /// `range`.
    pub ranges: u64,
    /// `create`.
    pub creates: u64,
    /// `update`.
    pub updates: u64,
    /// `delete`.
    pub deletes: u64,
    /// `put`.
    pub puts: u64,
    /// `watch` and `watch_without_prev`.
    pub watches: u64,
    /// `current_revision`.
    pub current_revisions: u64,
}

impl Calls {
    /// Every round trip in all.
    pub fn total(&self) -> u64 {
        self.gets
            + self.ranges
            + self.creates
            + self.updates
            + self.deletes
            + self.puts
            + self.watches
            + self.current_revisions
    }
}

impl std::ops::Sub for Calls {
    type Output = Calls;
    fn sub(self, o: Calls) -> Calls {
        Calls {
            gets: self.gets - o.gets,
            ranges: self.ranges - o.ranges,
            creates: self.creates - o.creates,
            updates: self.updates - o.updates,
            deletes: self.deletes - o.deletes,
            puts: self.puts - o.puts,
            watches: self.watches - o.watches,
            current_revisions: self.current_revisions - o.current_revisions,
        }
    }
}

/// The operations counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Range,
    Create,
    Update,
    Delete,
    Put,
    Watch,
    CurrentRevision,
}

/// The decorator; share it as `Arc<FaultyStorage>` (it is a `Storage`).
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    cut: watch::Sender<u64>,
    watches_held: watch::Sender<bool>,
    ranges_held: watch::Sender<bool>,
    log: Mutex<Vec<(Op, String)>>,
    hide_progress: bool,
    writes_refused: std::sync::atomic::AtomicBool,
}

/// The error a refused write fails with.
#[derive(Debug, thiserror::Error)]
#[error("the test refused this storage write")]
pub struct Refused;

/// The error a cut watch ends with.
#[derive(Debug, thiserror::Error)]
#[error("the test cut this storage watch")]
pub struct Cut;

impl FaultyStorage {
    /// Wraps `inner`, injecting nothing until told to.
    pub fn new(inner: Arc<dyn Storage>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            cut: watch::channel(0).0,
            watches_held: watch::channel(false).0,
            ranges_held: watch::channel(false).0,
            log: Mutex::new(Vec::new()),
            hide_progress: false,
            writes_refused: Default::default(),
        })
    }

    /// Wraps `inner` as etcd 3.4 behaves: its watches report no progress
    /// beyond the events they carry.
    pub fn without_progress(inner: Arc<dyn Storage>) -> Arc<Self> {
        let mut s = Self::new(inner);
        Arc::get_mut(&mut s).expect("new").hide_progress = true;
        s
    }

    /// Ends every open watch with an `Unavailable` error.
    pub fn cut_watches(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Refuses every write (create, update, delete, put) as storage that
    /// has lost its quorum does, until told otherwise; reads still work.
    pub fn refuse_writes(&self, refuse: bool) {
        self.writes_refused
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    fn writable(&self) -> Result<()> {
        if self
            .writes_refused
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StorageError::unavailable(Refused));
        }
        Ok(())
    }

    /// Holds new watches (they start once released).
    pub fn hold_watches(&self, hold: bool) {
        self.watches_held.send_replace(hold);
    }

    /// Holds new ranges (they run once released).
    pub fn hold_ranges(&self, hold: bool) {
        self.ranges_held.send_replace(hold);
    }

    /// Calls so far.
    pub fn calls(&self) -> Calls {
        self.calls_where(|_| true)
    }

    /// Calls so far on keys (or prefixes) under `prefix`, and every
    /// `current_revision` (which names no key).
    pub fn calls_under(&self, prefix: &str) -> Calls {
        self.calls_where(|k| k.is_empty() || k.starts_with(prefix))
    }

    fn calls_where(&self, keep: impl Fn(&str) -> bool) -> Calls {
        let mut c = Calls::default();
        for (op, key) in self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            if !keep(key) {
                continue;
            }
            let n = match op {
                Op::Get => &mut c.gets,
                Op::Range => &mut c.ranges,
                Op::Create => &mut c.creates,
                Op::Update => &mut c.updates,
                Op::Delete => &mut c.deletes,
                Op::Put => &mut c.puts,
                Op::Watch => &mut c.watches,
                Op::CurrentRevision => &mut c.current_revisions,
            };
            *n += 1;
        }
        c
    }

    fn count(&self, op: Op, key: &str) {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((op, key.to_owned()));
    }

    async fn released(gate: &watch::Sender<bool>) {
        let mut rx = gate.subscribe();
        let _ = rx.wait_for(|held| !*held).await;
    }

    fn cuttable(&self, stream: WatchStream) -> WatchStream {
        let stream: WatchStream = if self.hide_progress {
            Box::pin(stream.filter_map(|item| async move {
                match item {
                    Ok(mut batch) => {
                        let last = batch.events.last()?.revision();
                        batch.progress = last;
                        Some(Ok(batch))
                    }
                    Err(e) => Some(Err(e)),
                }
            }))
        } else {
            stream
        };
        let mut cut = self.cut.subscribe();
        cut.borrow_and_update();
        Box::pin(futures::stream::unfold(
            Some((stream, cut)),
            |state| async move {
                let (mut stream, mut cut) = state?;
                tokio::select! {
                    biased;
                    changed = cut.changed() => {
                        if changed.is_ok() {
                            Some((Err(StorageError::unavailable(Cut)), None))
                        } else {
                            // The decorator is gone: nothing can cut any more.
                            stream.next().await.map(|item| (item, None))
                        }
                    }
                    item = stream.next() => item.map(|item| (item, Some((stream, cut)))),
                }
            },
        ))
    }
}

#[async_trait::async_trait]
impl Storage for FaultyStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.count(Op::Get, key);
        self.inner.get(key).await
    }
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        self.count(Op::Range, &request.prefix);
        Self::released(&self.ranges_held).await;
        self.inner.range(request).await
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.count(Op::Create, key);
        self.writable()?;
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        self.count(Op::Update, key);
        self.writable()?;
        self.inner.update(key, value, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        self.count(Op::Delete, key);
        self.writable()?;
        self.inner.delete(key, expected).await
    }
    async fn put(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.count(Op::Put, key);
        self.writable()?;
        self.inner.put(key, value).await
    }
    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        self.count(Op::Watch, prefix);
        Self::released(&self.watches_held).await;
        Ok(self.cuttable(self.inner.watch(prefix, start).await?))
    }
    async fn watch_without_prev(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        self.count(Op::Watch, prefix);
        Self::released(&self.watches_held).await;
        Ok(self.cuttable(self.inner.watch_without_prev(prefix, start).await?))
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }
    async fn current_revision(&self) -> Result<Revision> {
        self.count(Op::CurrentRevision, "");
        self.inner.current_revision().await
    }
    fn reports_progress(&self) -> bool {
        !self.hide_progress && self.inner.reports_progress()
    }
}
