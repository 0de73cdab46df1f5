//! Lifecycle hooks: `postStart` right after a container starts (a failure
//! kills the container, as in Kubernetes) and `preStop` before it is sent
//! SIGTERM, within its grace period. Each handler is an exec in the
//! container, an HTTP GET, a TCP connection or a sleep. Runs the handler;
//! must not stop or start containers itself (the worker does).

use std::time::Duration;

use skiff::api::core::v1::LifecycleHandler;

use crate::probe::{self, Target};

/// Runs `handler` against the container `target`, for at most `within`.
pub async fn run(
    handler: &LifecycleHandler,
    target: &Target,
    within: Duration,
) -> Result<(), String> {
    let attempt = async {
        if let Some(exec) = &handler.exec {
            return probe::exec_action(&exec.command, target).await;
        }
        if let Some(http) = &handler.http_get {
            return probe::http_action(http, target).await;
        }
        if let Some(tcp) = &handler.tcp_socket {
            return probe::tcp_action(&tcp.host, &tcp.port, target).await;
        }
        if let Some(sleep) = &handler.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
            return Ok(());
        }
        Err("the hook has no action".to_owned())
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the hook did not finish within {}s",
            within.as_secs()
        )),
    }
}
