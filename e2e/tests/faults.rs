//! The fault suite: an HA cluster (3 etcd members in Docker containers on a
//! network the test creates, 3 API servers, 2 schedulers, 2 controller
//! managers, 3 kubelets, all real processes) runs
//! a Deployment of 50 replicas while two writers make creates and
//! compare-and-swap updates through a client of every API server, logging
//! every operation, and watchers (one per API server, one over all) check
//! each event against that log. Faults come one at a time with recovery in
//! between; after each: no acknowledged write lost, no watch event missing
//! or repeated, exactly 50 pods, none bound twice, and requests answered
//! again. The whole history is checked for linearizability per key.
//!
//! Figures per fault are printed (run with `--no-capture`) and, when
//! `SKIFF_FAULT_REPORT` names a file, written to it as JSON lines.
//! `SKIFF_FAULT_ROUNDS=N` runs the whole list N times (the longer variant).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use skiff::Resource;
use skiff::api::apps::v1::Deployment;
use skiff::api::coordination::v1::{Lease, LeaseSpec};
use skiff::api::core::v1::{Namespace, Pod};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::{Client, Error};
use skiff::runtime::watcher::{Event, WatcherConfig, watcher};
use skiff::testing::eventually;
use skiff_e2e::docker_etcd::DockerEtcd;
use skiff_e2e::ha::{Etcd, HaCluster, LEASE_DURATION, NODE_GRACE, RETRY_PERIOD};
use skiff_e2e::history::{Entry, Op, WriteOutcome, check};

const NS: &str = "faults";
const REPLICAS: usize = 50;
const KEYS_PER_PHASE: usize = 4;
/// Requests must be answered again this soon after a fault is healed.
const RECOVERY: Duration = Duration::from_secs(30);
/// How long without a refused request counts as recovered.
const QUIET: Duration = Duration::from_secs(2);

/// Everything the writers did, and every request that failed.
#[derive(Default)]
struct Log {
    history: Mutex<Vec<Entry>>,
    errors: Mutex<Vec<(Instant, String)>>,
    requests: AtomicUsize,
}

impl Log {
    fn record(&self, e: Entry) {
        self.history.lock().unwrap().push(e);
    }

    fn error(&self, what: String) {
        self.errors.lock().unwrap().push((Instant::now(), what));
    }

    fn errors_since(&self, t: Instant) -> Vec<(Instant, String)> {
        let errors = self.errors.lock().unwrap();
        errors.iter().filter(|(at, _)| *at >= t).cloned().collect()
    }
}

fn lease(name: &str, value: &str) -> Lease {
    Lease {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: NS.into(),
            ..Default::default()
        }),
        spec: Some(LeaseSpec {
            holder_identity: Some(value.into()),
            ..Default::default()
        }),
    }
}

fn rv(l: &Lease) -> i64 {
    l.meta().resource_version.parse().unwrap_or_default()
}

