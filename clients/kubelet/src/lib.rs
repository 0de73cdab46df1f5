//! The Skiff node agent. `skiff kubelet --node-name N --runtime
//! process|docker|sim` registers node N, renews its Lease and reports its
//! status, runs the pods bound to it through a runtime, reports their
//! status, and serves their logs and exec to the API server.
//!
//! - [`node`]: registration, heartbeats, node conditions.
//! - [`worker`]: one pod's lifecycle.
//! - [`runtime`]: process, Docker and simulated runtimes behind one trait.
//! - [`probe`], [`logs`], [`ipam`], [`server`]: probes, log files, pod IPs,
//!   the kubelet's own gRPC service.

pub mod atomic_writer;
pub mod ipam;
pub mod logs;
pub mod node;
pub mod probe;
pub mod runtime;
pub mod server;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::api::core::v1::{Pod, Taint};
use skiff::client::Client;
use skiff::runtime::{Event, WatcherConfig, watcher};
use tokio::sync::watch;

use crate::ipam::PodIps;
use crate::runtime::Runtime;
use crate::worker::{Backoff, Worker};

/// Which runtime runs containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Containers are processes (the default: nothing to install).
    Process,
    /// Containers are Docker containers, each pod around a sandbox container.
    Docker(runtime::docker::DockerOptions),
    /// Nothing runs; pods just report Running (scale tests).
    Sim,
}

/// How a kubelet runs.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Name of the node.
    pub node_name: String,
    /// Runtime.
    pub runtime: RuntimeKind,
    /// Where the kubelet keeps logs and records.
    pub data_dir: PathBuf,
    /// The node's address (reported as InternalIP and pods' hostIP).
    pub node_ip: String,
    /// Where the kubelet's gRPC service listens (port 0: any free port).
    pub listen: SocketAddr,
    /// How often the node lease is renewed (Kubernetes: 10 s).
    pub lease_interval: Duration,
    /// The node status is written at least this often (Kubernetes: 1 min).
    pub status_interval: Duration,
    /// CPU capacity override ("4", "500m").
    pub cpu: Option<String>,
    /// Memory capacity override ("8Gi").
    pub memory: Option<String>,
    /// Pod capacity.
    pub max_pods: u32,
    /// Labels of the node.
    pub labels: Vec<(String, String)>,
    /// Taints of the node.
    pub taints: Vec<Taint>,
    /// Pod CIDR to use if the node has none assigned (no IPAM running).
    pub pod_cidr: Option<String>,
    /// Restart back-off.
    pub backoff: Backoff,
    /// Log files are rotated above this size.
    pub log_max_bytes: u64,
    /// Stop every container when the kubelet stops (a machine shutting
    /// down, as under `skiff up`); otherwise they keep running and a
    /// restarted kubelet adopts them.
    pub stop_pods_on_exit: bool,
    /// Name servers pods with the ClusterFirst DNS policy use; empty: the
    /// cluster IP of the kube-system/kube-dns Service.
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// The node's resolver configuration (the Default DNS policy).
    pub resolv_conf: PathBuf,
    /// Unsafe sysctls pods may set (`net.core.*` style prefixes allowed).
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Where Localhost seccomp profiles live.
    pub seccomp_dir: PathBuf,
}

impl KubeletConfig {
    /// Defaults for node `name` with `runtime`, keeping data in `data_dir`.
    pub fn new(name: &str, runtime: RuntimeKind, data_dir: PathBuf) -> Self {
        Self {
            node_name: name.to_owned(),
            runtime,
            node_ip: "127.0.0.1".into(),
            listen: "127.0.0.1:0".parse().expect("address"),
            lease_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            cpu: None,
            memory: None,
            max_pods: 110,
            labels: Vec::new(),
            taints: Vec::new(),
            pod_cidr: None,
            backoff: Backoff::default(),
            log_max_bytes: 10 * 1024 * 1024,
            stop_pods_on_exit: false,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            allowed_unsafe_sysctls: Vec::new(),
            seccomp_dir: data_dir.join("seccomp"),
            data_dir,
        }
    }
}

