//! A whole cluster for end-to-end tests of nodes: an API server, the
//! scheduler and the controller manager in this process, and kubelets as
//! real `skiff kubelet` processes running real processes or Docker
//! containers. Everything is torn down when dropped, also when a test
//! fails: kubelets are killed, and so are the pods they started (process
//! groups, or Docker containers found by their node label).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::{Node, Pod};
use skiff::client::Client;
use skiff_apiserver::testing::TestServer;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::skiff_bin;

pub use skiff::testing::eventually;

/// Image the Docker tests run: busybox-static `FROM scratch`, applets installed.
pub const TEST_IMAGE: &str = "skiff-test/busybox:latest";

/// A random name suffix, so that parallel tests never share Docker objects.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{:05x}", std::process::id(), nanos & 0xfffff)
}

/// An API server, scheduler and controller manager.
pub struct Cluster {
    /// A client of the API server.
    pub client: Client,
    /// The API server's address.
    pub server: String,
    /// Pod address range nodes get blocks of.
    pub cluster_cidr: String,
    /// Range Services' cluster IPs come from.
    pub service_cidr: String,
    _service_lock: Option<std::fs::File>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _cidr_lock: std::fs::File,
    _api: TestServer,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A cluster whose API server listens on 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1".parse().expect("ip")).await
    }

    /// A cluster whose API server listens on `ip` (any free port).
    pub async fn start_on(ip: std::net::IpAddr) -> Self {
        let (cidr, lock) = reserve_range("127", 128, 126);
        Self::start_with(ip, cidr, lock).await
    }

    /// A cluster whose API server listens on `ip`, handing nodes blocks of
    /// `cluster_cidr` (reserved through `lock`).
    pub async fn start_with(
        ip: std::net::IpAddr,
        cluster_cidr: String,
        lock: std::fs::File,
    ) -> Self {
        Self::start_configured(ip, cluster_cidr, lock, |_| {}).await
    }

    /// A cluster on 127.0.0.1 whose controller manager's configuration
    /// `configure` adjusts (a test clock, say).
    pub async fn start_with_controllers(
        configure: impl FnOnce(&mut skiff_controllers::ControllersConfig),
    ) -> Self {
        let (cidr, lock) = reserve_range("127", 128, 126);
        Self::start_configured("127.0.0.1".parse().expect("ip"), cidr, lock, configure).await
    }

    /// A cluster on 127.0.0.1 whose Services take cluster IPs from a /16
    /// no other test holds (so that its fixed addresses, like the DNS
    /// Service's, are its own), running a proxy and the cluster DNS.
    pub async fn start_with_dns() -> Self {
        let (cidr, lock) = reserve_range("127", 128, 126);
        let (services, service_lock) = reserve_range("127", 100, 12);
        let mut c = Self::start_full(
            "127.0.0.1".parse().expect("ip"),
            cidr,
            lock,
            |_| {},
            Some((services, service_lock)),
        )
        .await;
        let (stop, stopped) = oneshot::channel::<()>();
        c.tasks.push(tokio::spawn(skiff_proxy::run(
            c.client.clone(),
            skiff_proxy::ProxyConfig::default(),
            async {
                let _ = stopped.await;
            },
        )));
        c.stops.push(stop);
        let dns = skiff_dns::Dns::start(c.client.clone(), skiff_dns::DnsConfig::default())
            .await
            .expect("the cluster DNS starts");
        let (stop, stopped) = oneshot::channel::<()>();
        c.tasks.push(tokio::spawn(dns.run_until(async {
            let _ = stopped.await;
        })));
        c.stops.push(stop);
        c
    }

    async fn start_configured(
        ip: std::net::IpAddr,
        cluster_cidr: String,
        lock: std::fs::File,
        configure: impl FnOnce(&mut skiff_controllers::ControllersConfig),
    ) -> Self {
        Self::start_full(ip, cluster_cidr, lock, configure, None).await
    }

    async fn start_full(
        ip: std::net::IpAddr,
        cluster_cidr: String,
        lock: std::fs::File,
        configure: impl FnOnce(&mut skiff_controllers::ControllersConfig),
        services: Option<(String, std::fs::File)>,
    ) -> Self {
        let cidr_lock = lock;
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = skiff_apiserver::storage::embedded::EmbeddedStorage::open(dir.path())
            .expect("open embedded storage");
        let (service_cidr, service_lock) = match services {
            Some((cidr, lock)) => (cidr, Some(lock)),
            None => (
                skiff_apiserver::allocation::DEFAULT_SERVICE_CIDR.to_owned(),
                None,
            ),
        };
        let api = TestServer::start_on(
            std::net::SocketAddr::new(ip, 0),
            std::sync::Arc::new(storage),
            skiff_apiserver::ServerConfig {
                service_cidr: service_cidr.clone(),
                // Service-account tokens for projected volumes.
                security: skiff_apiserver::server::SecurityConfig {
                    token_signer: Some(skiff_apiserver::registry::service_account::TokenSigner(
                        std::sync::Arc::new(skiff::token::generate_key()),
                    )),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await;
        let server = api.addr.to_string();
        let client = Client::connect_to(&server).await.expect("connect");
        let mut c = Self {
            client,
            server,
            cluster_cidr,
            service_cidr,
            _service_lock: service_lock,
            stops: Vec::new(),
            tasks: Vec::new(),
            _cidr_lock: cidr_lock,
            _api: api,
            _dir: dir,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let config = skiff_scheduler::SchedulerConfig {
            queue: skiff_scheduler::queue::QueueConfig {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(500),
                flush_after: Duration::from_secs(5),
            },
            ..skiff_scheduler::SchedulerConfig::new("test-scheduler")
        };
        c.tasks.push(tokio::spawn(skiff_scheduler::schedule(
            c.client.clone(),
            config,
            std::sync::Arc::new(skiff_scheduler::SchedulerStats::default()),
            async {
                let _ = stopped.await;
            },
        )));
        c.stops.push(stop);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = skiff_controllers::ControllersConfig {
            node_monitor_grace: Duration::from_secs(4),
            node_monitor_period: Duration::from_millis(250),
            pod_eviction_timeout: Duration::from_secs(1),
            cluster_cidr: c.cluster_cidr.clone(),
            // Kubernetes' pause shape (doubling per failure), 20 times shorter.
            job_backoff: skiff_controllers::job::JobBackoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(18),
            },
            ..skiff_controllers::ControllersConfig::new("test-controller-manager")
        };
        configure(&mut config);
        c.tasks
            .push(tokio::spawn(skiff_controllers::run_controllers(
                c.client.clone(),
                config,
                async {
                    let _ = stopped.await;
                },
            )));
        c.stops.push(stop);
        c
    }

    /// Waits until node `name` is Ready.
    pub async fn node_ready(&self, name: &str) -> Node {
        let nodes = self.client.nodes();
        eventually(
            &format!("node {name} to be Ready"),
            Duration::from_secs(60),
            async || {
                let n = nodes.get_opt(name).await.ok()??;
                let ready = n
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .any(|c| c.r#type == "Ready" && c.status == "True");
                ready.then_some(n)
            },
        )
        .await
    }

    /// Waits until pod `name` in "default" satisfies `check`.
    pub async fn pod_until(&self, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
        let pods = self.client.pods("default");
        eventually(
            &format!("pod {name}: {what}"),
            Duration::from_secs(90),
            async || pods.get_opt(name).await.ok()?.filter(|p| check(p)),
        )
        .await
    }

    /// Waits until pod `name` in "default" is gone.
    pub async fn pod_gone(&self, name: &str, timeout: Duration) {
        let pods = self.client.pods("default");
        eventually(
            &format!("pod {name} to be gone"),
            timeout,
            async || match pods.get_opt(name).await {
                Ok(None) => Some(()),
                _ => None,
            },
        )
        .await
    }
}

/// A /16 `FIRST.X.0.0/16` (X from `from`, `count` of them) that no other
/// test on this machine holds: a file lock per range, released when the
/// test ends, even by a crash.
pub fn reserve_range(first: &str, from: u64, count: u64) -> (String, std::fs::File) {
    let dir = std::env::temp_dir().join("skiff-e2e-cidrs");
    std::fs::create_dir_all(&dir).expect("lock directory");
    let start = rand_u64() % count;
    for i in 0..count {
        let octet = from + (start + i) % count;
        let file =
            std::fs::File::create(dir.join(format!("{first}.{octet}.lock"))).expect("lock file");
        if file.try_lock().is_ok() {
            return (format!("{first}.{octet}.0.0/16"), file);
        }
    }
    panic!(
        "every test range {first}.{from}-{} is taken",
        from + count - 1
    );
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Whether a pod is Ready.
pub fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

/// The phase of a pod.
pub fn phase(p: &Pod) -> &str {
    p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("")
}

/// A `skiff kubelet` process and the pods it started.
pub struct Kubelet {
    /// Node name.
    pub name: String,
    /// "process" or "docker".
    pub runtime: String,
    args: Vec<String>,
    child: Option<Child>,
    data_dir: tempfile::TempDir,
}

impl Kubelet {
    /// Starts node `name` with `runtime` against `cluster`, with `extra` flags.
    pub async fn start(cluster: &Cluster, name: &str, runtime: &str, extra: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = [
            "--server",
            &cluster.server,
            "kubelet",
            "--node-name",
            name,
            "--runtime",
            runtime,
            "--lease-interval",
            "1s",
            "--restart-backoff",
            "1s",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(data_dir.path().display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut k = Self {
            name: name.to_owned(),
            runtime: runtime.to_owned(),
            args,
            child: None,
            data_dir,
        };
        k.spawn();
        k
    }

    fn spawn(&mut self) {
        let child = Command::new(skiff_bin())
            .args(&self.args)
            .env("SKIFF_CONFIG", "/nonexistent/skiff-test-config")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start skiff kubelet");
        self.child = Some(child);
    }

    /// Kills the kubelet (SIGKILL); its pods keep running.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the kubelet again with the same flags and data.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn();
    }

    /// Where the kubelet keeps its data.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Processes or containers of the pod `uid` that are running now.
    pub fn running(&self, uid: &str) -> Vec<String> {
        if self.runtime == "docker" {
            let out = std::process::Command::new("docker")
                .args(["ps", "-q", "--filter"])
                .arg(format!("label=skiff.io/pod-uid={uid}"))
                .args(["--filter", "label=skiff.io/role=container"])
                .output()
                .expect("docker ps");
            return String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        }
        process_records(self.data_dir.path())
            .into_iter()
            .filter(|(pod, _, _)| pod == uid)
            .map(|(_, pid, _)| pid.to_string())
            .collect()
    }
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// (pod uid, pid, path) of the process runtime's container records whose
/// process still runs — the very process recorded (same start time), so a
/// pid the system has since given to another process is never taken for it.
fn process_records(data_dir: &Path) -> Vec<(String, u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("process/containers")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
            let pid = v["pid"].as_u64()? as u32;
            let ticks = v["start_ticks"].as_u64()?;
            let uid = v["pod_uid"].as_str()?.to_owned();
            let runs = v["exit"].is_null() && started_at(pid) == Some(ticks) && !zombie(pid);
            runs.then_some((uid, pid, path))
        })
        .collect()
}

/// Processes whose working directory is under `dir` (pods of a cluster
/// whose data directory it is), this process excepted.
fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            (pid != me && cwd.starts_with(dir)).then_some(pid)
        })
        .collect()
}

/// A process's start time in clock ticks since boot (field 22 of /proc/pid/stat).
fn started_at(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Removes every Docker container labelled as node `node`'s.
pub fn remove_docker_containers(node: &str) {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=skiff.io/node={node}"))
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        if self.runtime == "docker" {
            remove_docker_containers(&self.name);
        } else {
            kill_process_pods(self.data_dir.path());
        }
    }
}

/// Kills every container process the process runtime recorded under a
/// kubelet's `data_dir` (each is its own process group): what a killed
/// kubelet leaves running.
pub fn kill_process_pods(data_dir: &Path) {
    for (_, pid, _) in process_records(data_dir) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// A Docker network of a test, removed when dropped (after its containers).
pub struct DockerNetwork {
    /// Its name.
    pub name: String,
}

impl DockerNetwork {
    /// Creates a bridge network named after `prefix`.
    pub fn create(prefix: &str) -> Self {
        let name = unique(prefix);
        let ok = std::process::Command::new("docker")
            .args(["network", "create", "--label", "skiff.io/test=true", &name])
            .stdout(Stdio::null())
            .status()
            .expect("docker network create")
            .success();
        assert!(ok, "docker network create {name}");
        Self { name }
    }

    /// A name for a network the kubelets create, removed when dropped.
    pub fn named(prefix: &str) -> Self {
        Self {
            name: unique(prefix),
        }
    }

    /// The gateway (the host's address) of the network.
    pub fn gateway(&self) -> std::net::IpAddr {
        let out = std::process::Command::new("docker")
            .args([
                "network",
                "inspect",
                "-f",
                "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                &self.name,
            ])
            .output()
            .expect("docker network inspect");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a gateway address")
    }
}

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        // Containers still attached (test containers) go first.
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("network={}", self.name))
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Builds [`TEST_IMAGE`] from the machine's busybox-static (once per process).
pub fn ensure_test_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy("/bin/busybox", dir.path().join("busybox"))
            .expect("/bin/busybox (install busybox-static)");
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             CMD [\"/bin/sh\"]\n",
        )
        .expect("write Dockerfile");
        let ok = std::process::Command::new("docker")
            .args(["build", "-q", "-t", TEST_IMAGE])
            .arg(dir.path())
            .stdout(Stdio::null())
            .status()
            .expect("docker build")
            .success();
        assert!(ok, "docker build {TEST_IMAGE}");
    });
}

