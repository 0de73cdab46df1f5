//! Filters (can the pod run on this node?) and scores (how good a fit is
//! it?), as Kubernetes' scheduling framework defines them, plus the search
//! over nodes: parallel, stopping after enough feasible nodes on big
//! clusters, and starting where the last search stopped.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use skiff::api::core::v1::{Node, Pod, Taint};

use crate::cache::{Cache, NodeInfo, host_ports, owner_uid, pod_key, priority};
use crate::resources::Resources;

/// Why a node cannot take a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The node's Ready condition is not True.
    NotReady,
    /// The node is cordoned.
    Unschedulable,
    /// Not enough CPU left.
    InsufficientCpu,
    /// Not enough memory left.
    InsufficientMemory,
    /// No pod slots left.
    TooManyPods,
    /// Node selector or required node affinity does not match.
    AffinityMismatch,
    /// A NoSchedule/NoExecute taint the pod does not tolerate.
    UntoleratedTaint(String),
    /// A requested host port is taken.
    HostPortConflict,
    /// A bound persistent volume cannot be reached from the node.
    VolumeNodeAffinity,
    /// No pod the required pod affinity asks for is in the node's domain.
    PodAffinity,
    /// A pod the required pod anti-affinity excludes is in the node's domain.
    PodAntiAffinity,
    /// A pod there has required anti-affinity against this pod.
    ExistingPodAntiAffinity,
    /// Placing the pod there would skew its spread beyond maxSkew.
    TopologySpread,
    /// The node lacks a spread constraint's topology label.
    TopologySpreadMissingLabel,
}

impl Reason {
    /// Whether removing pods from the node could lift this reason.
    pub fn preemption_can_help(&self) -> bool {
        matches!(
            self,
            Reason::InsufficientCpu
                | Reason::InsufficientMemory
                | Reason::TooManyPods
                | Reason::HostPortConflict
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotReady => f.write_str("node(s) were not ready"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::AffinityMismatch => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::UntoleratedTaint(t) => write!(f, "node(s) had untolerated taint {t}"),
            Reason::HostPortConflict => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::VolumeNodeAffinity => f.write_str("node(s) had volume node affinity conflict"),
            Reason::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingPodAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::TopologySpread => {
                f.write_str("node(s) didn't match pod topology spread constraints")
            }
            Reason::TopologySpreadMissingLabel => f.write_str(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ),
        }
    }
}

/// What the filters and scores need to know about the pod being scheduled.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The pod.
    pub pod: std::sync::Arc<Pod>,
    /// "namespace/name".
    pub key: String,
    /// Its requests.
    pub requests: Resources,
    /// Its requests with scoring defaults.
    pub non_zero: Resources,
    /// Its priority.
    pub priority: i32,
    /// Its controller's uid, for spreading.
    pub owner: Option<String>,
    /// Host ports it asks for.
    pub host_ports: Vec<(i32, String, String)>,
    /// Inter-pod rules (affinity, spreading), when any apply.
    pub constraints: Option<std::sync::Arc<crate::interpod::Constraints>>,
    /// It has a node selector or required node affinity (nodes' labels
    /// need reading).
    pub selects_nodes: bool,
}

impl PodInfo {
    /// Precomputes a pod's facts.
    pub fn new(pod: std::sync::Arc<Pod>) -> Self {
        Self {
            key: pod_key(&pod),
            requests: Resources::of_pod(&pod, false),
            non_zero: Resources::of_pod(&pod, true),
            priority: priority(&pod),
            owner: owner_uid(&pod),
            host_ports: host_ports(&pod),
            constraints: None,
            selects_nodes: pod.spec.as_ref().is_some_and(|s| {
                !s.node_selector.is_empty()
                    || s.affinity
                        .as_ref()
                        .and_then(|a| a.node_affinity.as_ref())
                        .is_some_and(|a| {
                            a.required_during_scheduling_ignored_during_execution
                                .is_some()
                        })
            }),
            pod,
        }
    }
}

pub use skiff::scheduling::tolerates;

fn taint_text(t: &Taint) -> String {
    format!("{{{}: {}}}", t.key, t.value)
}

/// Node selector and required node affinity.
pub fn affinity_matches(pod: &Pod, node: &Node) -> bool {
    pod.spec
        .as_ref()
        .is_none_or(|spec| skiff::scheduling::affinity_matches(spec, node))
}

