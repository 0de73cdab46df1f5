//! The ServiceAccount admission plugin: a pod without a service account
//! runs as `default`, a named one must exist, and containers get the
//! account's token in [`TOKEN_ENV`] unless automounting is off. Touches only
//! the pod being admitted.

use skiff::Resource;
use skiff::api::core::v1::{EnvVar, EnvVarSource, Pod, SecretKeySelector};

use super::Admission;
use crate::error::ApiError;
use crate::object_store::ReadVersion;

/// Environment variable pods find their service account's token in.
pub const TOKEN_ENV: &str = "SKIFF_SERVICE_ACCOUNT_TOKEN";

impl Admission {
    /// Pods without a service account run as `default`; they get its token
    /// in [`TOKEN_ENV`] unless automounting is off.
    pub async fn default_service_account(&self, pod: &mut Pod) -> Result<(), ApiError> {
        let ns = pod.namespace().to_owned();
        let pod_name = pod.name().to_owned();
        let Some(spec) = pod.spec.as_mut() else {
            return Ok(());
        };
        if spec.service_account_name.is_empty() {
            spec.service_account_name = if spec.service_account.is_empty() {
                "default".into()
            } else {
                spec.service_account.clone()
            };
        }
        let name = spec.service_account_name.clone();
        // The cache first (cheap); a miss is confirmed with a consistent read.
        let mut account = self.accounts.get(&ns, &name, ReadVersion::Any).await?;
        if account.is_none() && name != "default" {
            account = self.accounts.get(&ns, &name, ReadVersion::Latest).await?;
        }
        let Some(account) = account else {
            if name == "default" {
                // Made by the service-account controller moments after the namespace.
                return Ok(());
            }
            return Err(ApiError::Forbidden(format!(
                "pod {ns}/{pod_name}: service account {ns}/{name} does not exist \
                 (spec.serviceAccountName); create it first"
            )));
        };
        let automount = spec
            .automount_service_account_token
            .or(account.automount_service_account_token)
            .unwrap_or(true);
        let Some(secret) = account.secrets.first().map(|s| s.name.clone()) else {
            return Ok(());
        };
        if !automount {
            return Ok(());
        }
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut())
        {
            if c.env.iter().any(|e| e.name == TOKEN_ENV) {
                continue;
            }
            c.env.push(EnvVar {
                name: TOKEN_ENV.into(),
                value: String::new(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: "token".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                }),
            });
        }
        Ok(())
    }
}
