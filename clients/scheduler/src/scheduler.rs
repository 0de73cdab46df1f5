//! The scheduling loop: informers keep the cache and the queue current;
//! one pod at a time is taken from the queue, filtered and scored against
//! the cache, assumed onto the best node, and bound asynchronously (in
//! batches, by [`crate::binder`]). A pod
//! that fits nowhere may preempt lower-priority pods; otherwise it is marked
//! `PodScheduled=False` with the reasons, an Event is recorded, and it waits
//! in the unschedulable set.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use skiff::Resource;
use skiff::api::core::v1::{Node, Pod, PodCondition};
use skiff::client::{Client, Error};
use skiff::params::DeleteParams;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{
    Change, InformerFactory, LeaderElectionConfig, LeaderElector, ObjectKey, Recorder, Store,
};
use tokio::sync::{broadcast, mpsc};

use crate::binder::{Assumed, Binder, Outcome};
use crate::cache::{Cache, is_terminal, pod_key};
use crate::framework::{PodInfo, Reason, Weights, failure_message, search};
use crate::preemption::select_victims;
use crate::queue::{QueueConfig, QueuedPod, SchedulingQueue};
use crate::volumes::VolumeStores;

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Pods naming this scheduler (or none) are scheduled.
    pub scheduler_name: String,
    /// This replica's identity (events, leader election).
    pub identity: String,
    /// Score weights.
    pub weights: Weights,
    /// Percentage of nodes to evaluate on big clusters; `None` adapts to size.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Binding calls in flight at once.
    pub bind_concurrency: usize,
    /// Most pods one binding call carries (`BindPods`); 1 binds each pod
    /// with its own `BindPod` call.
    pub bind_batch_size: usize,
    /// Queue timing.
    pub queue: QueueConfig,
    /// Run only while holding this lease.
    pub leader_election: Option<LeaderElectionConfig>,
}

impl SchedulerConfig {
    /// Defaults: "default-scheduler", adaptive node sampling, 8 binding
    /// calls in flight of up to 256 pods each.
    pub fn new(identity: &str) -> Self {
        Self {
            scheduler_name: "default-scheduler".into(),
            identity: identity.to_owned(),
            weights: Weights::default(),
            percentage_of_nodes_to_score: None,
            bind_concurrency: 8,
            bind_batch_size: 256,
            queue: QueueConfig::default(),
            leader_election: None,
        }
    }
}

/// The scheduler's Prometheus metrics (Kubernetes' names).
pub(crate) struct Metrics {
    pub(crate) attempts: Arc<skiff::metrics::CounterVec>,
    pub(crate) duration: Arc<skiff::metrics::HistogramVec>,
    pub(crate) bound: Arc<skiff::metrics::CounterVec>,
    pub(crate) pod_duration: Arc<skiff::metrics::HistogramVec>,
    pub(crate) extension_points: Arc<skiff::metrics::HistogramVec>,
}

/// An extension point's status label: "Success" or "Error".
pub(crate) fn status_of(ok: bool) -> &'static str {
    if ok { "Success" } else { "Error" }
}

/// Records how long one extension point of the scheduling framework took.
pub(crate) fn extension_point(point: &str, status: &str, profile: &str, took: std::time::Duration) {
    metrics()
        .extension_points
        .with(&[point, status, profile])
        .observe_duration(took);
}

/// Buckets of the time from queueing to binding: 10 ms doubling to ~87 min.
const POD_SCHEDULING_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84,
    327.68, 655.36, 1310.72, 2621.44, 5242.88,
];

/// The `attempts` label of a bound pod: its attempt count, "16+" from 16 on.
pub(crate) fn attempts_label(attempts: u32) -> String {
    if attempts >= 16 {
        "16+".to_owned()
    } else {
        attempts.to_string()
    }
}

