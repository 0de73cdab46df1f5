//! `skiff apiserver`: the API server as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};
use std::time::Duration;

use skiff_apiserver::server::{SecurityConfig, TlsPem};
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
    skiff apiserver --insecure                       # plaintext, no auth: local exploration with grpcurl\n  \
    skiff apiserver --tls-cert-file apiserver.crt --tls-key-file apiserver.key \\\n      \
    --client-ca-file ca.crt --token-auth-file tokens.csv --service-account-key-file sa.key\n  \
    skiff apiserver --insecure --listen 127.0.0.1:7443 --data-dir /tmp/skiff\n  \
    skiff apiserver --insecure --storage etcd --etcd-endpoints http://127.0.0.1:2379")]
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
    /// How long to wait at start for an etcd quorum to answer before giving up.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub etcd_wait: Duration,
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
    #[arg(long, default_value = skiff_apiserver::allocation::DEFAULT_SERVICE_CIDR)]
    pub service_cluster_ip_range: String,
    /// Range of NodePort services' ports, e.g. 30000-32767.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: std::ops::RangeInclusive<u16>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Who may connect and what they may do.
#[derive(Debug, Clone, ClapArgs)]
pub struct SecurityArgs {
    /// Local exploration only: plaintext, no authentication, every request
    /// acts as an administrator.
    #[arg(long, conflicts_with_all = ["tls_cert_file", "token_auth_file", "client_ca_file"])]
    pub insecure: bool,
    /// Serve plaintext gRPC (credentials still required) instead of TLS.
    #[arg(long)]
    pub plaintext: bool,
    /// PEM certificate the server proves itself with (TLS).
    #[arg(long, requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// CA whose client certificates authenticate users (CN = user, O = groups).
    #[arg(long, requires = "tls_cert_file")]
    pub client_ca_file: Option<PathBuf>,
    /// Static bearer tokens, one `token,user,uid,"group1,group2"` per line.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Key of service-account tokens (the controller manager's
    /// --service-account-key-file; created if missing).
    #[arg(long)]
    pub service_account_key_file: Option<PathBuf>,
    /// Requests without credentials act as system:anonymous (else UNAUTHENTICATED).
    #[arg(long)]
    pub anonymous_auth: bool,
    /// How requests are authorized.
    #[arg(long, value_enum, default_value_t = AuthorizationMode::Rbac)]
    pub authorization_mode: AuthorizationMode,
    /// Write one JSON line per request to this file.
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// What audit lines hold.
    #[arg(long, value_enum, default_value_t = AuditLevelFlag::Metadata)]
    pub audit_level: AuditLevelFlag,
    /// Read-only requests in flight at once (0: no limit).
    #[arg(long, default_value_t = 400)]
    pub max_requests_inflight: usize,
    /// Mutating requests in flight at once (0: no limit).
    #[arg(long, default_value_t = 200)]
    pub max_mutating_requests_inflight: usize,
    /// Watches one user may hold open [default: 1000; 0: no limit]. Not with
    /// --insecure, where every request is the same user.
    #[arg(long)]
    pub max_watches_per_user: Option<usize>,
}

/// Authorization modes.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Role-based access control (Roles, ClusterRoles and their bindings).
    #[value(name = "RBAC")]
    Rbac,
    /// Every authenticated request is allowed.
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

/// Audit levels.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuditLevelFlag {
    /// Log nothing.
    None,
    /// User, verb, kind, namespace, name, code and latency.
    Metadata,
    /// Metadata and the request's selectors and versions.
    Request,
}

/// Watches one user may hold open when `--max-watches-per-user` is not given.
const DEFAULT_MAX_WATCHES_PER_USER: usize = 1000;

