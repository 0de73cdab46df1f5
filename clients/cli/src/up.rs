//! `skiff up`: a whole cluster in one process and one command — the API
//! server on embedded storage (or etcd), the scheduler, the controller
//! manager, local nodes, the proxy and the cluster DNS — each talking to the
//! API server over gRPC as it would as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Args as ClapArgs;
use skiff::client::{Client, Config};
use skiff_apiserver::{ApiServer, ServerConfig, StorageConfig, open_storage};
use skiff_kubelet::{KubeletConfig, RuntimeKind};
use tokio::sync::watch;

use crate::apiserver::{self, Backend, parse_port_range};
use crate::bootstrap::Credentials;
use crate::kubelet::RuntimeFlag;
use skiff_apiserver::server::SecurityConfig;

/// Flags of `skiff up`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff up                                   # one node, processes, state in ~/.skiff/data\n  \
    skiff up --nodes 3 --runtime docker        # three nodes running Docker containers\n  \
    skiff up --listen 127.0.0.1:7443 --data-dir /tmp/skiff\n  \
    skiff up --storage etcd --etcd-endpoints http://127.0.0.1:2379")]
pub struct Args {
    /// Address the API server serves gRPC on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Where the cluster keeps its state (embedded store and nodes' data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Storage backend.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    pub storage: Backend,
    /// etcd client URLs, comma-separated (with --storage etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key in etcd.
    #[arg(long, default_value = "/skiff")]
    pub etcd_prefix: String,
    /// Number of local nodes.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// Container runtime of the nodes.
    #[arg(long, value_enum, default_value = "process")]
    pub runtime: RuntimeFlag,
    /// Pod address range nodes get blocks of.
    #[arg(long, default_value = skiff_controllers::nodeipam::DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: String,
    /// Range Services' cluster IPs come from.
    #[arg(long, default_value = skiff_apiserver::allocation::DEFAULT_SERVICE_CIDR)]
    pub service_cluster_ip_range: String,
    /// Range of NodePort services' ports.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: std::ops::RangeInclusive<u16>,
    /// Do not write the client configuration (~/.skiff/config or $SKIFF_CONFIG).
    #[arg(long)]
    pub no_config: bool,
    /// Plaintext and no authentication: every request is an administrator's
    /// (local exploration with grpcurl -plaintext).
    #[arg(long)]
    pub insecure: bool,
    /// Write one JSON line per request to this file.
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
}

/// A component task and what stops it.
struct Component {
    name: &'static str,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn stopper() -> (
    watch::Sender<bool>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, mut rx) = watch::channel(false);
    (tx, async move {
        let _ = rx.wait_for(|s| *s).await;
    })
}

impl Component {
    fn spawn<F>(
        name: &'static str,
        run: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = stopper();
        let task = tokio::spawn(run(Box::pin(stopped)));
        Self { name, stop, task }
    }

    async fn stop(self, within: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!(component = self.name, "did not stop in time");
        }
    }
}

