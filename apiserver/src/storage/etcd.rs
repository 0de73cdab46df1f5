//! etcd storage: a real etcd v3 cluster through `etcd-client`, for users who
//! outgrow one machine. Several API servers can share one etcd.
//!
//! Every key is stored under `key_prefix`, so one etcd can hold several
//! independent clusters (and tests can share an etcd).
//!
//! Members: `etcd-client` balances over every endpoint it is given and never
//! sets a dead one aside, so this backend keeps one client per member and
//! routes itself. Requests go round-robin to the members believed healthy;
//! a member that fails with a transport error, or answers that it has no
//! leader, is set aside until a health probe (a `Status` naming a leader)
//! passes again. A read moves on to the next member at once; a write moves
//! on only when the failure proves etcd never received it (no connection,
//! no leader), since otherwise it may have been applied. Watches stick to one
//! member and move when it fails. Messages may be as large as gRPC allows, so
//! a kind of any size can be listed (in pages) and watched.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, KvClient, MaintenanceClient, PutOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
    WatchOptions,
};
use futures::StreamExt;

use super::{
    Deleted, Event, EventKind, KeyValue, RangeRequest, RangeResponse, Result, Revision, Storage,
    StorageError, WatchBatch, WatchStream, prefix_end,
};

/// Largest response accepted from etcd (gRPC's own limit, 2 GiB): a page of
/// a list or a batch of watch events may hold many objects of up to 1.5 MiB.
pub const MAX_MESSAGE_BYTES: usize = i32::MAX as usize;

/// How long one request to one member may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may wait on a member already set aside (tried only
/// when no member is believed healthy): as long as a probe, so that a
/// server cut off from every member fails fast instead of waiting out
/// [`REQUEST_TIMEOUT`] once per member.
const SET_ASIDE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often members that were set aside are probed again.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// One etcd member and its own clients.
struct Member {
    url: String,
    kv: KvClient,
    watch: WatchClient,
    maintenance: MaintenanceClient,
    healthy: AtomicBool,
}

struct Inner {
    members: Vec<Member>,
    key_prefix: String,
    next: AtomicUsize,
    prober: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .prober
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// The etcd backend.
#[derive(Clone)]
pub struct EtcdStorage {
    inner: Arc<Inner>,
}

/// What a failed request tells about the member and the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// etcd answered: the request itself failed (compacted, bad argument…).
    Answer,
    /// The member could not take the request (no connection, no leader):
    /// it was not applied, so any request may go to another member.
    NotSent,
    /// The request may or may not have been applied (connection lost
    /// mid-flight, timeout, leader changed): only reads may be retried.
    Unknown,
}

fn classify(e: &etcd_client::Error) -> Failure {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("no leader") || msg.contains("not capable") {
                return Failure::NotSent;
            }
            if status.code() == tonic::Code::Unavailable && is_connect_error(status) {
                return Failure::NotSent;
            }
            match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
                | tonic::Code::Internal => Failure::Unknown,
                _ => Failure::Answer,
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => Failure::NotSent,
        etcd_client::Error::WatchError(_) => Failure::Unknown,
        _ => Failure::Answer,
    }
}

/// Whether `status` says the connection could not be made at all.
fn is_connect_error(status: &tonic::Status) -> bool {
    let mut text = status.message().to_ascii_lowercase();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        text.push(' ');
        text.push_str(&s.to_string().to_ascii_lowercase());
        source = s.source();
    }
    [
        "connect error",
        "error trying to connect",
        "connection refused",
        "dns error",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// Whether a request may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// A read: always.
    Read,
    /// A write: only if it surely was not applied.
    Write,
}

/// The request did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("etcd member(s) {0} did not answer in time")]
struct TimedOut(String);

/// No member could serve a request.
#[derive(Debug, thiserror::Error)]
#[error("no etcd member answered ({tried}): {last}")]
struct NoMember {
    tried: String,
    #[source]
    last: etcd_client::Error,
}

fn map_err(e: etcd_client::Error) -> StorageError {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        let msg = status.message();
        if msg.contains("required revision has been compacted") {
            return StorageError::Compacted {
                requested: 0,
                compacted: 0,
            };
        }
        if msg.contains("future revision") {
            return StorageError::FutureRevision {
                requested: 0,
                current: 0,
            };
        }
    }
    StorageError::unavailable(e)
}

/// A call that failed on a member, before or after reaching it.
enum CallError {
    Etcd(etcd_client::Error),
    TimedOut,
}

