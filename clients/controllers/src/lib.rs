//! The Skiff controller manager: every controller in one process, on shared
//! informers, with leader election so two replicas never act at once.
//!
//! - [`replicaset`], [`deployment`], [`daemonset`], [`statefulset`], [`job`],
//!   [`cronjob`]: workloads.
//! - [`nodelifecycle`], [`nodeipam`]: nodes.
//! - [`endpoints`]: services' endpoints.
//! - [`persistentvolume`], [`localpath`]: binding claims to volumes, and
//!   provisioning local-path volumes.
//! - [`serviceaccount`]: default accounts and their tokens.
//! - [`namespace`]: emptying namespaces being deleted.
//! - [`gc`]: the garbage collector.

pub mod clock;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod expectations;
pub mod gc;
pub mod job;
pub mod localpath;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod persistentvolume;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod util;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use skiff::client::Client;
use skiff::runtime::{InformerFactory, LeaderElectionConfig, LeaderElector, Recorder};

/// Names of every controller, as `--controllers` takes them.
pub const ALL: &[&str] = &[
    "replicaset",
    "deployment",
    "daemonset",
    "statefulset",
    "job",
    "cronjob",
    "endpoints",
    "persistentvolume-binder",
    "local-path-provisioner",
    "namespace",
    "nodelifecycle",
    "nodeipam",
    "serviceaccount",
    "serviceaccount-token",
    "garbagecollector",
];

/// How the controllers run.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// Controllers to run (names from [`ALL`]).
    pub controllers: Vec<String>,
    /// Concurrent reconciles per controller.
    pub workers: usize,
    /// A node is unreachable after this long without a heartbeat (Kubernetes: 40 s).
    pub node_monitor_grace: Duration,
    /// How often nodes are checked.
    pub node_monitor_period: Duration,
    /// How long pods stay on an unreachable or not-ready node (Kubernetes: 300 s).
    pub pod_eviction_timeout: Duration,
    /// How evictions are paced per zone, and when they stop.
    pub eviction_pacing: nodelifecycle::EvictionPacing,
    /// Pod address range nodes get blocks of.
    pub cluster_cidr: String,
    /// Size of each node's block.
    pub node_cidr_mask: u8,
    /// Signs service-account tokens; without it no tokens are made.
    pub service_account_key: Option<Arc<SigningKey>>,
    /// This replica's identity (events, leader election).
    pub identity: String,
    /// Run only while holding this lease.
    pub leader_election: Option<LeaderElectionConfig>,
    /// What time it is (the system clock; a manual one in tests).
    pub clock: Arc<dyn clock::Clock>,
    /// Pause before a job replaces failed pods.
    pub job_backoff: job::JobBackoff,
}

impl ControllersConfig {
    /// Every controller with Kubernetes' timings.
    pub fn new(identity: &str) -> Self {
        Self {
            controllers: ALL.iter().map(|s| s.to_string()).collect(),
            workers: 4,
            node_monitor_grace: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            pod_eviction_timeout: Duration::from_secs(300),
            eviction_pacing: nodelifecycle::EvictionPacing::default(),
            cluster_cidr: nodeipam::DEFAULT_CLUSTER_CIDR.to_owned(),
            node_cidr_mask: 24,
            service_account_key: None,
            identity: identity.to_owned(),
            leader_election: None,
            clock: Arc::new(clock::SystemClock),
            job_backoff: job::JobBackoff::default(),
        }
    }
}

/// What every controller shares.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Shared informers: one watch per kind for all controllers.
    pub factory: Arc<InformerFactory>,
    /// Event recorder.
    pub recorder: Arc<Recorder>,
    /// Configuration.
    pub config: Arc<ControllersConfig>,
}

/// Runs the configured controllers (under leader election if configured) until `shutdown`.
/// A replica that loses its lease stops every controller, campaigns again
/// and starts them afresh (new informers, synced before any reconcile) once
/// it leads again; it never exits because of a lost lease.
pub async fn run(
    client: Client,
    config: ControllersConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    match config.leader_election.clone() {
        None => run_controllers(client, config, shutdown).await,
        Some(election) => {
            let elector = LeaderElector::new(client.leases(&election.namespace), election);
            elector
                .lead_until(
                    |stop| run_controllers(client.clone(), config.clone(), stop),
                    shutdown,
                )
                .await;
        }
    }
}

/// Runs the configured controllers until `shutdown`.
pub async fn run_controllers(
    client: Client,
    config: ControllersConfig,
    shutdown: impl Future<Output = ()>,
) {
    let ctx = Context {
        factory: Arc::new(InformerFactory::new(client.clone())),
        recorder: Arc::new(Recorder::new(
            client.clone(),
            "controller-manager",
            &config.identity,
        )),
        client,
        config: Arc::new(config.clone()),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let enabled = |name: &str| config.controllers.iter().any(|c| c == name || c == "*");
    let mut tasks = Vec::new();
    if enabled("replicaset") {
        tasks.push(tokio::spawn(replicaset::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("deployment") {
        tasks.push(tokio::spawn(deployment::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("daemonset") {
        tasks.push(tokio::spawn(daemonset::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("statefulset") {
        tasks.push(tokio::spawn(statefulset::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("job") {
        tasks.push(tokio::spawn(job::run(ctx.clone(), until(stopped.clone()))));
    }
    if enabled("cronjob") {
        tasks.push(tokio::spawn(cronjob::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("endpoints") {
        tasks.push(tokio::spawn(endpoints::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("persistentvolume-binder") {
        tasks.push(tokio::spawn(persistentvolume::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("local-path-provisioner") {
        tasks.push(tokio::spawn(localpath::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("namespace") {
        tasks.push(tokio::spawn(namespace::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("nodelifecycle") {
        tasks.push(tokio::spawn(nodelifecycle::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("nodeipam") {
        tasks.push(tokio::spawn(nodeipam::run(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("serviceaccount") {
        tasks.push(tokio::spawn(serviceaccount::run_accounts(
            ctx.clone(),
            until(stopped.clone()),
        )));
    }
    if enabled("serviceaccount-token") {
        match config.service_account_key.clone() {
            Some(key) => tasks.push(tokio::spawn(serviceaccount::run_tokens(
                ctx.clone(),
                key,
                until(stopped.clone()),
            ))),
            None => tracing::warn!(
                "no service-account key: tokens are not issued (pass --service-account-key-file)"
            ),
        }
    }
    if enabled("garbagecollector") {
        tasks.push(tokio::spawn(gc::run(ctx.clone(), until(stopped.clone()))));
    }
    shutdown.await;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}
