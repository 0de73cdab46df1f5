//! Container runtimes behind one trait. A pod is a *sandbox* (what holds its
//! network identity: an IP, and for Docker a paused container owning the
//! network namespace) plus containers started into it. The kubelet drives
//! the trait; runtimes keep enough on their side (process records, Docker
//! labels) to be found again after a kubelet restart.

pub mod docker;
pub mod process;
pub mod sim;

use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::Stream;

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not on this node, and Skiff never pulls.
    #[error(
        "image {image:?} is not present on this node and images are never pulled; build or load it first"
    )]
    ImageNotPresent {
        /// The image.
        image: String,
    },
    /// The container could not be started (bad command, working directory…).
    #[error("cannot start the container: {0}")]
    CannotStart(String),
    /// No such container or sandbox.
    #[error("no such container or sandbox {0:?}")]
    NotFound(String),
    /// The container has exited: nothing runs in it to exec into.
    #[error("container {0:?} is not running")]
    NotRunning(String),
    /// The operation is not supported by this runtime.
    #[error("{0}")]
    Unsupported(String),
    /// The runtime itself failed.
    #[error("runtime failure: {0}")]
    Failure(String),
}

/// What a pod sandbox needs.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Pod uid.
    pub pod_uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Host name inside the pod.
    pub hostname: String,
    /// An IP chosen by the kubelet (process runtime), if any.
    pub ip: Option<String>,
    /// Use the node's network.
    pub host_network: bool,
    /// Namespaced kernel parameters of the pod (safe or allowed ones).
    pub sysctls: Vec<(String, String)>,
    /// Containers share one PID namespace.
    pub share_process_namespace: bool,
}

/// How a container's process is confined: its identity, capabilities,
/// filesystem and system call filter, from the pod's and the container's
/// security contexts (the container's settings win).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSecurity {
    /// UID it runs as (`None`: the image's, or the kubelet's for processes).
    pub user: Option<i64>,
    /// GID it runs as.
    pub group: Option<i64>,
    /// Supplemental groups (fsGroup included).
    pub supplemental_groups: Vec<i64>,
    /// The root filesystem is read-only.
    pub read_only_root: bool,
    /// Every capability and the host's devices.
    pub privileged: bool,
    /// `no_new_privs`: no setuid or file capabilities gain privileges.
    pub no_new_privileges: bool,
    /// Capabilities added, upper case without `CAP_` (`ALL` for all).
    pub cap_add: Vec<String>,
    /// Capabilities dropped, upper case without `CAP_` (`ALL` for all).
    pub cap_drop: Vec<String>,
    /// The seccomp profile asked for (`None`: the runtime's choice).
    pub seccomp: Option<Seccomp>,
}

/// A seccomp profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    /// The runtime's default filter.
    RuntimeDefault,
    /// No filter.
    Unconfined,
    /// A profile file of the node's seccomp directory (its JSON text).
    Localhost(String),
}

impl ContainerSecurity {
    /// Whether it asks for anything beyond the defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A running sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Runtime id.
    pub id: String,
    /// The pod's IP.
    pub ip: String,
}

/// What a container needs.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Pod uid.
    pub pod_uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Container name.
    pub name: String,
    /// Restart count of this instance.
    pub attempt: u32,
    /// Image.
    pub image: String,
    /// Entrypoint (the image's when empty).
    pub command: Vec<String>,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// CPU limit in millicores.
    pub cpu_limit_milli: Option<i64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Where the container's output goes.
    pub log_path: PathBuf,
    /// Directories of the node mounted into the container.
    pub mounts: Vec<Mount>,
    /// The pod's host name (its own UTS namespace where the runtime can).
    pub hostname: String,
    /// How the process is confined.
    pub security: ContainerSecurity,
    /// Join the sandbox's PID namespace (the pod shares its processes).
    pub share_process_namespace: bool,
}

