//! The StatefulSet controller, the volume binder and the local-path
//! provisioner against a real API server, scheduler and controller
//! manager, with a process node: pods start in order with stable names,
//! each gets its own claim bound to a local-path volume on its node, and
//! pod 0 finds the data it wrote after it is deleted and made again; scale
//! down removes pods from the highest ordinal and keeps their claims; a
//! claim of a class nobody provisions stays Pending and says why.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use skiff::Resource;
use skiff::api::apps::v1::{StatefulSet, StatefulSetSpec};
use skiff::api::core::v1::{
    Container, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodSpec,
    PodTemplateSpec, ResourceRequirements, Service, ServicePort, ServiceSpec, VolumeMount,
};
use skiff::api::meta::v1::{LabelSelector, ObjectMeta};
use skiff::params::{DeleteParams, ListParams};
use skiff_e2e::cluster::{Cluster, Kubelet, TEST_IMAGE, unique};

const WAIT: Duration = Duration::from_secs(90);

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: "default".into(),
        ..Default::default()
    })
}

/// A set of `replicas` pods that append "NAME START-TIME" to a log on
/// their claim `www` and then sleep.
fn stateful_set(name: &str, node: &str, replicas: i32, class: &str) -> StatefulSet {
    let labels: BTreeMap<String, String> = [("app".to_owned(), name.to_owned())].into();
    let script = "echo \"$POD_NAME $(date +%s%N)\" >> \"$SKIFF_VOLUME_WWW/log\"; exec sleep 300";
    StatefulSet {
        metadata: meta(name),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: name.into(),
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
                        name: "app".into(),
                        image: TEST_IMAGE.into(),
                        command: vec!["sh".into(), "-c".into(), script.into()],
                        volume_mounts: vec![VolumeMount {
                            name: "www".into(),
                            mount_path: "/usr/share/nginx/html".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    node_selector: [("kubernetes.io/hostname".to_owned(), node.to_owned())].into(),
                    termination_grace_period_seconds: Some(1),
                    ..Default::default()
                }),
            }),
            volume_claim_templates: vec![PersistentVolumeClaim {
                metadata: Some(ObjectMeta {
                    name: "www".into(),
                    ..Default::default()
                }),
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: vec!["ReadWriteOnce".into()],
                    storage_class_name: Some(class.into()),
                    resources: Some(ResourceRequirements {
                        requests: [("storage".to_owned(), "1Gi".to_owned())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                status: None,
            }],
            ..Default::default()
        }),
        status: None,
    }
}

