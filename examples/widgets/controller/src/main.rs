//! `widget-controller`: reconciles Widgets into Deployments they own (see
//! the library's doc). Connects as `skiff` does (`~/.skiff/config`, which
//! `skiff up` writes) unless `--server` names an API server.

use clap::Parser;
use skiff::client::Client;
use widget_controller::Config;

/// Reconciles every Widget (acme.example.com/v1) into a Deployment it owns.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// API server address (host:port); default: the one in ~/.skiff/config.
    #[arg(long, env = "SKIFF_SERVER")]
    server: Option<String>,
    /// Image of the Widgets' containers.
    #[arg(long, default_value = "busybox:latest")]
    image: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client = match &args.server {
        Some(server) => Client::connect_to(server).await?,
        None => Client::from_default_config().await?,
    };
    let config = Config {
        image: args.image,
        ..Config::default()
    };
    tracing::info!(server = client.server(), "reconciling widgets");
    widget_controller::run(client, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
