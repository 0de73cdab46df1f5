//! The PriorityClass strategy (`scheduling.k8s.io/v1`): values up to one
//! billion for user classes (higher ones are the system's, whose names
//! start with `system-`), Kubernetes' preemption policies, and a value
//! and preemption policy that never change.
//!
//! Pure rules on the object; no I/O (the one-default rule is admission's).

use futures::future::BoxFuture;
use skiff::Resource;
use skiff::api::scheduling::v1::PriorityClass;

use super::Strategy;
use crate::admission::Admission;
use crate::error::{ApiError, FieldViolation};

/// Highest priority a user's class may have (Kubernetes' HighestUserDefinablePriority).
pub const HIGHEST_USER_PRIORITY: i32 = 1_000_000_000;
/// Highest priority a system class may have (Kubernetes' SystemCriticalPriority).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2 * HIGHEST_USER_PRIORITY;

impl Strategy for PriorityClass {
    fn admit<'a>(&'a mut self, admission: &'a Admission) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(admission.check_single_default_priority_class(self))
    }

    fn prepare_for_create(&mut self) {
        if self.preemption_policy.is_none() {
            self.preemption_policy = Some("PreemptLowerPriority".into());
        }
    }

    fn prepare_for_update(&mut self, old: &Self) {
        if self.preemption_policy.is_none() {
            self.preemption_policy = old.preemption_policy.clone();
        }
    }

    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let system = self.name().starts_with("system-");
        if system {
            if self.value > SYSTEM_CRITICAL_PRIORITY + 1000 {
                v.push(FieldViolation::new(
                    "value",
                    format!(
                        "{}: must not be greater than {}",
                        self.value,
                        SYSTEM_CRITICAL_PRIORITY + 1000
                    ),
                ));
            }
        } else if self.value > HIGHEST_USER_PRIORITY {
            v.push(FieldViolation::new(
                "value",
                format!(
                    "{}: must not be greater than {HIGHEST_USER_PRIORITY} \
                     (only classes named system-… may be higher)",
                    self.value
                ),
            ));
        }
        if let Some(p) = &self.preemption_policy
            && !matches!(p.as_str(), "PreemptLowerPriority" | "Never")
        {
            v.push(FieldViolation::new(
                "preemptionPolicy",
                format!(
                    "Unsupported value: {p:?}: supported values: \"Never\", \"PreemptLowerPriority\""
                ),
            ));
        }
        v
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        if self.value != old.value {
            v.push(FieldViolation::new(
                "value",
                "may not be changed in an update",
            ));
        }
        if self.preemption_policy != old.preemption_policy {
            v.push(FieldViolation::new(
                "preemptionPolicy",
                "field is immutable",
            ));
        }
        v
    }
}
