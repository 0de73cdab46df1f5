//! The DaemonSet controller: one pod on every eligible node — the
//! template's node selector and required affinity match, and the node's
//! taints are tolerated (daemon pods tolerate what Kubernetes adds: not
//! ready, unreachable, unschedulable, pressure). A node that joins gets a
//! pod, a node that leaves or stops being eligible loses it (a NoSchedule
//! taint only stops new pods, as in Kubernetes); failed daemon pods are
//! replaced. Pods are placed by the scheduler through a required node
//! affinity on the node's name.
//!
//! A changed template rolls out as `RollingUpdate` (at most
//! `maxUnavailable` nodes without an available pod, or `maxSurge` nodes
//! running old and new side by side) or waits for the user to delete old
//! pods (`OnDelete`). Pods carry `controller-revision-hash`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff::Resource;
use skiff::api::apps::v1::{DaemonSet, DaemonSetStatus};
use skiff::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};

use crate::Context;
use crate::deployment::template_hash;
use crate::expectations::{Expectations, observe_pods};
use crate::util::{
    BY_CONTROLLER, availability, index_by_controller, int_or_percent, is_ready, owner_ref,
    pod_from_template, write_status,
};

/// Label with the hash of the template a daemon (or stateful set) pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

struct Daemons {
    ctx: Context,
    pods: Store<Pod>,
    nodes: Store<Node>,
    expectations: Arc<Expectations>,
}

/// Runs the DaemonSet controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let sets = ctx.factory.all::<DaemonSet>();
    let pods = ctx.factory.all::<Pod>();
    let nodes = ctx.factory.all::<Node>();
    index_by_controller(&pods);
    let expectations = Arc::new(Expectations::new());
    let owners = sets.store();
    let observer = tokio::spawn(observe_pods(
        pods.clone(),
        expectations.clone(),
        "DaemonSet",
        move || owners.list().iter().map(|d| ObjectKey::of(&**d)).collect(),
    ));
    // Any node change may change where every daemon set should run.
    let all_sets = sets.store();
    let node_changes = Trigger::mapped(&nodes, move |_: &Node| all_sets.keys());
    let controller = Controller::new(ControllerConfig {
        triggers: vec![Trigger::owned(&pods, &DaemonSet::INFO), node_changes],
        workers: ctx.config.workers,
        ..ControllerConfig::new(sets)
    });
    let this = Arc::new(Daemons {
        ctx,
        pods: pods.store(),
        nodes: nodes.store(),
        expectations,
    });
    controller
        .run(
            move |req| {
                let this = this.clone();
                async move { this.reconcile(req).await }
            },
            shutdown,
        )
        .await;
    observer.abort();
}

/// The tolerations Kubernetes adds to every daemon pod.
pub fn daemon_tolerations(spec: &mut PodSpec) {
    let mut add = |key: &str, effect: &str| {
        let present = spec
            .tolerations
            .iter()
            .any(|t| t.key == key && t.effect == effect && t.operator == "Exists");
        if !present {
            spec.tolerations.push(Toleration {
                key: key.into(),
                operator: "Exists".into(),
                effect: effect.into(),
                ..Default::default()
            });
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec.host_network {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
}

/// Whether a daemon pod should be started on `node`, and whether one
/// already there may keep running.
fn placement(spec: &PodSpec, node: &Node) -> (bool, bool) {
    if node.meta().deletion_timestamp.is_some() {
        return (false, false);
    }
    if !skiff::scheduling::affinity_matches(spec, node) {
        return (false, false);
    }
    let evicting =
        !skiff::scheduling::untolerated(&spec.tolerations, node, &["NoExecute"]).is_empty();
    let blocked =
        !skiff::scheduling::untolerated(&spec.tolerations, node, &["NoSchedule"]).is_empty();
    (!evicting && !blocked, !evicting)
}

/// The node a daemon pod is for: its node name, or the node its
/// required affinity names.
pub fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if !spec.node_name.is_empty() {
        return Some(spec.node_name.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| &t.match_fields)
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.first().cloned())
}

/// Pins a pod spec to one node through required node affinity on its name.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let field = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: vec![node.to_owned()],
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields.retain(|r| r.key != "metadata.name");
        term.match_fields.push(field.clone());
    }
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("")
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.meta().labels.get(REVISION_LABEL).map(String::as_str)
}

