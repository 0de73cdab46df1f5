//! The node lifecycle controller. It watches node leases and node status: a
//! node whose kubelet stops renewing for the grace period (40 s by default)
//! is marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable`
//! (a node reporting `Ready=False`, `node.kubernetes.io/not-ready`); pods
//! there that do not tolerate the taint are deleted once their toleration
//! time (300 s by default) has passed, so their replica sets replace them
//! elsewhere; the taint goes when the node comes back.
//!
//! Evictions are paced per zone (nodes grouped by
//! `topology.kubernetes.io/zone`), as Kubernetes' disruption modes: in a
//! healthy zone the pods of 0.1 nodes per second start to go; in a zone
//! where more than 55 % of the nodes (and more than two) are unhealthy,
//! 0.01 per second if the zone is large (over 50 nodes), else none; and
//! when every node of every zone is unhealthy at once, the fault is taken
//! to be this side's (the network, the control plane), not the nodes': the
//! health taints are removed, no pod is evicted, and when some node is back
//! every node gets a new grace period before it can be tainted again.

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
/// Label of a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// How eviction is paced (Kubernetes' node lifecycle defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvictionPacing {
    /// Nodes per second whose pods may start to go in a healthy zone (0.1).
    pub rate: f64,
    /// The same in a partly disrupted large zone (0.01).
    pub secondary_rate: f64,
    /// Share of unhealthy nodes that makes a zone partly disrupted (0.55).
    pub unhealthy_zone_threshold: f64,
    /// Zones up to this many nodes stop evicting when partly disrupted (50).
    pub large_cluster_size_threshold: usize,
}

impl Default for EvictionPacing {
    fn default() -> Self {
        Self {
            rate: 0.1,
            secondary_rate: 0.01,
            unhealthy_zone_threshold: 0.55,
            large_cluster_size_threshold: 50,
        }
    }
}

/// The health of a zone, as Kubernetes names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    /// Few nodes unhealthy: evict at the normal rate.
    Normal,
    /// More than the threshold (and more than two) unhealthy.
    PartialDisruption,
    /// Every node unhealthy.
    FullDisruption,
}