impl EtcdStorage {
    /// Connects to the members at `endpoints` (e.g. `http://127.0.0.1:2379`);
    /// every key is stored under `key_prefix`. Succeeds if any member
    /// answers a quorum read, so a cluster with one member down starts.
    pub async fn connect(endpoints: &[String], key_prefix: &str) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(StorageError::unavailable(NoEndpoints));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster refuses requests and ends
            // watches instead of serving what it has.
            .with_require_leader(true);
        let mut members = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let client = Client::connect([url.as_str()], Some(options.clone()))
                .await
                .map_err(map_err)?;
            members.push(Member {
                url: url.clone(),
                kv: client
                    .kv_client()
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
                watch: client
                    .watch_client()
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
                maintenance: client.maintenance_client(),
                healthy: AtomicBool::new(true),
            });
        }
        let storage = Self {
            inner: Arc::new(Inner {
                members,
                key_prefix: key_prefix.to_owned(),
                next: AtomicUsize::new(0),
                prober: std::sync::Mutex::new(None),
            }),
        };
        let prober = tokio::spawn(probe_members(Arc::downgrade(&storage.inner)));
        *storage
            .inner
            .prober
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(prober);
        // Fail now, clearly, if no member answers.
        storage.current_revision().await?;
        Ok(storage)
    }

    /// The members' URLs and whether each is believed healthy now.
    pub fn member_health(&self) -> Vec<(String, bool)> {
        self.inner
            .members
            .iter()
            .map(|m| (m.url.clone(), m.healthy.load(Ordering::Relaxed)))
            .collect()
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.inner.key_prefix, key)
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = std::str::from_utf8(kv.key()).map_err(|e| StorageError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })?;
        let key = key
            .strip_prefix(&self.inner.key_prefix)
            .unwrap_or(key)
            .to_owned();
        Ok(KeyValue {
            key,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        })
    }

    /// Members in the order a request should try them: the healthy ones
    /// round-robin, then the others (in case every probe is stale).
    fn order(&self) -> Vec<usize> {
        let n = self.inner.members.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let rotated = (0..n).map(|i| (start + i) % n);
        let (mut healthy, sick): (Vec<usize>, Vec<usize>) = rotated.partition(|&i| {
            self.inner
                .members
                .get(i)
                .is_some_and(|m| m.healthy.load(Ordering::Relaxed))
        });
        healthy.extend(sick);
        healthy
    }

    fn set_aside(&self, member: usize, why: &dyn std::fmt::Display) {
        let Some(m) = self.inner.members.get(member) else {
            return;
        };
        if m.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(member = %m.url, error = %why, "etcd member set aside until it answers again");
        }
    }

    /// Runs `f` against members until one answers, as `retry` allows.
    async fn call<T, F, Fut>(&self, retry: Retry, f: F) -> std::result::Result<T, StorageError>
    where
        F: Fn(&Member) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut tried = Vec::new();
        let mut last: Option<CallError> = None;
        for i in self.order() {
            let Some(member) = self.inner.members.get(i) else {
                continue;
            };
            tried.push(member.url.as_str());
            let limit = if member.healthy.load(Ordering::Relaxed) {
                REQUEST_TIMEOUT
            } else {
                SET_ASIDE_TIMEOUT
            };
            let outcome = match tokio::time::timeout(limit, f(member)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let failure = classify(&e);
                    if failure == Failure::Answer {
                        return Err(map_err(e));
                    }
                    self.set_aside(i, &e);
                    (failure, CallError::Etcd(e))
                }
                Err(_) => {
                    self.set_aside(i, &TimedOut(member.url.clone()));
                    (Failure::Unknown, CallError::TimedOut)
                }
            };
            let (failure, error) = outcome;
            let again = match retry {
                Retry::Read => true,
                Retry::Write => failure == Failure::NotSent,
            };
            if !again {
                return Err(match error {
                    CallError::Etcd(e) => map_err(e),
                    CallError::TimedOut => StorageError::unavailable(TimedOut(member.url.clone())),
                });
            }
            last = Some(error);
        }
        Err(match last {
            Some(CallError::Etcd(e)) => StorageError::unavailable(NoMember {
                tried: tried.join(", "),
                last: e,
            }),
            _ => StorageError::unavailable(TimedOut(tried.join(", "))),
        })
    }
}

