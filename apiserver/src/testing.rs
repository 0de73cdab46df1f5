//! Helpers for tests that need real processes: a real `etcd` server on free
//! loopback ports with a temporary data directory, killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `etcd` (Debian package `etcd-server`), stopped when dropped.
pub struct EtcdServer {
    child: Child,
    /// Client URL, e.g. `http://127.0.0.1:34567`.
    pub endpoint: String,
    args: Vec<std::ffi::OsString>,
    _dir: tempfile::TempDir,
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

fn etcd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return PathBuf::from(p);
    }
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("etcd")
}

impl EtcdServer {
    /// Starts etcd and waits until it answers (up to 30 s).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        for attempt in 0..5 {
            let client = free_port();
            let peer = free_port();
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = dir.path().join(format!("data-{attempt}"));
            let (child, args) = spawn_etcd(EtcdFlags {
                name: "skiff-test",
                data: &data,
                endpoint: &endpoint,
                peer_url: &peer_url,
                initial_cluster: &format!("skiff-test={peer_url}"),
                token: None,
            });
            let mut server = EtcdServer {
                child,
                endpoint,
                args,
                _dir: tempfile::tempdir().expect("temp dir"),
            };
            if server.wait_ready(Duration::from_secs(30)).await {
                server._dir = dir;
                return server;
            }
            // Port taken between probe and bind, most likely: try others.
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        panic!("etcd did not start on any free port");
    }

    /// Kills etcd (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same ports and data, after [`kill`](Self::kill).
    pub async fn restart(&mut self) {
        self.child = Command::new(etcd_binary())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart etcd");
        assert!(
            self.wait_ready(Duration::from_secs(30)).await,
            "etcd restarts"
        );
    }

    async fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut c) = etcd_client::Client::connect([self.endpoint.as_str()], None).await
                && c.get("health-probe", None).await.is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flags of one etcd member.
struct EtcdFlags<'a> {
    name: &'a str,
    data: &'a std::path::Path,
    endpoint: &'a str,
    peer_url: &'a str,
    initial_cluster: &'a str,
    /// A token of its own for a new cluster of several members.
    token: Option<&'a str>,
}

/// Starts an etcd member; returns it and its arguments (to restart it).
fn spawn_etcd(f: EtcdFlags<'_>) -> (Child, Vec<std::ffi::OsString>) {
    let mut cmd = Command::new(etcd_binary());
    cmd.arg("--name")
        .arg(f.name)
        .arg("--data-dir")
        .arg(f.data)
        .args(["--listen-client-urls", f.endpoint])
        .args(["--advertise-client-urls", f.endpoint])
        .args(["--listen-peer-urls", f.peer_url])
        .args(["--initial-advertise-peer-urls", f.peer_url])
        .args(["--initial-cluster", f.initial_cluster])
        .args(["--log-level", "error", "--logger", "zap"])
        // etcd 3.5's default (3.4's is off): a member that was cut off does
        // not force a new election with a higher term when it returns.
        .arg("--pre-vote");
    if let Some(token) = f.token {
        cmd.args([
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            token,
        ]);
    }
    let args = cmd.get_args().map(|a| a.to_owned()).collect();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd: install it with `apt-get install -y etcd-server`");
    (child, args)
}

/// Reads one sample of etcd's own Prometheus metrics (`/metrics` on a client
/// URL), e.g. `etcd_debugging_mvcc_watch_stream_total`.
pub async fn etcd_metric(endpoint: &str, name: &str) -> f64 {
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to etcd's metrics");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("ask etcd for its metrics");
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .await
        .expect("read etcd's metrics");
    body.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.starts_with(' ')
                .then(|| rest.trim().parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("etcd reports no {name}"))
}

/// One member of an [`EtcdCluster`].
pub struct EtcdMember {
    /// Client URL.
    pub endpoint: String,
    child: Option<Child>,
    args: Vec<std::ffi::OsString>,
}

