//! `skiff rollout status`: waits for a deployment's, daemon set's or
//! stateful set's rollout to finish, with kubectl's messages.

use std::time::Duration;

use anyhow::bail;
use clap::{Args as ClapArgs, Subcommand};
use futures::StreamExt;
use skiff::Resource;
use skiff::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use skiff::client::{Api, ResourceClient};
use skiff::params::WatchParams;

use crate::ctx;

/// `skiff rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum Rollout {
    /// Watch a deployment, daemon set or stateful set until its rollout finishes (or fails).
    Status(StatusArgs),
}

/// Flags of `skiff rollout status`.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Examples:\n  skiff rollout status deployment/web\n  skiff rollout status deploy web --timeout 2m\n  skiff rollout status ds/fluentd -n kube-system\n  skiff rollout status statefulset/web"
)]
pub struct StatusArgs {
    /// KIND/NAME or KIND (deployments, daemonsets, statefulsets).
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

/// The done message of a deployment.
fn deployment_done(d: &Deployment) -> String {
    format!("deployment \"{}\" successfully rolled out", d.name())
}

fn rolling_only(kind: &str, strategy: &str) -> Result<(), String> {
    if strategy.is_empty() || strategy == "RollingUpdate" {
        Ok(())
    } else {
        Err(format!(
            "rollout status is only available for RollingUpdate strategy type (the {kind} uses {strategy})"
        ))
    }
}

/// Whether a daemon set has rolled out, and what to say if not.
pub fn daemon_set_progress(d: &DaemonSet) -> Result<Option<String>, String> {
    let name = d.name();
    let strategy = d
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .map(|u| u.r#type.clone())
        .unwrap_or_default();
    rolling_only("daemon set", &strategy)?;
    let s = d.status.clone().unwrap_or_default();
    if d.meta().generation > s.observed_generation {
        return Ok(Some(
            "Waiting for daemon set spec update to be observed...".into(),
        ));
    }
    if s.updated_number_scheduled < s.desired_number_scheduled {
        return Ok(Some(format!(
            "Waiting for daemon set \"{name}\" rollout to finish: {} out of {} new pods have been updated...",
            s.updated_number_scheduled, s.desired_number_scheduled
        )));
    }
    if s.number_available < s.desired_number_scheduled {
        return Ok(Some(format!(
            "Waiting for daemon set \"{name}\" rollout to finish: {} of {} updated pods are available...",
            s.number_available, s.desired_number_scheduled
        )));
    }
    Ok(None)
}

fn daemon_set_done(d: &DaemonSet) -> String {
    format!("daemon set \"{}\" successfully rolled out", d.name())
}

/// Whether a stateful set has rolled out, and what to say if not.
pub fn stateful_set_progress(d: &StatefulSet) -> Result<Option<String>, String> {
    let spec = d.spec.clone().unwrap_or_default();
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    rolling_only("stateful set", &strategy.r#type)?;
    let s = d.status.clone().unwrap_or_default();
    if s.observed_generation == 0 || d.meta().generation > s.observed_generation {
        return Ok(Some(
            "Waiting for statefulset spec update to be observed...".into(),
        ));
    }
    let replicas = spec.replicas.unwrap_or(1);
    if s.ready_replicas < replicas {
        return Ok(Some(format!(
            "Waiting for {} pods to be ready...",
            replicas - s.ready_replicas
        )));
    }
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        if s.updated_replicas < replicas - partition {
            return Ok(Some(format!(
                "Waiting for partitioned roll out to finish: {} out of {} new pods have been updated...",
                s.updated_replicas,
                replicas - partition
            )));
        }
        return Ok(None);
    }
    if s.update_revision != s.current_revision {
        return Ok(Some(format!(
            "waiting for statefulset rolling update to complete {} pods at revision {}...",
            s.updated_replicas, s.update_revision
        )));
    }
    Ok(None)
}

fn stateful_set_done(d: &StatefulSet) -> String {
    let s = d.status.clone().unwrap_or_default();
    let partition = d
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        format!(
            "partitioned roll out complete: {} new pods have been updated...",
            s.updated_replicas
        )
    } else {
        format!(
            "statefulset rolling update complete {} pods at revision {}...",
            s.current_replicas, s.current_revision
        )
    }
}

/// Waits until `progress` says the object has rolled out, printing each new message.
async fn wait_for<K: ResourceClient>(
    api: Api<K>,
    name: &str,
    progress: fn(&K) -> Result<Option<String>, String>,
    done: fn(&K) -> String,
) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let d = api.get(name).await?;
        match progress(&d) {
            Err(e) => bail!("{e}"),
            Ok(None) => {
                println!("{}", done(&d));
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
}

/// Runs `skiff rollout`.
pub async fn run(cmd: Rollout, server: Option<&str>) -> anyhow::Result<()> {
    let Rollout::Status(args) = cmd;
    let (kind, name) = ctx::kind_and_name(&args.kind, args.name.as_deref())?;
    let client = ctx::client(server).await?;
    let ns = ctx::namespace(&args.namespace);
    let what = match kind.info.kind {
        "Deployment" => "deployment",
        "DaemonSet" => "daemon set",
        "StatefulSet" => "statefulset",
        _ => bail!(
            "rollout status works on deployments, daemonsets and statefulsets, not {}",
            kind.info.plural
        ),
    };
    let wait = async {
        match kind.info.kind {
            "Deployment" => {
                wait_for(
                    client.api::<Deployment>(&ns),
                    &name,
                    progress,
                    deployment_done,
                )
                .await
            }
            "DaemonSet" => {
                wait_for(
                    client.api::<DaemonSet>(&ns),
                    &name,
                    daemon_set_progress,
                    daemon_set_done,
                )
                .await
            }
            _ => {
                wait_for(
                    client.api::<StatefulSet>(&ns),
                    &name,
                    stateful_set_progress,
                    stateful_set_done,
                )
                .await
            }
        }
    };
    if args.timeout.is_zero() {
        wait.await
    } else {
        match tokio::time::timeout(args.timeout, wait).await {
            Ok(r) => r,
            Err(_) => bail!("timed out waiting for the rollout of {what} \"{name}\""),
        }
    }
}
