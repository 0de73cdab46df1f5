//! The simulated runtime, a named feature for scale tests: sandboxes get an
//! IP and containers are "running" at once, with no process behind them, so
//! one process can host many nodes (`skiff-loadtest density` does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::{
    ContainerConfig, ContainerRecord, ContainerState, ExecStream, Runtime, RuntimeError, Sandbox,
    SandboxConfig,
};

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, Sandbox>,
    containers: HashMap<String, (ContainerRecord, ContainerState)>,
    next: u64,
}

/// Containers that run without running anything.
#[derive(Default)]
pub struct SimRuntime {
    state: Mutex<State>,
}

impl SimRuntime {
    /// An empty simulated runtime.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Runtime for SimRuntime {
    fn version(&self) -> String {
        format!("sim://{}", env!("CARGO_PKG_VERSION"))
    }

    fn runs_processes(&self) -> bool {
        false
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        let ip = config.ip.clone().unwrap_or_else(|| "127.0.0.1".into());
        let sb = Sandbox {
            id: config.pod_uid.clone(),
            ip,
        };
        self.state
            .lock()
            .expect("sim")
            .sandboxes
            .insert(config.pod_uid.clone(), sb.clone());
        Ok(sb)
    }

    async fn find_sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
        Ok(self
            .state
            .lock()
            .expect("sim")
            .sandboxes
            .get(pod_uid)
            .cloned())
    }

    async fn remove_sandbox(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        let mut s = self.state.lock().expect("sim");
        s.sandboxes.remove(pod_uid);
        s.containers.retain(|_, (r, _)| r.pod_uid != pod_uid);
        Ok(())
    }

    async fn start_container(
        &self,
        _sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let mut s = self.state.lock().expect("sim");
        s.next += 1;
        let id = format!("sim-{}", s.next);
        let record = ContainerRecord {
            id: id.clone(),
            pod_uid: config.pod_uid.clone(),
            name: config.name.clone(),
            attempt: config.attempt,
            log_path: config.log_path.clone(),
        };
        let state = ContainerState::Running {
            started_at: SystemTime::now(),
        };
        s.containers.insert(id.clone(), (record, state));
        Ok(id)
    }

    async fn container_state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        self.state
            .lock()
            .expect("sim")
            .containers
            .get(id)
            .map(|(_, st)| st.clone())
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut s = self.state.lock().expect("sim");
        if let Some((_, st)) = s.containers.get_mut(id)
            && let ContainerState::Running { started_at } = st
        {
            *st = ContainerState::Exited {
                exit_code: 0,
                reason: "Completed".into(),
                started_at: *started_at,
                finished_at: SystemTime::now(),
            };
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.state.lock().expect("sim").containers.remove(id);
        Ok(())
    }

    async fn containers(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        Ok(self
            .state
            .lock()
            .expect("sim")
            .containers
            .values()
            .map(|(r, _)| r.clone())
            .collect())
    }

    async fn sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self
            .state
            .lock()
            .expect("sim")
            .sandboxes
            .keys()
            .cloned()
            .collect())
    }

    async fn exec(&self, _id: &str, _command: &[String]) -> Result<ExecStream, RuntimeError> {
        Err(RuntimeError::Unsupported(
            "simulated containers cannot run commands".into(),
        ))
    }
}
