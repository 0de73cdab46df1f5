//! [`Transport`]: the channel every call goes through — connections to one
//! or more API servers, with credentials.
//!
//! Owns: choosing a server per call (round-robin over the ones that answer),
//! leaving out a server that fails (refused connection, broken stream,
//! UNAVAILABLE) until its gRPC health check says SERVING again, and sending a
//! call again on another server when that cannot repeat a write (reads,
//! watches, and any call that never reached a server). Must not touch: what
//! a call means — a write whose fate is unknown is the caller's to retry.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower::{Service, ServiceExt};

use super::transport::Credentials;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connection = InterceptedService<Channel, Credentials>;

/// How long a health probe of a left-out server may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait before probing a left-out server; doubles up to [`PROBE_MAX`].
const PROBE_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between probes of a left-out server.
const PROBE_MAX: Duration = Duration::from_secs(3);

/// Connections to the API servers of one cluster; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    pool: Arc<Pool>,
}

struct Pool {
    servers: Vec<Server>,
    next: AtomicUsize,
}

struct Server {
    address: String,
    connection: Connection,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Left out of the rotation until a probe succeeds.
    down: bool,
    /// A probe task is running.
    probing: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("servers", &self.health())
            .finish()
    }
}

impl Transport {
    /// A transport over one open channel.
    pub fn from_channel(channel: Channel, credentials: Credentials) -> Self {
        Self::from_connections(vec![(
            String::new(),
            InterceptedService::new(channel, credentials),
            true,
        )])
    }

    /// A transport over `(address, connection, answered)`; servers that did
    /// not answer start left out, with a probe running.
    pub(crate) fn from_connections(connections: Vec<(String, Connection, bool)>) -> Self {
        let servers = connections
            .into_iter()
            .map(|(address, connection, up)| Server {
                address,
                connection,
                state: Mutex::new(State {
                    down: !up,
                    probing: false,
                }),
            })
            .collect();
        let pool = Arc::new(Pool {
            servers,
            next: AtomicUsize::new(0),
        });
        for i in 0..pool.servers.len() {
            if pool.servers[i].state().down {
                Pool::start_probe(&pool, i);
            }
        }
        Self { pool }
    }

    /// Every server's address and whether calls go to it now.
    pub fn health(&self) -> Vec<(String, bool)> {
        self.pool
            .servers
            .iter()
            .map(|s| (s.address.clone(), !s.state().down))
            .collect()
    }
}

impl Server {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send(&self, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let mut connection = self.connection.clone();
        let response = connection.ready().await?.call(req).await?;
        Ok(response.map(Body::new))
    }
}

