//! The Deployment controller: one ReplicaSet per pod-template hash; a
//! rolling update moves replicas from old sets to the new one within
//! `maxSurge` and `maxUnavailable`; `Recreate` scales old sets to zero and
//! waits for their pods to go before starting new ones; a paused deployment
//! does not roll; old sets beyond `revisionHistoryLimit` are deleted; status
//! and the Progressing / Available conditions follow the sets.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;
use skiff::Resource;
use skiff::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet, ReplicaSetSpec};
use skiff::api::core::v1::Pod;
use skiff::api::meta::v1::{LabelSelector as LabelSelectorProto, ObjectMeta};
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::events::NORMAL;
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};
use skiff::selector::LabelSelector;

use crate::Context;
use crate::replicaset::BY_CONTROLLER;
use crate::util::{controller_ref, int_or_percent, now, owner_ref};

/// Label carrying the pod-template hash on replica sets and their pods.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotation carrying a replica set's (and deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

struct Dc {
    ctx: Context,
    rss: Store<ReplicaSet>,
    pods: Store<Pod>,
}

/// Runs the Deployment controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let deployments = ctx.factory.all::<Deployment>();
    let rss = ctx.factory.all::<ReplicaSet>();
    let pods = ctx.factory.all::<Pod>();
    rss.store().add_index(BY_CONTROLLER, |r: &ReplicaSet| {
        controller_ref(r.meta())
            .map(|c| vec![c.uid.clone()])
            .unwrap_or_default()
    });
    pods.store().add_index(BY_CONTROLLER, |p: &Pod| {
        controller_ref(p.meta())
            .map(|r| vec![r.uid.clone()])
            .unwrap_or_default()
    });
    let controller = Controller::new(ControllerConfig {
        triggers: vec![Trigger::owned(&rss, &Deployment::INFO)],
        workers: ctx.config.workers,
        ..ControllerConfig::new(deployments)
    });
    let dc = Arc::new(Dc {
        ctx,
        rss: rss.store(),
        pods: pods.store(),
    });
    controller
        .run(
            move |req| {
                let dc = dc.clone();
                async move { dc.reconcile(req).await }
            },
            shutdown,
        )
        .await;
}

/// A short, stable hash of a pod template (Kubernetes' alphabet avoids words).
pub fn template_hash(t: &skiff::api::core::v1::PodTemplateSpec) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in t.encode_to_vec() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (0..10)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.meta()
        .annotations
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status
        .as_ref()
        .map(|s| (s.replicas, s.ready_replicas, s.available_replicas))
        .unwrap_or_default()
}

fn set_condition(
    conds: &mut Vec<DeploymentCondition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let t = now();
    match conds.iter_mut().find(|c| c.r#type == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(t);
            }
            if c.status != status || c.reason != reason {
                c.last_update_time = Some(t);
            }
            c.status = status.to_owned();
            c.reason = reason.to_owned();
            c.message = message.to_owned();
        }
        None => conds.push(DeploymentCondition {
            r#type: kind.to_owned(),
            status: status.to_owned(),
            last_update_time: Some(t),
            last_transition_time: Some(t),
            reason: reason.to_owned(),
            message: message.to_owned(),
        }),
    }
}

impl Dc {
    async fn scale(&self, rs: &ReplicaSet, replicas: i32, d: &Deployment) -> Result<(), Error> {
        if replicas_of(rs) == replicas {
            return Ok(());
        }
        let direction = if replicas > replicas_of(rs) {
            "up"
        } else {
            "down"
        };
        self.ctx
            .client
            .replica_sets(rs.namespace())
            .scale(rs.name(), replicas)
            .await?;
        let message = format!("Scaled {direction} replica set {} to {replicas}", rs.name());
        self.ctx
            .recorder
            .record(d, NORMAL, "ScalingReplicaSet", &message)
            .await;
        Ok(())
    }

