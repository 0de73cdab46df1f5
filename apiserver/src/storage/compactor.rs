//! Periodic compaction of storage, as Kubernetes does every five minutes:
//! each round compacts to the revision seen at the previous round, so one
//! interval of history is always kept for watchers that resume.
//!
//! Owns the schedule only; how a backend compacts is its own.

use std::sync::Arc;
use std::time::Duration;

use crate::storage::{Storage, StorageError};

/// Compacts `storage` every `interval`, forever.
pub async fn run(storage: Arc<dyn Storage>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut previous: Option<i64> = None;
    loop {
        ticker.tick().await;
        let current = match storage.current_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "compaction: cannot read the current revision");
                continue;
            }
        };
        if let Some(target) = previous {
            match storage.compact(target).await {
                Ok(()) => tracing::debug!(revision = target, "compacted storage"),
                // Another API server sharing the store got there first.
                Err(StorageError::Compacted { .. }) => {}
                Err(e) => tracing::warn!(error = %e, revision = target, "compaction failed"),
            }
        }
        previous = Some(current);
    }
}