pub(crate) fn metrics() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let r = skiff::metrics::global();
        Metrics {
            attempts: r.counter(
                "scheduler_schedule_attempts_total",
                "Scheduling attempts by result (scheduled, unschedulable, error).",
                &["result"],
            ),
            duration: r.histogram(
                "scheduler_scheduling_attempt_duration_seconds",
                "Time to filter and score nodes for one pod, by result.",
                &["result"],
                skiff::metrics::LATENCY_BUCKETS,
            ),
            bound: r.counter("scheduler_pods_bound_total", "Pods bound to a node.", &[]),
            pod_duration: r.histogram(
                "scheduler_pod_scheduling_duration_seconds",
                "Time from a pod entering the scheduling queue to its binding, by the \
                 number of attempts it took.",
                &["attempts"],
                POD_SCHEDULING_BUCKETS,
            ),
            extension_points: r.histogram(
                "scheduler_framework_extension_point_duration_seconds",
                "Time one extension point took for one pod (PreFilter, Filter, Score, \
                 PostFilter, PreBind, Bind), by its status and the scheduler's profile.",
                &["extension_point", "status", "profile"],
                skiff::metrics::LATENCY_BUCKETS,
            ),
        }
    })
}

/// Counters of a running scheduler.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Scheduling attempts.
    pub attempts: AtomicU64,
    /// Pods bound.
    pub bound: AtomicU64,
    /// Attempts that found no node.
    pub unschedulable: AtomicU64,
    /// Bindings that failed.
    pub bind_errors: AtomicU64,
    /// Preemptions started.
    pub preemptions: AtomicU64,
    /// Pods whose binding call is in flight (sent, not yet answered).
    pub binding: AtomicU64,
}

/// Events are sent by a background task; when it falls behind they are
/// dropped rather than slowing scheduling (as Kubernetes' broadcaster does).
#[derive(Clone)]
pub(crate) struct EventSink(mpsc::Sender<(Arc<Pod>, &'static str, &'static str, String)>);

impl EventSink {
    fn start(recorder: Recorder) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Arc<Pod>, &'static str, &'static str, String)>(1024);
        tokio::spawn(async move {
            while let Some((pod, t, reason, message)) = rx.recv().await {
                recorder.record(&*pod, t, reason, &message).await;
            }
        });
        Self(tx)
    }

    pub(crate) fn send(
        &self,
        pod: Arc<Pod>,
        t: &'static str,
        reason: &'static str,
        message: String,
    ) {
        let _ = self.0.try_send((pod, t, reason, message));
    }
}

/// Whether this scheduler is responsible for a pending pod.
fn wants(config: &SchedulerConfig, p: &Pod) -> bool {
    let Some(spec) = &p.spec else { return false };
    spec.node_name.is_empty()
        && p.meta().deletion_timestamp.is_none()
        && !is_terminal(p)
        && (spec.scheduler_name.is_empty() || spec.scheduler_name == config.scheduler_name)
}

/// Runs the scheduler (with leader election if configured) until `shutdown`.
/// A replica that loses its lease stops scheduling, campaigns again and
/// starts afresh (new informers and cache) once it leads again; it never
/// exits because of a lost lease.
pub async fn run(
    client: Client,
    config: SchedulerConfig,
    stats: Arc<SchedulerStats>,
    shutdown: impl Future<Output = ()> + Send,
) {
    match config.leader_election.clone() {
        None => schedule(client, config, stats, shutdown).await,
        Some(election) => {
            let elector = LeaderElector::new(client.leases(&election.namespace), election);
            elector
                .lead_until(
                    |stop| schedule(client.clone(), config.clone(), stats.clone(), stop),
                    shutdown,
                )
                .await;
        }
    }
}

