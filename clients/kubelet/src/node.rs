//! The kubelet's Node: registration (capacity, addresses, labels, taints),
//! the Lease it renews in `skiff-node-lease` (the cheap heartbeat the node
//! lifecycle controller watches), and node status — conditions Ready,
//! MemoryPressure and DiskPressure — written when they change and at least
//! every status interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff::Resource;
use skiff::api::coordination::v1::{Lease, LeaseSpec};
use skiff::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use skiff::api::meta::v1::{ObjectMeta, OwnerReference};
use skiff::client::{Client, Error};
use tokio::sync::watch;

use crate::{KubeletConfig, Shared};

/// Namespace of node leases.
pub const NODE_LEASE_NAMESPACE: &str = "skiff-node-lease";

/// Memory available below which the node reports MemoryPressure (Kubernetes' eviction default).
const MEMORY_PRESSURE_BYTES: u64 = 100 * 1024 * 1024;
/// Free fraction of the kubelet's file system below which it reports DiskPressure.
const DISK_PRESSURE_FRACTION: f64 = 0.10;

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A field of /proc/meminfo in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn os_image() -> String {
    let text = read("/etc/os-release");
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".into())
}

/// The node's capacity: from flags, else from the machine.
pub fn capacity(config: &KubeletConfig) -> BTreeMap<String, String> {
    let cpu = config.cpu.clone().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_else(|_| "1".into())
    });
    let memory = config.memory.clone().unwrap_or_else(|| {
        let bytes = meminfo("MemTotal").unwrap_or(1 << 30);
        format!("{}Ki", bytes / 1024)
    });
    [
        ("cpu".to_owned(), cpu),
        ("memory".to_owned(), memory),
        ("pods".to_owned(), config.max_pods.to_string()),
    ]
    .into()
}

fn system_info(runtime_version: &str) -> NodeSystemInfo {
    NodeSystemInfo {
        machine_id: read("/etc/machine-id"),
        system_uuid: read("/sys/class/dmi/id/product_uuid"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        kernel_version: read("/proc/sys/kernel/osrelease"),
        os_image: os_image(),
        container_runtime_version: runtime_version.to_owned(),
        kubelet_version: format!("v{}", env!("CARGO_PKG_VERSION")),
        operating_system: std::env::consts::OS.to_owned(),
        architecture: match std::env::consts::ARCH {
            "x86_64" => "amd64".to_owned(),
            "aarch64" => "arm64".to_owned(),
            other => other.to_owned(),
        },
    }
}

fn addresses(config: &KubeletConfig) -> Vec<NodeAddress> {
    vec![
        NodeAddress {
            r#type: "InternalIP".into(),
            address: config.node_ip.clone(),
        },
        NodeAddress {
            r#type: "Hostname".into(),
            address: config.node_name.clone(),
        },
    ]
}

/// The status the kubelet reports, keeping transition times of conditions that did not change.
fn status(
    config: &KubeletConfig,
    port: u16,
    runtime_version: &str,
    health: &Health,
    previous: Option<&NodeStatus>,
) -> NodeStatus {
    let now: prost_types::Timestamp = SystemTime::now().into();
    let condition = |kind: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" };
        let last_transition_time = previous
            .and_then(|p| p.conditions.iter().find(|c| c.r#type == kind))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time)
            .or(Some(now));
        NodeCondition {
            r#type: kind.into(),
            status: status.into(),
            last_heartbeat_time: Some(now),
            last_transition_time,
            reason: reason.into(),
            message: message.into(),
        }
    };
    let capacity = capacity(config);
    let conditions = vec![
        if health.memory_pressure {
            condition(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if health.disk_pressure {
            condition(
                "DiskPressure",
                true,
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        match &health.runtime_error {
            None => condition(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            ),
            Some(e) => condition(
                "Ready",
                false,
                "KubeletNotReady",
                &format!("container runtime is down: {e}"),
            ),
        },
    ];
    NodeStatus {
        allocatable: capacity.clone(),
        capacity,
        conditions,
        addresses: addresses(config),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: port.into() }),
        }),
        node_info: Some(system_info(runtime_version)),
    }
}

/// What the node's conditions are made of.
#[derive(Debug, Clone, Default, PartialEq)]
struct Health {
    memory_pressure: bool,
    disk_pressure: bool,
    runtime_error: Option<String>,
}

async fn health(shared: &Shared) -> Health {
    let memory_pressure = meminfo("MemAvailable").is_some_and(|b| b < MEMORY_PRESSURE_BYTES);
    let disk_pressure = nix::sys::statvfs::statvfs(&shared.config.data_dir)
        .map(|s| {
            let total = s.blocks() as f64;
            total > 0.0 && (s.blocks_available() as f64) / total < DISK_PRESSURE_FRACTION
        })
        .unwrap_or(false);
    let runtime_error = shared
        .runtime
        .sandboxes()
        .await
        .err()
        .map(|e| e.to_string());
    Health {
        memory_pressure,
        disk_pressure,
        runtime_error,
    }
}

/// Node annotation with the directory local-path volumes of this node live
/// under (read by the controller manager's local-path provisioner).
pub const LOCAL_PATH_ROOT_ANNOTATION: &str = "skiff.dev/local-path-root";

/// The directory this node keeps local-path volumes in.
pub fn local_path_root(config: &KubeletConfig) -> std::path::PathBuf {
    let root = config.data_dir.join("local-path");
    std::path::absolute(&root).unwrap_or(root)
}

/// Removes local-path volume directories whose PersistentVolume is gone
/// (reclaim policy Delete), every `period`, until the task is dropped.
pub async fn clean_local_paths(client: Client, config: KubeletConfig, period: Duration) {
    let root = local_path_root(&config);
    loop {
        tokio::time::sleep(period).await;
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let dirs: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("pvc-"))
            .collect();
        if dirs.is_empty() {
            continue;
        }
        let Ok(volumes) = client
            .all::<skiff::api::core::v1::PersistentVolume>()
            .list(&Default::default())
            .await
        else {
            continue;
        };
        for dir in dirs {
            if !volumes.items.iter().any(|v| v.meta().name == dir) {
                let path = root.join(&dir);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed the directory of a deleted local-path volume")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a deleted local-path volume's directory")
                    }
                }
            }
        }
    }
}

