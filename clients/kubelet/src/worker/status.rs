//! A pod's status as its worker sees it: each container's state (waiting,
//! running, terminated) and last state, readiness from its probes, the
//! pod's phase and conditions, and its QoS class. Reads the worker's slots;
//! must not start, stop or write anything.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use skiff::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIp, PodStatus,
};

use super::{Ended, Worker, ts};

impl Worker {
    /// The status to report for `pod`.
    pub(super) fn status(&self, pod: &Pod) -> PodStatus {
        let spec = pod.spec.clone().unwrap_or_default();
        let previous = pod.status.clone().unwrap_or_default();
        let initializing_done = spec
            .init_containers
            .iter()
            .all(|c| self.slots.get(&c.name).is_some_and(|s| s.done));
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
                                // Containers wait for init containers as
                                // PodInitializing, as in Kubernetes.
                                reason: if slot.is_some_and(|s| s.init) || !initializing_done {
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
        let phase = if self.rejected.is_some() || init_failed {
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
            message: match &self.rejected {
                Some((_, m)) => m.clone(),
                None => self
                    .sandbox_error
                    .clone()
                    .map(|e| format!("pod sandbox: {e}"))
                    .unwrap_or_default(),
            },
            reason: self
                .rejected
                .as_ref()
                .map(|(r, _)| r.clone())
                .unwrap_or_default(),
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
        message: e.message.clone(),
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
