//! Writing bindings: pods assumed onto nodes wait here and go to the API
//! server in batches (one `BindPods` call for whatever is waiting when a
//! call slot frees), so that under load one call carries many bindings and
//! when idle a binding leaves at once. A pod whose binding fails is
//! forgotten by the cache and retried; one bound or deleted meanwhile is
//! dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use skiff::Resource;
use skiff::api::core::v1::{BindPodRequest, Pod};
use skiff::client::{Client, Error};
use skiff::runtime::events::NORMAL;
use tokio::sync::{Semaphore, mpsc};

use crate::queue::{QueuedPod, SchedulingQueue};
use crate::scheduler::{EventSink, SchedulerStats, attempts_label, extension_point, metrics};

/// A pod assumed onto a node, waiting for its binding.
pub(crate) struct Assumed {
    /// The queue entry it was popped as.
    pub q: QueuedPod,
    /// The pod as scheduled.
    pub pod: Arc<Pod>,
    /// Its cache and queue key.
    pub key: String,
    /// The node it goes to.
    pub node: String,
    /// Claims waiting for their first consumer to learn the node first.
    pub delayed_claims: Vec<String>,
}

/// What a binding's outcome updates.
#[derive(Clone)]
pub(crate) struct Outcome {
    pub cache: Arc<std::sync::Mutex<crate::cache::Cache>>,
    pub queue: SchedulingQueue,
    pub stats: Arc<SchedulerStats>,
    pub events: EventSink,
    pub profile: String,
}

/// Sends bindings in the background; see the module doc.
pub(crate) struct Binder {
    tx: mpsc::Sender<Assumed>,
    task: tokio::task::JoinHandle<()>,
}

impl Binder {
    /// Starts binding with `client`: at most `calls` binding calls in
    /// flight, each carrying at most `batch` pods (1: one `BindPod` per pod).
    pub(crate) fn start(client: Client, outcome: Outcome, calls: usize, batch: usize) -> Self {
        let batch = batch.max(1);
        let (tx, rx) = mpsc::channel(batch * calls.max(1));
        let task = tokio::spawn(send_batches(
            client,
            outcome,
            rx,
            Arc::new(Semaphore::new(calls.max(1))),
            batch,
        ));
        Self { tx, task }
    }

    /// Queues `a`'s binding; waits while too many are waiting already.
    pub(crate) async fn bind(&self, a: Assumed) {
        // The receiver lives as long as this binder.
        let _ = self.tx.send(a).await;
    }
}

impl Drop for Binder {
    /// Stops sending new calls (calls in flight finish): a replica that
    /// stops scheduling binds nothing more it had queued.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send_batches(
    client: Client,
    outcome: Outcome,
    mut rx: mpsc::Receiver<Assumed>,
    slots: Arc<Semaphore>,
    batch: usize,
) {
    // A pod whose claims wait for their first consumer is bound on its own
    // (its claims learn the node first); it ends the batch being gathered.
    let mut held: Option<Assumed> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(a) => a,
            None => match rx.recv().await {
                Some(a) => a,
                None => return,
            },
        };
        let mut pods = vec![first];
        while pods[0].delayed_claims.is_empty() && pods.len() < batch {
            match rx.try_recv() {
                Ok(a) if a.delayed_claims.is_empty() => pods.push(a),
                Ok(a) => {
                    held = Some(a);
                    break;
                }
                Err(_) => break,
            }
        }
        let (client, outcome) = (client.clone(), outcome.clone());
        let in_flight = InFlight::new(&outcome.stats, pods.len());
        tokio::spawn(async move {
            if pods.len() == 1 {
                let a = pods.pop().expect("one pod");
                if a.delayed_claims.is_empty() {
                    bind_one(&client, &outcome, a).await;
                } else {
                    bind_with_claims(&client, &outcome, a).await;
                }
            } else {
                bind_all(&client, &outcome, pods).await;
            }
            drop(permit);
            drop(in_flight);
        });
    }
}

/// Counts pods in `SchedulerStats::binding` while their call is in flight
/// (also when the call's task is dropped unfinished).
struct InFlight(Arc<SchedulerStats>, u64);

