//! Per-kind rules the generic service applies (Kubernetes' registry
//! strategies): name rules, defaulting on create, validation, what an update
//! may change, graceful deletion and finalizers. A kind with no special
//! rules implements [`Strategy`] with an empty block.

mod apps;
mod core;
mod pod;
mod rbac;

use skiff::Resource;
use skiff::api::coordination::v1::Lease;
use skiff::api::core::v1::{Event, ServiceAccount};

use crate::error::FieldViolation;
use crate::validation::NameRule;

/// Per-kind behaviour of the generic service.
pub trait Strategy: Resource {
    /// How names of this kind are checked.
    const NAME_RULE: NameRule = NameRule::Subdomain;

    /// A field watchers often pin with a field selector, worth indexing
    /// watchers by (pods: `spec.nodeName`, one watch per kubelet).
    const TRIGGER_FIELD: Option<&'static str> = None;

    /// Sets server defaults on a new object.
    fn prepare_for_create(&mut self) {}

    /// Kind-specific validation of a new or updated object (metadata is
    /// validated generically).
    fn validate(&self) -> Vec<FieldViolation> {
        Vec::new()
    }

    /// Carries over what an update may not change (status is kept generically).
    fn prepare_for_update(&mut self, old: &Self) {
        let _ = old;
    }

    /// Validation of an update against the stored object.
    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let _ = old;
        self.validate()
    }

    /// Validation of a status written through `Update<Kind>Status`.
    fn validate_status(&self) -> Vec<FieldViolation> {
        Vec::new()
    }

    /// If deleting this object is graceful, the grace period in seconds
    /// (the object is marked and its owner finishes the deletion).
    fn graceful_delete_seconds(&self, requested: Option<i64>) -> Option<i64> {
        let _ = requested;
        None
    }

    /// Whether something must still happen before the object may go.
    fn has_pending_finalizers(&self) -> bool {
        !self.meta().finalizers.is_empty()
    }

    /// Marks the object as being deleted (beyond the deletion timestamp).
    fn mark_deleting(&mut self) {}
}

impl Strategy for ServiceAccount {}
impl Strategy for Event {}
impl Strategy for Lease {}
