//! The DefaultStorageClass admission plugin: a claim that names no storage
//! class (the field unset, not "") gets the class annotated as the default;
//! with several defaults, the newest wins, as in Kubernetes. Touches only
//! the claim being admitted.

use skiff::Resource;
use skiff::api::core::v1::PersistentVolumeClaim;

use super::{Admission, list_in};
use crate::error::ApiError;
use crate::registry::strategy::DEFAULT_CLASS_ANNOTATION;

impl Admission {
    /// Sets a claim's storage class to the default class if it names none.
    pub async fn default_storage_class(
        &self,
        claim: &mut PersistentVolumeClaim,
    ) -> Result<(), ApiError> {
        let spec = claim.spec.get_or_insert_with(Default::default);
        if spec.storage_class_name.is_some() {
            return Ok(());
        }
        let classes = self
            .storage_classes
            .list(list_in(""))
            .await?
            .into_objects()
            .map_err(|e| ApiError::Internal(format!("decoding a cached list: {e}")))?;
        let default = classes
            .iter()
            .filter(|c| {
                c.meta()
                    .annotations
                    .get(DEFAULT_CLASS_ANNOTATION)
                    .is_some_and(|v| v == "true")
            })
            .max_by_key(|c| {
                let t = c.meta().creation_timestamp.unwrap_or_default();
                (t.seconds, t.nanos, c.name().to_owned())
            });
        if let Some(class) = default {
            spec.storage_class_name = Some(class.name().to_owned());
        }
        Ok(())
    }
}