fn created_at(p: &Pod) -> (i64, i32) {
    let t = p.meta().creation_timestamp.unwrap_or_default();
    (t.seconds, t.nanos)
}

/// What one node has of a daemon set.
#[derive(Default)]
struct NodePods {
    /// Pods not being deleted and not finished, oldest first.
    live: Vec<Arc<Pod>>,
    /// Failed pods not yet deleted.
    failed: Vec<Arc<Pod>>,
}

impl Daemons {
    async fn reconcile(&self, req: Request<DaemonSet>) -> Result<Action, Error> {
        let Some(ds) = req.object else {
            self.expectations.forget(&req.key);
            return Ok(Action::Done);
        };
        let spec = ds.spec.clone().unwrap_or_default();
        let Some(template) = spec.template.clone() else {
            return Ok(Action::Done);
        };
        let hash = template_hash(&template);
        let mut pod_spec = template.spec.clone().unwrap_or_default();
        daemon_tolerations(&mut pod_spec);
        let now = self.ctx.config.clock.now();
        let min_ready = Duration::from_secs(spec.min_ready_seconds.max(0) as u64);

        let mut by_node: BTreeMap<String, NodePods> = BTreeMap::new();
        for p in self.pods.by_index(BY_CONTROLLER, &ds.meta().uid) {
            let Some(node) = target_node(&p) else {
                continue;
            };
            let entry = by_node.entry(node).or_default();
            if p.meta().deletion_timestamp.is_some() {
                continue;
            }
            match phase(&p) {
                "Failed" => entry.failed.push(p),
                "Succeeded" => entry.failed.push(p),
                _ => entry.live.push(p),
            }
        }
        for entry in by_node.values_mut() {
            entry.live.sort_by_key(|p| created_at(p));
        }
        let nodes: BTreeMap<String, Arc<Node>> = self
            .nodes
            .list()
            .into_iter()
            .map(|n| (n.name().to_owned(), n))
            .collect();

        let mut create: Vec<String> = Vec::new();
        let mut delete: Vec<Arc<Pod>> = Vec::new();
        let mut eligible: Vec<String> = Vec::new();
        let mut misscheduled = 0;
        for (name, node) in &nodes {
            let (should_run, may_continue) = placement(&pod_spec, node);
            let pods = by_node.get(name);
            let live = pods.map(|p| p.live.as_slice()).unwrap_or(&[]);
            for failed in pods.map(|p| p.failed.as_slice()).unwrap_or(&[]) {
                let message = format!(
                    "Found failed daemon pod {}/{} on node {name}, will try to kill it",
                    failed.namespace(),
                    failed.name()
                );
                self.record(&ds, WARNING, "FailedDaemonPod", &message).await;
                delete.push(failed.clone());
            }
            if should_run {
                eligible.push(name.clone());
                if live.is_empty() {
                    create.push(name.clone());
                }
            } else if !may_continue {
                delete.extend(live.iter().cloned());
            } else if !live.is_empty() {
                misscheduled += 1;
            }
        }
        // Pods of nodes that are gone: no kubelet will finish their
        // deletion, so they go at once (as Kubernetes' pod GC does).
        let mut gone: Vec<Arc<Pod>> = Vec::new();
        for (name, pods) in &by_node {
            if !nodes.contains_key(name) {
                gone.extend(pods.live.iter().chain(&pods.failed).cloned());
            }
        }

        // The rollout: which old pods go, which nodes get a surge pod.
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let desired = eligible.len() as i32;
        let available = |p: &Pod| availability(p, min_ready, now).0;
        let mut wait: Option<Duration> = None;
        for name in &eligible {
            for p in by_node.get(name).map(|n| n.live.as_slice()).unwrap_or(&[]) {
                if let (false, Some(w)) = availability(p, min_ready, now) {
                    wait = Some(wait.map_or(w, |c: Duration| c.min(w)));
                }
            }
        }
        if strategy.r#type != "OnDelete" {
            let ru = strategy.rolling_update.clone().unwrap_or_default();
            let max_surge = int_or_percent(&ru.max_surge, desired, true, "0");
            let max_unavailable = int_or_percent(&ru.max_unavailable, desired, true, "1");
            let mut unavailable = 0;
            let mut old_unavailable = Vec::new();
            let mut old_available = Vec::new();
            let mut surging = 0;
            let mut want_surge = Vec::new();
            for name in &eligible {
                let live = by_node.get(name).map(|n| n.live.as_slice()).unwrap_or(&[]);
                let new = live.iter().find(|p| hash_of(p) == Some(&hash));
                let old: Vec<&Arc<Pod>> =
                    live.iter().filter(|p| hash_of(p) != Some(&hash)).collect();
                if !live.iter().any(|p| available(p)) {
                    unavailable += 1;
                }
                if old.is_empty() {
                    // Extra new pods (two on one node) go, the oldest stays.
                    delete.extend(live.iter().skip(1).cloned());
                    continue;
                }
                match new {
                    Some(n) if available(n) => delete.extend(old.into_iter().cloned()),
                    Some(_) => surging += 1,
                    None => {
                        for o in old {
                            if available(o) {
                                old_available.push(o.clone());
                            } else {
                                old_unavailable.push(o.clone());
                            }
                        }
                        want_surge.push(name.clone());
                    }
                }
            }
            if max_surge > 0 {
                let room = (max_surge - surging).max(0) as usize;
                create.extend(want_surge.into_iter().take(room));
                // Old pods that are not available anyway need no new one first.
                delete.extend(old_unavailable);
            } else {
                // Unavailable old pods go first: they cost no availability.
                delete.extend(old_unavailable);
                let budget = (max_unavailable - unavailable).max(0) as usize;
                delete.extend(old_available.into_iter().take(budget));
            }
        }

