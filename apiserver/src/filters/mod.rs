//! What every request passes before a handler sees it (Kubernetes' filter
//! chain): authentication, which attaches the caller; limits on requests
//! in flight — separate for mutating and read-only requests, with a share
//! per user so that one noisy client cannot starve the others, and a cap on
//! each user's watches; and the audit log, one JSON line per request.
//! Authorization happens in the handlers, which know the namespace and
//! name; they record both in the request's [`AuditTarget`].

pub mod request_size;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::authn::{Authenticator, UserInfo};

/// How much of the request the audit log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLevel {
    /// Nothing.
    None,
    /// Who, what, where, the result and the latency.
    Metadata,
    /// Also the request's selectors and options (never object bodies, so
    /// never a token or a Secret's data).
    Request,
}

impl std::str::FromStr for AuditLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "metadata" => Ok(Self::Metadata),
            "request" => Ok(Self::Request),
            _ => Err(format!("{s:?}: use none, metadata or request")),
        }
    }
}

/// The audit log: one JSON object per line.
pub struct AuditLog {
    level: AuditLevel,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl AuditLog {
    /// Appends to `path` at `level`.
    pub fn open(path: &Path, level: AuditLevel) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            level,
            out: Mutex::new(std::io::BufWriter::new(file)),
        })
    }

    fn write(&self, line: &serde_json::Value) {
        let mut out = self.out.lock().expect("audit log lock");
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Where a request acts, filled in by its handler for the audit log.
#[derive(Debug, Default)]
pub struct AuditTarget {
    inner: Mutex<(String, String, Option<serde_json::Value>)>,
}

impl AuditTarget {
    /// Records the namespace and name the request acts on.
    pub fn set(&self, namespace: &str, name: &str) {
        let mut t = self.inner.lock().expect("audit target lock");
        t.0 = namespace.to_owned();
        t.1 = name.to_owned();
    }

    /// Records the request's options (selectors, versions) for the Request level.
    pub fn set_request(&self, request: serde_json::Value) {
        self.inner.lock().expect("audit target lock").2 = Some(request);
    }
}

/// Limits on requests in flight.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Mutating requests in flight at once.
    pub max_mutating: usize,
    /// Read-only requests in flight at once (watches not counted).
    pub max_read_only: usize,
    /// Share of each limit one user may hold.
    pub per_user_fraction: f64,
    /// Watches (and log/exec streams) one user may hold open.
    pub max_watches_per_user: usize,
    /// How long a request may wait for its turn before RESOURCE_EXHAUSTED.
    pub queue_wait: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_mutating: 200,
            max_read_only: 400,
            per_user_fraction: 0.25,
            max_watches_per_user: 1000,
            queue_wait: Duration::from_secs(1),
        }
    }
}

struct Class {
    global: Arc<Semaphore>,
    per_user: usize,
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Class {
    fn new(max: usize, fraction: f64) -> Self {
        Self {
            global: Arc::new(Semaphore::new(max.max(1))),
            per_user: ((max as f64 * fraction).ceil() as usize).max(1),
            users: Mutex::new(HashMap::new()),
        }
    }

    fn user(&self, name: &str) -> Arc<Semaphore> {
        let mut users = self.users.lock().expect("limits lock");
        if users.len() > 10_000 {
            let per_user = self.per_user;
            users.retain(|_, s| s.available_permits() < per_user);
        }
        users
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_user)))
            .clone()
    }

    /// Waits (up to `wait`) for a turn: first within the user's share, then overall.
    async fn admit(
        &self,
        user: &str,
        wait: Duration,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Status> {
        let deadline = tokio::time::Instant::now() + wait;
        let mine = tokio::time::timeout_at(deadline, self.user(user).acquire_owned())
            .await
            .map_err(|_| busy(&format!("too many requests from {user:?} in flight")))?
            .map_err(|_| busy("shutting down"))?;
        let all = tokio::time::timeout_at(deadline, self.global.clone().acquire_owned())
            .await
            .map_err(|_| busy("the server has too many requests in flight"))?
            .map_err(|_| busy("shutting down"))?;
        Ok((mine, all))
    }
}

fn busy(what: &str) -> Status {
    let details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
    use tonic_types::StatusExt;
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!("{what}; retry in a second"),
        details,
    )
}

/// Request limits.
pub struct Limits {
    config: LimitsConfig,
    mutating: Class,
    read_only: Class,
    watches: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            mutating: Class::new(config.max_mutating, config.per_user_fraction),
            read_only: Class::new(config.max_read_only, config.per_user_fraction),
            watches: Mutex::new(HashMap::new()),
            config,
        }
    }

    fn watch_slot(&self, user: &str) -> Result<WatchSlot, Status> {
        let counter = self
            .watches
            .lock()
            .expect("watches lock")
            .entry(user.to_owned())
            .or_default()
            .clone();
        let held = counter.fetch_add(1, Ordering::SeqCst);
        if held >= self.config.max_watches_per_user {
            counter.fetch_sub(1, Ordering::SeqCst);
            return Err(busy(&format!(
                "{user:?} has {held} watches open, the most one user may hold"
            )));
        }
        Ok(WatchSlot(counter))
    }
}