/// Registers the node, or takes over an existing one of the same name (its
/// labels from the flags are added; its spec is kept). Returns the node.
pub async fn register(
    client: &Client,
    config: &KubeletConfig,
    port: u16,
    runtime_version: &str,
) -> Result<Node, Error> {
    let api = client.nodes();
    let labels: BTreeMap<String, String> = [
        (
            "kubernetes.io/hostname".to_owned(),
            config.node_name.clone(),
        ),
        (
            "kubernetes.io/os".to_owned(),
            std::env::consts::OS.to_owned(),
        ),
        (
            "kubernetes.io/arch".to_owned(),
            system_info("").architecture,
        ),
    ]
    .into_iter()
    .chain(config.labels.iter().cloned())
    .collect();
    let annotations: BTreeMap<String, String> = [(
        LOCAL_PATH_ROOT_ANNOTATION.to_owned(),
        local_path_root(config).display().to_string(),
    )]
    .into();
    let fresh = Node {
        metadata: Some(ObjectMeta {
            name: config.node_name.clone(),
            labels: labels.clone(),
            annotations: annotations.clone(),
            ..Default::default()
        }),
        spec: Some(NodeSpec {
            taints: config.taints.clone(),
            pod_cidr: String::new(),
            ..Default::default()
        }),
        status: None,
    };
    let mut node = loop {
        match api.create(&fresh).await {
            Ok(n) => {
                tracing::info!(node = %config.node_name, "registered the node");
                break n;
            }
            Err(Error::AlreadyExists(_)) => {
                let mut existing = api.get(&config.node_name).await?;
                let meta = existing.meta_mut();
                let stale = labels.iter().any(|(k, v)| meta.labels.get(k) != Some(v))
                    || annotations
                        .iter()
                        .any(|(k, v)| meta.annotations.get(k) != Some(v));
                if stale {
                    meta.labels.extend(labels.clone());
                    meta.annotations.extend(annotations.clone());
                    match api.update(&existing).await {
                        Ok(n) => existing = n,
                        Err(Error::Conflict(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                tracing::info!(node = %config.node_name, "the node was registered before; taking it over");
                break existing;
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "cannot register the node yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    // A first status at once: addresses and the kubelet's port; not Ready
    // before the runtime is.
    let health = Health {
        runtime_error: Some("the container runtime is starting".into()),
        ..Default::default()
    };
    let st = status(config, port, runtime_version, &health, node.status.as_ref());
    node = write_status(client, node, st)
        .await
        .unwrap_or_else(|(n, _)| n);
    Ok(node)
}

/// Writes `status` on `node`, re-reading it on conflicts.
async fn write_status(
    client: &Client,
    mut node: Node,
    status: NodeStatus,
) -> Result<Node, (Node, Error)> {
    let api = client.nodes();
    for _ in 0..5 {
        let mut status = status.clone();
        // Keep the transition times of what the node lifecycle controller wrote.
        if let Some(prev) = &node.status {
            for c in &mut status.conditions {
                if let Some(p) = prev
                    .conditions
                    .iter()
                    .find(|p| p.r#type == c.r#type && p.status == c.status)
                {
                    c.last_transition_time = p.last_transition_time.or(c.last_transition_time);
                }
            }
        }
        node.status = Some(status);
        match api.update_status(&node).await {
            Ok(n) => return Ok(n),
            Err(Error::Conflict(_)) => match api.get(node.name()).await {
                Ok(n) => node = n,
                Err(e) => return Err((node, e)),
            },
            Err(e) => return Err((node, e)),
        }
    }
    let name = node.name().to_owned();
    Err((
        node,
        Error::Conflict(format!("node {name:?} kept changing")),
    ))
}

/// The node's pod CIDR: assigned by the IPAM controller (waited for a
/// while), else the configured one. `None`: pods get no IP of their own.
pub async fn wait_for_pod_cidr(
    client: &Client,
    config: &KubeletConfig,
    node: Node,
) -> Option<String> {
    let assigned = |n: &Node| {
        n.spec
            .as_ref()
            .map(|s| s.pod_cidr.clone())
            .filter(|c| !c.is_empty())
    };
    if let Some(c) = assigned(&node) {
        return Some(c);
    }
    if let Some(c) = &config.pod_cidr {
        return Some(c.clone());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut logged = false;
    while tokio::time::Instant::now() < deadline {
        if let Ok(n) = client.nodes().get(&config.node_name).await
            && let Some(c) = assigned(&n)
        {
            tracing::info!(pod_cidr = %c, "the node was assigned a pod CIDR");
            return Some(c);
        }
        if !logged {
            tracing::info!(
                "waiting for the node to be assigned a pod CIDR (is the controller manager running?)"
            );
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tracing::warn!(
        "no pod CIDR was assigned; pods get no IP of their own (start the controller manager, or pass --pod-cidr)"
    );
    None
}

fn lease(config: &KubeletConfig, node_uid: &str) -> Lease {
    let now: prost_types::Timestamp = SystemTime::now().into();
    Lease {
        metadata: Some(ObjectMeta {
            name: config.node_name.clone(),
            namespace: NODE_LEASE_NAMESPACE.into(),
            owner_references: if node_uid.is_empty() {
                vec![]
            } else {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: config.node_name.clone(),
                    uid: node_uid.to_owned(),
                    ..Default::default()
                }]
            },
            ..Default::default()
        }),
        spec: Some(LeaseSpec {
            holder_identity: Some(config.node_name.clone()),
            lease_duration_seconds: Some((config.lease_interval.as_secs() * 4).max(1) as i32),
            acquire_time: Some(now),
            renew_time: Some(now),
            lease_transitions: None,
        }),
    }
}

/// Renews the node's lease.
async fn renew_lease(client: &Client, config: &KubeletConfig) -> Result<(), Error> {
    let api = client.leases(NODE_LEASE_NAMESPACE);
    match api.get_opt(&config.node_name).await? {
        Some(mut l) => {
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(SystemTime::now().into());
            spec.holder_identity = Some(config.node_name.clone());
            api.update(&l).await.map(|_| ())
        }
        None => {
            let uid = client
                .nodes()
                .get(&config.node_name)
                .await
                .map(|n| n.meta().uid.clone())
                .unwrap_or_default();
            match api.create(&lease(config, &uid)).await {
                Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Renews the lease every lease interval and writes the node status when
/// it changes and at least every status interval, until `stop`.
pub async fn heartbeats(shared: Arc<Shared>, port: u16, mut stop: watch::Receiver<bool>) {
    let config = &shared.config;
    let check = config.lease_interval.min(Duration::from_secs(10));
    let mut last_lease: Option<tokio::time::Instant> = None;
    let mut last_status: Option<(tokio::time::Instant, Health)> = None;
    loop {
        let now = tokio::time::Instant::now();
        if last_lease.is_none_or(|t| now >= t + config.lease_interval) {
            match renew_lease(&shared.client, config).await {
                Ok(()) => last_lease = Some(now),
                Err(e) => tracing::warn!(error = %e, "cannot renew the node lease"),
            }
        }
        let h = health(&shared).await;
        let due = match &last_status {
            None => true,
            Some((t, prev)) => *prev != h || now >= *t + config.status_interval,
        };
        if due {
            match shared.client.nodes().get(&config.node_name).await {
                Ok(node) => {
                    let st = status(
                        config,
                        port,
                        &shared.runtime.version(),
                        &h,
                        node.status.as_ref(),
                    );
                    match write_status(&shared.client, node, st).await {
                        Ok(_) => last_status = Some((now, h)),
                        Err((_, e)) => tracing::warn!(error = %e, "cannot update the node status"),
                    }
                }
                Err(Error::NotFound(_)) => {
                    // Deleted while we run: register again, as Kubernetes' kubelet does.
                    tracing::warn!("the node object was deleted; registering again");
                    if let Err(e) =
                        register(&shared.client, config, port, &shared.runtime.version()).await
                    {
                        tracing::warn!(error = %e, "cannot register the node");
                    }
                    last_status = None;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the node"),
            }
        }
        let wait = check
            .min(config.lease_interval)
            .max(Duration::from_millis(50));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuntimeKind;

    #[test]
    fn capacity_comes_from_flags_or_the_machine() {
        let mut c = KubeletConfig::new("n", RuntimeKind::Sim, "/tmp".into());
        let from_machine = capacity(&c);
        assert!(from_machine["cpu"].parse::<u32>().unwrap() >= 1);
        assert!(from_machine["memory"].ends_with("Ki"));
        assert_eq!(from_machine["pods"], "110");
        c.cpu = Some("500m".into());
        c.memory = Some("2Gi".into());
        c.max_pods = 7;
        let flags = capacity(&c);
        assert_eq!(
            (
                flags["cpu"].as_str(),
                flags["memory"].as_str(),
                flags["pods"].as_str()
            ),
            ("500m", "2Gi", "7")
        );
    }

    #[test]
    fn condition_transition_time_moves_only_on_change() {
        let c = KubeletConfig::new("n", RuntimeKind::Sim, "/tmp".into());
        let healthy = Health::default();
        let first = status(&c, 10250, "sim://0", &healthy, None);
        let mut old = first.clone();
        for cond in &mut old.conditions {
            cond.last_transition_time = Some(prost_types::Timestamp {
                seconds: 5,
                nanos: 0,
            });
        }
        let same = status(&c, 10250, "sim://0", &healthy, Some(&old));
        assert!(
            same.conditions
                .iter()
                .all(|c| c.last_transition_time.unwrap().seconds == 5)
        );
        let sick = Health {
            runtime_error: Some("docker is down".into()),
            ..Default::default()
        };
        let changed = status(&c, 10250, "sim://0", &sick, Some(&old));
        let ready = changed
            .conditions
            .iter()
            .find(|c| c.r#type == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "KubeletNotReady")
        );
        assert_ne!(ready.last_transition_time.unwrap().seconds, 5);
        let memory = changed
            .conditions
            .iter()
            .find(|c| c.r#type == "MemoryPressure")
            .unwrap();
        assert_eq!(memory.last_transition_time.unwrap().seconds, 5);
        assert_eq!(
            changed
                .daemon_endpoints
                .unwrap()
                .kubelet_endpoint
                .unwrap()
                .port,
            10250
        );
    }
}
