//! A pod's subresources: its logs and exec (streams relayed from the
//! kubelet of its node) and its binding to a node (the scheduler's write).
//! The long-running ones are named in [`STREAMING_METHODS`] for the filters.
//!
//! Owns those three methods; must not start or reach containers itself (the
//! kubelet does, through [`crate::kubelet_client`]).

use futures::StreamExt;
use skiff::api::core::v1::PodCondition;
use skiff::resource::object_key;
use skiff::{Resource, api};
use tonic::{Request, Response, Status};

use super::service::{Origin, ResourceServer, now};
use crate::error::ApiError;
use crate::kubelet_client::relay_error;

/// gRPC methods of this module that stream for as long as the client
/// wants (exempt from in-flight limits, like watches).
pub const STREAMING_METHODS: &[&str] = &["GetPodLogs", "ExecPod"];

impl ResourceServer<api::core::v1::Pod> {
    /// The pod, its container name (defaulted when it has one), its node.
    async fn pod_container(
        &self,
        ns: &str,
        name: &str,
        container: &str,
    ) -> Result<(api::core::v1::Pod, String, String), ApiError> {
        let pod = self.existing(ns, name, Origin::Fresh).await?;
        let key = object_key(ns, name);
        let spec = pod.spec.clone().unwrap_or_default();
        let names: Vec<&str> = spec
            .init_containers
            .iter()
            .chain(&spec.containers)
            .map(|c| c.name.as_str())
            .collect();
        let container = if container.is_empty() {
            match spec.containers.as_slice() {
                [only] => only.name.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        "Pod",
                        &key,
                        "container",
                        format!("pod {key:?} has several containers; name one of {names:?}"),
                    ));
                }
            }
        } else if names.contains(&container) {
            container.to_owned()
        } else {
            return Err(ApiError::invalid(
                "Pod",
                &key,
                "container",
                format!("pod {key:?} has no container {container:?}; it has {names:?}"),
            ));
        };
        if spec.node_name.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "pod {key:?} is not scheduled to a node yet"
            )));
        }
        Ok((pod, container, spec.node_name))
    }

    /// Binds one pod to `r.node_name` unless it is bound already, being
    /// deleted, or not the pod `r.uid` names.
    async fn bind_one(
        &self,
        ns: &str,
        r: &api::core::v1::BindPodRequest,
    ) -> Result<api::core::v1::Pod, ApiError> {
        self.require_name(&r.name)?;
        let key = object_key(ns, &r.name);
        if let Err(e) = skiff::names::validate_dns1123_subdomain(&r.node_name) {
            return Err(ApiError::invalid("Pod", &key, "node_name", e));
        }
        self.guaranteed_update(ns, &r.name, |old| {
            if !r.uid.is_empty() && r.uid != old.meta().uid {
                return Err(ApiError::Conflict {
                    kind: "Pod".into(),
                    name: key.clone(),
                    reason: format!(
                        "precondition failed: uid is {}, not {}",
                        old.meta().uid,
                        r.uid
                    ),
                });
            }
            if old.meta().deletion_timestamp.is_some() {
                return Err(ApiError::FailedPrecondition(format!(
                    "pod {key:?} is being deleted and cannot be bound"
                )));
            }
            let current = old
                .spec
                .as_ref()
                .map(|s| s.node_name.as_str())
                .unwrap_or("");
            if !current.is_empty() {
                return Err(ApiError::FailedPrecondition(format!(
                    "pod {key:?} is already bound to node {current:?}"
                )));
            }
            let mut new = old.clone();
            new.spec.get_or_insert_with(Default::default).node_name = r.node_name.clone();
            let status = new.status.get_or_insert_with(Default::default);
            set_pod_condition(&mut status.conditions, "PodScheduled", "True", "", "");
            Ok(Some(new))
        })
        .await
    }
}

#[tonic::async_trait]
impl skiff::subresources::PodSubresources for ResourceServer<api::core::v1::Pod> {
    type GetPodLogsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<api::core::v1::GetPodLogsResponse, Status>> + Send>,
    >;
    type ExecPodStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<api::core::v1::ExecPodResponse, Status>> + Send>,
    >;

