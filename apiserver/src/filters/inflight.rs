//! Limits on requests in flight (Kubernetes' max-in-flight filter):
//! separate budgets for mutating and read-only requests, a share of each
//! per user so that one noisy client cannot starve the others, and a cap on
//! each user's open watches and streams. Owns only admission to the server
//! by count; must not look at what a request asks for (that is authz and
//! admission).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::error::ApiError;

/// Limits on requests in flight.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Mutating requests in flight at once.
    pub max_mutating: usize,
    /// Read-only requests in flight at once (watches not counted).
    pub max_read_only: usize,
    /// Share of each limit one user may hold.
    pub per_user_fraction: f64,
    /// Watches (and log/exec streams) one user may hold open.
    pub max_watches_per_user: usize,
    /// How long a request may wait for its turn before RESOURCE_EXHAUSTED.
    pub queue_wait: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_mutating: 200,
            max_read_only: 400,
            per_user_fraction: 0.25,
            max_watches_per_user: 1000,
            queue_wait: Duration::from_secs(1),
        }
    }
}

pub(super) struct Class {
    global: Arc<Semaphore>,
    per_user: usize,
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Class {
    fn new(max: usize, fraction: f64) -> Self {
        Self {
            global: Arc::new(Semaphore::new(max.max(1))),
            per_user: ((max as f64 * fraction).ceil() as usize).max(1),
            users: Mutex::new(HashMap::new()),
        }
    }

    fn user(&self, name: &str) -> Arc<Semaphore> {
        let mut users = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if users.len() > 10_000 {
            let per_user = self.per_user;
            users.retain(|_, s| s.available_permits() < per_user);
        }
        users
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_user)))
            .clone()
    }

    /// Waits (up to `wait`) for a turn: first within the user's share, then overall.
    pub(super) async fn admit(
        &self,
        user: &str,
        wait: Duration,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mine = tokio::time::timeout_at(deadline, self.user(user).acquire_owned())
            .await
            .map_err(|_| busy(&format!("too many requests from {user:?} in flight")))?
            .map_err(|_| busy("shutting down"))?;
        let all = tokio::time::timeout_at(deadline, self.global.clone().acquire_owned())
            .await
            .map_err(|_| busy("the server has too many requests in flight"))?
            .map_err(|_| busy("shutting down"))?;
        Ok((mine, all))
    }
}

fn busy(what: &str) -> ApiError {
    ApiError::ResourceExhausted {
        message: format!("{what}; retry in a second"),
        retry_after: Some(Duration::from_secs(1)),
    }
}

/// Request limits.
pub struct Limits {
    pub(super) config: LimitsConfig,
    pub(super) mutating: Class,
    pub(super) read_only: Class,
    watches: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            mutating: Class::new(config.max_mutating, config.per_user_fraction),
            read_only: Class::new(config.max_read_only, config.per_user_fraction),
            watches: Mutex::new(HashMap::new()),
            config,
        }
    }

    pub(crate) fn watch_slot(&self, user: &str) -> Result<WatchSlot, ApiError> {
        let counter = self
            .watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(user.to_owned())
            .or_default()
            .clone();
        let held = counter.fetch_add(1, Ordering::SeqCst);
        if held >= self.config.max_watches_per_user {
            counter.fetch_sub(1, Ordering::SeqCst);
            return Err(busy(&format!(
                "{user:?} has {held} watches open, the most one user may hold"
            )));
        }
        Ok(WatchSlot(counter))
    }
}

/// One open watch of a user; released when the response stream ends.
pub struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body holding a watch slot until it ends.
pub(super) struct Guarded {
    pub(super) inner: tonic::body::Body,
    pub(super) _slot: WatchSlot,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_over_its_share_waits_and_others_pass() {
        let limits = Limits::new(LimitsConfig {
            max_mutating: 4,
            per_user_fraction: 0.5,
            queue_wait: Duration::from_millis(50),
            ..Default::default()
        });
        let a1 = limits
            .mutating
            .admit("noisy", Duration::from_millis(50))
            .await
            .unwrap();
        let a2 = limits
            .mutating
            .admit("noisy", Duration::from_millis(50))
            .await
            .unwrap();
        let refused = limits
            .mutating
            .admit("noisy", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(Status::from(refused).code(), tonic::Code::ResourceExhausted);
        // The quiet user still has the rest.
        let _b = limits
            .mutating
            .admit("quiet", Duration::from_millis(50))
            .await
            .unwrap();
        drop((a1, a2));
        let _again = limits
            .mutating
            .admit("noisy", Duration::from_millis(50))
            .await
            .unwrap();
    }

    #[test]
    fn watches_per_user_are_capped_and_released() {
        let limits = Limits::new(LimitsConfig {
            max_watches_per_user: 2,
            ..Default::default()
        });
        let w1 = limits.watch_slot("u").unwrap();
        let _w2 = limits.watch_slot("u").unwrap();
        assert!(limits.watch_slot("u").is_err());
        assert!(limits.watch_slot("other").is_ok());
        drop(w1);
        assert!(limits.watch_slot("u").is_ok());
    }
}
