//! The scheduling queue: pending pods ordered by priority, then by age;
//! pods that fit nowhere wait in an unschedulable set until something
//! relevant changes (a node added or changed, a pod deleted) and their
//! backoff, which doubles with each failed attempt, has passed; and every
//! unschedulable pod is retried after a while in any case.

use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::Pod;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cache::{PodKey, pod_key, priority};

/// A pod waiting in the active queue.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    /// The pod, as last seen.
    pub pod: Arc<Pod>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the pod first entered the queue (kept across retries).
    pub queued_at: Instant,
    seq: u64,
}

impl QueuedPod {
    fn priority(&self) -> i32 {
        priority(&self.pod)
    }
}

impl PartialEq for QueuedPod {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}
impl Eq for QueuedPod {}
impl PartialOrd for QueuedPod {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for QueuedPod {
    /// Higher priority first, then older first (max-heap).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority()
            .cmp(&other.priority())
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct Waiting {
    pod: Arc<Pod>,
    attempts: u32,
    queued_at: Instant,
    /// Not retried before this.
    backoff_until: Instant,
    /// Retried at this time even if nothing changes.
    flush_at: Instant,
    /// Something changed since it failed.
    moved: bool,
}

struct State {
    active: BinaryHeap<QueuedPod>,
    /// Current sequence number of each pod in `active` (stale heap entries
    /// are skipped), and when it first entered the queue (a refresh keeps it).
    in_active: HashMap<PodKey, (u64, Instant)>,
    unschedulable: HashMap<PodKey, Waiting>,
    /// Pods being scheduled right now.
    in_flight: HashMap<PodKey, u64>,
    next_seq: u64,
    closed: bool,
}

/// Pods waiting, by the queues Kubernetes' scheduler reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// To be tried now (new, or due for another attempt).
    pub active: usize,
    /// Failed, and something relevant changed: waiting out their backoff.
    pub backoff: usize,
    /// Failed, and waiting for a change in the cluster (or the periodic retry).
    pub unschedulable: usize,
}

impl State {
    fn pending(&self, now: Instant) -> Pending {
        let mut p = Pending {
            active: self.in_active.len(),
            ..Pending::default()
        };
        for w in self.unschedulable.values() {
            if (w.moved && w.backoff_until <= now) || w.flush_at <= now {
                p.active += 1;
            } else if w.moved {
                p.backoff += 1;
            } else {
                p.unschedulable += 1;
            }
        }
        p
    }
}

/// Every live queue of the process, summed into `scheduler_pending_pods`
/// when metrics are scraped.
static QUEUES: Mutex<Vec<Weak<Mutex<State>>>> = Mutex::new(Vec::new());

fn expose(state: &Arc<Mutex<State>>) {
    static REGISTERED: Once = Once::new();
    QUEUES
        .lock()
        .expect("queues lock")
        .push(Arc::downgrade(state));
    REGISTERED.call_once(|| {
        skiff::metrics::global().collect(Box::new(|e| {
            let now = Instant::now();
            let mut total = Pending::default();
            QUEUES
                .lock()
                .expect("queues lock")
                .retain(|q| match q.upgrade() {
                    Some(state) => {
                        let p = state.lock().expect("queue lock").pending(now);
                        total.active += p.active;
                        total.backoff += p.backoff;
                        total.unschedulable += p.unschedulable;
                        true
                    }
                    None => false,
                });
            e.gauge_header(
                "scheduler_pending_pods",
                "Pending pods by queue: active, backoff or unschedulable.",
            );
            for (queue, n) in [
                ("active", total.active),
                ("backoff", total.backoff),
                ("unschedulable", total.unschedulable),
            ] {
                e.sample("scheduler_pending_pods", &[("queue", queue)], n as f64);
            }
        }));
    });
}

/// Backoff and flush timing.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Backoff after the first failure.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Unschedulable pods are retried after this even if nothing changed.
    pub flush_after: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            flush_after: Duration::from_secs(60),
        }
    }
}

/// The scheduling queue.
#[derive(Clone)]
pub struct SchedulingQueue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    config: QueueConfig,
}