    async fn get_pod_logs(
        &self,
        request: Request<api::core::v1::GetPodLogsRequest>,
    ) -> Result<Response<Self::GetPodLogsStream>, Status> {
        let ns = self.namespace_of(&request.get_ref().namespace);
        self.authorize(
            request.extensions(),
            "get",
            "log",
            &ns,
            &request.get_ref().name,
        )
        .await?;
        let r = request.into_inner();
        self.require_name(&r.name)?;
        if r.tail_lines.is_some_and(|n| n < 0) {
            return Err(ApiError::invalid(
                "Pod",
                &object_key(&ns, &r.name),
                "tail_lines",
                "must not be negative (leave it unset for the whole log)",
            )
            .into());
        }
        let (pod, container, node) = self.pod_container(&ns, &r.name, &r.container).await?;
        let mut kubelet = self.ctx.kubelets.client(&node).await?;
        let stream = kubelet
            .get_container_logs(api::kubelet::v1::GetContainerLogsRequest {
                namespace: ns,
                pod: r.name,
                pod_uid: pod.meta().uid.clone(),
                container,
                follow: r.follow,
                tail_lines: r.tail_lines,
                previous: r.previous,
            })
            .await
            .map_err(|e| relay_error(&node, e))?
            .into_inner();
        let mut shutdown = self.ctx.shutdown.clone();
        let stream = stream
            .map(|chunk| chunk.map(|c| api::core::v1::GetPodLogsResponse { data: c.data }))
            .take_until(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn exec_pod(
        &self,
        request: Request<api::core::v1::ExecPodRequest>,
    ) -> Result<Response<Self::ExecPodStream>, Status> {
        let ns = self.namespace_of(&request.get_ref().namespace);
        self.authorize(
            request.extensions(),
            "create",
            "exec",
            &ns,
            &request.get_ref().name,
        )
        .await?;
        let r = request.into_inner();
        self.require_name(&r.name)?;
        if r.command.is_empty() {
            return Err(
                ApiError::invalid("Pod", &object_key(&ns, &r.name), "command", "required").into(),
            );
        }
        let (pod, container, node) = self.pod_container(&ns, &r.name, &r.container).await?;
        let mut kubelet = self.ctx.kubelets.client(&node).await?;
        let stream = kubelet
            .exec_container(api::kubelet::v1::ExecContainerRequest {
                namespace: ns,
                pod: r.name,
                pod_uid: pod.meta().uid.clone(),
                container,
                command: r.command,
            })
            .await
            .map_err(|e| relay_error(&node, e))?
            .into_inner();
        let stream = stream.map(|chunk| {
            chunk.map(|c| api::core::v1::ExecPodResponse {
                stdout: c.stdout,
                stderr: c.stderr,
                exit_code: c.exit_code,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn bind_pod(
        &self,
        request: Request<api::core::v1::BindPodRequest>,
    ) -> Result<Response<api::core::v1::BindPodResponse>, Status> {
        let ns = self.namespace_of(&request.get_ref().namespace);
        self.authorize(
            request.extensions(),
            "create",
            "binding",
            &ns,
            &request.get_ref().name,
        )
        .await?;
        let r = request.into_inner();
        let pod = self.bind_one(&ns, &r).await?;
        Ok(Response::new(api::core::v1::BindPodResponse {
            pod: Some(pod),
        }))
    }

    async fn bind_pods(
        &self,
        request: Request<api::core::v1::BindPodsRequest>,
    ) -> Result<Response<api::core::v1::BindPodsResponse>, Status> {
        let count = request.get_ref().bindings.len();
        if count > MAX_BINDINGS {
            return Err(ApiError::invalid(
                "Pod",
                "",
                "bindings",
                format!("{count} bindings in one call; at most {MAX_BINDINGS}, split the rest"),
            )
            .into());
        }
        let user = self
            .authorize_unaudited(request.extensions(), "create", "binding", "", "")
            .await;
        let extensions = request.extensions().clone();
        let r = request.into_inner();
        let results = futures::future::join_all(r.bindings.into_iter().map(|b| {
            let extensions = &extensions;
            let user = &user;
            async move {
                let ns = self.namespace_of(&b.namespace);
                // Allowed everywhere, or checked for this pod by name.
                let allowed = match user {
                    Ok(_) => Ok(()),
                    Err(_) => self
                        .authorize_unaudited(extensions, "create", "binding", &ns, &b.name)
                        .await
                        .map(drop),
                };
                let bound = match allowed {
                    Ok(()) => self.bind_one(&ns, &b).await,
                    Err(e) => Err(e),
                };
                match bound {
                    Ok(pod) => api::core::v1::BindPodResult {
                        namespace: ns,
                        name: b.name,
                        resource_version: pod.meta().resource_version.clone(),
                        error: None,
                    },
                    Err(e) => api::core::v1::BindPodResult {
                        namespace: ns,
                        name: b.name,
                        resource_version: String::new(),
                        error: Some(crate::error::rpc_status(&Status::from(e))),
                    },
                }
            }
        }))
        .await;
        Ok(Response::new(api::core::v1::BindPodsResponse { results }))
    }
}

/// Most bindings one BindPods call may carry.
pub const MAX_BINDINGS: usize = 1000;

/// Sets a pod condition, moving its transition time only when its status changes.
pub fn set_pod_condition(
    conditions: &mut Vec<PodCondition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let now = now();
    match conditions.iter_mut().find(|c| c.r#type == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now);
            }
            c.status = status.to_owned();
            c.reason = reason.to_owned();
            c.message = message.to_owned();
        }
        None => conditions.push(PodCondition {
            r#type: kind.to_owned(),
            status: status.to_owned(),
            last_probe_time: None,
            last_transition_time: Some(now),
            reason: reason.to_owned(),
            message: message.to_owned(),
        }),
    }
}
