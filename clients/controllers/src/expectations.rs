//! Expectations: what a controller has asked for and not yet seen in its
//! cache. While pods it created or deleted have not shown up in the
//! informer, the controller does not act again on the same owner — a stale
//! cache must never make it create or delete twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

use skiff::Resource;
use skiff::api::core::v1::Pod;
use skiff::runtime::{Change, Informer, ObjectKey};

use crate::util::controller_ref;

/// Expectations older than this are given up (a missed event must not wedge a controller).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Expected {
    adds: i64,
    deletes: i64,
    set_at: Instant,
}

/// Pending creations and deletions per controller key.
#[derive(Debug, Default)]
pub struct Expectations {
    map: Mutex<HashMap<ObjectKey, Expected>>,
}

impl Expectations {
    /// No expectations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `adds` creations and `deletes` deletions are about to be sent.
    pub fn expect(&self, key: &ObjectKey, adds: i64, deletes: i64) {
        self.map.lock().expect("expectations").insert(
            key.clone(),
            Expected {
                adds,
                deletes,
                set_at: Instant::now(),
            },
        );
    }

    /// Records that a creation (or deletion) was seen — or will never be,
    /// because the request failed.
    pub fn observed(&self, key: &ObjectKey, adds: i64, deletes: i64) {
        if let Some(e) = self.map.lock().expect("expectations").get_mut(key) {
            e.adds -= adds;
            e.deletes -= deletes;
        }
    }

    /// Whether everything expected has been seen (or expired).
    pub fn satisfied(&self, key: &ObjectKey) -> bool {
        match self.map.lock().expect("expectations").get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes <= 0) || e.set_at.elapsed() > EXPECTATION_TTL,
        }
    }

    /// Forgets a key (its owner is gone).
    pub fn forget(&self, key: &ObjectKey) {
        self.map.lock().expect("expectations").remove(key);
    }
}

/// Turns pod additions and deletions into observed expectations of the
/// pods' controllers of kind `owner_kind`; on a resync (which may hide
/// observations) forgets the expectations of every key `owners` lists.
pub async fn observe_pods(
    pods: Informer<Pod>,
    expectations: Arc<Expectations>,
    owner_kind: &'static str,
    owners: impl Fn() -> Vec<ObjectKey>,
) {
    let mut changes = pods.subscribe();
    let uids = || -> std::collections::HashSet<String> {
        pods.store()
            .list()
            .iter()
            .map(|p| p.meta().uid.clone())
            .collect()
    };
    let mut known = uids();
    let key_of = |p: &Pod| {
        let r = controller_ref(p.meta())?;
        (r.kind == owner_kind).then(|| ObjectKey::new(p.namespace(), &r.name))
    };
    loop {
        match changes.recv().await {
            Ok(Change::Applied(p)) => {
                if known.insert(p.meta().uid.clone())
                    && let Some(k) = key_of(&p)
                {
                    expectations.observed(&k, 1, 0);
                }
            }
            Ok(Change::Deleted(p)) => {
                known.remove(&p.meta().uid);
                if let Some(k) = key_of(&p) {
                    expectations.observed(&k, 0, 1);
                }
            }
            Ok(Change::Resynced) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                known = uids();
                for k in owners() {
                    expectations.forget(&k);
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfied_once_everything_expected_is_seen() {
        let e = Expectations::new();
        let k = ObjectKey::new("ns", "rs");
        assert!(e.satisfied(&k));
        e.expect(&k, 3, 0);
        assert!(!e.satisfied(&k));
        e.observed(&k, 2, 0);
        assert!(!e.satisfied(&k));
        e.observed(&k, 1, 0);
        assert!(e.satisfied(&k));
    }
}
