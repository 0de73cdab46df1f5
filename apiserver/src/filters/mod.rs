//! What every request passes before a handler sees it (Kubernetes' filter
//! chain), in order: authentication ([`crate::authn`]), which attaches the
//! caller; the limits on requests in flight ([`inflight`]); and, when the
//! response is known, the audit line and request metrics ([`audit`]).
//! [`request_size`] refuses oversized messages before they are decoded;
//! [`panic`] turns a handler's panic into INTERNAL for that request alone.
//! The filters own who gets in and what is recorded; they must not read or
//! write objects. Authorization happens in the registry, which knows the
//! namespace and name; it records both in the request's [`AuditTarget`].

pub mod audit;
pub mod inflight;
pub mod panic;
pub mod request_size;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

pub use audit::{AuditLevel, AuditLog, AuditTarget};
pub use inflight::{Limits, LimitsConfig, WatchSlot};

use crate::authn::{Authenticator, UserInfo};
use crate::error::ApiError;
use inflight::Guarded;

/// The kinds of request, by gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    /// Health checks: no credentials needed, no limits.
    Public,
    /// Reflection: any authenticated caller.
    Discovery,
    Mutating,
    ReadOnly,
    LongRunning,
}

/// (service, method) of a gRPC path.
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// What kind of request `path` is; `streaming` holds the paths of the
/// methods kinds registered as streaming (beyond watches).
fn classify(path: &str, streaming: &HashSet<String>) -> RequestKind {
    let (service, method) = split_path(path);
    if service.starts_with("grpc.health.") {
        return RequestKind::Public;
    }
    if service.starts_with("grpc.reflection.") {
        return RequestKind::Discovery;
    }
    if method.starts_with("Watch") || streaming.contains(path) {
        RequestKind::LongRunning
    } else if method.starts_with("Get") || method.starts_with("List") {
        RequestKind::ReadOnly
    } else {
        RequestKind::Mutating
    }
}

/// What the filters need.
#[derive(Clone, Default)]
pub struct FilterConfig {
    /// Resolves credentials; `None` lets every request in as an administrator.
    pub authenticator: Option<Arc<Authenticator>>,
    /// Request limits; `None` for none.
    pub limits: Option<Arc<Limits>>,
    /// The audit log; `None` for none.
    pub audit: Option<Arc<AuditLog>>,
    /// Paths of the streaming methods kinds registered
    /// ([`Strategy::STREAMING_METHODS`](crate::registry::Strategy::STREAMING_METHODS)).
    pub streaming: Arc<HashSet<String>>,
}

/// The filter chain as a tower layer.
#[derive(Clone)]
pub struct FiltersLayer {
    config: FilterConfig,
}

impl FiltersLayer {
    /// A layer applying `config`.
    pub fn new(config: FilterConfig) -> Self {
        Self { config }
    }
}

impl<S> Layer<S> for FiltersLayer {
    type Service = Filters<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Filters {
            inner,
            config: self.config.clone(),
        }
    }
}

/// Service of [`FiltersLayer`].
#[derive(Clone)]
pub struct Filters<S> {
    inner: S,
    config: FilterConfig,
}

