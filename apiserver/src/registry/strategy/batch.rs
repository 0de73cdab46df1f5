//! Strategies of jobs and cron jobs: Kubernetes' defaults (one completion,
//! parallelism 1, six retries, NonIndexed, a selector generated from the
//! job's uid) and rules (restartPolicy Never or OnFailure, Indexed needs
//! completions, what may not change once the job runs; a cron job's
//! schedule and time zone parse, its name leaves room for the job suffix).
//!
//! Pure rules on the objects; no I/O.

use skiff::Resource;
use skiff::api::batch::v1::{CronJob, Job, JobSpec};
use skiff::api::meta::v1::LabelSelector;
use skiff::schedule::{Schedule, ScheduleError};

use super::Strategy;
use crate::error::FieldViolation;
use crate::registry::validation::{validate_label_selector, validate_template_restart};

/// Label (and selector key) carrying the uid of the job that owns a pod.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Label carrying the name of the job that owns a pod.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The legacy forms of the two labels, which Kubernetes still sets.
const LEGACY_LABELS: [&str; 2] = ["controller-uid", "job-name"];

/// Longest cron job name: a job's name adds 11 characters to it.
const CRON_JOB_NAME_MAX: usize = 52;

/// Kubernetes' defaults of a job spec that leaves them out.
fn default_job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
        spec.parallelism = Some(1);
    }
    if spec.parallelism.is_none() {
        spec.parallelism = Some(1);
    }
    if spec.backoff_limit.is_none() {
        spec.backoff_limit = Some(6);
    }
    if spec.completion_mode.is_empty() {
        spec.completion_mode = "NonIndexed".into();
    }
    if spec.suspend.is_none() {
        spec.suspend = Some(false);
    }
    if spec.manual_selector.is_none() {
        spec.manual_selector = Some(false);
    }
}

/// A job spec's own rules at `path`; `selector_required` once defaulted.
fn validate_job_spec(spec: &JobSpec, path: &str, selector_required: bool) -> Vec<FieldViolation> {
    let mut v = Vec::new();
    for (value, field) in [
        (spec.parallelism, "parallelism"),
        (spec.completions, "completions"),
        (spec.backoff_limit, "backoffLimit"),
        (spec.ttl_seconds_after_finished, "ttlSecondsAfterFinished"),
    ] {
        if value.is_some_and(|x| x < 0) {
            v.push(FieldViolation::new(
                format!("{path}.{field}"),
                "must be greater than or equal to 0",
            ));
        }
    }
    if spec.active_deadline_seconds.is_some_and(|x| x <= 0) {
        v.push(FieldViolation::new(
            format!("{path}.activeDeadlineSeconds"),
            "must be greater than 0",
        ));
    }
    crate::registry::validation::check_max_seconds(
        spec.active_deadline_seconds,
        &format!("{path}.activeDeadlineSeconds"),
        &mut v,
    );
    match spec.completion_mode.as_str() {
        "" | "NonIndexed" => {}
        "Indexed" => {
            if spec.completions.is_none() {
                v.push(FieldViolation::new(
                    format!("{path}.completions"),
                    "when completion mode is Indexed, must be specified",
                ));
            }
            if spec.completions.is_some_and(|c| c > 100_000) {
                v.push(FieldViolation::new(
                    format!("{path}.completions"),
                    "must be less than or equal to 100000 when completion mode is Indexed",
                ));
            }
        }
        other => v.push(FieldViolation::new(
            format!("{path}.completionMode"),
            format!("Unsupported value: {other:?}: supported values: \"NonIndexed\", \"Indexed\""),
        )),
    }
    validate_label_selector(
        spec.selector.as_ref(),
        &format!("{path}.selector"),
        selector_required,
        &mut v,
    );
    validate_template_restart(
        spec.template.as_ref(),
        spec.selector.as_ref(),
        &format!("{path}.template"),
        &["Never", "OnFailure"],
        &mut v,
    );
    v
}

