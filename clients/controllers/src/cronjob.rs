//! The CronJob controller: creates a Job from the template at each time of
//! the schedule (five cron fields in the cron job's `timeZone`), as
//! Kubernetes' does: `concurrencyPolicy` Allow, Forbid (skip while one
//! runs; the skipped time runs once the last one ends) or Replace (delete
//! the running one); `startingDeadlineSeconds` bounds how late a start may
//! be; times missed while the controller was down give at most one
//! catch-up run, with a warning past 100 misses; finished jobs beyond the
//! history limits are deleted; `suspend` stops new runs.
//!
//! Jobs are named `NAME-<minutes since the epoch of the scheduled time>`,
//! so a stale cache can never make it start one time twice. Time comes
//! from the injectable clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff::Resource;
use skiff::api::batch::v1::{CronJob, CronJobStatus, Job};
use skiff::api::core::v1::ObjectReference;
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{Action, Controller, ControllerConfig, Request, Store, Trigger};
use skiff::schedule::Schedule;

use crate::Context;
use crate::util::{BY_CONTROLLER, controller_ref, index_by_controller, owner_ref, write_status};

/// Annotation with the time a cron job's job was scheduled for (RFC 3339).
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Missed times beyond which the controller warns.
const MISSED_WARNING: usize = 100;

struct CronJobs {
    ctx: Context,
    jobs: Store<Job>,
}

/// Runs the CronJob controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let cron_jobs = ctx.factory.all::<CronJob>();
    let jobs = ctx.factory.all::<Job>();
    index_by_controller(&jobs);
    let mut triggers = vec![Trigger::owned(&jobs, &CronJob::INFO)];
    if let Some(moved) = ctx.config.clock.moved() {
        triggers.push(Trigger::on_signal(&cron_jobs, moved));
    }
    let controller = Controller::new(ControllerConfig {
        triggers,
        workers: ctx.config.workers,
        ..ControllerConfig::new(cron_jobs)
    });
    let this = Arc::new(CronJobs {
        ctx,
        jobs: jobs.store(),
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
}

/// "Complete" or "Failed" if the job has finished.
fn finished(j: &Job) -> Option<&'static str> {
    let conditions = &j.status.as_ref()?.conditions;
    ["Complete", "Failed"].into_iter().find(|kind| {
        conditions
            .iter()
            .any(|c| c.r#type == *kind && c.status == "True")
    })
}

fn to_time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

/// The name of the job for `scheduled`: minutes since the epoch, as Kubernetes.
pub fn job_name(cron_job: &str, scheduled: SystemTime) -> String {
    let minutes = scheduled
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0);
    format!("{cron_job}-{minutes}")
}

