//! Service accounts and their tokens: every active namespace has a
//! `default` ServiceAccount; every ServiceAccount has a token Secret holding
//! a signed token the API server accepts; token secrets whose account is
//! gone are deleted (which revokes them).

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rand::Rng;
use skiff::Resource;
use skiff::api::core::v1::{Namespace, ObjectReference, Secret, ServiceAccount};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Error;
use skiff::params::DeleteParams;
use skiff::runtime::{Action, Controller, ControllerConfig, ObjectKey, Request, Store, Trigger};

use crate::Context;

/// Type of token secrets.
pub const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation naming a token secret's account.
pub const SA_NAME: &str = "kubernetes.io/service-account.name";
/// Annotation holding a token secret's account uid.
pub const SA_UID: &str = "kubernetes.io/service-account.uid";

/// Runs the controller that gives each namespace its `default` account.
pub async fn run_accounts(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let namespaces = ctx.factory.all::<Namespace>();
    let accounts = ctx.factory.all::<ServiceAccount>();
    let controller = Controller::new(ControllerConfig {
        triggers: vec![Trigger::mapped(&accounts, |sa: &ServiceAccount| {
            (sa.name() == "default")
                .then(|| ObjectKey::new("", sa.namespace()))
                .into_iter()
                .collect()
        })],
        workers: ctx.config.workers,
        ..ControllerConfig::new(namespaces)
    });
    let store = accounts.store();
    let ctx = Arc::new(ctx);
    controller
        .run(
            move |req: Request<Namespace>| {
                let (ctx, store) = (ctx.clone(), store.clone());
                async move {
                    let Some(ns) = req.object else {
                        return Ok(Action::Done);
                    };
                    if ns.meta().deletion_timestamp.is_some()
                        || store.get(&ObjectKey::new(ns.name(), "default")).is_some()
                    {
                        return Ok(Action::Done);
                    }
                    let sa = ServiceAccount {
                        metadata: Some(ObjectMeta {
                            name: "default".into(),
                            namespace: ns.name().to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    match ctx.client.service_accounts(ns.name()).create(&sa).await {
                        Ok(_) | Err(Error::AlreadyExists(_)) => Ok(Action::Done),
                        // The namespace is terminating: nothing to do.
                        Err(Error::FailedPrecondition(_) | Error::NotFound(_)) => Ok(Action::Done),
                        Err(e) => Err::<Action, Error>(e),
                    }
                }
            },
            shutdown,
        )
        .await;
}

struct Tokens {
    ctx: Context,
    key: Arc<SigningKey>,
    secrets: Store<Secret>,
}

/// Runs the token controller until `shutdown`.
pub async fn run_tokens(
    ctx: Context,
    key: Arc<SigningKey>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let accounts = ctx.factory.all::<ServiceAccount>();
    let secrets = ctx.factory.all::<Secret>();
    let controller = Controller::new(ControllerConfig {
        triggers: vec![Trigger::mapped(&secrets, |s: &Secret| {
            if s.r#type != TOKEN_TYPE {
                return Vec::new();
            }
            s.meta()
                .annotations
                .get(SA_NAME)
                .map(|name| ObjectKey::new(s.namespace(), name))
                .into_iter()
                .collect()
        })],
        workers: ctx.config.workers,
        ..ControllerConfig::new(accounts)
    });
    let tokens = Arc::new(Tokens {
        ctx,
        key,
        secrets: secrets.store(),
    });
    controller
        .run(
            move |req| {
                let tokens = tokens.clone();
                async move { tokens.reconcile(req).await }
            },
            shutdown,
        )
        .await;
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Tokens {
    async fn reconcile(&self, req: Request<ServiceAccount>) -> Result<Action, Error> {
        let ns = req.key.namespace.clone();
        let secrets_api = self.ctx.client.secrets(&ns);
        let tokens: Vec<Arc<Secret>> = self
            .secrets
            .in_namespace(&ns)
            .into_iter()
            .filter(|s| {
                s.r#type == TOKEN_TYPE && s.meta().annotations.get(SA_NAME) == Some(&req.key.name)
            })
            .collect();
        let live_uid = req.object.as_ref().map(|sa| sa.meta().uid.clone());
        // Tokens of an account that is gone (or was recreated) are revoked.
        for s in &tokens {
            if live_uid.as_deref() != s.meta().annotations.get(SA_UID).map(String::as_str) {
                match secrets_api.delete(s.name(), &DeleteParams::default()).await {
                    Ok(_) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let Some(sa) = req.object else {
            return Ok(Action::Done);
        };
        if sa.meta().deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = sa.meta().uid.clone();
        let mut valid: Vec<&Arc<Secret>> = tokens
            .iter()
            .filter(|s| s.meta().annotations.get(SA_UID) == Some(&uid))
            .collect();
        let secret_name = match valid.pop() {
            Some(s) => s.name().to_owned(),
            None => {
                let name = format!("{}-token-{}", sa.name(), random_suffix());
                let claims = skiff::token::Claims::new(&ns, sa.name(), &uid, &name);
                let token = skiff::token::sign(&claims, &self.key);
                let secret = Secret {
                    metadata: Some(ObjectMeta {
                        name: name.clone(),
                        namespace: ns.clone(),
                        annotations: [
                            (SA_NAME.to_string(), sa.name().to_owned()),
                            (SA_UID.to_string(), uid.clone()),
                        ]
                        .into(),
                        ..Default::default()
                    }),
                    data: [
                        ("token".to_string(), token.into_bytes()),
                        ("namespace".to_string(), ns.clone().into_bytes()),
                    ]
                    .into(),
                    string_data: Default::default(),
                    r#type: TOKEN_TYPE.into(),
                    immutable: None,
                };
                match secrets_api.create(&secret).await {
                    Ok(_) => {}
                    Err(Error::FailedPrecondition(_) | Error::NotFound(_)) => {
                        return Ok(Action::Done);
                    }
                    Err(e) => return Err(e),
                }
                name
            }
        };
        if !sa.secrets.iter().any(|r| r.name == secret_name) {
            let mut updated = (*sa).clone();
            updated.secrets.retain(|r| {
                tokens
                    .iter()
                    .any(|t| t.name() == r.name && t.meta().annotations.get(SA_UID) == Some(&uid))
            });
            updated.secrets.push(ObjectReference {
                name: secret_name,
                ..Default::default()
            });
            match self.ctx.client.service_accounts(&ns).update(&updated).await {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(Error::Conflict(_)) => {
                    return Ok(Action::RequeueAfter(Duration::from_millis(50)));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Action::Done)
    }
}