/// One open watch of a user; released when the response stream ends.
struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

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
fn split_path(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

fn classify(path: &str) -> RequestKind {
    let (service, method) = split_path(path);
    if service.starts_with("grpc.health.") {
        return RequestKind::Public;
    }
    if service.starts_with("grpc.reflection.") {
        return RequestKind::Discovery;
    }
    if method.starts_with("Watch") || method == "GetPodLogs" || method == "ExecPod" {
        RequestKind::LongRunning
    } else if method.starts_with("Get") || method.starts_with("List") {
        RequestKind::ReadOnly
    } else {
        RequestKind::Mutating
    }
}

/// The audit verb and kind of a gRPC path.
fn verb_and_kind(path: &str) -> (String, String) {
    let (service, method) = split_path(path);
    let kind = service
        .rsplit('.')
        .next()
        .unwrap_or("")
        .trim_end_matches("Service")
        .to_owned();
    let verb = [
        "Create", "Get", "List", "Watch", "Update", "Delete", "Bind", "Scale", "Exec",
    ]
    .iter()
    .find(|v| method.starts_with(*v))
    .map(|v| v.to_ascii_lowercase())
    .unwrap_or_else(|| method.to_owned());
    (verb, kind)
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

/// The response with `status`, in the shape of a gRPC trailers-only error.
fn refuse(status: Status) -> http::Response<tonic::body::Body> {
    status.into_http()
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
            let kind = classify(&path);
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
                        Err(crate::authn::AuthError::Unavailable(m)) => {
                            return Ok(refuse(Status::unavailable(m)));
                        }
                        Err(e) => {
                            audit(&config, &path, None, &AuditTarget::default(), 16, started);
                            return Ok(refuse(Status::unauthenticated(e.to_string())));
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
                        limits.watch_slot(&user.name).map(|w| watch = Some(w))
                    }
                    RequestKind::Public => Ok(()),
                };
                if let Err(status) = admitted {
                    audit(
                        &config,
                        &path,
                        Some(&user),
                        &target,
                        status.code() as i32,
                        started,
                    );
                    return Ok(refuse(status));
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
            audit(&config, &path, Some(&user), &target, code, started);
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

/// Request counters and latencies (Kubernetes' names).
struct RequestMetrics {
    total: Arc<skiff::metrics::CounterVec>,
    duration: Arc<skiff::metrics::HistogramVec>,
}

fn request_metrics() -> &'static RequestMetrics {
    static METRICS: std::sync::OnceLock<RequestMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let r = skiff::metrics::global();
        RequestMetrics {
            total: r.counter(
                "apiserver_request_total",
                "Requests by verb, resource and gRPC status.",
                &["verb", "resource", "code"],
            ),
            duration: r.histogram(
                "apiserver_request_duration_seconds",
                "Time to answer (to the first response for watches), by verb and resource.",
                &["verb", "resource"],
                skiff::metrics::LATENCY_BUCKETS,
            ),
        }
    })
}

/// Counts a finished request and writes its audit line.
fn audit(
    config: &FilterConfig,
    path: &str,
    user: Option<&UserInfo>,
    target: &AuditTarget,
    code: i32,
    started: Instant,
) {
    {
        let (verb, kind) = verb_and_kind(path);
        let resource = skiff::KindInfo::find(&kind)
            .map(|k| k.plural)
            .unwrap_or(kind.as_str());
        let m = request_metrics();
        let status = format!("{:?}", tonic::Code::from_i32(code));
        m.total.with(&[&verb, resource, &status]).inc();
        m.duration
            .with(&[&verb, resource])
            .observe_duration(started.elapsed());
    }
    let Some(log) = &config.audit else { return };
    if log.level == AuditLevel::None {
        return;
    }
    let (verb, kind) = verb_and_kind(path);
    let (namespace, name, request) = target.inner.lock().expect("audit target lock").clone();
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut line = serde_json::json!({
        "ts": ts,
        "user": user.map(|u| u.name.as_str()).unwrap_or(""),
        "groups": user.map(|u| u.groups.clone()).unwrap_or_default(),
        "verb": verb,
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "method": path,
        "code": code,
        "status": format!("{:?}", tonic::Code::from_i32(code)),
        "latency_ms": (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
    });
    if log.level == AuditLevel::Request
        && let Some(r) = request
    {
        line["request"] = r;
    }
    log.write(&line);
}

/// A response body holding a watch slot until it ends.
struct Guarded {
    inner: tonic::body::Body,
    _slot: WatchSlot,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The caller of a request, as authentication attached it.
pub fn caller(extensions: &http::Extensions) -> Arc<UserInfo> {
    extensions
        .get::<Arc<UserInfo>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(UserInfo::unrestricted()))
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
            verb_and_kind("/skiff.apps.v1.DeploymentService/ScaleDeployment"),
            ("scale".to_owned(), "Deployment".to_owned())
        );
    }

    #[tokio::test]
    async fn a_user_over_its_share_waits_and_others_pass() {
        let limits = Limits::new(LimitsConfig {
            max_mutating: 4,
            per_user_fraction: 0.5,
            queue_wait: Duration::from_millis(50),
            ..Default::default()
        });
        let a1 = limits
            .mutating
            .admit("noisy", Duration::from_millis(50))
            .await
            .unwrap();
        let a2 = limits
            .mutating
            .admit("noisy", Duration::from_millis(50))
            .await
            .unwrap();
        let refused = limits
            .mutating
            .admit("noisy", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        // The quiet user still has the rest.
        let _b = limits
            .mutating
            .admit("quiet", Duration::from_millis(50))
            .await
            .unwrap();
        drop((a1, a2));
        let _again = limits
            .mutating
            .admit("noisy", Duration::from_millis(50))
            .await
            .unwrap();
    }

    #[test]
    fn watches_per_user_are_capped_and_released() {
        let limits = Limits::new(LimitsConfig {
            max_watches_per_user: 2,
            ..Default::default()
        });
        let w1 = limits.watch_slot("u").unwrap();
        let _w2 = limits.watch_slot("u").unwrap();
        assert!(limits.watch_slot("u").is_err());
        assert!(limits.watch_slot("other").is_ok());
        drop(w1);
        assert!(limits.watch_slot("u").is_ok());
    }
}
