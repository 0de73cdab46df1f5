//! A highly available cluster of real processes: 3 etcd members (on
//! loopback, or in Docker on a private network), 3 API servers (each reaching every member through a [`Relay`]
//! the test can cut), 2 schedulers and 2 controller managers under leader
//! election, and N kubelets (process runtime). Each process can be killed,
//! paused and started again with the same flags and ports; all are killed
//! when the cluster is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use skiff::client::{Client, Config};
use skiff_apiserver::testing::{EtcdCluster, free_port};

use tokio::process::{Child, Command};

use crate::docker_etcd::DockerEtcd;
use crate::relay::Relay;
use crate::skiff_bin;

/// The etcd cluster under the API servers: members as local processes, or
/// in Docker containers on a private network (which can be partitioned).
pub enum Etcd {
    /// Members on loopback ports.
    Local(EtcdCluster),
    /// Members in Docker.
    Docker(DockerEtcd),
}

impl Etcd {
    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Self::Local(c) => c.endpoints(),
            Self::Docker(c) => c.endpoints(),
        }
    }

    /// The index of the current leader.
    pub async fn leader(&self) -> usize {
        match self {
            Self::Local(c) => c.leader().await,
            Self::Docker(c) => c.leader().await,
        }
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        match self {
            Self::Local(c) => c.kill(i),
            Self::Docker(c) => c.kill(i),
        }
    }

    /// Starts member `i` again and waits until it serves.
    pub async fn restart(&mut self, i: usize) {
        match self {
            Self::Local(c) => c.restart(i).await,
            Self::Docker(c) => c.restart(i).await,
        }
    }

    /// Cuts member `i` off its peers and clients (Docker only), or heals it.
    pub async fn partition(&self, i: usize, cut: bool) {
        match self {
            Self::Local(_) => panic!("partitioning an etcd member needs the Docker cluster"),
            Self::Docker(c) => c.partition(i, cut).await,
        }
    }
}

/// Leader election timings of the schedulers and controller managers (short, for tests).
pub const LEASE_DURATION: Duration = Duration::from_secs(4);
/// See [`LEASE_DURATION`].
pub const RETRY_PERIOD: Duration = Duration::from_millis(500);
/// A node with no heartbeat for this long is unreachable: longer than a
/// kubelet's call may hang on an API server just cut off from etcd (~9 s,
/// etcd's keepalive), as Kubernetes' 40 s default is.
pub const NODE_GRACE: Duration = Duration::from_secs(20);