impl Strategy for Job {
    fn prepare_for_create(&mut self) {
        let uid = self.meta().uid.clone();
        let name = self.meta().name.clone();
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        default_job_spec(spec);
        if spec.manual_selector == Some(true) {
            return;
        }
        // The selector is the job's own uid, so no other job's pods match.
        if spec.selector.is_none() {
            spec.selector = Some(LabelSelector {
                match_labels: [(CONTROLLER_UID_LABEL.to_owned(), uid.clone())].into(),
                ..Default::default()
            });
        }
        if let Some(t) = spec.template.as_mut() {
            let labels = &mut t.metadata.get_or_insert_with(Default::default).labels;
            for (key, value) in [
                (CONTROLLER_UID_LABEL, &uid),
                (JOB_NAME_LABEL, &name),
                (LEGACY_LABELS[0], &uid),
                (LEGACY_LABELS[1], &name),
            ] {
                labels.insert(key.to_owned(), value.clone());
            }
        }
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        let mut v = validate_job_spec(spec, "spec", true);
        // A selector the user wrote without saying so would be overwritten.
        let generated = spec
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.get(CONTROLLER_UID_LABEL))
            .is_some_and(|uid| *uid == self.meta().uid);
        if spec.manual_selector != Some(true) && !generated && spec.selector.is_some() {
            v.push(FieldViolation::new(
                "spec.selector",
                "`selector` will be auto-generated; set manualSelector: true to write your own",
            ));
        }
        v
    }

    fn prepare_for_update(&mut self, old: &Self) {
        // Defaults are fixed at creation: an update that leaves them out
        // (an applied manifest) keeps them.
        if let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref()) {
            if new.selector.is_none() {
                new.selector = old.selector.clone();
            }
            if new.manual_selector.is_none() {
                new.manual_selector = old.manual_selector;
            }
            if let (Some(t), Some(old_t)) = (new.template.as_mut(), old.template.as_ref()) {
                let labels = &mut t.metadata.get_or_insert_with(Default::default).labels;
                let old_labels = old_t
                    .metadata
                    .as_ref()
                    .map(|m| &m.labels)
                    .cloned()
                    .unwrap_or_default();
                for key in [
                    CONTROLLER_UID_LABEL,
                    JOB_NAME_LABEL,
                    LEGACY_LABELS[0],
                    LEGACY_LABELS[1],
                ] {
                    if let Some(val) = old_labels.get(key)
                        && !labels.contains_key(key)
                    {
                        labels.insert(key.to_owned(), val.clone());
                    }
                }
            }
            let defaults = old.clone();
            if new.completions.is_none() {
                new.completions = defaults.completions;
            }
            if new.parallelism.is_none() {
                new.parallelism = defaults.parallelism;
            }
            if new.backoff_limit.is_none() {
                new.backoff_limit = defaults.backoff_limit;
            }
            if new.completion_mode.is_empty() {
                new.completion_mode = defaults.completion_mode;
            }
            if new.suspend.is_none() {
                new.suspend = defaults.suspend;
            }
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        let mut v = validate_job_spec(spec, "spec", true);
        let Some(old_spec) = &old.spec else {
            return v;
        };
        if spec.selector != old_spec.selector {
            v.push(FieldViolation::new("spec.selector", "field is immutable"));
        }
        if spec.completion_mode != old_spec.completion_mode {
            v.push(FieldViolation::new(
                "spec.completionMode",
                "field is immutable",
            ));
        }
        if spec.completions != old_spec.completions {
            v.push(FieldViolation::new(
                "spec.completions",
                "field is immutable",
            ));
        }
        if spec.template != old_spec.template {
            v.push(FieldViolation::new("spec.template", "field is immutable"));
        }
        v
    }
}

impl Strategy for CronJob {
    fn prepare_for_create(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        if spec.concurrency_policy.is_empty() {
            spec.concurrency_policy = "Allow".into();
        }
        if spec.suspend.is_none() {
            spec.suspend = Some(false);
        }
        if spec.successful_jobs_history_limit.is_none() {
            spec.successful_jobs_history_limit = Some(3);
        }
        if spec.failed_jobs_history_limit.is_none() {
            spec.failed_jobs_history_limit = Some(1);
        }
        if let Some(job) = spec.job_template.as_mut().and_then(|t| t.spec.as_mut()) {
            default_job_spec(job);
        }
    }