/// Runs `skiff up` until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let since = SystemTime::now();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(apiserver::default_data_dir);
    let data_dir = std::path::absolute(&data_dir)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let storage_config = match args.storage {
        Backend::Embedded => StorageConfig::Embedded {
            data_dir: data_dir.join("store"),
        },
        Backend::Etcd => StorageConfig::Etcd {
            endpoints: args.etcd_endpoints.clone(),
            key_prefix: args.etcd_prefix.clone(),
        },
    };
    let storage = open_storage(&storage_config)
        .await
        .with_context(|| format!("opening {storage_config:?} (is another `skiff up` using it?)"))?;
    let key = skiff::token::load_or_create_key(&data_dir.join("service-account.key"))?;
    let credentials = if args.insecure {
        tracing::warn!(
            "--insecure: plaintext and no authentication; every request is an administrator's"
        );
        None
    } else {
        Some(Credentials::ensure(&data_dir, args.listen)?)
    };
    let mut security = SecurityConfig {
        limits: Some(Default::default()),
        audit: args
            .audit_log_path
            .clone()
            .map(|p| (p, skiff_apiserver::filters::AuditLevel::Metadata)),
        ..Default::default()
    };
    if let Some(c) = &credentials {
        security.tls = Some(c.tls.clone());
        security.authentication = Some(skiff_apiserver::authn::AuthConfig {
            tokens: c.tokens.clone(),
            service_account_key: Some(key.verifying_key()),
            anonymous: false,
        });
        security.rbac = true;
    }
    security.token_signer = Some(skiff_apiserver::registry::service_account::TokenSigner(
        Arc::new(key.clone()),
    ));
    skiff_apiserver::filters::panic::install_hook();
    let server_config = ServerConfig {
        service_cidr: args.service_cluster_ip_range.clone(),
        node_ports: args.service_node_port_range.clone(),
        security,
        ..Default::default()
    };
    let server = ApiServer::with_config(storage, server_config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is a cluster already up? Pick another address with --listen",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let (api_stop, api_stopped) = stopper();
    let api = tokio::spawn(async move {
        if let Err(e) = server.serve(listener, api_stopped).await {
            tracing::error!(error = %e, "the API server stopped");
        }
    });
    let server_addr = addr.to_string();
    // The client configuration of each component: its own identity.
    let config_of = |component: &str| match &credentials {
        Some(c) => c.component_config(component, &server_addr),
        None => Config::for_server(&server_addr),
    };
    let admin_config = config_of("admin");
    if let Some(c) = &credentials {
        admin_config
            .save(&c.admin_config_path())
            .with_context(|| format!("writing {}", c.admin_config_path().display()))?;
    }
    let client = Client::connect(&admin_config).await?;
    let connect = |component: &str| {
        let config = config_of(component);
        async move { Client::connect(&config).await }
    };

    let mut components = Vec::new();
    let (c, cfg) = (
        connect("scheduler").await?,
        skiff_scheduler::SchedulerConfig::new("skiff-up"),
    );
    components.push(Component::spawn("scheduler", move |stop| async move {
        skiff_scheduler::schedule(
            c,
            cfg,
            Arc::new(skiff_scheduler::SchedulerStats::default()),
            stop,
        )
        .await;
    }));
    let mut controllers = skiff_controllers::ControllersConfig::new("skiff-up");
    controllers.cluster_cidr = args.cluster_cidr.clone();
    skiff_controllers::nodeipam::CidrAllocator::new(
        &controllers.cluster_cidr,
        controllers.node_cidr_mask,
    )?;
    controllers.service_account_key = Some(Arc::new(key));
    let c = connect("controller-manager").await?;
    components.push(Component::spawn(
        "controller-manager",
        move |stop| async move {
            skiff_controllers::run_controllers(c, controllers, stop).await;
        },
    ));
    let c = connect("proxy").await?;
    components.push(Component::spawn("proxy", move |stop| async move {
        skiff_proxy::run(c, skiff_proxy::ProxyConfig::default(), stop).await;
    }));
    // Cluster DNS on a free port of 127.0.0.1, published as the endpoints
    // of kube-system/kube-dns: pods reach it at that Service's cluster IP.
    let dns = skiff_dns::Dns::start(connect("dns").await?, skiff_dns::DnsConfig::default())
        .await
        .context("starting the cluster DNS")?;
    let dns_addr = dns.addr();
    components.push(Component::spawn("dns", move |stop| dns.run_until(stop)));
    let mut names = Vec::new();
    let mut kubelets = Vec::new();
    for i in 1..=args.nodes.max(1) {
        let name = format!("node-{i}");
        let runtime = match args.runtime {
            RuntimeFlag::Process => RuntimeKind::Process,
            RuntimeFlag::Sim => RuntimeKind::Sim,
            RuntimeFlag::Docker => RuntimeKind::Docker(Default::default()),
        };
        let mut config = KubeletConfig::new(&name, runtime, data_dir.join("nodes").join(&name));
        config.stop_pods_on_exit = true;
        let c = match &credentials {
            Some(creds) => Client::connect(&creds.node_config(&name, &server_addr)?).await?,
            None => client.clone(),
        };
        let n = name.clone();
        kubelets.push(Component::spawn("kubelet", move |stop| async move {
            if let Err(e) = skiff_kubelet::run(c, config, stop).await {
                tracing::error!(node = %n, error = %e, "the kubelet stopped");
            }
        }));
        names.push(name);
    }

    // Ready when every node is.
    let nodes = client.nodes();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let all = futures::future::join_all(names.iter().map(|n| nodes.get_opt(n))).await;
            // Ready, as reported by this run's kubelets (not a previous run's).
            let ready = all.iter().all(|n| {
                matches!(n, Ok(Some(n)) if n.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| {
                    c.r#type == "Ready"
                        && c.status == "True"
                        && c.last_heartbeat_time.is_some_and(|t| SystemTime::try_from(t).is_ok_and(|t| t >= since))
                })))
            });
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let took = started.elapsed();
    let config_path = Config::default_path();
    if !args.no_config {
        admin_config
            .save(&config_path)
            .with_context(|| format!("writing {}", config_path.display()))?;
    }
    // Machines (tests, scripts) read this line to learn the address.
    println!("listening on {addr}");
    match ready {
        Ok(()) => println!(
            "Skiff is up in {:.2} s: {} node(s) Ready ({} runtime)",
            took.as_secs_f64(),
            names.len(),
            format!("{:?}", args.runtime).to_lowercase()
        ),
        Err(_) => println!("Skiff is up, but the nodes are not Ready yet; see the log above"),
    }
    let storage_text = match args.storage {
        Backend::Embedded => format!("embedded storage in {}", data_dir.join("store").display()),
        Backend::Etcd => format!("etcd at {}", args.etcd_endpoints.join(",")),
    };
    let transport = if credentials.is_some() {
        "TLS, RBAC"
    } else {
        "plaintext, no authentication"
    };
    println!("  API server   {addr} ({storage_text}; {transport})");
    println!(
        "  components   scheduler, controller manager, proxy, DNS ({dns_addr}), kubelet on {}",
        names.join(", ")
    );
    if !args.no_config {
        println!("  client config {} (administrator)", config_path.display());
    }
    if let Some(c) = &credentials {
        println!(
            "  credentials  {}",
            c.admin_config_path()
                .parent()
                .unwrap_or(&data_dir)
                .display()
        );
    }
    println!();
    println!("Try:");
    println!("  skiff get nodes");
    println!("  skiff apply -f examples/web.yaml");
    println!("  skiff rollout status deployment/web");
    println!("  skiff get svc web                 # then: curl http://CLUSTER-IP:8080/");
    println!();
    println!("Ctrl-C stops the cluster; `skiff up` again finds it as it was.");

    apiserver::shutdown_signal().await;
    println!("stopping…");
    // Nodes first (they stop their containers), then the rest, then the API server.
    futures::future::join_all(
        kubelets
            .into_iter()
            .map(|k| k.stop(Duration::from_secs(20))),
    )
    .await;
    futures::future::join_all(
        components
            .into_iter()
            .map(|c| c.stop(Duration::from_secs(5))),
    )
    .await;
    let _ = api_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), api).await;
    println!("stopped");
    Ok(())
}
