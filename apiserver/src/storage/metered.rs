//! A storage decorator that times every call into
//! `skiff_storage_request_duration_seconds{operation}` (Kubernetes'
//! `etcd_request_duration_seconds`, for either backend).
//!
//! Owns the storage metrics; must not change what passes through.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use skiff::metrics::{HistogramVec, LATENCY_BUCKETS, global};

use super::{
    Deleted, KeyValue, RangeRequest, RangeResponse, Result, Revision, Storage, WatchStream,
};

fn histogram() -> &'static Arc<HistogramVec> {
    static H: OnceLock<Arc<HistogramVec>> = OnceLock::new();
    H.get_or_init(|| {
        global().histogram(
            "etcd_request_duration_seconds",
            "Storage call latency by operation (embedded or etcd).",
            &["operation"],
            LATENCY_BUCKETS,
        )
    })
}

/// Times the calls of the storage it wraps.
pub struct MeteredStorage(pub Arc<dyn Storage>);

async fn timed<T>(op: &str, f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    histogram().with(&[op]).observe_duration(started.elapsed());
    out
}

#[async_trait::async_trait]
impl Storage for MeteredStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        timed("get", self.0.get(key)).await
    }
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        timed("range", self.0.range(request)).await
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        timed("create", self.0.create(key, value)).await
    }
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        timed("update", self.0.update(key, value, expected)).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        timed("delete", self.0.delete(key, expected)).await
    }
    async fn put(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        timed("put", self.0.put(key, value)).await
    }
    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        self.0.watch(prefix, start).await
    }
    async fn watch_without_prev(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        self.0.watch_without_prev(prefix, start).await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        timed("compact", self.0.compact(revision)).await
    }
    async fn current_revision(&self) -> Result<Revision> {
        timed("current_revision", self.0.current_revision()).await
    }
    fn reports_progress(&self) -> bool {
        self.0.reports_progress()
    }
}
