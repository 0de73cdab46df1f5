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
    #[command(flatten)]
    pub election: LeaderElectionFlags,
    /// This replica's identity (default: hostname and process id).
    #[arg(long)]
    pub identity: Option<String>,
    /// Percentage of nodes to evaluate on big clusters (default: adaptive).
    #[arg(long)]
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Most pods one binding call carries; 1 binds each pod on its own.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub bind_batch_size: u64,
    /// Binding calls in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub bind_concurrency: u64,
}

/// Leader election flags, as kube-scheduler's and kube-controller-manager's.
#[derive(Debug, ClapArgs)]
pub struct LeaderElectionFlags {
    /// Elect one active replica through a Lease in skiff-system.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long standbys wait after the last renewal before taking over.
    #[arg(long, default_value = "15s", value_parser = apiserver::parse_duration)]
    pub leader_elect_lease_duration: std::time::Duration,
    /// A leader that cannot renew for this long stops acting and campaigns again.
    #[arg(long, default_value = "10s", value_parser = apiserver::parse_duration)]
    pub leader_elect_renew_deadline: std::time::Duration,
    /// How often to try to acquire or renew the lease.
    #[arg(long, default_value = "2s", value_parser = apiserver::parse_duration)]
    pub leader_elect_retry_period: std::time::Duration,
}

impl LeaderElectionFlags {
    /// The election of lease `name`, if enabled; refuses inconsistent durations.
    pub fn config(
        &self,
        name: &str,
        identity: &str,
    ) -> anyhow::Result<Option<LeaderElectionConfig>> {
        if !self.leader_elect {
            return Ok(None);
        }
        if self.leader_elect_renew_deadline >= self.leader_elect_lease_duration {
            anyhow::bail!(
                "--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration (a leader must step down before a standby may take over)"
            );
        }
        if self.leader_elect_retry_period.is_zero()
            || self.leader_elect_retry_period >= self.leader_elect_renew_deadline
        {
            anyhow::bail!(
                "--leader-elect-retry-period must be above 0 and shorter than --leader-elect-renew-deadline"
            );
        }
        let mut config = LeaderElectionConfig::new("skiff-system", name, identity);
        config.lease_duration = self.leader_elect_lease_duration;
        config.renew_deadline = self.leader_elect_renew_deadline;
        config.retry_period = self.leader_elect_retry_period;
        Ok(Some(config))
    }
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
    let identity = args
        .identity
        .unwrap_or_else(|| default_identity("scheduler"));
    let mut config = skiff_scheduler::SchedulerConfig::new(&identity);
    config.percentage_of_nodes_to_score = args.percentage_of_nodes_to_score;
    config.bind_batch_size = args.bind_batch_size as usize;
    config.bind_concurrency = args.bind_concurrency as usize;
    config.leader_election = args.election.config("skiff-scheduler", &identity)?;
    let client = ctx::client(server).await?;
    tracing::info!(server = client.server(), %identity, "scheduler starting");
    let stats = Arc::new(skiff_scheduler::SchedulerStats::default());
    skiff_scheduler::run(client, config, stats, apiserver::shutdown_signal()).await;
    Ok(())
}

/// Flags of `skiff controller-manager`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff controller-manager\n  \
    skiff controller-manager --controllers replicaset,deployment --leader-elect=false")]
pub struct ControllerManagerArgs {
    #[command(flatten)]
    pub election: LeaderElectionFlags,
    /// This replica's identity (default: hostname and process id).
    #[arg(long)]
    pub identity: Option<String>,
    /// Controllers to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub controllers: Vec<String>,
    /// Concurrent reconciles per controller.
    #[arg(long, default_value_t = 4)]
    pub concurrent_syncs: usize,
    /// A node is unreachable after this long without a heartbeat.
    #[arg(long, default_value = "40s", value_parser = apiserver::parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// How often nodes are checked.
    #[arg(long, default_value = "5s", value_parser = apiserver::parse_duration)]
    pub node_monitor_period: std::time::Duration,
    /// How long pods stay on an unreachable node before they are evicted.
    #[arg(long, default_value = "300s", value_parser = apiserver::parse_duration)]
    pub pod_eviction_timeout: std::time::Duration,
    /// Nodes per second whose pods may start to be evicted, in a healthy zone.
    #[arg(long, default_value_t = 0.1)]
    pub node_eviction_rate: f64,
    /// The same in a large zone where more than --unhealthy-zone-threshold of the nodes are unhealthy.
    #[arg(long, default_value_t = 0.01)]
    pub secondary_node_eviction_rate: f64,
    /// Share of unhealthy nodes (more than two) that slows a zone's evictions, or stops them in a small zone.
    #[arg(long, default_value_t = 0.55)]
    pub unhealthy_zone_threshold: f64,
    /// Zones of at most this many nodes stop evicting when partly disrupted.
    #[arg(long, default_value_t = 50)]
    pub large_cluster_size_threshold: usize,
    /// Pod address range nodes get blocks of (inside 127.0.0.0/8: pods are reachable on this machine).
    #[arg(long, default_value = skiff_controllers::nodeipam::DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: String,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Key signing service-account tokens (created if missing); without it no tokens are issued.
    #[arg(long)]
    pub service_account_key_file: Option<std::path::PathBuf>,
}

