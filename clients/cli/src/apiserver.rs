//! `skiff apiserver`: the API server as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};
use std::time::Duration;

use skiff_apiserver::{ApiServer, ServerConfig, StorageConfig, open_storage};

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
    /// Serve lists and watches from the watch cache (false: from storage).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_cache: bool,
    /// How often storage history is compacted (e.g. 5m, 30s; 0 never).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub compaction_interval: Duration,
    /// How often watchers that ask for bookmarks get one.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub bookmark_interval: Duration,
    /// Range Services' cluster IPs come from (inside 127.0.0.0/8, they answer on this machine).
    #[arg(long, default_value = skiff_apiserver::allocator::DEFAULT_SERVICE_CIDR)]
    pub service_cluster_ip_range: String,
    /// Range of NodePort services' ports, e.g. 30000-32767.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: std::ops::RangeInclusive<u16>,
}

/// Parses "30000-32767".
pub fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad = || format!("{s:?} is not a port range like 30000-32767");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

/// Parses "500ms", "30s", "5m", "1h" or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s or 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Server configuration from flags.
pub fn server_config(args: &Args) -> ServerConfig {
    let mut config = ServerConfig::default();
    if args.watch_cache {
        if let Some(c) = config.watch_cache.as_mut() {
            c.bookmark_interval = args.bookmark_interval.max(Duration::from_millis(10));
        }
    } else {
        config.watch_cache = None;
    }
    config.compaction_interval =
        (!args.compaction_interval.is_zero()).then_some(args.compaction_interval);
    config.service_cidr = args.service_cluster_ip_range.clone();
    config.node_ports = args.service_node_port_range.clone();
    config
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
    let server = ApiServer::with_config(storage, server_config(&args)).await?;
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
