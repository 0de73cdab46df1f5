//! The NamespaceLifecycle admission plugin: a namespaced object may be
//! created only in a namespace that exists and is not being terminated.
//! Reads namespaces; changes nothing.

use skiff::Resource;
use skiff::api::core::v1::Namespace;

use crate::error::ApiError;
use crate::object_store::{ObjectStore, ReadVersion};

/// Refuses creating a `kind` in namespace `ns` unless it is active.
pub async fn check_create(
    namespaces: &dyn ObjectStore<Namespace>,
    kind: &str,
    ns: &str,
) -> Result<(), ApiError> {
    // The watch cache answers the common case (an active namespace) at
    // once; a miss or a terminating one is confirmed with a consistent read.
    let cached = namespaces.get("", ns, ReadVersion::Any).await?;
    let namespace = match cached {
        Some(n) if n.meta().deletion_timestamp.is_none() => Some(n),
        _ => namespaces.get("", ns, ReadVersion::Latest).await?,
    };
    match namespace {
        None => Err(ApiError::NotFound {
            kind: "Namespace".into(),
            name: ns.to_owned(),
        }),
        Some(n) if n.meta().deletion_timestamp.is_some() => {
            Err(ApiError::FailedPrecondition(format!(
                "unable to create {kind} in namespace {ns:?}: the namespace is being terminated"
            )))
        }
        Some(_) => Ok(()),
    }
}