        let mut failed = None;
        if self.expectations.satisfied(&req.key) && ds.meta().deletion_timestamp.is_none() {
            self.delete_pods(&ds, &delete, &req.key, None).await;
            self.delete_pods(&ds, &gone, &req.key, Some(0)).await;
            failed = self
                .create_pods(&ds, &template, &pod_spec, &hash, &create, &req.key)
                .await;
        }
        self.update_status(
            &ds,
            &eligible,
            &by_node,
            &hash,
            misscheduled,
            min_ready,
            now,
        )
        .await?;
        // A failed creation is tried again with the queue's back-off.
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(wait.map_or(Action::Done, |w| {
            Action::RequeueAfter(w + Duration::from_millis(50))
        }))
    }

    /// Creates a pod on each of `nodes`; the first failure, if any.
    async fn create_pods(
        &self,
        ds: &DaemonSet,
        template: &skiff::api::core::v1::PodTemplateSpec,
        pod_spec: &PodSpec,
        hash: &str,
        nodes: &[String],
        key: &ObjectKey,
    ) -> Option<Error> {
        if nodes.is_empty() {
            return None;
        }
        let api = self.ctx.client.pods(ds.namespace());
        self.expectations.expect(key, nodes.len() as i64, 0);
        let pods: Vec<Pod> = nodes
            .iter()
            .map(|node| {
                let mut pod = pod_from_template(template, ds.namespace(), ds.name(), owner_ref(ds));
                pod.meta_mut()
                    .labels
                    .insert(REVISION_LABEL.into(), hash.to_owned());
                let mut spec = pod_spec.clone();
                pin_to_node(&mut spec, node);
                pod.spec = Some(spec);
                pod
            })
            .collect();
        let results = futures::future::join_all(pods.iter().map(|p| api.create(p))).await;
        let mut first_error = None;
        for (r, node) in results.into_iter().zip(nodes) {
            match r {
                Ok(p) => {
                    let message = format!("Created pod: {}", p.name());
                    self.record(ds, NORMAL, "SuccessfulCreate", &message).await;
                }
                Err(e) => {
                    self.expectations.observed(key, 1, 0);
                    let message = format!("Error creating pod for node {node}: {e}");
                    self.record(ds, WARNING, "FailedCreate", &message).await;
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error
    }

    async fn delete_pods(
        &self,
        ds: &DaemonSet,
        victims: &[Arc<Pod>],
        key: &ObjectKey,
        grace_period_seconds: Option<i64>,
    ) {
        if victims.is_empty() {
            return;
        }
        let api = self.ctx.client.pods(ds.namespace());
        self.expectations.expect(key, 0, victims.len() as i64);
        let params = DeleteParams {
            grace_period_seconds,
            ..Default::default()
        };
        for v in victims {
            match api.delete(v.name(), &params).await {
                Ok(_) => {
                    let message = format!("Deleted pod: {}", v.name());
                    self.record(ds, NORMAL, "SuccessfulDelete", &message).await;
                }
                Err(e) => {
                    self.expectations.observed(key, 0, 1);
                    if !e.is_not_found() {
                        let message = format!("Error deleting pod {}: {e}", v.name());
                        self.record(ds, WARNING, "FailedDelete", &message).await;
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_status(
        &self,
        ds: &DaemonSet,
        eligible: &[String],
        by_node: &BTreeMap<String, NodePods>,
        hash: &str,
        misscheduled: i32,
        min_ready: Duration,
        now: SystemTime,
    ) -> Result<(), Error> {
        let mut status = DaemonSetStatus {
            desired_number_scheduled: eligible.len() as i32,
            number_misscheduled: misscheduled,
            observed_generation: ds.meta().generation,
            conditions: ds
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
            collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
            ..Default::default()
        };
        for name in eligible {
            let live = by_node.get(name).map(|n| n.live.as_slice()).unwrap_or(&[]);
            if live.is_empty() {
                continue;
            }
            status.current_number_scheduled += 1;
            if live.iter().any(|p| is_ready(p)) {
                status.number_ready += 1;
            }
            if live.iter().any(|p| hash_of(p) == Some(hash)) {
                status.updated_number_scheduled += 1;
            }
            if live.iter().any(|p| availability(p, min_ready, now).0) {
                status.number_available += 1;
            }
        }
        status.number_unavailable = status.desired_number_scheduled - status.number_available;
        if ds.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = ds.clone();
        updated.status = Some(status);
        write_status(&self.ctx.client, &updated).await
    }

    async fn record(&self, ds: &DaemonSet, kind: &str, reason: &str, message: &str) {
        self.ctx.recorder.record(ds, kind, reason, message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::api::core::v1::{NodeSpec, Taint};
    use skiff::api::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            spec: Some(NodeSpec {
                taints: taints
                    .iter()
                    .map(|(k, e)| Taint {
                        key: k.to_string(),
                        effect: e.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn daemon_pods_run_where_selected_and_tolerated_and_keep_running_past_no_schedule() {
        let mut spec = PodSpec {
            node_selector: [("disk".to_owned(), "ssd".to_owned())].into(),
            ..Default::default()
        };
        daemon_tolerations(&mut spec);
        let ssd = [("disk", "ssd")];
        assert_eq!(placement(&spec, &node("a", &ssd, &[])), (true, true));
        assert_eq!(placement(&spec, &node("b", &[], &[])), (false, false));
        assert_eq!(
            placement(&spec, &node("c", &ssd, &[("dedicated", "NoSchedule")])),
            (false, true),
            "NoSchedule stops new pods only"
        );
        assert_eq!(
            placement(&spec, &node("d", &ssd, &[("dedicated", "NoExecute")])),
            (false, false)
        );
        assert_eq!(
            placement(
                &spec,
                &node(
                    "e",
                    &ssd,
                    &[("node.kubernetes.io/unschedulable", "NoSchedule")]
                )
            ),
            (true, true),
            "daemon pods tolerate cordoned nodes"
        );
        assert_eq!(
            placement(
                &spec,
                &node(
                    "f",
                    &ssd,
                    &[("node.kubernetes.io/unreachable", "NoExecute")]
                )
            ),
            (true, true)
        );
    }

    #[test]
    fn a_pinned_pod_names_its_node() {
        let mut spec = PodSpec::default();
        pin_to_node(&mut spec, "n1");
        pin_to_node(&mut spec, "n2");
        let pod = Pod {
            metadata: None,
            spec: Some(spec),
            status: None,
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n2"));
    }
}
