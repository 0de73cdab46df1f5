//! The ReplicaSet controller: keeps `replicas` pods matching the selector,
//! owned through owner references. It adopts matching orphans and releases
//! pods that stop matching; creates in slow-start batches and deletes the
//! least valuable pods first (unassigned, pending, not ready, restarting,
//! newest); waits on expectations so a stale cache never makes it act twice;
//! and keeps the status current.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff::Resource;
use skiff::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use skiff::api::core::v1::Pod;
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};
use skiff::selector::LabelSelector;

use crate::Context;
use crate::expectations::{Expectations, observe_pods};
use crate::util::{
    availability, controller_ref, index_by_controller, is_active, is_ready, owner_ref,
    pod_from_template,
};

pub use crate::util::BY_CONTROLLER;

/// Largest batch of creations.
const MAX_BATCH: usize = 500;

struct Rs {
    ctx: Context,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
}

/// Runs the ReplicaSet controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let rss = ctx.factory.all::<ReplicaSet>();
    let pods = ctx.factory.all::<Pod>();
    index_by_controller(&pods);
    let expectations = Arc::new(Expectations::new());
    let owners = rss.store();
    let observer = tokio::spawn(observe_pods(
        pods.clone(),
        expectations.clone(),
        "ReplicaSet",
        move || {
            owners
                .list()
                .iter()
                .map(|rs| ObjectKey::of(&**rs))
                .collect()
        },
    ));
    let rs_store = rss.store();
    // Orphans (and pods released elsewhere) matter to every replica set whose selector matches.
    let orphans = Trigger::mapped(&pods, move |p: &Pod| {
        if controller_ref(p.meta()).is_some() {
            return Vec::new();
        }
        rs_store
            .in_namespace(p.namespace())
            .into_iter()
            .filter(|rs| selector(rs).is_some_and(|s| s.matches(&p.meta().labels)))
            .map(|rs| ObjectKey::of(&*rs))
            .collect()
    });
    let controller = Controller::new(ControllerConfig {
        triggers: vec![Trigger::owned(&pods, &ReplicaSet::INFO), orphans],
        workers: ctx.config.workers,
        ..ControllerConfig::new(rss)
    });
    let rs = Arc::new(Rs {
        ctx,
        pods: pods.store(),
        expectations,
    });
    controller
        .run(
            move |req| {
                let rs = rs.clone();
                async move { rs.reconcile(req).await }
            },
            shutdown,
        )
        .await;
    observer.abort();
}

fn selector(rs: &ReplicaSet) -> Option<LabelSelector> {
    let s = rs.spec.as_ref()?.selector.as_ref()?;
    let sel = LabelSelector::from_proto(s).ok()?;
    (!sel.is_everything()).then_some(sel)
}

/// Order of deletion when scaling down: lower sorts first.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64, std::cmp::Reverse<i64>) {
    let assigned = p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) as u8;
    let phase = match p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("") {
        "Pending" | "" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let ready = is_ready(p) as u8;
    let restarts: i64 = p
        .status
        .as_ref()
        .map(|s| {
            s.container_statuses
                .iter()
                .map(|c| c.restart_count as i64)
                .sum()
        })
        .unwrap_or(0);
    let created = p
        .meta()
        .creation_timestamp
        .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
        .unwrap_or(0);
    (
        assigned,
        phase,
        ready,
        -restarts,
        std::cmp::Reverse(created),
    )
}

