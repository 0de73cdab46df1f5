//! One pod's worker: it keeps the pod in its desired state and reports it.
//! Its sandbox first; then init containers, one at a time, each to
//! completion; then the containers, restarted per the restart policy with
//! an exponential back-off (CrashLoopBackOff), restarted when their liveness
//! or startup probe fails or their spec changes. On deletion it stops every
//! container (SIGTERM, then SIGKILL after the grace period), removes the
//! sandbox and deletes the pod object.
//!
//! Lifecycle hooks run after a start (`postStart`) and before a stop
//! (`preStop`, within the grace period); a container's termination message
//! is read from its termination log (or its log's tail) when it ends.
//!
//! The decisions live beside it as pure functions and reads: [`restart`]
//! (restart policy and back-off), `status` (what to report), `env` (a
//! container's environment), `security` (its confinement), `dns` (its
//! resolv.conf and hosts file), `hooks`, `volumes`. This module owns the container lifecycle of
//! one pod; it must not touch other pods' containers (the kubelet's sync
//! loop owns which workers exist).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use prost::Message;
use skiff::Resource;
use skiff::api::core::v1::{Container, Pod, PodStatus};
use skiff::client::{Client, Error};
use skiff::params::DeleteParams;
use skiff::quantity::Quantity;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub mod dns;
mod env;
mod hooks;
pub mod restart;
pub mod security;
mod status;
mod volumes;

pub use restart::{AfterExit, Backoff, after_exit, crash_loop_delay};
pub use status::qos_class;

use crate::Shared;
use crate::probe::{self, Probers, Target};
use crate::runtime::{
    ContainerConfig, ContainerRecord, ContainerState, Mount, Runtime, RuntimeError, Sandbox,
    SandboxConfig,
};
use skiff::runtime::events::{NORMAL, WARNING};

/// A container instance that has ended.
#[derive(Debug, Clone)]
struct Ended {
    id: String,
    exit_code: i32,
    reason: String,
    started_at: SystemTime,
    finished_at: SystemTime,
    /// Its termination message.
    message: String,
}

/// Longest termination message kept (Kubernetes: 4 KiB).
const MAX_TERMINATION_MESSAGE: usize = 4096;
/// With FallbackToLogsOnError: at most this many lines of the log's tail…
const FALLBACK_LINES: usize = 80;
/// …and at most this many bytes.
const FALLBACK_BYTES: usize = 2048;

/// What the worker knows of one container.
struct Slot {
    init: bool,
    current: Option<(String, u32, SystemTime, u64)>,
    probers: Option<Probers>,
    last: Option<Ended>,
    restarts: u32,
    backoff: Duration,
    not_before: Option<Instant>,
    waiting: Option<(String, String)>,
    /// Init container that succeeded, or container that ended for good.
    done: bool,
    /// Killed because its spec changed: start the new one at once.
    replace: bool,
}

impl Slot {
    fn new(init: bool, backoff: Duration) -> Self {
        Self {
            init,
            current: None,
            probers: None,
            last: None,
            restarts: 0,
            backoff,
            not_before: None,
            waiting: None,
            done: false,
            replace: false,
        }
    }
}

fn spec_hash(c: &Container) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    c.encode_to_vec().hash(&mut h);
    h.finish()
}

/// Records an event about `pod` without waiting for it.
fn emit(shared: &Shared, pod: &Pod, kind: &'static str, reason: &'static str, message: String) {
    if kind == WARNING {
        tracing::warn!(
            pod = pod.name(),
            namespace = pod.namespace(),
            reason,
            "{message}"
        );
    }
    let (recorder, pod) = (shared.recorder.clone(), pod.clone());
    tokio::spawn(async move { recorder.record(&pod, kind, reason, &message).await });
}

fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(t.into())
}

/// Runs a pod until it is gone.
pub struct Worker {
    shared: Arc<Shared>,
    uid: String,
    slots: BTreeMap<String, Slot>,
    sandbox: Option<Sandbox>,
    sandbox_error: Option<String>,
    start_time: Option<SystemTime>,
    changed: Arc<Notify>,
    reported: Option<PodStatus>,
    /// When ConfigMap, Secret, projected and downwardAPI volumes were last
    /// rewritten (and emptyDir usage last measured).
    volumes_refreshed: Option<Instant>,
    /// Service-account tokens of projected volumes.
    tokens: std::sync::Mutex<HashMap<String, volumes::CachedToken>>,
    /// Why the pod is failed without running (reason, message): a
    /// forbidden sysctl, an eviction.
    rejected: Option<(String, String)>,
    /// The pod's MissingClusterDNS warning was recorded (once per pod).
    dns_warned: std::sync::atomic::AtomicBool,
}