/// Why a kubelet could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The runtime could not be set up.
    #[error("container runtime: {0}")]
    Runtime(#[from] runtime::RuntimeError),
    /// Talking to the API server failed.
    #[error("API server: {0}")]
    Api(#[from] skiff::client::Error),
    /// The kubelet's own server could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pod CIDR is unusable.
    #[error("pod IPs: {0}")]
    Ipam(#[from] ipam::IpamError),
}

/// What the kubelet's parts share.
pub struct Shared {
    /// API client.
    pub client: Client,
    /// Configuration.
    pub config: KubeletConfig,
    /// The runtime.
    pub runtime: Arc<dyn Runtime>,
    /// Pod IPs (when the node has a pod CIDR).
    pub ips: Option<PodIps>,
    /// Records events about pods.
    pub recorder: Arc<skiff::runtime::events::Recorder>,
    /// The cluster DNS Service's IP, as last read, and when.
    pub cluster_dns: std::sync::Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

impl Shared {
    /// The directory of a pod's logs.
    pub fn pod_log_dir(&self, pod: &Pod) -> PathBuf {
        self.config.data_dir.join("logs").join(format!(
            "{}_{}_{}",
            pod.namespace(),
            pod.name(),
            pod.meta().uid
        ))
    }

    /// The log file of one instance of a container.
    pub fn log_path(&self, pod: &Pod, container: &str, attempt: u32) -> PathBuf {
        self.pod_log_dir(pod)
            .join(container)
            .join(format!("{attempt}.log"))
    }
}

async fn make_runtime(
    config: &KubeletConfig,
    pod_cidr: Option<&str>,
) -> Result<Arc<dyn Runtime>, KubeletError> {
    Ok(match &config.runtime {
        RuntimeKind::Process => Arc::new(runtime::process::ProcessRuntime::new(
            &config.data_dir.join("process"),
        )?),
        RuntimeKind::Sim => Arc::new(runtime::sim::SimRuntime::new()),
        RuntimeKind::Docker(options) => Arc::new(
            runtime::docker::DockerRuntime::connect(&config.node_name, options.clone(), pod_cidr)
                .await?,
        ),
    })
}

/// Runs the kubelet until `shutdown`; pods keep running when it stops (a
/// restarted kubelet finds them again).
pub async fn run(
    client: Client,
    config: KubeletConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeletError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| runtime::RuntimeError::Failure(e.to_string()))?;
    // The kubelet's own service first: the node publishes its port.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| KubeletError::Listen {
            addr: config.listen,
            source,
        })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let registered = node::register(&client, &config, port, "unknown").await?;
    let pod_cidr = node::wait_for_pod_cidr(&client, &config, registered).await;
    let runtime = make_runtime(&config, pod_cidr.as_deref()).await?;
    let ips = match &pod_cidr {
        Some(cidr) if !runtime.assigns_ips() => {
            Some(PodIps::new(cidr, config.data_dir.join("pod-ips.json"))?)
        }
        _ => None,
    };
    let shared = Arc::new(Shared {
        client: client.clone(),
        config: config.clone(),
        runtime,
        ips,
        recorder: Arc::new(skiff::runtime::events::Recorder::new(
            client.clone(),
            "kubelet",
            &config.node_name,
        )),
        cluster_dns: std::sync::Mutex::new(None),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(shared.clone(), listener, stop_rx.clone()));
    let heartbeats = tokio::spawn(node::heartbeats(shared.clone(), port, stop_rx.clone()));
    let housekeeping = tokio::spawn(housekeeping(shared.clone(), stop_rx.clone()));
    let local_paths = tokio::spawn(node::clean_local_paths(
        client.clone(),
        config.clone(),
        Duration::from_secs(5),
    ));
    tracing::info!(node = %config.node_name, runtime = %shared.runtime.version(), port, pod_cidr = ?pod_cidr, "kubelet running");
    tokio::pin!(shutdown);
    let pods = sync_pods(shared.clone());
    tokio::select! {
        _ = pods => {}
        _ = &mut shutdown => {}
    }
    let _ = stop_tx.send(true);
    for t in [server, heartbeats, housekeeping, local_paths] {
        t.abort();
    }
    if config.stop_pods_on_exit {
        stop_everything(&shared).await;
    }
    Ok(())
}

/// Stops every container (SIGTERM, SIGKILL after a short grace) and removes
/// them and their sandboxes; the pod objects stay for the next start.
async fn stop_everything(shared: &Shared) {
    let runtime = &shared.runtime;
    if let Ok(records) = runtime.containers().await {
        futures::future::join_all(records.iter().map(|r| async move {
            let _ = runtime.stop_container(&r.id, Duration::from_secs(5)).await;
            let _ = runtime.remove_container(&r.id).await;
        }))
        .await;
    }
    if let Ok(sandboxes) = runtime.sandboxes().await {
        for uid in sandboxes {
            let _ = runtime.remove_sandbox(&uid).await;
        }
    }
    tracing::info!(node = %shared.config.node_name, "stopped every container");
}

/// A pod worker: where its pod's updates go, and its task (stopped when
/// the handle is dropped, so that workers end with the kubelet).
type WorkerHandle = (watch::Sender<Option<Arc<Pod>>>, AbortOnDrop);

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds every pod bound to this node to its worker.
async fn sync_pods(shared: Arc<Shared>) {
    let api = shared.client.all::<Pod>();
    let config =
        WatcherConfig::default().fields(&format!("spec.nodeName={}", shared.config.node_name));
    let mut events = std::pin::pin!(watcher(api, config));
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    let mut cleaned = false;
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        workers.retain(|_, (_, task)| !task.is_finished());
        let pod = match ev {
            Event::Init => {
                listing = Some(HashSet::new());
                continue;
            }
            Event::InitDone => {
                // Pods gone while the watch was down.
                let seen = listing.take().unwrap_or_default();
                for (uid, (tx, _)) in &workers {
                    if !seen.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                if !cleaned {
                    cleaned = true;
                    remove_orphans(&shared, &seen).await;
                }
                continue;
            }
            Event::InitApply(p) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(p.meta().uid.clone());
                }
                p
            }
            Event::Apply(p) => p,
            Event::Delete(p) => {
                if let Some((tx, _)) = workers.get(&p.meta().uid) {
                    let _ = tx.send(None);
                }
                continue;
            }
        };
        let uid = pod.meta().uid.clone();
        let pod = Arc::new(pod);
        match workers.get(&uid) {
            Some((tx, _)) => {
                let _ = tx.send(Some(pod));
            }
            None => {
                let (tx, rx) = watch::channel(Some(pod));
                let worker = Worker::new(shared.clone(), &uid);
                workers.insert(uid, (tx, AbortOnDrop(tokio::spawn(worker.run(rx)))));
            }
        }
    }
}

/// Removes containers and sandboxes of pods that no longer exist.
async fn remove_orphans(shared: &Shared, pods: &HashSet<String>) {
    let runtime = &shared.runtime;
    if let Ok(records) = runtime.containers().await {
        for r in records.into_iter().filter(|r| !pods.contains(&r.pod_uid)) {
            tracing::info!(container = %r.name, pod_uid = %r.pod_uid, "removing a container of a pod that no longer exists");
            let _ = runtime.stop_container(&r.id, Duration::from_secs(2)).await;
            let _ = runtime.remove_container(&r.id).await;
        }
    }
    if let Ok(sandboxes) = runtime.sandboxes().await {
        for uid in sandboxes.into_iter().filter(|u| !pods.contains(u)) {
            let _ = runtime.remove_sandbox(&uid).await;
            if let Some(ips) = &shared.ips {
                ips.release(&uid);
            }
        }
    }
}

/// Rotates log files.
async fn housekeeping(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Ok(records) = shared.runtime.containers().await {
            for r in records {
                if let Err(e) = logs::rotate_if_needed(&r.log_path, shared.config.log_max_bytes) {
                    tracing::debug!(path = %r.log_path.display(), error = %e, "log rotation failed");
                }
            }
        }
    }
}