/// An image with [`TEST_IMAGE`]'s busybox plus the test gRPC health server
/// (`/skiff-test-grpc-health`) and the shared libraries it needs, copied
/// from this machine (no registry to pull a base from).
pub const GRPC_TEST_IMAGE: &str = "skiff-test/grpc-health:latest";

/// Builds [`GRPC_TEST_IMAGE`] (once per process).
pub fn ensure_grpc_test_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        ensure_test_image();
        let bin = crate::skiff_bin().with_file_name("skiff-test-grpc-health");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --bins`",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(&root).expect("rootfs");
        std::fs::copy(&bin, root.join("skiff-test-grpc-health")).expect("copy the server");
        // Its dynamic libraries, at the paths the loader looks in.
        let ldd = std::process::Command::new("ldd")
            .arg(&bin)
            .output()
            .expect("ldd");
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("a parent")).expect("lib dir");
            std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM {TEST_IMAGE}\nCOPY rootfs/ /\nCMD [\"/skiff-test-grpc-health\"]\n"),
        )
        .expect("write Dockerfile");
        let ok = std::process::Command::new("docker")
            .args(["build", "-q", "-t", GRPC_TEST_IMAGE])
            .arg(dir.path())
            .stdout(Stdio::null())
            .status()
            .expect("docker build")
            .success();
        assert!(ok, "docker build {GRPC_TEST_IMAGE}");
    });
}

/// Reads a pod's IP (waits for it).
pub fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .map(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// The uid of an object.
pub fn uid(p: &Pod) -> String {
    p.meta().uid.clone()
}

/// A "machine": a container on a Docker network running `skiff kubelet
/// --runtime docker` against the host's Docker engine (its socket mounted),
/// as a node of the cluster would. Removed when dropped, with its pods.
pub struct Machine {
    /// The node's name (and the container's).
    pub name: String,
    container: String,
    /// The kubelet's data directory, at the same path on this host and in
    /// the container: the Docker engine finds the files it bind-mounts
    /// into pods (volumes, /etc/hosts, resolv.conf) by host path.
    _data: tempfile::TempDir,
}

