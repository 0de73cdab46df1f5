//! Admission: what happens to a valid new object before it is stored, as
//! Kubernetes' admission plugins do. One file per plugin:
//! [`namespace_lifecycle`] (no objects in missing or terminating
//! namespaces), [`service_account`] (pods get `default` and its token),
//! [`limit_range`] (defaults and bounds of containers' resources) and
//! [`quota`] (ResourceQuota charging), [`default_storage_class`] (claims
//! naming no class get the default one) and [`priority`] (a pod's priority
//! from its PriorityClass). Which plugins a kind goes through is
//! the kind's choice, in its [`Strategy`](crate::registry::Strategy); this
//! module never decides what a request means, and changes only the object
//! being admitted and quota usage.

pub mod default_storage_class;
pub mod limit_range;
pub mod namespace_lifecycle;
pub mod priority;
pub mod quota;
pub mod service_account;

use std::sync::{Arc, RwLock};

use skiff::api::core::v1::{LimitRange, ResourceQuota, ServiceAccount};
use skiff::api::scheduling::v1::PriorityClass;
use skiff::api::storage::v1::StorageClass;

pub use quota::{Charge, Usage, UsageCounter};
pub use service_account::TOKEN_ENV;

use crate::object_store::predicate::Predicate;
use crate::object_store::{ListOptions, ObjectStore, ReadVersion};
use crate::storage::Storage;

/// The admission chain of a server.
pub struct Admission {
    accounts: Arc<dyn ObjectStore<ServiceAccount>>,
    limit_ranges: Arc<dyn ObjectStore<LimitRange>>,
    quotas: Arc<dyn ObjectStore<ResourceQuota>>,
    storage_classes: Arc<dyn ObjectStore<StorageClass>>,
    priority_classes: Arc<dyn ObjectStore<PriorityClass>>,
    storage: Arc<dyn Storage>,
    /// How each served kind counts against a new quota.
    counters: RwLock<Vec<UsageCounter>>,
}

/// Everything in `namespace`, from the cache.
fn list_in(namespace: &str) -> ListOptions {
    ListOptions {
        predicate: Predicate {
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        version: ReadVersion::Any,
        limit: 0,
        continue_token: None,
    }
}

impl Admission {
    /// Admission over these stores.
    pub fn new(
        accounts: Arc<dyn ObjectStore<ServiceAccount>>,
        limit_ranges: Arc<dyn ObjectStore<LimitRange>>,
        quotas: Arc<dyn ObjectStore<ResourceQuota>>,
        storage_classes: Arc<dyn ObjectStore<StorageClass>>,
        priority_classes: Arc<dyn ObjectStore<PriorityClass>>,
        storage: Arc<dyn Storage>,
    ) -> Self {
        Self {
            accounts,
            limit_ranges,
            quotas,
            storage_classes,
            priority_classes,
            storage,
            counters: RwLock::new(Vec::new()),
        }
    }

    /// Counts a served kind's objects when a new quota is created.
    pub fn count_kind(&self, counter: UsageCounter) {
        self.counters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(counter);
    }
}