fn value(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

fn outcome(r: &Result<Lease, Error>) -> WriteOutcome {
    match r {
        Ok(l) => WriteOutcome::Applied(rv(l)),
        Err(Error::AlreadyExists(_) | Error::Conflict(_)) => WriteOutcome::Refused,
        Err(_) => WriteOutcome::Unknown,
    }
}

/// One writer: reads a key of the current phase, then creates it or swaps
/// its value conditionally on the version read.
async fn writer(
    id: usize,
    client: Client,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    log: Arc<Log>,
) {
    let leases = client.leases(NS);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let key = format!(
            "p{}-k{}",
            phase.load(Ordering::Relaxed),
            (seq as usize + id) % KEYS_PER_PHASE
        );
        let invoked = Instant::now();
        log.requests.fetch_add(1, Ordering::Relaxed);
        let read = leases.get(&key).await;
        let completed = Instant::now();
        let current = match read {
            Ok(l) => {
                log.record(Entry {
                    key: key.clone(),
                    op: Op::Read(Some((rv(&l), value(&l)))),
                    invoked,
                    completed: Some(completed),
                });
                Some(l)
            }
            Err(Error::NotFound(_)) => {
                log.record(Entry {
                    key: key.clone(),
                    op: Op::Read(None),
                    invoked,
                    completed: Some(completed),
                });
                None
            }
            Err(e) => {
                log.error(format!("get {key}: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let new_value = format!("w{id}-{seq}");
        let invoked = Instant::now();
        log.requests.fetch_add(1, Ordering::Relaxed);
        let (op_of, result) = match current {
            None => (None, leases.create(&lease(&key, &new_value)).await),
            Some(mut l) => {
                let expected = rv(&l);
                l.spec.get_or_insert_with(Default::default).holder_identity =
                    Some(new_value.clone());
                (Some(expected), leases.update(&l).await)
            }
        };
        let outcome = outcome(&result);
        if let Err(e) = &result
            && outcome == WriteOutcome::Unknown
        {
            log.error(format!("write {key}: {e}"));
        }
        let op = match op_of {
            None => Op::Create {
                value: new_value,
                outcome,
            },
            Some(expected) => Op::Cas {
                expected,
                value: new_value,
                outcome,
            },
        };
        log.record(Entry {
            key,
            op,
            invoked,
            completed: (outcome != WriteOutcome::Unknown).then(Instant::now),
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What one watcher saw of the leases: (key, rv, value) of each change, and
/// how many times it had to list again.
#[derive(Default, Clone)]
struct Seen {
    events: Vec<(String, i64, String)>,
    inits: usize,
    /// When each initial state after the first was complete.
    relisted: Vec<Instant>,
    /// The versions of each initial state after the first, by key.
    relist_states: Vec<HashMap<String, i64>>,
    listing: HashMap<String, i64>,
}

fn spawn_lease_watcher(client: Client) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    let stream = watcher(client.leases(NS), WatcherConfig::default());
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let mut s = out.lock().unwrap();
            match item {
                Ok(Event::Apply(l)) => {
                    s.events.push((l.name().to_owned(), rv(&l), value(&l)));
                }
                Ok(Event::Init) => s.listing.clear(),
                Ok(Event::InitApply(l)) => {
                    let v = rv(&l);
                    s.listing.insert(l.name().to_owned(), v);
                }
                Ok(Event::InitDone) => {
                    s.inits += 1;
                    if s.inits > 1 {
                        s.relisted.push(Instant::now());
                        let state = std::mem::take(&mut s.listing);
                        s.relist_states.push(state);
                    }
                }
                _ => {}
            }
        }
    });
    (seen, task)
}

/// Node names each pod was seen bound to, by uid.
type Bindings = Arc<Mutex<HashMap<String, HashSet<String>>>>;

/// Records [`Bindings`] from a watch of the pods.
fn spawn_pod_watcher(client: Client) -> (Bindings, tokio::task::JoinHandle<()>) {
    let seen: Bindings = Default::default();
    let out = seen.clone();
    let stream = watcher(client.pods("default"), WatcherConfig::default());
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if let Ok(Event::Apply(p) | Event::InitApply(p)) = item {
                let node = p
                    .spec
                    .as_ref()
                    .map(|s| s.node_name.clone())
                    .unwrap_or_default();
                let mut s = out.lock().unwrap();
                let nodes = s.entry(p.meta().uid.clone()).or_default();
                if !node.is_empty() {
                    nodes.insert(node);
                }
            }
        }
    });
    (seen, task)
}

fn deployment() -> Deployment {
    let mut d = skiff_e2e::deployment("web", REPLICAS as i32, "busybox");
    let spec = d
        .spec
        .as_mut()
        .and_then(|s| s.template.as_mut())
        .and_then(|t| t.spec.as_mut());
    let spec = spec.expect("a pod template");
    spec.containers[0].command = vec!["sleep".into(), "3600".into()];
    spec.termination_grace_period_seconds = Some(1);
    d
}

/// The uids of the active (not terminating) pods once there are exactly
/// `REPLICAS` of them, all Running.
async fn fifty_running(client: &Client, within: Duration) -> HashSet<String> {
    eventually("exactly 50 pods, all Running", within, async || {
        let pods = client
            .pods("default")
            .list(&Default::default())
            .await
            .ok()?;
        let active: Vec<&Pod> = pods
            .items
            .iter()
            .filter(|p| p.meta().deletion_timestamp.is_none())
            .collect();
        let running = active
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.phase == "Running"))
            .count();
        (active.len() == REPLICAS && running == REPLICAS)
            .then(|| active.iter().map(|p| p.meta().uid.clone()).collect())
    })
    .await
}