impl SchedulingQueue {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Self {
        let queue = Self {
            state: Arc::new(Mutex::new(State {
                active: BinaryHeap::new(),
                in_active: HashMap::new(),
                unschedulable: HashMap::new(),
                in_flight: HashMap::new(),
                next_seq: 0,
                closed: false,
            })),
            notify: Arc::new(Notify::new()),
            config,
        };
        expose(&queue.state);
        queue
    }

    /// Pods waiting now, by queue.
    pub fn pending(&self) -> Pending {
        self.state
            .lock()
            .expect("queue lock")
            .pending(Instant::now())
    }

    fn push(&self, s: &mut State, pod: Arc<Pod>, attempts: u32, queued_at: Instant) {
        let key = pod_key(&pod);
        s.next_seq += 1;
        let seq = s.next_seq;
        s.in_active.insert(key, (seq, queued_at));
        s.active.push(QueuedPod {
            pod,
            attempts,
            queued_at,
            seq,
        });
        self.notify.notify_one();
    }

    /// Adds a pending pod, or refreshes it (an update may make it schedulable).
    pub fn add(&self, pod: Arc<Pod>) {
        let key = pod_key(&pod);
        let mut s = self.state.lock().expect("queue lock");
        if s.in_flight.contains_key(&key) {
            return;
        }
        if let Some(w) = s.unschedulable.get_mut(&key) {
            // A changed pod is worth another look once its backoff passes.
            if w.pod.spec != pod.spec || w.pod.meta().labels != pod.meta().labels {
                w.moved = true;
            }
            w.pod = pod;
            return;
        }
        let attempts = 0;
        // A refreshed pod keeps the time it first entered the queue.
        let queued_at = s.in_active.get(&key).map_or_else(Instant::now, |e| e.1);
        self.push(&mut s, pod, attempts, queued_at);
    }

    /// Forgets a pod (bound elsewhere, or deleted).
    pub fn remove(&self, key: &str) {
        let mut s = self.state.lock().expect("queue lock");
        s.in_active.remove(key);
        s.unschedulable.remove(key);
    }