/// Probes set-aside members until the storage is dropped; a member is
/// healthy again once it answers `Status` and knows a leader.
async fn probe_members(inner: Weak<Inner>) {
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        for m in &inner.members {
            if m.healthy.load(Ordering::Relaxed) {
                continue;
            }
            let mut client = m.maintenance.clone();
            let probe = tokio::time::timeout(Duration::from_secs(1), client.status()).await;
            if let Ok(Ok(status)) = probe
                && status.leader() != 0
            {
                tracing::info!(member = %m.url, "etcd member answers again");
                m.healthy.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no etcd endpoints given")]
struct NoEndpoints;

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
}

#[async_trait::async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let full = self.full(key);
        let resp = self
            .call(Retry::Read, |m| {
                let mut kv = m.kv.clone();
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        resp.kvs().first().map(|kv| self.convert(kv)).transpose()
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let prefix = self.full(&request.prefix);
        let start = if request.start_after.is_empty() {
            prefix.clone().into_bytes()
        } else {
            let mut k = self.full(&request.start_after).into_bytes();
            k.push(0);
            k
        };
        let mut options = GetOptions::new().with_range(prefix_end(&prefix));
        if request.limit > 0 {
            options = options.with_limit(request.limit as i64);
        }
        if let Some(rev) = request.revision {
            options = options.with_revision(rev);
        }
        let resp = self
            .call(Retry::Read, |m| {
                let mut kv = m.kv.clone();
                let (start, options) = (start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await
            .map_err(|e| match e {
                StorageError::Compacted { .. } => StorageError::Compacted {
                    requested: request.revision.unwrap_or(0),
                    compacted: 0,
                },
                StorageError::FutureRevision { .. } => StorageError::FutureRevision {
                    requested: request.revision.unwrap_or(0),
                    current: 0,
                },
                other => other,
            })?;
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| self.convert(kv))
            .collect::<Result<Vec<_>>>()?;
        Ok(RangeResponse {
            kvs,
            more: resp.more(),
            revision: request
                .revision
                .unwrap_or_else(|| header_revision(resp.header())),
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.clone(), value.to_vec(), None)]);
        let resp = self
            .call(Retry::Write, |m| {
                let mut kv = m.kv.clone();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            return Err(StorageError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let rev = header_revision(resp.header());
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([
                TxnOp::put(full.clone(), value.to_vec(), None),
                TxnOp::get(full.clone(), None),
            ])
            .or_else([TxnOp::get(full.clone(), None)]);
        let resp = self
            .call(Retry::Write, |m| {
                let mut kv = m.kv.clone();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        let got = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| self.convert(kv)),
            _ => None,
        });
        match (resp.succeeded(), got) {
            (true, Some(kv)) => kv,
            (true, None) => Err(StorageError::Corrupt {
                key: key.to_owned(),
                reason: "updated key not readable in the same transaction".into(),
            }),
            (false, None) => Err(StorageError::NotFound {
                key: key.to_owned(),
            }),
            (false, Some(current)) => Err(StorageError::Conflict {
                key: key.to_owned(),
                expected,
                current: Box::new(current?),
            }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        let full = self.full(key);
        let mut compare = vec![Compare::create_revision(
            full.clone(),
            CompareOp::Greater,
            0,
        )];
        if let Some(expected) = expected {
            compare.push(Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected,
            ));
        }
        let txn = Txn::new()
            .when(compare)
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full.clone(), None)]);
        let resp = self
            .call(Retry::Write, |m| {
                let mut kv = m.kv.clone();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        let revision = header_revision(resp.header());
        for r in resp.op_responses() {
            match r {
                TxnOpResponse::Delete(d) if resp.succeeded() => {
                    let prev = d.prev_kvs().first().ok_or_else(|| StorageError::Corrupt {
                        key: key.to_owned(),
                        reason: "delete returned no previous value".into(),
                    })?;
                    return Ok(Deleted {
                        revision,
                        prev: self.convert(prev)?,
                    });
                }
                TxnOpResponse::Get(g) => {
                    return match g.kvs().first() {
                        None => Err(StorageError::NotFound {
                            key: key.to_owned(),
                        }),
                        Some(current) => Err(StorageError::Conflict {
                            key: key.to_owned(),
                            expected: expected.unwrap_or(0),
                            current: Box::new(self.convert(current)?),
                        }),
                    };
                }
                _ => {}
            }
        }
        Err(StorageError::NotFound {
            key: key.to_owned(),
        })
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let full = self.full(key);
        let resp = self
            .call(Retry::Write, |m| {
                let mut kv = m.kv.clone();
                let (full, value) = (full.clone(), value.to_vec());
                async move { kv.put(full, value, Some(PutOptions::new())).await }
            })
            .await?;
        let rev = header_revision(resp.header());
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: 0,
            mod_revision: rev,
            version: 0,
        })
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        self.open_watch(prefix, start, true).await
    }

    async fn watch_without_prev(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        self.open_watch(prefix, start, false).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.call(Retry::Read, |m| {
            let mut kv = m.kv.clone();
            async move {
                kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            }
        })
        .await
        .map(|_| ())
        .map_err(|e| match e {
            StorageError::Compacted { .. } => StorageError::Compacted {
                requested: revision,
                compacted: 0,
            },
            StorageError::FutureRevision { .. } => StorageError::FutureRevision {
                requested: revision,
                current: 0,
            },
            other => other,
        })
    }

    async fn current_revision(&self) -> Result<Revision> {
        // A linearizable (quorum) read of an unused key reports the revision.
        let probe = format!("{}\u{0}revision-probe", self.inner.key_prefix);
        let resp = self
            .call(Retry::Read, |m| {
                let mut kv = m.kv.clone();
                let probe = probe.clone();
                async move {
                    kv.get(probe, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        Ok(header_revision(resp.header()))
    }

    fn reports_progress(&self) -> bool {
        false
    }
}

impl EtcdStorage {
    /// Opens a watch on the first member that takes it.
    async fn open_watch(&self, prefix: &str, start: Revision, prev: bool) -> Result<WatchStream> {
        let full = self.full(prefix);
        let mut options = WatchOptions::new().with_range(prefix_end(&full));
        if prev {
            options = options.with_prev_key();
        }
        if start > 0 {
            options = options.with_start_revision(start);
        }
        let mut last = None;
        let mut opened = None;
        for i in self.order() {
            let Some(member) = self.inner.members.get(i) else {
                continue;
            };
            let mut client = member.watch.clone();
            match tokio::time::timeout(
                REQUEST_TIMEOUT,
                client.watch(full.clone(), Some(options.clone())),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    opened = Some((i, stream));
                    break;
                }
                Ok(Err(e)) => {
                    if classify(&e) == Failure::Answer {
                        return Err(map_err(e));
                    }
                    self.set_aside(i, &e);
                    last = Some(map_err(e));
                }
                Err(_) => {
                    let url = member.url.clone();
                    self.set_aside(i, &TimedOut(url.clone()));
                    last = Some(StorageError::unavailable(TimedOut(url)));
                }
            }
        }
        let Some((member, stream)) = opened else {
            return Err(last.unwrap_or_else(|| StorageError::unavailable(NoEndpoints)));
        };
        let this = self.clone();
        let mapped = stream.filter_map(move |resp| {
            let this = this.clone();
            async move {
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => {
                        if classify(&e) != Failure::Answer {
                            this.set_aside(member, &e);
                        }
                        return Some(Err(map_err(e)));
                    }
                };
                if resp.compact_revision() != 0 {
                    return Some(Err(StorageError::Compacted {
                        requested: start,
                        compacted: resp.compact_revision(),
                    }));
                }
                if resp.canceled() {
                    let reason = resp.cancel_reason().to_owned();
                    if reason.contains("no leader") {
                        this.set_aside(member, &reason);
                    }
                    return Some(Err(StorageError::unavailable(WatchCanceled(reason))));
                }
                if resp.events().is_empty() {
                    return None;
                }
                let mut events = Vec::with_capacity(resp.events().len());
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let kv = match this.convert(kv) {
                        Ok(kv) => kv,
                        Err(e) => return Some(Err(e)),
                    };
                    let prev = match ev.prev_kv().map(|p| this.convert(p)).transpose() {
                        Ok(p) => p,
                        Err(e) => return Some(Err(e)),
                    };
                    let kind = match ev.event_type() {
                        EventType::Put => EventKind::Put,
                        EventType::Delete => EventKind::Delete,
                    };
                    events.push(Event { kind, kv, prev });
                }
                // etcd 3.4 cannot promise more than the events it sent.
                let progress = events.last().map(Event::revision).unwrap_or(0);
                Some(Ok(WatchBatch { events, progress }))
            }
        });
        // The first error ends the stream: the caller must re-watch or re-list.
        let mut failed = false;
        let ended = mapped.take_while(move |item| {
            let keep = !failed;
            if item.is_err() {
                failed = true;
            }
            futures::future::ready(keep)
        });
        Ok(Box::pin(ended))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("etcd canceled the watch: {0}")]
struct WatchCanceled(String);
