//! A 3-member etcd cluster in Docker containers on a private network this
//! test creates (and removes), so that a member can be partitioned from
//! its peers and its clients with `docker network disconnect`. The image is
//! built locally `FROM scratch` out of the host's own `etcd` binary and the
//! libraries it links.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::unique;

const IMAGE: &str = "skiff-test/etcd:latest";
const LABEL: &str = "skiff.io/test=true";

/// The members, their network and fixed addresses; all removed on drop.
pub struct DockerEtcd {
    network: String,
    /// Container names, by member.
    containers: Vec<String>,
    /// Each member's address on the network.
    ips: Vec<String>,
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("run docker");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Builds [`IMAGE`] from the host's etcd and the shared libraries `ldd` names.
fn build_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("etcd (install etcd-server)");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut dockerfile = String::from("FROM scratch\nCOPY etcd /etcd\n");
        std::fs::copy(etcd, dir.path().join("etcd")).expect("copy etcd");
        let ldd = Command::new("ldd").arg(etcd).output().expect("ldd etcd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line
                .split("=>")
                .last()
                .and_then(|p| p.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(path) = path {
                let file = format!("lib{}", dockerfile.len());
                std::fs::copy(path, dir.path().join(&file)).expect("copy a library");
                dockerfile.push_str(&format!("COPY {file} {path}\n"));
            }
        }
        dockerfile.push_str("ENTRYPOINT [\"/etcd\"]\n");
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        let (ok, out) = docker(&["build", "-q", "-t", IMAGE, dir.path().to_str().unwrap()]);
        assert!(ok, "docker build {IMAGE}: {out}");
    });
}

impl DockerEtcd {
    /// Starts 3 members on a new network and waits until each serves quorum reads.
    pub async fn start() -> Self {
        build_image();
        let network = unique("skiff-etcd");
        // A subnet of our own so members keep their addresses when reconnected.
        let mut subnet = None;
        for attempt in 0..20u32 {
            let third = (std::process::id() + attempt * 37) % 250 + 1;
            let candidate = format!("10.213.{third}");
            let (ok, _) = docker(&[
                "network",
                "create",
                "--label",
                LABEL,
                "--subnet",
                &format!("{candidate}.0/24"),
                &network,
            ]);
            if ok {
                subnet = Some(candidate);
                break;
            }
        }
        let subnet = subnet.expect("a free subnet for the etcd network");
        let ips: Vec<String> = (0..3).map(|i| format!("{subnet}.{}", 11 + i)).collect();
        let initial: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect();
        let mut cluster = Self {
            network: network.clone(),
            containers: Vec::new(),
            ips: ips.clone(),
        };
        for (i, ip) in ips.iter().enumerate() {
            let name = format!("{network}-m{i}");
            let (ok, out) = docker(&[
                "run",
                "-d",
                "--label",
                LABEL,
                "--name",
                &name,
                "--network",
                &network,
                "--ip",
                ip,
                IMAGE,
                "--name",
                &format!("m{i}"),
                "--data-dir",
                "/data",
                "--listen-client-urls",
                "http://0.0.0.0:2379",
                "--advertise-client-urls",
                &format!("http://{ip}:2379"),
                "--listen-peer-urls",
                "http://0.0.0.0:2380",
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &network,
                // etcd 3.5's default (3.4's is off): a member that was cut
                // off does not force an election when it returns.
                "--pre-vote",
            ]);
            assert!(ok, "docker run etcd member {i}: {out}");
            cluster.containers.push(name);
        }
        for i in 0..3 {
            cluster.wait_member(i).await;
        }
        cluster
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.ips
            .iter()
            .map(|ip| format!("http://{ip}:2379"))
            .collect()
    }

    /// Kills member `i` (SIGKILL), keeping its data.
    pub fn kill(&self, i: usize) {
        let (ok, out) = docker(&["kill", &self.containers[i]]);
        assert!(ok, "docker kill: {out}");
    }

    /// Starts member `i` again and waits until it serves quorum reads.
    pub async fn restart(&self, i: usize) {
        let (ok, out) = docker(&["start", &self.containers[i]]);
        assert!(ok, "docker start: {out}");
        self.wait_member(i).await;
    }

    /// Cuts member `i` off the network (from its peers and every client),
    /// or puts it back on its address.
    pub async fn partition(&self, i: usize, cut: bool) {
        let (ok, out) = if cut {
            docker(&[
                "network",
                "disconnect",
                "-f",
                &self.network,
                &self.containers[i],
            ])
        } else {
            docker(&[
                "network",
                "connect",
                "--ip",
                &self.ips[i],
                &self.network,
                &self.containers[i],
            ])
        };
        assert!(ok, "docker network (dis)connect: {out}");
        if !cut {
            self.wait_member(i).await;
        }
    }

    /// The index of the current leader (waits up to 30 s for one).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, endpoint) in self.endpoints().iter().enumerate() {
                let status = async {
                    let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                        .await
                        .ok()?;
                    c.status().await.ok()
                };
                if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), status).await
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

    async fn wait_member(&self, i: usize) {
        let endpoint = self.endpoints()[i].clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let read = async {
                let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                    .await
                    .ok()?;
                c.get("health-probe", None).await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), read).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} in Docker does not serve within 60 s: {}",
                docker(&["logs", "--tail", "20", &self.containers[i]]).1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for DockerEtcd {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}