/// Schedules pods until `shutdown`.
pub async fn schedule(
    client: Client,
    config: SchedulerConfig,
    stats: Arc<SchedulerStats>,
    shutdown: impl Future<Output = ()>,
) {
    let factory = InformerFactory::new(client.clone());
    let nodes = factory.all::<Node>();
    let pods = factory.all::<Pod>();
    let claims = factory.all::<skiff::api::core::v1::PersistentVolumeClaim>();
    let volumes = factory.all::<skiff::api::core::v1::PersistentVolume>();
    let classes = factory.all::<skiff::api::storage::v1::StorageClass>();
    let namespaces = factory.all::<skiff::api::core::v1::Namespace>();
    let cache = Arc::new(Mutex::new(Cache::new()));
    let queue = SchedulingQueue::new(config.queue);
    let volume_stores = VolumeStores {
        claims: claims.store(),
        volumes: volumes.store(),
        classes: classes.store(),
    };
    // Pods waiting for a claim or volume try again when one changes.
    let mut volume_tasks = Vec::new();
    {
        let (mut c, mut v, q) = (claims.subscribe(), volumes.subscribe(), queue.clone());
        volume_tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = c.recv() => if matches!(r, Err(broadcast::error::RecvError::Closed)) { return },
                    r = v.recv() => if matches!(r, Err(broadcast::error::RecvError::Closed)) { return },
                }
                q.move_all();
            }
        }));
    }
    let node_changes = nodes.subscribe();
    let pod_changes = pods.subscribe();
    nodes.store().wait_until_ready().await;
    pods.store().wait_until_ready().await;
    volume_stores.claims.wait_until_ready().await;
    volume_stores.volumes.wait_until_ready().await;
    volume_stores.classes.wait_until_ready().await;
    namespaces.store().wait_until_ready().await;
    rebuild(&cache, &queue, &config, &nodes.store(), &pods.store());
    let handlers = follow_changes(
        &cache,
        &queue,
        &config,
        (nodes.store(), node_changes),
        (pods.store(), pod_changes),
    );

    let events = EventSink::start(Recorder::new(
        client.clone(),
        &config.scheduler_name,
        &config.identity,
    ));
    let binder = Binder::start(
        client.clone(),
        Outcome {
            cache: cache.clone(),
            queue: queue.clone(),
            stats: stats.clone(),
            events: events.clone(),
            profile: config.scheduler_name.clone(),
        },
        config.bind_concurrency,
        config.bind_batch_size,
    );
    let mut scheduling = Scheduling {
        binder,
        client,
        config,
        stats,
        cache,
        queue: queue.clone(),
        events,
        pods: pods.store(),
        namespaces: namespaces.store(),
        volumes: volume_stores,
        next_start: 0,
    };
    tokio::pin!(shutdown);
    loop {
        let q = tokio::select! {
            q = queue.pop() => q,
            _ = &mut shutdown => break,
        };
        let Some(q) = q else { break };
        scheduling.schedule_one(q).await;
    }
    queue.close();
    drop(scheduling);
    for h in handlers.into_iter().chain(volume_tasks) {
        h.abort();
    }
}

/// Keeps the cache and queue current with node and pod changes; returns
/// the two tasks doing it.
fn follow_changes(
    cache: &Arc<Mutex<Cache>>,
    queue: &SchedulingQueue,
    config: &SchedulerConfig,
    (node_store, mut node_changes): (Store<Node>, broadcast::Receiver<Change<Node>>),
    (pod_store, mut pod_changes): (Store<Pod>, broadcast::Receiver<Change<Pod>>),
) -> [tokio::task::JoinHandle<()>; 2] {
    let (c, q, config2) = (cache.clone(), queue.clone(), config.clone());
    let (nodes, pods) = (node_store.clone(), pod_store.clone());
    let node_task = tokio::spawn(async move {
        loop {
            match node_changes.recv().await {
                Ok(Change::Applied(n)) => c.lock().expect("cache").upsert_node(n),
                Ok(Change::Deleted(n)) => c.lock().expect("cache").remove_node(n.name()),
                Ok(Change::Resynced) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    rebuild(&c, &q, &config2, &nodes, &pods)
                }
                Err(_) => return,
            }
            q.move_all();
        }
    });
    let (cache, queue, config) = (cache.clone(), queue.clone(), config.clone());
    let pod_task = tokio::spawn(async move {
        loop {
            match pod_changes.recv().await {
                Ok(Change::Applied(p)) => {
                    if wants(&config, &p) {
                        queue.add(p);
                    } else {
                        queue.remove(&pod_key(&p));
                        let freed = is_terminal(&p) || p.meta().deletion_timestamp.is_some();
                        cache.lock().expect("cache").upsert_pod(p);
                        if freed {
                            queue.move_all();
                        }
                    }
                }
                Ok(Change::Deleted(p)) => {
                    let key = pod_key(&p);
                    queue.remove(&key);
                    cache.lock().expect("cache").remove_pod(&key);
                    queue.move_all();
                }
                Ok(Change::Resynced) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    rebuild(&cache, &queue, &config, &node_store, &pod_store)
                }
                Err(_) => return,
            }
        }
    });
    [node_task, pod_task]
}

/// Why each node was ruled out, by node name.
type Failures = std::collections::BTreeMap<String, Vec<Reason>>;

