//! One pod's worker: it keeps the pod in its desired state and reports it.
//! Its sandbox first; then init containers, one at a time, each to
//! completion; then the containers, restarted per the restart policy with
//! an exponential back-off (CrashLoopBackOff), restarted when their liveness
//! or startup probe fails or their spec changes. On deletion it stops every
//! container (SIGTERM, then SIGKILL after the grace period), removes the
//! sandbox and deletes the pod object.
//!
//! The decisions live beside it as pure functions and reads: [`restart`]
//! (restart policy and back-off), `status` (what to report), `env` (a
//! container's environment). This module owns the container lifecycle of
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

mod env;
pub mod restart;
mod status;
mod volumes;

pub use restart::{AfterExit, Backoff, after_exit, crash_loop_delay};
pub use status::qos_class;

use crate::Shared;
use crate::probe::{self, Probers, Target};
use crate::runtime::{
    ContainerConfig, ContainerRecord, ContainerState, Runtime, RuntimeError, Sandbox, SandboxConfig,
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
}

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
    /// When ConfigMap and Secret volumes were last rewritten.
    volumes_refreshed: Option<Instant>,
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
                    Ok(_) | Err(Error::NotFound(_) | Error::Conflict(_)) => return,
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
        if !self.ensure_sandbox(pod).await {
            return;
        }
        if self
            .volumes_refreshed
            .is_none_or(|t| t.elapsed() >= VOLUME_SYNC_PERIOD)
        {
            self.volumes_refreshed = Some(Instant::now());
            self.refresh_config_volumes(pod).await;
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
        if let Some((id, _, _, running_hash)) = slot.current.clone() {
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
                        let _ = runtime.stop_container(&id, kill_grace).await;
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
                Err(_) => {
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
        let mounts = match self.mounts(pod, c).await {
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
        };
        let sandbox = self.sandbox.clone().expect("sandbox exists");
        let result = self.runtime().start_container(&sandbox, &config).await;
        let slot = self.slots.get_mut(&c.name).expect("slot");
        match result {
            Ok(id) => {
                emit(
                    &self.shared,
                    pod,
                    NORMAL,
                    "Started",
                    format!("Started container {}", c.name),
                );
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
                if slot
                    .waiting
                    .as_ref()
                    .is_none_or(|(r, _)| r != "ErrImageNeverPull")
                {
                    emit(
                        &self.shared,
                        pod,
                        WARNING,
                        "ErrImageNeverPull",
                        format!(
                            "Container image {image:?} is not present with pull policy of Never"
                        ),
                    );
                }
                slot.waiting = Some((
                    "ErrImageNeverPull".into(),
                    format!("Container image {image:?} is not present with pull policy of Never"),
                ));
            }
            Err(e) => {
                emit(&self.shared, pod, WARNING, "Failed", format!("Error: {e}"));
                slot.waiting = Some(("RunContainerError".into(), e.to_string()));
                let (delay, next) =
                    crash_loop_delay(slot.backoff, Duration::ZERO, self.shared.config.backoff);
                slot.not_before = Some(Instant::now() + delay);
                slot.backoff = next;
            }
        }
    }

    /// Stops everything of the pod (SIGTERM, SIGKILL after `grace`), removes its sandbox.
    async fn terminate(&mut self, pod: Option<&Pod>, grace: Duration) {
        let runtime = self.runtime().clone();
        let mut stops = Vec::new();
        for slot in self.slots.values_mut() {
            slot.probers = None;
            if let Some((id, ..)) = slot.current.take() {
                let rt = runtime.clone();
                stops.push(async move {
                    let _ = rt.stop_container(&id, grace).await;
                    let _ = rt.remove_container(&id).await;
                });
            }
            if let Some(last) = slot.last.take() {
                let _ = runtime.remove_container(&last.id).await;
            }
        }
        futures::future::join_all(stops).await;
        // Containers a previous kubelet started and this one never adopted.
        if let Ok(records) = runtime.containers().await {
            for r in records.into_iter().filter(|r| r.pod_uid == self.uid) {
                let _ = runtime.stop_container(&r.id, grace).await;
                let _ = runtime.remove_container(&r.id).await;
            }
        }
        let _ = runtime.remove_sandbox(&self.uid).await;
        // The pod's emptyDir volumes go with it.
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