fn bearer(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The response with `error`, in the shape of a gRPC trailers-only error.
fn refuse(error: ApiError) -> http::Response<tonic::body::Body> {
    Status::from(error).into_http()
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Filters<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The ready service serves this request; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let started = Instant::now();
            let path = request.uri().path().to_owned();
            let kind = classify(&path, &config.streaming);
            if kind == RequestKind::Public {
                return inner.call(request).await;
            }
            // Authentication.
            let user = match &config.authenticator {
                None => UserInfo::unrestricted(),
                Some(authn) => {
                    let token = bearer(request.headers());
                    let cert = request
                        .extensions()
                        .get::<TlsConnectInfo<TcpConnectInfo>>()
                        .and_then(|i| i.peer_certs())
                        .and_then(|c| c.first().map(|c| c.to_vec()));
                    match authn.authenticate(token.as_deref(), cert.as_deref()).await {
                        Ok(u) => u,
                        Err(e) => {
                            let e = ApiError::from(e);
                            if matches!(e, ApiError::Unauthenticated(_)) {
                                let code = tonic::Code::Unauthenticated as i32;
                                audit::record(
                                    config.audit.as_deref(),
                                    &path,
                                    None,
                                    &AuditTarget::default(),
                                    code,
                                    started,
                                );
                            }
                            return Ok(refuse(e));
                        }
                    }
                }
            };
            let target = Arc::new(AuditTarget::default());
            request.extensions_mut().insert(Arc::new(user.clone()));
            request.extensions_mut().insert(target.clone());
            // Limits.
            let mut permits = None;
            let mut watch = None;
            if let Some(limits) = &config.limits {
                let admitted = match kind {
                    RequestKind::Mutating => limits
                        .mutating
                        .admit(&user.name, limits.config.queue_wait)
                        .await
                        .map(|p| permits = Some(p)),
                    RequestKind::ReadOnly | RequestKind::Discovery => limits
                        .read_only
                        .admit(&user.name, limits.config.queue_wait)
                        .await
                        .map(|p| permits = Some(p)),
                    RequestKind::LongRunning => {
                        // A multiplexed watch takes more slots, one per watch.
                        request.extensions_mut().insert(limits.clone());
                        limits.watch_slot(&user.name).map(|w| watch = Some(w))
                    }
                    RequestKind::Public => Ok(()),
                };
                if let Err(e) = admitted {
                    let code = tonic::Code::ResourceExhausted as i32;
                    audit::record(
                        config.audit.as_deref(),
                        &path,
                        Some(&user),
                        &target,
                        code,
                        started,
                    );
                    return Ok(refuse(e));
                }
            }
            let response = inner.call(request).await?;
            drop(permits);
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            audit::record(
                config.audit.as_deref(),
                &path,
                Some(&user),
                &target,
                code,
                started,
            );
            Ok(match watch {
                // The watch counts until its stream ends.
                Some(slot) => response.map(|body| {
                    tonic::body::Body::new(Guarded {
                        inner: body,
                        _slot: slot,
                    })
                }),
                None => response,
            })
        })
    }
}

/// The caller of a request, as authentication attached it.
pub fn caller(extensions: &http::Extensions) -> Arc<UserInfo> {
    extensions
        .get::<Arc<UserInfo>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(UserInfo::unrestricted()))
}

/// One more watch for the caller of a long-running request — a watch added
/// on a multiplexed stream counts against the per-user limit as a watch
/// call of its own does. `None` when limits are off.
pub fn another_watch(extensions: &http::Extensions) -> Result<Option<WatchSlot>, ApiError> {
    let Some(limits) = extensions.get::<Arc<Limits>>() else {
        return Ok(None);
    };
    limits.watch_slot(&caller(extensions).name).map(Some)
}

/// The request's audit record, to fill in.
pub fn audit_target(extensions: &http::Extensions) -> Option<Arc<AuditTarget>> {
    extensions.get::<Arc<AuditTarget>>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_classified() {
        let streaming: HashSet<String> =
            crate::registry::streaming_paths::<skiff::api::core::v1::Pod>().collect();
        let classify = |path| super::classify(path, &streaming);
        assert_eq!(
            classify("/skiff.core.v1.PodService/WatchPods"),
            RequestKind::LongRunning
        );
        assert_eq!(
            classify("/skiff.core.v1.PodService/ListPods"),
            RequestKind::ReadOnly
        );
        assert_eq!(
            classify("/skiff.core.v1.PodService/BindPod"),
            RequestKind::Mutating
        );
        assert_eq!(
            classify("/skiff.core.v1.PodService/GetPodLogs"),
            RequestKind::LongRunning
        );
        assert_eq!(
            classify("/grpc.health.v1.Health/Check"),
            RequestKind::Public
        );
        assert_eq!(
            classify("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            RequestKind::Discovery
        );
        assert_eq!(
            audit::verb_and_kind("/skiff.apps.v1.DeploymentService/ScaleDeployment"),
            ("scale".to_owned(), "Deployment".to_owned())
        );
    }
}