async fn headless_service(cluster: &Cluster, name: &str) {
    let svc = Service {
        metadata: meta(name),
        spec: Some(ServiceSpec {
            cluster_ip: "None".into(),
            selector: [("app".to_owned(), name.to_owned())].into(),
            ports: vec![ServicePort {
                name: "web".into(),
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    cluster
        .client
        .services("default")
        .create(&svc)
        .await
        .unwrap();
}

async fn pods_of(cluster: &Cluster, set: &str) -> BTreeMap<String, Pod> {
    cluster
        .client
        .pods("default")
        .list(&ListParams {
            label_selector: format!("app={set}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| (p.name().to_owned(), p))
        .collect()
}

fn running_ready(p: &Pod) -> bool {
    p.meta().deletion_timestamp.is_none()
        && p.status.as_ref().is_some_and(|s| {
            s.phase == "Running"
                && s.conditions
                    .iter()
                    .any(|c| c.r#type == "Ready" && c.status == "True")
        })
}

fn started(p: &Pod) -> SystemTime {
    let s = p.status.as_ref().unwrap();
    let t = s.container_statuses[0]
        .state
        .as_ref()
        .unwrap()
        .running
        .as_ref()
        .unwrap()
        .started_at
        .unwrap();
    SystemTime::try_from(t).unwrap()
}

fn created(p: &Pod) -> SystemTime {
    SystemTime::try_from(p.meta().creation_timestamp.unwrap()).unwrap()
}

async fn claim(cluster: &Cluster, name: &str) -> Option<PersistentVolumeClaim> {
    cluster
        .client
        .api::<PersistentVolumeClaim>("default")
        .get_opt(name)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_starts_in_order_with_stable_names_and_pod_0_finds_its_data_again() {
    let cluster = Cluster::start().await;
    let node = unique("sts");
    let _kubelet = Kubelet::start(&cluster, &node, "process", &[]).await;
    cluster.node_ready(&node).await;
    headless_service(&cluster, "web").await;
    let api = cluster.client.api::<StatefulSet>("default");
    api.create(&stateful_set("web", &node, 3, "local-path"))
        .await
        .unwrap();

    let pods = skiff::testing::eventually("web-0..2 running and ready", WAIT, async || {
        let pods = pods_of(&cluster, "web").await;
        (pods.len() == 3 && pods.values().all(running_ready)).then_some(pods)
    })
    .await;
    // Ordered: each pod was created only once the one before it ran.
    let (p0, p1, p2) = (&pods["web-0"], &pods["web-1"], &pods["web-2"]);
    assert!(
        created(p1) >= started(p0),
        "web-1 created before web-0 started"
    );
    assert!(
        created(p2) >= started(p1),
        "web-2 created before web-1 started"
    );
    for (i, p) in [p0, p1, p2].into_iter().enumerate() {
        let name = format!("web-{i}");
        assert_eq!(p.meta().labels["statefulset.kubernetes.io/pod-name"], name);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            (spec.hostname.as_str(), spec.subdomain.as_str()),
            (name.as_str(), "web")
        );
    }

    // Each pod has its own claim, bound to a local-path volume on the node.
    let mut volume_dirs = Vec::new();
    for i in 0..3 {
        let c = claim(&cluster, &format!("www-web-{i}")).await.unwrap();
        assert_eq!(c.status.as_ref().unwrap().phase, "Bound");
        let volume_name = c.spec.as_ref().unwrap().volume_name.clone();
        let pv = cluster
            .client
            .all::<PersistentVolume>()
            .get(&volume_name)
            .await
            .unwrap();
        let spec = pv.spec.unwrap();
        assert_eq!(spec.storage_class_name, "local-path");
        let affinity = spec.node_affinity.unwrap().required.unwrap();
        assert_eq!(
            affinity.node_selector_terms[0].match_expressions[0].values,
            std::slice::from_ref(&node)
        );
        assert_eq!(pv.status.unwrap().phase, "Bound");
        volume_dirs.push(std::path::PathBuf::from(spec.host_path.unwrap().path));
    }
    let log0 = volume_dirs[0].join("log");
    let first = std::fs::read_to_string(&log0).unwrap();
    assert_eq!(first.lines().count(), 1, "{first}");
    assert!(first.starts_with("web-0 "), "{first}");

    // web-0 deleted: made again under its name, with the same claim and data.
    let old_uid = p0.meta().uid.clone();
    cluster
        .client
        .pods("default")
        .delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    skiff::testing::eventually("web-0 to come back", WAIT, async || {
        let pods = pods_of(&cluster, "web").await;
        let p = pods.get("web-0")?;
        (p.meta().uid != old_uid && running_ready(p)).then_some(())
    })
    .await;
    let again = std::fs::read_to_string(&log0).unwrap();
    assert_eq!(
        again.lines().count(),
        2,
        "the new web-0 appended to the old log: {again}"
    );
    assert!(again.starts_with(&first), "{again}");

    // Scale down to one: web-2 then web-1 go; their claims stay (Retain).
    let out = skiff_e2e::skiff(&cluster.server, &["scale", "sts/web", "--replicas", "1"]).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "statefulset.apps/web scaled");
    skiff::testing::eventually("only web-0 left", WAIT, async || {
        let pods = pods_of(&cluster, "web").await;
        (pods.len() == 1 && pods.contains_key("web-0")).then_some(())
    })
    .await;
    assert!(
        claim(&cluster, "www-web-2").await.is_some(),
        "claims outlive scale-down"
    );
    let status = skiff::testing::eventually("the status of one", WAIT, async || {
        let s = api.get("web").await.ok()?.status?;
        (s.replicas == 1 && s.ready_replicas == 1).then_some(s)
    })
    .await;
    assert_eq!(status.current_revision, status.update_revision);

    // Deleting a claim releases its volume; Delete reclaims it, and the
    // node removes its directory.
    let volume = claim(&cluster, "www-web-2")
        .await
        .unwrap()
        .spec
        .unwrap()
        .volume_name;
    cluster
        .client
        .api::<PersistentVolumeClaim>("default")
        .delete("www-web-2", &DeleteParams::default())
        .await
        .unwrap();
    skiff::testing::eventually(
        "the released volume and its directory to go",
        WAIT,
        async || {
            let pv = cluster
                .client
                .all::<PersistentVolume>()
                .get_opt(&volume)
                .await
                .ok()?;
            (pv.is_none() && !volume_dirs[2].exists()).then_some(())
        },
    )
    .await;
    assert!(volume_dirs[0].exists(), "other volumes stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_a_class_nobody_provisions_stays_pending_and_says_why() {
    let cluster = Cluster::start().await;
    let node = unique("sts");
    let _kubelet = Kubelet::start(&cluster, &node, "process", &[]).await;
    cluster.node_ready(&node).await;
    let api = cluster.client.api::<StatefulSet>("default");
    api.create(&stateful_set("nowhere", &node, 2, "my-storage-class"))
        .await
        .unwrap();
    let c = skiff::testing::eventually("the claim of web-0", WAIT, async || {
        claim(&cluster, "www-nowhere-0").await
    })
    .await;
    let reason = skiff::testing::eventually("an event saying why", WAIT, async || {
        let events = cluster
            .client
            .events("default")
            .list(&ListParams::default())
            .await
            .ok()?
            .items;
        events
            .into_iter()
            .find(|e| {
                e.involved_object
                    .as_ref()
                    .is_some_and(|o| o.uid == c.meta().uid)
            })
            .map(|e| (e.reason, e.message))
    })
    .await;
    assert_eq!(reason.0, "ProvisioningFailed");
    assert!(
        reason.1.contains("\"my-storage-class\" not found"),
        "{}",
        reason.1
    );
    let c = claim(&cluster, "www-nowhere-0").await.unwrap();
    assert_eq!(c.status.unwrap().phase, "Pending");
    // The pod waits for its claim; OrderedReady makes no second pod.
    let pods = skiff::testing::eventually("nowhere-0", WAIT, async || {
        let pods = pods_of(&cluster, "nowhere").await;
        pods.contains_key("nowhere-0").then_some(pods)
    })
    .await;
    let unschedulable =
        skiff::testing::eventually("nowhere-0 to be unschedulable", WAIT, async || {
            let p = cluster.client.pods("default").get("nowhere-0").await.ok()?;
            let s = p.status?;
            s.conditions
                .into_iter()
                .find(|c| c.r#type == "PodScheduled" && c.status == "False")
                .map(|c| c.message)
        })
        .await;
    assert!(
        unschedulable.contains("unbound immediate PersistentVolumeClaims"),
        "{unschedulable}"
    );
    assert_eq!(pods.keys().collect::<Vec<_>>(), ["nowhere-0"]);
    assert!(
        pods["nowhere-0"]
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .is_empty()
    );
}

/// Pod name → image, for a set's live pods.
async fn images(cluster: &Cluster, set: &str) -> BTreeMap<String, String> {
    pods_of(cluster, set)
        .await
        .into_iter()
        .filter(|(_, p)| running_ready(p))
        .map(|(n, p)| (n, p.spec.unwrap().containers[0].image.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_goes_from_the_highest_ordinal_down_to_the_partition() {
    let cluster = Cluster::start().await;
    let _node = skiff_e2e::sim::SimNode::start(
        cluster.client.clone(),
        "sts-sim",
        40,
        Duration::from_millis(300),
    )
    .await;
    let mut set = stateful_set("roll", "sts-sim", 3, "");
    let spec = set.spec.as_mut().unwrap();
    spec.volume_claim_templates.clear();
    let pod_spec = spec.template.as_mut().unwrap().spec.as_mut().unwrap();
    pod_spec.containers[0].volume_mounts.clear();
    // The simulated node has no hostname label; it is the only node.
    pod_spec.node_selector.clear();
    spec.pod_management_policy = "Parallel".into();
    let api = cluster.client.api::<StatefulSet>("default");
    api.create(&set).await.unwrap();
    let old = TEST_IMAGE.to_owned();
    let want = |imgs: [&str; 3]| -> BTreeMap<String, String> {
        imgs.iter()
            .enumerate()
            .map(|(i, img)| (format!("roll-{i}"), img.to_string()))
            .collect()
    };
    skiff::testing::eventually("three pods at once (Parallel)", WAIT, async || {
        (images(&cluster, "roll").await == want([&old, &old, &old])).then_some(())
    })
    .await;
    loop {
        let mut live = api.get("roll").await.unwrap();
        let spec = live.spec.as_mut().unwrap();
        spec.template
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = "v2".into();
        spec.update_strategy
            .as_mut()
            .unwrap()
            .rolling_update
            .as_mut()
            .unwrap()
            .partition = Some(1);
        match api.update(&live).await {
            Ok(_) => break,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("{e}"),
        }
    }
    // roll-2 is replaced before roll-1; roll-0, below the partition, keeps the old template.
    let mut seen_one_without_two = false;
    skiff::testing::eventually("roll-2 and roll-1 updated", WAIT, async || {
        let now = images(&cluster, "roll").await;
        if now.get("roll-1").map(String::as_str) == Some("v2")
            && now.get("roll-2").map(String::as_str) != Some("v2")
        {
            seen_one_without_two = true;
        }
        (now == want([&old, "v2", "v2"])).then_some(())
    })
    .await;
    assert!(!seen_one_without_two, "roll-1 was updated before roll-2");
    // The status follows the pods by one reconcile.
    let s = skiff::testing::eventually("the status to count 2 updated pods", WAIT, async || {
        let s = api.get("roll").await.ok()?.status?;
        (s.updated_replicas == 2).then_some(s)
    })
    .await;
    assert_eq!(s.updated_replicas, 2);
    assert_ne!(
        s.current_revision, s.update_revision,
        "the partition holds roll-0 back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_retention_policy_removes_claims_on_scale_down_and_with_the_set() {
    let cluster = Cluster::start().await;
    let _node = skiff_e2e::sim::SimNode::start(
        cluster.client.clone(),
        "retain-sim",
        41,
        Duration::from_millis(300),
    )
    .await;
    let mut set = stateful_set("gone", "retain-sim", 2, "local-path");
    let spec = set.spec.as_mut().unwrap();
    spec.template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .node_selector
        .clear();
    spec.persistent_volume_claim_retention_policy = Some(
        skiff::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_deleted: "Delete".into(),
            when_scaled: "Delete".into(),
        },
    );
    let api = cluster.client.api::<StatefulSet>("default");
    api.create(&set).await.unwrap();
    skiff::testing::eventually("two pods and two claims", WAIT, async || {
        let pods = pods_of(&cluster, "gone").await;
        let claims = claim(&cluster, "www-gone-0").await.is_some()
            && claim(&cluster, "www-gone-1").await.is_some();
        (pods.len() == 2 && pods.values().all(running_ready) && claims).then_some(())
    })
    .await;
    let out = skiff_e2e::skiff(&cluster.server, &["scale", "sts/gone", "--replicas", "1"]).await;
    assert!(out.ok, "{out:?}");
    skiff::testing::eventually("the scaled-away claim to go", WAIT, async || {
        claim(&cluster, "www-gone-1").await.is_none().then_some(())
    })
    .await;
    assert!(claim(&cluster, "www-gone-0").await.is_some());
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    skiff::testing::eventually("the set's claims to go with it", WAIT, async || {
        claim(&cluster, "www-gone-0").await.is_none().then_some(())
    })
    .await;
}