/// Figures of one fault.
struct Figures {
    fault: &'static str,
    refused: usize,
    recovered_after: Duration,
    takeover: Option<Duration>,
    new_pods: usize,
}

/// Waits until requests have been answered for [`QUIET`] in a row; returns
/// how long after `injected` the last refusal was.
async fn recovered(log: &Log, injected: Instant, fault: &str) -> (usize, Duration) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let errors = log.errors_since(injected);
        let last = errors.last().map(|(t, _)| *t).unwrap_or(injected);
        if last.elapsed() >= QUIET {
            return (errors.len(), last - injected);
        }
        assert!(
            Instant::now() < deadline,
            "{fault}: requests still refused {RECOVERY:?} after healing: {:?}",
            errors
                .iter()
                .rev()
                .take(5)
                .map(|(_, e)| e)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until lease `name` is held by someone other than `old`; how long it took.
async fn takeover(cluster: &HaCluster, client: &Client, name: &str, old: &str) -> Duration {
    let start = Instant::now();
    let limit = LEASE_DURATION + RETRY_PERIOD + Duration::from_secs(10);
    eventually(
        &format!("another replica takes {name}"),
        limit,
        async || {
            let holder = cluster.leader(client, name).await?;
            (holder != old).then_some(())
        },
    )
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ha_cluster_loses_no_write_or_event_and_keeps_fifty_pods_through_each_fault() {
    let started = Instant::now();
    let etcd = Etcd::Docker(DockerEtcd::start().await);
    let mut cluster = HaCluster::start(3, etcd).await;
    let client = cluster.client().await;
    client
        .namespaces()
        .create(&Namespace {
            metadata: Some(ObjectMeta {
                name: NS.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut watchers = Vec::new();
    for i in 0..3 {
        watchers.push(spawn_lease_watcher(cluster.client_of(i).await));
    }
    watchers.push(spawn_lease_watcher(cluster.client().await));
    let (bindings, pod_task) = spawn_pod_watcher(cluster.client().await);
    client
        .deployments("default")
        .create(&deployment())
        .await
        .unwrap();
    let mut uids = fifty_running(&client, Duration::from_secs(120)).await;

    let log = Arc::new(Log::default());
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in 0..2 {
        writers.push(tokio::spawn(writer(
            id,
            cluster.client().await,
            phase.clone(),
            stop.clone(),
            log.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let faults: [&'static str; 9] = [
        "etcd follower killed",
        "etcd leader killed",
        "etcd leader partitioned",
        "API server SIGKILL",
        "API server partitioned from etcd",
        "controller-manager leader SIGKILL",
        "scheduler leader SIGKILL",
        "kubelet SIGKILL",
        "all nodes cut off",
    ];
    let mut figures = Vec::new();
    // CI runs each fault once; `SKIFF_FAULT_ROUNDS=N` runs the list N times.
    let rounds: usize = std::env::var("SKIFF_FAULT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let schedule = (0..rounds).flat_map(|_| faults);
    for (n, fault) in schedule.enumerate() {
        phase.store(n + 1, Ordering::Relaxed);
        let injected = Instant::now();
        let mut took = None;
        match fault {
            "etcd follower killed" | "etcd leader killed" => {
                let leader = cluster.etcd.leader().await;
                let victim = if fault == "etcd leader killed" {
                    leader
                } else {
                    (leader + 1) % 3
                };
                cluster.etcd.kill(victim);
                tokio::time::sleep(Duration::from_secs(4)).await;
                cluster.etcd.restart(victim).await;
            }
            "etcd leader partitioned" => {
                let leader = cluster.etcd.leader().await;
                cluster.etcd.partition(leader, true).await;
                tokio::time::sleep(Duration::from_secs(4)).await;
                cluster.etcd.partition(leader, false).await;
            }
            "API server SIGKILL" => {
                cluster.apiservers[0].proc.kill().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.apiservers[0].proc.start();
                cluster.wait_serving(0).await;
            }
            "API server partitioned from etcd" => {
                let cut = &cluster.apiservers[1];
                cut.partition_from_etcd(true);
                let alone = cluster.client_of(1).await;
                // It refuses consistent reads rather than answer from its
                // cache, and writes, while the others serve.
                eventually(
                    "the cut-off API server refuses consistent reads",
                    Duration::from_secs(30),
                    async || match alone.leases(NS).get("p1-k0").await {
                        Err(Error::Unavailable { .. }) => Some(()),
                        _ => None,
                    },
                )
                .await;
                let write = alone.leases(NS).create(&lease("cut-off-write", "x")).await;
                assert!(
                    matches!(write, Err(Error::Unavailable { .. })),
                    "a write to the cut-off server: {write:?}"
                );
                client
                    .leases(NS)
                    .get_opt("p1-k0")
                    .await
                    .expect("the other API servers serve meanwhile");
                tokio::time::sleep(Duration::from_secs(2)).await;
                cut.partition_from_etcd(false);
                cluster.wait_serving(1).await;
            }
            "controller-manager leader SIGKILL" | "scheduler leader SIGKILL" => {
                let (lease, procs) = if fault.starts_with("controller") {
                    ("skiff-controller-manager", &mut cluster.controller_managers)
                } else {
                    ("skiff-scheduler", &mut cluster.schedulers)
                };
                let holder = eventually("a leader", Duration::from_secs(30), async || {
                    let l = client.leases("skiff-system").get(lease).await.ok()?;
                    l.spec
                        .and_then(|s| s.holder_identity)
                        .filter(|h| !h.is_empty())
                })
                .await;
                let i = procs
                    .iter()
                    .position(|p| p.name == holder)
                    .expect("the leader is one of ours");
                procs[i].kill().await;
                if fault.starts_with("scheduler") {
                    // New pods only a scheduler can place.
                    let pods = client
                        .pods("default")
                        .list(&Default::default())
                        .await
                        .unwrap();
                    for p in pods.items.iter().take(5) {
                        let _ = client
                            .pods("default")
                            .delete(p.name(), &Default::default())
                            .await;
                    }
                }
                took = Some(takeover(&cluster, &client, lease, &holder).await);
                let procs = if fault.starts_with("controller") {
                    &mut cluster.controller_managers
                } else {
                    &mut cluster.schedulers
                };
                procs[i].start();
            }
            "kubelet SIGKILL" => {
                cluster.kubelets[0].kill().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                cluster.kubelets[0].start();
            }
            "all nodes cut off" => {
                for k in &cluster.kubelets {
                    k.pause(true);
                }
                // Past the grace period and the eviction timeout.
                tokio::time::sleep(NODE_GRACE + Duration::from_secs(8)).await;
                for k in &cluster.kubelets {
                    k.pause(false);
                }
            }
            _ => unreachable!(),
        }
        let (refused, recovered_after) = recovered(&log, injected, fault).await;
        for (_, e) in log.errors_since(injected).iter().take(3) {
            println!("    refused during {fault}: {e}");
        }
        let now = fifty_running(&client, Duration::from_secs(90)).await;
        let new_pods = now.difference(&uids).count();
        if !fault.starts_with("scheduler") {
            assert_eq!(
                new_pods, 0,
                "{fault}: no pod replaced (a standby that takes over creates none that exists, no node evicted)"
            );
        }
        uids = now;
        let twice: Vec<(String, HashSet<String>)> = bindings
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, nodes)| nodes.len() > 1)
            .map(|(u, n)| (u.clone(), n.clone()))
            .collect();
        assert!(twice.is_empty(), "{fault}: pods bound twice: {twice:?}");
        println!(
            "at {:>6.1} s fault: {fault:<36} refused {refused:>4}  recovered after {:>6.2} s  takeover {}  new pods {new_pods}",
            (injected - started).as_secs_f64(),
            recovered_after.as_secs_f64(),
            took.map(|t| format!("{:.2} s", t.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
        );
        figures.push(Figures {
            fault,
            refused,
            recovered_after,
            takeover: took,
            new_pods,
        });
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Let the watchers catch up with the last writes.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let history = log.history.lock().unwrap().clone();
    let acked: Vec<(String, i64, String)> = history
        .iter()
        .filter_map(|e| match &e.op {
            Op::Create {
                value,
                outcome: WriteOutcome::Applied(rv),
            }
            | Op::Cas {
                value,
                outcome: WriteOutcome::Applied(rv),
                ..
            } => Some((e.key.clone(), *rv, value.clone())),
            _ => None,
        })
        .collect();
    let written: HashSet<(String, String)> = history
        .iter()
        .filter_map(|e| match &e.op {
            Op::Create { value, outcome } | Op::Cas { value, outcome, .. }
                if *outcome != WriteOutcome::Refused =>
            {
                Some((e.key.clone(), value.clone()))
            }
            _ => None,
        })
        .collect();

    // No acknowledged write lost: each is in storage or was overwritten by
    // a later acknowledged one.
    let stored = client.leases(NS).list(&Default::default()).await.unwrap();
    let latest: HashMap<String, i64> = stored
        .items
        .iter()
        .map(|l| (l.name().to_owned(), rv(l)))
        .collect();
    let lost: Vec<&(String, i64, String)> = acked
        .iter()
        .filter(|(k, rv, _)| latest.get(k).is_none_or(|l| l < rv))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // Every watcher saw every acknowledged write once, in order, and nothing
    // nobody wrote.
    for (i, (seen, task)) in watchers.iter().enumerate() {
        task.abort();
        let seen = seen.lock().unwrap().clone();
        let versions: Vec<i64> = seen.events.iter().map(|(_, rv, _)| *rv).collect();
        let repeated = versions.windows(2).filter(|w| w[0] >= w[1]).count();
        assert_eq!(
            repeated,
            0,
            "watcher {i}: events repeated or out of order across resumes ({} relists)",
            seen.relisted.len()
        );
        let got: HashSet<(&str, i64)> = seen
            .events
            .iter()
            .map(|(k, rv, _)| (k.as_str(), *rv))
            .collect();
        // A watcher that had to list again (its server restarted and no
        // longer had the history) learns the writes of the gap from the
        // new initial state instead: those are not missing.
        let covered = |k: &str, rv: i64| {
            seen.relist_states
                .iter()
                .any(|state| state.get(k).is_some_and(|&listed| listed >= rv))
        };
        let missing: Vec<&(String, i64, String)> = acked
            .iter()
            .filter(|(k, rv, _)| !got.contains(&(k.as_str(), *rv)) && !covered(k, *rv))
            .collect();
        assert!(
            missing.is_empty(),
            "watcher {i}: {} of {} acknowledged writes never seen ({} events seen, last rv {:?}; relists at {:?} s; missing rv {:?}..{:?})",
            missing.len(),
            acked.len(),
            seen.events.len(),
            versions.last(),
            seen.relisted
                .iter()
                .map(|t| (*t - started).as_secs_f64())
                .collect::<Vec<_>>(),
            missing.first().map(|m| m.1),
            missing.last().map(|m| m.1),
        );
        let invented: Vec<&(String, i64, String)> = seen
            .events
            .iter()
            .filter(|(k, _, v)| !written.contains(&(k.clone(), v.clone())))
            .collect();
        assert!(
            invented.is_empty(),
            "watcher {i}: events nobody wrote: {invented:?}"
        );
        println!(
            "watcher {i}: {} events, 0 missing, 0 repeated, {} relists",
            seen.events.len(),
            seen.relisted.len()
        );
    }
    pod_task.abort();

    if let Err(v) = check(&history) {
        panic!("not linearizable: {v}");
    }
    let requests = log.requests.load(Ordering::Relaxed);
    println!(
        "history: {} operations ({} acknowledged writes) over {} requests, linearizable per key",
        history.len(),
        acked.len(),
        requests
    );
    if let Ok(path) = std::env::var("SKIFF_FAULT_REPORT") {
        let lines: Vec<String> = figures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "fault": f.fault,
                    "refused": f.refused,
                    "recovered_after_s": f.recovered_after.as_secs_f64(),
                    "takeover_s": f.takeover.map(|t| t.as_secs_f64()),
                    "new_pods": f.new_pods,
                    "events_lost": 0,
                })
                .to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }
}
