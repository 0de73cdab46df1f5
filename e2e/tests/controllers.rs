//! The controller manager against a real API server and scheduler, with
//! simulated nodes: deployments reach their replicas, roll within their
//! availability bounds, scale; a silent node's pods are replaced elsewhere;
//! endpoints follow readiness; namespaces and cascades delete everything;
//! a controller restarted mid-rollout converges without duplicates.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::api::apps::v1::{Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment};
use skiff::api::core::v1::{Namespace, Pod, Service, ServicePort, ServiceSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use skiff::params::{DeleteParams, ListParams};
use skiff::runtime::{Event, WatcherConfig, watcher};
use skiff_apiserver::testing::TestServer;
use skiff_controllers::ControllersConfig;
use skiff_e2e::deployment;
use skiff_e2e::sim::SimNode;
use skiff_scheduler::SchedulerConfig;
use skiff_scheduler::queue::QueueConfig;
use tokio::sync::oneshot;

struct Cluster {
    client: Client,
    nodes: Vec<SimNode>,
    _scheduler: (Option<oneshot::Sender<()>>, tokio::task::JoinHandle<()>),
    controllers: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    key: Arc<ed25519_dalek::SigningKey>,
    _server: TestServer,
    _dir: tempfile::TempDir,
}

fn controllers_config() -> ControllersConfig {
    ControllersConfig {
        node_monitor_grace: Duration::from_secs(2),
        node_monitor_period: Duration::from_millis(200),
        pod_eviction_timeout: Duration::from_secs(1),
        ..ControllersConfig::new("test-controller-manager")
    }
}

impl Cluster {
    async fn start(nodes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::embedded(dir.path()).await;
        let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
        let mut sims = Vec::new();
        for i in 0..nodes {
            sims.push(
                SimNode::start(
                    client.clone(),
                    &format!("n{i}"),
                    i as u8,
                    Duration::from_millis(300),
                )
                .await,
            );
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let config = SchedulerConfig {
            queue: QueueConfig {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(500),
                flush_after: Duration::from_secs(5),
            },
            ..SchedulerConfig::new("test-scheduler")
        };
        let stats = Arc::new(skiff_scheduler::SchedulerStats::default());
        let sched = tokio::spawn(skiff_scheduler::schedule(
            client.clone(),
            config,
            stats,
            async {
                let _ = stopped.await;
            },
        ));
        let key = Arc::new(skiff::token::generate_key());
        let mut c = Self {
            client,
            nodes: sims,
            _scheduler: (Some(stop), sched),
            controllers: None,
            key,
            _server: server,
            _dir: dir,
        };
        c.start_controllers();
        c
    }

    fn start_controllers(&mut self) {
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ControllersConfig {
            service_account_key: Some(self.key.clone()),
            ..controllers_config()
        };
        let task = tokio::spawn(skiff_controllers::run_controllers(
            self.client.clone(),
            config,
            async {
                let _ = stopped.await;
            },
        ));
        self.controllers = Some((stop, task));
    }

    async fn stop_controllers(&mut self) {
        if let Some((stop, task)) = self.controllers.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Waits up to a minute for `f` to give a value.
    async fn eventually<T>(&self, what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
        skiff::testing::eventually(what, Duration::from_secs(60), f).await
    }

    async fn pods(&self, ns: &str, selector: &str) -> Vec<Pod> {
        self.client
            .pods(ns)
            .list(&ListParams {
                label_selector: selector.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .items
    }

    async fn wait_rolled_out(&self, ns: &str, name: &str) -> Deployment {
        let api = self.client.deployments(ns);
        self.eventually(&format!("deployment {name} to roll out"), async || {
            let d = api.get(name).await.ok()?;
            let want = d.spec.as_ref()?.replicas.unwrap_or(1);
            let s = d.status.as_ref()?;
            (s.observed_generation >= d.meta().generation
                && s.updated_replicas == want
                && s.replicas == want
                && s.available_replicas == want)
                .then_some(d)
        })
        .await
    }
}

fn active(p: &Pod) -> bool {
    p.meta().deletion_timestamp.is_none()
}

fn ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_of_ten_reaches_ten_ready_and_scales_10_3_20() {
    let c = Cluster::start(3).await;
    c.client
        .deployments("default")
        .create(&deployment("web", 10, "v1"))
        .await
        .unwrap();
    c.wait_rolled_out("default", "web").await;
    let pods = c.pods("default", "app=web").await;
    assert_eq!(pods.iter().filter(|p| active(p) && ready(p)).count(), 10);
    for replicas in [3, 20] {
        c.client
            .deployments("default")
            .scale("web", replicas)
            .await
            .unwrap();
        c.wait_rolled_out("default", "web").await;
        let n = c
            .eventually(&format!("{replicas} active pods"), async || {
                let n = c
                    .pods("default", "app=web")
                    .await
                    .iter()
                    .filter(|p| active(p) && ready(p))
                    .count();
                (n == replicas as usize).then_some(n)
            })
            .await;
        assert_eq!(n, replicas as usize);
    }
    // Events were recorded for what the controllers did.
    let events = c
        .client
        .events("default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        events.iter().any(|e| e.reason == "ScalingReplicaSet"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.reason == "SuccessfulCreate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pod_creation_is_retried_until_it_succeeds() {
    let c = Cluster::start(1).await;
    // The pods name a service account that does not exist yet: admission
    // refuses them (FailedCreate), as Kubernetes does…
    let mut d = deployment("late", 2, "v1");
    d.spec
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .service_account_name = "late-account".into();
    c.client.deployments("default").create(&d).await.unwrap();
    c.eventually("a FailedCreate event", async || {
        let events = c
            .client
            .events("default")
            .list(&ListParams::default())
            .await
            .ok()?
            .items;
        events
            .iter()
            .any(|e| e.reason == "FailedCreate" && e.message.contains("late-account"))
            .then_some(())
    })
    .await;
    // …and once it exists, the replica set tries again without any other
    // change: nothing happens for a while (no event would wake it up)…
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.client
        .service_accounts("default")
        .create(&skiff::api::core::v1::ServiceAccount {
            metadata: Some(ObjectMeta {
                name: "late-account".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    c.wait_rolled_out("default", "late").await;
    let pods = c.pods("default", "app=late").await;
    assert_eq!(pods.iter().filter(|p| active(p)).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_never_drops_below_replicas_minus_max_unavailable() {
    let c = Cluster::start(3).await;
    let mut d = deployment("web", 10, "v1");
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        r#type: "RollingUpdate".into(),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: "2".into(),
            max_surge: "3".into(),
        }),
    });
    c.client.deployments("default").create(&d).await.unwrap();
    c.wait_rolled_out("default", "web").await;

    // Track ready, non-terminating pods through the rollout.
    let live: Arc<Mutex<BTreeMap<String, Pod>>> = Arc::default();
    let min_ready = Arc::new(Mutex::new(usize::MAX));
    let max_pods = Arc::new(Mutex::new(0usize));
    let (l, m, mx) = (live.clone(), min_ready.clone(), max_pods.clone());
    let api = c.client.pods("default");
    let tracker = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, WatcherConfig::default().labels("app=web")));
        let mut initialized = false;
        while let Some(Ok(ev)) = events.next().await {
            let mut live = l.lock().unwrap();
            match ev {
                Event::InitApply(p) | Event::Apply(p) => {
                    live.insert(p.name().to_owned(), p);
                }
                Event::Delete(p) => {
                    live.remove(p.name());
                }
                Event::InitDone => initialized = true,
                Event::Init => live.clear(),
            }
            if initialized {
                let counted: Vec<&Pod> = live.values().filter(|p| active(p)).collect();
                let r = counted.iter().filter(|p| ready(p)).count();
                let mut m = m.lock().unwrap();
                *m = (*m).min(r);
                let mut mx = mx.lock().unwrap();
                *mx = (*mx).max(counted.len());
            }
        }
    });
    c.eventually("the tracker to see all pods", async || {
        (*min_ready.lock().unwrap() == 10).then_some(())
    })
    .await;
    set_image(&c, "web", "v2").await;
    let done = c.wait_rolled_out("default", "web").await;
    tracker.abort();
    let pods = c.pods("default", "app=web").await;
    let images: HashSet<String> = pods
        .iter()
        .filter(|p| active(p))
        .map(|p| p.spec.as_ref().unwrap().containers[0].image.clone())
        .collect();
    assert_eq!(
        images,
        ["v2".to_string()].into(),
        "every pod runs the new template"
    );
    assert!(
        *min_ready.lock().unwrap() >= 8,
        "ready pods fell to {}",
        min_ready.lock().unwrap()
    );
    assert!(
        *max_pods.lock().unwrap() <= 13,
        "pods rose to {} (surge 3)",
        max_pods.lock().unwrap()
    );
    let rss = c
        .client
        .replica_sets("default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(rss.len(), 2, "one replica set per template");
    assert!(
        done.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.r#type == "Progressing" && c.reason == "NewReplicaSetAvailable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nodes_pods_are_replaced_elsewhere() {
    let c = Cluster::start(3).await;
    c.client
        .deployments("default")
        .create(&deployment("web", 6, "v1"))
        .await
        .unwrap();
    c.wait_rolled_out("default", "web").await;
    let on_n0 = c
        .pods("default", "app=web")
        .await
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name == "n0")
        .count();
    assert!(on_n0 > 0, "pods were spread onto n0");
    c.nodes[0].stop();
    let node = c
        .eventually("n0 to be marked unreachable", async || {
            let n = c.client.nodes().get("n0").await.ok()?;
            let unknown = n
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "Unknown");
            (unknown && unreachable(&n)).then_some(n)
        })
        .await;
    assert_eq!(node.spec.unwrap().taints[0].effect, "NoExecute");
    c.eventually("six ready pods on other nodes", async || {
        let pods = c.pods("default", "app=web").await;
        let good = pods
            .iter()
            .filter(|p| active(p) && ready(p) && p.spec.as_ref().unwrap().node_name != "n0")
            .count();
        (good == 6).then_some(())
    })
    .await;
}

/// Whether the node lifecycle controller tainted `n` unreachable.
fn unreachable(n: &skiff::api::core::v1::Node) -> bool {
    n.spec.as_ref().is_some_and(|s| {
        s.taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable")
    })
}

/// Kubernetes' full-disruption mode: when every node goes silent at once,
/// the fault is taken to be the control plane's side: the health taints go,
/// no pod is evicted, and when a node is back the others get a new grace
/// period before they are tainted (and their pods evicted) again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_node_goes_silent_no_pod_is_evicted_until_one_returns_and_the_rest_get_a_new_grace_period()
 {
    let mut c = Cluster::start(3).await;
    c.client
        .deployments("default")
        .create(&deployment("web", 3, "v1"))
        .await
        .unwrap();
    c.wait_rolled_out("default", "web").await;
    for n in &c.nodes {
        n.stop();
    }
    c.eventually(
        "every node Ready=Unknown and, in full disruption, none tainted",
        async || {
            let nodes = c.client.nodes().list(&ListParams::default()).await.ok()?;
            nodes
                .items
                .iter()
                .all(|n| ready_status(n) == "Unknown" && !unreachable(n))
                .then_some(())
        },
    )
    .await;
    // The pods tolerate the taint for 1 s and nodes are checked every
    // 200 ms: for 3 s, a deletion would have come many times over.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let deleted: Vec<String> = c
            .pods("default", "app=web")
            .await
            .iter()
            .filter(|p| p.meta().deletion_timestamp.is_some())
            .map(|p| p.name().to_owned())
            .collect();
        assert!(
            deleted.is_empty(),
            "evicted in full disruption: {deleted:?}"
        );
        let tainted: Vec<String> = c
            .client
            .nodes()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|n| unreachable(n))
            .map(|n| n.name().to_owned())
            .collect();
        assert!(
            tainted.is_empty(),
            "tainted in full disruption: {tainted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One node returns: two of three silent is no longer a disruption, the
    // others' pods are evicted (one node every 10 s) and replaced on n0 —
    // but only after the others were given a whole new grace period from
    // n0's return, so that nodes on their way back are not evicted for a
    // silence that was not theirs.
    let client = c.client.clone();
    c.nodes[0] = SimNode::start(client, "n0", 0, Duration::from_millis(300)).await;
    c.eventually("three ready pods on the node that came back", async || {
        let pods = c.pods("default", "app=web").await;
        let good = pods
            .iter()
            .filter(|p| active(p) && ready(p) && p.spec.as_ref().unwrap().node_name == "n0")
            .count();
        (good == 3).then_some(())
    })
    .await;
    let nodes = c.client.nodes().list(&ListParams::default()).await.unwrap();
    let back = nodes
        .items
        .iter()
        .find(|n| n.name() == "n0")
        .and_then(|n| ready_condition(n)?.last_transition_time)
        .map(|t| std::time::SystemTime::try_from(t).unwrap())
        .expect("n0 Ready since it came back");
    let grace = controllers_config().node_monitor_grace;
    for n in nodes.items.iter().filter(|n| n.name() != "n0") {
        let taint = n
            .spec
            .as_ref()
            .and_then(|s| {
                s.taints
                    .iter()
                    .find(|t| t.key == "node.kubernetes.io/unreachable")
            })
            .unwrap_or_else(|| panic!("{} tainted unreachable again", n.name()));
        let added = std::time::SystemTime::try_from(taint.time_added.unwrap()).unwrap();
        assert!(
            added >= back + grace,
            "{} tainted {:?} after n0 came back, within the new grace period of {grace:?}",
            n.name(),
            added.duration_since(back).unwrap_or_default(),
        );
    }
}

/// The status of `n`'s Ready condition.
fn ready_status(n: &skiff::api::core::v1::Node) -> &str {
    ready_condition(n).map_or("", |c| c.status.as_str())
}

fn ready_condition(n: &skiff::api::core::v1::Node) -> Option<&skiff::api::core::v1::NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_endpoints_follow_its_pods_readiness() {
    let c = Cluster::start(2).await;
    c.client
        .deployments("default")
        .create(&deployment("web", 3, "v1"))
        .await
        .unwrap();
    let svc = Service {
        metadata: Some(ObjectMeta {
            name: "web".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: vec![ServicePort {
                port: 80,
                target_port: "8080".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    c.client.services("default").create(&svc).await.unwrap();
    c.wait_rolled_out("default", "web").await;
    let eps = c.client.endpoints("default");
    c.eventually("three ready addresses", async || {
        let e = eps.get("web").await.ok()?;
        let s = e.subsets.first()?;
        (s.addresses.len() == 3 && s.ports[0].port == 8080).then_some(())
    })
    .await;
    // One pod turns not ready.
    let mut p = c
        .pods("default", "app=web")
        .await
        .into_iter()
        .find(active)
        .unwrap();
    let ip = p.status.as_ref().unwrap().pod_ip.clone();
    for cond in p.status.as_mut().unwrap().conditions.iter_mut() {
        if cond.r#type == "Ready" {
            cond.status = "False".into();
        }
    }
    c.client.pods("default").update_status(&p).await.unwrap();
    c.eventually("the unready pod to move to notReadyAddresses", async || {
        let e = eps.get("web").await.ok()?;
        let s = e.subsets.first()?;
        (s.addresses.len() == 2 && s.not_ready_addresses.iter().any(|a| a.ip == ip)).then_some(())
    })
    .await;
    c.client
        .services("default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    c.eventually("the endpoints to go with the service", async || {
        eps.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_everything_in_it() {
    let c = Cluster::start(1).await;
    c.client
        .namespaces()
        .create(&Namespace {
            metadata: Some(ObjectMeta {
                name: "team".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut d = deployment("web", 2, "v1");
    d.meta_mut().namespace = "team".into();
    c.client.deployments("team").create(&d).await.unwrap();
    c.wait_rolled_out("team", "web").await;
    // The service account controller gave it a default account with a token.
    let sa = c
        .eventually("the default service account and its token", async || {
            let sa = c
                .client
                .service_accounts("team")
                .get("default")
                .await
                .ok()?;
            (!sa.secrets.is_empty()).then_some(sa)
        })
        .await;
    let secret = c
        .client
        .secrets("team")
        .get(&sa.secrets[0].name)
        .await
        .unwrap();
    let token = String::from_utf8(secret.data["token"].clone()).unwrap();
    let claims = skiff::token::verify(&token, &c.key.verifying_key())
        .expect("a token signed with the cluster key");
    assert_eq!(claims.sub, "system:serviceaccount:team:default");

    c.client
        .namespaces()
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    c.eventually("the namespace to be gone", async || {
        c.client
            .namespaces()
            .get_opt("team")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    for kind_list in [
        c.client
            .pods("team")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        c.client
            .deployments("team")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        c.client
            .replica_sets("team")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        c.client
            .secrets("team")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
    ] {
        assert_eq!(kind_list, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_deletion_removes_dependents_in_the_background_the_foreground_or_not_at_all() {
    let c = Cluster::start(2).await;
    for name in ["bg", "fg", "orphan"] {
        c.client
            .deployments("default")
            .create(&deployment(name, 2, "v1"))
            .await
            .unwrap();
    }
    for name in ["bg", "fg", "orphan"] {
        c.wait_rolled_out("default", name).await;
    }
    let deps = c.client.deployments("default");
    deps.delete("bg", &DeleteParams::default()).await.unwrap();
    deps.delete(
        "fg",
        &DeleteParams {
            propagation_policy: "Foreground".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    deps.delete(
        "orphan",
        &DeleteParams {
            propagation_policy: "Orphan".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for name in ["bg", "fg"] {
        c.eventually(
            &format!("{name}'s replica set and pods to be gone"),
            async || {
                let rs = c
                    .client
                    .replica_sets("default")
                    .list(&ListParams {
                        label_selector: format!("app={name}"),
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                let pods = c.pods("default", &format!("app={name}")).await;
                (rs.items.is_empty() && pods.is_empty()).then_some(())
            },
        )
        .await;
    }
    c.eventually(
        "the foreground and orphan deployments to be gone",
        async || {
            let fg = deps.get_opt("fg").await.ok()?;
            let or = deps.get_opt("orphan").await.ok()?;
            (fg.is_none() && or.is_none()).then_some(())
        },
    )
    .await;
    // Orphaned: the replica set stays, with no owner.
    let rs: Vec<ReplicaSet> = c
        .client
        .replica_sets("default")
        .list(&ListParams {
            label_selector: "app=orphan".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(rs.len(), 1);
    assert!(rs[0].meta().owner_references.is_empty());
    assert_eq!(
        c.pods("default", "app=orphan")
            .await
            .iter()
            .filter(|p| active(p))
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_manager_restarted_mid_rollout_converges_without_duplicates() {
    let mut c = Cluster::start(3).await;
    c.client
        .deployments("default")
        .create(&deployment("web", 8, "v1"))
        .await
        .unwrap();
    c.wait_rolled_out("default", "web").await;
    set_image(&c, "web", "v2").await;
    // Stop the controllers as soon as the rollout has begun.
    c.eventually("the rollout to begin", async || {
        let pods = c.pods("default", "app=web").await;
        pods.iter()
            .any(|p| p.spec.as_ref().unwrap().containers[0].image == "v2")
            .then_some(())
    })
    .await;
    c.stop_controllers().await;
    c.start_controllers();
    c.wait_rolled_out("default", "web").await;
    let pods: Vec<Pod> = c
        .pods("default", "app=web")
        .await
        .into_iter()
        .filter(active)
        .collect();
    assert_eq!(pods.len(), 8, "no duplicate pods");
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image == "v2")
    );
    let rss = c
        .client
        .replica_sets("default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(rss.len(), 2, "no duplicate replica sets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_pod_cidrs() {
    let c = Cluster::start(4).await;
    let cidrs = c
        .eventually("every node to get a pod CIDR", async || {
            let nodes = c
                .client
                .nodes()
                .list(&ListParams::default())
                .await
                .ok()?
                .items;
            let cidrs: Vec<String> = nodes
                .iter()
                .filter_map(|n| n.spec.as_ref().map(|s| s.pod_cidr.clone()))
                .filter(|c| !c.is_empty())
                .collect();
            (cidrs.len() == 4).then_some(cidrs)
        })
        .await;
    let distinct: HashSet<&String> = cidrs.iter().collect();
    assert_eq!(distinct.len(), 4, "{cidrs:?}");
    assert!(
        cidrs
            .iter()
            .all(|c| c.starts_with("127.") && c.ends_with("/24")),
        "{cidrs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_are_counted_on_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
    let ns = client.namespaces().get("default").await.unwrap();
    let recorder = skiff::runtime::Recorder::new(client.clone(), "test", "test-1");
    for _ in 0..3 {
        recorder
            .record(&ns, "Warning", "Flapping", "it happened again")
            .await;
    }
    recorder
        .record(&ns, "Warning", "Flapping", "something else")
        .await;
    let events = client
        .events("default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let same: Vec<_> = events
        .iter()
        .filter(|e| e.message == "it happened again")
        .collect();
    assert_eq!(same.len(), 1);
    assert_eq!(same[0].count, 3);
    assert_eq!(events.len(), 2);
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0].image.clone()
}

/// Changes a deployment, retrying when a controller wrote it in between.
async fn change(c: &Cluster, name: &str, f: impl Fn(&mut Deployment)) {
    let api = c.client.deployments("default");
    loop {
        let mut d = api.get(name).await.unwrap();
        f(&mut d);
        match api.update(&d).await {
            Ok(_) => return,
            Err(skiff::client::Error::Conflict(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

async fn set_image(c: &Cluster, name: &str, image: &str) {
    change(c, name, |d| {
        d.spec
            .as_mut()
            .unwrap()
            .template
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = image.into();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_stops_every_old_pod_before_starting_new_ones() {
    let c = Cluster::start(2).await;
    let mut d = deployment("web", 4, "v1");
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        r#type: "Recreate".into(),
        rolling_update: None,
    });
    c.client.deployments("default").create(&d).await.unwrap();
    c.wait_rolled_out("default", "web").await;
    let overlap = Arc::new(Mutex::new(false));
    let o = overlap.clone();
    let api = c.client.pods("default");
    let tracker = tokio::spawn(async move {
        let mut live: BTreeMap<String, Pod> = BTreeMap::new();
        let mut events = std::pin::pin!(watcher(api, WatcherConfig::default().labels("app=web")));
        while let Some(Ok(ev)) = events.next().await {
            match ev {
                Event::InitApply(p) | Event::Apply(p) => {
                    live.insert(p.name().to_owned(), p);
                }
                Event::Delete(p) => {
                    live.remove(p.name());
                }
                _ => {}
            }
            // Any pod that still exists, even terminating, counts as old.
            let images: HashSet<String> = live.values().map(image_of).collect();
            if images.len() > 1 {
                *o.lock().unwrap() = true;
            }
        }
    });
    set_image(&c, "web", "v2").await;
    c.wait_rolled_out("default", "web").await;
    tracker.abort();
    assert!(
        !*overlap.lock().unwrap(),
        "old and new pods never existed together"
    );
    let pods = c.pods("default", "app=web").await;
    assert_eq!(
        pods.iter()
            .filter(|p| active(p) && image_of(p) == "v2")
            .count(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_deployments_do_not_roll_and_old_replica_sets_are_limited() {
    let c = Cluster::start(2).await;
    let mut d = deployment("web", 2, "v1");
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    c.client.deployments("default").create(&d).await.unwrap();
    c.wait_rolled_out("default", "web").await;
    let api = c.client.deployments("default");
    change(&c, "web", |d| d.spec.as_mut().unwrap().paused = true).await;
    set_image(&c, "web", "v2").await;
    let paused = c
        .eventually("the paused condition", async || {
            let d = api.get("web").await.ok()?;
            let s = d.status.as_ref()?;
            (s.observed_generation >= d.meta().generation
                && s.conditions.iter().any(|c| c.reason == "DeploymentPaused"))
            .then_some(d)
        })
        .await;
    let _ = paused;
    assert_eq!(
        c.client
            .replica_sets("default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1,
        "no rollout while paused"
    );
    change(&c, "web", |d| d.spec.as_mut().unwrap().paused = false).await;
    c.wait_rolled_out("default", "web").await;
    for image in ["v3", "v4"] {
        set_image(&c, "web", image).await;
        c.wait_rolled_out("default", "web").await;
    }
    let rss = c
        .eventually("old replica sets beyond the limit to go", async || {
            let rss = c
                .client
                .replica_sets("default")
                .list(&ListParams::default())
                .await
                .ok()?
                .items;
            (rss.len() == 2).then_some(rss)
        })
        .await;
    let revisions: Vec<String> = rss
        .iter()
        .map(|r| {
            r.meta()
                .annotations
                .get("deployment.kubernetes.io/revision")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert!(
        revisions.contains(&"4".to_string()) && revisions.contains(&"3".to_string()),
        "{revisions:?}"
    );
}
