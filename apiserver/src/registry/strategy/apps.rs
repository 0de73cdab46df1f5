//! Strategies of replica sets and deployments: a selector is required and
//! immutable, the template must match it, replicas are not negative.
//!
//! Pure rules on the objects; no I/O.

use skiff::api::apps::v1::{Deployment, ReplicaSet};

use super::Strategy;
use crate::error::FieldViolation;
use crate::registry::validation::{
    validate_int_or_percent, validate_label_selector, validate_template,
};

impl Strategy for ReplicaSet {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        if spec.replicas.is_some_and(|r| r < 0) {
            v.push(FieldViolation::new("spec.replicas", "must not be negative"));
        }
        if spec.min_ready_seconds < 0 {
            v.push(FieldViolation::new(
                "spec.minReadySeconds",
                "must not be negative",
            ));
        }
        validate_label_selector(spec.selector.as_ref(), "spec.selector", true, &mut v);
        validate_template(
            spec.template.as_ref(),
            spec.selector.as_ref(),
            "spec.template",
            &mut v,
        );
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        let sel = |r: &ReplicaSet| r.spec.as_ref().and_then(|s| s.selector.clone());
        if sel(self) != sel(old) {
            v.push(FieldViolation::new("spec.selector", "field is immutable"));
        }
        v
    }
}

impl Strategy for Deployment {
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let Some(spec) = &self.spec else {
            return vec![FieldViolation::new("spec", "required")];
        };
        if spec.replicas.is_some_and(|r| r < 0) {
            v.push(FieldViolation::new("spec.replicas", "must not be negative"));
        }
        if spec.revision_history_limit.is_some_and(|r| r < 0) {
            v.push(FieldViolation::new(
                "spec.revisionHistoryLimit",
                "must not be negative",
            ));
        }
        if spec.progress_deadline_seconds.is_some_and(|r| r <= 0) {
            v.push(FieldViolation::new(
                "spec.progressDeadlineSeconds",
                "must be positive",
            ));
        }
        validate_label_selector(spec.selector.as_ref(), "spec.selector", true, &mut v);
        validate_template(
            spec.template.as_ref(),
            spec.selector.as_ref(),
            "spec.template",
            &mut v,
        );
        if let Some(strategy) = &spec.strategy {
            match strategy.r#type.as_str() {
                "" | "RollingUpdate" => {
                    if let Some(ru) = &strategy.rolling_update {
                        validate_int_or_percent(
                            "spec.strategy.rollingUpdate.maxSurge",
                            &ru.max_surge,
                            &mut v,
                        );
                        validate_int_or_percent(
                            "spec.strategy.rollingUpdate.maxUnavailable",
                            &ru.max_unavailable,
                            &mut v,
                        );
                        let zero = |s: &str| s == "0" || s == "0%";
                        if zero(&ru.max_surge) && zero(&ru.max_unavailable) {
                            v.push(FieldViolation::new(
                                "spec.strategy.rollingUpdate.maxUnavailable",
                                "may not be 0 when maxSurge is 0",
                            ));
                        }
                    }
                }
                "Recreate" => {
                    if strategy.rolling_update.is_some() {
                        v.push(FieldViolation::new(
                            "spec.strategy.rollingUpdate",
                            "may not be given when strategy type is Recreate",
                        ));
                    }
                }
                other => v.push(FieldViolation::new(
                    "spec.strategy.type",
                    format!("{other:?}: must be RollingUpdate or Recreate"),
                )),
            }
        }
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        let sel = |d: &Deployment| d.spec.as_ref().and_then(|s| s.selector.clone());
        if sel(self) != sel(old) {
            v.push(FieldViolation::new("spec.selector", "field is immutable"));
        }
        v
    }
}
