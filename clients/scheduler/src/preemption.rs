//! Basic preemption: a pod that fits nowhere may evict lower-priority pods
//! from one node so that it fits. Only nodes that failed for reasons
//! eviction can lift are considered; on each, the fewest and least
//! important victims are chosen (every lower-priority pod is removed in
//! simulation, then the most important are given back while the pod still
//! fits); among nodes, the one whose most important victim matters least,
//! then the fewest victims, wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff::api::core::v1::Pod;

use crate::cache::{Cache, pod_key, priority};
use crate::framework::{PodInfo, Reason, filter};

/// The pods to evict from a node.
#[derive(Debug, Clone)]
pub struct Victims {
    /// The node.
    pub node: String,
    /// The pods to evict.
    pub pods: Vec<Arc<Pod>>,
}

/// Picks a node and victims for `p`, given why each node failed.
pub fn select_victims(
    cache: &Cache,
    p: &PodInfo,
    failures: &BTreeMap<String, Vec<Reason>>,
) -> Option<Victims> {
    let policy = p
        .pod
        .spec
        .as_ref()
        .map(|s| s.preemption_policy.as_str())
        .unwrap_or("");
    if policy == "Never" {
        return None;
    }
    let mut best: Option<(i32, usize, Victims)> = None;
    for (name, reasons) in failures {
        if reasons.is_empty() || !reasons.iter().all(Reason::preemption_can_help) {
            continue;
        }
        let Some(info) = cache.node(name) else {
            continue;
        };
        let mut lower: Vec<_> = info
            .pods
            .values()
            .filter(|e| priority(&e.pod) < p.priority)
            .cloned()
            .collect();
        if lower.is_empty() {
            continue;
        }
        let reserved = cache.reserved(name, p.priority, &p.key);
        let mut sim = info.clone();
        for e in &lower {
            sim.remove(&pod_key(&e.pod));
        }
        if !filter(p, &sim, reserved).is_empty() {
            continue;
        }
        // Give back the most important pods first while the pod still fits.
        lower.sort_by_key(|e| std::cmp::Reverse(priority(&e.pod)));
        let mut victims = Vec::new();
        for e in lower {
            sim.add(e.clone());
            if !filter(p, &sim, reserved).is_empty() {
                sim.remove(&pod_key(&e.pod));
                victims.push(e.pod.clone());
            }
        }
        let top = victims
            .iter()
            .map(|v| priority(v))
            .max()
            .unwrap_or(i32::MIN);
        let candidate = (
            top,
            victims.len(),
            Victims {
                node: name.clone(),
                pods: victims,
            },
        );
        let better = match &best {
            None => true,
            Some((t, n, _)) => (candidate.0, candidate.1) < (*t, *n),
        };
        if better {
            best = Some(candidate);
        }
    }
    best.map(|(_, _, v)| v)
}

#[cfg(test)]
mod tests {
    use skiff::api::core::v1::{
        Container, Node, NodeCondition, NodeStatus, PodSpec, ResourceRequirements,
    };
    use skiff::api::meta::v1::ObjectMeta;

    use super::*;
    use crate::framework::search;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: None,
            status: Some(NodeStatus {
                allocatable: [("cpu", "2"), ("memory", "8Gi"), ("pods", "10")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                conditions: vec![NodeCondition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        })
    }

    fn pod(name: &str, node: &str, cpu: &str, prio: i32) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: node.into(),
                priority: Some(prio),
                containers: vec![Container {
                    resources: Some(ResourceRequirements {
                        requests: [("cpu".to_string(), cpu.to_string())].into(),
                        limits: Default::default(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        })
    }

    #[test]
    fn the_fewest_least_important_victims_are_chosen() {
        let mut c = Cache::new();
        c.upsert_node(node("a"));
        c.upsert_node(node("b"));
        // a: two low pods of 1 CPU each. b: one medium pod of 2 CPUs.
        c.upsert_pod(pod("a1", "a", "1", 1));
        c.upsert_pod(pod("a2", "a", "1", 1));
        c.upsert_pod(pod("b1", "b", "2", 5));
        let p = PodInfo::new(pod("urgent", "", "1", 10));
        let s = search(&c, &p, 0, Default::default(), None);
        assert!(s.feasible.is_empty());
        let v = select_victims(&c, &p, &s.failures).unwrap();
        assert_eq!(v.node, "a", "the victims there matter least");
        assert_eq!(v.pods.len(), 1, "one 1-CPU pod is enough");
        // Equal or higher priority pods are never victims.
        let peer = PodInfo::new(pod("peer", "", "1", 1));
        let s = search(&c, &peer, 0, Default::default(), None);
        assert!(select_victims(&c, &peer, &s.failures).is_none());
    }
}