/// How often ConfigMap and Secret volumes are rewritten with current keys
/// (Kubernetes: the sync frequency, a minute, plus its cache's lag).
const VOLUME_SYNC_PERIOD: Duration = Duration::from_secs(5);

impl Worker {
    /// A worker for pod `uid`.
    pub fn new(shared: Arc<Shared>, uid: &str) -> Self {
        Self {
            shared,
            uid: uid.to_owned(),
            slots: BTreeMap::new(),
            sandbox: None,
            sandbox_error: None,
            start_time: None,
            changed: Arc::new(Notify::new()),
            reported: None,
            volumes_refreshed: None,
            tokens: std::sync::Mutex::new(HashMap::new()),
            rejected: None,
            dns_warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.shared.runtime
    }

    fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Finds what a previous kubelet left running for this pod, so nothing runs twice.
    async fn adopt(&mut self, pod: &Pod) {
        if let Ok(Some(sb)) = self.runtime().find_sandbox(&self.uid).await {
            self.sandbox = Some(sb);
            self.start_time = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time)
                .and_then(|t| SystemTime::try_from(t).ok());
        }
        let Ok(records) = self.runtime().containers().await else {
            return;
        };
        let mut latest: HashMap<String, ContainerRecord> = HashMap::new();
        for r in records.into_iter().filter(|r| r.pod_uid == self.uid) {
            match latest.get(&r.name) {
                Some(x) if x.attempt >= r.attempt => {}
                _ => {
                    latest.insert(r.name.clone(), r);
                }
            }
        }
        let spec = pod.spec.clone().unwrap_or_default();
        for (init, c) in spec
            .init_containers
            .iter()
            .map(|c| (true, c))
            .chain(spec.containers.iter().map(|c| (false, c)))
        {
            let mut slot = Slot::new(init, self.shared.config.backoff.initial);
            if let Some(r) = latest.get(&c.name) {
                slot.restarts = r.attempt;
                match self.runtime().container_state(&r.id).await {
                    Ok(ContainerState::Running { started_at }) => {
                        slot.current = Some((r.id.clone(), r.attempt, started_at, spec_hash(c)));
                    }
                    Ok(ContainerState::Exited {
                        exit_code,
                        reason,
                        started_at,
                        finished_at,
                    }) => {
                        slot.done = init && exit_code == 0;
                        slot.last = Some(Ended {
                            id: r.id.clone(),
                            exit_code,
                            reason,
                            started_at,
                            finished_at,
                            message: String::new(),
                        });
                    }
                    Err(_) => {}
                }
            }
            self.slots.insert(c.name.clone(), slot);
        }
    }