/// The server's security configuration from flags.
pub fn security_config(args: &SecurityArgs) -> anyhow::Result<SecurityConfig> {
    use skiff_apiserver::authn::{AuthConfig, StaticTokens};
    use skiff_apiserver::filters::{AuditLevel, LimitsConfig};
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    if args.insecure && args.max_watches_per_user.is_some_and(|n| n > 0) {
        anyhow::bail!(
            "--max-watches-per-user limits each user, and with --insecure every request is the same \
             administrator: drop the flag (or pass 0), or run with credentials (`skiff up` sets them up)"
        );
    }
    let max_watches_per_user = args
        .max_watches_per_user
        .unwrap_or(DEFAULT_MAX_WATCHES_PER_USER);
    let mut security = SecurityConfig {
        limits: (args.max_requests_inflight > 0
            || args.max_mutating_requests_inflight > 0
            || max_watches_per_user > 0)
            .then(|| LimitsConfig {
                max_read_only: nonzero_or_max(args.max_requests_inflight),
                max_mutating: nonzero_or_max(args.max_mutating_requests_inflight),
                max_watches_per_user: nonzero_or_max(max_watches_per_user),
                ..Default::default()
            }),
        audit: match (&args.audit_log_path, args.audit_level) {
            (Some(_), AuditLevelFlag::None) | (None, _) => None,
            (Some(p), AuditLevelFlag::Metadata) => Some((p.clone(), AuditLevel::Metadata)),
            (Some(p), AuditLevelFlag::Request) => Some((p.clone(), AuditLevel::Request)),
        },
        ..Default::default()
    };
    if args.insecure {
        // Tokens can still be requested (projected volumes), though none is checked.
        if let Some(p) = &args.service_account_key_file {
            security.token_signer = Some(skiff_apiserver::registry::service_account::TokenSigner(
                std::sync::Arc::new(skiff::token::load_or_create_key(p)?),
            ));
        }
        // Everyone is the same administrator: per-user shares mean nothing.
        if let Some(l) = security.limits.as_mut() {
            l.per_user_fraction = 1.0;
            l.max_watches_per_user = nonzero_or_max(0);
        }
        return Ok(security);
    }
    match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            security.tls = Some(TlsPem {
                cert: read(cert)?,
                key: read(key)?,
                client_ca: args.client_ca_file.as_ref().map(read).transpose()?,
            })
        }
        _ if args.plaintext => {}
        _ => anyhow::bail!(
            "no TLS identity: pass --tls-cert-file and --tls-key-file, \
             --plaintext to serve plaintext with credentials, or --insecure for local exploration"
        ),
    }
    let mut auth = AuthConfig {
        anonymous: args.anonymous_auth,
        ..Default::default()
    };
    if let Some(p) = &args.token_auth_file {
        auth.tokens = StaticTokens::load(p).map_err(|e| anyhow::anyhow!(e))?;
    }
    if let Some(p) = &args.service_account_key_file {
        let key = skiff::token::load_or_create_key(p)?;
        auth.service_account_key = Some(key.verifying_key());
        security.token_signer = Some(skiff_apiserver::registry::service_account::TokenSigner(
            std::sync::Arc::new(key),
        ));
    }
    if args.token_auth_file.is_none()
        && args.client_ca_file.is_none()
        && args.service_account_key_file.is_none()
        && !args.anonymous_auth
    {
        anyhow::bail!(
            "nobody could authenticate: pass --token-auth-file, --client-ca-file or \
             --service-account-key-file (or --insecure for local exploration)"
        );
    }
    security.authentication = Some(auth);
    security.rbac = args.authorization_mode == AuthorizationMode::Rbac;
    Ok(security)
}

fn nonzero_or_max(n: usize) -> usize {
    if n == 0 { usize::MAX >> 4 } else { n }
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

pub use skiff::duration::parse_duration;

/// Server configuration from flags.
pub fn server_config(args: &Args) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig {
        security: security_config(&args.security)?,
        ..Default::default()
    };
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
    Ok(config)
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

/// Opens storage; etcd is waited for up to `wait` (members started at the
/// same time as the API server, or a quorum still forming).
async fn open_storage_waiting(
    config: &StorageConfig,
    wait: Duration,
) -> Result<std::sync::Arc<dyn skiff_apiserver::storage::Storage>, skiff_apiserver::ServerError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match open_storage(config).await {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(config, StorageConfig::Etcd { .. })
                    && tokio::time::Instant::now() < deadline =>
            {
                if !said {
                    tracing::warn!(error = %e, "no etcd member answers yet; waiting up to {wait:?} (--etcd-wait)");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the API server until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server_config = server_config(&args)?;
    // A request whose handler panics is logged in one line naming it.
    skiff_apiserver::filters::panic::install_hook();
    if args.security.insecure {
        tracing::warn!(
            "--insecure: plaintext and no authentication; every request is an administrator's"
        );
    }
    let tls = server_config.security.tls.is_some();
    let config = storage_config(&args);
    let storage = open_storage_waiting(&config, args.etcd_wait)
        .await
        .with_context(|| format!("opening {config:?}"))?;
    let server = ApiServer::with_config(storage, server_config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another server running there? pick one with --listen",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, storage = ?config, tls, "API server listening");
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        security: SecurityArgs,
    }

    fn parse(args: &[&str]) -> SecurityArgs {
        Flags::parse_from(std::iter::once("apiserver").chain(args.iter().copied())).security
    }

    #[test]
    fn insecure_refuses_a_per_user_watch_limit_it_cannot_apply() {
        let Err(e) = security_config(&parse(&["--insecure", "--max-watches-per-user", "5"])) else {
            panic!("--insecure accepted a per-user watch limit");
        };
        assert!(e.to_string().contains("--max-watches-per-user"), "{e}");
        assert!(security_config(&parse(&["--insecure", "--max-watches-per-user", "0"])).is_ok());
        let defaults = security_config(&parse(&["--insecure"])).expect("accepted");
        assert_eq!(
            defaults.limits.map(|l| l.max_watches_per_user),
            Some(nonzero_or_max(0))
        );
    }
}
