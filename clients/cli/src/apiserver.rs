//! `skiff apiserver`: the API server as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};
use skiff_apiserver::{ApiServer, StorageConfig, open_storage};

/// Storage backends.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Backend {
    /// A durable store inside the server process (needs nothing installed).
    Embedded,
    /// An etcd v3 cluster.
    Etcd,
}

/// Flags of `skiff apiserver`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff apiserver                                  # embedded storage in ~/.skiff/data\n  \
    skiff apiserver --listen 127.0.0.1:7443 --data-dir /tmp/skiff\n  \
    skiff apiserver --storage etcd --etcd-endpoints http://127.0.0.1:2379")]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Storage backend.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    pub storage: Backend,
    /// Directory of the embedded store (default: ~/.skiff/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key in etcd (several clusters can share one etcd).
    #[arg(long, default_value = "/skiff")]
    pub etcd_prefix: String,
}

/// The default data directory, `~/.skiff/data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".skiff")
        .join("data")
}

/// Storage configuration from flags.
pub fn storage_config(args: &Args) -> StorageConfig {
    match args.storage {
        Backend::Embedded => StorageConfig::Embedded {
            data_dir: args.data_dir.clone().unwrap_or_else(default_data_dir),
        },
        Backend::Etcd => StorageConfig::Etcd {
            endpoints: args.etcd_endpoints.clone(),
            key_prefix: args.etcd_prefix.clone(),
        },
    }
}

/// Runs the API server until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = storage_config(&args);
    let storage = open_storage(&config)
        .await
        .with_context(|| format!("opening {config:?}"))?;
    let server = ApiServer::new(storage).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another server running there? pick one with --listen",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, storage = ?config, "API server listening");
    // Machines (tests, scripts) read this line to learn the address.
    println!("listening on {addr}");
    server.serve(listener, shutdown_signal()).await?;
    tracing::info!("API server stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
