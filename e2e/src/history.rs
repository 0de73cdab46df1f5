//! Recorded histories of reads and compare-and-swap writes, and a
//! Wing–Gong linearizability checker over them, per key.
//!
//! Each key is a register holding `(resource_version, value)`. An operation
//! has an invocation and, when its outcome is known, a completion; a write
//! whose outcome is unknown (a timeout, UNAVAILABLE after it was sent) may
//! have taken effect at any point after its invocation, or never. The
//! checker searches for an order of the operations that respects real time
//! (an operation completed before another was invoked comes first) and the
//! register's rules; memoized on (operations placed, register state).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// What an operation did, as recorded by the client that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create with `value`; `Ok(rv)` or `AlreadyExists`.
    Create {
        /// Value written.
        value: String,
        /// The outcome.
        outcome: WriteOutcome,
    },
    /// Update with `value` if the stored version is `expected`.
    Cas {
        /// The resource version the write was conditional on.
        expected: i64,
        /// Value written.
        value: String,
        /// The outcome.
        outcome: WriteOutcome,
    },
    /// A consistent read: `Some((rv, value))`, or `None` for not found.
    Read(Option<(i64, String)>),
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied at this resource version.
    Applied(i64),
    /// Refused because of the register's state (exists, or version mismatch).
    Refused,
    /// Not known: it may or may not have been applied.
    Unknown,
}

/// One operation on one key.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The register.
    pub key: String,
    /// What it did.
    pub op: Op,
    /// When the client sent it.
    pub invoked: Instant,
    /// When the client learned its outcome (`None`: never, for an unknown
    /// outcome).
    pub completed: Option<Instant>,
}

/// The register's state: `None` before creation; a version `None` after a
/// write of unknown outcome was placed (its version is not known).
type State = Option<(Option<i64>, String)>;

fn step(state: &State, op: &Op) -> Option<State> {
    let version_is = |rv: i64| match state {
        Some((Some(v), _)) => *v == rv,
        Some((None, _)) => true,
        None => false,
    };
    match op {
        Op::Create { value, outcome } => match (state, outcome) {
            (None, WriteOutcome::Applied(rv)) => Some(Some((Some(*rv), value.clone()))),
            (None, WriteOutcome::Unknown) => Some(Some((None, value.clone()))),
            (Some(_), WriteOutcome::Refused) => Some(state.clone()),
            _ => None,
        },
        Op::Cas {
            expected,
            value,
            outcome,
        } => match outcome {
            WriteOutcome::Applied(rv) if version_is(*expected) => {
                Some(Some((Some(*rv), value.clone())))
            }
            WriteOutcome::Unknown if version_is(*expected) => Some(Some((None, value.clone()))),
            WriteOutcome::Refused => match state {
                Some((Some(v), _)) if v == expected => None,
                _ => Some(state.clone()),
            },
            _ => None,
        },
        Op::Read(seen) => match (state, seen) {
            (None, None) => Some(None),
            (Some((v, value)), Some((rv, read))) if value == read && v.is_none_or(|v| v == *rv) => {
                Some(Some((Some(*rv), value.clone())))
            }
            _ => None,
        },
    }
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose operations admit no order.
    pub key: String,
    /// How many operations that key had.
    pub operations: usize,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} operations on {:?} admit no linearization",
            self.operations, self.key
        )
    }
}

/// Checks every key's operations; the first key that has no valid order.
pub fn check(history: &[Entry]) -> Result<(), Violation> {
    let mut by_key: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for e in history {
        by_key.entry(&e.key).or_default().push(e);
    }
    let mut keys: Vec<_> = by_key.into_iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, ops) in keys {
        if !linearizable(&ops) {
            return Err(Violation {
                key: key.to_owned(),
                operations: ops.len(),
            });
        }
    }
    Ok(())
}

/// Wing–Gong search over one key's operations.
fn linearizable(ops: &[&Entry]) -> bool {
    let n = ops.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ops[i].invoked);
    let mut placed = vec![false; n];
    let mut seen: HashSet<(Vec<bool>, State)> = HashSet::new();
    search(ops, &order, &mut placed, None, &mut seen)
}

