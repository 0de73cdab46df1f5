//! `skiff rollout status`: waits for a deployment's rollout to finish.

use std::time::Duration;

use anyhow::bail;
use clap::{Args as ClapArgs, Subcommand};
use futures::StreamExt;
use skiff::Resource;
use skiff::api::apps::v1::Deployment;
use skiff::params::WatchParams;

use crate::ctx;

/// `skiff rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum Rollout {
    /// Watch a deployment until its rollout finishes (or fails).
    Status(StatusArgs),
}

/// Flags of `skiff rollout status`.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Examples:\n  skiff rollout status deployment/web\n  skiff rollout status deploy web --timeout 2m"
)]
pub struct StatusArgs {
    /// KIND/NAME or KIND (deployments).
    pub kind: String,
    /// Name.
    pub name: Option<String>,
    /// Namespace (default: default).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Give up after this long (0: wait forever).
    #[arg(long, default_value = "0s", value_parser = crate::apiserver::parse_duration)]
    pub timeout: Duration,
}

/// Whether a deployment has rolled out, and what to say if not.
pub fn progress(d: &Deployment) -> Result<Option<String>, String> {
    let name = d.name();
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = &d.status else {
        return Ok(Some(format!(
            "Waiting for deployment \"{name}\" rollout to start..."
        )));
    };
    if let Some(c) = s.conditions.iter().find(|c| c.r#type == "Progressing")
        && c.reason == "ProgressDeadlineExceeded"
    {
        return Err(format!(
            "deployment \"{name}\" exceeded its progress deadline"
        ));
    }
    if s.observed_generation < d.meta().generation {
        return Ok(Some(
            "Waiting for deployment spec update to be observed...".to_string(),
        ));
    }
    if s.updated_replicas < spec_replicas {
        return Ok(Some(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} out of {spec_replicas} new replicas have been updated...",
            s.updated_replicas
        )));
    }
    if s.replicas > s.updated_replicas {
        return Ok(Some(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
            s.replicas - s.updated_replicas
        )));
    }
    if s.available_replicas < s.updated_replicas {
        return Ok(Some(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} of {} updated replicas are available...",
            s.available_replicas, s.updated_replicas
        )));
    }
    Ok(None)
}

/// Runs `skiff rollout`.
pub async fn run(cmd: Rollout, server: Option<&str>) -> anyhow::Result<()> {
    let Rollout::Status(args) = cmd;
    let (kind, name) = ctx::kind_and_name(&args.kind, args.name.as_deref())?;
    if kind.info.kind != "Deployment" {
        bail!(
            "rollout status works on deployments, not {}",
            kind.info.plural
        );
    }
    let client = ctx::client(server).await?;
    let api = client.deployments(&ctx::namespace(&args.namespace));
    let wait = async {
        let mut last = String::new();
        loop {
            let d = api.get(&name).await?;
            match progress(&d) {
                Err(e) => bail!("{e}"),
                Ok(None) => {
                    println!("deployment \"{name}\" successfully rolled out");
                    return Ok(());
                }
                Ok(Some(msg)) => {
                    if msg != last {
                        println!("{msg}");
                        last = msg;
                    }
                }
            }
            // Wake on the next change (or after a while, in any case).
            let params = WatchParams {
                field_selector: format!("metadata.name={name}"),
                resource_version: d.meta().resource_version.clone(),
                timeout_seconds: 10,
                ..Default::default()
            };
            if let Ok(mut w) = api.watch(&params).await {
                let _ = w.next().await;
            }
        }
    };
    if args.timeout.is_zero() {
        wait.await
    } else {
        match tokio::time::timeout(args.timeout, wait).await {
            Ok(r) => r,
            Err(_) => bail!("timed out waiting for the rollout of deployment \"{name}\""),
        }
    }
}
