//! Many simulated nodes in one process (the scale-test feature): each runs
//! the real kubelet — registration, leases, pod workers, status — over the
//! simulated runtime, against a real API server.

use std::collections::HashSet;
use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::{Container, Pod, PodSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use skiff::params::{DeleteParams, ListParams};
use skiff::testing::eventually;
use skiff_apiserver::testing::TestServer;
use skiff_kubelet::{KubeletConfig, RuntimeKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_hosts_many_simulated_nodes_whose_pods_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
    const NODES: usize = 20;
    const PODS: usize = 100;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut kubelets = Vec::new();
    for i in 0..NODES {
        let mut config = KubeletConfig::new(
            &format!("sim-{i}"),
            RuntimeKind::Sim,
            dir.path().join(format!("node-{i}")),
        );
        config.pod_cidr = Some(format!("10.{i}.0.0/24"));
        config.lease_interval = Duration::from_secs(1);
        let mut stopped = stopped.clone();
        kubelets.push(tokio::spawn(skiff_kubelet::run(
            client.clone(),
            config,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )));
    }
    let nodes = client.nodes();
    eventually("every node Ready", Duration::from_secs(60), async || {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "Ready" && c.status == "True")
                })
            })
            .count();
        (ready == NODES).then_some(())
    })
    .await;
    let pods = client.pods("default");
    for i in 0..PODS {
        let pod = Pod {
            metadata: Some(ObjectMeta {
                name: format!("p-{i}"),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: format!("sim-{}", i % NODES),
                containers: vec![Container {
                    name: "app".into(),
                    image: "app:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        pods.create(&pod).await.unwrap();
    }
    let running = eventually(
        "every pod Running and Ready",
        Duration::from_secs(60),
        async || {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let ok: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.phase == "Running"
                            && s.conditions
                                .iter()
                                .any(|c| c.r#type == "Ready" && c.status == "True")
                    })
                })
                .collect();
            (ok.len() == PODS).then_some(ok)
        },
    )
    .await;
    let ips: HashSet<String> = running
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone())
        .collect();
    assert_eq!(ips.len(), PODS, "each pod has its own IP");
    for p in &running {
        let node: usize = p
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .trim_start_matches("sim-")
            .parse()
            .unwrap();
        assert!(
            p.status
                .as_ref()
                .unwrap()
                .pod_ip
                .starts_with(&format!("10.{node}.0."))
        );
    }
    // Deletion goes through the kubelets, which remove the objects.
    for p in &running {
        pods.delete(p.name(), &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("every pod gone", Duration::from_secs(60), async || {
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let _ = stop.send(true);
    for k in kubelets {
        tokio::time::timeout(Duration::from_secs(10), k)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
