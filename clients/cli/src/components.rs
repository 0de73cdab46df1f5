//! Control-plane components as their own processes: `skiff scheduler`
//! (and, as they arrive, the controller manager, kubelet and proxy).

use std::sync::Arc;

use clap::Args as ClapArgs;
use skiff::runtime::LeaderElectionConfig;

use crate::{apiserver, ctx};

/// Flags of `skiff scheduler`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff scheduler                          # against ~/.skiff/config's server\n  \
    skiff scheduler --server 127.0.0.1:6443 --leader-elect=false")]
pub struct SchedulerArgs {
    /// Elect one active replica through a Lease in skiff-system.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// This replica's identity (default: hostname and process id).
    #[arg(long)]
    pub identity: Option<String>,
    /// Percentage of nodes to evaluate on big clusters (default: adaptive).
    #[arg(long)]
    pub percentage_of_nodes_to_score: Option<u32>,
}

/// A default identity: host name and process id.
pub fn default_identity(component: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{component}-{host}-{}", std::process::id())
}

/// Runs `skiff scheduler` until Ctrl-C or SIGTERM.
pub async fn scheduler(args: SchedulerArgs, server: Option<&str>) -> anyhow::Result<()> {
    let client = ctx::client(server).await?;
    let identity = args
        .identity
        .unwrap_or_else(|| default_identity("scheduler"));
    let mut config = skiff_scheduler::SchedulerConfig::new(&identity);
    config.percentage_of_nodes_to_score = args.percentage_of_nodes_to_score;
    if args.leader_elect {
        config.leader_election = Some(LeaderElectionConfig::new(
            "skiff-system",
            "skiff-scheduler",
            &identity,
        ));
    }
    tracing::info!(server = client.server(), %identity, "scheduler starting");
    let stats = Arc::new(skiff_scheduler::SchedulerStats::default());
    skiff_scheduler::run(client, config, stats, apiserver::shutdown_signal()).await?;
    Ok(())
}