/// The state of a zone of `total` nodes, `unhealthy` of them not ready or
/// unreachable.
pub fn zone_state(total: usize, unhealthy: usize, threshold: f64) -> ZoneState {
    if unhealthy > 0 && unhealthy >= total {
        ZoneState::FullDisruption
    } else if unhealthy > 2 && unhealthy as f64 / total as f64 >= threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// Nodes per second whose pods may start to go in a zone of `size` nodes in
/// `state`; none at all when every zone is fully disrupted.
pub fn eviction_rate(
    state: ZoneState,
    size: usize,
    all_fully_disrupted: bool,
    pacing: &EvictionPacing,
) -> f64 {
    if all_fully_disrupted {
        return 0.0;
    }
    match state {
        ZoneState::Normal | ZoneState::FullDisruption => pacing.rate,
        ZoneState::PartialDisruption if size > pacing.large_cluster_size_threshold => {
            pacing.secondary_rate
        }
        ZoneState::PartialDisruption => 0.0,
    }
}

/// A token bucket of one token: lets a node start evicting at `rate` per
/// second.
#[derive(Debug, Clone)]
struct Limiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    fn new(now: Instant) -> Self {
        Self {
            rate: 0.0,
            tokens: 1.0,
            last: now,
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(1.0);
        if self.rate > 0.0 && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Eviction pacing across ticks: which nodes may evict, per zone.
struct Pacer {
    pacing: EvictionPacing,
    limiters: HashMap<String, Limiter>,
    /// Nodes let in to evict; they stay in until healthy again.
    evicting: std::collections::HashSet<String>,
    /// Whether every zone was fully disrupted at the last tick.
    all_down: bool,
}

impl Pacer {
    fn new(pacing: EvictionPacing) -> Self {
        Self {
            pacing,
            limiters: HashMap::new(),
            evicting: Default::default(),
            all_down: false,
        }
    }

    /// Updates zone rates from `health` (node, zone, unhealthy); returns
    /// whether every zone is fully disrupted.
    fn observe(&mut self, health: &[(String, String, bool)], now: Instant) -> bool {
        let mut zones: HashMap<&str, (usize, usize)> = HashMap::new();
        for (_, zone, unhealthy) in health {
            let z = zones.entry(zone.as_str()).or_default();
            z.0 += 1;
            z.1 += usize::from(*unhealthy);
        }
        let states: HashMap<&str, (ZoneState, usize)> = zones
            .iter()
            .map(|(z, (total, bad))| {
                let state = zone_state(*total, *bad, self.pacing.unhealthy_zone_threshold);
                (*z, (state, *total))
            })
            .collect();
        let all_down = !states.is_empty()
            && states
                .values()
                .all(|(s, _)| *s == ZoneState::FullDisruption);
        for (zone, (state, size)) in &states {
            let limiter = self
                .limiters
                .entry((*zone).to_owned())
                .or_insert_with(|| Limiter::new(now));
            limiter.rate = eviction_rate(*state, *size, all_down, &self.pacing);
        }
        self.limiters.retain(|z, _| states.contains_key(z.as_str()));
        if all_down {
            // Nothing is evicted; once nodes return, each starts over.
            self.evicting.clear();
        }
        for (node, _, unhealthy) in health {
            if !unhealthy {
                self.evicting.remove(node);
            }
        }
        self.all_down = all_down;
        all_down
    }

    /// Whether `node` (in `zone`) may evict its pods now.
    fn may_evict(&mut self, node: &str, zone: &str, now: Instant) -> bool {
        if self.all_down {
            return false;
        }
        if self.evicting.contains(node) {
            return true;
        }
        let allowed = self.limiters.get_mut(zone).is_some_and(|l| l.try_take(now));
        if allowed {
            self.evicting.insert(node.to_owned());
        }
        allowed
    }
}

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
    let mut pacer = Pacer::new(ctx.config.eviction_pacing);
    let mut ticker = tokio::time::interval(ctx.config.node_monitor_period);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut shutdown => return,
        }
        let (node_store, lease_store, pod_store) = (nodes.store(), leases.store(), pods.store());
        let mut checked = Vec::new();
        for node in node_store.list() {
            match observe(&ctx, &node, &lease_store, &mut seen).await {
                Ok(c) => checked.push(c),
                Err(e) => {
                    tracing::warn!(node = node.name(), error = %e, "node lifecycle check failed")
                }
            }
        }
        let health: Vec<(String, String, bool)> = checked
            .iter()
            .map(|(n, stale)| (n.name().to_owned(), zone_of(n), unhealthy(n, *stale)))
            .collect();
        let now = Instant::now();
        let was_down = pacer.all_down;
        let all_down = pacer.observe(&health, now);
        if all_down && !was_down {
            tracing::warn!(
                "every node is unhealthy: entering full disruption mode, no evictions, their taints removed"
            );
        } else if was_down && !all_down {
            // As Kubernetes does: every node gets a fresh grace period, so
            // that the nodes still on their way back are not evicted at
            // once for a silence that was not theirs.
            tracing::info!(
                "some nodes are healthy again: leaving full disruption mode, every node given a new grace period"
            );
            for s in seen.values_mut() {
                s.at = now;
            }
            for (_, stale) in &mut checked {
                *stale = false;
            }
        }
        for ((node, stale), (name, zone, bad)) in checked.iter().zip(&health) {
            let taints = match reconcile_taints(&ctx, node, *stale, all_down).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(node = node.name(), error = %e, "tainting the node failed");
                    continue;
                }
            };
            if !bad || !pacer.may_evict(name, zone, now) {
                continue;
            }
            if let Err(e) = evict(&ctx, node, &taints, &pod_store).await {
                tracing::warn!(node = node.name(), error = %e, "evicting pods failed");
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

/// The status of a node's Ready condition ("" when it has none yet).
fn ready_status(node: &Node) -> &str {
    ready_condition(node).map_or("", |c| c.status.as_str())
}

/// A node's zone (empty when it has none).
fn zone_of(node: &Node) -> String {
    node.meta()
        .labels
        .get(ZONE_LABEL)
        .cloned()
        .unwrap_or_default()
}

/// Whether a node counts as unhealthy for its zone's state: silent past
/// the grace period, or not reporting Ready (as Kubernetes counts zones).
fn unhealthy(node: &Node, stale: bool) -> bool {
    stale || matches!(ready_status(node), "False" | "Unknown")
}

/// The health taint a node should carry, given its Ready status, whether
/// its heartbeats are past the grace period, the health taint it carries
/// now, and whether every node is down (then none: the fault is taken to
/// be this side's). An `Unknown` node whose heartbeats resumed keeps what
/// it has until its kubelet reports again.
fn wanted_taint(
    ready: &str,
    stale: bool,
    current: Option<&str>,
    all_down: bool,
) -> Option<&'static str> {
    if all_down {
        return None;
    }
    match ready {
        "False" => Some(NOT_READY),
        _ if stale => Some(UNREACHABLE),
        "Unknown" => current.and_then(|c| [UNREACHABLE, NOT_READY].into_iter().find(|k| *k == c)),
        _ => None,
    }
}

/// Records a node's heartbeats and marks its conditions `Unknown` once its
/// kubelet has been silent for the grace period; returns the node as
/// written and whether it is silent.
async fn observe(
    ctx: &Context,
    node: &Node,
    leases: &Store<Lease>,
    seen: &mut HashMap<String, Seen>,
) -> Result<(Node, bool), Error> {
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

    // A silent kubelet: its conditions become Unknown.
    let mut node = node.clone();
    if stale && ready_status(&node) != "Unknown" {
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
    Ok((node, stale))
}

/// Brings a node's health taints in line with its state; returns its
/// taints as written.
async fn reconcile_taints(
    ctx: &Context,
    node: &Node,
    stale: bool,
    all_down: bool,
) -> Result<Vec<Taint>, Error> {
    let taints = node
        .spec
        .as_ref()
        .map(|s| s.taints.clone())
        .unwrap_or_default();
    let current = taints
        .iter()
        .find(|t| t.key == UNREACHABLE || t.key == NOT_READY)
        .map(|t| t.key.as_str());
    let wanted = wanted_taint(ready_status(node), stale, current, all_down);
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
        let mut node = node.clone();
        let name = node.name().to_owned();
        node.spec.get_or_insert_with(Default::default).taints = next.clone();
        let node = ctx.client.nodes().update(&node).await?;
        let (reason, message) = match wanted {
            Some(k) => ("NodeTainted", format!("Node {name} tainted {k}:NoExecute")),
            None if all_down => (
                "NodeUntainted",
                format!("Node {name}: every node is unhealthy; health taints removed"),
            ),
            None => (
                "NodeReady",
                format!("Node {name} is healthy again; taints removed"),
            ),
        };
        ctx.recorder.record(&node, NORMAL, reason, &message).await;
    }
    Ok(next)
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
    let matching = tolerations
        .iter()
        .find(|t| skiff::scheduling::tolerates(t, taint));
    match matching {
        Some(t) => t
            .toleration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64)),
        None if taint.key == UNREACHABLE || taint.key == NOT_READY => Some(default),
        None => Some(Duration::ZERO),
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
    fn zone_states_follow_the_share_of_unhealthy_nodes() {
        use ZoneState::*;
        // (nodes, unhealthy, state) at the default threshold of 0.55
        let table = [
            (10, 0, Normal),
            (1, 1, FullDisruption),
            (2, 1, Normal),
            (3, 2, Normal),
            (4, 3, PartialDisruption),
            (10, 5, Normal),
            (10, 6, PartialDisruption),
            (10, 10, FullDisruption),
            (0, 0, Normal),
        ];
        for (total, bad, want) in table {
            assert_eq!(zone_state(total, bad, 0.55), want, "{bad} of {total}");
        }
    }

    #[test]
    fn eviction_rates_by_zone_state() {
        let p = EvictionPacing::default();
        use ZoneState::*;
        assert_eq!(eviction_rate(Normal, 10, false, &p), 0.1);
        assert_eq!(eviction_rate(FullDisruption, 10, false, &p), 0.1);
        assert_eq!(eviction_rate(PartialDisruption, 10, false, &p), 0.0);
        assert_eq!(eviction_rate(PartialDisruption, 51, false, &p), 0.01);
        assert_eq!(eviction_rate(Normal, 10, true, &p), 0.0);
    }

    fn health(nodes: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
        nodes
            .iter()
            .map(|(n, z, bad)| (n.to_string(), z.to_string(), *bad))
            .collect()
    }

    #[test]
    fn one_dead_node_is_evicted_at_once_and_the_next_waits_its_turn() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(EvictionPacing::default());
        let h = health(&[
            ("a", "", true),
            ("b", "", true),
            ("c", "", false),
            ("d", "", false),
        ]);
        assert!(!pacer.observe(&h, t0));
        assert!(pacer.may_evict("a", "", t0), "the first node goes at once");
        assert!(!pacer.may_evict("b", "", t0), "0.1 nodes per second");
        assert!(pacer.may_evict("a", "", t0), "a node let in stays in");
        let later = t0 + Duration::from_secs(10);
        pacer.observe(&h, later);
        assert!(
            pacer.may_evict("b", "", later),
            "ten seconds later, the next"
        );
    }

    #[test]
    fn when_every_node_is_down_nothing_is_evicted_until_some_return() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(EvictionPacing::default());
        let all_down = health(&[("a", "z1", true), ("b", "z1", true), ("c", "z2", true)]);
        assert!(pacer.observe(&all_down, t0));
        let later = t0 + Duration::from_secs(600);
        pacer.observe(&all_down, later);
        for n in ["a", "b"] {
            assert!(
                !pacer.may_evict(n, "z1", later),
                "full disruption: {n} stays"
            );
        }
        // z2 comes back: z1 alone is fully disrupted and evicts at the
        // normal rate (its nodes, not the control plane, are at fault).
        let z2_back = health(&[("a", "z1", true), ("b", "z1", true), ("c", "z2", false)]);
        assert!(!pacer.observe(&z2_back, later));
        assert!(pacer.may_evict("a", "z1", later));
        assert!(!pacer.may_evict("b", "z1", later));
    }

    #[test]
    fn a_small_zone_mostly_down_stops_evicting_and_a_large_one_slows_down() {
        let t0 = Instant::now();
        let pacing = EvictionPacing {
            large_cluster_size_threshold: 5,
            ..Default::default()
        };
        let mut pacer = Pacer::new(pacing);
        // 3 of 4 down in a small zone: partial disruption, no evictions.
        let small = health(&[
            ("a", "", true),
            ("b", "", true),
            ("c", "", true),
            ("d", "", false),
        ]);
        pacer.observe(&small, t0);
        assert!(!pacer.may_evict("a", "", t0));
        // 6 of 8 down in a large zone: the secondary rate, one per 100 s.
        let mut nodes: Vec<(String, String, bool)> = (0..8)
            .map(|i| (format!("n{i}"), "big".into(), i < 6))
            .collect();
        nodes.push(("x".into(), "other".into(), false));
        let mut pacer = Pacer::new(pacing);
        pacer.observe(&nodes, t0);
        assert!(pacer.may_evict("n0", "big", t0), "the bucket starts full");
        let t1 = t0 + Duration::from_secs(50);
        pacer.observe(&nodes, t1);
        assert!(!pacer.may_evict("n1", "big", t1), "not within 100 s");
        let t2 = t0 + Duration::from_secs(101);
        pacer.observe(&nodes, t2);
        assert!(pacer.may_evict("n1", "big", t2));
    }

    #[test]
    fn health_taints_follow_the_node_unless_every_node_is_down() {
        // (ready, stale, current taint, all down) -> wanted
        let table = [
            ("True", false, None, false, None),
            ("True", false, Some(UNREACHABLE), false, None),
            ("False", false, None, false, Some(NOT_READY)),
            ("Unknown", true, None, false, Some(UNREACHABLE)),
            ("", true, None, false, Some(UNREACHABLE)),
            // Heartbeats resumed, status not posted yet: keep what it has.
            (
                "Unknown",
                false,
                Some(UNREACHABLE),
                false,
                Some(UNREACHABLE),
            ),
            // ... and after a full disruption (taints gone, grace renewed),
            // no taint until it is silent for a whole grace period again.
            ("Unknown", false, None, false, None),
            ("Unknown", true, Some(UNREACHABLE), true, None),
            ("False", false, Some(NOT_READY), true, None),
        ];
        for (ready, stale, current, all_down, want) in table {
            assert_eq!(
                wanted_taint(ready, stale, current, all_down),
                want,
                "{ready} stale={stale} current={current:?} all_down={all_down}"
            );
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
