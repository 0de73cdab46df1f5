//! The scheduler's view of the cluster: every node with what its pods
//! request, fed by informers and kept consistent with *assumed* pods — a pod
//! counts against its node from the moment it is chosen, before its binding
//! is written; a failed binding un-assumes it. Pods nominated to a node by
//! preemption reserve room there for themselves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use skiff::Resource;
use skiff::api::core::v1::{Node, Pod};

use crate::resources::Resources;

/// "namespace/name" of a pod.
pub type PodKey = String;

/// The key of a pod.
pub fn pod_key(p: &Pod) -> PodKey {
    format!("{}/{}", p.meta().namespace, p.meta().name)
}

/// A pod's priority (0 when unset).
pub fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The uid of a pod's controller (its replica set), if any.
pub fn owner_uid(p: &Pod) -> Option<String> {
    p.meta()
        .owner_references
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

/// Whether a pod has finished (it no longer holds resources).
pub fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().map(|s| s.phase.as_str()),
        Some("Succeeded" | "Failed")
    )
}

/// One pod counted on a node.
#[derive(Debug, Clone)]
pub struct PodEntry {
    /// The pod.
    pub pod: Arc<Pod>,
    /// Its requests.
    pub requests: Resources,
    /// Its requests with scoring defaults.
    pub non_zero: Resources,
    /// Chosen but not yet seen bound.
    pub assumed: bool,
}

/// One node and what is placed on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node, once seen (pods may name a node before it is).
    pub node: Option<Arc<Node>>,
    /// What pods may use.
    pub allocatable: Resources,
    /// What its pods request.
    pub requested: Resources,
    /// What its pods request, with scoring defaults.
    pub non_zero_requested: Resources,
    /// Its pods.
    pub pods: HashMap<PodKey, PodEntry>,
    /// Host ports in use: (port, protocol, host IP).
    pub host_ports: HashSet<(i32, String, String)>,
    /// Pods per controller uid (for spreading).
    pub owners: HashMap<String, u32>,
    /// Its Ready condition is True (kept here so that a search over
    /// thousands of nodes reads this entry, not each node object).
    pub ready: bool,
    /// Marked unschedulable (cordoned).
    pub cordoned: bool,
    /// Its NoSchedule and NoExecute taints.
    pub taints: Vec<skiff::api::core::v1::Taint>,
}

impl NodeInfo {
    pub(crate) fn add(&mut self, entry: PodEntry) {
        let key = pod_key(&entry.pod);
        self.requested += entry.requests;
        self.non_zero_requested += entry.non_zero;
        for (port, proto, ip) in host_ports(&entry.pod) {
            self.host_ports.insert((port, proto, ip));
        }
        if let Some(o) = owner_uid(&entry.pod) {
            *self.owners.entry(o).or_default() += 1;
        }
        self.pods.insert(key, entry);
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<PodEntry> {
        let entry = self.pods.remove(key)?;
        self.requested -= entry.requests;
        self.non_zero_requested -= entry.non_zero;
        for hp in host_ports(&entry.pod) {
            self.host_ports.remove(&hp);
        }
        if let Some(o) = owner_uid(&entry.pod)
            && let Some(n) = self.owners.get_mut(&o)
        {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(&o);
            }
        }
        Some(entry)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node
            .as_ref()
            .map(|n| n.meta().name.as_str())
            .unwrap_or("")
    }
}

/// Host ports a pod asks for: (port, protocol, host IP).
pub fn host_ports(p: &Pod) -> Vec<(i32, String, String)> {
    let Some(spec) = &p.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter(|port| port.host_port != 0)
        .map(|port| {
            let proto = if port.protocol.is_empty() {
                "TCP".to_owned()
            } else {
                port.protocol.clone()
            };
            (port.host_port, proto, port.host_ip.clone())
        })
        .collect()
}

/// A pod nominated to a node by preemption.
#[derive(Debug, Clone, Copy)]
pub struct Nomination {
    /// Its priority.
    pub priority: i32,
    /// Its requests.
    pub requests: Resources,
}

/// Every node, in a stable order for round-robin scheduling.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// Names of nodes that exist, in the order they are tried.
    order: Vec<String>,
    /// Where each counted pod is.
    pod_node: HashMap<PodKey, String>,
    /// Pods nominated by preemption, per node.
    nominated: HashMap<String, HashMap<PodKey, Nomination>>,
    /// Counted pods with required anti-affinity (other pods must check them).
    anti_affinity: HashSet<PodKey>,
}

