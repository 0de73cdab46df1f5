//! The scheduler against a real API server with registered nodes: resource
//! fit, selectors and affinity, taints, spreading, a pod waiting until a
//! node appears, preemption, and two replicas of which only the leader binds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::{
    Container, Node, Pod, PodSpec, ResourceRequirements, Taint, Toleration,
};
use skiff::api::meta::v1::{ObjectMeta, OwnerReference};
use skiff::client::Client;
use skiff::params::ListParams;
use skiff::runtime::LeaderElectionConfig;
use skiff::testing::eventually;
use skiff_apiserver::testing::TestServer;
use skiff_e2e::sim::{PodReaper, node};
use skiff_scheduler::queue::QueueConfig;
use skiff_scheduler::{SchedulerConfig, SchedulerStats};

/// How long scheduling may take in these tests.
const WAIT: Duration = Duration::from_secs(30);

fn pod(name: &str, cpu: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "busybox".into(),
                resources: Some(ResourceRequirements {
                    requests: [("cpu".to_string(), cpu.to_string())].into(),
                    limits: BTreeMap::new(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

struct Cluster {
    server: TestServer,
    client: Client,
    stats: Arc<SchedulerStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn fast_queue() -> QueueConfig {
    QueueConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        flush_after: Duration::from_secs(5),
    }
}

impl Cluster {
    async fn start(nodes: Vec<Node>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::embedded(dir.path()).await;
        let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
        for n in nodes {
            client.nodes().create(&n).await.unwrap();
        }
        let stats = Arc::new(SchedulerStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = SchedulerConfig {
            queue: fast_queue(),
            ..SchedulerConfig::new("test-scheduler")
        };
        let task = tokio::spawn(skiff_scheduler::schedule(
            client.clone(),
            config,
            stats.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            server,
            client,
            stats,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn node_of(&self, name: &str) -> String {
        eventually(&format!("{name} to be scheduled"), WAIT, async || {
            let p = self.client.pods("default").get(name).await.unwrap();
            Some(p.spec.unwrap().node_name).filter(|n| !n.is_empty())
        })
        .await
    }

    async fn unschedulable_message(&self, name: &str) -> String {
        let what = format!("{name} to be marked unschedulable");
        eventually(&what, WAIT, async || {
            let p = self.client.pods("default").get(name).await.unwrap();
            assert!(
                p.spec.as_ref().unwrap().node_name.is_empty(),
                "{name} must not be bound"
            );
            let c = p.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.r#type == "PodScheduled" && c.status == "False")
            })?;
            assert_eq!(c.reason, "Unschedulable");
            Some(c.message.clone())
        })
        .await
    }

    /// Events matching a field selector, once there are some (they are written asynchronously).
    async fn events(&self, selector: &str) -> Vec<skiff::api::core::v1::Event> {
        let what = format!("an event matching {selector}");
        eventually(&what, WAIT, async || {
            let list = self
                .client
                .events("default")
                .list(&ListParams {
                    field_selector: selector.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            Some(list.items).filter(|items| !items.is_empty())
        })
        .await
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        drop(self.server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_fill_nodes_by_resources_and_wait_for_a_new_node() {
    let c = Cluster::start(
        (1..=3)
            .map(|i| node(&format!("n{i}"), "2", "4Gi", 110, &[]))
            .collect(),
    )
    .await;
    for i in 0..6 {
        c.client
            .pods("default")
            .create(&pod(&format!("p{i}"), "1"))
            .await
            .unwrap();
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(c.node_of(&format!("p{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );

    c.client
        .pods("default")
        .create(&pod("extra", "1"))
        .await
        .unwrap();
    let message = c.unschedulable_message("extra").await;
    assert_eq!(message, "0/3 nodes are available: 3 Insufficient cpu.");
    let events = c
        .events("involvedObject.name=extra,reason=FailedScheduling")
        .await;
    assert_eq!(events[0].r#type, "Warning");
    assert_eq!(events[0].message, message);

    // A new node: the waiting pod goes there.
    c.client
        .nodes()
        .create(&node("n4", "2", "4Gi", 110, &[]))
        .await
        .unwrap();
    assert_eq!(c.node_of("extra").await, "n4");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_affinity_and_taints_decide_where_pods_go() {
    let mut tainted = node("gpu", "8", "8Gi", 110, &[("zone", "b")]);
    tainted.spec.as_mut().unwrap().taints.push(Taint {
        key: "dedicated".into(),
        value: "gpu".into(),
        effect: "NoSchedule".into(),
        time_added: None,
    });
    let c = Cluster::start(vec![
        node("a1", "2", "4Gi", 110, &[("zone", "a")]),
        node("b1", "2", "4Gi", 110, &[("zone", "b")]),
        tainted,
    ])
    .await;
    let api = c.client.pods("default");
    let mut in_b = pod("in-b", "100m");
    in_b.spec.as_mut().unwrap().node_selector = [("zone".to_string(), "b".to_string())].into();
    api.create(&in_b).await.unwrap();
    assert_eq!(
        c.node_of("in-b").await,
        "b1",
        "the tainted zone-b node is avoided"
    );

    let mut tolerant = pod("tolerant", "4");
    tolerant
        .spec
        .as_mut()
        .unwrap()
        .tolerations
        .push(Toleration {
            key: "dedicated".into(),
            operator: "Equal".into(),
            value: "gpu".into(),
            effect: "NoSchedule".into(),
            toleration_seconds: None,
        });
    api.create(&tolerant).await.unwrap();
    assert_eq!(
        c.node_of("tolerant").await,
        "gpu",
        "only the gpu node has 4 CPUs, and it is tolerated"
    );

    let mut nowhere = pod("nowhere", "100m");
    nowhere.spec.as_mut().unwrap().node_selector = [("zone".to_string(), "c".to_string())].into();
    api.create(&nowhere).await.unwrap();
    let message = c.unschedulable_message("nowhere").await;
    assert!(
        message.starts_with("0/3 nodes are available: "),
        "{message}"
    );
    assert!(
        message.contains("node(s) didn't match Pod's node affinity/selector"),
        "{message}"
    );

    let mut big = pod("big", "4");
    big.spec.as_mut().unwrap().node_selector = [("zone".to_string(), "b".to_string())].into();
    api.create(&big).await.unwrap();
    let message = c.unschedulable_message("big").await;
    // Every reason of every node counts: a1 lacks both the label and the CPU.
    assert_eq!(
        message,
        "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {dedicated: gpu}."
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sets_pods_spread_across_nodes() {
    let c = Cluster::start(
        (1..=3)
            .map(|i| node(&format!("n{i}"), "16", "32Gi", 110, &[]))
            .collect(),
    )
    .await;
    for i in 0..6 {
        let mut p = pod(&format!("web-{i}"), "10m");
        p.meta_mut().owner_references.push(OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "web-uid".into(),
            controller: Some(true),
            block_owner_deletion: None,
        });
        c.client.pods("default").create(&p).await.unwrap();
        // One at a time, so each placement sees the previous ones.
        c.node_of(&format!("web-{i}")).await;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(c.node_of(&format!("web-{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_keeps_replicas_apart_and_spread_constraints_balance_zones() {
    use skiff::api::core::v1::{
        Affinity, PodAffinity, PodAffinityTerm, PodAntiAffinity, TopologySpreadConstraint,
    };
    use skiff::api::meta::v1::LabelSelector;
    let zone = |i: usize| if i <= 2 { "a" } else { "b" };
    let c = Cluster::start(
        (1..=4)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    "16",
                    "32Gi",
                    110,
                    &[
                        ("kubernetes.io/hostname", &format!("n{i}")),
                        ("topology.kubernetes.io/zone", zone(i)),
                    ],
                )
            })
            .collect(),
    )
    .await;
    let selects = |app: &str| {
        Some(LabelSelector {
            match_labels: [("app".to_owned(), app.to_owned())].into(),
            match_expressions: vec![],
        })
    };
    let labeled = |name: &str, app: &str| {
        let mut p = pod(name, "10m");
        p.meta_mut().labels.insert("app".into(), app.into());
        p
    };
    // Required anti-affinity by host: four replicas on four nodes, the
    // fifth unschedulable with Kubernetes' reason.
    let apart = |name: &str| {
        let mut p = labeled(name, "db");
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: vec![PodAffinityTerm {
                    label_selector: selects("db"),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    let mut hosts = std::collections::BTreeSet::new();
    for i in 0..4 {
        let name = format!("db-{i}");
        c.client
            .pods("default")
            .create(&apart(&name))
            .await
            .unwrap();
        hosts.insert(c.node_of(&name).await);
    }
    assert_eq!(hosts.len(), 4, "one per node: {hosts:?}");
    c.client
        .pods("default")
        .create(&apart("db-4"))
        .await
        .unwrap();
    let message = c.unschedulable_message("db-4").await;
    assert!(
        message.contains("node(s) didn't match pod anti-affinity rules"),
        "{message}"
    );
    // Required affinity: a cache client goes to the zone of its cache.
    c.client
        .pods("default")
        .create(&labeled("cache-0", "cache"))
        .await
        .unwrap();
    let cache_node = c.node_of("cache-0").await;
    let cache_zone = zone(cache_node.trim_start_matches('n').parse().unwrap());
    let mut near = labeled("client", "client");
    near.spec.as_mut().unwrap().affinity = Some(Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: vec![PodAffinityTerm {
                label_selector: selects("cache"),
                topology_key: "topology.kubernetes.io/zone".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    });
    c.client.pods("default").create(&near).await.unwrap();
    let client_node = c.node_of("client").await;
    assert_eq!(
        zone(client_node.trim_start_matches('n').parse().unwrap()),
        cache_zone
    );
    // A spread constraint over zones: six web pods, three per zone.
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..6 {
        let name = format!("web-{i}");
        let mut p = labeled(&name, "web");
        p.spec.as_mut().unwrap().topology_spread_constraints = vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            label_selector: selects("web"),
            ..Default::default()
        }];
        c.client.pods("default").create(&p).await.unwrap();
        let n = c.node_of(&name).await;
        *per_zone
            .entry(zone(n.trim_start_matches('n').parse().unwrap()))
            .or_default() += 1;
    }
    assert_eq!(
        per_zone.values().copied().collect::<Vec<_>>(),
        [3, 3],
        "{per_zone:?}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_lower_priority_pods() {
    let c = Cluster::start(vec![node("only", "2", "4Gi", 110, &[])]).await;
    let _reaper = PodReaper::start(c.client.clone());
    let api = c.client.pods("default");
    for i in 0..2 {
        let mut p = pod(&format!("low-{i}"), "1");
        p.spec.as_mut().unwrap().priority = Some(1);
        api.create(&p).await.unwrap();
        c.node_of(&format!("low-{i}")).await;
    }
    let mut urgent = pod("urgent", "1");
    urgent.spec.as_mut().unwrap().priority = Some(100);
    api.create(&urgent).await.unwrap();
    assert_eq!(c.node_of("urgent").await, "only");
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(left.len(), 2, "exactly one victim was evicted: {left:?}");
    assert!(c.stats.preemptions.load(Ordering::Relaxed) >= 1);
    let preempted = c.events("reason=Preempted").await;
    assert!(
        preempted[0]
            .message
            .starts_with("Preempted by default/urgent"),
        "{:?}",
        preempted[0]
    );
    c.stop().await;
}

/// A scheduler replica campaigning for the lease (2 s) against `server`.
async fn start_replica(
    server: &TestServer,
    id: &str,
) -> (Arc<SchedulerStats>, tokio::task::JoinHandle<()>) {
    let stats = Arc::new(SchedulerStats::default());
    let config = SchedulerConfig {
        leader_election: Some(LeaderElectionConfig {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(200),
            ..LeaderElectionConfig::new("skiff-system", "skiff-scheduler", id)
        }),
        queue: fast_queue(),
        ..SchedulerConfig::new(id)
    };
    let c = Client::connect_to(&server.addr.to_string()).await.unwrap();
    let task = tokio::spawn(skiff_scheduler::run(
        c,
        config,
        stats.clone(),
        std::future::pending(),
    ));
    (stats, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_scheduler_replicas_only_the_leader_binds() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
    for i in 1..=3 {
        client
            .nodes()
            .create(&node(&format!("n{i}"), "64", "64Gi", 110, &[]))
            .await
            .unwrap();
    }
    let mut replicas = Vec::new();
    for id in ["s1", "s2"] {
        replicas.push(start_replica(&server, id).await);
    }
    let api = client.pods("default");
    for i in 0..30 {
        api.create(&pod(&format!("p{i}"), "100m")).await.unwrap();
    }
    eventually("all 30 pods to be bound", WAIT, async || {
        let bound = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| !p.spec.as_ref().unwrap().node_name.is_empty())
            .count();
        (bound == 30).then_some(())
    })
    .await;
    // A replica counts a bind once its call returns, after the API shows it.
    eventually("the replicas to count 30 binds", WAIT, async || {
        let counted: u64 = replicas
            .iter()
            .map(|(s, _)| s.bound.load(Ordering::Relaxed))
            .sum();
        (counted >= 30).then_some(())
    })
    .await;
    let bound: Vec<u64> = replicas
        .iter()
        .map(|(s, _)| s.bound.load(Ordering::Relaxed))
        .collect();
    let errors: Vec<u64> = replicas
        .iter()
        .map(|(s, _)| s.bind_errors.load(Ordering::Relaxed))
        .collect();
    assert!(
        bound.contains(&30) && bound.contains(&0),
        "one replica bound everything: {bound:?}"
    );
    assert_eq!(errors, [0, 0], "no pod was bound twice");
    for (_, t) in replicas {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_bind_5000_pods_exactly_once_across_a_leader_crash_on_embedded_storage() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    binds_exactly_once_across_a_leader_crash(&server, 5000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_bind_5000_pods_exactly_once_across_a_leader_crash_on_etcd() {
    let etcd = skiff_apiserver::testing::EtcdServer::start().await;
    let storage = skiff_apiserver::storage::etcd::EtcdStorage::connect(
        std::slice::from_ref(&etcd.endpoint),
        "/skiff",
    )
    .await
    .unwrap();
    let server = TestServer::start(Arc::new(storage)).await;
    binds_exactly_once_across_a_leader_crash(&server, 5000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_bind_5000_pods_exactly_once_across_a_leader_crash_on_three_etcd_members_losing_their_leader()
 {
    let mut cluster = skiff_apiserver::testing::EtcdCluster::start(3).await;
    let storage =
        skiff_apiserver::storage::etcd::EtcdStorage::connect(&cluster.endpoints(), "/skiff")
            .await
            .unwrap();
    let server = TestServer::start(Arc::new(storage)).await;
    let victim = cluster.leader().await;
    tokio::join!(
        async {
            // etcd's leader goes while pods are being created and bound.
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.kill(victim);
        },
        binds_exactly_once_across_a_leader_crash(&server, 5000)
    );
}

/// Two replicas with leader election schedule `count` pods; the leader is
/// killed (its task aborted, its lease left to expire, bindings it had in
/// flight still landing) once a third are bound, and the standby takes
/// over. Every bind the API server accepts is counted from a watch: each
/// pod is bound exactly once and never moves.
async fn binds_exactly_once_across_a_leader_crash(server: &TestServer, count: usize) {
    use futures::StreamExt;
    let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
    let nodes = count.div_ceil(100);
    for i in 0..nodes {
        client
            .nodes()
            .create(&node(&format!("n{i}"), "64", "64Gi", 110, &[]))
            .await
            .unwrap();
    }
    let api = client.pods("default");
    let start = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version;
    // Count bindings as the API server stores them.
    let binds: Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let mut events = api
        .watch(&skiff::params::WatchParams {
            resource_version: start,
            ..Default::default()
        })
        .await
        .unwrap();
    let seen = binds.clone();
    let counter = tokio::spawn(async move {
        let mut nodes: BTreeMap<String, String> = BTreeMap::new();
        while let Some(Ok(e)) = events.next().await {
            let Some(p) = e.object else { continue };
            let now = p
                .spec
                .as_ref()
                .map(|s| s.node_name.clone())
                .unwrap_or_default();
            let before = nodes
                .insert(p.name().to_owned(), now.clone())
                .unwrap_or_default();
            if now != before && !now.is_empty() {
                seen.lock()
                    .unwrap()
                    .entry(p.name().to_owned())
                    .or_default()
                    .push(now);
            }
        }
    });

    let mut replicas = Vec::new();
    for id in ["s1", "s2"] {
        let (stats, task) = start_replica(server, id).await;
        replicas.push((stats, Some(task)));
    }
    let creating = {
        let api = api.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..count)
                .map(|i| {
                    let api = api.clone();
                    async move {
                        // As a client does: retry while storage is unavailable
                        // (a create that landed before the error is then there).
                        let p = pod(&format!("p{i:05}"), "100m");
                        loop {
                            match api.create(&p).await {
                                Ok(_) | Err(skiff::client::Error::AlreadyExists(_)) => break,
                                Err(skiff::client::Error::Unavailable { .. }) => {
                                    tokio::time::sleep(Duration::from_millis(200)).await
                                }
                                Err(e) => panic!("creating {}: {e}", p.name()),
                            }
                        }
                    }
                })
                .buffer_unordered(32)
                .count()
                .await
        })
    };
    let bound =
        |binds: &Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>| binds.lock().unwrap().len();
    eventually(
        "a third of the pods to be bound",
        Duration::from_secs(120),
        async || (bound(&binds) >= count / 3).then_some(()),
    )
    .await;
    let leader = replicas
        .iter()
        .position(|(s, _)| s.bound.load(Ordering::Relaxed) > 0)
        .expect("one replica binds");
    replicas[leader].1.take().unwrap().abort();
    assert_eq!(creating.await.unwrap(), count);
    eventually(
        "every pod to be bound",
        Duration::from_secs(180),
        async || (bound(&binds) == count).then_some(()),
    )
    .await;
    let standby = 1 - leader;
    // Let bindings still in flight land (or be refused) before counting.
    // (A binding call answered Unavailable while etcd lost its leader may
    // still have been applied: its retry is then refused as already bound,
    // so the replicas' success counts may fall short of `count`; the
    // watch above is what counts.)
    eventually(
        "the replicas' bindings in flight to finish",
        WAIT,
        async || {
            replicas
                .iter()
                .all(|(s, _)| s.binding.load(Ordering::Relaxed) == 0)
                .then_some(())
        },
    )
    .await;
    let total: u64 = replicas
        .iter()
        .map(|(s, _)| s.bound.load(Ordering::Relaxed))
        .sum();
    assert!(
        total <= count as u64,
        "the replicas report {total} successful bindings of {count} pods"
    );
    let binds = binds.lock().unwrap().clone();
    let twice: Vec<_> = binds.iter().filter(|(_, n)| n.len() != 1).collect();
    assert!(twice.is_empty(), "pods bound more than once: {twice:?}");
    assert!(
        replicas[standby].0.bound.load(Ordering::Relaxed) > 0,
        "the standby took over and bound the rest"
    );
    counter.abort();
    for (_, t) in replicas {
        if let Some(t) = t {
            t.abort();
        }
    }
}
