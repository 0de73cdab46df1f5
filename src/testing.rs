//! Helpers for tests of code built on Skiff (this workspace's own tests
//! use them too): waiting for a condition with a deadline instead of
//! sleeping and hoping, and the smallest valid objects.

use std::time::Duration;

pub mod fuzz;

use crate::api::core::v1::{Container, Pod, PodSpec};
use crate::api::meta::v1::ObjectMeta;

/// The smallest valid pod: one container `c` of image `busybox`.
pub fn pod(namespace: &str, name: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "busybox".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// Polls `f` until it returns `Some`, and returns that value; panics naming
/// `what` once `timeout` has passed. Polls quickly at first (5 ms) and
/// backs off to every 100 ms, so a fast condition costs little time and a
/// slow one little CPU.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Polls `cond` until it holds; panics naming `what` once `timeout` has
/// passed. For conditions on in-memory state (see [`eventually`]).
pub async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    eventually(what, timeout, async || cond().then_some(())).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_the_first_value_the_condition_gives() {
        let calls = AtomicU32::new(0);
        let v = eventually("the third call", Duration::from_secs(1), async || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for nothing")]
    async fn a_condition_that_never_holds_fails_at_the_deadline_naming_it() {
        until("nothing", Duration::from_secs(1), || false).await;
    }
}