/// One `skiff` process, restartable with the same arguments.
pub struct Proc {
    /// What it is ("apiserver-0").
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(name: &str, args: Vec<String>, dir: &Path) -> Self {
        Self {
            name: name.to_owned(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts the process (again), its stderr appended to its log file.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open a component log");
        self.child = Some(
            Command::new(skiff_bin())
                .args(&self.args)
                .env("SKIFF_CONFIG", "/nonexistent/skiff-test-config")
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("start a skiff component"),
        );
    }

    /// Kills it with SIGKILL and waits.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) it: a machine that goes silent.
    pub fn pause(&self, paused: bool) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let signal = if paused { "-STOP" } else { "-CONT" };
            let _ = std::process::Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .status();
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A paused process must run again to die of SIGKILL promptly.
        self.pause(false);
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// An API server process and the relays it reaches etcd through.
pub struct ApiServer {
    /// The process.
    pub proc: Proc,
    /// "127.0.0.1:PORT", the same across restarts.
    pub addr: String,
    relays: Vec<Relay>,
}

impl ApiServer {
    /// Cuts (or heals) this server's links to every etcd member.
    pub fn partition_from_etcd(&self, cut: bool) {
        for r in &self.relays {
            r.cut(cut);
        }
    }
}

/// The whole cluster.
pub struct HaCluster {
    /// The etcd members.
    pub etcd: Etcd,
    /// The API servers.
    pub apiservers: Vec<ApiServer>,
    /// The schedulers (identities "scheduler-0", "scheduler-1").
    pub schedulers: Vec<Proc>,
    /// The controller managers ("controller-manager-0", "-1").
    pub controller_managers: Vec<Proc>,
    /// The kubelets (nodes "node-0" …).
    pub kubelets: Vec<Proc>,
    /// Every API server, comma-separated, as `--server` takes them.
    pub servers: String,
    dir: tempfile::TempDir,
    _ranges: crate::cluster::Ranges,
}

impl HaCluster {
    /// Starts every process over `etcd` and waits until each API server
    /// serves and every node is Ready.
    pub async fn start(nodes: usize, etcd: Etcd) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the HA cluster");
        // Pod and Service ranges no other test cluster on this machine uses.
        let ranges = crate::cluster::Ranges::claim(dir.path());
        let mut apiservers = Vec::new();
        for i in 0..3 {
            let mut relays = Vec::new();
            for endpoint in etcd.endpoints() {
                let target = endpoint
                    .trim_start_matches("http://")
                    .parse()
                    .expect("an etcd endpoint is host:port");
                relays.push(Relay::start(target).await);
            }
            let endpoints: Vec<String> = relays
                .iter()
                .map(|r| format!("http://{}", r.addr))
                .collect();
            let addr = format!("127.0.0.1:{}", free_port());
            let args = [
                "apiserver",
                "--insecure",
                "--listen",
                &addr,
                "--storage",
                "etcd",
                "--etcd-endpoints",
                &endpoints.join(","),
                "--service-cluster-ip-range",
                &ranges.service_cidr,
            ]
            .map(String::from)
            .to_vec();
            let mut proc = Proc::new(&format!("apiserver-{i}"), args, dir.path());
            proc.start();
            apiservers.push(ApiServer { proc, addr, relays });
        }
        let servers = apiservers
            .iter()
            .map(|a| a.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            etcd,
            apiservers,
            schedulers: Vec::new(),
            controller_managers: Vec::new(),
            kubelets: Vec::new(),
            servers,
            dir,
            _ranges: ranges,
        };
        for i in 0..3 {
            cluster.wait_serving(i).await;
        }
        let election = |identity: &str| {
            vec![
                "--identity".to_owned(),
                identity.to_owned(),
                "--leader-elect-lease-duration".into(),
                format!("{}ms", LEASE_DURATION.as_millis()),
                "--leader-elect-renew-deadline".into(),
                format!("{}ms", LEASE_DURATION.as_millis() * 3 / 4),
                "--leader-elect-retry-period".into(),
                format!("{}ms", RETRY_PERIOD.as_millis()),
            ]
        };
        for i in 0..2 {
            let identity = format!("scheduler-{i}");
            let mut args = vec![
                "--server".into(),
                cluster.servers.clone(),
                "scheduler".into(),
            ];
            args.extend(election(&identity));
            let mut p = Proc::new(&identity, args, cluster.dir.path());
            p.start();
            cluster.schedulers.push(p);

            let identity = format!("controller-manager-{i}");
            let mut args = vec![
                "--server".into(),
                cluster.servers.clone(),
                "controller-manager".into(),
                "--node-monitor-grace-period".into(),
                format!("{}ms", NODE_GRACE.as_millis()),
                "--node-monitor-period".into(),
                "1s".into(),
                "--pod-eviction-timeout".into(),
                "5s".into(),
                "--cluster-cidr".into(),
                cluster._ranges.cluster_cidr.clone(),
            ];
            args.extend(election(&identity));
            let mut p = Proc::new(&identity, args, cluster.dir.path());
            p.start();
            cluster.controller_managers.push(p);
        }
        for i in 0..nodes {
            let name = format!("node-{i}");
            let data = cluster.dir.path().join(&name);
            let args = [
                "--server",
                &cluster.servers,
                "kubelet",
                "--node-name",
                &name,
                "--runtime",
                "process",
                "--data-dir",
                data.to_str().expect("utf-8 temp dir"),
                "--node-ip",
                "127.0.0.1",
                "--listen",
                "127.0.0.1:0",
                "--lease-interval",
                "1s",
                "--node-status-interval",
                "5s",
                "--cpu",
                "8",
                "--memory",
                "16Gi",
            ]
            .map(String::from)
            .to_vec();
            let mut p = Proc::new(&name, args, cluster.dir.path());
            p.start();
            cluster.kubelets.push(p);
        }
        let client = cluster.client().await;
        skiff::testing::eventually("every node is Ready", Duration::from_secs(60), async || {
            let listed = client.nodes().list(&Default::default()).await.ok()?;
            (listed.items.iter().filter(|n| node_ready(n)).count() == nodes).then_some(())
        })
        .await;
        cluster
    }

    /// A client of every API server.
    pub async fn client(&self) -> Client {
        Client::connect(&Config::for_server(&self.servers))
            .await
            .expect("connect to the HA cluster")
    }

    /// A client of API server `i` only.
    pub async fn client_of(&self, i: usize) -> Client {
        Client::connect(&Config::for_server(&self.apiservers[i].addr))
            .await
            .expect("connect to one API server")
    }

    /// Waits until API server `i` answers its health check SERVING.
    pub async fn wait_serving(&self, i: usize) {
        let addr = self.apiservers[i].addr.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(c) = Client::connect(&Config::for_server(&addr)).await
                && c.namespaces().get("default").await.is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "API server {i} does not serve within 60 s:\n{}",
                self.apiservers[i].proc.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The identity holding lease `name` in skiff-system, if any.
    pub async fn leader(&self, client: &Client, name: &str) -> Option<String> {
        let lease = client.leases("skiff-system").get(name).await.ok()?;
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        // Kubelets first, then what they ran: the pods' processes outlive a
        // killed kubelet.
        for k in &mut self.kubelets {
            k.pause(false);
            if let Some(c) = k.child.as_mut() {
                let _ = c.start_kill();
            }
        }
        for k in &self.kubelets {
            crate::cluster::kill_process_pods(&self.dir.path().join(&k.name));
        }
    }
}

fn node_ready(n: &skiff::api::core::v1::Node) -> bool {
    n.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}