impl Machine {
    /// Starts node `name` in a container on `network`, joined to the
    /// cluster at `server`, putting pods on the Docker network `pods`.
    pub fn start(name: &str, network: &str, server: &str, pods: &str, extra: &[&str]) -> Self {
        ensure_test_image();
        let container = unique(name);
        let bin = skiff_bin();
        let data = tempfile::tempdir().expect("temp dir");
        let data_dir = data.path().display().to_string();
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            container.clone(),
            "--network".into(),
            network.into(),
            "--label".into(),
            "skiff.io/test=true".into(),
            "-v".into(),
            "/var/run/docker.sock:/var/run/docker.sock".into(),
            "-v".into(),
            format!("{}:/usr/local/bin/skiff:ro", bin.display()),
            "-v".into(),
            format!("{data_dir}:{data_dir}"),
        ];
        // The binary's shared libraries, from the host.
        for lib in shared_libraries(&bin) {
            args.push("-v".into());
            args.push(format!("{lib}:{lib}:ro"));
        }
        args.extend(
            [
                TEST_IMAGE,
                "/usr/local/bin/skiff",
                "--server",
                server,
                "kubelet",
                "--node-name",
                name,
                "--runtime",
                "docker",
                "--docker-network",
                pods,
                "--lease-interval",
                "1s",
                "--data-dir",
                &data_dir,
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
        );
        let out = std::process::Command::new("docker")
            .args(&args)
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            name: name.to_owned(),
            container,
            _data: data,
        }
    }

    /// Kills the machine (its kubelet); its pods' containers stay, as a
    /// dead machine's would be unreachable.
    pub fn kill(&self) {
        let _ = std::process::Command::new("docker")
            .args(["kill", &self.container])
            .stdout(Stdio::null())
            .status();
    }

    /// The kubelet's log, for failure messages.
    pub fn logs(&self) -> String {
        std::process::Command::new("docker")
            .args(["logs", "--tail", "50", &self.container])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.container])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_docker_containers(&self.name);
    }
}

