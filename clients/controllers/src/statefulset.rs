//! The StatefulSet controller: pods `NAME-0 … NAME-(N-1)` with stable
//! names, hostnames (`subdomain` the governing service) and the
//! `statefulset.kubernetes.io/pod-name` label; one claim per template and
//! ordinal (`www-web-0`) that outlives pod restarts and scale-down (unless
//! `persistentVolumeClaimRetentionPolicy` says Delete).
//!
//! `OrderedReady` creates pods in order, each Running and Ready before
//! the next, and removes them in reverse order, one at a time; `Parallel`
//! does both at once. A changed template rolls out as `RollingUpdate`
//! from the highest ordinal down to `partition`, one pod at a time, or
//! waits for deletions (`OnDelete`). Revisions are template hashes
//! (`controller-revision-hash`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff::Resource;
use skiff::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
use skiff::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};

use crate::Context;
use crate::daemonset::REVISION_LABEL;
use crate::deployment::template_hash;
use crate::util::{
    BY_CONTROLLER, availability, index_by_controller, is_ready, owner_ref, owner_ref_of,
    pod_from_template, write_status,
};

/// Label with a stateful set pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with a stateful set pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct Sets {
    ctx: Context,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
}

/// Runs the StatefulSet controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let sets = ctx.factory.all::<StatefulSet>();
    let pods = ctx.factory.all::<Pod>();
    let claims = ctx.factory.all::<PersistentVolumeClaim>();
    index_by_controller(&pods);
    let controller = Controller::new(ControllerConfig {
        triggers: vec![Trigger::owned(&pods, &StatefulSet::INFO)],
        workers: ctx.config.workers,
        ..ControllerConfig::new(sets)
    });
    let this = Arc::new(Sets {
        ctx,
        pods: pods.store(),
        claims: claims.store(),
    });
    this.claims.wait_until_ready().await;
    controller
        .run(
            move |req| {
                let this = this.clone();
                async move { this.reconcile(req).await }
            },
            shutdown,
        )
        .await;
}

/// The ordinal of a set's pod from its name (`web-2` → 2).
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The claim of template `template` for the pod of `ordinal`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("")
}

fn running_and_ready(p: &Pod) -> bool {
    p.meta().deletion_timestamp.is_none() && phase(p) == "Running" && is_ready(p)
}

fn revision_of(p: &Pod) -> &str {
    p.meta()
        .labels
        .get(REVISION_LABEL)
        .map(String::as_str)
        .unwrap_or("")
}

