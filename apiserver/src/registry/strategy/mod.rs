//! Per-kind rules the generic service applies (Kubernetes' registry
//! strategies), all in one trait: name rules, defaulting on create,
//! validation, what an update may change, graceful deletion and finalizers,
//! the admission plugins a kind goes through and what it counts against
//! quotas, the hooks around its writes (allocation, RBAC invalidation), and
//! the node rule a kubelet is held to. A kind with no special rules
//! implements [`Strategy`] with an empty block; the server serves every kind
//! the API defines through it, so a kind without one does not build.
//!
//! Strategies state rules; they must not do I/O themselves beyond the
//! admission and hooks they name.

mod apiextensions;
mod apps;
mod batch;
mod core;
mod pod;
mod rbac;
mod scheduling;
mod storage;

pub use batch::{CONTROLLER_UID_LABEL, JOB_NAME_LABEL};
pub use scheduling::{HIGHEST_USER_PRIORITY, SYSTEM_CRITICAL_PRIORITY};
pub use storage::DEFAULT_CLASS_ANNOTATION;

use std::sync::Arc;

use futures::future::BoxFuture;
use skiff::Resource;
use skiff::api::coordination::v1::Lease;
use skiff::api::core::v1::{Event, ServiceAccount};

use crate::admission::{Admission, Usage};
use crate::authz::node::NodeAccess;
use crate::error::{ApiError, FieldViolation};
use crate::registry::service::{ApiContext, ObjectHooks};
use crate::registry::validation::NameRule;

/// Per-kind behaviour of the generic service.
pub trait Strategy: Resource {
    /// How names of this kind are checked.
    const NAME_RULE: NameRule = NameRule::Subdomain;

    /// A field watchers often pin with a field selector, worth indexing
    /// watchers by (pods: `spec.nodeName`, one watch per kubelet).
    const TRIGGER_FIELD: Option<&'static str> = None;

    /// The node rule a kubelet calling as its node is held to.
    const NODE_ACCESS: NodeAccess = NodeAccess::Unrestricted;

    /// Whether deleting an object gives its quota charge back (a quota
    /// does not give itself back).
    const RELEASES_QUOTA: bool = true;

    /// Resources beyond its object count this kind may use in a quota
    /// (pods: `requests.cpu`, …), so a new quota knows what to count.
    const QUOTA_RESOURCES: &'static [&'static str] = &[];

    /// Methods of this kind's service that stream for as long as the
    /// caller likes (a pod's logs and exec), beyond its watch: the filters
    /// count them as watches, not as requests in flight.
    const STREAMING_METHODS: &'static [&'static str] = &[];

    /// Hooks around this kind's writes (a Service's allocations); `None`
    /// for none.
    fn hooks(ctx: &ApiContext) -> Option<Arc<dyn ObjectHooks<Self>>> {
        let _ = ctx;
        None
    }

    /// The admission plugins this kind goes through before quota, which
    /// every namespaced kind does.
    fn admit<'a>(&'a mut self, admission: &'a Admission) -> BoxFuture<'a, Result<(), ApiError>> {
        let _ = admission;
        Box::pin(std::future::ready(Ok(())))
    }

    /// What an object counts against quotas beyond its object count.
    fn quota_usage(&self, usage: &mut Usage) {
        let _ = usage;
    }

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

    /// Why this object may not be deleted at all, if it may not (the
    /// namespaces the system needs).
    fn deletion_forbidden(&self) -> Option<&'static str> {
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
impl Strategy for Lease {
    const NODE_ACCESS: NodeAccess = NodeAccess::OwnLease;
}