    /// Waits for the highest-priority pod; `None` once closed.
    pub async fn pop(&self) -> Option<QueuedPod> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().expect("queue lock");
                if s.closed {
                    return None;
                }
                self.release_due(&mut s);
                while let Some(q) = s.active.pop() {
                    let key = pod_key(&q.pod);
                    if s.in_active.get(&key).map(|e| e.0) == Some(q.seq) {
                        s.in_active.remove(&key);
                        s.in_flight.insert(key, q.seq);
                        return Some(q);
                    }
                }
            }
            // Wake for the next due backoff even if nothing else happens.
            let next_due = self.next_due();
            match next_due {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks a popped pod done (scheduled, or given up).
    pub fn done(&self, key: &str) {
        self.state.lock().expect("queue lock").in_flight.remove(key);
    }

    /// Puts a pod that fit nowhere into the unschedulable set.
    pub fn unschedulable(&self, q: QueuedPod) {
        let key = pod_key(&q.pod);
        let mut s = self.state.lock().expect("queue lock");
        s.in_flight.remove(&key);
        let attempts = q.attempts + 1;
        let exp = attempts.saturating_sub(1).min(16);
        let backoff = self
            .config
            .initial_backoff
            .saturating_mul(1 << exp)
            .min(self.config.max_backoff);
        let now = Instant::now();
        s.unschedulable.insert(
            key,
            Waiting {
                pod: q.pod,
                attempts,
                queued_at: q.queued_at,
                backoff_until: now + backoff,
                flush_at: now + self.config.flush_after,
                moved: false,
            },
        );
    }

    /// Puts a pod back to be retried after its backoff (e.g. its binding failed).
    pub fn retry(&self, q: QueuedPod) {
        let key = pod_key(&q.pod);
        self.unschedulable(q);
        if let Some(w) = self
            .state
            .lock()
            .expect("queue lock")
            .unschedulable
            .get_mut(&key)
        {
            w.moved = true;
        }
    }

    /// Something changed in the cluster: every unschedulable pod is tried
    /// again once its backoff has passed.
    pub fn move_all(&self) {
        let mut s = self.state.lock().expect("queue lock");
        for w in s.unschedulable.values_mut() {
            w.moved = true;
        }
        drop(s);
        self.notify.notify_one();
    }

    fn release_due(&self, s: &mut State) {
        let now = Instant::now();
        let due: Vec<PodKey> = s
            .unschedulable
            .iter()
            .filter(|(_, w)| (w.moved && w.backoff_until <= now) || w.flush_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(w) = s.unschedulable.remove(&key) {
                self.push(s, w.pod, w.attempts, w.queued_at);
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let s = self.state.lock().expect("queue lock");
        s.unschedulable
            .values()
            .map(|w| {
                if w.moved {
                    w.backoff_until.min(w.flush_at)
                } else {
                    w.flush_at
                }
            })
            .min()
    }

    /// Pods waiting as (active, unschedulable).
    pub fn len(&self) -> (usize, usize) {
        let s = self.state.lock().expect("queue lock");
        (s.in_active.len(), s.unschedulable.len())
    }

    /// Stops the queue; `pop` returns `None`.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use skiff::api::core::v1::PodSpec;
    use skiff::api::meta::v1::ObjectMeta;

    use super::*;

    fn pod(name: &str, prio: i32) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                priority: Some(prio),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn queue() -> SchedulingQueue {
        SchedulingQueue::new(QueueConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
            flush_after: Duration::from_secs(30),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn pending_pods_are_counted_by_queue_and_keep_their_first_queued_time() {
        let q = queue();
        let first = Instant::now();
        q.add(pod("a", 0));
        q.add(pod("b", 0));
        q.add(pod("c", 0));
        assert_eq!(
            q.pending(),
            Pending {
                active: 3,
                backoff: 0,
                unschedulable: 0
            }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a = q.pop().await.unwrap();
        let b = q.pop().await.unwrap();
        assert_eq!(a.queued_at, first);
        q.unschedulable(a);
        q.unschedulable(b);
        assert_eq!(
            q.pending(),
            Pending {
                active: 1,
                backoff: 0,
                unschedulable: 2
            }
        );
        // A change moves them to backoff until it has passed.
        q.move_all();
        assert_eq!(
            q.pending(),
            Pending {
                active: 1,
                backoff: 2,
                unschedulable: 0
            }
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(q.pending().active, 3);
        // Retried after their backoff, they still carry the time they first came in.
        let mut names = Vec::new();
        for _ in 0..3 {
            let p = q.pop().await.unwrap();
            assert_eq!(p.queued_at, first, "{}", p.pod.meta().name);
            names.push(p.pod.meta().name.clone());
            q.done(&pod_key(&p.pod));
        }
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(q.pending(), Pending::default());
        // A pod that left the queue and comes back starts a new wait.
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.add(pod("a", 0));
        assert!(q.pop().await.unwrap().queued_at > first);
    }

    #[tokio::test(start_paused = true)]
    async fn pods_come_out_by_priority_then_age() {
        let q = queue();
        q.add(pod("old-low", 0));
        q.add(pod("high", 10));
        q.add(pod("new-low", 0));
        let mut order = Vec::new();
        for _ in 0..3 {
            let p = q.pop().await.unwrap();
            order.push(p.pod.meta().name.clone());
            q.done(&pod_key(&p.pod));
        }
        assert_eq!(order, ["high", "old-low", "new-low"]);
    }

    #[tokio::test(start_paused = true)]
    async fn unschedulable_pods_wait_for_a_change_and_their_backoff() {
        let q = queue();
        q.add(pod("a", 0));
        let p = q.pop().await.unwrap();
        let start = Instant::now();
        q.unschedulable(p);
        assert_eq!(q.len(), (0, 1));
        // A change before the backoff passes: released when it does.
        tokio::time::sleep(Duration::from_millis(300)).await;
        q.move_all();
        let p = q.pop().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(p.attempts, 1);
        // Second failure: twice the backoff.
        let start = Instant::now();
        q.unschedulable(p);
        q.move_all();
        let p = q.pop().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Without any change, the flush retries it anyway.
        let start = Instant::now();
        q.unschedulable(p);
        let _ = q.pop().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn removed_and_readded_pods_are_handed_out_once() {
        let q = queue();
        q.add(pod("a", 0));
        q.add(pod("a", 0));
        q.add(pod("b", 0));
        q.remove("ns/b");
        let p = q.pop().await.unwrap();
        assert_eq!(p.pod.meta().name, "a");
        q.done("ns/a");
        assert_eq!(q.len(), (0, 0));
    }
}
