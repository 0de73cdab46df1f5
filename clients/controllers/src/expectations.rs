//! Expectations: what a controller has asked for and not yet seen in its
//! cache. While pods it created or deleted have not shown up in the
//! informer, the controller does not act again on the same owner — a stale
//! cache must never make it create or delete twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiff::runtime::ObjectKey;

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