fn search(
    ops: &[&Entry],
    order: &[usize],
    placed: &mut Vec<bool>,
    state: State,
    seen: &mut HashSet<(Vec<bool>, State)>,
) -> bool {
    // Done once every operation with a known completion is placed; writes
    // of unknown outcome left over never took effect.
    let pending: Vec<usize> = order.iter().copied().filter(|&i| !placed[i]).collect();
    if pending.iter().all(|&i| ops[i].completed.is_none()) {
        return true;
    }
    if !seen.insert((placed.clone(), state.clone())) {
        return false;
    }
    // Only an operation invoked before every pending one completed may come next.
    let horizon = pending
        .iter()
        .filter_map(|&i| ops[i].completed)
        .min()
        .expect("a pending operation with a completion");
    for &i in &pending {
        if ops[i].invoked > horizon {
            break;
        }
        if let Some(next) = step(&state, &ops[i].op) {
            placed[i] = true;
            if search(ops, order, placed, next, seen) {
                return true;
            }
            placed[i] = false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn entry(base: Instant, op: Op, from: u64, to: Option<u64>) -> Entry {
        Entry {
            key: "k".into(),
            op,
            invoked: at(base, from),
            completed: to.map(|t| at(base, t)),
        }
    }

    fn create(v: &str, rv: i64) -> Op {
        Op::Create {
            value: v.into(),
            outcome: WriteOutcome::Applied(rv),
        }
    }

    fn cas(expected: i64, v: &str, outcome: WriteOutcome) -> Op {
        Op::Cas {
            expected,
            value: v.into(),
            outcome,
        }
    }

    fn read(rv: i64, v: &str) -> Op {
        Op::Read(Some((rv, v.into())))
    }

    #[test]
    fn sequential_writes_and_reads_are_linearizable() {
        let b = Instant::now();
        let h = vec![
            entry(b, create("a", 1), 0, Some(1)),
            entry(b, read(1, "a"), 2, Some(3)),
            entry(b, cas(1, "b", WriteOutcome::Applied(5)), 4, Some(5)),
            entry(b, cas(1, "c", WriteOutcome::Refused), 6, Some(7)),
            entry(b, read(5, "b"), 8, Some(9)),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let b = Instant::now();
        let h = vec![
            entry(b, create("a", 1), 0, Some(1)),
            entry(b, cas(1, "b", WriteOutcome::Applied(5)), 2, Some(3)),
            entry(b, read(1, "a"), 4, Some(5)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let b = Instant::now();
        for seen in [read(1, "a"), read(5, "b")] {
            let h = vec![
                entry(b, create("a", 1), 0, Some(1)),
                entry(b, cas(1, "b", WriteOutcome::Applied(5)), 2, Some(10)),
                entry(b, seen, 3, Some(4)),
            ];
            assert_eq!(check(&h), Ok(()));
        }
    }

    #[test]
    fn two_successful_swaps_from_one_version_are_not_linearizable() {
        let b = Instant::now();
        let h = vec![
            entry(b, create("a", 1), 0, Some(1)),
            entry(b, cas(1, "b", WriteOutcome::Applied(5)), 2, Some(6)),
            entry(b, cas(1, "c", WriteOutcome::Applied(6)), 2, Some(6)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_have_happened_or_not() {
        let b = Instant::now();
        // It happened: a later read sees it.
        let happened = vec![
            entry(b, create("a", 1), 0, Some(1)),
            entry(b, cas(1, "b", WriteOutcome::Unknown), 2, None),
            entry(b, read(7, "b"), 10, Some(11)),
        ];
        assert_eq!(check(&happened), Ok(()));
        // It did not: a later read still sees the old value.
        let not = vec![
            entry(b, create("a", 1), 0, Some(1)),
            entry(b, cas(1, "b", WriteOutcome::Unknown), 2, None),
            entry(b, read(1, "a"), 10, Some(11)),
        ];
        assert_eq!(check(&not), Ok(()));
        // But a value nobody wrote is never read.
        let invented = vec![
            entry(b, create("a", 1), 0, Some(1)),
            entry(b, read(3, "z"), 10, Some(11)),
        ];
        assert!(check(&invented).is_err());
    }

    #[test]
    fn a_refused_swap_needs_another_version_in_place() {
        let b = Instant::now();
        let h = vec![
            entry(b, create("a", 1), 0, Some(1)),
            entry(b, cas(1, "b", WriteOutcome::Refused), 2, Some(3)),
        ];
        assert!(check(&h).is_err(), "nothing else changed the version");
    }
}