/// Runs every filter; the reasons the node fails (empty: it fits).
/// `reserved` is room held for nominated pods of higher or equal priority.
pub fn filter(p: &PodInfo, info: &NodeInfo, reserved: Resources) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let Some(node) = &info.node else {
        return vec![Reason::NotReady];
    };
    let tolerations = p
        .pod
        .spec
        .as_ref()
        .map(|s| s.tolerations.as_slice())
        .unwrap_or(&[]);
    if !info.ready {
        reasons.push(Reason::NotReady);
    }
    if info.cordoned {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            reasons.push(Reason::Unschedulable);
        }
    }
    let requested = info.requested + reserved;
    let a = info.allocatable;
    if p.requests.milli_cpu > 0 && requested.milli_cpu + p.requests.milli_cpu > a.milli_cpu {
        reasons.push(Reason::InsufficientCpu);
    }
    if p.requests.memory > 0 && requested.memory + p.requests.memory > a.memory {
        reasons.push(Reason::InsufficientMemory);
    }
    if requested.pods + 1 > a.pods {
        reasons.push(Reason::TooManyPods);
    }
    if p.selects_nodes && !affinity_matches(&p.pod, node) {
        reasons.push(Reason::AffinityMismatch);
    }
    if let Some(taint) = info
        .taints
        .iter()
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
    {
        reasons.push(Reason::UntoleratedTaint(taint_text(taint)));
    }
    for (port, proto, ip) in &p.host_ports {
        let taken = info.host_ports.iter().any(|(hp, hproto, hip)| {
            hp == port
                && hproto == proto
                && (hip.is_empty()
                    || ip.is_empty()
                    || hip == "0.0.0.0"
                    || ip == "0.0.0.0"
                    || hip == ip)
        });
        if taken {
            reasons.push(Reason::HostPortConflict);
            break;
        }
    }
    if let Some(c) = &p.constraints {
        reasons.extend(c.filter(node));
    }
    reasons
}

/// Weights of the scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Prefer nodes with the most free CPU and memory.
    pub least_allocated: i64,
    /// Prefer nodes whose CPU and memory use stay balanced.
    pub balanced_allocation: i64,
    /// Prefer nodes with fewer pods of the same replica set.
    pub spread: i64,
    /// Preferred pod affinity and anti-affinity (Kubernetes: 2).
    pub inter_pod_affinity: i64,
    /// ScheduleAnyway topology spread constraints (Kubernetes: 2).
    pub topology_spread: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            least_allocated: 1,
            balanced_allocation: 1,
            spread: 2,
            inter_pod_affinity: 2,
            topology_spread: 2,
        }
    }
}

/// `raw` scaled to 0–100 between the lowest and highest raw value, high
/// or low being best.
fn normalize(raw: i64, lo: i64, hi: i64, high_is_best: bool) -> i64 {
    if hi == lo {
        return 100;
    }
    let x = 100 * (raw - lo) / (hi - lo);
    if high_is_best { x } else { 100 - x }
}