/// Whether a pod has required pod anti-affinity terms.
fn has_required_anti_affinity(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .is_some_and(|a| {
            !a.required_during_scheduling_ignored_during_execution
                .is_empty()
        })
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether any counted pod has required anti-affinity.
    pub fn has_anti_affinity_pods(&self) -> bool {
        !self.anti_affinity.is_empty()
    }

    /// The counted pods with required anti-affinity, with their nodes
    /// (those whose node is known).
    pub fn anti_affinity_pods(&self) -> impl Iterator<Item = (&Node, &Pod)> {
        self.anti_affinity.iter().filter_map(|key| {
            let info = self.nodes.get(self.pod_node.get(key)?)?;
            Some((info.node.as_deref()?, &*info.pods.get(key)?.pod))
        })
    }

    /// Nodes in scheduling order.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    /// Number of known nodes.
    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    /// Adds or updates a node.
    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let name = node.meta().name.clone();
        let info = self.nodes.entry(name.clone()).or_default();
        if info.node.is_none() {
            self.order.push(name);
        }
        info.allocatable = node
            .status
            .as_ref()
            .map(|s| Resources::from_list(&s.allocatable))
            .unwrap_or_default();
        info.ready = node.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
        });
        info.cordoned = node.spec.as_ref().is_some_and(|s| s.unschedulable);
        info.taints = node
            .spec
            .iter()
            .flat_map(|s| &s.taints)
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .cloned()
            .collect();
        info.node = Some(node);
    }

    /// Removes a node (its pods stay counted until they go).
    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            info.node = None;
            if info.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
        self.order.retain(|n| n != name);
    }

    /// Counts a pod seen bound to a node (confirming an assumption); a
    /// terminal pod is removed instead.
    pub fn upsert_pod(&mut self, pod: Arc<Pod>) {
        let key = pod_key(&pod);
        let node = pod
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() {
            return;
        }
        if is_terminal(&pod) {
            self.remove_pod(&key);
            return;
        }
        self.unnominate(&key);
        if let Some(old) = self.pod_node.get(&key).cloned()
            && let Some(info) = self.nodes.get_mut(&old)
        {
            info.remove(&key);
        }
        self.place(pod, &node, false);
    }

    fn place(&mut self, pod: Arc<Pod>, node: &str, assumed: bool) {
        let key = pod_key(&pod);
        if has_required_anti_affinity(&pod) {
            self.anti_affinity.insert(key.clone());
        }
        let entry = PodEntry {
            requests: Resources::of_pod(&pod, false),
            non_zero: Resources::of_pod(&pod, true),
            pod,
            assumed,
        };
        self.nodes.entry(node.to_owned()).or_default().add(entry);
        self.pod_node.insert(key, node.to_owned());
    }

    /// Stops counting a pod (deleted, or finished).
    pub fn remove_pod(&mut self, key: &str) {
        self.unnominate(key);
        self.anti_affinity.remove(key);
        if let Some(node) = self.pod_node.remove(key)
            && let Some(info) = self.nodes.get_mut(&node)
        {
            info.remove(key);
            if info.node.is_none() && info.pods.is_empty() {
                self.nodes.remove(&node);
            }
        }
    }

    /// Counts `pod` on `node` now, before its binding is written.
    pub fn assume(&mut self, pod: Arc<Pod>, node: &str) {
        let key = pod_key(&pod);
        self.unnominate(&key);
        self.place(pod, node, true);
    }

    /// Undoes an assumption (the binding failed); a confirmed pod stays.
    pub fn forget(&mut self, key: &str) {
        let assumed = self
            .pod_node
            .get(key)
            .and_then(|n| self.nodes.get(n))
            .and_then(|i| i.pods.get(key))
            .is_some_and(|e| e.assumed);
        if assumed {
            self.remove_pod(key);
        }
    }

    /// Whether a pod is counted (assumed or bound).
    pub fn is_placed(&self, key: &str) -> bool {
        self.pod_node.contains_key(key)
    }

    /// Reserves room on `node` for a preempting pod.
    pub fn nominate(&mut self, pod: &Pod, node: &str) {
        let key = pod_key(pod);
        self.unnominate(&key);
        self.nominated.entry(node.to_owned()).or_default().insert(
            key,
            Nomination {
                priority: priority(pod),
                requests: Resources::of_pod(pod, false),
            },
        );
    }

    fn unnominate(&mut self, key: &str) {
        self.nominated.retain(|_, m| {
            m.remove(key);
            !m.is_empty()
        });
    }

    /// Room reserved on `node` for nominated pods of at least `priority`, other than `except`.
    pub fn reserved(&self, node: &str, priority: i32, except: &str) -> Resources {
        let mut r = Resources::default();
        if self.nominated.is_empty() {
            return r;
        }
        if let Some(m) = self.nominated.get(node) {
            for (k, n) in m {
                if k != except && n.priority >= priority {
                    r += n.requests;
                }
            }
        }
        r
    }

    /// The node a pod is nominated to, if any.
    pub fn nominated_node(&self, key: &str) -> Option<&str> {
        self.nominated
            .iter()
            .find(|(_, m)| m.contains_key(key))
            .map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::api::core::v1::{Container, NodeStatus, PodSpec, ResourceRequirements};
    use skiff::api::meta::v1::ObjectMeta;

    fn node(name: &str, cpu: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                allocatable: [
                    ("cpu".to_string(), cpu.to_string()),
                    ("pods".to_string(), "110".to_string()),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn pod(name: &str, node: &str, cpu: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: node.into(),
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
    fn assumed_pods_count_at_once_and_forgetting_undoes_them() {
        let mut c = Cache::new();
        c.upsert_node(node("n1", "2"));
        c.assume(pod("a", "", "500m"), "n1");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 500);
        c.forget("ns/a");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
        // Once the binding is seen, forgetting does nothing.
        c.assume(pod("b", "", "1"), "n1");
        c.upsert_pod(pod("b", "n1", "1"));
        c.forget("ns/b");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        assert_eq!(c.node("n1").unwrap().requested.pods, 1);
        c.remove_pod("ns/b");
        assert_eq!(
            c.node("n1").unwrap().requested,
            Resources {
                milli_cpu: 0,
                memory: 0,
                pods: 0
            }
        );
    }

    #[test]
    fn pods_on_unknown_nodes_are_counted_when_the_node_arrives() {
        let mut c = Cache::new();
        c.upsert_pod(pod("a", "n9", "250m"));
        assert_eq!(c.node_count(), 0, "not schedulable before it is seen");
        c.upsert_node(node("n9", "1"));
        assert_eq!(c.node("n9").unwrap().requested.milli_cpu, 250);
        assert_eq!(c.order(), ["n9"]);
    }
}