    /// Runs until the pod is deleted (or removed from the API).
    pub async fn run(mut self, mut pod_rx: watch::Receiver<Option<Arc<Pod>>>) {
        let Some(first) = pod_rx.borrow().clone() else {
            return;
        };
        self.adopt(&first).await;
        let poll = if self.runtime().runs_processes() {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(3600)
        };
        loop {
            let pod = pod_rx.borrow_and_update().clone();
            let Some(pod) = pod else {
                // Gone from the API (force-deleted): clean up, nothing to report.
                self.terminate(None, Duration::from_secs(2)).await;
                return;
            };
            if pod.meta().deletion_timestamp.is_some() {
                let grace = Duration::from_secs(
                    pod.meta()
                        .deletion_grace_period_seconds
                        .unwrap_or(30)
                        .max(0) as u64,
                );
                self.terminate(Some(&pod), grace).await;
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(skiff::api::meta::v1::Preconditions {
                        uid: self.uid.clone(),
                        resource_version: String::new(),
                    }),
                    ..Default::default()
                };
                match self
                    .client()
                    .pods(pod.namespace())
                    .delete(pod.name(), &params)
                    .await
                {
                    Ok(_) | Err(Error::NotFound(_) | Error::Conflict(_)) => {
                        tracing::debug!(pod = pod.name(), "removed the pod object");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(pod = pod.name(), error = %e, "could not remove the pod object; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            self.sync(&pod).await;
            self.report(&pod).await;
            tokio::select! {
                r = pod_rx.changed() => if r.is_err() { self.terminate(None, Duration::from_secs(2)).await; return; },
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn ensure_sandbox(&mut self, pod: &Pod) -> bool {
        if self.sandbox.is_some() {
            return true;
        }
        let spec = pod.spec.as_ref();
        let host_network = spec.is_some_and(|s| s.host_network);
        let ip = if host_network || !self.runtime().runs_processes() || self.shared.ips.is_none() {
            self.shared
                .ips
                .as_ref()
                .and_then(|ips| ips.allocate(&self.uid).ok())
        } else {
            match self.shared.ips.as_ref().map(|ips| ips.allocate(&self.uid)) {
                Some(Ok(ip)) => Some(ip),
                Some(Err(e)) => {
                    self.sandbox_error = Some(e.to_string());
                    return false;
                }
                None => None,
            }
        };
        let config = SandboxConfig {
            pod_uid: self.uid.clone(),
            namespace: pod.namespace().to_owned(),
            name: pod.name().to_owned(),
            hostname: spec
                .map(|s| s.hostname.clone())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod.name().to_owned()),
            ip,
            host_network,
            sysctls: spec
                .and_then(|s| s.security_context.as_ref())
                .map(|c| {
                    c.sysctls
                        .iter()
                        .map(|s| (s.name.replace('/', "."), s.value.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            share_process_namespace: spec.is_some_and(|s| s.share_process_namespace == Some(true)),
        };
        match self.runtime().run_sandbox(&config).await {
            Ok(sb) => {
                self.sandbox = Some(sb);
                self.sandbox_error = None;
                self.start_time.get_or_insert_with(SystemTime::now);
                true
            }
            Err(e) => {
                self.sandbox_error = Some(e.to_string());
                false
            }
        }
    }

    async fn sync(&mut self, pod: &Pod) {
        self.start_time.get_or_insert_with(SystemTime::now);
        if self.rejected.is_some() {
            return;
        }
        if let Some(name) = pod
            .spec
            .as_ref()
            .and_then(|s| security::forbidden_sysctl(s, &self.shared.config.allowed_unsafe_sysctls))
        {
            let message = format!("Pod forbidden sysctl: \"{name}\" not allowlisted");
            emit(
                &self.shared,
                pod,
                WARNING,
                "SysctlForbidden",
                message.clone(),
            );
            self.rejected = Some(("SysctlForbidden".into(), message));
            return;
        }
        if !self.ensure_sandbox(pod).await {
            return;
        }
        if self
            .volumes_refreshed
            .is_none_or(|t| t.elapsed() >= VOLUME_SYNC_PERIOD)
        {
            self.volumes_refreshed = Some(Instant::now());
            self.refresh_config_volumes(pod).await;
            if let Some(message) = self.empty_dir_over_limit(pod) {
                emit(&self.shared, pod, WARNING, "Evicted", message.clone());
                self.rejected = Some(("Evicted".into(), message));
                let runtime = self.runtime().clone();
                for slot in self.slots.values_mut() {
                    slot.probers = None;
                    if let Some((id, ..)) = slot.current.take() {
                        let _ = runtime.stop_container(&id, Duration::ZERO).await;
                    }
                }
                return;
            }
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = match spec.restart_policy.as_str() {
            "" => "Always",
            p => p,
        }
        .to_owned();
        // Slots follow the spec (containers cannot be added, but be safe).
        for c in &spec.init_containers {
            self.slots
                .entry(c.name.clone())
                .or_insert_with(|| Slot::new(true, self.shared.config.backoff.initial));
        }
        for c in &spec.containers {
            self.slots
                .entry(c.name.clone())
                .or_insert_with(|| Slot::new(false, self.shared.config.backoff.initial));
        }
        // Init containers, in order.
        for c in &spec.init_containers {
            self.sync_container(pod, c, &policy, true).await;
            let slot = &self.slots[&c.name];
            if !slot.done {
                return;
            }
        }
        for c in &spec.containers {
            self.sync_container(pod, c, &policy, false).await;
        }
    }

    async fn sync_container(&mut self, pod: &Pod, c: &Container, policy: &str, init: bool) {
        let hash = spec_hash(c);
        let grace = Duration::from_secs(
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        );
        let runtime = self.runtime().clone();
        let slot = self.slots.get_mut(&c.name).expect("slot exists");
        if let Some((id, attempt, _, running_hash)) = slot.current.clone() {
            let state = runtime.container_state(&id).await;
            match state {
                Ok(ContainerState::Running { .. }) => {
                    let probe_failed = slot
                        .probers
                        .as_ref()
                        .is_some_and(|p| p.state.failed.load(Ordering::SeqCst));
                    if running_hash != hash || probe_failed {
                        // A changed spec or a failed liveness probe: kill it.
                        let kill_grace = if probe_failed {
                            c.liveness_probe
                                .as_ref()
                                .and_then(|p| p.termination_grace_period_seconds)
                                .map(|g| Duration::from_secs(g.max(0) as u64))
                                .unwrap_or(grace)
                        } else {
                            grace
                        };
                        slot.probers = None;
                        slot.replace = running_hash != hash;
                        let message = if probe_failed {
                            format!(
                                "Container {} failed liveness probe, will be restarted",
                                c.name
                            )
                        } else {
                            format!("Container {} definition changed, will be restarted", c.name)
                        };
                        emit(&self.shared, pod, NORMAL, "Killing", message);
                        self.stop_gracefully(pod, c, &id, kill_grace).await;
                        self.changed.notify_one();
                        return;
                    }
                    return;
                }
                Ok(ContainerState::Exited {
                    exit_code,
                    reason,
                    started_at,
                    finished_at,
                }) => {
                    tracing::info!(pod = pod.name(), container = %c.name, exit_code, reason = %reason, "the container ended");
                    let message = self
                        .termination_message(pod, c, &id, attempt, exit_code)
                        .await;
                    let slot = self.slots.get_mut(&c.name).expect("slot exists");
                    slot.probers = None;
                    slot.current = None;
                    if let Some(old) = slot.last.take() {
                        let _ = runtime.remove_container(&old.id).await;
                    }
                    let ran = finished_at.duration_since(started_at).unwrap_or_default();
                    slot.last = Some(Ended {
                        id: id.clone(),
                        exit_code,
                        reason,
                        started_at,
                        finished_at,
                        message,
                    });
                    if std::mem::take(&mut slot.replace) {
                        // Not a failure: the new spec starts now.
                        slot.restarts += 1;
                        slot.not_before = Some(Instant::now());
                        self.changed.notify_one();
                        return;
                    }
                    match after_exit(init, policy, exit_code) {
                        AfterExit::Restart => {}
                        AfterExit::Completed => {
                            slot.done = true;
                            return;
                        }
                        AfterExit::InitFailed => {
                            slot.done = false;
                            return;
                        }
                    }
                    let (delay, next) =
                        crash_loop_delay(slot.backoff, ran, self.shared.config.backoff);
                    slot.not_before = Some(Instant::now() + delay);
                    slot.backoff = next;
                    slot.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={} pod={}_{}({})",
                            delay.as_secs(),
                            c.name,
                            pod.name(),
                            pod.namespace(),
                            self.uid
                        ),
                    ));
                    slot.restarts += 1;
                    emit(
                        &self.shared,
                        pod,
                        WARNING,
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {} in pod {}",
                            c.name,
                            pod.name()
                        ),
                    );
                    let changed = self.changed.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        changed.notify_one();
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!(pod = pod.name(), container = %c.name, id = %id, error = %e, "cannot read the container's state; it is started again");
                    slot.current = None;
                }
            }
        }
        if slot.done {
            return;
        }
        if slot.last.is_some() && !init {
            // Ended and not to be restarted (the policy decided above), unless backing off.
            if slot.not_before.is_none() {
                return;
            }
        }
        if slot.not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Start it.
        let attempt = slot.restarts;
        let env = match self.env(pod, c).await {
            Ok(env) => env,
            Err(message) => {
                let slot = self.slots.get_mut(&c.name).expect("slot");
                slot.waiting = Some(("CreateContainerConfigError".into(), message));
                return;
            }
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let security = match security::container_security(&spec, c, &self.shared.config.seccomp_dir)
        {
            Ok(s) => s,
            Err(message) => return self.config_error(pod, c, message),
        };
        let sysctls: Vec<(String, String)> = spec
            .security_context
            .as_ref()
            .map(|s| {
                s.sysctls
                    .iter()
                    .map(|x| (x.name.clone(), x.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(why) = self.runtime().refuses(&security, &sysctls) {
            return self.config_error(pod, c, why);
        }
        let image_user = if security::requires_non_root(&spec, c) {
            self.runtime().image_user(&c.image).await
        } else {
            Ok(String::new())
        };
        match image_user {
            Ok(user) => {
                let who = format!(
                    "pod: \"{}_{}({})\", container: {}",
                    pod.name(),
                    pod.namespace(),
                    self.uid,
                    c.name
                );
                if let Err(message) =
                    security::verify_non_root(&spec, c, security.user, &user, &who)
                {
                    return self.config_error(pod, c, message);
                }
            }
            // Starting it reports the missing image.
            Err(RuntimeError::ImageNotPresent { .. }) => {}
            Err(e) => return self.config_error(pod, c, e.to_string()),
        }
        let mut mounts = match self.mounts(pod, c, &env).await {
            Ok(m) => m,
            Err(message) => {
                let slot = self.slots.get_mut(&c.name).expect("slot");
                let repeated = slot
                    .waiting
                    .as_ref()
                    .is_some_and(|(r, m)| r == "ContainerCreating" && *m == message);
                slot.waiting = Some(("ContainerCreating".into(), message.clone()));
                if !repeated {
                    emit(&self.shared, pod, WARNING, "FailedMount", message);
                }
                // Look again soon: a claim gets bound without the pod changing.
                let changed = self.changed.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    changed.notify_one();
                });
                return;
            }
        };
        match self.pod_files(pod, c, attempt).await {
            Ok(files) => mounts.extend(files),
            Err(message) => return self.config_error(pod, c, message),
        }
        let limits = c
            .resources
            .as_ref()
            .map(|r| r.limits.clone())
            .unwrap_or_default();
        let config = ContainerConfig {
            pod_uid: self.uid.clone(),
            namespace: pod.namespace().to_owned(),
            pod_name: pod.name().to_owned(),
            name: c.name.clone(),
            attempt,
            image: c.image.clone(),
            command: c.command.clone(),
            args: c.args.clone(),
            env,
            working_dir: Some(c.working_dir.clone()).filter(|w| !w.is_empty()),
            cpu_limit_milli: limits
                .get("cpu")
                .and_then(|q| Quantity::parse(q).ok())
                .map(|q| q.milli() as i64),
            memory_limit: limits
                .get("memory")
                .and_then(|q| Quantity::parse(q).ok())
                .map(|q| q.value() as i64),
            log_path: self.shared.log_path(pod, &c.name, attempt),
            mounts,
            hostname: if spec.host_network {
                String::new()
            } else if spec.hostname.is_empty() {
                pod.name().to_owned()
            } else {
                spec.hostname.clone()
            },
            security,
            share_process_namespace: spec.share_process_namespace == Some(true),
        };
        let sandbox = self.sandbox.clone().expect("sandbox exists");
        let result = self.runtime().start_container(&sandbox, &config).await;
        let policy = c.image_pull_policy.as_str();
        match result {
            Ok(id) => {
                if self.runtime().has_images() {
                    let note = if policy == "Always" {
                        "; pull policy Always acts as IfNotPresent here: this node never pulls \
                         images"
                    } else {
                        ""
                    };
                    emit(
                        &self.shared,
                        pod,
                        NORMAL,
                        "Pulled",
                        format!(
                            "Container image {:?} already present on machine{note}",
                            c.image
                        ),
                    );
                }
                emit(
                    &self.shared,
                    pod,
                    NORMAL,
                    "Started",
                    format!("Started container {}", c.name),
                );
                if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
                    let target = self.target(c, &id);
                    if let Err(e) = hooks::run(&hook, &target, grace).await {
                        emit(
                            &self.shared,
                            pod,
                            WARNING,
                            "FailedPostStartHook",
                            format!("PostStartHook failed: {e}"),
                        );
                        // Kubernetes kills the container; its restart policy decides.
                        let _ = self.runtime().stop_container(&id, grace).await;
                    }
                }
                let slot = self.slots.get_mut(&c.name).expect("slot");
                slot.current = Some((id.clone(), attempt, SystemTime::now(), hash));
                slot.waiting = None;
                slot.not_before = None;
                if !init && self.shared.runtime.runs_processes() {
                    let target = Target {
                        ip: sandbox.ip.clone(),
                        ports: c.ports.clone(),
                        runtime: self.shared.runtime.clone(),
                        container_id: id,
                    };
                    slot.probers = Some(probe::start(
                        c.startup_probe.clone(),
                        c.liveness_probe.clone(),
                        c.readiness_probe.clone(),
                        target,
                        self.changed.clone(),
                    ));
                }
                self.changed.notify_one();
            }
            Err(RuntimeError::ImageNotPresent { image }) => {
                let (reason, message) = if policy == "Never" {
                    (
                        "ErrImageNeverPull",
                        format!(
                            "Container image {image:?} is not present with pull policy of Never"
                        ),
                    )
                } else {
                    (
                        "ErrImagePull",
                        format!(
                            "Container image {image:?} is not present on this node, and this node \
                             never pulls images (no registry): build or load it here"
                        ),
                    )
                };
                let slot = self.slots.get_mut(&c.name).expect("slot");
                if slot.waiting.as_ref().is_none_or(|(r, _)| r != reason) {
                    emit(&self.shared, pod, WARNING, reason, message.clone());
                }
                slot.waiting = Some((reason.into(), message));
                // Look again now and then: the image may be built meanwhile.
                slot.not_before = Some(Instant::now() + Duration::from_secs(5));
                let changed = self.changed.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    changed.notify_one();
                });
            }
            Err(e) => {
                emit(&self.shared, pod, WARNING, "Failed", format!("Error: {e}"));
                let slot = self.slots.get_mut(&c.name).expect("slot");
                slot.waiting = Some(("RunContainerError".into(), e.to_string()));
                let (delay, next) =
                    crash_loop_delay(slot.backoff, Duration::ZERO, self.shared.config.backoff);
                slot.not_before = Some(Instant::now() + delay);
                slot.backoff = next;
            }
        }
    }

    /// Holds a container in CreateContainerConfigError with `message`
    /// (an event the first time).
    fn config_error(&mut self, pod: &Pod, c: &Container, message: String) {
        let slot = self.slots.get_mut(&c.name).expect("slot");
        let repeated = slot
            .waiting
            .as_ref()
            .is_some_and(|(r, m)| r == "CreateContainerConfigError" && *m == message);
        slot.waiting = Some(("CreateContainerConfigError".into(), message.clone()));
        if !repeated {
            emit(
                &self.shared,
                pod,
                WARNING,
                "Failed",
                format!("Error: {message}"),
            );
        }
    }

    /// What probes and hooks of container `c` (instance `id`) reach.
    fn target(&self, c: &Container, id: &str) -> Target {
        Target {
            ip: self
                .sandbox
                .as_ref()
                .map(|s| s.ip.clone())
                .unwrap_or_default(),
            ports: c.ports.clone(),
            runtime: self.shared.runtime.clone(),
            container_id: id.to_owned(),
        }
    }

    /// Stops container `c` (instance `id`): its preStop hook first, then
    /// SIGTERM, then SIGKILL once `grace` (the hook's time included) is over.
    async fn stop_gracefully(&self, pod: &Pod, c: &Container, id: &str, grace: Duration) {
        let started = Instant::now();
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
            && let Err(e) = hooks::run(hook, &self.target(c, id), grace).await
        {
            emit(
                &self.shared,
                pod,
                WARNING,
                "FailedPreStopHook",
                format!("PreStopHook failed: {e}"),
            );
        }
        // Kubernetes gives a hook that used up the grace period 2 s more.
        let left = grace
            .checked_sub(started.elapsed())
            .unwrap_or_default()
            .max(Duration::from_secs(2).min(grace));
        let hook_took = started.elapsed();
        let stopped = self.runtime().stop_container(id, left).await;
        tracing::debug!(pod = pod.name(), container = %c.name, hook_took = ?hook_took, stop = ?stopped, took = ?started.elapsed(), "stopped the container");
    }

    /// The termination message of container `c`'s instance `id`: its
    /// termination log, or with FallbackToLogsOnError and a failure, the
    /// tail of its log.
    async fn termination_message(
        &self,
        pod: &Pod,
        c: &Container,
        id: &str,
        attempt: u32,
        exit_code: i32,
    ) -> String {
        let file = self.termination_log(&c.name, attempt);
        let mut message = std::fs::read(&file)
            .map(|mut b| {
                b.truncate(MAX_TERMINATION_MESSAGE);
                String::from_utf8_lossy(&b).into_owned()
            })
            .unwrap_or_default();
        if message.is_empty()
            && exit_code != 0
            && c.termination_message_policy == "FallbackToLogsOnError"
        {
            let record = ContainerRecord {
                id: id.to_owned(),
                pod_uid: self.uid.clone(),
                name: c.name.clone(),
                attempt,
                log_path: self.shared.log_path(pod, &c.name, attempt),
            };
            if let Ok(stream) = self
                .runtime()
                .logs(&record, Some(FALLBACK_LINES), false)
                .await
            {
                let chunks: Vec<_> = futures::StreamExt::collect(stream).await;
                let bytes: Vec<u8> = chunks.into_iter().flatten().flatten().collect();
                let start = bytes.len().saturating_sub(FALLBACK_BYTES);
                message =
                    String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned();
            }
        }
        message
    }

    /// The node file behind container `name`'s termination log, instance `attempt`.
    fn termination_log(&self, name: &str, attempt: u32) -> std::path::PathBuf {
        self.pod_volumes_dir()
            .with_file_name("containers")
            .join(name)
            .join(attempt.to_string())
            .join("termination-log")
    }

    /// The files the kubelet gives every container: its termination log
    /// (at terminationMessagePath), and the pod's /etc/hosts and
    /// /etc/resolv.conf (per DNS policy).
    async fn pod_files(
        &self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
    ) -> Result<Vec<Mount>, String> {
        use std::os::unix::fs::PermissionsExt;
        if !self.runtime().runs_processes() {
            return Ok(Vec::new());
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let mut out = Vec::new();
        let log = self.termination_log(&c.name, attempt);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(&log, b"").map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        // Any user the container runs as may write its message.
        let _ = std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666));
        let path = if c.termination_message_path.is_empty() {
            "/dev/termination-log"
        } else {
            &c.termination_message_path
        };
        out.push(Mount::file(log, path));
        let dir = self.pod_volumes_dir().with_file_name("etc");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.clone())
            .unwrap_or_default();
        let domain = self.shared.config.cluster_domain.clone();
        let hosts = if spec.host_network {
            let node = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            format!("{node}{}", dns::host_aliases(&spec))
        } else {
            dns::hosts_file(&spec, pod.name(), pod.namespace(), &ip, &domain)
        };
        let hosts_path = dir.join("hosts");
        std::fs::write(&hosts_path, hosts)
            .map_err(|e| format!("cannot write {}: {e}", hosts_path.display()))?;
        let _ = std::fs::set_permissions(&hosts_path, std::fs::Permissions::from_mode(0o644));
        out.push(Mount::file(hosts_path, "/etc/hosts"));
        let cluster_dns = self.cluster_dns().await;
        if dns::effective(&spec, &cluster_dns) == dns::Effective::NodeFallback
            && !self.dns_warned.swap(true, Ordering::Relaxed)
        {
            emit(
                &self.shared,
                pod,
                WARNING,
                "MissingClusterDNS",
                format!(
                    "pod: {:?}. kubelet does not have ClusterDNS IP configured and cannot create \
                     Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy.",
                    format!("{}_{}({})", pod.name(), pod.namespace(), self.uid)
                ),
            );
        }
        let node = dns::ResolvConf::parse(
            &std::fs::read_to_string(&self.shared.config.resolv_conf).unwrap_or_default(),
        );
        let resolv = dns::resolv_conf(&spec, pod.namespace(), &cluster_dns, &domain, &node);
        let resolv_path = dir.join("resolv.conf");
        std::fs::write(&resolv_path, resolv.render())
            .map_err(|e| format!("cannot write {}: {e}", resolv_path.display()))?;
        let _ = std::fs::set_permissions(&resolv_path, std::fs::Permissions::from_mode(0o644));
        out.push(Mount::file(resolv_path, "/etc/resolv.conf"));
        Ok(out)
    }

    /// The cluster DNS name servers: the kubelet's flag, else the cluster IP
    /// of kube-system/kube-dns (read again after 30 s); empty when unknown.
    async fn cluster_dns(&self) -> Vec<String> {
        if !self.shared.config.cluster_dns.is_empty() {
            return self.shared.config.cluster_dns.clone();
        }
        if let Some((at, ips)) = self.shared.cluster_dns.lock().expect("dns cache").clone()
            && at.elapsed() < Duration::from_secs(30)
        {
            return ips;
        }
        let ips: Vec<String> = match self
            .client()
            .services("kube-system")
            .get_opt("kube-dns")
            .await
        {
            Ok(Some(svc)) => svc
                .spec
                .map(|s| s.cluster_ip)
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
                .into_iter()
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cluster DNS service");
                return Vec::new();
            }
        };
        *self.shared.cluster_dns.lock().expect("dns cache") =
            Some((std::time::Instant::now(), ips.clone()));
        ips
    }

    /// The first emptyDir of the pod using more than its sizeLimit, as
    /// Kubernetes' eviction message says it.
    fn empty_dir_over_limit(&self, pod: &Pod) -> Option<String> {
        let volumes = pod
            .spec
            .as_ref()
            .map(|s| s.volumes.as_slice())
            .unwrap_or(&[]);
        volumes.iter().find_map(|v| {
            let e = v.empty_dir.as_ref()?;
            let limit = Quantity::parse(&e.size_limit).ok()?.value();
            let used = i128::from(volumes::usage(&self.pod_volumes_dir().join(&v.name)));
            (used > limit).then(|| {
                format!(
                    "Usage of EmptyDir volume {:?} exceeds the limit {:?}.",
                    v.name, e.size_limit
                )
            })
        })
    }

    /// Stops everything of the pod (SIGTERM, SIGKILL after `grace`), removes its sandbox.
    async fn terminate(&mut self, pod: Option<&Pod>, grace: Duration) {
        let runtime = self.runtime().clone();
        let mut running = Vec::new();
        for (name, slot) in self.slots.iter_mut() {
            slot.probers = None;
            if let Some((id, ..)) = slot.current.take() {
                running.push((name.clone(), id));
            }
            if let Some(last) = slot.last.take() {
                let _ = runtime.remove_container(&last.id).await;
            }
        }
        // Every container at once, each after its preStop hook.
        let spec = pod.and_then(|p| p.spec.clone()).unwrap_or_default();
        tracing::info!(pod_uid = %self.uid, running = ?running, grace = ?grace, "stopping the pod's containers");
        if let Some(pod) = pod {
            for (name, _) in &running {
                emit(
                    &self.shared,
                    pod,
                    NORMAL,
                    "Killing",
                    format!("Stopping container {name}"),
                );
            }
        }
        let this = &*self;
        futures::future::join_all(running.iter().map(|(name, id)| {
            let runtime = runtime.clone();
            let c = spec
                .containers
                .iter()
                .chain(&spec.init_containers)
                .find(|c| c.name == *name);
            async move {
                match (pod, c) {
                    (Some(pod), Some(c)) => this.stop_gracefully(pod, c, id, grace).await,
                    _ => {
                        let _ = runtime.stop_container(id, grace).await;
                    }
                }
                let _ = runtime.remove_container(id).await;
            }
        }))
        .await;
        // Containers a previous kubelet started and this one never adopted.
        if let Ok(records) = runtime.containers().await {
            for r in records.into_iter().filter(|r| r.pod_uid == self.uid) {
                let _ = runtime.stop_container(&r.id, grace).await;
                let _ = runtime.remove_container(&r.id).await;
            }
        }
        let _ = runtime.remove_sandbox(&self.uid).await;
        // The pod's emptyDir volumes go with it (memory-backed ones unmounted first).
        volumes::unmount_tmpfs_under(&self.pod_volumes_dir());
        if let Some(pod_dir) = self.pod_volumes_dir().parent() {
            let _ = std::fs::remove_dir_all(pod_dir);
        }
        if let Some(ips) = &self.shared.ips {
            ips.release(&self.uid);
        }
        if let Some(pod) = pod {
            let _ = std::fs::remove_dir_all(self.shared.pod_log_dir(pod));
        }
    }

    /// Writes the status if it changed.
    async fn report(&mut self, pod: &Pod) {
        let status = self.status(pod);
        if self.reported.as_ref() == Some(&status) || pod.status.as_ref() == Some(&status) {
            self.reported = Some(status);
            return;
        }
        let api = self.client().pods(pod.namespace());
        let mut current = pod.clone();
        for _ in 0..3 {
            current.status = Some(status.clone());
            match api.update_status(&current).await {
                Ok(_) => {
                    let was_running = self.reported.as_ref().is_some_and(|s| s.phase == "Running")
                        || pod.status.as_ref().is_some_and(|s| s.phase == "Running");
                    if status.phase == "Running" && !was_running {
                        observe_pod_start(pod);
                    }
                    self.reported = Some(status);
                    return;
                }
                Err(Error::Conflict(_)) => match api.get(pod.name()).await {
                    Ok(p) if p.meta().uid == self.uid => current = p,
                    _ => return,
                },
                Err(Error::NotFound(_)) => return,
                Err(e) => {
                    tracing::debug!(pod = pod.name(), error = %e, "status update failed; retrying later");
                    return;
                }
            }
        }
    }
}

/// Records `kubelet_pod_start_duration_seconds`: from the pod's creation to
/// this kubelet first reporting it Running.
fn observe_pod_start(pod: &Pod) {
    static H: std::sync::OnceLock<std::sync::Arc<skiff::metrics::HistogramVec>> =
        std::sync::OnceLock::new();
    let h = H.get_or_init(|| {
        skiff::metrics::global().histogram(
            "kubelet_pod_start_duration_seconds",
            "Time from a pod's creation to its first Running status.",
            &[],
            skiff::metrics::LATENCY_BUCKETS,
        )
    });
    let created = pod
        .metadata
        .as_ref()
        .and_then(|m| m.creation_timestamp)
        .and_then(|t| SystemTime::try_from(t).ok());
    if let Some(created) = created
        && let Ok(d) = SystemTime::now().duration_since(created)
    {
        h.with(&[]).observe_duration(d);
    }
}