impl Pool {
    /// The next server in rotation not in `tried`: one that answers if any
    /// does, else any (a call with every server down still tries each once).
    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n).map(|k| (start + k) % n).filter(|&i| !tried[i]);
        let mut fallback = None;
        for i in candidates {
            if !self.servers[i].state().down {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Leaves server `i` out of the rotation and probes it until it serves.
    fn suspect(self: &Arc<Self>, i: usize) {
        {
            let mut state = self.servers[i].state();
            if !state.down {
                tracing::warn!(server = %self.servers[i].address, "API server does not answer; calls go to the others until it does");
            }
            state.down = true;
        }
        Self::start_probe(self, i);
    }

    fn start_probe(pool: &Arc<Self>, i: usize) {
        {
            let mut state = pool.servers[i].state();
            if state.probing || tokio::runtime::Handle::try_current().is_err() {
                return;
            }
            state.probing = true;
        }
        tokio::spawn(probe(Arc::downgrade(pool), i));
    }

    async fn send(
        self: Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        if self.servers.len() == 1 {
            return self.servers[0].send(req).await;
        }
        if is_client_streaming(req.uri().path()) {
            return self.send_stream(req).await;
        }
        let (parts, body) = req.into_parts();
        // Every other method's request body is one message, so it can be
        // kept and sent again.
        let body = body.collect().await?.to_bytes();
        let rereadable = is_read(parts.uri.path());
        let mut tried = vec![false; self.servers.len()];
        let mut last: Option<Result<http::Response<Body>, BoxError>> = None;
        while let Some(i) = self.pick(&tried) {
            tried[i] = true;
            match self.servers[i].send(rebuild(&parts, body.clone())).await {
                Ok(response) => {
                    let refused = grpc_status(response.headers()) == Some(tonic::Code::Unavailable);
                    let response = response.map(|inner| {
                        Body::new(Watched {
                            inner,
                            pool: Arc::downgrade(&self),
                            server: i,
                        })
                    });
                    if !refused {
                        return Ok(response);
                    }
                    self.suspect(i);
                    last = Some(Ok(response));
                    if !rereadable {
                        break;
                    }
                }
                Err(e) => {
                    self.suspect(i);
                    let again = rereadable || never_sent(&*e);
                    last = Some(Err(e));
                    if !again {
                        break;
                    }
                }
            }
        }
        last.unwrap_or_else(|| Err("no API server configured".into()))
    }
}

impl Pool {
    /// A call whose request body streams (the multiplexed watch): it goes
    /// to one server and cannot be sent again; when that server fails, the
    /// caller opens a new stream, which goes elsewhere.
    async fn send_stream(
        self: Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let tried = vec![false; self.servers.len()];
        let i = self.pick(&tried).ok_or("no API server configured")?;
        match self.servers[i].send(req).await {
            Ok(response) => {
                if grpc_status(response.headers()) == Some(tonic::Code::Unavailable) {
                    self.suspect(i);
                }
                Ok(response.map(|inner| {
                    Body::new(Watched {
                        inner,
                        pool: Arc::downgrade(&self),
                        server: i,
                    })
                }))
            }
            Err(e) => {
                self.suspect(i);
                Err(e)
            }
        }
    }
}

/// Whether the method at `path` streams its requests.
fn is_client_streaming(path: &str) -> bool {
    path == "/skiff.meta.v1.WatchService/Watch"
}

/// Probes server `i` with the gRPC health check until it answers SERVING.
async fn probe(pool: Weak<Pool>, i: usize) {
    let mut wait = PROBE_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        let Some(pool) = pool.upgrade() else { return };
        let server = &pool.servers[i];
        let mut health = HealthClient::new(server.connection.clone());
        let check = health.check(HealthCheckRequest {
            service: String::new(),
        });
        let serving = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, check).await,
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
        );
        if serving {
            let mut state = server.state();
            state.down = false;
            state.probing = false;
            tracing::info!(server = %server.address, "API server answers again");
            return;
        }
        wait = (wait * 2).min(PROBE_MAX);
    }
}

/// A response body that leaves its server out when the stream breaks or
/// ends UNAVAILABLE (an open watch on a server that died or lost storage).
struct Watched {
    inner: Body,
    pool: Weak<Pool>,
    server: usize,
}

impl Watched {
    fn suspect(&self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.suspect(self.server);
        }
    }
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => self.suspect(),
            Poll::Ready(Some(Ok(frame)))
                if frame
                    .trailers_ref()
                    .is_some_and(|t| grpc_status(t) == Some(tonic::Code::Unavailable)) =>
            {
                self.suspect()
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.pool.clone().send(req))
    }
}

/// Whether the method at `path` ("/pkg.Service/Method") only reads, so that
/// sending it again elsewhere cannot repeat a change.
fn is_read(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or("");
    ["Get", "List", "Watch", "Check"]
        .iter()
        .any(|p| method.starts_with(p))
}

/// Whether `e` says the call never left this process (no connection could
/// be opened), so that sending it elsewhere cannot repeat a change.
fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            ) {
                return true;
            }
        }
        // hyper's connector; hyper's "canceled" (the connection closed
        // before the request was written); HTTP/2's REFUSED_STREAM (a server
        // going away turned the request down before looking at it).
        let text = c.to_string();
        if [
            "tcp connect error",
            "operation was canceled",
            "refused stream before processing",
        ]
        .iter()
        .any(|t| text.contains(t))
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.parse().ok()?))
}

fn rebuild(parts: &http::request::Parts, body: Bytes) -> http::Request<Body> {
    let mut req = http::Request::new(Body::new(http_body_util::Full::new(body)));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_sent_again_after_an_unknown_outcome() {
        for read in [
            "/skiff.core.v1.PodService/GetPod",
            "/skiff.core.v1.PodService/ListPods",
            "/skiff.core.v1.PodService/WatchPods",
            "/skiff.core.v1.PodService/GetPodLogs",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(is_read(read), "{read}");
        }
        for write in [
            "/skiff.core.v1.PodService/CreatePod",
            "/skiff.core.v1.PodService/UpdatePod",
            "/skiff.core.v1.PodService/DeletePod",
            "/skiff.core.v1.PodService/BindPod",
            "/skiff.core.v1.PodService/ExecPod",
            "/skiff.apps.v1.DeploymentService/ScaleDeployment",
        ] {
            assert!(!is_read(write), "{write}");
        }
    }

    #[test]
    fn a_refused_connection_counts_as_never_sent_and_a_reset_does_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&refused));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_sent(&reset));
    }
}
