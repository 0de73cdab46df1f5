//! etcd storage: a real etcd v3 cluster through `etcd-client`, for users who
//! outgrow one machine. Several API servers can share one etcd.
//!
//! Every key is stored under `key_prefix`, so one etcd can hold several
//! independent clusters (and tests can share an etcd).

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use super::{
    Deleted, Event, EventKind, KeyValue, RangeRequest, RangeResponse, Result, Revision, Storage,
    StorageError, WatchBatch, WatchStream, prefix_end,
};

/// The etcd backend.
#[derive(Clone)]
pub struct EtcdStorage {
    client: Client,
    key_prefix: String,
}

impl EtcdStorage {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`); every key is
    /// stored under `key_prefix`.
    pub async fn connect(endpoints: &[String], key_prefix: &str) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_keep_alive(
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(5),
            );
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(map_err)?;
        let storage = Self {
            client,
            key_prefix: key_prefix.to_owned(),
        };
        // Fail now, clearly, if etcd does not answer.
        storage.current_revision().await?;
        Ok(storage)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.key_prefix, key)
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = std::str::from_utf8(kv.key()).map_err(|e| StorageError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })?;
        let key = key.strip_prefix(&self.key_prefix).unwrap_or(key).to_owned();
        Ok(KeyValue {
            key,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        })
    }
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

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
}

#[async_trait::async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.client.kv_client();
        let resp = kv.get(self.full(key), None).await.map_err(map_err)?;
        resp.kvs().first().map(|kv| self.convert(kv)).transpose()
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let mut kv = self.client.kv_client();
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
        let resp = kv
            .get(start, Some(options))
            .await
            .map_err(|e| match map_err(e) {
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
        let mut kv = self.client.kv_client();
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.clone(), value.to_vec(), None)]);
        let resp = kv.txn(txn).await.map_err(map_err)?;
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
        let mut kv = self.client.kv_client();
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
        let resp = kv.txn(txn).await.map_err(map_err)?;
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
        let mut kv = self.client.kv_client();
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
        let resp = kv.txn(txn).await.map_err(map_err)?;
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

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        let mut client = self.client.watch_client();
        let full = self.full(prefix);
        let mut options = WatchOptions::new()
            .with_range(prefix_end(&full))
            .with_prev_key();
        if start > 0 {
            options = options.with_start_revision(start);
        }
        let stream = client.watch(full, Some(options)).await.map_err(map_err)?;
        let this = self.clone();
        let mapped = stream.filter_map(move |resp| {
            let this = this.clone();
            async move {
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => return Some(Err(map_err(e))),
                };
                if resp.compact_revision() != 0 {
                    return Some(Err(StorageError::Compacted {
                        requested: start,
                        compacted: resp.compact_revision(),
                    }));
                }
                if resp.canceled() {
                    return Some(Err(StorageError::unavailable(WatchCanceled(
                        resp.cancel_reason().to_owned(),
                    ))));
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

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut kv = self.client.kv_client();
        kv.compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map(|_| ())
            .map_err(|e| match map_err(e) {
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
        let mut kv = self.client.kv_client();
        // A linearizable (quorum) read of an unused key reports the revision.
        let resp = kv
            .get(
                format!("{}\u{0}revision-probe", self.key_prefix),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(map_err)?;
        Ok(header_revision(resp.header()))
    }

    fn reports_progress(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
#[error("etcd canceled the watch: {0}")]
struct WatchCanceled(String);
