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
    skiff logs pod/web-7d9f-abcde --tail 20 --previous")]
pub struct LogsArgs {
    /// The pod (NAME or pod/NAME).
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
    let mut stream = pods.logs(&pod_name(&args.pod)?, &params).await?;
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
