//! The kubelet's own gRPC service, which the API server calls for what only
//! a node can serve: container logs and exec.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::string_slice
    )
)]

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use skiff::api::kubelet::v1::kubelet_service_server::{KubeletService, KubeletServiceServer};
use skiff::api::kubelet::v1::{
    ExecContainerRequest, ExecContainerResponse, GetContainerLogsRequest, GetContainerLogsResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::runtime::{ContainerRecord, ContainerState, ExecOutput, RuntimeError};

/// Why a log or exec request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The container never ran on this node (yet).
    #[error("container {container:?} in pod {pod:?} is waiting to start")]
    NotStarted {
        /// Pod name.
        pod: String,
        /// Container name.
        container: String,
    },
    /// No previous instance of the container.
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious {
        /// Pod name.
        pod: String,
        /// Container name.
        container: String,
    },
    /// Exec into a container that is not running.
    #[error("container {container:?} in pod {pod:?} is not running")]
    NotRunning {
        /// Pod name.
        pod: String,
        /// Container name.
        container: String,
    },
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        match &e {
            ServeError::NotStarted { .. }
            | ServeError::NotRunning { .. }
            | ServeError::Runtime(RuntimeError::NotRunning(_)) => {
                Status::failed_precondition(e.to_string())
            }
            ServeError::NoPrevious { .. } => Status::not_found(e.to_string()),
            ServeError::Runtime(RuntimeError::NotFound(_)) => Status::not_found(e.to_string()),
            ServeError::Runtime(RuntimeError::Unsupported(_)) => {
                Status::unimplemented(e.to_string())
            }
            ServeError::Runtime(_) => Status::internal(e.to_string()),
        }
    }
}

/// The kubelet service.
pub struct Kubelet {
    shared: Arc<Shared>,
}

impl Kubelet {
    /// The instances of one container of a pod, newest first.
    async fn instances(
        &self,
        pod_uid: &str,
        container: &str,
    ) -> Result<Vec<ContainerRecord>, ServeError> {
        let mut records: Vec<ContainerRecord> = self
            .shared
            .runtime
            .containers()
            .await?
            .into_iter()
            .filter(|r| r.pod_uid == pod_uid && r.name == container)
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.attempt));
        Ok(records)
    }
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl KubeletService for Kubelet {
    type GetContainerLogsStream = Streamed<GetContainerLogsResponse>;
    type ExecContainerStream = Streamed<ExecContainerResponse>;

    async fn get_container_logs(
        &self,
        request: Request<GetContainerLogsRequest>,
    ) -> Result<Response<Self::GetContainerLogsStream>, Status> {
        let r = request.into_inner();
        let instances = self.instances(&r.pod_uid, &r.container).await?;
        let record = if r.previous {
            // The newest instance that has ended: the one before the running
            // one, or the newest when a restart is still backing off.
            let newest_runs = match instances.first() {
                Some(c) => matches!(
                    self.shared.runtime.container_state(&c.id).await,
                    Ok(ContainerState::Running { .. })
                ),
                None => false,
            };
            instances
                .get(usize::from(newest_runs))
                .ok_or_else(|| ServeError::NoPrevious {
                    pod: r.pod.clone(),
                    container: r.container.clone(),
                })?
        } else {
            instances.first().ok_or_else(|| ServeError::NotStarted {
                pod: r.pod.clone(),
                container: r.container.clone(),
            })?
        };
        let tail = r.tail_lines.map(|n| n.max(0) as usize);
        // A previous instance has ended: following it would never end.
        let follow = r.follow && !r.previous;
        let stream = self
            .shared
            .runtime
            .logs(record, tail, follow)
            .await
            .map_err(ServeError::from)?;
        let out = stream.map(|chunk| {
            chunk
                .map(|data| GetContainerLogsResponse {
                    data: data.to_vec(),
                })
                .map_err(|e| Status::from(ServeError::from(e)))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn exec_container(
        &self,
        request: Request<ExecContainerRequest>,
    ) -> Result<Response<Self::ExecContainerStream>, Status> {
        let r = request.into_inner();
        let instances = self.instances(&r.pod_uid, &r.container).await?;
        let not_running = || ServeError::NotRunning {
            pod: r.pod.clone(),
            container: r.container.clone(),
        };
        let current = instances.first().ok_or_else(not_running)?;
        if !matches!(
            self.shared
                .runtime
                .container_state(&current.id)
                .await
                .map_err(ServeError::from)?,
            ContainerState::Running { .. }
        ) {
            return Err(not_running().into());
        }
        let stream = self
            .shared
            .runtime
            .exec(&current.id, &r.command)
            .await
            .map_err(ServeError::from)?;
        let out = stream.map(|o| {
            Ok(match o {
                ExecOutput::Stdout(b) => ExecContainerResponse {
                    stdout: b.to_vec(),
                    ..Default::default()
                },
                ExecOutput::Stderr(b) => ExecContainerResponse {
                    stderr: b.to_vec(),
                    ..Default::default()
                },
                ExecOutput::Exit(code) => ExecContainerResponse {
                    exit_code: Some(code),
                    ..Default::default()
                },
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Serves the kubelet service on `listener` until `stop`.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(
            KubeletServiceServer::new(Kubelet { shared }).max_encoding_message_size(usize::MAX),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the kubelet service stopped");
    }
}