impl Sets {
    async fn reconcile(&self, req: Request<StatefulSet>) -> Result<Action, Error> {
        let Some(set) = req.object else {
            return Ok(Action::Done);
        };
        if set.meta().deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let spec = set.spec.clone().unwrap_or_default();
        let Some(template) = spec.template.clone() else {
            return Ok(Action::Done);
        };
        let update_revision = format!("{}-{}", set.name(), template_hash(&template));
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let start = spec.ordinals.as_ref().map(|o| o.start).unwrap_or(0);
        let end = start + replicas;
        let parallel = spec.pod_management_policy == "Parallel";
        let mut pods: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        for p in self.pods.by_index(BY_CONTROLLER, &set.meta().uid) {
            if let Some(o) = ordinal_of(set.name(), p.name()) {
                pods.insert(o, p);
            }
        }
        let min_ready = Duration::from_secs(spec.min_ready_seconds.max(0) as u64);

        // 1. Pods that should exist, in order.
        let mut blocked = false;
        for ordinal in start..end {
            match pods.get(&ordinal) {
                None => {
                    self.ensure_claims(&set, &spec, ordinal).await?;
                    self.create_pod(&set, &template, &spec, ordinal, &update_revision)
                        .await?;
                    if !parallel {
                        blocked = true;
                        break;
                    }
                }
                Some(p)
                    if matches!(phase(p), "Failed" | "Succeeded")
                        && p.meta().deletion_timestamp.is_none() =>
                {
                    // A stateful pod that ended is replaced under the same name.
                    self.delete_pod(&set, p).await;
                    if !parallel {
                        blocked = true;
                        break;
                    }
                }
                Some(p) if !running_and_ready(p) && !parallel => {
                    blocked = true;
                    break;
                }
                Some(_) => {}
            }
        }

        // 2. Pods beyond the end go, highest first.
        let condemned: Vec<&Arc<Pod>> = pods
            .iter()
            .rev()
            .filter(|(o, _)| **o < start || **o >= end)
            .map(|(_, p)| p)
            .collect();
        if !blocked {
            for p in &condemned {
                if p.meta().deletion_timestamp.is_none() {
                    self.delete_pod(&set, p).await;
                }
                if !parallel {
                    break;
                }
            }
        }
        // Claims of ordinals scaled away, once their pod is gone.
        let when_scaled = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .map(|p| p.when_scaled.clone())
            .unwrap_or_default();
        if when_scaled == "Delete" {
            for t in &spec.volume_claim_templates {
                for c in self.claims.in_namespace(set.namespace()) {
                    let ours = c
                        .name()
                        .strip_prefix(&format!("{}-", t.meta().name))
                        .and_then(|rest| ordinal_of(set.name(), rest));
                    if let Some(o) = ours
                        && (o < start || o >= end)
                        && !pods.contains_key(&o)
                        && c.meta().deletion_timestamp.is_none()
                    {
                        self.delete_claim(&set, &c).await;
                    }
                }
            }
        }

        // 3. The rolling update: highest ordinal first, down to the partition.
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let all_ready = (start..end).all(|o| pods.get(&o).is_some_and(|p| running_and_ready(p)));
        if strategy.r#type != "OnDelete" && !blocked && condemned.is_empty() && all_ready {
            let partition = strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.partition)
                .unwrap_or(0);
            let stale = (start.max(start + partition)..end)
                .rev()
                .filter_map(|o| pods.get(&o))
                .find(|p| revision_of(p) != update_revision);
            if let Some(p) = stale {
                self.delete_pod(&set, p).await;
            }
        }

        // 4. Status.
        let live: Vec<&Arc<Pod>> = pods
            .values()
            .filter(|p| p.meta().deletion_timestamp.is_none())
            .collect();
        let old = set.status.clone().unwrap_or_default();
        let updated = live
            .iter()
            .filter(|p| revision_of(p) == update_revision)
            .count() as i32;
        let mut current_revision = if old.current_revision.is_empty() {
            update_revision.clone()
        } else {
            old.current_revision.clone()
        };
        if updated == replicas && live.len() as i32 == replicas {
            current_revision = update_revision.clone();
        }
        let now = self.ctx.config.clock.now();
        let mut wait: Option<Duration> = None;
        let mut available = 0;
        for p in &live {
            let (ok, w) = availability(p, min_ready, now);
            if ok {
                available += 1;
            }
            if let Some(w) = w {
                wait = Some(wait.map_or(w, |c: Duration| c.min(w)));
            }
        }
        let status = StatefulSetStatus {
            observed_generation: set.meta().generation,
            replicas: live.len() as i32,
            ready_replicas: live.iter().filter(|p| is_ready(p)).count() as i32,
            current_replicas: live
                .iter()
                .filter(|p| revision_of(p) == current_revision)
                .count() as i32,
            updated_replicas: updated,
            current_revision,
            update_revision,
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
            available_replicas: available,
        };
        if set.status.as_ref() != Some(&status) {
            let mut s = (*set).clone();
            s.status = Some(status);
            write_status(&self.ctx.client, &s).await?;
        }
        Ok(wait.map_or(Action::Done, |w| {
            Action::RequeueAfter(w + Duration::from_millis(50))
        }))
    }

    /// Creates the claims of one ordinal that do not exist yet.
    async fn ensure_claims(
        &self,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        ordinal: i32,
    ) -> Result<(), Error> {
        let when_deleted = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .map(|p| p.when_deleted.clone())
            .unwrap_or_default();
        let api = self
            .ctx
            .client
            .api::<PersistentVolumeClaim>(set.namespace());
        let selector_labels = spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default();
        for t in &spec.volume_claim_templates {
            let name = claim_name(&t.meta().name, set.name(), ordinal);
            if self
                .claims
                .get(&ObjectKey::new(set.namespace(), &name))
                .is_some()
            {
                continue;
            }
            let tm = t.metadata.clone().unwrap_or_default();
            let mut labels = tm.labels;
            labels.extend(selector_labels.clone());
            let mut owners = Vec::new();
            if when_deleted == "Delete" {
                let mut r = owner_ref_of(&StatefulSet::INFO, set.meta());
                r.controller = Some(false);
                owners.push(r);
            }
            let claim = PersistentVolumeClaim {
                metadata: Some(ObjectMeta {
                    name: name.clone(),
                    namespace: set.namespace().to_owned(),
                    labels,
                    annotations: tm.annotations,
                    owner_references: owners,
                    ..Default::default()
                }),
                spec: t.spec.clone(),
                status: None,
            };
            match api.create(&claim).await {
                Ok(_) => {
                    let message = format!(
                        "create Claim {name} Pod {}-{ordinal} in StatefulSet {} success",
                        set.name(),
                        set.name()
                    );
                    self.record(set, NORMAL, "SuccessfulCreate", &message).await;
                }
                Err(Error::AlreadyExists(_)) => {}
                Err(e) => {
                    let message = format!(
                        "create Claim {name} for Pod {}-{ordinal} in StatefulSet {} failed error: {e}",
                        set.name(),
                        set.name()
                    );
                    self.record(set, WARNING, "FailedCreate", &message).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn create_pod(
        &self,
        set: &StatefulSet,
        template: &skiff::api::core::v1::PodTemplateSpec,
        spec: &StatefulSetSpec,
        ordinal: i32,
        revision: &str,
    ) -> Result<(), Error> {
        let name = format!("{}-{ordinal}", set.name());
        let mut pod = pod_from_template(template, set.namespace(), set.name(), owner_ref(set));
        let m = pod.meta_mut();
        m.generate_name.clear();
        m.name = name.clone();
        m.labels.insert(POD_NAME_LABEL.into(), name.clone());
        m.labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        m.labels.insert(REVISION_LABEL.into(), revision.to_owned());
        if let Some(ps) = pod.spec.as_mut() {
            ps.hostname = name.clone();
            ps.subdomain = spec.service_name.clone();
            for t in &spec.volume_claim_templates {
                let volume = Volume {
                    name: t.meta().name.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim_name(&t.meta().name, set.name(), ordinal),
                        read_only: false,
                    }),
                    ..Default::default()
                };
                ps.volumes.retain(|v| v.name != volume.name);
                ps.volumes.push(volume);
            }
        }
        match self.ctx.client.pods(set.namespace()).create(&pod).await {
            Ok(_) => {
                let message = format!("create Pod {name} in StatefulSet {} successful", set.name());
                self.record(set, NORMAL, "SuccessfulCreate", &message).await;
                Ok(())
            }
            // The old pod of that name is still going away.
            Err(Error::AlreadyExists(_)) => Ok(()),
            Err(e) => {
                let message = format!(
                    "create Pod {name} in StatefulSet {} failed error: {e}",
                    set.name()
                );
                self.record(set, WARNING, "FailedCreate", &message).await;
                Err(e)
            }
        }
    }

    async fn delete_pod(&self, set: &StatefulSet, p: &Pod) {
        match self
            .ctx
            .client
            .pods(set.namespace())
            .delete(p.name(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                let message = format!(
                    "delete Pod {} in StatefulSet {} successful",
                    p.name(),
                    set.name()
                );
                self.record(set, NORMAL, "SuccessfulDelete", &message).await;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                let message = format!(
                    "delete Pod {} in StatefulSet {} failed error: {e}",
                    p.name(),
                    set.name()
                );
                self.record(set, WARNING, "FailedDelete", &message).await;
            }
        }
    }

    async fn delete_claim(&self, set: &StatefulSet, c: &PersistentVolumeClaim) {
        match self
            .ctx
            .client
            .api::<PersistentVolumeClaim>(set.namespace())
            .delete(c.name(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                let message = format!(
                    "delete Claim {} in StatefulSet {} successful",
                    c.name(),
                    set.name()
                );
                self.record(set, NORMAL, "SuccessfulDelete", &message).await;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(claim = c.name(), error = %e, "deleting a claim failed"),
        }
    }

    async fn record(&self, set: &StatefulSet, kind: &str, reason: &str, message: &str) {
        self.ctx.recorder.record(set, kind, reason, message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_pod_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(claim_name("www", "web", 0), "www-web-0");
    }
}
