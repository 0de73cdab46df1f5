//! [`Api<K>`]: the typed calls of one kind, scoped to a namespace.

use std::marker::PhantomData;
use std::pin::Pin;

use futures::{Stream, StreamExt};

use super::error::{Error, Result};
use super::transport::{ResourceClient, Transport};
use crate::api::apps::v1::{
    Deployment, ReplicaSet, ScaleDeploymentRequest, ScaleReplicaSetRequest,
    deployment_service_client::DeploymentServiceClient,
    replica_set_service_client::ReplicaSetServiceClient,
};
use crate::api::core::v1::{
    BindPodRequest, BindPodsRequest, BoundObjectReference, CreateServiceAccountTokenRequest,
    ExecPodRequest, ExecPodResponse, GetPodLogsRequest, Pod, ServiceAccount,
    pod_service_client::PodServiceClient,
    service_account_service_client::ServiceAccountServiceClient,
};
use crate::api::meta::v1::ListMeta;
use crate::params::{DeleteParams, GetParams, ListParams, WatchParams};
use crate::wire::WatchEvent;

/// A page of a list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectList<K> {
    /// The objects.
    pub items: Vec<K>,
    /// Revision and paging.
    pub metadata: ListMeta,
}

/// Typed access to kind `K` in one namespace (or all, or cluster-scoped).
pub struct Api<K> {
    transport: Transport,
    namespace: String,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self {
            transport: self.transport.clone(),
            namespace: self.namespace.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for Api<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl<K: ResourceClient> Api<K> {
    /// The API of `K` in `namespace` over `transport`.
    pub fn new(transport: Transport, namespace: &str) -> Self {
        let namespace = if K::INFO.namespaced {
            namespace.to_owned()
        } else {
            String::new()
        };
        Self {
            transport,
            namespace,
            _kind: PhantomData,
        }
    }

    /// The namespace this API is scoped to (empty: all).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Reads one object.
    pub async fn get(&self, name: &str) -> Result<K> {
        Ok(K::get_in(
            self.transport.clone(),
            GetParams {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                resource_version: String::new(),
            },
        )
        .await?)
    }

    /// Reads one object; `None` if it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists objects (the namespace of this API unless `params` names one).
    pub async fn list(&self, params: &ListParams) -> Result<ObjectList<K>> {
        let mut params = params.clone();
        if params.namespace.is_empty() {
            params.namespace = self.namespace.clone();
        }
        let r = K::list_in(self.transport.clone(), params).await?;
        Ok(ObjectList {
            metadata: r.list_meta(),
            items: r.items,
        })
    }

    /// Lists every page.
    pub async fn list_all(&self, params: &ListParams) -> Result<ObjectList<K>> {
        let mut params = params.clone();
        let mut out = ObjectList::default();
        loop {
            let page = self.list(&params).await?;
            out.items.extend(page.items);
            out.metadata.resource_version = page.metadata.resource_version;
            if page.metadata.next_page_token.is_empty() {
                return Ok(out);
            }
            // Later pages are read at the first page's revision, which
            // the token carries; the server refuses a version beside it.
            params.resource_version.clear();
            params.page_token = page.metadata.next_page_token;
        }
    }

    /// Creates an object (in this API's namespace if it names none).
    pub async fn create(&self, obj: &K) -> Result<K> {
        let mut obj = obj.clone();
        if K::INFO.namespaced && obj.meta().namespace.is_empty() {
            obj.meta_mut().namespace = self.namespace.clone();
        }
        Ok(K::create_in(self.transport.clone(), obj).await?)
    }

    /// Replaces an object's spec and metadata (compare-and-swap on its resource version).
    pub async fn update(&self, obj: &K) -> Result<K> {
        Ok(K::update_in(self.transport.clone(), self.scoped(obj)).await?)
    }

    /// Replaces an object's status.
    pub async fn update_status(&self, obj: &K) -> Result<K> {
        Ok(K::update_status_in(self.transport.clone(), self.scoped(obj)).await?)
    }

    /// Deletes an object.
    pub async fn delete(&self, name: &str, params: &DeleteParams) -> Result<K> {
        let mut params = params.clone();
        params.namespace = self.namespace.clone();
        params.name = name.to_owned();
        Ok(K::delete_in(self.transport.clone(), params).await?)
    }

    /// Streams changes (the namespace of this API unless `params` names one).
    pub async fn watch(
        &self,
        params: &WatchParams,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<WatchEvent<K>>> + Send>>> {
        let mut params = params.clone();
        if params.namespace.is_empty() {
            params.namespace = self.namespace.clone();
        }
        let stream = K::watch_in(self.transport.clone(), params).await?;
        Ok(Box::pin(stream.map(|r| r.map_err(Error::from))))
    }

    fn scoped(&self, obj: &K) -> K {
        let mut obj = obj.clone();
        if K::INFO.namespaced && obj.meta().namespace.is_empty() {
            obj.meta_mut().namespace = self.namespace.clone();
        }
        obj
    }
}

impl Api<Pod> {
    /// Binds a pod to a node (the scheduler's write).
    pub async fn bind(&self, name: &str, node_name: &str) -> Result<Pod> {
        let r = PodServiceClient::new(self.transport.clone())
            .bind_pod(BindPodRequest {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                node_name: node_name.to_owned(),
                uid: String::new(),
            })
            .await?;
        r.into_inner()
            .pod
            .ok_or_else(|| Error::from(super::transport::missing_in_response("pod")))
    }

