//! One pod's worker: it keeps the pod in its desired state and reports it.
//! Its sandbox first; then init containers, one at a time, each to
//! completion; then the containers, restarted per the restart policy with
//! an exponential back-off (CrashLoopBackOff), restarted when their liveness
//! or startup probe fails or their spec changes. On deletion it stops every
//! container (SIGTERM, then SIGKILL after the grace period), removes the
//! sandbox and deletes the pod object.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use prost::Message;
use skiff::Resource;
use skiff::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIp, PodStatus,
};
use skiff::client::{Client, Error};
use skiff::params::DeleteParams;
use skiff::quantity::Quantity;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::Shared;
use crate::probe::{self, Probers, Target};
use crate::runtime::{
    ContainerConfig, ContainerRecord, ContainerState, Runtime, RuntimeError, Sandbox, SandboxConfig,
};
use skiff::runtime::events::{NORMAL, WARNING};

/// Timing of restarts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay (Kubernetes: 10 s).
    pub initial: Duration,
    /// Largest delay (Kubernetes: 300 s).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

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
}

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
                    let restart = match (init, policy) {
                        (true, _) if exit_code == 0 => {
                            slot.done = true;
                            false
                        }
                        (true, "Never") => {
                            slot.done = false;
                            false
                        }
                        (true, _) => true,
                        (false, "Always") => true,
                        (false, "OnFailure") => exit_code != 0,
                        (false, _) => false,
                    };
                    if !restart {
                        if !init {
                            slot.done = true;
                        }
                        return;
                    }
                    if ran > Duration::from_secs(600) {
                        slot.backoff = self.shared.config.backoff.initial;
                    }
                    let delay = slot.backoff;
                    slot.not_before = Some(Instant::now() + delay);
                    slot.backoff = (slot.backoff * 2).min(self.shared.config.backoff.max);
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
                let delay = slot.backoff;
                slot.not_before = Some(Instant::now() + delay);
                slot.backoff = (slot.backoff * 2).min(self.shared.config.backoff.max);
            }
        }
    }

    /// The environment of a container: the downward-API variables, then its own.
    async fn env(&self, pod: &Pod, c: &Container) -> Result<Vec<(String, String)>, String> {
        let ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.clone())
            .unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut env = vec![
            ("POD_NAME".to_owned(), pod.name().to_owned()),
            ("POD_NAMESPACE".to_owned(), pod.namespace().to_owned()),
            ("POD_IP".to_owned(), ip.clone()),
            ("NODE_NAME".to_owned(), self.shared.config.node_name.clone()),
        ];
        for e in &c.env {
            let value = match &e.value_from {
                None => e.value.clone(),
                Some(from) => {
                    if let Some(f) = &from.field_ref {
                        let m = pod.meta();
                        let path = f.field_path.as_str();
                        if let Some(k) = path
                            .strip_prefix("metadata.labels['")
                            .and_then(|s| s.strip_suffix("']"))
                        {
                            m.labels.get(k).cloned().unwrap_or_default()
                        } else if let Some(k) = path
                            .strip_prefix("metadata.annotations['")
                            .and_then(|s| s.strip_suffix("']"))
                        {
                            m.annotations.get(k).cloned().unwrap_or_default()
                        } else {
                            match path {
                                "metadata.name" => m.name.clone(),
                                "metadata.namespace" => m.namespace.clone(),
                                "metadata.uid" => m.uid.clone(),
                                "spec.nodeName" => spec.node_name.clone(),
                                "spec.serviceAccountName" => spec.service_account_name.clone(),
                                "status.podIP" => ip.clone(),
                                "status.hostIP" => self.shared.config.node_ip.clone(),
                                other => return Err(format!("unsupported fieldRef {other:?}")),
                            }
                        }
                    } else if let Some(s) = &from.secret_key_ref {
                        match self
                            .client()
                            .secrets(pod.namespace())
                            .get_opt(&s.name)
                            .await
                        {
                            Ok(Some(secret)) => match secret.data.get(&s.key) {
                                Some(v) => String::from_utf8_lossy(v).into_owned(),
                                None if s.optional == Some(true) => continue,
                                None => {
                                    return Err(format!(
                                        "secret {:?} has no key {:?}",
                                        s.name, s.key
                                    ));
                                }
                            },
                            Ok(None) if s.optional == Some(true) => continue,
                            Ok(None) => return Err(format!("secret {:?} not found", s.name)),
                            Err(e) => return Err(format!("reading secret {:?}: {e}", s.name)),
                        }
                    } else {
                        continue;
                    }
                }
            };
            env.push((e.name.clone(), value));
        }
        Ok(env)
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
        if let Some(ips) = &self.shared.ips {
            ips.release(&self.uid);
        }
        if let Some(pod) = pod {
            let _ = std::fs::remove_dir_all(self.shared.pod_log_dir(pod));
        }
    }

    fn status(&self, pod: &Pod) -> PodStatus {
        let spec = pod.spec.clone().unwrap_or_default();
        let previous = pod.status.clone().unwrap_or_default();
        let statuses = |list: &[Container]| -> Vec<ContainerStatus> {
            list.iter()
                .map(|c| {
                    let slot = self.slots.get(&c.name);
                    let probes = slot.and_then(|s| s.probers.as_ref()).map(|p| &p.state);
                    let running = slot.and_then(|s| s.current.as_ref());
                    let state = match (slot, running) {
                        (_, Some((_, _, started, _))) => ApiState {
                            running: Some(ContainerStateRunning {
                                started_at: ts(*started),
                            }),
                            ..Default::default()
                        },
                        (Some(s), None) if s.waiting.is_some() => {
                            let (reason, message) = s.waiting.clone().unwrap_or_default();
                            ApiState {
                                waiting: Some(ContainerStateWaiting { reason, message }),
                                ..Default::default()
                            }
                        }
                        (Some(s), None)
                            if s.done || (s.last.is_some() && s.not_before.is_none()) =>
                        {
                            let e = s.last.clone().expect("ended");
                            ApiState {
                                terminated: Some(terminated(&e, &self.runtime().version())),
                                ..Default::default()
                            }
                        }
                        _ => ApiState {
                            waiting: Some(ContainerStateWaiting {
                                reason: if slot.is_some_and(|s| s.init) {
                                    "PodInitializing"
                                } else {
                                    "ContainerCreating"
                                }
                                .into(),
                                message: self.sandbox_error.clone().unwrap_or_default(),
                            }),
                            ..Default::default()
                        },
                    };
                    let last_state = slot.and_then(|s| {
                        // The previous instance, once a newer one exists or waits.
                        if s.current.is_some() || s.not_before.is_some() {
                            s.last.as_ref().map(|e| ApiState {
                                terminated: Some(terminated(e, &self.runtime().version())),
                                ..Default::default()
                            })
                        } else {
                            None
                        }
                    });
                    let started = running.is_some()
                        && probes.is_none_or(|p| p.started.load(Ordering::SeqCst));
                    let ready = started
                        && probes.is_none_or(|p| p.ready.load(Ordering::SeqCst))
                        && !slot.is_some_and(|s| s.init);
                    let scheme = self
                        .runtime()
                        .version()
                        .split("://")
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    ContainerStatus {
                        name: c.name.clone(),
                        state: Some(state),
                        last_state,
                        ready: ready || (slot.is_some_and(|s| s.init && s.done)),
                        restart_count: slot.map(|s| s.restarts as i32).unwrap_or(0),
                        image: c.image.clone(),
                        image_id: String::new(),
                        container_id: running
                            .map(|(id, ..)| format!("{scheme}://{id}"))
                            .unwrap_or_default(),
                        started: Some(started),
                    }
                })
                .collect()
        };
        let init_statuses = statuses(&spec.init_containers);
        let container_statuses = statuses(&spec.containers);
        let initialized = spec
            .init_containers
            .iter()
            .all(|c| self.slots.get(&c.name).is_some_and(|s| s.done));
        let init_failed = spec.init_containers.iter().any(|c| {
            self.slots.get(&c.name).is_some_and(|s| {
                !s.done
                    && s.current.is_none()
                    && s.last.as_ref().is_some_and(|e| e.exit_code != 0)
                    && s.not_before.is_none()
            })
        });
        let all_ready =
            !container_statuses.is_empty() && container_statuses.iter().all(|s| s.ready);
        let ended: Vec<&Ended> = spec
            .containers
            .iter()
            .filter_map(|c| {
                self.slots
                    .get(&c.name)
                    .filter(|s| s.done)
                    .and_then(|s| s.last.as_ref())
            })
            .collect();
        let any_running = container_statuses
            .iter()
            .any(|s| s.state.as_ref().is_some_and(|x| x.running.is_some()));
        let phase = if init_failed {
            "Failed"
        } else if !spec.containers.is_empty() && ended.len() == spec.containers.len() {
            if ended.iter().all(|e| e.exit_code == 0) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if initialized
            && (any_running || container_statuses.iter().any(|s| s.restart_count > 0))
        {
            "Running"
        } else {
            "Pending"
        };
        let mut conditions = Vec::new();
        let cond = |kind: &str, ok: bool| {
            let status = if ok { "True" } else { "False" };
            let prev = previous.conditions.iter().find(|c| c.r#type == kind);
            PodCondition {
                r#type: kind.into(),
                status: status.into(),
                last_probe_time: None,
                last_transition_time: match prev {
                    Some(p) if p.status == status => p.last_transition_time,
                    _ => ts(SystemTime::now()),
                },
                reason: match (kind, ok) {
                    ("ContainersReady" | "Ready", false)
                        if phase == "Succeeded" || phase == "Failed" =>
                    {
                        "PodCompleted".into()
                    }
                    ("ContainersReady" | "Ready", false) => "ContainersNotReady".into(),
                    ("Initialized", false) => "ContainersNotInitialized".into(),
                    _ => String::new(),
                },
                message: String::new(),
            }
        };
        if let Some(s) = previous
            .conditions
            .iter()
            .find(|c| c.r#type == "PodScheduled")
        {
            conditions.push(s.clone());
        }
        conditions.push(cond("Initialized", initialized));
        conditions.push(cond("ContainersReady", all_ready));
        conditions.push(cond("Ready", all_ready));
        let ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.clone())
            .unwrap_or_default();
        PodStatus {
            phase: phase.into(),
            conditions,
            message: self
                .sandbox_error
                .clone()
                .map(|e| format!("pod sandbox: {e}"))
                .unwrap_or_default(),
            reason: String::new(),
            nominated_node_name: previous.nominated_node_name.clone(),
            host_ip: self.shared.config.node_ip.clone(),
            pod_ip: ip.clone(),
            pod_ips: if ip.is_empty() {
                vec![]
            } else {
                vec![PodIp { ip }]
            },
            start_time: self.start_time.and_then(ts),
            init_container_statuses: init_statuses,
            container_statuses,
            qos_class: qos_class(&spec),
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

fn terminated(e: &Ended, runtime: &str) -> ContainerStateTerminated {
    let scheme = runtime.split("://").next().unwrap_or("");
    ContainerStateTerminated {
        exit_code: e.exit_code,
        signal: if e.exit_code > 128 {
            e.exit_code - 128
        } else {
            0
        },
        reason: e.reason.clone(),
        message: String::new(),
        started_at: ts(e.started_at),
        finished_at: ts(e.finished_at),
        container_id: format!("{scheme}://{}", e.id),
    }
}

/// Kubernetes' QoS class of a pod spec.
pub fn qos_class(spec: &skiff::api::core::v1::PodSpec) -> String {
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .collect();
    let has = |c: &Container| {
        c.resources
            .as_ref()
            .is_some_and(|r| !r.requests.is_empty() || !r.limits.is_empty())
    };
    if !containers.iter().any(|c| has(c)) {
        return "BestEffort".into();
    }
    let guaranteed = containers.iter().all(|c| {
        c.resources.as_ref().is_some_and(|r| {
            ["cpu", "memory"].iter().all(|k| {
                let limit = r.limits.get(*k);
                limit.is_some() && r.requests.get(*k).is_none_or(|req| Some(req) == limit)
            })
        })
    });
    if guaranteed {
        "Guaranteed".into()
    } else {
        "Burstable".into()
    }
}
