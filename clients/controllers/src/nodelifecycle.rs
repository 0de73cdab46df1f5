//! The node lifecycle controller. It watches node leases and node status: a
//! node whose kubelet stops renewing for the grace period (40 s by default)
//! is marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable`
//! (a node reporting `Ready=False`, `node.kubernetes.io/not-ready`); pods
//! there that do not tolerate the taint are deleted once their toleration
//! time (300 s by default) has passed, so their replica sets replace them
//! elsewhere; the taint goes when the node comes back.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use skiff::Resource;
use skiff::api::coordination::v1::Lease;
use skiff::api::core::v1::{Node, NodeCondition, Pod, Taint};
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{ObjectKey, Store, WatcherConfig};

use crate::Context;

/// Namespace of node leases.
pub const NODE_LEASE_NAMESPACE: &str = "skiff-node-lease";
/// Taint of a node whose kubelet stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node reporting not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Index of pods by node name.
pub const BY_NODE: &str = "node-name";

/// What the controller last saw of a node's heartbeats, and when.
struct Seen {
    heartbeat: (
        Option<prost_types::Timestamp>,
        Option<prost_types::Timestamp>,
    ),
    at: Instant,
}

/// Runs the node lifecycle controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let nodes = ctx.factory.all::<Node>();
    let leases = ctx
        .factory
        .informer::<Lease>(NODE_LEASE_NAMESPACE, WatcherConfig::default());
    let pods = ctx.factory.all::<Pod>();
    pods.store().add_index(BY_NODE, |p: &Pod| {
        p.spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .into_iter()
            .collect()
    });
    nodes.store().wait_until_ready().await;
    leases.store().wait_until_ready().await;
    pods.store().wait_until_ready().await;
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut ticker = tokio::time::interval(ctx.config.node_monitor_period);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut shutdown => return,
        }
        let (node_store, lease_store, pod_store) = (nodes.store(), leases.store(), pods.store());
        for node in node_store.list() {
            if let Err(e) = monitor(&ctx, &node, &lease_store, &pod_store, &mut seen).await {
                tracing::warn!(node = node.name(), error = %e, "node lifecycle check failed");
            }
        }
        seen.retain(|name, _| node_store.get(&ObjectKey::new("", name)).is_some());
    }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
}

async fn monitor(
    ctx: &Context,
    node: &Node,
    leases: &Store<Lease>,
    pods: &Store<Pod>,
    seen: &mut HashMap<String, Seen>,
) -> Result<(), Error> {
    let name = node.name().to_owned();
    let renew = leases
        .get(&ObjectKey::new(NODE_LEASE_NAMESPACE, &name))
        .and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time));
    let posted = ready_condition(node).and_then(|c| c.last_heartbeat_time);
    let heartbeat = (renew, posted);
    let now = Instant::now();
    let entry = seen
        .entry(name.clone())
        .or_insert(Seen { heartbeat, at: now });
    if entry.heartbeat != heartbeat {
        entry.heartbeat = heartbeat;
        entry.at = now;
    }
    let stale = now.duration_since(entry.at) > ctx.config.node_monitor_grace;
    let ready = ready_condition(node)
        .map(|c| c.status.clone())
        .unwrap_or_default();

    // A silent kubelet: its conditions become Unknown.
    let mut node = node.clone();
    if stale && ready != "Unknown" {
        let status = node.status.get_or_insert_with(Default::default);
        let t: prost_types::Timestamp = SystemTime::now().into();
        for kind in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            let cond = match status.conditions.iter_mut().find(|c| c.r#type == kind) {
                Some(c) => c,
                None => {
                    status.conditions.push(NodeCondition {
                        r#type: kind.into(),
                        ..Default::default()
                    });
                    status.conditions.last_mut().expect("just pushed")
                }
            };
            if cond.status != "Unknown" {
                cond.status = "Unknown".into();
                cond.last_transition_time = Some(t);
            }
            cond.reason = "NodeStatusUnknown".into();
            cond.message = "Kubelet stopped posting node status.".into();
        }
        node = ctx.client.nodes().update_status(&node).await?;
        ctx.recorder
            .record(
                &node,
                WARNING,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
    }
    let ready = ready_condition(&node)
        .map(|c| c.status.clone())
        .unwrap_or_default();
    let wanted: Option<&str> = match ready.as_str() {
        "True" if !stale => None,
        "False" => Some(NOT_READY),
        "" | "True" => None,
        _ => Some(UNREACHABLE),
    };
    // Taints follow health.
    let taints = node
        .spec
        .as_ref()
        .map(|s| s.taints.clone())
        .unwrap_or_default();
    let mut next: Vec<Taint> = taints
        .iter()
        .filter(|t| {
            !((t.key == UNREACHABLE || t.key == NOT_READY) && Some(t.key.as_str()) != wanted)
        })
        .cloned()
        .collect();
    if let Some(key) = wanted
        && !next.iter().any(|t| t.key == key)
    {
        next.push(Taint {
            key: key.into(),
            value: String::new(),
            effect: "NoExecute".into(),
            time_added: Some(SystemTime::now().into()),
        });
    }
    if next != taints {
        node.spec.get_or_insert_with(Default::default).taints = next.clone();
        node = ctx.client.nodes().update(&node).await?;
        let (reason, message) = match wanted {
            Some(k) => ("NodeTainted", format!("Node {name} tainted {k}:NoExecute")),
            None => (
                "NodeReady",
                format!("Node {name} is healthy again; taints removed"),
            ),
        };
        ctx.recorder.record(&node, NORMAL, reason, &message).await;
    }
    evict(ctx, &node, &next, pods).await
}