    /// Binds many pods at once, each to its node (`BindPods`, at most 1,000
    /// a call); a binding with no namespace is in this API's. One result
    /// per binding, in order: the bound pod's resource_version, or why that
    /// binding failed (as [`Self::bind`] would have).
    pub async fn bind_all(&self, bindings: Vec<BindPodRequest>) -> Result<Vec<Result<String>>> {
        let bindings = bindings
            .into_iter()
            .map(|mut b| {
                if b.namespace.is_empty() {
                    b.namespace = self.namespace.clone();
                }
                b
            })
            .collect();
        let r = PodServiceClient::new(self.transport.clone())
            .bind_pods(BindPodsRequest { bindings })
            .await?;
        Ok(r.into_inner()
            .results
            .into_iter()
            .map(|r| match r.error {
                None => Ok(r.resource_version),
                Some(e) => Err(Error::from(status_of(e))),
            })
            .collect())
    }
}

/// A `google.rpc.Status` carried in a response as the `tonic::Status` a
/// call failing with it would have returned (details kept).
fn status_of(s: tonic_types::Status) -> tonic::Status {
    let code = tonic::Code::from(s.code);
    let message = s.message.clone();
    let details = prost::Message::encode_to_vec(&s);
    tonic::Status::with_details(code, message, details.into())
}

/// A token issued for a service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountToken {
    /// The bearer token.
    pub token: String,
    /// When it stops working.
    pub expires: std::time::SystemTime,
}

impl Api<ServiceAccount> {
    /// Asks for a token of service account `name` (Kubernetes' TokenRequest):
    /// for `audiences` (the API server's when empty), living about
    /// `expiration_seconds`, and bound to pod `(name, uid)` if given.
    pub async fn create_token(
        &self,
        name: &str,
        audiences: &[String],
        expiration_seconds: Option<i64>,
        pod: Option<(&str, &str)>,
    ) -> Result<ServiceAccountToken> {
        let r = ServiceAccountServiceClient::new(self.transport.clone())
            .create_service_account_token(CreateServiceAccountTokenRequest {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                audiences: audiences.to_vec(),
                expiration_seconds,
                bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "v1".into(),
                    name: name.to_owned(),
                    uid: uid.to_owned(),
                }),
            })
            .await?
            .into_inner();
        let expires = r
            .expiration_timestamp
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .ok_or_else(|| {
                Error::from(super::transport::missing_in_response(
                    "expiration_timestamp",
                ))
            })?;
        Ok(ServiceAccountToken {
            token: r.token,
            expires,
        })
    }
}

/// What part of a container's log to read.
#[derive(Debug, Clone, Default)]
pub struct LogParams {
    /// Container name (may be empty when the pod has one container).
    pub container: String,
    /// Keep streaming new output.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// The previous instance of the container.
    pub previous: bool,
}

/// A stream of log bytes.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes>> + Send>>;

/// A stream of exec output; the last message carries the exit code.
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecPodResponse>> + Send>>;

impl Api<Pod> {
    /// Streams a container's log, through the API server from the pod's kubelet.
    pub async fn logs(&self, name: &str, params: &LogParams) -> Result<LogStream> {
        let r = PodServiceClient::new(self.transport.clone())
            .get_pod_logs(GetPodLogsRequest {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                container: params.container.clone(),
                follow: params.follow,
                tail_lines: params.tail_lines,
                previous: params.previous,
            })
            .await?;
        Ok(Box::pin(r.into_inner().map(|c| {
            c.map(|c| bytes::Bytes::from(c.data)).map_err(Error::from)
        })))
    }

    /// Runs `command` in a container of the pod and streams its output.
    pub async fn exec(
        &self,
        name: &str,
        container: &str,
        command: &[String],
    ) -> Result<ExecStream> {
        let r = PodServiceClient::new(self.transport.clone())
            .exec_pod(ExecPodRequest {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                container: container.to_owned(),
                command: command.to_vec(),
            })
            .await?;
        Ok(Box::pin(r.into_inner().map(|c| c.map_err(Error::from))))
    }
}

impl Api<ReplicaSet> {
    /// Sets a replica set's replica count.
    pub async fn scale(&self, name: &str, replicas: i32) -> Result<ReplicaSet> {
        let r = ReplicaSetServiceClient::new(self.transport.clone())
            .scale_replica_set(ScaleReplicaSetRequest {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                replicas,
            })
            .await?;
        r.into_inner()
            .replica_set
            .ok_or_else(|| Error::from(super::transport::missing_in_response("replica_set")))
    }
}

impl Api<Deployment> {
    /// Sets a deployment's replica count.
    pub async fn scale(&self, name: &str, replicas: i32) -> Result<Deployment> {
        let r = DeploymentServiceClient::new(self.transport.clone())
            .scale_deployment(ScaleDeploymentRequest {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                replicas,
            })
            .await?;
        r.into_inner()
            .deployment
            .ok_or_else(|| Error::from(super::transport::missing_in_response("deployment")))
    }
}
