//! The Job controller: runs a job's pods until enough succeed
//! (`completions`, at most `parallelism` at once, or each index once for
//! `completionMode: Indexed`), or until it fails: more failed pods than
//! `backoffLimit` (with an exponential pause before each replacement), or
//! longer than `activeDeadlineSeconds`. `suspend` deletes its running pods
//! and resuming starts them again; `ttlSecondsAfterFinished` deletes a
//! finished job.
//!
//! Every pod carries the `batch.kubernetes.io/job-tracking` finalizer, so a
//! finished pod cannot vanish before it is counted: its uid is first
//! recorded in `status.uncountedTerminatedPods`, then its finalizer is
//! removed, then it moves into `succeeded`/`failed` — Kubernetes' protocol,
//! which never counts a pod twice nor loses one to a fast deletion.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use skiff::Resource;
use skiff::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, UncountedTerminatedPods};
use skiff::api::core::v1::{EnvVar, Pod};
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::events::{NORMAL, WARNING};
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};

use crate::Context;
use crate::expectations::{Expectations, observe_pods};
use crate::util::{
    BY_CONTROLLER, controller_ref, index_by_controller, is_ready, owner_ref, pod_from_template,
};

/// Finalizer that holds a job's pod until the job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation (and label) with an Indexed job's pod's index.
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Environment variable with an Indexed job's pod's index.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// How long to wait before replacing failed pods: `base` doubled per
/// failure, at most `max` (Kubernetes: 10 s and 6 min).
#[derive(Debug, Clone, Copy)]
pub struct JobBackoff {
    /// Pause after the first failure.
    pub base: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl Default for JobBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(360),
        }
    }
}

impl JobBackoff {
    /// The pause after `failures` failures.
    pub fn after(&self, failures: i32) -> Duration {
        if failures <= 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (failures - 1).min(16) as u32;
        self.base.saturating_mul(factor).min(self.max)
    }
}

struct Jobs {
    ctx: Context,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    /// Per job, pods whose finalizer this controller removed and whose
    /// removal the cache has not shown yet: they are counted already (or
    /// were deleted on purpose) and must not be counted again.
    released: Mutex<HashMap<ObjectKey, HashSet<String>>>,
}