/// When a pod on a node with `taint` must go: `None` if it tolerates the
/// taint forever; the controller's default when it does not tolerate it at
/// all (as Kubernetes' default tolerations give every pod).
fn eviction_after(pod: &Pod, taint: &Taint, default: Duration) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .map(|s| s.tolerations.as_slice())
        .unwrap_or(&[]);
    let matching = tolerations.iter().find(|t| skiff_tolerates(t, taint));
    match matching {
        Some(t) => t
            .toleration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64)),
        None if taint.key == UNREACHABLE || taint.key == NOT_READY => Some(default),
        None => Some(Duration::ZERO),
    }
}

fn skiff_tolerates(t: &skiff::api::core::v1::Toleration, taint: &Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    match t.operator.as_str() {
        "Exists" => t.key.is_empty() || t.key == taint.key,
        _ => t.key == taint.key && t.value == taint.value,
    }
}

async fn evict(
    ctx: &Context,
    node: &Node,
    taints: &[Taint],
    pods: &Store<Pod>,
) -> Result<(), Error> {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if no_execute.is_empty() {
        return Ok(());
    }
    let now = SystemTime::now();
    for pod in pods.by_index(BY_NODE, node.name()) {
        if pod.meta().deletion_timestamp.is_some() {
            continue;
        }
        let due = no_execute.iter().filter_map(|taint| {
            let after = eviction_after(&pod, taint, ctx.config.pod_eviction_timeout)?;
            let added = taint
                .time_added
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(now);
            Some(added + after)
        });
        if due.min().is_some_and(|at| at <= now) {
            match ctx
                .client
                .pods(pod.namespace())
                .delete(pod.name(), &DeleteParams::default())
                .await
            {
                Ok(_) | Err(Error::NotFound(_)) => {
                    let message = format!(
                        "Marking for deletion Pod {}/{}",
                        pod.namespace(),
                        pod.name()
                    );
                    ctx.recorder
                        .record(&*pod, NORMAL, "TaintManagerEviction", &message)
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use skiff::api::core::v1::{PodSpec, Toleration};

    use super::*;

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            value: String::new(),
            effect: "NoExecute".into(),
            time_added: None,
        }
    }

    #[test]
    fn toleration_times_decide_evictions() {
        let default = Duration::from_secs(300);
        let plain = Pod::default();
        assert_eq!(
            eviction_after(&plain, &taint(UNREACHABLE), default),
            Some(default)
        );
        assert_eq!(
            eviction_after(&plain, &taint("custom"), default),
            Some(Duration::ZERO)
        );
        let tolerant = |secs: Option<i64>| Pod {
            spec: Some(PodSpec {
                tolerations: vec![Toleration {
                    key: UNREACHABLE.into(),
                    operator: "Exists".into(),
                    effect: "NoExecute".into(),
                    toleration_seconds: secs,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            eviction_after(&tolerant(Some(30)), &taint(UNREACHABLE), default),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            eviction_after(&tolerant(None), &taint(UNREACHABLE), default),
            None,
            "tolerated forever"
        );
    }
}