/// The scheduling loop's state: what one attempt reads and writes.
struct Scheduling {
    client: Client,
    config: SchedulerConfig,
    stats: Arc<SchedulerStats>,
    cache: Arc<Mutex<Cache>>,
    queue: SchedulingQueue,
    events: EventSink,
    /// Where assumed pods go to be bound.
    binder: Binder,
    pods: Store<Pod>,
    /// Namespaces, for pod affinity terms that select them by label.
    namespaces: Store<skiff::api::core::v1::Namespace>,
    /// Claims, volumes and classes, for pods with persistent volumes.
    volumes: VolumeStores,
    /// Where the next node search starts (searches rotate over the nodes).
    next_start: usize,
}

impl Scheduling {
    /// One attempt for one queued pod: filter and score, then bind it to
    /// the best node, or preempt and report it unschedulable.
    async fn schedule_one(&mut self, q: QueuedPod) {
        let key = pod_key(&q.pod);
        let Some(latest) = self
            .pods
            .get(&ObjectKey::new(q.pod.namespace(), q.pod.name()))
        else {
            self.queue.done(&key);
            return;
        };
        if !wants(&self.config, &latest) || self.cache.lock().expect("cache").is_placed(&key) {
            self.queue.done(&key);
            return;
        }
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let attempt_started = std::time::Instant::now();
        let mut info = PodInfo::new(latest.clone());
        let profile = self.config.scheduler_name.as_str();
        let needs = match crate::volumes::needs(&latest, &self.volumes) {
            Ok(n) => n,
            Err(why) => {
                let took = attempt_started.elapsed();
                extension_point("PreFilter", "UnschedulableAndUnresolvable", profile, took);
                let total = self.cache.lock().expect("cache").node_count();
                let message = format!("0/{total} nodes are available: {why}.");
                self.unschedulable(q, latest, &info, &Failures::new(), message);
                return;
            }
        };
        let (mut result, total) = {
            let cache = self.cache.lock().expect("cache");
            let total = cache.node_count();
            let namespaces = &self.namespaces;
            let labels = |ns: &str| {
                namespaces
                    .get(&ObjectKey::new("", ns))
                    .map(|n| n.meta().labels.clone())
            };
            info.constraints =
                crate::interpod::Constraints::of(&cache, &latest, &labels).map(Arc::new);
            extension_point("PreFilter", "Success", profile, attempt_started.elapsed());
            let s = search(
                &cache,
                &info,
                self.next_start,
                self.config.weights,
                self.config.percentage_of_nodes_to_score,
            );
            (s, total)
        };
        if !needs.node_affinity.is_empty() {
            let cache = self.cache.lock().expect("cache");
            result.feasible.retain(|(name, _)| {
                let fits = cache
                    .node(name)
                    .and_then(|n| n.node.as_ref())
                    .is_some_and(|n| needs.fits(n));
                if !fits {
                    result
                        .failures
                        .insert(name.clone(), vec![Reason::VolumeNodeAffinity]);
                }
                fits
            });
        }
        self.next_start = if total == 0 {
            0
        } else {
            (self.next_start + result.tried) % total
        };
        let m = metrics();
        let (outcome, filter_status) = if result.feasible.is_empty() {
            ("unschedulable", "Unschedulable")
        } else {
            ("scheduled", "Success")
        };
        extension_point("Filter", filter_status, profile, result.filter_time);
        if !result.feasible.is_empty() {
            extension_point("Score", "Success", profile, result.score_time);
        }
        m.attempts.with(&[outcome]).inc();
        m.duration
            .with(&[outcome])
            .observe_duration(attempt_started.elapsed());
        if result.feasible.is_empty() {
            let message = failure_message(total, &result.failures);
            self.unschedulable(q, latest, &info, &result.failures, message);
            return;
        }
        let best = result.feasible.iter().map(|(_, s)| *s).max().unwrap_or(0);
        let ties: Vec<&String> = result
            .feasible
            .iter()
            .filter(|(_, s)| *s == best)
            .map(|(n, _)| n)
            .collect();
        let node = ties[rand::rng().random_range(0..ties.len())].clone();
        self.cache
            .lock()
            .expect("cache")
            .assume(latest.clone(), &node);
        self.binder
            .bind(Assumed {
                q,
                pod: latest,
                key,
                node,
                delayed_claims: needs.delayed,
            })
            .await;
    }