/// Controller configuration from flags.
pub fn controllers_config(
    args: &ControllerManagerArgs,
    identity: &str,
) -> anyhow::Result<skiff_controllers::ControllersConfig> {
    let mut config = skiff_controllers::ControllersConfig::new(identity);
    if !args.controllers.is_empty() {
        for c in &args.controllers {
            if c != "*" && !skiff_controllers::ALL.contains(&c.as_str()) {
                anyhow::bail!(
                    "unknown controller {c:?}; known: {}",
                    skiff_controllers::ALL.join(", ")
                );
            }
        }
        config.controllers = args.controllers.clone();
    }
    config.workers = args.concurrent_syncs.max(1);
    config.node_monitor_grace = args.node_monitor_grace_period;
    config.node_monitor_period = args.node_monitor_period;
    config.pod_eviction_timeout = args.pod_eviction_timeout;
    let rates = [args.node_eviction_rate, args.secondary_node_eviction_rate];
    if rates.iter().any(|r| !r.is_finite() || *r < 0.0) {
        anyhow::bail!("--node-eviction-rate and --secondary-node-eviction-rate must be 0 or more");
    }
    if !(0.0..=1.0).contains(&args.unhealthy_zone_threshold) {
        anyhow::bail!("--unhealthy-zone-threshold is a share of nodes: between 0 and 1, e.g. 0.55");
    }
    config.eviction_pacing = skiff_controllers::nodelifecycle::EvictionPacing {
        rate: args.node_eviction_rate,
        secondary_rate: args.secondary_node_eviction_rate,
        unhealthy_zone_threshold: args.unhealthy_zone_threshold,
        large_cluster_size_threshold: args.large_cluster_size_threshold,
    };
    config.cluster_cidr = args.cluster_cidr.clone();
    config.node_cidr_mask = args.node_cidr_mask_size;
    skiff_controllers::nodeipam::CidrAllocator::new(&config.cluster_cidr, config.node_cidr_mask)?;
    if let Some(path) = &args.service_account_key_file {
        config.service_account_key = Some(Arc::new(skiff::token::load_or_create_key(path)?));
    }
    config.leader_election = args.election.config("skiff-controller-manager", identity)?;
    Ok(config)
}

/// Runs `skiff controller-manager` until Ctrl-C or SIGTERM.
pub async fn controller_manager(
    args: ControllerManagerArgs,
    server: Option<&str>,
) -> anyhow::Result<()> {
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| default_identity("controller-manager"));
    // Bad flags are refused before anything is contacted.
    let config = controllers_config(&args, &identity)?;
    let client = ctx::client(server).await?;
    tracing::info!(server = client.server(), %identity, controllers = ?config.controllers, "controller manager starting");
    skiff_controllers::run(client, config, apiserver::shutdown_signal()).await;
    Ok(())
}

/// Flags of `skiff proxy`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff proxy                                # against ~/.skiff/config's server\n  \
    skiff proxy --node-address 127.0.0.1")]
pub struct ProxyArgs {
    /// The address NodePort services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub node_address: std::net::IpAddr,
    /// A UDP client's session ends after this long without traffic.
    #[arg(long, default_value = "60s", value_parser = apiserver::parse_duration)]
    pub udp_idle_timeout: std::time::Duration,
}

/// Proxy configuration from flags.
pub fn proxy_config(args: &ProxyArgs) -> skiff_proxy::ProxyConfig {
    skiff_proxy::ProxyConfig {
        node_address: args.node_address,
        udp_idle_timeout: args.udp_idle_timeout,
        ..Default::default()
    }
}

/// Runs `skiff proxy` until Ctrl-C or SIGTERM.
pub async fn proxy(args: ProxyArgs, server: Option<&str>) -> anyhow::Result<()> {
    let client = ctx::client(server).await?;
    tracing::info!(server = client.server(), "proxy starting");
    skiff_proxy::run(client, proxy_config(&args), apiserver::shutdown_signal()).await;
    Ok(())
}

/// Flags of `skiff dns`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  skiff dns                                  # any free port on 127.0.0.1, published in kube-system/kube-dns\n  skiff dns --listen 127.0.0.1:1053 --upstream 9.9.9.9:53\n  dig @127.96.0.10 web.default.svc.cluster.local   # through the kube-dns Service (needs skiff proxy)"
)]
pub struct DnsArgs {
    /// UDP and TCP address to answer on (port 0: any free port). The
    /// address is published as the endpoints of kube-system/kube-dns, whose
    /// cluster IP pods use.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = skiff_dns::DEFAULT_DOMAIN)]
    pub cluster_domain: String,
    /// Resolvers other names go to (default: the name servers of /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    pub upstream: Vec<std::net::SocketAddr>,
    /// Do not add this server to the endpoints of kube-system/kube-dns.
    #[arg(long)]
    pub no_publish: bool,
}

/// DNS server configuration from flags.
pub fn dns_config(args: &DnsArgs, metrics: Option<std::net::SocketAddr>) -> skiff_dns::DnsConfig {
    skiff_dns::DnsConfig {
        listen: args.listen,
        domain: args.cluster_domain.clone(),
        upstreams: (!args.upstream.is_empty()).then(|| args.upstream.clone()),
        publish: !args.no_publish,
        metrics_port: metrics.map(|m| m.port()),
    }
}

/// Runs `skiff dns` until Ctrl-C or SIGTERM.
pub async fn dns(
    args: DnsArgs,
    server: Option<&str>,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let client = ctx::client(server).await?;
    let dns = skiff_dns::Dns::start(client, dns_config(&args, metrics)).await?;
    // Machines (tests, scripts) read this line to learn the address.
    println!("dns on {}", dns.addr());
    dns.run_until(apiserver::shutdown_signal()).await;
    Ok(())
}