impl Rs {
    async fn reconcile(&self, req: Request<ReplicaSet>) -> Result<Action, Error> {
        let Some(rs) = req.object else {
            self.expectations.forget(&req.key);
            return Ok(Action::Done);
        };
        let Some(sel) = selector(&rs) else {
            return Ok(Action::Done);
        };
        let ns = rs.namespace().to_owned();
        let api = self.ctx.client.pods(&ns);
        let uid = rs.meta().uid.clone();

        // Claim: adopt matching orphans, release owned pods that stopped matching.
        let mut owned: Vec<Arc<Pod>> = Vec::new();
        for p in self.pods.in_namespace(&ns) {
            let matches = sel.matches(&p.meta().labels);
            match controller_ref(p.meta()) {
                Some(r) if r.uid == uid => {
                    if matches {
                        owned.push(p);
                    } else {
                        let mut released = (*p).clone();
                        released
                            .meta_mut()
                            .owner_references
                            .retain(|r| r.uid != uid);
                        ignore_gone(api.update(&released).await)?;
                    }
                }
                None if matches && is_active(&p) && rs.meta().deletion_timestamp.is_none() => {
                    let mut adopted = (*p).clone();
                    adopted.meta_mut().owner_references.push(owner_ref(&*rs));
                    match api.update(&adopted).await {
                        Ok(p) => owned.push(Arc::new(p)),
                        Err(Error::NotFound(_) | Error::Conflict(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
        }
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();
        let desired = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0) as usize;

        let mut failed = None;
        if self.expectations.satisfied(&req.key) && rs.meta().deletion_timestamp.is_none() {
            if active.len() < desired {
                failed = self.create(&rs, desired - active.len(), &req.key).await;
            } else if active.len() > desired {
                let mut victims = active.clone();
                victims.sort_by_key(|p| deletion_rank(p));
                victims.truncate(active.len() - desired);
                self.expectations.expect(&req.key, 0, victims.len() as i64);
                for v in &victims {
                    match api.delete(v.name(), &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) => {
                            self.expectations.observed(&req.key, 0, 1);
                            if !e.is_not_found() {
                                tracing::warn!(pod = v.name(), error = %e, "deleting a pod failed");
                            }
                        }
                    }
                }
                let message = format!(
                    "Deleted {} pod(s): scaling down to {desired}",
                    victims.len()
                );
                self.ctx
                    .recorder
                    .record(&*rs, NORMAL, "SuccessfulDelete", &message)
                    .await;
            }
        }
        let action = self.update_status(&rs, &owned, &sel).await?;
        // A failed creation is tried again with the queue's back-off (a
        // service account created later, a quota freed), as in Kubernetes.
        match failed {
            Some(e) => Err(e),
            None => Ok(action),
        }
    }

    /// Creates `count` pods in slow-start batches (1, 2, 4, …), stopping
    /// at the first failure, which it returns.
    async fn create(&self, rs: &ReplicaSet, count: usize, key: &ObjectKey) -> Option<Error> {
        let template = rs.spec.as_ref().and_then(|s| s.template.as_ref())?;
        let api = self.ctx.client.pods(rs.namespace());
        self.expectations.expect(key, count as i64, 0);
        let pod = pod_from_template(template, rs.namespace(), rs.name(), owner_ref(rs));
        let mut remaining = count;
        let mut batch = 1usize;
        let mut created = 0usize;
        let mut first_error = None;
        while remaining > 0 {
            let n = batch.min(remaining);
            let results = futures::future::join_all((0..n).map(|_| api.create(&pod))).await;
            let mut failed: Vec<_> = results.into_iter().filter_map(|r| r.err()).collect();
            created += n - failed.len();
            remaining -= n;
            if !failed.is_empty() {
                // Failed and skipped creations will never be observed.
                self.expectations
                    .observed(key, (failed.len() + remaining) as i64, 0);
                let e = failed.swap_remove(0);
                let message = format!("Error creating: {e}");
                self.ctx
                    .recorder
                    .record(rs, WARNING, "FailedCreate", &message)
                    .await;
                first_error = Some(e);
                break;
            }
            batch = (batch * 2).min(MAX_BATCH);
        }
        if created > 0 {
            let message = format!("Created {created} pod(s)");
            self.ctx
                .recorder
                .record(rs, NORMAL, "SuccessfulCreate", &message)
                .await;
        }
        first_error
    }

    async fn update_status(
        &self,
        rs: &ReplicaSet,
        owned: &[Arc<Pod>],
        sel: &LabelSelector,
    ) -> Result<Action, Error> {
        let _ = sel;
        let min_ready = Duration::from_secs(
            rs.spec
                .as_ref()
                .map(|s| s.min_ready_seconds.max(0) as u64)
                .unwrap_or(0),
        );
        let template_labels = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.metadata.as_ref())
            .map(|m| m.labels.clone())
            .unwrap_or_default();
        let now = SystemTime::now();
        let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).collect();
        let mut next_check: Option<Duration> = None;
        let mut available = 0;
        for p in &active {
            let (ok, wait) = availability(p, min_ready, now);
            if ok {
                available += 1;
            }
            if let Some(w) = wait {
                next_check = Some(next_check.map_or(w, |c: Duration| c.min(w)));
            }
        }
        let status = ReplicaSetStatus {
            replicas: active.len() as i32,
            fully_labeled_replicas: active
                .iter()
                .filter(|p| {
                    template_labels
                        .iter()
                        .all(|(k, v)| p.meta().labels.get(k) == Some(v))
                })
                .count() as i32,
            ready_replicas: active.iter().filter(|p| is_ready(p)).count() as i32,
            available_replicas: available,
            observed_generation: rs.meta().generation,
            conditions: rs
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
        };
        if rs.status.as_ref() != Some(&status) {
            let mut updated = rs.clone();
            updated.status = Some(status);
            match self
                .ctx
                .client
                .replica_sets(rs.namespace())
                .update_status(&updated)
                .await
            {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(match next_check {
            Some(d) => Action::RequeueAfter(d + Duration::from_millis(50)),
            None => Action::Done,
        })
    }
}

fn ignore_gone<T>(r: Result<T, Error>) -> Result<(), Error> {
    match r {
        Ok(_) | Err(Error::NotFound(_) | Error::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use skiff::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use skiff::api::meta::v1::ObjectMeta;

    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready: bool, created: i64) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                creation_timestamp: Some(prost_types::Timestamp {
                    seconds: created,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: node.into(),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: phase.into(),
                conditions: if ready {
                    vec![PodCondition {
                        r#type: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]
                } else {
                    vec![]
                },
                ..Default::default()
            }),
        }
    }

    #[test]
    fn scale_down_deletes_unassigned_pending_unready_and_newest_first() {
        let mut pods = [
            pod("ready-old", "n1", "Running", true, 1),
            pod("ready-new", "n1", "Running", true, 5),
            pod("not-ready", "n1", "Running", false, 2),
            pod("pending", "n1", "Pending", false, 3),
            pod("unassigned", "", "Pending", false, 4),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<_> = pods.iter().map(|p| p.meta().name.clone()).collect();
        assert_eq!(
            order,
            [
                "unassigned",
                "pending",
                "not-ready",
                "ready-new",
                "ready-old"
            ]
        );
    }
}