/// A directory of the node given to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The pod volume it comes from.
    pub volume: String,
    /// The directory on the node.
    pub host_path: PathBuf,
    /// Where the container sees it.
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl Mount {
    /// A file the kubelet manages for the pod (`/etc/hosts`, `/etc/resolv.conf`,
    /// the termination log), not a volume.
    pub fn file(host_path: PathBuf, container_path: &str) -> Self {
        Self {
            volume: String::new(),
            host_path,
            container_path: container_path.to_owned(),
            read_only: false,
        }
    }

    /// The environment variable the process runtime names this mount's
    /// directory in (`SKIFF_VOLUME_<NAME>`) when it cannot mount it.
    pub fn env_name(&self) -> String {
        let name: String = self
            .volume
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("SKIFF_VOLUME_{name}")
    }
}

/// What a container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Running since.
    Running {
        /// Start time.
        started_at: SystemTime,
    },
    /// Finished.
    Exited {
        /// Exit code (128 + signal when killed).
        exit_code: i32,
        /// Why, Kubernetes-style: Completed, Error, OOMKilled, Unknown.
        reason: String,
        /// Start time.
        started_at: SystemTime,
        /// End time.
        finished_at: SystemTime,
    },
}

/// A container the runtime knows, for finding them again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Runtime id.
    pub id: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Container name.
    pub name: String,
    /// Restart count of this instance.
    pub attempt: u32,
    /// Its log.
    pub log_path: PathBuf,
}

/// A chunk of an exec's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Standard output.
    Stdout(Bytes),
    /// Standard error.
    Stderr(Bytes),
    /// The command ended.
    Exit(i32),
}

/// A stream of exec output.
pub type ExecStream = Pin<Box<dyn Stream<Item = ExecOutput> + Send>>;

/// A stream of log bytes.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<Bytes, RuntimeError>> + Send>>;

/// A container runtime.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Name and version, e.g. "process://0.1.0".
    fn version(&self) -> String;
    /// Starts a pod's sandbox.
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox, RuntimeError>;
    /// The sandbox of a pod, if it exists (after a restart).
    async fn find_sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError>;
    /// Stops and removes a sandbox.
    async fn remove_sandbox(&self, pod_uid: &str) -> Result<(), RuntimeError>;
    /// Creates and starts a container in a sandbox; returns its id.
    async fn start_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError>;
    /// A container's state.
    async fn container_state(&self, id: &str) -> Result<ContainerState, RuntimeError>;
    /// Stops a container: SIGTERM, then SIGKILL after `grace`.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes a stopped container.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every container it knows.
    async fn containers(&self) -> Result<Vec<ContainerRecord>, RuntimeError>;
    /// Pod uids of every sandbox it knows.
    async fn sandboxes(&self) -> Result<Vec<String>, RuntimeError>;
    /// Runs a command in a container's environment.
    async fn exec(&self, id: &str, command: &[String]) -> Result<ExecStream, RuntimeError>;
    /// Whether containers really run (false for the simulated runtime).
    fn runs_processes(&self) -> bool {
        true
    }

    /// Whether containers come from images on this node (Docker), so that
    /// image events mean something.
    fn has_images(&self) -> bool {
        false
    }

    /// Why this runtime cannot confine a container as `security` and the
    /// pod's `sysctls` ask, if it cannot (the container is then not
    /// started: nothing is ignored silently).
    fn refuses(
        &self,
        security: &ContainerSecurity,
        sysctls: &[(String, String)],
    ) -> Option<String> {
        let _ = (security, sysctls);
        None
    }

    /// The user `image` runs as when the pod names none ("" or "0": root).
    async fn image_user(&self, image: &str) -> Result<String, RuntimeError> {
        let _ = image;
        Ok(String::new())
    }

    /// Whether the runtime picks pod IPs itself (else the kubelet does, from the pod CIDR).
    fn assigns_ips(&self) -> bool {
        false
    }

    /// A container's log: the last `tail` lines (all when `None`), then new
    /// lines as they come when `follow`.
    async fn logs(
        &self,
        container: &ContainerRecord,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<LogStream, RuntimeError> {
        crate::logs::read_file(container.log_path.clone(), tail, follow).await
    }
}