    async fn reconcile(&self, req: Request<Deployment>) -> Result<Action, Error> {
        let Some(d) = req.object else {
            return Ok(Action::Done);
        };
        if d.meta().deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let Some(spec) = d.spec.clone() else {
            return Ok(Action::Done);
        };
        let Some(template) = spec.template.clone() else {
            return Ok(Action::Done);
        };
        let Some(selector_proto) = spec.selector.clone() else {
            return Ok(Action::Done);
        };
        let Ok(selector) = LabelSelector::from_proto(&selector_proto) else {
            return Ok(Action::Done);
        };
        let ns = d.namespace().to_owned();
        let rs_api = self.ctx.client.replica_sets(&ns);
        let replicas = spec.replicas.unwrap_or(1).max(0);

        // Replica sets this deployment owns (adopting orphans that match).
        let mut owned: Vec<ReplicaSet> = Vec::new();
        for rs in self.rss.in_namespace(&ns) {
            let labels = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .map(|m| m.labels.clone())
                .unwrap_or_default();
            match controller_ref(rs.meta()) {
                Some(r) if r.uid == d.meta().uid => owned.push((*rs).clone()),
                None if selector.matches(&labels) && rs.meta().deletion_timestamp.is_none() => {
                    let mut adopted = (*rs).clone();
                    adopted.meta_mut().owner_references.push(owner_ref(&*d));
                    match rs_api.update(&adopted).await {
                        Ok(r) => owned.push(r),
                        Err(Error::NotFound(_) | Error::Conflict(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
        }
        owned.sort_by_key(|r| r.meta().creation_timestamp.map(|t| (t.seconds, t.nanos)));
        let hash = template_hash(&template);
        let max_revision = owned.iter().map(revision).max().unwrap_or(0);
        let mut new_rs = owned
            .iter()
            .find(|r| r.meta().labels.get(HASH_LABEL) == Some(&hash))
            .cloned();
        let olds: Vec<ReplicaSet> = owned
            .iter()
            .filter(|r| r.meta().labels.get(HASH_LABEL) != Some(&hash))
            .cloned()
            .collect();

        let strategy = spec.strategy.clone().unwrap_or_default();
        let recreate = strategy.r#type == "Recreate";
        let rolling = strategy.rolling_update.clone().unwrap_or_default();
        let mut surge = int_or_percent(&rolling.max_surge, replicas, true, "25%");
        let mut unavailable = int_or_percent(&rolling.max_unavailable, replicas, false, "25%");
        if recreate {
            surge = 0;
            unavailable = replicas;
        } else if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }

        if !spec.paused {
            // The new replica set, created at size zero (or, for Recreate, once the old pods are gone).
            if new_rs.is_none() {
                let old_pods_left = olds.iter().any(|r| {
                    replicas_of(r) > 0
                        || !self.pods.by_index(BY_CONTROLLER, &r.meta().uid).is_empty()
                });
                if recreate && old_pods_left {
                    for old in &olds {
                        self.scale(old, 0, &d).await?;
                    }
                    return self
                        .sync_status(&d, &owned, replicas, unavailable)
                        .await
                        .map(|_| Action::RequeueAfter(Duration::from_secs(1)));
                }
                new_rs = Some(
                    self.create_new_rs(
                        &d,
                        &template,
                        &selector_proto,
                        &hash,
                        max_revision + 1,
                        &olds,
                        replicas,
                        surge,
                    )
                    .await?,
                );
            } else if let Some(rs) = new_rs.as_ref()
                && revision(rs) < max_revision
            {
                // Rolled back to an older template: it becomes the newest revision.
                let mut r = rs.clone();
                r.meta_mut()
                    .annotations
                    .insert(REVISION.into(), (max_revision + 1).to_string());
                new_rs = Some(rs_api.update(&r).await?);
            }
            let new = new_rs.clone().expect("the new replica set exists");
            if recreate {
                let old_pods_left = olds.iter().any(|r| {
                    replicas_of(r) > 0
                        || !self.pods.by_index(BY_CONTROLLER, &r.meta().uid).is_empty()
                });
                if old_pods_left {
                    for old in &olds {
                        self.scale(old, 0, &d).await?;
                    }
                } else {
                    self.scale(&new, replicas, &d).await?;
                }
            } else {
                self.roll(&d, &new, &olds, replicas, surge, unavailable)
                    .await?;
            }
        } else if olds.is_empty()
            && let Some(new) = new_rs.as_ref()
        {
            // Scaling still applies while paused.
            self.scale(new, replicas, &d).await?;
        }
        self.cleanup(&d, &olds, spec.revision_history_limit.unwrap_or(10))
            .await?;
        let fresh: Vec<ReplicaSet> = owned
            .iter()
            .filter_map(|r| self.rss.get(&ObjectKey::of(r)).map(|x| (*x).clone()))
            .chain(
                new_rs
                    .iter()
                    .filter(|n| !owned.iter().any(|o| o.meta().uid == n.meta().uid))
                    .cloned(),
            )
            .collect();
        self.sync_status(&d, &fresh, replicas, unavailable).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_new_rs(
        &self,
        d: &Deployment,
        template: &skiff::api::core::v1::PodTemplateSpec,
        selector: &LabelSelectorProto,
        hash: &str,
        revision: i64,
        olds: &[ReplicaSet],
        replicas: i32,
        surge: i32,
    ) -> Result<ReplicaSet, Error> {
        let mut template = template.clone();
        let tm = template.metadata.get_or_insert_with(Default::default);
        tm.labels.insert(HASH_LABEL.into(), hash.to_owned());
        let mut selector = selector.clone();
        selector
            .match_labels
            .insert(HASH_LABEL.into(), hash.to_owned());
        // Start as large as the surge allows (all at once when nothing runs yet).
        let current: i32 = olds.iter().map(replicas_of).sum();
        let initial = if olds.is_empty() {
            replicas
        } else {
            (replicas + surge - current).clamp(0, replicas)
        };
        let mut labels = tm.labels.clone();
        labels.insert(HASH_LABEL.into(), hash.to_owned());
        let rs = ReplicaSet {
            metadata: Some(ObjectMeta {
                name: format!("{}-{hash}", d.name()),
                namespace: d.namespace().to_owned(),
                labels,
                annotations: [(REVISION.to_string(), revision.to_string())].into(),
                owner_references: vec![owner_ref(d)],
                ..Default::default()
            }),
            spec: Some(ReplicaSetSpec {
                replicas: Some(initial),
                min_ready_seconds: d.spec.as_ref().map(|s| s.min_ready_seconds).unwrap_or(0),
                selector: Some(selector),
                template: Some(template),
            }),
            status: None,
        };
        let api = self.ctx.client.replica_sets(d.namespace());
        let created = match api.create(&rs).await {
            Ok(r) => r,
            // Created by an earlier reconcile the cache has not shown yet.
            Err(Error::AlreadyExists(_)) => api.get(rs.name()).await?,
            Err(e) => return Err(e),
        };
        let message = format!("Scaled up replica set {} to {initial}", created.name());
        self.ctx
            .recorder
            .record(d, NORMAL, "ScalingReplicaSet", &message)
            .await;
        Ok(created)
    }

    /// One step of a rolling update.
    async fn roll(
        &self,
        d: &Deployment,
        new: &ReplicaSet,
        olds: &[ReplicaSet],
        replicas: i32,
        surge: i32,
        unavailable: i32,
    ) -> Result<(), Error> {
        let total: i32 = replicas_of(new) + olds.iter().map(replicas_of).sum::<i32>();
        // Scale the new set up within the surge.
        let mut new_replicas = replicas_of(new);
        if new_replicas < replicas {
            let room = (replicas + surge - total).max(0);
            new_replicas += room.min(replicas - new_replicas);
        } else if new_replicas > replicas {
            new_replicas = replicas;
        }
        self.scale(new, new_replicas, d).await?;
        // Scale old sets down as far as availability allows.
        let live_olds: Vec<&ReplicaSet> = olds.iter().filter(|r| replicas_of(r) > 0).collect();
        if live_olds.is_empty() {
            return Ok(());
        }
        let all_pods = new_replicas + live_olds.iter().map(|r| replicas_of(r)).sum::<i32>();
        let min_available = replicas - unavailable;
        let new_unavailable = (new_replicas - status_of(new).2).max(0);
        let mut budget = all_pods - min_available - new_unavailable;
        if budget <= 0 {
            return Ok(());
        }
        let mut target: Vec<(ReplicaSet, i32)> = live_olds
            .iter()
            .map(|r| ((*r).clone(), replicas_of(r)))
            .collect();
        // First the old pods that are not available anyway.
        for (rs, want) in target.iter_mut() {
            if budget == 0 {
                break;
            }
            let unhealthy = (*want - status_of(rs).2).max(0);
            let cut = unhealthy.min(budget);
            *want -= cut;
            budget -= cut;
        }
        // Then available ones, oldest first, keeping the minimum available.
        let available: i32 =
            status_of(new).2 + target.iter().map(|(r, _)| status_of(r).2).sum::<i32>();
        let mut down = (available - min_available).max(0);
        for (_, want) in target.iter_mut() {
            if down == 0 {
                break;
            }
            let cut = (*want).min(down);
            *want -= cut;
            down -= cut;
        }
        for (rs, want) in target {
            self.scale(&rs, want, d).await?;
        }
        Ok(())
    }

    async fn cleanup(&self, d: &Deployment, olds: &[ReplicaSet], limit: i32) -> Result<(), Error> {
        let mut idle: Vec<&ReplicaSet> = olds
            .iter()
            .filter(|r| {
                replicas_of(r) == 0 && status_of(r).0 == 0 && r.meta().deletion_timestamp.is_none()
            })
            .collect();
        if idle.len() as i32 <= limit.max(0) {
            return Ok(());
        }
        idle.sort_by_key(|r| revision(r));
        let extra = idle.len() - limit.max(0) as usize;
        for rs in idle.into_iter().take(extra) {
            match self
                .ctx
                .client
                .replica_sets(d.namespace())
                .delete(rs.name(), &DeleteParams::default())
                .await
            {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn sync_status(
        &self,
        d: &Deployment,
        owned: &[ReplicaSet],
        replicas: i32,
        unavailable: i32,
    ) -> Result<Action, Error> {
        let hash = d
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .map(template_hash)
            .unwrap_or_default();
        let new = owned
            .iter()
            .find(|r| r.meta().labels.get(HASH_LABEL) == Some(&hash));
        let sum = |f: fn(&ReplicaSet) -> i32| owned.iter().map(f).sum::<i32>();
        let total = sum(|r| status_of(r).0);
        let ready = sum(|r| status_of(r).1);
        let available = sum(|r| status_of(r).2);
        let updated = new.map(|r| status_of(r).0).unwrap_or(0);
        let mut status = d.status.clone().unwrap_or_default();
        let before = status.clone();
        status.observed_generation = d.meta().generation;
        status.replicas = total;
        status.updated_replicas = updated;
        status.ready_replicas = ready;
        status.available_replicas = available;
        status.unavailable_replicas = (replicas - available).max(0);
        let min_available = replicas - unavailable;
        if available >= min_available {
            set_condition(
                &mut status.conditions,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            );
        } else {
            set_condition(
                &mut status.conditions,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            );
        }
        let spec = d.spec.as_ref();
        let deadline = Duration::from_secs(
            spec.and_then(|s| s.progress_deadline_seconds)
                .unwrap_or(600)
                .max(1) as u64,
        );
        let new_name = new.map(|r| r.name().to_owned()).unwrap_or_default();
        let complete = updated == replicas && total == replicas && available == replicas;
        let moved = before.updated_replicas != updated
            || before.available_replicas != available
            || before.replicas != total;
        let mut requeue = None;
        if spec.is_some_and(|s| s.paused) {
            set_condition(
                &mut status.conditions,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
            );
        } else if complete {
            let msg = format!("ReplicaSet \"{new_name}\" has successfully progressed.");
            set_condition(
                &mut status.conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &msg,
            );
        } else {
            let progressing = status
                .conditions
                .iter()
                .find(|c| c.r#type == "Progressing")
                .cloned();
            let since = progressing
                .as_ref()
                .and_then(|c| c.last_update_time)
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or_else(SystemTime::now);
            let stalled = SystemTime::now().duration_since(since).unwrap_or_default();
            if moved
                || progressing.as_ref().is_none_or(|c| {
                    c.reason == "NewReplicaSetAvailable" || c.reason == "DeploymentPaused"
                })
            {
                let msg = format!("ReplicaSet \"{new_name}\" is progressing.");
                set_condition(
                    &mut status.conditions,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &msg,
                );
                if let Some(c) = status
                    .conditions
                    .iter_mut()
                    .find(|c| c.r#type == "Progressing")
                {
                    c.last_update_time = Some(now());
                }
                requeue = Some(deadline);
            } else if stalled >= deadline {
                let msg = format!("ReplicaSet \"{new_name}\" has timed out progressing.");
                set_condition(
                    &mut status.conditions,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &msg,
                );
            } else {
                requeue = Some(deadline - stalled);
            }
        }
        if status != before {
            let mut updated_d = d.clone();
            updated_d.status = Some(status);
            match self
                .ctx
                .client
                .deployments(d.namespace())
                .update_status(&updated_d)
                .await
            {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(match requeue {
            Some(after) => Action::RequeueAfter(after + Duration::from_millis(100)),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use skiff::api::core::v1::{Container, PodSpec, PodTemplateSpec};

    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: image.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn template_hashes_are_stable_and_differ_by_template() {
        assert_eq!(template_hash(&template("a")), template_hash(&template("a")));
        assert_ne!(template_hash(&template("a")), template_hash(&template("b")));
        assert_eq!(template_hash(&template("a")).len(), 10);
    }
}