impl InFlight {
    fn new(stats: &Arc<SchedulerStats>, pods: usize) -> Self {
        let pods = pods as u64;
        stats.binding.fetch_add(pods, Ordering::Relaxed);
        Self(stats.clone(), pods)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.binding.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// Tells the pod's delayed claims its node (PreBind), then binds it.
async fn bind_with_claims(client: &Client, outcome: &Outcome, a: Assumed) {
    let started = Instant::now();
    let selected = crate::volumes::select_node(client, &a.pod, &a.delayed_claims, &a.node).await;
    extension_point(
        "PreBind",
        crate::scheduler::status_of(selected.is_ok()),
        &outcome.profile,
        started.elapsed(),
    );
    match selected {
        Ok(()) => bind_one(client, outcome, a).await,
        Err(e) => outcome.failed(a, &e),
    }
}

/// Binds one pod with `BindPod`.
async fn bind_one(client: &Client, outcome: &Outcome, a: Assumed) {
    let started = Instant::now();
    let bound = client
        .pods(a.pod.namespace())
        .bind(a.pod.name(), &a.node)
        .await;
    let took = started.elapsed();
    match bound {
        Ok(_) => outcome.bound(a, took),
        Err(e) => outcome.bind_failed(a, &e, took),
    }
}

/// Binds many pods with one `BindPods` call; each succeeds or fails alone.
async fn bind_all(client: &Client, outcome: &Outcome, pods: Vec<Assumed>) {
    let started = Instant::now();
    let bindings = pods
        .iter()
        .map(|a| BindPodRequest {
            namespace: a.pod.namespace().to_owned(),
            name: a.pod.name().to_owned(),
            node_name: a.node.clone(),
            uid: a.pod.meta().uid.clone(),
        })
        .collect();
    let results = client.pods("").bind_all(bindings).await;
    let took = started.elapsed();
    match results {
        Ok(results) if results.len() == pods.len() => {
            for (a, result) in pods.into_iter().zip(results) {
                match result {
                    Ok(_) => outcome.bound(a, took),
                    Err(e) => outcome.bind_failed(a, &e, took),
                }
            }
        }
        Ok(results) => {
            tracing::warn!(
                asked = pods.len(),
                answered = results.len(),
                "BindPods answered a different number of results; retrying the pods"
            );
            for a in pods {
                outcome.retry(a);
            }
        }
        Err(e) => {
            for a in pods {
                outcome.bind_failed(a, &e, took);
            }
        }
    }
}

impl Outcome {
    fn bound(&self, a: Assumed, took: std::time::Duration) {
        extension_point("Bind", "Success", &self.profile, took);
        self.stats.bound.fetch_add(1, Ordering::Relaxed);
        let m = metrics();
        m.bound.with(&[]).inc();
        m.pod_duration
            .with(&[&attempts_label(a.q.attempts + 1)])
            .observe_duration(a.q.queued_at.elapsed());
        self.queue.done(&a.key);
        let message = format!("Successfully assigned {} to {}", a.key, a.node);
        self.events.send(a.pod, NORMAL, "Scheduled", message);
    }

    /// A binding call (or its part for `a`) failed after `took`.
    fn bind_failed(&self, a: Assumed, e: &Error, took: std::time::Duration) {
        extension_point("Bind", "Error", &self.profile, took);
        self.failed(a, e);
    }

    fn failed(&self, a: Assumed, e: &Error) {
        match e {
            // Bound by someone else, or gone: nothing to retry. (A uid
            // that no longer matches, a Conflict, is a pod deleted and
            // created again: retried, as the new pod.)
            Error::FailedPrecondition(_) | Error::NotFound(_) => {
                self.count_failure(&a);
                self.queue.done(&a.key)
            }
            _ => {
                tracing::warn!(pod = %a.key, node = a.node, error = %e, "binding failed; retrying");
                self.retry(a);
            }
        }
    }

    /// Forgets the assumption and queues the pod again after its backoff.
    fn retry(&self, a: Assumed) {
        self.count_failure(&a);
        self.queue.retry(a.q);
    }

    fn count_failure(&self, a: &Assumed) {
        self.stats.bind_errors.fetch_add(1, Ordering::Relaxed);
        metrics().attempts.with(&["error"]).inc();
        self.cache.lock().expect("cache").forget(&a.key);
    }
}
