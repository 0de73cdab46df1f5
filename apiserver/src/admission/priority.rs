//! The Priority admission plugin: a pod's `priorityClassName` becomes its
//! `priority` (and preemption policy) from the PriorityClass of that name;
//! a pod naming no class gets the global default class, if there is one.
//! Only one class may be the global default. Touches only the object
//! being admitted.

use skiff::Resource;
use skiff::api::core::v1::Pod;
use skiff::api::scheduling::v1::PriorityClass;

use super::{Admission, list_in};
use crate::error::ApiError;
use crate::object_store::ReadVersion;

impl Admission {
    async fn priority_classes(&self) -> Result<Vec<PriorityClass>, ApiError> {
        self.priority_classes
            .list(list_in(""))
            .await?
            .into_objects()
            .map_err(|e| ApiError::Internal(format!("decoding a cached list: {e}")))
    }

    /// Refuses a second class marked `globalDefault`.
    pub async fn check_single_default_priority_class(
        &self,
        class: &PriorityClass,
    ) -> Result<(), ApiError> {
        if !class.global_default {
            return Ok(());
        }
        if let Some(other) = self
            .priority_classes()
            .await?
            .into_iter()
            .find(|c| c.global_default && c.name() != class.name())
        {
            return Err(ApiError::Forbidden(format!(
                "priorityclass {:?}: PriorityClass {} is already marked as default. Only one \
                 default can exist",
                class.name(),
                other.name()
            )));
        }
        Ok(())
    }

    /// Sets a pod's priority from its PriorityClass (or the default class).
    pub async fn assign_pod_priority(&self, pod: &mut Pod) -> Result<(), ApiError> {
        let key = format!("{}/{}", pod.namespace(), pod.name());
        let Some(spec) = pod.spec.as_mut() else {
            return Ok(());
        };
        let class = if spec.priority_class_name.is_empty() {
            if spec.priority.is_some() {
                // An explicit priority without a class is kept as written.
                return Ok(());
            }
            match self
                .priority_classes()
                .await?
                .into_iter()
                .filter(|c| c.global_default)
                .min_by_key(|c| c.value)
            {
                Some(c) => {
                    spec.priority_class_name = c.name().to_owned();
                    c
                }
                None => return Ok(()),
            }
        } else {
            let name = spec.priority_class_name.clone();
            let mut found = self
                .priority_classes
                .get("", &name, ReadVersion::Any)
                .await?;
            if found.is_none() {
                found = self
                    .priority_classes
                    .get("", &name, ReadVersion::Latest)
                    .await?;
            }
            found.ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "pod {key}: no PriorityClass with name {name} was found \
                     (spec.priorityClassName); create it first or name another"
                ))
            })?
        };
        if let Some(p) = spec.priority
            && p != class.value
        {
            return Err(ApiError::Forbidden(format!(
                "pod {key}: the integer value of priority ({p}) must not be provided in pod \
                 spec; priority admission controller computed {} from the given PriorityClass \
                 name",
                class.value
            )));
        }
        spec.priority = Some(class.value);
        if spec.preemption_policy.is_empty()
            && let Some(p) = &class.preemption_policy
        {
            spec.preemption_policy = p.clone();
        }
        Ok(())
    }
}
