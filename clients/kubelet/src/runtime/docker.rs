//! The Docker runtime: the Docker engine on this machine, through its API.
//! Each pod is a *sandbox* container that owns the pod's network namespace
//! (Kubernetes' pause container), and each of its containers joins that
//! namespace, so they share the pod IP and `localhost`. Images are never
//! pulled: a missing image is reported as such.
//!
//! Pods are attached to one Docker bridge network (by default
//! `skiff-pods`) shared by the nodes on this engine, so pods on different
//! nodes reach each other and the host reaches every pod. When the node's
//! pod CIDR lies inside that network's subnet, the kubelet picks each pod's
//! IP from it; otherwise Docker does. Every object carries labels
//! (`skiff.io/node`, `skiff.io/pod-uid`, `skiff.io/container`,
//! `skiff.io/attempt`) by which a restarted kubelet finds its pods again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, ExecConfig, HostConfig,
    HostConfigLogConfig, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, InspectNetworkOptions,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::StreamExt;
use skiff::net::Ipv4Cidr;

use super::{
    ContainerConfig, ContainerRecord, ContainerState, ExecOutput, ExecStream, LogStream, Runtime,
    RuntimeError, Sandbox, SandboxConfig, Seccomp,
};

const LABEL_NODE: &str = "skiff.io/node";
const LABEL_ROLE: &str = "skiff.io/role";
const LABEL_POD_UID: &str = "skiff.io/pod-uid";
const LABEL_POD_NAME: &str = "skiff.io/pod-name";
const LABEL_POD_NAMESPACE: &str = "skiff.io/pod-namespace";
const LABEL_CONTAINER: &str = "skiff.io/container";
const LABEL_ATTEMPT: &str = "skiff.io/attempt";

/// How the Docker runtime is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptions {
    /// Image of sandbox containers; built from `busybox` when missing.
    pub sandbox_image: String,
    /// The Docker network pods join (created when missing).
    pub network: String,
    /// Subnet of that network when the kubelet creates it (Docker picks one when unset).
    pub network_cidr: Option<String>,
    /// A static busybox binary, to build the sandbox image from.
    pub busybox: PathBuf,
}

impl Default for DockerOptions {
    fn default() -> Self {
        Self {
            sandbox_image: "skiff/pause:latest".into(),
            network: "skiff-pods".into(),
            network_cidr: None,
            busybox: PathBuf::from("/bin/busybox"),
        }
    }
}

/// Runs pods as Docker containers.
pub struct DockerRuntime {
    docker: Docker,
    node: String,
    options: DockerOptions,
    /// The network's subnet contains the node's pod CIDR: the kubelet picks pod IPs.
    kubelet_ips: bool,
    version: String,
}

