//! A work queue of keys, as controllers need it: a key waiting is queued
//! once however often it is added; a key being processed is never handed to
//! a second worker (if added meanwhile, it comes back once the first is
//! done); failed keys come back after a per-key exponential backoff; delayed
//! adds wait for their time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::watcher::Backoff;

struct State<T> {
    queue: VecDeque<T>,
    /// Keys waiting to be processed (queued, or to be re-queued after processing).
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    /// When each queued key was queued (with metrics on).
    added: HashMap<T, std::time::Instant>,
    shut_down: bool,
}

/// Metrics of a named queue (Kubernetes' workqueue names).
#[derive(Clone)]
struct QueueMetrics {
    depth: Arc<crate::metrics::Gauge>,
    adds: Arc<crate::metrics::Counter>,
    latency: crate::metrics::HistogramHandle,
}

impl QueueMetrics {
    fn of(name: &str) -> Self {
        struct Families {
            depth: Arc<crate::metrics::GaugeVec>,
            adds: Arc<crate::metrics::CounterVec>,
            latency: Arc<crate::metrics::HistogramVec>,
        }
        static F: std::sync::OnceLock<Families> = std::sync::OnceLock::new();
        let f = F.get_or_init(|| {
            let r = crate::metrics::global();
            Families {
                depth: r.gauge("workqueue_depth", "Keys waiting, by queue.", &["name"]),
                adds: r.counter("workqueue_adds_total", "Keys added, by queue.", &["name"]),
                latency: r.histogram(
                    "workqueue_queue_duration_seconds",
                    "Time a key waits before a worker takes it, by queue.",
                    &["name"],
                    crate::metrics::LATENCY_BUCKETS,
                ),
            }
        });
        Self {
            depth: f.depth.with(&[name]),
            adds: f.adds.with(&[name]),
            latency: f.latency.with(&[name]),
        }
    }
}

/// A de-duplicating, rate-limited work queue.
pub struct WorkQueue<T> {
    state: Arc<Mutex<State<T>>>,
    notify: Arc<Notify>,
    backoff: Backoff,
    metrics: Option<QueueMetrics>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            notify: self.notify.clone(),
            backoff: self.backoff,
            metrics: self.metrics.clone(),
        }
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    /// An empty queue retrying failures with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                added: HashMap::new(),
                shut_down: false,
            })),
            notify: Arc::new(Notify::new()),
            backoff,
            metrics: None,
        }
    }

    /// An empty queue whose depth and latency are exported as metrics under `name`.
    pub fn named(name: &str, backoff: Backoff) -> Self {
        let mut q = Self::new(backoff);
        q.metrics = Some(QueueMetrics::of(name));
        q
    }

    fn queued(&self, s: &mut State<T>, item: T) {
        if let Some(m) = &self.metrics {
            s.added.insert(item.clone(), std::time::Instant::now());
            m.adds.inc();
            m.depth.set(s.queue.len() as i64 + 1);
        }
        s.queue.push_back(item);
    }

    /// Adds a key (no-op if it is already waiting).
    pub fn add(&self, item: T) {
        let mut s = self.state.lock().expect("queue lock");
        if s.shut_down || !s.dirty.insert(item.clone()) {
            return;
        }
        if s.processing.contains(&item) {
            // Re-queued when its worker calls `done`.
            return;
        }
        self.queued(&mut s, item);
        drop(s);
        self.notify.notify_one();
    }

    /// Adds a key after `delay`.
    pub fn add_after(&self, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(item);
        });
    }

    /// Adds a key after its backoff, which doubles with each failure.
    pub fn add_rate_limited(&self, item: T) {
        self.add_rate_limited_at_least(item, Duration::ZERO);
    }

    /// Adds a key after its backoff or after `floor`, whichever is longer
    /// (the wait a server asked for with `RetryInfo`).
    pub fn add_rate_limited_at_least(&self, item: T, floor: Duration) {
        let failures = {
            let mut s = self.state.lock().expect("queue lock");
            let n = s.failures.entry(item.clone()).or_insert(0);
            *n += 1;
            *n
        };
        self.add_after(item, self.backoff.delay(failures).max(floor));
    }

    /// Forgets a key's failures (after it succeeded).
    pub fn forget(&self, item: &T) {
        self.state.lock().expect("queue lock").failures.remove(item);
    }

    /// Failures recorded for a key.
    pub fn failures(&self, item: &T) -> u32 {
        self.state
            .lock()
            .expect("queue lock")
            .failures
            .get(item)
            .copied()
            .unwrap_or(0)
    }

    /// Waits for the next key; `None` once shut down. Call [`done`](Self::done) after processing it.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(item) = s.queue.pop_front() {
                    if let Some(m) = &self.metrics {
                        if let Some(at) = s.added.remove(&item) {
                            m.latency.observe_duration(at.elapsed());
                        }
                        m.depth.set(s.queue.len() as i64);
                    }
                    s.dirty.remove(&item);
                    s.processing.insert(item.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        // Wake another worker for the rest.
                        self.notify.notify_one();
                    }
                    return Some(item);
                }
                if s.shut_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks a key's processing finished; re-queues it if it was added meanwhile.
    pub fn done(&self, item: &T) {
        let mut s = self.state.lock().expect("queue lock");
        s.processing.remove(item);
        if s.dirty.contains(item) && !s.shut_down {
            self.queued(&mut s, item.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Keys waiting.
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").queue.len()
    }

    /// Whether no key waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; waiting workers get `None`.
    pub fn shut_down(&self) {
        self.state.lock().expect("queue lock").shut_down = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::new(Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        })
    }

    #[tokio::test]
    async fn keys_waiting_are_queued_once() {
        let q = queue();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(q.get().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_in_processing_is_not_handed_out_again_until_done() {
        let q = queue();
        q.add("a");
        let got = q.get().await.unwrap();
        q.add("a");
        q.add("a");
        assert!(q.is_empty(), "re-added while processing: held back");
        q.done(&got);
        assert_eq!(q.len(), 1, "and queued once when done");
        assert_eq!(q.get().await, Some("a"));
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_forget_resets() {
        let q = queue();
        for (n, secs) in [1u64, 2, 4, 8, 8].into_iter().enumerate() {
            let t = tokio::time::Instant::now();
            q.add_rate_limited("a");
            let got = q.get().await.unwrap();
            q.done(&got);
            assert_eq!(t.elapsed(), Duration::from_secs(secs), "failure {}", n + 1);
        }
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
        let t = tokio::time::Instant::now();
        q.add_rate_limited("a");
        q.get().await.unwrap();
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(1),
            "back to the first delay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_wait_for_their_time() {
        let q = queue();
        let t = tokio::time::Instant::now();
        q.add_after("late", Duration::from_secs(5));
        q.add_after("early", Duration::from_secs(2));
        assert_eq!(q.get().await, Some("early"));
        assert_eq!(t.elapsed(), Duration::from_secs(2));
        assert_eq!(q.get().await, Some("late"));
        assert_eq!(t.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn shut_down_releases_waiting_workers() {
        let q = queue();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.get().await });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