/// Runs the Job controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let jobs = ctx.factory.all::<Job>();
    let pods = ctx.factory.all::<Pod>();
    index_by_controller(&pods);
    let expectations = Arc::new(Expectations::new());
    let owners = jobs.store();
    let observer = tokio::spawn(observe_pods(
        pods.clone(),
        expectations.clone(),
        "Job",
        move || owners.list().iter().map(|j| ObjectKey::of(&**j)).collect(),
    ));
    let mut triggers = vec![Trigger::owned(&pods, &Job::INFO)];
    if let Some(moved) = ctx.config.clock.moved() {
        triggers.push(Trigger::on_signal(&jobs, moved));
    }
    let controller = Controller::new(ControllerConfig {
        triggers,
        workers: ctx.config.workers,
        ..ControllerConfig::new(jobs)
    });
    let this = Arc::new(Jobs {
        ctx,
        pods: pods.store(),
        expectations,
        released: Mutex::new(HashMap::new()),
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

fn phase(p: &Pod) -> &str {
    p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("")
}

fn has_finalizer(p: &Pod) -> bool {
    p.meta().finalizers.iter().any(|f| f == TRACKING_FINALIZER)
}

/// A pod that ended badly: Failed, or deleted before it succeeded.
fn is_failed(p: &Pod) -> bool {
    phase(p) == "Failed" || (p.meta().deletion_timestamp.is_some() && phase(p) != "Succeeded")
}

/// A pod still working for the job.
fn is_active(p: &Pod) -> bool {
    p.meta().deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed")
}

/// The completion index of an Indexed job's pod.
pub fn completion_index(p: &Pod) -> Option<i32> {
    p.meta()
        .annotations
        .get(COMPLETION_INDEX_ANNOTATION)?
        .parse()
        .ok()
}

/// Parses `completedIndexes` ("0-2,4").
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as `completedIndexes` does ("0-2,4").
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

fn condition_true(status: &JobStatus, kind: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.r#type == kind && c.status == "True")
}

fn set_condition(status: &mut JobStatus, kind: &str, value: &str, reason: &str, message: &str) {
    let now: prost_types::Timestamp = SystemTime::now().into();
    match status.conditions.iter_mut().find(|c| c.r#type == kind) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(now);
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message.into();
            c.last_probe_time = Some(now);
        }
        None => status.conditions.push(JobCondition {
            r#type: kind.into(),
            status: value.into(),
            last_probe_time: Some(now),
            last_transition_time: Some(now),
            reason: reason.into(),
            message: message.into(),
        }),
    }
}

/// When a finished job finished.
fn finish_time(status: &JobStatus) -> Option<SystemTime> {
    if let Some(t) = status.completion_time {
        return SystemTime::try_from(t).ok();
    }
    status
        .conditions
        .iter()
        .find(|c| c.r#type == "Failed" && c.status == "True")
        .and_then(|c| c.last_transition_time)
        .and_then(|t| SystemTime::try_from(t).ok())
}

/// When a failed pod failed (its containers' end, or its deletion).
fn failed_at(p: &Pod) -> Option<SystemTime> {
    let finished = p.status.as_ref().and_then(|s| {
        s.container_statuses
            .iter()
            .chain(&s.init_container_statuses)
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at)
            .max_by_key(|t| (t.seconds, t.nanos))
    });
    finished
        .or(p.meta().deletion_timestamp)
        .and_then(|t| SystemTime::try_from(t).ok())
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .map(|s| s.container_statuses.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

fn min_wait(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Jobs {
    fn now(&self) -> SystemTime {
        self.ctx.config.clock.now()
    }

    async fn reconcile(&self, req: Request<Job>) -> Result<Action, Error> {
        let Some(job) = req.object else {
            self.expectations.forget(&req.key);
            self.release_orphans(&req.key).await?;
            self.released.lock().expect("released").remove(&req.key);
            return Ok(Action::Done);
        };
        let uid = job.meta().uid.clone();
        let spec = job.spec.clone().unwrap_or_default();
        let mut status = job.status.clone().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self.pods.by_index(BY_CONTROLLER, &uid);
        // Pods released earlier count as released until the cache shows it.
        let released: HashSet<String> = {
            let mut map = self.released.lock().expect("released");
            let set = map.entry(req.key.clone()).or_default();
            set.retain(|u| pods.iter().any(|p| &p.meta().uid == u && has_finalizer(p)));
            set.clone()
        };
        let tracked = |p: &Pod| has_finalizer(p) && !released.contains(&p.meta().uid);
        let indexed = spec.completion_mode == "Indexed";
        let finished = condition_true(&status, "Complete") || condition_true(&status, "Failed");

        // 1. Count finished pods: record, release, then count.
        let mut job = (*job).clone();
        if finished {
            for p in pods.iter().filter(|p| tracked(p)) {
                self.remove_finalizer(&req.key, p).await?;
            }
        } else {
            let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
            let mut completed = parse_indexes(&status.completed_indexes);
            let mut recorded = false;
            for p in pods.iter().filter(|p| tracked(p)) {
                let pod_uid = &p.meta().uid;
                if uncounted.succeeded.contains(pod_uid) || uncounted.failed.contains(pod_uid) {
                    continue;
                }
                if phase(p) == "Succeeded" {
                    uncounted.succeeded.push(pod_uid.clone());
                    if indexed
                        && let Some(i) = completion_index(p)
                        && (0..spec.completions.unwrap_or(0)).contains(&i)
                    {
                        completed.insert(i);
                    }
                    recorded = true;
                } else if is_failed(p) {
                    uncounted.failed.push(pod_uid.clone());
                    recorded = true;
                }
            }
            if recorded {
                status.uncounted_terminated_pods = Some(uncounted.clone());
                status.completed_indexes = format_indexes(&completed);
                job = self.write_status(&job, &status).await?;
            }
            // Release every recorded pod, then count what was released.
            let mut moved = UncountedTerminatedPods::default();
            for (uids, out) in [
                (&uncounted.succeeded, &mut moved.succeeded),
                (&uncounted.failed, &mut moved.failed),
            ] {
                for pod_uid in uids {
                    match pods.iter().find(|p| &p.meta().uid == pod_uid) {
                        Some(p) if tracked(p) => {
                            self.remove_finalizer(&req.key, p).await?;
                        }
                        _ => {}
                    }
                    out.push(pod_uid.clone());
                }
            }
            if !moved.succeeded.is_empty() || !moved.failed.is_empty() {
                status.failed += moved.failed.len() as i32;
                status.succeeded = if indexed {
                    completed.len() as i32
                } else {
                    status.succeeded + moved.succeeded.len() as i32
                };
                status.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
            }
        }
        let now = self.now();
        if finished {
            let wait = self.expire_if_due(&job, &status, now).await?;
            self.write_if_changed(&job, status).await?;
            return Ok(wait.map_or(Action::Done, Action::RequeueAfter));
        }

        let active: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
        let suspended = spec.suspend == Some(true);
        let mut wait: Option<Duration> = None;

        // 2. Suspension and resumption.
        if suspended {
            if !condition_true(&status, "Suspended") {
                set_condition(
                    &mut status,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                );
                self.record(&job, NORMAL, "Suspended", "Job suspended")
                    .await;
            }
            self.delete_pods(&job, &active, &req.key).await;
            status.start_time = None;
            return self.finish_pass(&job, status, &pods, &[], None).await;
        }
        if condition_true(&status, "Suspended") {
            set_condition(
                &mut status,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
            );
            self.record(&job, NORMAL, "Resumed", "Job resumed").await;
            status.start_time = Some(now.into());
        }
        if status.start_time.is_none() {
            status.start_time = Some(now.into());
        }
        let started = status
            .start_time
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(now);

        // 3. Failure: too many failed pods, or past the deadline.
        let on_failure = spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .is_some_and(|s| s.restart_policy == "OnFailure");
        let failures = status.failed
            + if on_failure {
                active.iter().map(|p| restarts(p)).sum::<i32>()
            } else {
                0
            };
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let failure = if failures > backoff_limit {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if let Some(deadline) = spec.active_deadline_seconds {
            // A deadline past what a clock holds never comes.
            let end = started
                .checked_add(Duration::from_secs(deadline.max(0) as u64))
                .unwrap_or(now + Duration::from_secs(100 * 365 * 24 * 3600));
            match end.duration_since(now) {
                Ok(left) if !left.is_zero() => {
                    wait = Some(left);
                    None
                }
                _ => Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )),
            }
        } else {
            None
        };
        if let Some((reason, message)) = failure {
            self.delete_pods(&job, &active, &req.key).await;
            set_condition(&mut status, "FailureTarget", "True", reason, message);
            set_condition(&mut status, "Failed", "True", reason, message);
            self.record(&job, WARNING, reason, message).await;
            let ttl = self.expire_if_due(&job, &status, now).await?;
            return self.finish_pass(&job, status, &pods, &[], ttl).await;
        }

        // 4. Success.
        let completed = parse_indexes(&status.completed_indexes);
        let complete = match (indexed, spec.completions) {
            (true, Some(c)) => completed.len() as i32 >= c,
            (false, Some(c)) => status.succeeded >= c,
            (_, None) => status.succeeded > 0 && active.is_empty(),
        };
        if complete {
            self.delete_pods(&job, &active, &req.key).await;
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            set_condition(
                &mut status,
                "Complete",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            status.completion_time = Some(now.into());
            self.record(&job, NORMAL, "Completed", "Job completed")
                .await;
            let ttl = self.expire_if_due(&job, &status, now).await?;
            return self.finish_pass(&job, status, &pods, &[], ttl).await;
        }

        // 5. Keep `parallelism` pods running, after the back-off.
        let mut created = Vec::new();
        let mut failed = None;
        if self.expectations.satisfied(&req.key) {
            let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
            let want: usize = match (indexed, spec.completions) {
                (false, Some(c)) => parallelism.min((c - status.succeeded).max(0) as usize),
                (false, None) if status.succeeded > 0 => active.len(),
                _ => parallelism,
            };
            if active.len() > want {
                let mut excess = active.clone();
                excess.sort_by_key(|p| {
                    let t = p.meta().creation_timestamp.unwrap_or_default();
                    std::cmp::Reverse((t.seconds, t.nanos))
                });
                excess.truncate(active.len() - want);
                self.delete_pods(&job, &excess, &req.key).await;
            } else if active.len() < want {
                let pause = JobBackoff::after(&self.ctx.config.job_backoff, status.failed);
                let last_failure = pods
                    .iter()
                    .filter(|p| is_failed(p))
                    .filter_map(|p| failed_at(p))
                    .max();
                let resume_at = last_failure.map(|t| t + pause);
                match resume_at.and_then(|t| t.duration_since(now).ok()) {
                    Some(left) if !pause.is_zero() && !left.is_zero() => {
                        wait = min_wait(wait, Some(left));
                    }
                    _ => {
                        let indexes: Vec<Option<i32>> = if indexed {
                            let running: BTreeSet<i32> =
                                active.iter().filter_map(|p| completion_index(p)).collect();
                            (0..spec.completions.unwrap_or(0))
                                .filter(|i| !completed.contains(i) && !running.contains(i))
                                .take(want - active.len())
                                .map(Some)
                                .collect()
                        } else {
                            vec![None; want - active.len()]
                        };
                        (created, failed) = self.create_pods(&job, &spec, &indexes, &req.key).await;
                    }
                }
            }
        }
        let action = self
            .finish_pass(&job, status, &pods, &created, wait)
            .await?;
        // A failed creation is tried again with the queue's back-off.
        match failed {
            Some(e) => Err(e),
            None => Ok(action),
        }
    }

    /// Writes the counts of active, ready and terminating pods and whatever
    /// else changed; `created` pods count as active though not yet cached.
    async fn finish_pass(
        &self,
        job: &Job,
        mut status: JobStatus,
        pods: &[Arc<Pod>],
        created: &[Pod],
        wait: Option<Duration>,
    ) -> Result<Action, Error> {
        let finished = condition_true(&status, "Complete") || condition_true(&status, "Failed");
        let active = pods.iter().filter(|p| is_active(p)).count() + created.len();
        status.active = if finished { 0 } else { active as i32 };
        status.ready = Some(pods.iter().filter(|p| is_active(p) && is_ready(p)).count() as i32);
        status.terminating = Some(
            pods.iter()
                .filter(|p| p.meta().deletion_timestamp.is_some())
                .count() as i32,
        );
        if status.uncounted_terminated_pods.is_none() {
            status.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
        }
        self.write_if_changed(job, status).await?;
        Ok(wait.map_or(Action::Done, |w| {
            Action::RequeueAfter(w + Duration::from_millis(20))
        }))
    }

    async fn write_if_changed(&self, job: &Job, status: JobStatus) -> Result<(), Error> {
        if job.status.as_ref() != Some(&status) {
            match self.write_status(job, &status).await {
                // A conflict: a newer job is on its way to the cache, and
                // its arrival reconciles again.
                Ok(_) | Err(Error::NotFound(_) | Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn write_status(&self, job: &Job, status: &JobStatus) -> Result<Job, Error> {
        let mut updated = job.clone();
        updated.status = Some(status.clone());
        self.ctx
            .client
            .api::<Job>(job.namespace())
            .update_status(&updated)
            .await
    }

    /// Deletes a finished job whose TTL has passed; otherwise how long until it does.
    async fn expire_if_due(
        &self,
        job: &Job,
        status: &JobStatus,
        now: SystemTime,
    ) -> Result<Option<Duration>, Error> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(None);
        };
        let finished = finish_time(status).unwrap_or(now);
        let expires = finished + Duration::from_secs(ttl.max(0) as u64);
        match expires.duration_since(now) {
            Ok(left) if !left.is_zero() => Ok(Some(left)),
            _ => {
                let params = DeleteParams {
                    propagation_policy: "Foreground".into(),
                    preconditions: Some(skiff::api::meta::v1::Preconditions {
                        uid: job.meta().uid.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                match self
                    .ctx
                    .client
                    .api::<Job>(job.namespace())
                    .delete(job.name(), &params)
                    .await
                {
                    Ok(_) | Err(Error::NotFound(_) | Error::Conflict(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn remove_finalizer(&self, job: &ObjectKey, p: &Pod) -> Result<(), Error> {
        let mut released = p.clone();
        released
            .meta_mut()
            .finalizers
            .retain(|f| f != TRACKING_FINALIZER);
        match self.ctx.client.pods(p.namespace()).update(&released).await {
            Ok(_) | Err(Error::NotFound(_)) => {
                self.released
                    .lock()
                    .expect("released")
                    .entry(job.clone())
                    .or_default()
                    .insert(p.meta().uid.clone());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Pods of a deleted job keep their finalizer no more.
    async fn release_orphans(&self, key: &ObjectKey) -> Result<(), Error> {
        for p in self.pods.in_namespace(&key.namespace) {
            let orphan =
                controller_ref(p.meta()).is_some_and(|r| r.kind == "Job" && r.name == key.name);
            if orphan && has_finalizer(&p) {
                self.remove_finalizer(key, &p).await?;
            }
        }
        Ok(())
    }

    /// Deletes pods the job no longer wants; they are not failures, so
    /// their finalizer goes first.
    async fn delete_pods(&self, job: &Job, victims: &[Arc<Pod>], key: &ObjectKey) {
        if victims.is_empty() {
            return;
        }
        let api = self.ctx.client.pods(job.namespace());
        self.expectations.expect(key, 0, victims.len() as i64);
        for v in victims {
            let released = if has_finalizer(v) {
                self.remove_finalizer(key, v).await
            } else {
                Ok(())
            };
            let deleted = match released {
                Ok(()) => api
                    .delete(v.name(), &DeleteParams::default())
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) => {
                    let message = format!("Deleted pod: {}", v.name());
                    self.record(job, NORMAL, "SuccessfulDelete", &message).await;
                }
                Err(e) => {
                    self.expectations.observed(key, 0, 1);
                    if !e.is_not_found() {
                        tracing::warn!(pod = v.name(), error = %e, "deleting a job's pod failed");
                    }
                }
            }
        }
    }

    /// Creates one pod per entry (an Indexed job's index, or `None`);
    /// the pods created and the first failure.
    async fn create_pods(
        &self,
        job: &Job,
        spec: &JobSpec,
        indexes: &[Option<i32>],
        key: &ObjectKey,
    ) -> (Vec<Pod>, Option<Error>) {
        let Some(template) = spec.template.as_ref() else {
            return (Vec::new(), None);
        };
        if indexes.is_empty() {
            return (Vec::new(), None);
        }
        let api = self.ctx.client.pods(job.namespace());
        self.expectations.expect(key, indexes.len() as i64, 0);
        let pods: Vec<Pod> = indexes
            .iter()
            .map(|index| job_pod(job, template, *index))
            .collect();
        let results = futures::future::join_all(pods.iter().map(|p| api.create(p))).await;
        let mut created = Vec::new();
        let mut first_error = None;
        for r in results {
            match r {
                Ok(p) => {
                    let message = format!("Created pod: {}", p.name());
                    self.record(job, NORMAL, "SuccessfulCreate", &message).await;
                    created.push(p);
                }
                Err(e) => {
                    self.expectations.observed(key, 1, 0);
                    let message = format!("Error creating: {e}");
                    self.record(job, WARNING, "FailedCreate", &message).await;
                    first_error.get_or_insert(e);
                }
            }
        }
        (created, first_error)
    }

    async fn record(&self, job: &Job, kind: &str, reason: &str, message: &str) {
        self.ctx.recorder.record(job, kind, reason, message).await;
    }
}

/// A job's pod from its template: tracked by the finalizer, and for an
/// Indexed job named, labelled and given the environment of its index.
fn job_pod(job: &Job, template: &skiff::api::core::v1::PodTemplateSpec, index: Option<i32>) -> Pod {
    let prefix = match index {
        Some(i) => format!("{}-{i}", job.name()),
        None => job.name().to_owned(),
    };
    let mut pod = pod_from_template(template, job.namespace(), &prefix, owner_ref(job));
    pod.meta_mut()
        .finalizers
        .push(TRACKING_FINALIZER.to_owned());
    if let Some(i) = index {
        let m = pod.meta_mut();
        m.annotations
            .insert(COMPLETION_INDEX_ANNOTATION.into(), i.to_string());
        m.labels
            .insert(COMPLETION_INDEX_ANNOTATION.into(), i.to_string());
        if let Some(spec) = pod.spec.as_mut() {
            if spec.hostname.is_empty() {
                spec.hostname = prefix.clone();
            }
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut())
            {
                c.env.retain(|e| e.name != COMPLETION_INDEX_ENV);
                c.env.push(EnvVar {
                    name: COMPLETION_INDEX_ENV.into(),
                    value: i.to_string(),
                    ..Default::default()
                });
            }
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(parse_indexes(""), BTreeSet::new());
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn the_back_off_doubles_per_failure_up_to_its_cap() {
        let b = JobBackoff::default();
        assert_eq!(b.after(0), Duration::ZERO);
        assert_eq!(b.after(1), Duration::from_secs(10));
        assert_eq!(b.after(2), Duration::from_secs(20));
        assert_eq!(b.after(3), Duration::from_secs(40));
        assert_eq!(b.after(10), Duration::from_secs(360));
    }
}
