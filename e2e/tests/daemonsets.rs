//! The DaemonSet controller against a real API server, scheduler and
//! controller manager, with simulated nodes that join, leave, get tainted
//! and cordoned: one pod per eligible node throughout; then a rolling
//! update within maxUnavailable and an OnDelete set that waits for the
//! user.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff::Resource;
use skiff::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use skiff::api::core::v1::{Container, Node, Pod, PodSpec, PodTemplateSpec, Taint};
use skiff::api::meta::v1::{LabelSelector, ObjectMeta};
use skiff::params::{DeleteParams, ListParams};
use skiff_e2e::cluster::Cluster;
use skiff_e2e::sim::SimNode;

const WAIT: Duration = Duration::from_secs(60);

fn daemon_set(name: &str, strategy: &str) -> DaemonSet {
    let labels: BTreeMap<String, String> = [("app".to_owned(), name.to_owned())].into();
    DaemonSet {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "kube-system".into(),
            ..Default::default()
        }),
        spec: Some(DaemonSetSpec {
            selector: Some(LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "agent".into(),
                        image: "agent:1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            update_strategy: Some(DaemonSetUpdateStrategy {
                r#type: strategy.into(),
                rolling_update: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Node name → images of the set's live pods there.
async fn placement(cluster: &Cluster, set: &str) -> BTreeMap<String, Vec<String>> {
    let pods: Vec<Pod> = cluster
        .client
        .pods("kube-system")
        .list(&ListParams {
            label_selector: format!("app={set}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in pods
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
    {
        let spec = p.spec.as_ref().unwrap();
        let running = p.status.as_ref().is_some_and(|s| s.phase == "Running");
        if !spec.node_name.is_empty() && running {
            out.entry(spec.node_name.clone())
                .or_default()
                .push(spec.containers[0].image.clone());
        }
    }
    out
}

async fn placed_on(cluster: &Cluster, set: &str, want: &[&str], image: &str) {
    let want: BTreeMap<String, Vec<String>> = want
        .iter()
        .map(|n| (n.to_string(), vec![image.to_owned()]))
        .collect();
    let what = format!("{set}'s pods on exactly {want:?}");
    skiff::testing::eventually(&what, WAIT, async || {
        (placement(cluster, set).await == want).then_some(())
    })
    .await;
}

async fn change_node(cluster: &Cluster, name: &str, f: impl Fn(&mut Node)) {
    let api = cluster.client.nodes();
    loop {
        let mut n = api.get(name).await.unwrap();
        f(&mut n);
        match api.update(&n).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("updating node {name}: {e}"),
        }
    }
}

async fn change_set(cluster: &Cluster, name: &str, f: impl Fn(&mut DaemonSet)) {
    let api = cluster.client.api::<DaemonSet>("kube-system");
    loop {
        let mut d = api.get(name).await.unwrap();
        f(&mut d);
        match api.update(&d).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("updating daemon set {name}: {e}"),
        }
    }
}

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        value: String::new(),
        effect: effect.into(),
        ..Default::default()
    }
}

async fn sim(cluster: &Cluster, name: &str, index: u8) -> SimNode {
    SimNode::start(
        cluster.client.clone(),
        name,
        index,
        Duration::from_millis(300),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_follows_nodes_as_they_join_leave_and_get_tainted() {
    let cluster = Cluster::start().await;
    let _a = sim(&cluster, "ds-a", 1).await;
    let _b = sim(&cluster, "ds-b", 2).await;
    cluster
        .client
        .api::<DaemonSet>("kube-system")
        .create(&daemon_set("agent", "RollingUpdate"))
        .await
        .unwrap();
    placed_on(&cluster, "agent", &["ds-a", "ds-b"], "agent:1").await;

    // A node joins: it gets one.
    let c = sim(&cluster, "ds-c", 3).await;
    placed_on(&cluster, "agent", &["ds-a", "ds-b", "ds-c"], "agent:1").await;

    // A NoSchedule taint keeps the pod; NoExecute takes it away; removing it brings it back.
    change_node(&cluster, "ds-b", |n| {
        n.spec.get_or_insert_with(Default::default).taints = vec![taint("dedicated", "NoSchedule")];
    })
    .await;
    change_node(&cluster, "ds-c", |n| {
        n.spec.get_or_insert_with(Default::default).taints = vec![taint("dedicated", "NoExecute")];
    })
    .await;
    placed_on(&cluster, "agent", &["ds-a", "ds-b"], "agent:1").await;
    change_node(&cluster, "ds-c", |n| {
        n.spec.get_or_insert_with(Default::default).taints.clear();
    })
    .await;
    placed_on(&cluster, "agent", &["ds-a", "ds-b", "ds-c"], "agent:1").await;

    // A cordoned new node still gets one (daemon pods tolerate unschedulable).
    let d = sim(&cluster, "ds-d", 4).await;
    change_node(&cluster, "ds-d", |n| {
        n.spec.get_or_insert_with(Default::default).unschedulable = true;
    })
    .await;
    placed_on(
        &cluster,
        "agent",
        &["ds-a", "ds-b", "ds-c", "ds-d"],
        "agent:1",
    )
    .await;

    // A node leaves: its pod goes.
    c.stop();
    d.stop();
    cluster
        .client
        .nodes()
        .delete("ds-c", &DeleteParams::default())
        .await
        .unwrap();
    placed_on(&cluster, "agent", &["ds-a", "ds-b", "ds-d"], "agent:1").await;
    // As Kubernetes counts: ds-b's pod runs on past a NoSchedule taint the
    // set does not tolerate, so it is misscheduled, not desired.
    skiff::testing::eventually("the status to count the nodes", WAIT, async || {
        let s = cluster
            .client
            .api::<DaemonSet>("kube-system")
            .get("agent")
            .await
            .ok()?
            .status?;
        (s.desired_number_scheduled == 2
            && s.current_number_scheduled == 2
            && s.number_misscheduled == 1)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_replaces_every_pod_and_on_delete_waits_for_the_user() {
    let cluster = Cluster::start().await;
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        nodes.push(sim(&cluster, &format!("ru-{i}"), 10 + i).await);
    }
    let names = ["ru-0", "ru-1", "ru-2"];
    let api = cluster.client.api::<DaemonSet>("kube-system");
    api.create(&daemon_set("rolling", "RollingUpdate"))
        .await
        .unwrap();
    api.create(&daemon_set("manual", "OnDelete")).await.unwrap();
    placed_on(&cluster, "rolling", &names, "agent:1").await;
    placed_on(&cluster, "manual", &names, "agent:1").await;

    for set in ["rolling", "manual"] {
        change_set(&cluster, set, |d| {
            let t = d.spec.as_mut().unwrap().template.as_mut().unwrap();
            t.spec.as_mut().unwrap().containers[0].image = "agent:2".into();
        })
        .await;
    }
    // RollingUpdate (maxUnavailable 1): every node ends with the new pod,
    // never fewer than two nodes running one.
    let what = "the rolling update to finish";
    skiff::testing::eventually(what, WAIT, async || {
        let p = placement(&cluster, "rolling").await;
        assert!(
            p.len() >= 2,
            "more than maxUnavailable nodes without a pod: {p:?}"
        );
        let done = p.len() == 3 && p.values().all(|images| images == &["agent:2"]);
        done.then_some(())
    })
    .await;
    // The status follows the pods by one reconcile.
    skiff::testing::eventually("the status to count 3 updated pods", WAIT, async || {
        let s = api.get("rolling").await.ok()?.status?;
        (s.updated_number_scheduled == 3).then_some(())
    })
    .await;
    let out = skiff_e2e::skiff(
        &cluster.server,
        &[
            "rollout",
            "status",
            "ds/rolling",
            "-n",
            "kube-system",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout
            .contains("daemon set \"rolling\" successfully rolled out"),
        "{out:?}"
    );
    let out = skiff_e2e::skiff(
        &cluster.server,
        &["rollout", "status", "ds/manual", "-n", "kube-system"],
    )
    .await;
    assert!(
        !out.ok && out.stderr.contains("only available for RollingUpdate"),
        "{out:?}"
    );

    // OnDelete: nothing changes until a pod is deleted; then that node gets the new one.
    let p = placement(&cluster, "manual").await;
    assert!(p.values().all(|images| images == &["agent:1"]), "{p:?}");
    let victim = cluster
        .client
        .pods("kube-system")
        .list(&ListParams {
            label_selector: "app=manual".into(),
            field_selector: "spec.nodeName=ru-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .remove(0);
    cluster
        .client
        .pods("kube-system")
        .delete(victim.name(), &DeleteParams::default())
        .await
        .unwrap();
    skiff::testing::eventually("ru-1 to run the new template", WAIT, async || {
        let p = placement(&cluster, "manual").await;
        (p.get("ru-1") == Some(&vec!["agent:2".to_owned()])
            && p.get("ru-0") == Some(&vec!["agent:1".to_owned()])
            && p.get("ru-2") == Some(&vec!["agent:1".to_owned()]))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_rollout_starts_the_new_pod_before_the_old_one_goes() {
    let cluster = Cluster::start().await;
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        nodes.push(sim(&cluster, &format!("surge-{i}"), 20 + i).await);
    }
    let names = ["surge-0", "surge-1", "surge-2"];
    let mut set = daemon_set("surging", "RollingUpdate");
    set.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
        r#type: "RollingUpdate".into(),
        rolling_update: Some(skiff::api::apps::v1::RollingUpdateDaemonSet {
            max_unavailable: "0".into(),
            max_surge: "1".into(),
        }),
    });
    let api = cluster.client.api::<DaemonSet>("kube-system");
    api.create(&set).await.unwrap();
    placed_on(&cluster, "surging", &names, "agent:1").await;
    change_set(&cluster, "surging", |d| {
        let t = d.spec.as_mut().unwrap().template.as_mut().unwrap();
        t.spec.as_mut().unwrap().containers[0].image = "agent:2".into();
    })
    .await;
    // maxUnavailable 0: every node always runs a pod; maxSurge 1: at most
    // one node runs two.
    skiff::testing::eventually("the surge rollout to finish", WAIT, async || {
        let p = placement(&cluster, "surging").await;
        assert_eq!(p.len(), 3, "a node without a running pod: {p:?}");
        let doubled = p.values().filter(|images| images.len() > 1).count();
        assert!(
            doubled <= 1,
            "more than maxSurge nodes with two pods: {p:?}"
        );
        p.values()
            .all(|images| images == &["agent:2"])
            .then_some(())
    })
    .await;
}
