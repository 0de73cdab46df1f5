//! A service account's token subresource (Kubernetes' TokenRequest): a
//! signed token for some audiences and a bounded lifetime, bound to a pod
//! when one is named, so that it stops working with the pod. Kubelets
//! ask for the tokens of projected volumes here, only for pods bound to
//! their node.
//!
//! Owns that one method; must not store anything (tokens are not objects).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use skiff::resource::object_key;
use skiff::{Resource, api};
use tonic::{Request, Response, Status};

use super::service::{Origin, ResourceServer};
use crate::error::ApiError;
use crate::filters::caller;
use crate::object_store::ReadVersion;

/// Shortest lifetime a token may be asked for (Kubernetes: 10 minutes).
pub const MIN_TOKEN_SECONDS: i64 = 600;
/// Lifetime of a token when none is asked for (an hour).
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;
/// Longest lifetime the server grants (Kubernetes' default maximum: 48 h).
pub const MAX_TOKEN_SECONDS: i64 = 48 * 3600;

/// The key the API server signs requested tokens with.
#[derive(Clone)]
pub struct TokenSigner(pub Arc<SigningKey>);

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

#[tonic::async_trait]
impl skiff::subresources::ServiceAccountSubresources
    for ResourceServer<api::core::v1::ServiceAccount>
{
    async fn create_service_account_token(
        &self,
        request: Request<api::core::v1::CreateServiceAccountTokenRequest>,
    ) -> Result<Response<api::core::v1::CreateServiceAccountTokenResponse>, Status> {
        let ns = self.namespace_of(&request.get_ref().namespace);
        let name = request.get_ref().name.clone();
        self.authorize(request.extensions(), "create", "token", &ns, &name)
            .await?;
        let user = caller(request.extensions());
        let r = request.into_inner();
        self.require_name(&name)?;
        let key = object_key(&ns, &name);
        let Some(signer) = self.ctx.token_signer.clone() else {
            return Err(ApiError::FailedPrecondition(format!(
                "serviceaccount {key:?}: this API server has no service-account signing key \
                 (start it with --service-account-key-file)"
            ))
            .into());
        };
        let seconds = r.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
        if seconds < MIN_TOKEN_SECONDS {
            return Err(ApiError::invalid(
                "ServiceAccount",
                &key,
                "expiration_seconds",
                format!("{seconds}: may not specify a duration less than 10 minutes"),
            )
            .into());
        }
        let seconds = seconds.min(MAX_TOKEN_SECONDS);
        let account = self.existing(&ns, &name, Origin::Fresh).await?;
        let mut claims = skiff::token::Claims::new(&ns, &name, &account.meta().uid, "");
        if let Some(bound) = &r.bound_object_ref {
            if bound.kind != "Pod" {
                return Err(ApiError::invalid(
                    "ServiceAccount",
                    &key,
                    "bound_object_ref.kind",
                    format!("{:?}: only Pod is supported", bound.kind),
                )
                .into());
            }
            let pods = self
                .ctx
                .pods
                .clone()
                .ok_or_else(|| ApiError::Internal("the pod store is not set up".into()))?;
            let pod = pods
                .get(&ns, &bound.name, ReadVersion::Latest)
                .await?
                .filter(|p| bound.uid.is_empty() || p.meta().uid == bound.uid)
                .ok_or_else(|| ApiError::NotFound {
                    kind: "Pod".into(),
                    name: object_key(&ns, &bound.name),
                })?;
            let spec = pod.spec.clone().unwrap_or_default();
            if spec.service_account_name != name {
                return Err(ApiError::invalid(
                    "ServiceAccount",
                    &key,
                    "bound_object_ref.name",
                    format!(
                        "pod {:?} runs as service account {:?}, not {name:?}",
                        bound.name, spec.service_account_name
                    ),
                )
                .into());
            }
            if let Some(node) = user.node_name()
                && spec.node_name != node
            {
                return Err(ApiError::Forbidden(format!(
                    "node {node:?}: may only request tokens for pods bound to it; pod {:?} is \
                     on {:?}",
                    bound.name, spec.node_name
                ))
                .into());
            }
            claims.pod = Some(skiff::token::BoundPod {
                name: pod.name().to_owned(),
                uid: pod.meta().uid.clone(),
            });
        } else if let Some(node) = user.node_name() {
            return Err(ApiError::Forbidden(format!(
                "node {node:?}: may only request tokens bound to pods on it (bound_object_ref)"
            ))
            .into());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let expires = now + Duration::from_secs(seconds as u64);
        claims.iat = Some(now.as_secs());
        claims.exp = Some(expires.as_secs());
        claims.aud = if r.audiences.is_empty() {
            vec![skiff::token::API_AUDIENCE.to_owned()]
        } else {
            r.audiences.clone()
        };
        let token = skiff::token::sign(&claims, &signer.0);
        Ok(Response::new(
            api::core::v1::CreateServiceAccountTokenResponse {
                token,
                expiration_timestamp: Some((UNIX_EPOCH + expires).into()),
                audiences: claims.aud,
            },
        ))
    }
}
