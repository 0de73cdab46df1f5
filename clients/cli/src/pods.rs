//! Commands that reach into a pod through its kubelet: `logs` and `exec`.

use std::io::Write;

use anyhow::bail;
use clap::Args as ClapArgs;
use futures::StreamExt;
use skiff::client::LogParams;

use crate::ctx;

/// Flags of `skiff logs`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff logs web-7d9f-abcde\n  \
    skiff logs web-7d9f-abcde -c sidecar -f\n  \
    skiff logs pod/web-7d9f-abcde --tail 20 --previous\n  \
    skiff logs job/pi                   # a pod of the job\n  \
    skiff logs deploy/web -f            # a pod of the deployment")]
pub struct LogsArgs {
    /// The pod (NAME or pod/NAME), or KIND/NAME of a job, deployment,
    /// replica set, stateful set or daemon set (one of its pods).
    pub pod: String,
    /// Container (may be left out when the pod has one).
    #[arg(short, long)]
    pub container: Option<String>,
    /// Keep streaming new output.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<i64>,
    /// The log of the previous instance of the container (after a restart).
    #[arg(short, long)]
    pub previous: bool,
    /// Namespace (default: default).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Flags of `skiff exec`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff exec web-7d9f-abcde -- cat /etc/hostname\n  \
    skiff exec web-7d9f-abcde -c sidecar -- sh -c 'echo $POD_IP'")]
pub struct ExecArgs {
    /// The pod (NAME or pod/NAME).
    pub pod: String,
    /// Container (may be left out when the pod has one).
    #[arg(short, long)]
    pub container: Option<String>,
    /// Namespace (default: default).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn pod_name(arg: &str) -> anyhow::Result<String> {
    match arg.split_once('/') {
        None => Ok(arg.to_owned()),
        Some(("pod" | "pods" | "po", name)) => Ok(name.to_owned()),
        Some((kind, _)) => bail!("{kind:?} is not a pod; name a pod (NAME or pod/NAME)"),
    }
}

/// A pod of a workload, as kubectl picks one for `logs`: running and ready
/// first, then the oldest; says which when there are several.
async fn pick_pod(
    client: &skiff::client::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<String> {
    use skiff::Resource;
    use skiff::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
    use skiff::api::batch::v1::Job;
    let (kind_info, _) = ctx::kind_and_name(kind, Some(name))?;
    let selector = match kind_info.info.kind {
        "Job" => client
            .api::<Job>(namespace)
            .get(name)
            .await?
            .spec
            .and_then(|s| s.selector),
        "Deployment" => client
            .api::<Deployment>(namespace)
            .get(name)
            .await?
            .spec
            .and_then(|s| s.selector),
        "ReplicaSet" => client
            .api::<ReplicaSet>(namespace)
            .get(name)
            .await?
            .spec
            .and_then(|s| s.selector),
        "StatefulSet" => client
            .api::<StatefulSet>(namespace)
            .get(name)
            .await?
            .spec
            .and_then(|s| s.selector),
        "DaemonSet" => client
            .api::<DaemonSet>(namespace)
            .get(name)
            .await?
            .spec
            .and_then(|s| s.selector),
        other => bail!(
            "cannot pick a pod of a {other}; name a pod, or a job, deployment, replica set, stateful set or daemon set"
        ),
    };
    let selector = selector
        .map(|s| skiff::selector::LabelSelector::from_proto(&s))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{kind}/{name} has a bad selector: {}", e.reason))?
        .ok_or_else(|| anyhow::anyhow!("{kind}/{name} has no selector"))?;
    let params = skiff::params::ListParams {
        label_selector: selector.to_string(),
        ..Default::default()
    };
    let mut pods = client.pods(namespace).list(&params).await?.items;
    if pods.is_empty() {
        bail!("no pods of {kind}/{name} in namespace {namespace}");
    }
    let rank = |p: &skiff::api::core::v1::Pod| {
        let status = p.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True");
        let t = p.meta().creation_timestamp.unwrap_or_default();
        (status.phase != "Running", !ready, t.seconds, t.nanos)
    };
    pods.sort_by_key(rank);
    let chosen = pods[0].name().to_owned();
    if pods.len() > 1 {
        eprintln!("Found {} pods, using pod/{chosen}", pods.len());
    }
    Ok(chosen)
}

/// Runs `skiff logs`.
pub async fn logs(args: LogsArgs, server: Option<&str>) -> anyhow::Result<()> {
    let client = ctx::client(server).await?;
    let pods = client.pods(&ctx::namespace(&args.namespace));
    let params = LogParams {
        container: args.container.unwrap_or_default(),
        follow: args.follow,
        tail_lines: args.tail,
        previous: args.previous,
    };
    let name = match args.pod.split_once('/') {
        Some((kind, owner)) if !matches!(kind, "pod" | "pods" | "po") => {
            pick_pod(&client, &ctx::namespace(&args.namespace), kind, owner).await?
        }
        _ => pod_name(&args.pod)?,
    };
    let mut stream = pods.logs(&name, &params).await?;
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if out.write_all(&chunk).and_then(|_| out.flush()).is_err() {
            // The reader went away (`| head`).
            return Ok(());
        }
    }
    Ok(())
}

/// Runs `skiff exec`; exits with the command's exit code.
pub async fn exec(args: ExecArgs, server: Option<&str>) -> anyhow::Result<()> {
    let client = ctx::client(server).await?;
    let pods = client.pods(&ctx::namespace(&args.namespace));
    let mut stream = pods
        .exec(
            &pod_name(&args.pod)?,
            args.container.as_deref().unwrap_or(""),
            &args.command,
        )
        .await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut code = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if !chunk.stdout.is_empty() {
            let _ = out.write_all(&chunk.stdout).and_then(|_| out.flush());
        }
        if !chunk.stderr.is_empty() {
            let _ = err.write_all(&chunk.stderr).and_then(|_| err.flush());
        }
        if chunk.exit_code.is_some() {
            code = chunk.exit_code;
        }
    }
    match code {
        Some(0) => Ok(()),
        Some(c) => std::process::exit(if (0..=255).contains(&c) { c } else { 1 }),
        None => bail!("the command's stream ended without an exit code (the kubelet went away?)"),
    }
}