fn reference(j: &Job) -> ObjectReference {
    ObjectReference {
        kind: "Job".into(),
        namespace: j.namespace().to_owned(),
        name: j.name().to_owned(),
        uid: j.meta().uid.clone(),
        api_version: "batch/v1".into(),
        resource_version: j.meta().resource_version.clone(),
        field_path: String::new(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    let t: prost_types::Timestamp = t.into();
    t.to_string()
}

impl CronJobs {
    async fn reconcile(&self, req: Request<CronJob>) -> Result<Action, Error> {
        let Some(cj) = req.object else {
            return Ok(Action::Done);
        };
        let now = self.ctx.config.clock.now();
        let spec = cj.spec.clone().unwrap_or_default();
        let mut status = cj.status.clone().unwrap_or_default();
        let mut owned: Vec<Arc<Job>> = self.jobs.by_index(BY_CONTROLLER, &cj.meta().uid);

        // 1. The active list follows the jobs.
        for j in &owned {
            let listed = status.active.iter().any(|r| r.uid == j.meta().uid);
            match finished(j) {
                None if !listed => status.active.push(reference(j)),
                Some(how) if listed => {
                    status.active.retain(|r| r.uid != j.meta().uid);
                    let message = format!("Saw completed job: {}, condition: {how}", j.name());
                    self.record(&cj, NORMAL, "SawCompletedJob", &message).await;
                }
                _ => {}
            }
            if finished(j) == Some("Complete") {
                let done = to_time(j.status.as_ref().and_then(|s| s.completion_time));
                if done > to_time(status.last_successful_time) {
                    status.last_successful_time = done.map(Into::into);
                }
            }
        }
        let mut missing = Vec::new();
        for r in &status.active {
            if owned.iter().any(|j| j.meta().uid == r.uid) {
                continue;
            }
            // Not cached (yet?): ask the server before calling it gone.
            match self
                .ctx
                .client
                .api::<Job>(cj.namespace())
                .get_opt(&r.name)
                .await?
            {
                Some(j) if j.meta().uid == r.uid => owned.push(Arc::new(j)),
                _ => missing.push(r.clone()),
            }
        }
        for r in missing {
            status.active.retain(|a| a.uid != r.uid);
            let message = format!("Active job went missing: {}", r.name);
            self.record(&cj, WARNING, "MissingJob", &message).await;
        }

        // 2. History limits.
        for (how, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let mut done: Vec<&Arc<Job>> = owned
                .iter()
                .filter(|j| finished(j) == Some(how) && j.meta().deletion_timestamp.is_none())
                .collect();
            done.sort_by_key(|j| {
                let t = j
                    .status
                    .as_ref()
                    .and_then(|s| s.start_time)
                    .or(j.meta().creation_timestamp)
                    .unwrap_or_default();
                (t.seconds, t.nanos)
            });
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            for j in done.into_iter().take(excess) {
                self.delete_job(&cj, j).await;
            }
        }

        if cj.meta().deletion_timestamp.is_some() || spec.suspend == Some(true) {
            self.write_status(&cj, status).await?;
            return Ok(Action::Done);
        }

        // 3. The schedule.
        let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                let reason = match e {
                    skiff::schedule::ScheduleError::TimeZone(_) => "UnknownTimeZone",
                    skiff::schedule::ScheduleError::Schedule(_) => "UnparseableSchedule",
                };
                let message = format!("unparseable schedule {:?}: {e}", spec.schedule);
                self.record(&cj, WARNING, reason, &message).await;
                self.write_status(&cj, status).await?;
                return Ok(Action::Done);
            }
        };
        let mut earliest = to_time(status.last_schedule_time)
            .or_else(|| to_time(cj.meta().creation_timestamp))
            .unwrap_or(now);
        if let Some(deadline) = spec.starting_deadline_seconds {
            let window_start = now
                .checked_sub(Duration::from_secs(deadline.max(0) as u64))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            earliest = earliest.max(window_start);
        }
        let (scheduled, missed) = schedule.missed(earliest, now, MISSED_WARNING);
        let next = schedule
            .next_after(now)
            .and_then(|t| t.duration_since(now).ok())
            .map(|d| d + Duration::from_millis(100));
        let requeue = next.map_or(Action::Done, Action::RequeueAfter);
        let Some(scheduled) = scheduled else {
            self.write_status(&cj, status).await?;
            return Ok(requeue);
        };
        if missed > MISSED_WARNING {
            let message = format!(
                "too many missed start times: > {MISSED_WARNING}. Set or decrease \
                 .spec.startingDeadlineSeconds or check clock skew"
            );
            self.record(&cj, WARNING, "TooManyMissedTimes", &message)
                .await;
        }
        let name = job_name(cj.name(), scheduled);
        if status.active.iter().any(|r| r.name == name)
            || to_time(status.last_schedule_time) == Some(scheduled)
        {
            self.write_status(&cj, status).await?;
            return Ok(requeue);
        }
        match spec.concurrency_policy.as_str() {
            "Forbid" if !status.active.is_empty() => {
                self.record(
                    &cj,
                    NORMAL,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                )
                .await;
                self.write_status(&cj, status).await?;
                return Ok(requeue);
            }
            "Replace" => {
                for r in std::mem::take(&mut status.active) {
                    if let Some(j) = owned.iter().find(|j| j.meta().uid == r.uid) {
                        self.delete_job(&cj, j).await;
                    }
                }
            }
            _ => {}
        }

        // 4. Start the job for the scheduled time.
        let job = self.job_for(&cj, &name, scheduled);
        let api = self.ctx.client.api::<Job>(cj.namespace());
        let created = match api.create(&job).await {
            Ok(j) => {
                let message = format!("Created job {}", j.name());
                self.record(&cj, NORMAL, "SuccessfulCreate", &message).await;
                j
            }
            Err(Error::AlreadyExists(_)) => {
                let existing = api.get(&name).await?;
                if controller_ref(existing.meta()).is_none_or(|r| r.uid != cj.meta().uid) {
                    let message = format!("job {name} exists and is not this cron job's");
                    self.record(&cj, WARNING, "FailedCreate", &message).await;
                    return Ok(requeue);
                }
                existing
            }
            Err(e) => {
                let message = format!("Error creating job: {e}");
                self.record(&cj, WARNING, "FailedCreate", &message).await;
                return Err(e);
            }
        };
        if !status.active.iter().any(|r| r.uid == created.meta().uid) {
            status.active.push(reference(&created));
        }
        status.last_schedule_time = Some(scheduled.into());
        self.write_status(&cj, status).await?;
        Ok(requeue)
    }

    /// The job for one scheduled time, from the template.
    fn job_for(&self, cj: &CronJob, name: &str, scheduled: SystemTime) -> Job {
        let template = cj
            .spec
            .as_ref()
            .and_then(|s| s.job_template.clone())
            .unwrap_or_default();
        let tm = template.metadata.unwrap_or_default();
        let mut annotations = tm.annotations;
        annotations.insert(SCHEDULED_TIMESTAMP_ANNOTATION.into(), rfc3339(scheduled));
        Job {
            metadata: Some(ObjectMeta {
                name: name.to_owned(),
                namespace: cj.namespace().to_owned(),
                labels: tm.labels,
                annotations,
                owner_references: vec![owner_ref(cj)],
                ..Default::default()
            }),
            spec: template.spec,
            status: None,
        }
    }

    async fn delete_job(&self, cj: &CronJob, j: &Job) {
        let params = DeleteParams {
            propagation_policy: "Background".into(),
            ..Default::default()
        };
        match self
            .ctx
            .client
            .api::<Job>(cj.namespace())
            .delete(j.name(), &params)
            .await
        {
            Ok(_) => {
                let message = format!("Deleted job {}", j.name());
                self.record(cj, NORMAL, "SuccessfulDelete", &message).await;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                let message = format!("Error deleting job {}: {e}", j.name());
                self.record(cj, WARNING, "FailedDelete", &message).await;
            }
        }
    }

    async fn write_status(&self, cj: &CronJob, status: CronJobStatus) -> Result<(), Error> {
        if cj.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = cj.clone();
        updated.status = Some(status);
        write_status(&self.ctx.client, &updated).await
    }

    async fn record(&self, cj: &CronJob, kind: &str, reason: &str, message: &str) {
        self.ctx.recorder.record(cj, kind, reason, message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_count_minutes_since_the_epoch() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(60 * 29_000_000 + 59);
        assert_eq!(job_name("hello", t), "hello-29000000");
    }
}