    fn prepare_for_update(&mut self, old: &Self) {
        if let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref()) {
            if new.concurrency_policy.is_empty() {
                new.concurrency_policy = old.concurrency_policy.clone();
            }
            if new.suspend.is_none() {
                new.suspend = old.suspend;
            }
            if new.successful_jobs_history_limit.is_none() {
                new.successful_jobs_history_limit = old.successful_jobs_history_limit;
            }
            if new.failed_jobs_history_limit.is_none() {
                new.failed_jobs_history_limit = old.failed_jobs_history_limit;
            }
            if let Some(job) = new.job_template.as_mut().and_then(|t| t.spec.as_mut()) {
                default_job_spec(job);
            }
        }
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        if self.meta().name.len() > CRON_JOB_NAME_MAX {
            v.push(FieldViolation::new(
                "metadata.name",
                format!("must be no more than {CRON_JOB_NAME_MAX} characters"),
            ));
        }
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(_) => {}
            Err(ScheduleError::Schedule(why)) => {
                v.push(FieldViolation::new("spec.schedule", why));
            }
            Err(e @ ScheduleError::TimeZone(_)) => {
                v.push(FieldViolation::new("spec.timeZone", e.to_string()));
            }
        }
        if !matches!(
            spec.concurrency_policy.as_str(),
            "" | "Allow" | "Forbid" | "Replace"
        ) {
            v.push(FieldViolation::new(
                "spec.concurrencyPolicy",
                format!(
                    "Unsupported value: {:?}: supported values: \"Allow\", \"Forbid\", \"Replace\"",
                    spec.concurrency_policy
                ),
            ));
        }
        if spec.starting_deadline_seconds.is_some_and(|s| s < 0) {
            v.push(FieldViolation::new(
                "spec.startingDeadlineSeconds",
                "must be greater than or equal to 0",
            ));
        }
        for (value, field) in [
            (
                spec.successful_jobs_history_limit,
                "successfulJobsHistoryLimit",
            ),
            (spec.failed_jobs_history_limit, "failedJobsHistoryLimit"),
        ] {
            if value.is_some_and(|x| x < 0) {
                v.push(FieldViolation::new(
                    format!("spec.{field}"),
                    "must be greater than or equal to 0",
                ));
            }
        }
        match spec.job_template.as_ref().and_then(|t| t.spec.as_ref()) {
            None => v.push(FieldViolation::new("spec.jobTemplate.spec", "required")),
            Some(job) => {
                v.extend(validate_job_spec(job, "spec.jobTemplate.spec", false));
                if job.manual_selector != Some(true) && job.selector.is_some() {
                    v.push(FieldViolation::new(
                        "spec.jobTemplate.spec.selector",
                        "`selector` will be auto-generated",
                    ));
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use skiff::api::meta::v1::ObjectMeta;

    fn job(restart: &str) -> Job {
        Job {
            metadata: Some(ObjectMeta {
                name: "pi".into(),
                uid: "u-1".into(),
                ..Default::default()
            }),
            spec: Some(JobSpec {
                template: Some(PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "pi".into(),
                            image: "perl".into(),
                            ..Default::default()
                        }],
                        restart_policy: restart.into(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_new_job_gets_kubernetes_defaults_and_a_selector_of_its_uid() {
        let mut j = job("Never");
        j.prepare_for_create();
        let spec = j.spec.as_ref().unwrap();
        assert_eq!(
            (spec.completions, spec.parallelism, spec.backoff_limit),
            (Some(1), Some(1), Some(6))
        );
        assert_eq!(spec.completion_mode, "NonIndexed");
        assert_eq!(
            spec.selector.as_ref().unwrap().match_labels[CONTROLLER_UID_LABEL],
            "u-1"
        );
        let labels = &spec
            .template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels;
        assert_eq!(labels[JOB_NAME_LABEL], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        assert!(j.validate().is_empty(), "{:?}", j.validate());
    }

    #[test]
    fn a_job_refuses_restart_always_and_indexed_without_completions() {
        let mut j = job("Always");
        j.prepare_for_create();
        let v = j.validate();
        assert!(
            v.iter()
                .any(|x| x.field == "spec.template.spec.restartPolicy"),
            "{v:?}"
        );
        let mut j = job("OnFailure");
        let spec = j.spec.as_mut().unwrap();
        spec.completion_mode = "Indexed".into();
        spec.parallelism = Some(2);
        j.prepare_for_create();
        let v = j.validate();
        assert!(v.iter().any(|x| x.field == "spec.completions"), "{v:?}");
    }

    #[test]
    fn a_user_selector_needs_manual_selector() {
        let mut j = job("Never");
        j.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: [("app".to_owned(), "x".to_owned())].into(),
            ..Default::default()
        });
        j.prepare_for_create();
        let v = j.validate();
        assert!(v.iter().any(|x| x.field == "spec.selector"), "{v:?}");
    }
}