    /// A pod that fits nowhere: preempt lower-priority pods if that makes
    /// room, record why it did not fit, and park it until the cluster changes.
    fn unschedulable(
        &self,
        q: QueuedPod,
        pod: Arc<Pod>,
        info: &PodInfo,
        failures: &Failures,
        message: String,
    ) {
        self.stats.unschedulable.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let nominated = self.preempt(&pod, info, failures);
        extension_point(
            "PostFilter",
            if nominated.is_some() {
                "Success"
            } else {
                "Unschedulable"
            },
            &self.config.scheduler_name,
            started.elapsed(),
        );
        tracing::debug!(pod = %pod_key(&pod), %message, "unschedulable");
        self.events
            .send(pod.clone(), WARNING, "FailedScheduling", message.clone());
        tokio::spawn(mark_unschedulable(
            self.client.clone(),
            pod,
            message,
            nominated,
        ));
        self.queue.unschedulable(q);
    }

    /// Evicts the victims that make room for `pod`, if any; returns the node
    /// it is nominated to.
    fn preempt(&self, pod: &Arc<Pod>, info: &PodInfo, failures: &Failures) -> Option<String> {
        let victims = {
            let cache = self.cache.lock().expect("cache");
            select_victims(&cache, info, failures)
        }?;
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        self.cache
            .lock()
            .expect("cache")
            .nominate(pod, &victims.node);
        let key = pod_key(pod);
        for victim in victims.pods {
            let api = self.client.pods(victim.namespace());
            let name = victim.name().to_owned();
            let preempted = format!("Preempted by {key} on node {}", victims.node);
            let events = self.events.clone();
            tokio::spawn(async move {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) | Err(Error::NotFound(_)) => {
                        events.send(victim, NORMAL, "Preempted", preempted)
                    }
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %e, "could not evict a preemption victim")
                    }
                }
            });
        }
        Some(victims.node)
    }
}

/// Rebuilds the cache and queue from the informers' stores.
fn rebuild(
    cache: &Mutex<Cache>,
    queue: &SchedulingQueue,
    config: &SchedulerConfig,
    nodes: &Store<Node>,
    pods: &Store<Pod>,
) {
    let mut fresh = Cache::new();
    for n in nodes.list() {
        fresh.upsert_node(n);
    }
    let mut c = cache.lock().expect("cache");
    for p in pods.list() {
        if wants(config, &p) {
            // Keep pods whose binding is in flight counted where they were assumed.
            if !c.is_placed(&pod_key(&p)) {
                queue.add(p);
            }
        } else {
            fresh.upsert_pod(p);
        }
    }
    *c = fresh;
    drop(c);
    queue.move_all();
}

/// Writes `PodScheduled=False` (and the nominated node) into a pod's status.
async fn mark_unschedulable(
    client: Client,
    pod: Arc<Pod>,
    message: String,
    nominated: Option<String>,
) {
    let api = client.pods(pod.namespace());
    let mut current = (*pod).clone();
    for _ in 0..3 {
        let status = current.status.get_or_insert_with(Default::default);
        let cond = PodCondition {
            r#type: "PodScheduled".into(),
            status: "False".into(),
            reason: "Unschedulable".into(),
            message: message.clone(),
            last_probe_time: None,
            last_transition_time: Some(std::time::SystemTime::now().into()),
        };
        let unchanged = status
            .conditions
            .iter()
            .any(|c| c.r#type == "PodScheduled" && c.status == "False" && c.message == message)
            && nominated
                .as_ref()
                .is_none_or(|n| *n == status.nominated_node_name);
        if unchanged {
            return;
        }
        status.conditions.retain(|c| c.r#type != "PodScheduled");
        status.conditions.push(cond);
        if let Some(n) = &nominated {
            status.nominated_node_name = n.clone();
        }
        match api.update_status(&current).await {
            Ok(_) | Err(Error::NotFound(_)) => return,
            Err(Error::Conflict(_)) => match api.get(pod.name()).await {
                Ok(p) if p.spec.as_ref().is_some_and(|s| s.node_name.is_empty()) => current = p,
                _ => return,
            },
            Err(e) => {
                tracing::debug!(error = %e, "could not write PodScheduled=False");
                return;
            }
        }
    }
}