/// Paths of the shared libraries `bin` loads (its loader included).
fn shared_libraries(bin: &Path) -> Vec<String> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(str::to_owned)
        })
        .collect()
}

/// A `skiff up` process with its own data directory. Dropping it kills it
/// and every pod process its nodes started.
pub struct Up {
    /// The API server's address.
    pub server: String,
    /// A client of it.
    pub client: Client,
    /// The cluster's data directory.
    pub data_dir: PathBuf,
    process: Option<crate::SkiffProcess>,
    _ranges: Ranges,
}

/// Pod and Service address ranges of one test cluster, held (by a file lock
/// in the temp directory) against every other test cluster on the machine:
/// clusters started by tests in parallel never hand out the same pod or
/// cluster IP. A data directory keeps its ranges across restarts.
pub(crate) struct Ranges {
    _lock: std::fs::File,
    pub(crate) cluster_cidr: String,
    pub(crate) service_cidr: String,
}

/// Slots of ranges: 127.128+k.0.0/16 for pods, 127.96+k.0.0/16 for Services.
const RANGE_SLOTS: u32 = 16;

impl Ranges {
    pub(crate) fn claim(data_dir: &Path) -> Self {
        let saved = data_dir.join("test-address-ranges");
        let preferred: Option<u32> = std::fs::read_to_string(&saved)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let first = preferred.unwrap_or(std::process::id() % RANGE_SLOTS);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let slots: Vec<u32> = match preferred {
                // A restarted cluster must keep its addresses.
                Some(k) => vec![k],
                None => (0..RANGE_SLOTS)
                    .map(|i| (first + i) % RANGE_SLOTS)
                    .collect(),
            };
            for k in slots {
                let path = std::env::temp_dir().join(format!("skiff-e2e-address-range-{k}.lock"));
                let Ok(file) = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                else {
                    continue;
                };
                if file.try_lock().is_ok() {
                    let _ = std::fs::create_dir_all(data_dir);
                    std::fs::write(&saved, k.to_string())
                        .expect("record the test cluster's ranges");
                    return Self {
                        _lock: file,
                        cluster_cidr: format!("127.{}.0.0/16", 128 + k),
                        service_cidr: format!("127.{}.0.0/16", 96 + k),
                    };
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no free address range for a test cluster"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Up {
    /// Runs `skiff up` on `data_dir` with `extra` flags; waits until it serves.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let dir = data_dir.display().to_string();
        let ranges = Ranges::claim(data_dir);
        let mut args = vec![
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir,
            "--no-config",
            "--cluster-cidr",
            &ranges.cluster_cidr,
            "--service-cluster-ip-range",
            &ranges.service_cidr,
        ];
        args.extend_from_slice(extra);
        let process = crate::SkiffProcess::start_listening(&args).await;
        let server = process.addr.clone();
        let client = if extra.contains(&"--insecure") {
            Client::connect_to(&server).await
        } else {
            let config = skiff::client::Config::load(&Self::admin_config_at(data_dir))
                .expect("skiff up writes the administrator's configuration");
            Client::connect(&config).await
        }
        .expect("connect to skiff up");
        Self {
            server,
            client,
            data_dir: data_dir.to_owned(),
            process: Some(process),
            _ranges: ranges,
        }
    }

    fn admin_config_at(data_dir: &Path) -> PathBuf {
        data_dir.join("pki").join("admin.config")
    }

    /// Runs `skiff <args>` as the administrator `skiff up` created.
    pub async fn skiff(&self, args: &[&str]) -> crate::CommandOutput {
        let out = tokio::process::Command::new(crate::skiff_bin())
            .args(args)
            .env("SKIFF_CONFIG", Self::admin_config_at(&self.data_dir))
            .output()
            .await
            .expect("run skiff");
        crate::CommandOutput {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Stops it as Ctrl-C would and waits; true if it exited cleanly.
    pub async fn stop(mut self) -> bool {
        let p = self.process.take().expect("running");
        p.terminate().await.success()
    }

    /// Pids of the running processes of pod `uid`.
    pub fn pod_processes(&self, uid: &str) -> Vec<u32> {
        self.records()
            .into_iter()
            .filter(|(pod, pid, _)| pod == uid && !zombie(*pid))
            .map(|(_, pid, _)| pid)
            .collect()
    }

    fn records(&self) -> Vec<(String, u32, PathBuf)> {
        let Ok(nodes) = std::fs::read_dir(self.data_dir.join("nodes")) else {
            return Vec::new();
        };
        nodes
            .filter_map(|n| n.ok())
            .flat_map(|n| process_records(&n.path()))
            .collect()
    }
}

impl Drop for Up {
    /// Kills `skiff up` if it still runs, then every pod process its nodes
    /// recorded: also after [`Up::stop`], whose clean stop leaves none, but
    /// which may have timed out (the test then panics and its pods would
    /// outlive it, holding their addresses against later tests).
    fn drop(&mut self) {
        self.process.take();
        for (_, pid, _) in self.records() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        // A pod process whose record went first (its node stopped midway)
        // still runs in its pod's directory, inside this cluster's: seen
        // holding its pod address against the next test to get the range.
        for pid in processes_under(&self.data_dir) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}