fn failure(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failure(e.to_string())
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn message_of(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn time(s: Option<&String>) -> SystemTime {
    s.and_then(|s| prost_types::Timestamp::from_str(s).ok())
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Whether `inner` lies inside `outer`.
fn cidr_contains(outer: &str, inner: &str) -> bool {
    match (outer.parse::<Ipv4Cidr>(), inner.parse::<Ipv4Cidr>()) {
        (Ok(o), Ok(i)) => o.contains(&i),
        _ => false,
    }
}

/// The part of a pod network Docker hands out itself (to containers joined
/// to it that are not pods, like a kubelet in a container): its last /24,
/// which node pod CIDRs, allocated from the start, reach last.
fn dynamic_range(cidr: &str) -> Option<String> {
    let range: Ipv4Cidr = cidr.parse().ok()?;
    if range.prefix() > 23 {
        return None;
    }
    let blocks = 1u64 << (24 - range.prefix());
    Some(range.subnet(24, blocks - 1)?.to_string())
}

/// A tar archive of regular files, enough for a build context.
fn tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, mode) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let s = format!("{:0width$o}\0", value, width = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        };
        octal(&mut header[100..108], u64::from(*mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

impl DockerRuntime {
    /// Connects to the Docker engine (`DOCKER_HOST` or its socket), makes
    /// sure the sandbox image and the pod network exist, for node `node`
    /// whose pod CIDR is `pod_cidr`.
    pub async fn connect(
        node: &str,
        options: DockerOptions,
        pod_cidr: Option<&str>,
    ) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Failure(format!("cannot reach the Docker engine: {e}")))?
            .negotiate_version()
            .await
            .map_err(|e| {
                RuntimeError::Failure(format!(
                    "cannot reach the Docker engine (is it running?): {e}"
                ))
            })?;
        let version = docker.version().await.map_err(|e| {
            RuntimeError::Failure(format!(
                "cannot reach the Docker engine (is it running?): {e}"
            ))
        })?;
        let mut runtime = Self {
            docker,
            node: node.to_owned(),
            options,
            kubelet_ips: false,
            version: format!("docker://{}", version.version.unwrap_or_default()),
        };
        runtime.ensure_sandbox_image().await?;
        let subnets = runtime.ensure_network().await?;
        runtime.kubelet_ips = pod_cidr.is_some_and(|c| subnets.iter().any(|s| cidr_contains(s, c)));
        if let Some(c) = pod_cidr
            && !runtime.kubelet_ips
        {
            tracing::info!(pod_cidr = c, network = %runtime.options.network, ?subnets,
                "the node's pod CIDR is outside the pod network; Docker assigns pod IPs");
        }
        runtime.join_pod_network().await;
        Ok(runtime)
    }

    async fn ensure_sandbox_image(&self) -> Result<(), RuntimeError> {
        let image = &self.options.sandbox_image;
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let busybox = std::fs::read(&self.options.busybox).map_err(|e| {
            RuntimeError::Failure(format!(
                "the sandbox image {image:?} is missing and cannot be built from {}: {e} (install busybox-static, or pass --busybox)",
                self.options.busybox.display()
            ))
        })?;
        tracing::info!(image, "building the sandbox image");
        let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\n\
            ENTRYPOINT [\"/bin/busybox\", \"sh\", \"-c\", \"trap 'exit 0' TERM INT; while true; do /bin/busybox sleep 3600 & wait $!; done\"]\n";
        let context = tar(&[
            ("Dockerfile", dockerfile.as_bytes(), 0o644),
            ("busybox", &busybox, 0o755),
        ]);
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(image)
            .rm(true)
            .build();
        let mut build = std::pin::pin!(self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(Bytes::from(context)))
        ));
        while let Some(step) = build.next().await {
            let step = step.map_err(|e| failure(format!("building the sandbox image: {e}")))?;
            if let Some(err) = step.error_detail.and_then(|d| d.message) {
                return Err(failure(format!("building the sandbox image: {err}")));
            }
        }
        Ok(())
    }

    /// Creates the pod network unless it exists; returns its subnets.
    async fn ensure_network(&self) -> Result<Vec<String>, RuntimeError> {
        let name = &self.options.network;
        let subnets = |ipam: Option<Ipam>| -> Vec<String> {
            ipam.and_then(|i| i.config)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.subnet)
                .collect()
        };
        match self
            .docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => return Ok(subnets(n.ipam)),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(failure(format!("inspecting network {name:?}: {e}"))),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            ipam: self.options.network_cidr.as_ref().map(|c| Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(c.clone()),
                    ip_range: dynamic_range(c),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some([("skiff.io/managed".to_owned(), "true".to_owned())].into()),
            ..Default::default()
        };
        if let Err(e) = self.docker.create_network(request).await
            && status_of(&e) != Some(409)
        {
            return Err(failure(format!(
                "creating network {name:?}: {}",
                message_of(&e)
            )));
        }
        // Old engines allow two networks of one name when two kubelets race:
        // every kubelet keeps the oldest and drops the others.
        let mut same: Vec<_> = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&HashMap::from([("name", vec![name.as_str()])]))
                    .build(),
            ))
            .await
            .map_err(failure)?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name.as_str()))
            .collect();
        same.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        for extra in same.iter().skip(1) {
            if let Some(id) = &extra.id {
                let _ = self.docker.remove_network(id).await;
            }
        }
        tracing::info!(network = %name, "created the pod network");
        Ok(same
            .into_iter()
            .next()
            .map(|n| subnets(n.ipam))
            .unwrap_or_default())
    }

    /// When the kubelet itself runs in a container, joins the pod network so
    /// that its probes reach pods.
    async fn join_pod_network(&self) {
        if !std::path::Path::new("/.dockerenv").exists() {
            return;
        }
        let Ok(me) = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()) else {
            return;
        };
        let Ok(info) = self.docker.inspect_container(&me, None).await else {
            return;
        };
        let joined = info
            .network_settings
            .and_then(|n| n.networks)
            .is_some_and(|n| n.contains_key(&self.options.network));
        if !joined {
            let request = bollard::models::NetworkConnectRequest {
                container: me.clone(),
                ..Default::default()
            };
            match self
                .docker
                .connect_network(&self.options.network, request)
                .await
            {
                Ok(()) => tracing::info!(network = %self.options.network, "joined the pod network"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot join the pod network; probes may not reach pods")
                }
            }
        }
    }

    /// Containers of this node with `labels`.
    async fn list(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let mut filters: Vec<String> = vec![format!("{LABEL_NODE}={}", self.node)];
        filters.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([(
                "label",
                filters.iter().map(String::as_str).collect::<Vec<_>>(),
            )]))
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(failure)
    }

    async fn sandbox_ip(&self, id: &str) -> Result<String, RuntimeError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(failure)?;
        let networks = info
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        Ok(networks
            .get(&self.options.network)
            .or_else(|| networks.values().next())
            .and_then(|e| e.ip_address.clone())
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into()))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .remove_container(
                id,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(failure(e)),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn version(&self) -> String {
        self.version.clone()
    }

    fn assigns_ips(&self) -> bool {
        !self.kubelet_ips
    }

    fn has_images(&self) -> bool {
        true
    }

    async fn image_user(&self, image: &str) -> Result<String, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.config.and_then(|c| c.user).unwrap_or_default()),
            Err(e) if status_of(&e) == Some(404) => Err(RuntimeError::ImageNotPresent {
                image: image.to_owned(),
            }),
            Err(e) => Err(failure(e)),
        }
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        let name = format!(
            "skiff_POD_{}_{}_{}",
            config.name, config.namespace, config.pod_uid
        );
        let labels: HashMap<String, String> = [
            (LABEL_NODE, self.node.as_str()),
            (LABEL_ROLE, "sandbox"),
            (LABEL_POD_UID, config.pod_uid.as_str()),
            (LABEL_POD_NAME, config.name.as_str()),
            (LABEL_POD_NAMESPACE, config.namespace.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (network_mode, networking_config) = if config.host_network {
            ("host".to_owned(), None)
        } else {
            let endpoint = EndpointSettings {
                ipam_config: config.ip.clone().filter(|_| self.kubelet_ips).map(|ip| {
                    EndpointIpamConfig {
                        ipv4_address: Some(ip),
                        ..Default::default()
                    }
                }),
                ..Default::default()
            };
            (
                self.options.network.clone(),
                Some(NetworkingConfig {
                    endpoints_config: Some([(self.options.network.clone(), endpoint)].into()),
                }),
            )
        };
        let body = ContainerCreateBody {
            image: Some(self.options.sandbox_image.clone()),
            hostname: (!config.host_network).then(|| config.hostname.chars().take(63).collect()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(network_mode),
                // The pod's containers join its IPC namespace (and PID
                // namespace when they share processes), as Kubernetes' do.
                ipc_mode: Some("shareable".into()),
                sysctls: (!config.sysctls.is_empty())
                    .then(|| config.sysctls.iter().cloned().collect()),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        };
        // A leftover of the same pod (a start interrupted) goes first.
        self.remove(&name).await?;
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| {
                RuntimeError::Failure(format!("creating the pod sandbox: {}", message_of(&e)))
            })?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(RuntimeError::Failure(format!(
                "starting the pod sandbox: {}",
                message_of(&e)
            )));
        }
        let ip = if config.host_network {
            "127.0.0.1".to_owned()
        } else {
            self.sandbox_ip(&created.id).await?
        };
        Ok(Sandbox { id: created.id, ip })
    }

    async fn find_sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
        for c in self
            .list(&[(LABEL_ROLE, "sandbox"), (LABEL_POD_UID, pod_uid)])
            .await?
        {
            let Some(id) = c.id else { continue };
            let running = matches!(
                c.state,
                Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            );
            if running {
                let ip = self.sandbox_ip(&id).await?;
                return Ok(Some(Sandbox { id, ip }));
            }
            // A dead sandbox has lost the pod's network: make a new one.
            self.remove(&id).await?;
        }
        Ok(None)
    }

    async fn remove_sandbox(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        for c in self.list(&[(LABEL_POD_UID, pod_uid)]).await? {
            if let Some(id) = c.id {
                self.remove(&id).await?;
            }
        }
        Ok(())
    }

    async fn start_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        if self.docker.inspect_image(&config.image).await.is_err() {
            return Err(RuntimeError::ImageNotPresent {
                image: config.image.clone(),
            });
        }
        let name = format!(
            "skiff_{}_{}_{}_{}_{}",
            config.name, config.pod_name, config.namespace, config.pod_uid, config.attempt
        );
        let labels: HashMap<String, String> = [
            (LABEL_NODE, self.node.clone()),
            (LABEL_ROLE, "container".to_owned()),
            (LABEL_POD_UID, config.pod_uid.clone()),
            (LABEL_POD_NAME, config.pod_name.clone()),
            (LABEL_POD_NAMESPACE, config.namespace.clone()),
            (LABEL_CONTAINER, config.name.clone()),
            (LABEL_ATTEMPT, config.attempt.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Kubernetes: `command` replaces the image's entrypoint, `args` its cmd.
        let (entrypoint, cmd) = match (config.command.is_empty(), config.args.is_empty()) {
            (true, true) => (None, None),
            (true, false) => (None, Some(config.args.clone())),
            (false, _) => (Some(config.command.clone()), Some(config.args.clone())),
        };
        let sec = &config.security;
        let user = match (sec.user, sec.group) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            // A group alone: the image's user (without its group) with that group.
            (None, Some(g)) => {
                let image_user = self.image_user(&config.image).await?;
                let user = image_user.split(':').next().unwrap_or("");
                Some(format!("{}:{g}", if user.is_empty() { "0" } else { user }))
            }
            (None, None) => None,
        };
        let mut security_opt = Vec::new();
        if sec.no_new_privileges {
            security_opt.push("no-new-privileges:true".to_owned());
        }
        match &sec.seccomp {
            Some(Seccomp::Unconfined) => security_opt.push("seccomp=unconfined".into()),
            Some(Seccomp::Localhost(profile)) => security_opt.push(format!("seccomp={profile}")),
            // Docker's default profile is the runtime default.
            Some(Seccomp::RuntimeDefault) | None => {}
        }
        let caps = |list: &[String]| -> Option<Vec<String>> {
            (!list.is_empty()).then(|| {
                list.iter()
                    .map(|c| {
                        if c == "ALL" {
                            c.clone()
                        } else {
                            format!("CAP_{c}")
                        }
                    })
                    .collect()
            })
        };
        // Sandboxes made before pods shared IPC are not shareable: their
        // containers keep their own IPC namespace rather than fail.
        let shareable_ipc = self
            .docker
            .inspect_container(&sandbox.id, None)
            .await
            .ok()
            .and_then(|i| i.host_config?.ipc_mode)
            .is_some_and(|m| m == "shareable");
        let body = ContainerCreateBody {
            image: Some(config.image.clone()),
            entrypoint,
            cmd,
            env: Some(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: config.working_dir.clone(),
            labels: Some(labels),
            user,
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{}", sandbox.id)),
                ipc_mode: shareable_ipc.then(|| format!("container:{}", sandbox.id)),
                pid_mode: config
                    .share_process_namespace
                    .then(|| format!("container:{}", sandbox.id)),
                group_add: (!sec.supplemental_groups.is_empty()).then(|| {
                    sec.supplemental_groups
                        .iter()
                        .map(|g| g.to_string())
                        .collect()
                }),
                readonly_rootfs: sec.read_only_root.then_some(true),
                privileged: sec.privileged.then_some(true),
                cap_add: caps(&sec.cap_add),
                cap_drop: caps(&sec.cap_drop),
                security_opt: (!security_opt.is_empty()).then_some(security_opt),
                binds: Some(
                    config
                        .mounts
                        .iter()
                        .map(|m| {
                            let mode = if m.read_only { ":ro" } else { "" };
                            format!("{}:{}{mode}", m.host_path.display(), m.container_path)
                        })
                        .collect(),
                ),
                nano_cpus: config.cpu_limit_milli.map(|m| m * 1_000_000),
                memory: config.memory_limit,
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(
                        [
                            ("max-size".to_owned(), "10m".to_owned()),
                            ("max-file".to_owned(), "2".to_owned()),
                        ]
                        .into(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.remove(&name).await?;
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| RuntimeError::CannotStart(message_of(&e)))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(RuntimeError::CannotStart(message_of(&e)));
        }
        Ok(created.id)
    }

    async fn container_state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let info = match self.docker.inspect_container(id, None).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(failure(e)),
        };
        let state = info.state.unwrap_or_default();
        let started_at = time(state.started_at.as_ref());
        if state.running == Some(true) {
            return Ok(ContainerState::Running { started_at });
        }
        let exit_code = state.exit_code.unwrap_or(0) as i32;
        let reason = if state.oom_killed == Some(true) {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        Ok(ContainerState::Exited {
            exit_code,
            reason: reason.into(),
            started_at,
            finished_at: time(state.finished_at.as_ref()),
        })
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let seconds = grace.as_secs() as i32 + i32::from(grace.subsec_nanos() > 0);
        match self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptionsBuilder::default().t(seconds).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(e) if matches!(status_of(&e), Some(304)) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(RuntimeError::NotFound(id.to_owned())),
            Err(e) => Err(failure(e)),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove(id).await
    }

    async fn containers(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        Ok(self
            .list(&[(LABEL_ROLE, "container")])
            .await?
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(ContainerRecord {
                    id: c.id?,
                    pod_uid: labels.get(LABEL_POD_UID)?.clone(),
                    name: labels.get(LABEL_CONTAINER)?.clone(),
                    attempt: labels.get(LABEL_ATTEMPT)?.parse().ok()?,
                    log_path: PathBuf::new(),
                })
            })
            .collect())
    }

    async fn sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self
            .list(&[(LABEL_ROLE, "sandbox")])
            .await?
            .into_iter()
            .filter_map(|c| c.labels.unwrap_or_default().remove(LABEL_POD_UID))
            .collect())
    }

    async fn exec(&self, id: &str, command: &[String]) -> Result<ExecStream, RuntimeError> {
        let exec = self
            .docker
            .create_exec(
                id,
                ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(command.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| match status_of(&e) {
                Some(404) => RuntimeError::NotFound(id.to_owned()),
                _ => failure(message_of(&e)),
            })?;
        let started = self
            .docker
            .start_exec(&exec.id, Some(StartExecOptions::default()))
            .await
            .map_err(failure)?;
        let StartExecResults::Attached { output, .. } = started else {
            return Err(failure("exec started detached"));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let mut output = output;
            while let Some(chunk) = output.next().await {
                let item = match chunk {
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        ExecOutput::Stderr(message)
                    }
                    Ok(other) => ExecOutput::Stdout(other.into_bytes()),
                    Err(_) => break,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            let code = docker
                .inspect_exec(&exec.id)
                .await
                .ok()
                .and_then(|i| i.exit_code)
                .unwrap_or(-1) as i32;
            let _ = tx.send(ExecOutput::Exit(code)).await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn logs(
        &self,
        container: &ContainerRecord,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<LogStream, RuntimeError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail.map(|n| n.to_string()).unwrap_or_else(|| "all".into()))
            .build();
        let stream = self
            .docker
            .logs(&container.id, Some(options))
            .map(|chunk| chunk.map(|c| c.into_bytes()).map_err(failure));
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_containment() {
        assert!(cidr_contains("10.244.0.0/16", "10.244.3.0/24"));
        assert!(!cidr_contains("10.244.0.0/16", "10.245.3.0/24"));
        assert!(!cidr_contains("10.244.3.0/24", "10.244.0.0/16"));
        assert!(!cidr_contains("bad", "10.244.0.0/16"));
    }

    #[test]
    fn docker_hands_out_the_last_block_itself() {
        assert_eq!(
            dynamic_range("10.244.0.0/16").as_deref(),
            Some("10.244.255.0/24")
        );
        assert_eq!(
            dynamic_range("10.0.0.0/8").as_deref(),
            Some("10.255.255.0/24")
        );
        assert_eq!(dynamic_range("10.1.2.0/24"), None);
    }

    #[test]
    fn tar_headers_are_ustar_with_valid_checksums() {
        let archive = tar(&[("Dockerfile", b"FROM scratch\n", 0o644)]);
        assert_eq!(archive.len(), 512 + 512 + 1024);
        let header = &archive[..512];
        assert_eq!(&header[257..262], b"ustar");
        let stored =
            u32::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
        let mut blank = header.to_vec();
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|b| u32::from(*b)).sum::<u32>());
        assert_eq!(&archive[512..525], b"FROM scratch\n");
    }
}