fn fraction(used: i64, total: i64) -> f64 {
    if total <= 0 {
        1.0
    } else {
        (used as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Least-allocated score (0-100): free share of CPU and memory after placing the pod.
pub fn least_allocated(p: &PodInfo, info: &NodeInfo) -> i64 {
    let after = info.non_zero_requested + p.non_zero;
    let cpu = 1.0 - fraction(after.milli_cpu, info.allocatable.milli_cpu);
    let mem = 1.0 - fraction(after.memory, info.allocatable.memory);
    ((cpu + mem) / 2.0 * 100.0) as i64
}

/// Balanced-allocation score (0-100): how close CPU and memory use are after placing the pod.
pub fn balanced_allocation(p: &PodInfo, info: &NodeInfo) -> i64 {
    let after = info.non_zero_requested + p.non_zero;
    let cpu = fraction(after.milli_cpu, info.allocatable.milli_cpu);
    let mem = fraction(after.memory, info.allocatable.memory);
    ((1.0 - (cpu - mem).abs()) * 100.0) as i64
}

/// Pods of the pod's replica set on a node (the spread score is normalized over the feasible nodes).
pub fn same_owner_count(p: &PodInfo, info: &NodeInfo) -> u32 {
    p.owner
        .as_ref()
        .and_then(|o| info.owners.get(o))
        .copied()
        .unwrap_or(0)
}

/// How many feasible nodes to find before stopping (Kubernetes' adaptive
/// percentage of nodes to score), given `n` nodes.
pub fn feasible_nodes_to_find(n: usize, percentage: Option<u32>) -> usize {
    const MIN: usize = 100;
    if n < MIN {
        return n;
    }
    let pct = match percentage {
        Some(p) if p > 0 => p.min(100) as usize,
        _ => (50usize.saturating_sub(n / 125)).max(5),
    };
    (n * pct / 100).max(MIN)
}

/// Feasible nodes to find from which a search uses the thread pool.
const PARALLEL_SEARCH_MIN: usize = 2048;

/// The outcome of a search.
#[derive(Debug, Clone)]
pub struct Search {
    /// Feasible nodes with their scores.
    pub feasible: Vec<(String, i64)>,
    /// Why each infeasible node that was tried failed.
    pub failures: BTreeMap<String, Vec<Reason>>,
    /// How many nodes were tried.
    pub tried: usize,
    /// Time spent filtering the nodes tried (with their per-node scores).
    pub filter_time: std::time::Duration,
    /// Time spent scoring the feasible nodes against each other.
    pub score_time: std::time::Duration,
}

/// A node's outcome: (score, pods of the same owner) when feasible, reasons otherwise.
type Evaluation = Result<(i64, u32), Vec<Reason>>;

/// Filters and scores nodes for `p`, starting at `start` in the cache's
/// order, in parallel, until enough feasible nodes are found.
pub fn search(
    cache: &Cache,
    p: &PodInfo,
    start: usize,
    weights: Weights,
    percentage: Option<u32>,
) -> Search {
    let started = std::time::Instant::now();
    let order = cache.order();
    let n = order.len();
    if n == 0 {
        return Search {
            feasible: Vec::new(),
            failures: BTreeMap::new(),
            tried: 0,
            filter_time: started.elapsed(),
            score_time: std::time::Duration::ZERO,
        };
    }
    let want = feasible_nodes_to_find(n, percentage);
    let found = AtomicUsize::new(0);
    let evaluate = |i: usize| -> Option<(String, Evaluation)> {
        if found.load(Ordering::Relaxed) >= want {
            return None;
        }
        let name = &order[(start + i) % n];
        let info = cache.node(name)?;
        let reserved = cache.reserved(name, p.priority, &p.key);
        let reasons = filter(p, info, reserved);
        if !reasons.is_empty() {
            return Some((name.clone(), Err(reasons)));
        }
        found.fetch_add(1, Ordering::Relaxed);
        let score = weights.least_allocated * least_allocated(p, info)
            + weights.balanced_allocation * balanced_allocation(p, info);
        Some((name.clone(), Ok((score, same_owner_count(p, info)))))
    };
    // Threads pay only for long searches: waking the pool for each pod of
    // a few hundred nodes (a few microseconds of work each) cost more, in
    // context switches, than the search itself.
    let results: Vec<_> = if want >= PARALLEL_SEARCH_MIN {
        (0..n)
            .into_par_iter()
            .with_min_len(64)
            .map(evaluate)
            .collect()
    } else {
        let mut results = Vec::with_capacity(want.min(n));
        for i in 0..n {
            if found.load(Ordering::Relaxed) >= want {
                break;
            }
            results.push(evaluate(i));
        }
        results
    };
    let tried = results.iter().filter(|r| r.is_some()).count();
    let mut failures = BTreeMap::new();
    let mut scored = Vec::new();
    for (name, r) in results.into_iter().flatten() {
        match r {
            Ok(s) => scored.push((name, s)),
            Err(reasons) => {
                failures.insert(name, reasons);
            }
        }
    }
    let filtered = std::time::Instant::now();
    // Spreading is relative to the busiest feasible node.
    let max_same = scored.iter().map(|(_, (_, c))| *c).max().unwrap_or(0);
    // Inter-pod scores are relative to the feasible nodes' range.
    let interpod: Vec<(i64, i64)> = match &p.constraints {
        Some(c) => scored
            .iter()
            .map(|(name, _)| {
                cache
                    .node(name)
                    .and_then(|i| i.node.as_deref())
                    .map(|n| c.raw_scores(n))
                    .unwrap_or_default()
            })
            .collect(),
        None => vec![(0, 0); scored.len()],
    };
    let range = |f: fn(&(i64, i64)) -> i64| {
        let lo = interpod.iter().map(f).min().unwrap_or(0);
        let hi = interpod.iter().map(f).max().unwrap_or(0);
        (lo, hi)
    };
    let (alo, ahi) = range(|s| s.0);
    let (slo, shi) = range(|s| s.1);
    let feasible = scored
        .into_iter()
        .zip(interpod)
        .map(|((name, (score, count)), (affinity, spreading))| {
            let spread = if max_same == 0 {
                100
            } else {
                100 * (max_same - count) as i64 / max_same as i64
            };
            (
                name,
                score
                    + weights.spread * spread
                    + weights.inter_pod_affinity * normalize(affinity, alo, ahi, true)
                    + weights.topology_spread * normalize(spreading, slo, shi, false),
            )
        })
        .collect();
    Search {
        feasible,
        failures,
        tried,
        filter_time: filtered - started,
        score_time: filtered.elapsed(),
    }
}

/// The message of an unschedulable pod: "0/5 nodes are available: 3 Insufficient cpu, 2 …".
pub fn failure_message(total: usize, failures: &BTreeMap<String, Vec<Reason>>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for reasons in failures.values() {
        for r in reasons {
            *counts.entry(r.to_string()).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return format!("0/{total} nodes are available: no nodes are registered.");
    }
    let mut parts: Vec<(usize, String)> = counts.into_iter().map(|(r, c)| (c, r)).collect();
    parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let list = parts
        .iter()
        .map(|(c, r)| format!("{c} {r}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("0/{total} nodes are available: {list}.")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use skiff::Resource;
    use skiff::api::core::v1::{
        Affinity, Container, ContainerPort, NodeAffinity, NodeCondition, NodeSelector,
        NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus, PodSpec,
        ResourceRequirements, Toleration,
    };
    use skiff::api::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: [("cpu", "2"), ("memory", "4Gi"), ("pods", "3")]
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
        }
    }

    fn pod(cpu: &str, mem: &str) -> Pod {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_string(), cpu.to_string());
        }
        if !mem.is_empty() {
            requests.insert("memory".to_string(), mem.to_string());
        }
        Pod {
            metadata: Some(ObjectMeta {
                name: "p".into(),
                namespace: "ns".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests,
                        limits: BTreeMap::new(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    fn info(node: Node, pods: Vec<Pod>) -> NodeInfo {
        let mut c = Cache::new();
        let name = node.meta().name.clone();
        c.upsert_node(Arc::new(node));
        for (i, mut p) in pods.into_iter().enumerate() {
            p.meta_mut().name = format!("existing-{i}");
            p.spec.as_mut().unwrap().node_name = name.clone();
            c.upsert_pod(Arc::new(p));
        }
        c.node(&name).unwrap().clone()
    }

    fn check(p: Pod, info: &NodeInfo) -> Vec<Reason> {
        filter(&PodInfo::new(Arc::new(p)), info, Resources::default())
    }

    #[test]
    fn resource_fit_table() {
        let cases: Vec<(&str, Pod, Vec<Pod>, Vec<Reason>)> = vec![
            ("fits an empty node", pod("1", "1Gi"), vec![], vec![]),
            (
                "exactly full is fine",
                pod("1", "2Gi"),
                vec![pod("1", "2Gi")],
                vec![],
            ),
            (
                "cpu over",
                pod("1500m", ""),
                vec![pod("1", "")],
                vec![Reason::InsufficientCpu],
            ),
            (
                "memory over",
                pod("", "3Gi"),
                vec![pod("", "2Gi")],
                vec![Reason::InsufficientMemory],
            ),
            (
                "both over",
                pod("3", "5Gi"),
                vec![],
                vec![Reason::InsufficientCpu, Reason::InsufficientMemory],
            ),
            (
                "pod slots",
                pod("", ""),
                vec![pod("", ""), pod("", ""), pod("", "")],
                vec![Reason::TooManyPods],
            ),
            (
                "no requests fit anywhere",
                pod("", ""),
                vec![pod("2", "4Gi")],
                vec![],
            ),
        ];
        for (name, p, existing, expected) in cases {
            assert_eq!(
                check(p, &info(node("n", &[]), existing)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn node_selector_and_affinity_table() {
        let n = node("n1", &[("zone", "a"), ("gen", "5")]);
        let term = |key: &str, op: &str, values: &[&str]| NodeSelectorTerm {
            match_expressions: vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
            match_fields: vec![],
        };
        let with_affinity = |terms: Vec<NodeSelectorTerm>| {
            let mut p = pod("", "");
            p.spec.as_mut().unwrap().affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    preferred_during_scheduling_ignored_during_execution: vec![],
                }),
                ..Default::default()
            });
            p
        };
        let cases = vec![
            (
                "In",
                with_affinity(vec![term("zone", "In", &["a", "b"])]),
                true,
            ),
            (
                "In misses",
                with_affinity(vec![term("zone", "In", &["b"])]),
                false,
            ),
            (
                "NotIn",
                with_affinity(vec![term("zone", "NotIn", &["b"])]),
                true,
            ),
            (
                "NotIn hits",
                with_affinity(vec![term("zone", "NotIn", &["a"])]),
                false,
            ),
            (
                "Exists",
                with_affinity(vec![term("gen", "Exists", &[])]),
                true,
            ),
            (
                "DoesNotExist",
                with_affinity(vec![term("gpu", "DoesNotExist", &[])]),
                true,
            ),
            (
                "DoesNotExist hits",
                with_affinity(vec![term("gen", "DoesNotExist", &[])]),
                false,
            ),
            ("Gt", with_affinity(vec![term("gen", "Gt", &["4"])]), true),
            (
                "Gt misses",
                with_affinity(vec![term("gen", "Gt", &["5"])]),
                false,
            ),
            ("Lt", with_affinity(vec![term("gen", "Lt", &["6"])]), true),
            (
                "terms are ORed",
                with_affinity(vec![term("zone", "In", &["x"]), term("gen", "Exists", &[])]),
                true,
            ),
            (
                "match fields on the name",
                with_affinity(vec![NodeSelectorTerm {
                    match_expressions: vec![],
                    match_fields: vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: vec!["n1".into()],
                    }],
                }]),
                true,
            ),
        ];
        for (name, p, fits) in cases {
            assert_eq!(affinity_matches(&p, &n), fits, "{name}");
        }
        let mut selected = pod("", "");
        selected.spec.as_mut().unwrap().node_selector =
            [("zone".to_string(), "b".to_string())].into();
        assert_eq!(
            check(selected, &info(n.clone(), vec![])),
            vec![Reason::AffinityMismatch]
        );
    }

    #[test]
    fn taints_and_tolerations_table() {
        let taint = |k: &str, v: &str, e: &str| Taint {
            key: k.into(),
            value: v.into(),
            effect: e.into(),
            time_added: None,
        };
        let tol = |k: &str, op: &str, v: &str, e: &str| Toleration {
            key: k.into(),
            operator: op.into(),
            value: v.into(),
            effect: e.into(),
            toleration_seconds: None,
        };
        let cases = vec![
            (
                "equal",
                tol("k", "Equal", "v", "NoSchedule"),
                taint("k", "v", "NoSchedule"),
                true,
            ),
            (
                "value differs",
                tol("k", "Equal", "x", "NoSchedule"),
                taint("k", "v", "NoSchedule"),
                false,
            ),
            (
                "exists any value",
                tol("k", "Exists", "", ""),
                taint("k", "v", "NoExecute"),
                true,
            ),
            (
                "empty key exists: everything",
                tol("", "Exists", "", ""),
                taint("k", "v", "NoSchedule"),
                true,
            ),
            (
                "effect differs",
                tol("k", "Exists", "", "NoExecute"),
                taint("k", "v", "NoSchedule"),
                false,
            ),
        ];
        for (name, t, taint, ok) in cases {
            assert_eq!(tolerates(&t, &taint), ok, "{name}");
        }
        let mut tainted = node("n1", &[]);
        tainted
            .spec
            .as_mut()
            .unwrap()
            .taints
            .push(taint("dedicated", "gpu", "NoSchedule"));
        let i = info(tainted, vec![]);
        assert_eq!(
            check(pod("", ""), &i),
            vec![Reason::UntoleratedTaint("{dedicated: gpu}".into())]
        );
        let mut tolerant = pod("", "");
        tolerant.spec.as_mut().unwrap().tolerations.push(tol(
            "dedicated",
            "Equal",
            "gpu",
            "NoSchedule",
        ));
        assert!(check(tolerant, &i).is_empty());
        let mut soft = node("n2", &[]);
        soft.spec
            .as_mut()
            .unwrap()
            .taints
            .push(taint("k", "v", "PreferNoSchedule"));
        assert!(
            check(pod("", ""), &info(soft, vec![])).is_empty(),
            "PreferNoSchedule does not filter"
        );
    }

    #[test]
    fn readiness_cordons_and_host_ports() {
        let mut not_ready = node("n", &[]);
        not_ready.status.as_mut().unwrap().conditions[0].status = "False".into();
        assert_eq!(
            check(pod("", ""), &info(not_ready, vec![])),
            vec![Reason::NotReady]
        );
        let mut cordoned = node("n", &[]);
        cordoned.spec.as_mut().unwrap().unschedulable = true;
        assert_eq!(
            check(pod("", ""), &info(cordoned, vec![])),
            vec![Reason::Unschedulable]
        );
        let with_port = |port| {
            let mut p = pod("", "");
            p.spec.as_mut().unwrap().containers[0]
                .ports
                .push(ContainerPort {
                    host_port: port,
                    container_port: 80,
                    ..Default::default()
                });
            p
        };
        let i = info(node("n", &[]), vec![with_port(8080)]);
        assert_eq!(check(with_port(8080), &i), vec![Reason::HostPortConflict]);
        assert!(check(with_port(8081), &i).is_empty());
    }

    #[test]
    fn scores_prefer_free_balanced_and_spread_nodes() {
        let p = PodInfo::new(Arc::new(pod("500m", "512Mi")));
        let empty = info(node("a", &[]), vec![]);
        let busy = info(node("b", &[]), vec![pod("1", "1Gi")]);
        assert!(least_allocated(&p, &empty) > least_allocated(&p, &busy));
        let cpu_heavy = info(node("c", &[]), vec![pod("1500m", "")]);
        assert!(balanced_allocation(&p, &empty) > balanced_allocation(&p, &cpu_heavy));

        // Spreading: a node with a sibling scores lower.
        let owned = |name: &str| {
            let mut x = pod("", "");
            x.meta_mut().name = name.into();
            x.meta_mut().owner_references.push(OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: None,
            });
            x
        };
        let mut c = Cache::new();
        for n in ["a", "b"] {
            c.upsert_node(Arc::new(node(n, &[])));
        }
        let mut sibling = owned("s1");
        sibling.spec.as_mut().unwrap().node_name = "a".into();
        c.upsert_pod(Arc::new(sibling));
        let s = search(
            &c,
            &PodInfo::new(Arc::new(owned("new"))),
            0,
            Weights::default(),
            None,
        );
        let score = |n: &str| s.feasible.iter().find(|(x, _)| x == n).unwrap().1;
        assert!(score("b") > score("a"), "{:?}", s.feasible);
    }

    #[test]
    fn big_clusters_stop_after_enough_feasible_nodes_and_rotate() {
        assert_eq!(feasible_nodes_to_find(50, None), 50);
        assert_eq!(feasible_nodes_to_find(1000, None), 420);
        assert_eq!(feasible_nodes_to_find(5000, None), 500);
        assert_eq!(feasible_nodes_to_find(5000, Some(100)), 5000);
        let mut c = Cache::new();
        for i in 0..1000 {
            c.upsert_node(Arc::new(node(&format!("n{i:04}"), &[])));
        }
        let p = PodInfo::new(Arc::new(pod("", "")));
        let s = search(&c, &p, 0, Weights::default(), None);
        assert!(
            s.feasible.len() >= 420 && s.tried < 1000,
            "found {} after {}",
            s.feasible.len(),
            s.tried
        );
        let later = search(&c, &p, 900, Weights::default(), None);
        assert!(
            later.feasible.iter().any(|(n, _)| n == "n0950"),
            "the search starts where asked"
        );
    }

    #[test]
    fn failure_messages_count_reasons_like_kubernetes() {
        let mut f = BTreeMap::new();
        f.insert("a".to_string(), vec![Reason::InsufficientCpu]);
        f.insert("b".to_string(), vec![Reason::InsufficientCpu]);
        f.insert("c".to_string(), vec![Reason::InsufficientCpu]);
        f.insert(
            "d".to_string(),
            vec![Reason::UntoleratedTaint("{k: v}".into())],
        );
        f.insert(
            "e".to_string(),
            vec![Reason::UntoleratedTaint("{k: v}".into())],
        );
        assert_eq!(
            failure_message(5, &f),
            "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had untolerated taint {k: v}."
        );
    }
}
