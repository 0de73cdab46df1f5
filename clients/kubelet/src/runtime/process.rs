//! The process runtime (the default: it needs nothing installed). Each
//! container is a process in its own process group, started with the
//! container's command, arguments, environment and working directory;
//! `image` is kept for Kubernetes compatibility only. Output goes to the
//! container's log file. A record per container on disk (pid and the
//! process's start time, to tell it from a reused pid) lets a restarted
//! kubelet find its processes again instead of starting them twice.
//! Resource limits are not enforced here (the Docker runtime does).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::{
    ContainerConfig, ContainerRecord, ContainerSecurity, ContainerState, ExecOutput, ExecStream,
    Runtime, RuntimeError, Sandbox, SandboxConfig, Seccomp,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exit {
    code: i32,
    reason: String,
    finished_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    pod_uid: String,
    name: String,
    attempt: u32,
    pid: u32,
    start_ticks: u64,
    started_ms: u64,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    working_dir: PathBuf,
    exit: Option<Exit>,
    /// Runs in its own mount namespace (exec enters it).
    #[serde(default)]
    mount_namespace: bool,
    /// The `setpriv` prefix that gives it its identity (exec uses it too).
    #[serde(default)]
    setpriv: Vec<String>,
    /// Mount points created on the host for it, removed with it if still
    /// empty and no other container is mounted there.
    #[serde(default)]
    created_mount_points: Vec<PathBuf>,
    /// Every path it has something mounted at (in its own namespace).
    #[serde(default)]
    mount_points: Vec<PathBuf>,
    /// Started by this process, whose reaper records the exit (records
    /// found on disk after a restart have none).
    #[serde(skip)]
    reaped_here: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxRecord {
    pod_uid: String,
    ip: String,
}

/// Runs containers as processes.
pub struct ProcessRuntime {
    dir: PathBuf,
    records: Arc<Mutex<HashMap<String, Record>>>,
    /// Per container, what its exec sessions wait on: `true` once the
    /// container is stopped or removed (its execs die with it).
    execs: Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>>,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The `setpriv` arguments (util-linux) that give a process `security`'s
/// identity, capabilities and `no_new_privs`; empty when it asks for none.
fn setpriv_args(security: &ContainerSecurity) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |a: &str| out.push(a.to_owned());
    if let Some(u) = security.user {
        push("--reuid");
        push(&u.to_string());
    }
    if let Some(g) = security.group {
        push("--regid");
        push(&g.to_string());
    }
    if security.user.is_some() || security.group.is_some() {
        if security.supplemental_groups.is_empty() {
            push("--clear-groups");
        } else {
            let groups: Vec<String> = security
                .supplemental_groups
                .iter()
                .map(|g| g.to_string())
                .collect();
            push("--groups");
            push(&groups.join(","));
        }
    }
    if !security.privileged && (!security.cap_drop.is_empty() || !security.cap_add.is_empty()) {
        let cap = |c: &str| c.to_ascii_lowercase();
        let mut list: Vec<String> = Vec::new();
        if security.cap_drop.iter().any(|c| c == "ALL") {
            list.push("-all".into());
        } else {
            list.extend(security.cap_drop.iter().map(|c| format!("-{}", cap(c))));
        }
        if security.cap_add.iter().any(|c| c == "ALL") {
            list.push("+all".into());
        } else {
            list.extend(security.cap_add.iter().map(|c| format!("+{}", cap(c))));
        }
        push("--bounding-set");
        push(&list.join(","));
        push("--inh-caps");
        push(&list.join(","));
        // A non-root user keeps added capabilities across exec only as ambient ones.
        if security.user.is_some_and(|u| u != 0) && !security.cap_add.is_empty() {
            let ambient: Vec<String> = security
                .cap_add
                .iter()
                .map(|c| format!("+{}", cap(c)))
                .collect();
            push("--ambient-caps");
            push(&ambient.join(","));
        }
    }
    if security.no_new_privileges {
        push("--no-new-privs");
    }
    if out.is_empty() {
        return out;
    }
    let mut all = vec!["setpriv".to_owned()];
    all.extend(out);
    all.push("--".to_owned());
    all
}

/// Runs `argv` confined as the kubelet (running as root, as Kubernetes'
/// node agent does) can: in its own mount and UTS namespaces (util-linux
/// `unshare`), with the pod's host name, each mount bind-mounted at its
/// `mountPath` (read-only where asked), the root filesystem remounted
/// read-only if asked, then through `setpriv` for its user, groups,
/// capabilities and `no_new_privs`, all in one process that finally
/// `exec`s the container's command. Without root the directories are only
/// named in `SKIFF_VOLUME_<NAME>`. A missing mount point is created on the
/// host, empty, as Docker does for bind mounts. Returns the command line
/// and the `setpriv` prefix (exec uses it too).
fn confine(
    argv: Vec<String>,
    config: &ContainerConfig,
    created: &mut Vec<PathBuf>,
) -> Result<(Vec<String>, Vec<String>), RuntimeError> {
    let setpriv = setpriv_args(&config.security);
    if !nix::unistd::Uid::effective().is_root() {
        let mut out = setpriv.clone();
        out.extend(argv);
        return Ok((out, setpriv));
    }
    const SCRIPT: &str = "h=$1; ro=$2; n=$3; shift 3; \
        if [ -n \"$h\" ]; then hostname \"$h\" || exit 126; fi; \
        i=0; \
        while [ \"$i\" -lt \"$n\" ]; do \
          mount --bind \"$1\" \"$2\" || exit 126; \
          if [ \"$3\" = ro ]; then mount -o remount,bind,ro \"$2\" || exit 126; fi; \
          shift 3; i=$((i+1)); \
        done; \
        if [ \"$ro\" = ro ]; then mount -o remount,bind,ro / || exit 126; fi; \
        exec \"$@\"";
    let mut out: Vec<String> = [
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        SCRIPT,
        "skiff-container",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    out.push(config.hostname.chars().take(63).collect());
    out.push(
        if config.security.read_only_root {
            "ro"
        } else {
            "rw"
        }
        .to_owned(),
    );
    out.push(config.mounts.len().to_string());
    for m in &config.mounts {
        let target = PathBuf::from(&m.container_path);
        if !target.is_absolute() || target == Path::new("/") {
            return Err(RuntimeError::CannotStart(format!(
                "mountPath {:?} must be an absolute path other than /",
                m.container_path
            )));
        }
        if !target.exists() {
            // The highest directory made, removed again later if still empty.
            let mut first_missing = target.clone();
            while let Some(parent) = first_missing.parent() {
                if parent.exists() {
                    break;
                }
                first_missing = parent.to_path_buf();
            }
            created.push(first_missing);
            let made = if m.host_path.is_dir() {
                std::fs::create_dir_all(&target)
            } else {
                target
                    .parent()
                    .map(std::fs::create_dir_all)
                    .unwrap_or(Ok(()))
                    .and_then(|_| std::fs::File::create(&target).map(|_| ()))
            };
            made.map_err(|e| {
                RuntimeError::CannotStart(format!(
                    "cannot create mount point {}: {e}",
                    target.display()
                ))
            })?;
        }
        out.push(m.host_path.display().to_string());
        out.push(m.container_path.clone());
        out.push(if m.read_only { "ro" } else { "rw" }.to_owned());
    }
    out.extend(setpriv.iter().cloned());
    out.extend(argv);
    Ok((out, setpriv))
}

/// Waits (a few seconds at most) until process `pid` runs `argv` itself,
/// past the wrapper that set up its namespaces, or is gone.
async fn wait_for_exec(pid: u32, argv: &[String]) {
    let mut want: Vec<u8> = Vec::new();
    for a in argv {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(cmdline) if cmdline == want || cmdline.is_empty() => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(_) => return,
        }
    }
}

/// Whether `program` can be found as the container will see it: a path
/// (inside one of its mounts, seen through the node directory behind it)
/// or a name on the node's PATH.
fn program_exists(program: &str, config: &ContainerConfig) -> bool {
    if program.contains('/') && !program.starts_with('/') {
        // Relative to the working directory: found, or not, when it runs.
        return true;
    }
    if program.contains('/') {
        let path = Path::new(program);
        let behind_mount = config.mounts.iter().find_map(|m| {
            path.strip_prefix(&m.container_path)
                .ok()
                .map(|rest| m.host_path.join(rest))
        });
        return behind_mount.unwrap_or_else(|| path.to_path_buf()).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Removes `dir` and the empty directories below it, bottom up; stops at
/// anything that is not an empty directory.
fn remove_empty_dirs(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            remove_empty_dirs(&path)?;
        }
    }
    std::fs::remove_dir(dir)
}

fn failure(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failure(e.to_string())
}

/// A process's start time in clock ticks since boot (field 22 of /proc/pid/stat).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process is alive and still the one started (zombies count as gone).
fn alive(pid: u32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(after) = stat.rsplit_once(')').map(|x| x.1) else {
        return false;
    };
    let mut fields = after.split_whitespace();
    let state = fields.next().unwrap_or("");
    state != "Z" && start_ticks(pid) == Some(ticks)
}

impl ProcessRuntime {
    /// Stops the container's own processes: SIGTERM, SIGKILL after `grace`.
    async fn stop_main(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let pid = {
            let records = self.records.lock().expect("records");
            let r = records
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            if r.exit.is_some() {
                return Ok(());
            }
            r.pid
        };
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if matches!(
                self.container_state(id).await?,
                ContainerState::Exited { .. }
            ) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = killpg(group, Signal::SIGKILL);
        for _ in 0..100 {
            if matches!(
                self.container_state(id).await?,
                ContainerState::Exited { .. }
            ) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(RuntimeError::Failure(format!(
            "container {id} did not die after SIGKILL"
        )))
    }

    /// Forgets container `id`, removing the mount points it made.
    fn remove_record(&self, id: &str) -> Result<(), RuntimeError> {
        let to_remove = {
            let mut records = self.records.lock().expect("records");
            let removed = records.remove(id);
            let points = removed.map(|r| r.created_mount_points).unwrap_or_default();
            // A mount point another live container (of any pod) is mounted
            // at stays: removing it would detach that container's mount.
            // That container inherits it, to remove when it goes.
            let mut free = Vec::new();
            for point in points {
                let user = records.values_mut().find(|o| {
                    o.exit.is_none() && o.mount_points.iter().any(|m| m.starts_with(&point))
                });
                match user {
                    Some(user) => {
                        user.created_mount_points.push(point);
                        Self::save(&self.dir, user);
                    }
                    None => free.push(point),
                }
            }
            free
        };
        // Mount points this pod made on the host go if nothing else put
        // anything there (remove_dir only removes empty directories; a file
        // mount point is removed only if still empty).
        for p in &to_remove {
            if p.is_dir() {
                let _ = remove_empty_dirs(p);
            } else if p.metadata().is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(p);
            }
        }
        let _ = std::fs::remove_file(Self::record_path(&self.dir, id));
        Ok(())
    }

    /// Ends every exec session in container `id` (they die with it).
    fn end_execs(&self, id: &str) {
        if let Some(stopped) = self.execs.lock().expect("execs").remove(id) {
            stopped.send_replace(true);
        }
    }

    /// A runtime keeping its records under `dir`; finds the records of a previous run.
    pub fn new(dir: &Path) -> Result<Self, RuntimeError> {
        for sub in ["containers", "sandboxes", "pods"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(failure)?;
        }
        let mut records = HashMap::new();
        for entry in std::fs::read_dir(dir.join("containers")).map_err(failure)? {
            let path = entry.map_err(failure)?.path();
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(r) = serde_json::from_str::<Record>(&text)
            {
                records.insert(r.id.clone(), r);
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            records: Arc::new(Mutex::new(records)),
            execs: Arc::default(),
        })
    }

    fn record_path(dir: &Path, id: &str) -> PathBuf {
        dir.join("containers").join(format!("{id}.json"))
    }

    fn save(dir: &Path, r: &Record) {
        if let Ok(text) = serde_json::to_string(r) {
            let _ = std::fs::write(Self::record_path(dir, &r.id), text);
        }
    }

    fn sandbox_path(&self, uid: &str) -> PathBuf {
        self.dir.join("sandboxes").join(format!("{uid}.json"))
    }

    /// The working directory of a pod's containers by default.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.dir.join("pods").join(uid)
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn version(&self) -> String {
        format!("process://{}", env!("CARGO_PKG_VERSION"))
    }

    fn refuses(
        &self,
        security: &ContainerSecurity,
        sysctls: &[(String, String)],
    ) -> Option<String> {
        if let Some(p @ (Seccomp::RuntimeDefault | Seccomp::Localhost(_))) = &security.seccomp {
            let name = match p {
                Seccomp::RuntimeDefault => "RuntimeDefault",
                _ => "Localhost",
            };
            return Some(format!(
                "the process runtime cannot apply the seccomp profile {name} (no seccomp filter \
                 is installed for processes); use the Docker runtime, or seccompProfile type \
                 Unconfined"
            ));
        }
        if let Some((name, _)) = sysctls.first() {
            return Some(format!(
                "the process runtime cannot set sysctl {name:?}: its pods share the node's \
                 network and IPC namespaces; use the Docker runtime"
            ));
        }
        if nix::unistd::Uid::effective().is_root() {
            return None;
        }
        let me = i64::from(nix::unistd::Uid::effective().as_raw());
        let my_group = i64::from(nix::unistd::Gid::effective().as_raw());
        if security.user.is_some_and(|u| u != me)
            || security.group.is_some_and(|g| g != my_group)
            || !security.supplemental_groups.is_empty()
        {
            return Some(format!(
                "the process runtime runs as uid {me}, not root, and cannot switch to the \
                 user or groups the security context asks for; run the kubelet as root"
            ));
        }
        if security.read_only_root {
            return Some(
                "the process runtime is not root and cannot make the root filesystem read-only \
                 for one container; run the kubelet as root"
                    .into(),
            );
        }
        if !security.cap_add.is_empty() || security.privileged {
            return Some(
                "the process runtime is not root and cannot grant capabilities; run the kubelet \
                 as root"
                    .into(),
            );
        }
        None
    }

    async fn image_user(&self, _image: &str) -> Result<String, RuntimeError> {
        // Processes run as the kubelet unless the pod names a user.
        Ok(nix::unistd::Uid::effective().as_raw().to_string())
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        let ip = match (&config.ip, config.host_network) {
            (_, true) => "127.0.0.1".to_owned(),
            (Some(ip), false) => ip.clone(),
            (None, false) => return Err(RuntimeError::Failure(
                "no pod IP: the node has no pod CIDR (run the controller manager, or start the kubelet with --pod-cidr)".into(),
            )),
        };
        std::fs::create_dir_all(self.pod_dir(&config.pod_uid)).map_err(failure)?;
        let record = SandboxRecord {
            pod_uid: config.pod_uid.clone(),
            ip: ip.clone(),
        };
        std::fs::write(
            self.sandbox_path(&config.pod_uid),
            serde_json::to_string(&record).map_err(failure)?,
        )
        .map_err(failure)?;
        Ok(Sandbox {
            id: config.pod_uid.clone(),
            ip,
        })
    }

    async fn find_sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
        let Ok(text) = std::fs::read_to_string(self.sandbox_path(pod_uid)) else {
            return Ok(None);
        };
        let r: SandboxRecord = serde_json::from_str(&text).map_err(failure)?;
        Ok(Some(Sandbox {
            id: r.pod_uid,
            ip: r.ip,
        }))
    }

    async fn remove_sandbox(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        let _ = std::fs::remove_file(self.sandbox_path(pod_uid));
        let _ = std::fs::remove_dir_all(self.pod_dir(pod_uid));
        Ok(())
    }

    async fn start_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let argv: Vec<String> = config.command.iter().chain(&config.args).cloned().collect();
        let own = argv.clone();
        if argv.is_empty() {
            return Err(RuntimeError::CannotStart(
                "the process runtime runs the container's `command` (and `args`); none is set"
                    .into(),
            ));
        }
        if let Some(missing) = argv.first().filter(|p| !program_exists(p, config)) {
            return Err(RuntimeError::CannotStart(format!(
                "exec: {missing:?}: executable file not found (in $PATH or the container's mounts)"
            )));
        }
        let mut created_mount_points = Vec::new();
        let (argv, setpriv) = confine(argv, config, &mut created_mount_points)?;
        let mount_namespace = argv.first().is_some_and(|p| p == "unshare");
        let Some(program) = argv.first() else {
            return Err(RuntimeError::CannotStart(
                "the process runtime runs the container's `command` (and `args`); none is set"
                    .into(),
            ));
        };
        if let Some(dir) = config.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(failure)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_path)
            .map_err(failure)?;
        let err_log = log.try_clone().map_err(failure)?;
        let working_dir = config
            .working_dir
            .clone()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.pod_dir(&sandbox.id));
        std::fs::create_dir_all(&working_dir).ok();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&argv[1..])
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &working_dir)
            .envs(config.env.iter().cloned())
            // Each volume's directory by name too (all a kubelet without root can give).
            .envs(
                config
                    .mounts
                    .iter()
                    .filter(|m| !m.volume.is_empty())
                    .map(|m| (m.env_name(), m.host_path.display().to_string())),
            )
            .current_dir(&working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| {
            RuntimeError::CannotStart(format!(
                "{program:?}: {e} (working directory {})",
                working_dir.display()
            ))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| RuntimeError::CannotStart("the process exited at once".into()))?;
        if mount_namespace {
            // Started means its namespace is set up: hooks and exec that
            // come right after see its mounts, not the host's directories.
            wait_for_exec(pid, &own).await;
        }
        let id = format!(
            "{}-{}-{:08x}",
            config.name,
            config.attempt,
            rand::random::<u32>()
        );
        let record = Record {
            id: id.clone(),
            pod_uid: config.pod_uid.clone(),
            name: config.name.clone(),
            attempt: config.attempt,
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            started_ms: ms(SystemTime::now()),
            log_path: config.log_path.clone(),
            env: config.env.clone(),
            working_dir,
            exit: None,
            mount_namespace,
            setpriv,
            created_mount_points,
            mount_points: if mount_namespace {
                config
                    .mounts
                    .iter()
                    .map(|m| PathBuf::from(&m.container_path))
                    .collect()
            } else {
                Vec::new()
            },
            reaped_here: true,
        };
        Self::save(&self.dir, &record);
        self.records
            .lock()
            .expect("records")
            .insert(id.clone(), record);
        // Reap the child and remember how it ended.
        let (records, dir, waited) = (self.records.clone(), self.dir.clone(), id.clone());
        tokio::spawn(async move {
            let status = child.wait().await;
            let (code, reason) = match status {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(0), _) => (0, "Completed"),
                    (Some(c), _) => (c, "Error"),
                    (None, Some(sig)) => (128 + sig, "Error"),
                    (None, None) => (1, "Error"),
                },
                Err(_) => (1, "Error"),
            };
            let mut records = records.lock().expect("records");
            if let Some(r) = records.get_mut(&waited) {
                r.exit = Some(Exit {
                    code,
                    reason: reason.into(),
                    finished_ms: ms(SystemTime::now()),
                });
                Self::save(&dir, r);
            }
        });
        Ok(id)
    }

    async fn container_state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let mut records = self.records.lock().expect("records");
        let r = records
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        if r.exit.is_none() && !r.reaped_here && r.start_ticks != 0 && !alive(r.pid, r.start_ticks)
        {
            // Found again after a restart, and gone since: how it ended is unknown.
            r.exit = Some(Exit {
                code: 137,
                reason: "Unknown".into(),
                finished_ms: ms(SystemTime::now()),
            });
            Self::save(&self.dir, r);
        }
        Ok(match &r.exit {
            None => ContainerState::Running {
                started_at: from_ms(r.started_ms),
            },
            Some(e) => ContainerState::Exited {
                exit_code: e.code,
                reason: e.reason.clone(),
                started_at: from_ms(r.started_ms),
                finished_at: from_ms(e.finished_ms),
            },
        })
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let stopped = self.stop_main(id, grace).await;
        self.end_execs(id);
        stopped
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.end_execs(id);
        self.remove_record(id)
    }

    async fn containers(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        Ok(self
            .records
            .lock()
            .expect("records")
            .values()
            .map(|r| ContainerRecord {
                id: r.id.clone(),
                pod_uid: r.pod_uid.clone(),
                name: r.name.clone(),
                attempt: r.attempt,
                log_path: r.log_path.clone(),
            })
            .collect())
    }

    async fn sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("sandboxes")).map_err(failure)? {
            let path = entry.map_err(failure)?.path();
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                out.push(stem.to_owned());
            }
        }
        Ok(out)
    }

    async fn exec(&self, id: &str, command: &[String]) -> Result<ExecStream, RuntimeError> {
        let (env, dir, entered) = {
            let records = self.records.lock().expect("records");
            let r = records
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            if r.exit.is_some() {
                return Err(RuntimeError::NotRunning(id.to_owned()));
            }
            // Enter its mount and UTS namespaces first, then take its identity.
            // (Entering a mount namespace moves to its root: --wd keeps the
            // container's working directory, as exec in Kubernetes does.)
            let mut entered: Vec<String> = if r.mount_namespace {
                [
                    "nsenter",
                    "--target",
                    &r.pid.to_string(),
                    "--mount",
                    "--uts",
                    &format!("--wd={}", r.working_dir.display()),
                    "--",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            } else {
                Vec::new()
            };
            entered.extend(r.setpriv.iter().cloned());
            entered.extend(command.iter().cloned());
            (r.env.clone(), r.working_dir.clone(), entered)
        };
        let command = entered.as_slice();
        let Some(program) = command.first() else {
            return Err(RuntimeError::CannotStart("empty command".into()));
        };
        let spawned = tokio::process::Command::new(program)
            .args(&command[1..])
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .envs(env)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that what it starts goes with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut child = match spawned {
            Ok(child) => child,
            // The command is the user's mistake: answer as a shell does
            // (127 not found, 126 not executable) rather than fail the call.
            Err(e) => {
                let code = match e.kind() {
                    std::io::ErrorKind::NotFound => 127,
                    std::io::ErrorKind::PermissionDenied => 126,
                    _ => return Err(RuntimeError::CannotStart(format!("{program:?}: {e}"))),
                };
                let _ = tx.try_send(ExecOutput::Stderr(Bytes::from(format!(
                    "exec: {program:?}: {e}\n"
                ))));
                let _ = tx.try_send(ExecOutput::Exit(code));
                return Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)));
            }
        };
        let group = child.id().map(|pid| Pid::from_raw(pid as i32));
        let mut stopped = self
            .execs
            .lock()
            .expect("execs")
            .entry(id.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(false).0)
            .subscribe();
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        tokio::spawn(async move {
            let (t1, t2) = (tx.clone(), tx.clone());
            let out = async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = stdout.read(&mut buf).await {
                    if n == 0
                        || t1
                            .send(ExecOutput::Stdout(Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            };
            let err = async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = stderr.read(&mut buf).await {
                    if n == 0
                        || t2
                            .send(ExecOutput::Stderr(Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            };
            let output = async {
                tokio::join!(out, err);
            };
            // The session ends when the client goes (the stream is
            // dropped) or the container stops, whether or not the command
            // writes anything.
            let ended = async {
                tokio::select! {
                    () = tx.closed() => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
            };
            tokio::pin!(output, ended);
            let (mut output_done, mut killed) = (false, false);
            let status = loop {
                tokio::select! {
                    () = &mut output, if !output_done => output_done = true,
                    status = child.wait(), if output_done => break status,
                    () = &mut ended, if !killed => {
                        killed = true;
                        if let Some(group) = group {
                            let _ = killpg(group, Signal::SIGKILL);
                        }
                    }
                }
            };
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
                }),
                Err(_) => 1,
            };
            let _ = tx.send(ExecOutput::Exit(code)).await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn config(dir: &Path, name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            pod_uid: "uid-1".into(),
            namespace: "ns".into(),
            pod_name: "p".into(),
            name: name.into(),
            attempt: 0,
            image: "ignored".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: vec![],
            env: vec![("GREETING".into(), "hello".into())],
            working_dir: None,
            cpu_limit_milli: None,
            memory_limit: None,
            log_path: dir.join(format!("{name}.log")),
            mounts: Vec::new(),
            hostname: "p".into(),
            security: ContainerSecurity::default(),
            share_process_namespace: false,
        }
    }

    async fn sandbox(rt: &ProcessRuntime) -> Sandbox {
        rt.run_sandbox(&SandboxConfig {
            pod_uid: "uid-1".into(),
            namespace: "ns".into(),
            name: "p".into(),
            hostname: "p".into(),
            ip: Some("127.128.0.2".into()),
            host_network: false,
            sysctls: vec![],
            share_process_namespace: false,
        })
        .await
        .unwrap()
    }

    async fn wait_exit(rt: &ProcessRuntime, id: &str) -> ContainerState {
        for _ in 0..500 {
            let s = rt.container_state(id).await.unwrap();
            if matches!(s, ContainerState::Exited { .. }) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("container {id} did not exit");
    }

    #[tokio::test]
    async fn processes_run_with_their_environment_and_report_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let sb = sandbox(&rt).await;
        let id = rt
            .start_container(
                &sb,
                &config(dir.path(), "c", &["sh", "-c", "echo $GREETING; exit 3"]),
            )
            .await
            .unwrap();
        match wait_exit(&rt, &id).await {
            ContainerState::Exited {
                exit_code, reason, ..
            } => assert_eq!((exit_code, reason.as_str()), (3, "Error")),
            s => panic!("{s:?}"),
        }
        let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
        assert_eq!(log, "hello\n");
        assert!(matches!(
            rt.start_container(&sb, &config(dir.path(), "bad", &["/no/such/program"]))
                .await,
            Err(RuntimeError::CannotStart(_))
        ));
    }

    #[tokio::test]
    async fn stopping_sends_sigterm_then_sigkill_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let sb = sandbox(&rt).await;
        // Ignores SIGTERM: only SIGKILL ends it.
        let stubborn = rt
            .start_container(
                &sb,
                &config(
                    dir.path(),
                    "stubborn",
                    &["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"],
                ),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = std::time::Instant::now();
        rt.stop_container(&stubborn, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "waited for the grace period"
        );
        match rt.container_state(&stubborn).await.unwrap() {
            ContainerState::Exited { exit_code, .. } => assert_eq!(exit_code, 137),
            s => panic!("{s:?}"),
        }
        // Honours SIGTERM: stops at once.
        let polite = rt
            .start_container(&sb, &config(dir.path(), "polite", &["sleep", "60"]))
            .await
            .unwrap();
        let t = std::time::Instant::now();
        rt.stop_container(&polite, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_restarted_runtime_finds_its_running_processes_again() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let rt = ProcessRuntime::new(dir.path()).unwrap();
            let sb = sandbox(&rt).await;
            rt.start_container(&sb, &config(dir.path(), "long", &["sleep", "60"]))
                .await
                .unwrap()
        };
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        assert!(matches!(
            rt.container_state(&id).await.unwrap(),
            ContainerState::Running { .. }
        ));
        assert_eq!(rt.containers().await.unwrap().len(), 1);
        assert_eq!(
            rt.find_sandbox("uid-1").await.unwrap().unwrap().ip,
            "127.128.0.2"
        );
        rt.stop_container(&id, Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn exec_runs_in_the_containers_environment() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let sb = sandbox(&rt).await;
        let id = rt
            .start_container(&sb, &config(dir.path(), "c", &["sleep", "60"]))
            .await
            .unwrap();
        let out: Vec<ExecOutput> = rt
            .exec(
                &id,
                &[
                    "sh".into(),
                    "-c".into(),
                    "echo $GREETING; echo oops >&2; exit 4".into(),
                ],
            )
            .await
            .unwrap()
            .collect()
            .await;
        assert!(
            out.contains(&ExecOutput::Stdout(Bytes::from_static(b"hello\n"))),
            "{out:?}"
        );
        assert!(
            out.contains(&ExecOutput::Stderr(Bytes::from_static(b"oops\n"))),
            "{out:?}"
        );
        assert_eq!(out.last(), Some(&ExecOutput::Exit(4)));
        rt.stop_container(&id, Duration::from_secs(5))
            .await
            .unwrap();
    }

    /// A runtime with one container running `sleep 60`.
    async fn sleeping() -> (tempfile::TempDir, ProcessRuntime, String) {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let sb = sandbox(&rt).await;
        let id = rt
            .start_container(&sb, &config(dir.path(), "c", &["sleep", "60"]))
            .await
            .unwrap();
        (dir, rt, id)
    }

    /// Waits until process `pid` is gone (reaped), for at most 10 s.
    async fn gone(pid: &str) -> bool {
        for _ in 0..1000 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Reads the pid a command wrote to `file`, waiting for it.
    async fn pid_in(file: &Path) -> String {
        for _ in 0..1000 {
            if let Ok(s) = std::fs::read_to_string(file)
                && s.ends_with('\n')
            {
                return s.trim().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nothing wrote {}", file.display());
    }

    /// An exec that prints nothing, with a child of its own (`sleep` in the
    /// background, its pid written to `file`).
    fn silent(file: &Path) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            format!("sleep 171 & echo $! > {}; wait", file.display()),
        ]
    }

    #[tokio::test]
    async fn a_silent_exec_and_its_children_end_when_the_client_goes_away() {
        let (dir, rt, id) = sleeping().await;
        let file = dir.path().join("exec.pid");
        let stream = rt.exec(&id, &silent(&file)).await.unwrap();
        let pid = pid_in(&file).await;
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(stream);
        assert!(gone(&pid).await, "exec child {pid} outlived its client");
        rt.stop_container(&id, Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_silent_exec_ends_when_its_container_is_stopped() {
        let (dir, rt, id) = sleeping().await;
        let file = dir.path().join("exec.pid");
        let stream = rt.exec(&id, &silent(&file)).await.unwrap();
        let pid = pid_in(&file).await;
        rt.stop_container(&id, Duration::from_secs(5))
            .await
            .unwrap();
        let out: Vec<ExecOutput> = tokio::time::timeout(Duration::from_secs(10), stream.collect())
            .await
            .expect("the exec stream ends with its container");
        assert_eq!(out.last(), Some(&ExecOutput::Exit(128 + 9)), "{out:?}");
        assert!(gone(&pid).await, "exec child {pid} outlived its container");
        assert!(matches!(
            rt.exec(&id, &["true".to_owned()]).await,
            Err(RuntimeError::NotRunning(_))
        ));
    }

    #[tokio::test]
    async fn exec_of_a_missing_program_exits_127_as_a_shell_would() {
        let (_dir, rt, id) = sleeping().await;
        let out: Vec<ExecOutput> = rt
            .exec(&id, &["/no/such/bin".to_owned()])
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(out.last(), Some(&ExecOutput::Exit(127)), "{out:?}");
        assert!(
            out.iter()
                .any(|o| matches!(o, ExecOutput::Stderr(b) if String::from_utf8_lossy(b).contains("/no/such/bin"))),
            "{out:?}"
        );
        rt.stop_container(&id, Duration::from_secs(5))
            .await
            .unwrap();
    }
}
