//! `skiff kubelet`: make this machine (or a slice of it) a node.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, ValueEnum};
use skiff::api::core::v1::Taint;
use skiff_kubelet::runtime::docker::DockerOptions;
use skiff_kubelet::worker::Backoff;
use skiff_kubelet::{KubeletConfig, RuntimeKind};

use crate::{apiserver, ctx};

/// Which container runtime runs pods.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RuntimeFlag {
    /// Each container is a process (needs nothing installed).
    Process,
    /// Each pod is a sandbox container plus its containers, in Docker.
    Docker,
    /// Nothing runs; pods just go Running (scale tests).
    Sim,
}

/// Flags of `skiff kubelet`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff kubelet --node-name node-1                       # processes, pod IPs in 127.0.0.0/8\n  \
    skiff kubelet --node-name node-2 --runtime docker      # Docker containers\n  \
    skiff kubelet --node-name big --runtime sim --cpu 64 --memory 256Gi --max-pods 500\n  \
    skiff kubelet --node-name gpu-1 --node-labels gpu=true --register-with-taints gpu=true:NoSchedule")]
pub struct Args {
    /// Name of the node (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Container runtime.
    #[arg(long, value_enum, default_value = "process")]
    pub runtime: RuntimeFlag,
    /// Where logs and container records are kept (default: ~/.skiff/kubelet/NODE).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The node's address (default: the local address that reaches the API server).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Where the kubelet's own service listens, for the API server's logs
    /// and exec calls (default: the node IP, any free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Node lease renewal interval.
    #[arg(long, default_value = "10s", value_parser = apiserver::parse_duration)]
    pub lease_interval: std::time::Duration,
    /// The node status is written at least this often.
    #[arg(long, default_value = "1m", value_parser = apiserver::parse_duration)]
    pub node_status_interval: std::time::Duration,
    /// CPU capacity to report (default: the machine's CPUs), e.g. 4 or 1500m.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory capacity to report (default: the machine's memory), e.g. 8Gi.
    #[arg(long)]
    pub memory: Option<String>,
    /// Pods the node takes.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Labels of the node: key=value,...
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints of the node when it registers: key=value:Effect,...
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Pod CIDR to use when the node gets none from the controller manager.
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// First restart back-off of crashing containers (doubles up to 5m).
    #[arg(long, default_value = "10s", value_parser = apiserver::parse_duration)]
    pub restart_backoff: std::time::Duration,
    /// Docker: image of pod sandboxes (built from --busybox when missing).
    #[arg(long, default_value = "skiff/pause:latest")]
    pub sandbox_image: String,
    /// Docker: the network pods join (created when missing).
    #[arg(long, default_value = "skiff-pods")]
    pub docker_network: String,
    /// Docker: subnet of that network when the kubelet creates it.
    #[arg(long)]
    pub docker_network_cidr: Option<String>,
    /// Docker: static busybox the sandbox image is built from.
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Name servers of pods with the ClusterFirst DNS policy (default: the
    /// cluster IP of the kube-system/kube-dns Service).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain (pods' search path).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node's resolver configuration, for pods with the Default DNS policy.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Unsafe sysctls pods may set, comma-separated (a trailing * allows a
    /// prefix, e.g. net.core.*); the safe set is always allowed.
    #[arg(long, value_delimiter = ',')]
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Directory of Localhost seccomp profiles (default: DATA_DIR/seccomp).
    #[arg(long)]
    pub seccomp_profile_root: Option<PathBuf>,
}

fn parse_taint(s: &str) -> anyhow::Result<Taint> {
    let (kv, effect) = s
        .rsplit_once(':')
        .with_context(|| format!("taint {s:?}: expected key=value:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        bail!("taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        bail!("taint {s:?}: the key is empty");
    }
    Ok(Taint {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
        time_added: None,
    })
}

/// The local address this machine uses to reach `server`.
fn local_ip_towards(server: &str) -> Option<String> {
    let host = server
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let addr = host.to_socket_addrs().ok()?.next()?;
    let socket = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    socket.connect(addr).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

/// Runs `skiff kubelet` until Ctrl-C or SIGTERM.
pub async fn run(args: Args, server: Option<&str>) -> anyhow::Result<()> {
    let client = ctx::client(server).await?;
    let node_name = match args.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_ascii_lowercase())
            .context("no --node-name and no /etc/hostname")?,
    };
    let runtime = match args.runtime {
        RuntimeFlag::Process => RuntimeKind::Process,
        RuntimeFlag::Sim => RuntimeKind::Sim,
        RuntimeFlag::Docker => RuntimeKind::Docker(DockerOptions {
            sandbox_image: args.sandbox_image,
            network: args.docker_network,
            network_cidr: args.docker_network_cidr,
            busybox: args.busybox,
        }),
    };
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".skiff/kubelet")
            .join(&node_name),
    };
    // Records name paths under it: make them absolute.
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    let mut config = KubeletConfig::new(&node_name, runtime, data_dir);
    config.node_ip = args
        .node_ip
        .or_else(|| local_ip_towards(client.server()))
        .unwrap_or_else(|| "127.0.0.1".into());
    config.listen = match args.listen {
        Some(l) => l,
        None => SocketAddr::new(
            config
                .node_ip
                .parse()
                .with_context(|| format!("--node-ip {:?} is not an IP address", config.node_ip))?,
            0,
        ),
    };
    config.lease_interval = args.lease_interval;
    config.status_interval = args.node_status_interval;
    config.cpu = args.cpu;
    config.memory = args.memory;
    config.max_pods = args.max_pods;
    config.pod_cidr = args.pod_cidr;
    config.cluster_dns = args.cluster_dns.iter().map(|ip| ip.to_string()).collect();
    config.cluster_domain = args.cluster_domain.clone();
    config.resolv_conf = args.resolv_conf.clone();
    config.allowed_unsafe_sysctls = args.allowed_unsafe_sysctls.clone();
    if let Some(dir) = &args.seccomp_profile_root {
        config.seccomp_dir = dir.clone();
    }
    config.backoff = Backoff {
        initial: args.restart_backoff,
        ..Backoff::default()
    };
    for l in &args.node_labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("node label {l:?}: expected key=value"))?;
        config.labels.push((k.to_owned(), v.to_owned()));
    }
    for t in &args.register_with_taints {
        config.taints.push(parse_taint(t)?);
    }
    tracing::info!(server = client.server(), node = %node_name, node_ip = %config.node_ip, "kubelet starting");
    skiff_kubelet::run(client, config, apiserver::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_with_and_without_values() {
        let t = parse_taint("gpu=true:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_str(), t.effect.as_str()),
            ("gpu", "true", "NoSchedule")
        );
        let t = parse_taint("dedicated:NoExecute").unwrap();
        assert_eq!((t.key.as_str(), t.value.as_str()), ("dedicated", ""));
        assert!(parse_taint("gpu=true").is_err());
        assert!(parse_taint("gpu=true:Sometimes").is_err());
    }
}
