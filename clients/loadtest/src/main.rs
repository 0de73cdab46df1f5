//! `skiff-loadtest`: streaming load tests against a Skiff API server.

mod lite;
mod report;
mod server;
mod watch;

use clap::{Parser, Subcommand};

/// Streaming load tests for Skiff. Each scenario prints a progress bar while
/// it runs and a summary at the end (`--json` for machines).
#[derive(Parser)]
#[command(name = "skiff-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Watch fan-out: many watchers, many writers, delivery rate and latency.
    Watch(watch::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.scenario {
            Scenario::Watch(args) => watch::run(args).await,
        }
    })
}