/// A real etcd cluster of several members on free loopback ports (each with
/// its own data directory), every member killed on drop.
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers (up to 60 s).
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        'attempt: for attempt in 0..5 {
            let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let initial: Vec<String> = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
                .collect();
            let mut members = Vec::new();
            for (i, (client, peer)) in ports.iter().enumerate() {
                let endpoint = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let data = dir.path().join(format!("a{attempt}-m{i}"));
                let (child, args) = spawn_etcd(EtcdFlags {
                    name: &format!("m{i}"),
                    data: &data,
                    endpoint: &endpoint,
                    peer_url: &peer_url,
                    initial_cluster: &initial.join(","),
                    token: Some(&format!("skiff-test-{attempt}")),
                });
                members.push(EtcdMember {
                    endpoint,
                    child: Some(child),
                    args,
                });
            }
            let mut cluster = EtcdCluster {
                members,
                _dir: tempfile::tempdir().expect("temp dir"),
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            for i in 0..n {
                if !cluster.wait_member(i, deadline).await {
                    // A port taken between probe and bind, most likely.
                    drop(cluster);
                    continue 'attempt;
                }
            }
            cluster._dir = dir;
            return cluster;
        }
        panic!("an etcd cluster of {n} did not start on free ports");
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Kills member `i` (SIGKILL), keeping its data.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its ports and data and waits until it
    /// serves quorum reads.
    pub async fn restart(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.child = Some(
            Command::new(etcd_binary())
                .args(&m.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("restart etcd"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        assert!(
            self.wait_member(i, deadline).await,
            "etcd member {i} restarts"
        );
    }

    /// The index of the current leader (waits up to 30 s for one).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                if let Ok(mut c) = etcd_client::Client::connect([m.endpoint.as_str()], None).await
                    && let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(1), c.status()).await
                    && s.header().map(|h| h.member_id()) == Some(s.leader())
                {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the etcd cluster elected no leader"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_member(&mut self, i: usize, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            let m = &mut self.members[i];
            if let Some(c) = m.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false;
            }
            // A quorum read: the member is in a cluster with a leader.
            if let Ok(mut c) = etcd_client::Client::connect([m.endpoint.as_str()], None).await
                && let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(2), c.get("health-probe", None)).await
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// An API server running in this process on an ephemeral port, stopped on drop.
pub struct TestServer {
    /// Address it listens on.
    pub addr: std::net::SocketAddr,
    /// Its storage.
    pub storage: std::sync::Arc<dyn crate::storage::Storage>,
    /// Its watch caches' statistics.
    pub stats: crate::server::CacheStatsHandle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server over `storage`.
    pub async fn start(storage: std::sync::Arc<dyn crate::storage::Storage>) -> Self {
        Self::start_with(storage, crate::ServerConfig::default()).await
    }

    /// Starts a server over `storage` with `config`.
    pub async fn start_with(
        storage: std::sync::Arc<dyn crate::storage::Storage>,
        config: crate::ServerConfig,
    ) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("address"), storage, config).await
    }

    /// Starts a server on `addr` (to restart one where clients expect it).
    pub async fn start_on(
        addr: std::net::SocketAddr,
        storage: std::sync::Arc<dyn crate::storage::Storage>,
        config: crate::ServerConfig,
    ) -> Self {
        let server = crate::ApiServer::with_config(storage.clone(), config)
            .await
            .expect("API server builds");
        let stats = server.cache_stats_handle();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the test server's port");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(async move {
            let _ = server
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            storage,
            stats,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Starts a server on a fresh etcd (returned too; keep it alive).
    pub async fn on_etcd(config: crate::ServerConfig) -> (Self, EtcdServer) {
        let etcd = EtcdServer::start().await;
        let storage = crate::storage::etcd::EtcdStorage::connect(
            std::slice::from_ref(&etcd.endpoint),
            "/skiff",
        )
        .await
        .expect("connect to the test etcd");
        (
            Self::start_with(std::sync::Arc::new(storage), config).await,
            etcd,
        )
    }

    /// Starts a server on embedded storage in `dir` with `config`.
    pub async fn embedded_with(dir: &std::path::Path, config: crate::ServerConfig) -> Self {
        let storage =
            crate::storage::embedded::EmbeddedStorage::open(dir).expect("open embedded storage");
        Self::start_with(std::sync::Arc::new(storage), config).await
    }

    /// Starts a server on embedded storage in `dir`.
    pub async fn embedded(dir: &std::path::Path) -> Self {
        let storage =
            crate::storage::embedded::EmbeddedStorage::open(dir).expect("open embedded storage");
        Self::start(std::sync::Arc::new(storage)).await
    }

    /// A client transport to the server.
    pub async fn transport(&self) -> skiff::client::Transport {
        skiff::client::connect(&self.addr.to_string(), skiff::client::Credentials::none())
            .await
            .expect("connect to the test server")
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Opens embedded storage in `dir`, waiting (up to 10 s) for a previous
/// server on the same directory to release it.
pub async fn reopen_embedded(dir: &std::path::Path) -> crate::storage::embedded::EmbeddedStorage {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match crate::storage::embedded::EmbeddedStorage::open(dir) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen {}: {e}", dir.display()),
        }
    }
}

/// The codec fuzzers use to put raw bytes on the wire.
pub use skiff::testing::fuzz::RawCodec;
