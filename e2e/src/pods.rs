//! Pods for node tests: a node of either runtime, busybox containers
//! running a script, pods pinned to a node, and reading their state.

use skiff::api::core::v1::{Container, Pod, PodSpec};
use skiff::api::meta::v1::ObjectMeta;

use crate::cluster::{Cluster, DockerNetwork, Kubelet, TEST_IMAGE, ensure_test_image, unique};

/// A node of `runtime` in `cluster` (and, for Docker, the pod network it makes).
pub async fn node(cluster: &Cluster, runtime: &str) -> (Option<DockerNetwork>, Kubelet) {
    let name = unique("node");
    if runtime == "docker" {
        ensure_test_image();
        let net = DockerNetwork::named("skiff-pods-test");
        let k = Kubelet::start(cluster, &name, runtime, &["--docker-network", &net.name]).await;
        cluster.node_ready(&name).await;
        (Some(net), k)
    } else {
        let k = Kubelet::start(cluster, &name, runtime, &[]).await;
        cluster.node_ready(&name).await;
        (None, k)
    }
}

/// A busybox container running `script` with `sh -c`.
pub fn container(name: &str, script: &str) -> Container {
    Container {
        name: name.into(),
        image: TEST_IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// A pod of `containers` in `default`, scheduled onto `node` only, with a
/// one-second grace period.
pub fn pod(name: &str, node: &str, containers: Vec<Container>) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers,
            // Scheduled by the scheduler, onto this test's node only.
            node_selector: [("kubernetes.io/hostname".to_owned(), node.to_owned())].into(),
            termination_grace_period_seconds: Some(1),
            ..Default::default()
        }),
        status: None,
    }
}

/// Why a container waits, if it does.
pub fn waiting_reason(p: &Pod, container: &str) -> Option<String> {
    let s = p.status.as_ref()?;
    let c = s.container_statuses.iter().find(|c| c.name == container)?;
    Some(c.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

/// A waiting container's message ("" when it does not wait).
pub fn waiting_message(p: &Pod, container: &str) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref()?.waiting.as_ref())
        .map(|w| w.message.clone())
        .unwrap_or_default()
}

/// How often a container restarted.
pub fn restarts(p: &Pod, container: &str) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.iter().find(|c| c.name == container))
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

/// Whether the test runs as root (mount namespaces, tmpfs, setpriv).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
