//! The scale subresource of replica sets, deployments and stateful sets: a write of
//! `spec.replicas` alone, as `kubectl scale` makes it.
//!
//! Owns the scale methods; the replica count's validation stays in the kinds'
//! strategies.

use skiff::resource::object_key;
use skiff::{Resource, api};
use tonic::{Request, Response, Status};

use super::service::ResourceServer;
use crate::error::ApiError;

macro_rules! scale_subresource {
    ($kind:ty, $trait:ident, $method:ident, $req:ty, $resp:ty, $field:ident) => {
        #[tonic::async_trait]
        impl skiff::subresources::$trait for ResourceServer<$kind> {
            async fn $method(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                let ns = self.namespace_of(&request.get_ref().namespace);
                self.authorize(
                    request.extensions(),
                    "update",
                    "scale",
                    &ns,
                    &request.get_ref().name,
                )
                .await?;
                let r = request.into_inner();
                let ns = self.namespace_of(&r.namespace);
                self.require_name(&r.name)?;
                if r.replicas < 0 {
                    return Err(ApiError::invalid(
                        self.kind(),
                        &object_key(&ns, &r.name),
                        "replicas",
                        "must not be negative",
                    )
                    .into());
                }
                let obj = self
                    .guaranteed_update(&ns, &r.name, |old| {
                        if old.spec.as_ref().and_then(|s| s.replicas) == Some(r.replicas) {
                            return Ok(None);
                        }
                        let mut new = old.clone();
                        new.spec.get_or_insert_with(Default::default).replicas = Some(r.replicas);
                        new.meta_mut().generation += 1;
                        Ok(Some(new))
                    })
                    .await?;
                Ok(Response::new(<$resp>::from_object(obj)))
            }
        }
    };
}

/// Builds a scale response from the scaled object.
trait FromObject<K> {
    fn from_object(obj: K) -> Self;
}

impl FromObject<api::apps::v1::ReplicaSet> for api::apps::v1::ScaleReplicaSetResponse {
    fn from_object(obj: api::apps::v1::ReplicaSet) -> Self {
        Self {
            replica_set: Some(obj),
        }
    }
}

impl FromObject<api::apps::v1::StatefulSet> for api::apps::v1::ScaleStatefulSetResponse {
    fn from_object(obj: api::apps::v1::StatefulSet) -> Self {
        Self {
            stateful_set: Some(obj),
        }
    }
}

impl FromObject<api::apps::v1::Deployment> for api::apps::v1::ScaleDeploymentResponse {
    fn from_object(obj: api::apps::v1::Deployment) -> Self {
        Self {
            deployment: Some(obj),
        }
    }
}

scale_subresource!(
    api::apps::v1::ReplicaSet,
    ReplicaSetSubresources,
    scale_replica_set,
    api::apps::v1::ScaleReplicaSetRequest,
    api::apps::v1::ScaleReplicaSetResponse,
    replica_set
);
scale_subresource!(
    api::apps::v1::Deployment,
    DeploymentSubresources,
    scale_deployment,
    api::apps::v1::ScaleDeploymentRequest,
    api::apps::v1::ScaleDeploymentResponse,
    deployment
);
scale_subresource!(
    api::apps::v1::StatefulSet,
    StatefulSetSubresources,
    scale_stateful_set,
    api::apps::v1::ScaleStatefulSetRequest,
    api::apps::v1::ScaleStatefulSetResponse,
    stateful_set
);
