//! The Namespace controller: a namespace being deleted is emptied — every
//! object of every namespaced kind in it is deleted — and then released
//! (its `kubernetes` finalizer removed), so the API server removes it.
//! New objects are refused meanwhile by the API server itself.

use std::sync::Arc;
use std::time::Duration;

use skiff::api::core::v1::Namespace;
use skiff::client::Error;
use skiff::client::dynamic::{DynamicClient, DynamicKind};
use skiff::params::{DeleteParams, ListParams};
use skiff::runtime::{Action, Controller, ControllerConfig, Request};
use skiff::{KINDS, Resource};

use crate::Context;

/// The finalizer the API server puts on every namespace.
pub const FINALIZER: &str = "kubernetes";

/// Runs the Namespace controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let namespaces = ctx.factory.all::<Namespace>();
    let controller = Controller::new(ControllerConfig {
        workers: ctx.config.workers,
        ..ControllerConfig::new(namespaces)
    });
    let ctx = Arc::new(ctx);
    controller
        .run(
            move |req| {
                let ctx = ctx.clone();
                async move { reconcile(&ctx, req).await }
            },
            shutdown,
        )
        .await;
}

async fn reconcile(ctx: &Context, req: Request<Namespace>) -> Result<Action, Error> {
    let Some(ns) = req.object else {
        return Ok(Action::Done);
    };
    if ns.meta().deletion_timestamp.is_none() {
        return Ok(Action::Done);
    }
    let dynamic = DynamicClient::new(ctx.client.transport());
    let mut remaining = 0usize;
    for info in KINDS.iter().filter(|k| k.namespaced) {
        let kind = DynamicKind::of(info);
        let params = ListParams {
            namespace: ns.name().to_owned(),
            ..Default::default()
        };
        let (items, _) = dynamic.list_all(&kind, &params).await?;
        for item in items {
            remaining += 1;
            let meta = skiff::manifest::message_value(&item);
            let name = meta
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            if meta.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            let params = DeleteParams {
                namespace: ns.name().to_owned(),
                name,
                ..Default::default()
            };
            match dynamic.delete(&kind, &params).await {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        // Pods finish gracefully; look again shortly.
        return Ok(Action::RequeueAfter(Duration::from_millis(500)));
    }
    let mut released = (*ns).clone();
    if let Some(spec) = released.spec.as_mut() {
        spec.finalizers.retain(|f| f != FINALIZER);
    }
    match ctx.client.namespaces().update(&released).await {
        Ok(_) | Err(Error::NotFound(_)) => Ok(Action::Done),
        Err(Error::Conflict(_)) => Ok(Action::RequeueAfter(Duration::from_millis(50))),
        Err(e) => Err(e),
    }
}
