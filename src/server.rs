//! The server-side contract: one generic [`ResourceService`] serves every
//! kind; the generated glue adapts each kind's gRPC service trait to it.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tonic::{Request, Status};

use crate::params::{DeleteParams, GetParams, ListParams, WatchParams};
use crate::resource::Resource;
use crate::wire::{ListResponse, OutgoingEvent, WatchEvent};

/// Stream of watch events a server returns.
pub type WatchStream<K> = Pin<Box<dyn Stream<Item = Result<OutgoingEvent<K>, Status>> + Send>>;

/// The same events as tonic's generated service encodes them.
pub type TonicWatchStream<K> = Pin<Box<dyn Stream<Item = Result<WatchEvent<K>, Status>> + Send>>;

/// `stream` as tonic's generated service takes it.
pub fn tonic_watch_stream<K: Send + 'static>(stream: WatchStream<K>) -> TonicWatchStream<K> {
    use futures::StreamExt;
    Box::pin(stream.map(|r| r.map(OutgoingEvent::into_event)))
}

/// The operations every kind's service offers, written once for all kinds.
#[tonic::async_trait]
pub trait ResourceService<K: Resource>: Send + Sync + 'static {
    /// Creates an object.
    async fn create(&self, request: Request<K>) -> Result<K, Status>;
    /// Reads an object.
    async fn get(&self, request: Request<GetParams>) -> Result<K, Status>;
    /// Lists objects.
    async fn list(&self, request: Request<ListParams>) -> Result<ListResponse<K>, Status>;
    /// Replaces an object's spec and metadata.
    async fn update(&self, request: Request<K>) -> Result<K, Status>;
    /// Replaces an object's status.
    async fn update_status(&self, request: Request<K>) -> Result<K, Status>;
    /// Deletes an object.
    async fn delete(&self, request: Request<DeleteParams>) -> Result<K, Status>;
    /// Streams changes.
    async fn watch(&self, request: Request<WatchParams>) -> Result<WatchStream<K>, Status>;
}

/// Adapter implementing each generated `<Kind>Service` trait over a [`ResourceService`].
pub struct KindServer<S>(pub Arc<S>);

/// Message size limits applied to every kind's service.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// Largest request the server decodes.
    pub max_decoding: usize,
    /// Largest response the server encodes.
    pub max_encoding: usize,
}

/// Registers a kind's gRPC service, served by `S`, on a router.
pub trait ServeWith<S>: Resource {
    /// Adds the kind's service to `routes`.
    fn add_service(
        routes: &mut tonic::service::RoutesBuilder,
        service: Arc<S>,
        limits: MessageLimits,
    );
}

/// Maps a request's message, keeping its metadata and extensions.
pub fn map_request<T, U>(
    request: Request<T>,
    f: impl FnOnce(T) -> Result<U, Status>,
) -> Result<Request<U>, Status> {
    let (metadata, extensions, message) = request.into_parts();
    Ok(Request::from_parts(metadata, extensions, f(message)?))
}

/// The error for a request that lacks its object.
pub fn missing_field(field: &str) -> Status {
    let details = tonic_types::ErrorDetails::with_bad_request_violation(
        field,
        format!("{field} is required"),
    );
    use tonic_types::StatusExt;
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field}: required field is missing"),
        details,
    )
}

/// What serves a kind's watch call: the request's HTTP parts and its
/// decoded message in, the kind's event stream out.
pub type WatchCall<K> = Arc<
    dyn Fn(
            http::request::Parts,
            Bytes,
        ) -> futures::future::BoxFuture<'static, Result<WatchStream<K>, Status>>
        + Send
        + Sync,
>;

/// A kind's generated gRPC service with its `Watch<Kind>s` method served
/// directly: events whose gRPC frame was encoded once for every watcher
/// ([`OutgoingEvent::Framed`]) are written to the HTTP/2 stream as they
/// are, with no per-stream encode buffer or copy. On the wire it is the same
/// server-streaming call; every other method goes to the generated service.
pub struct FramedWatch<S, K> {
    inner: S,
    path: Arc<str>,
    call: WatchCall<K>,
    max_decoding: usize,
}

impl<S: Clone, K> Clone for FramedWatch<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            path: self.path.clone(),
            call: self.call.clone(),
            max_decoding: self.max_decoding,
        }
    }
}

impl<S: tonic::server::NamedService, K> FramedWatch<S, K> {
    /// Serves `method` (e.g. `WatchPods`) of `inner` through `call`.
    pub fn new(inner: S, method: &str, call: WatchCall<K>, max_decoding: usize) -> Self {
        Self {
            inner,
            path: format!("/{}/{method}", S::NAME).into(),
            call,
            max_decoding,
        }
    }
}

impl<S: tonic::server::NamedService, K> tonic::server::NamedService for FramedWatch<S, K> {
    const NAME: &'static str = S::NAME;
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<S, K> tower::Service<http::Request<tonic::body::Body>> for FramedWatch<S, K>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = HttpResponse,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    K: prost::Message + Default + Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != &*self.path {
            return Box::pin(self.inner.call(req));
        }
        let call = self.call.clone();
        let max = self.max_decoding;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let message = match read_unary_message(body, max).await {
                Ok(m) => m,
                Err(status) => return Ok(status.into_http()),
            };
            Ok(match call(parts, message).await {
                Ok(stream) => streaming_response(stream),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The response of a server-streaming call: each of `stream`'s events
/// (written as framed, when it was framed once for every receiver), then
/// the status it ends with.
pub fn streaming_response<K: prost::Message + Default + Send + 'static>(
    stream: WatchStream<K>,
) -> HttpResponse {
    frames_response(Box::pin(Batches { stream, end: None }))
}

/// The response of a unary call that answers `message` (encoded).
pub fn unary_response(message: &[u8]) -> HttpResponse {
    let frame = crate::wire::grpc_frame(message);
    frames_response(Box::pin(futures::stream::once(async move { Ok(frame) })))
}

/// The one message of a unary request body (gRPC framing, uncompressed),
/// at most `max` bytes.
pub async fn read_unary_message(body: tonic::body::Body, max: usize) -> Result<Bytes, Status> {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(body, max.saturating_add(crate::wire::GRPC_PREFIX))
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!("request larger than the limit of {max} bytes"))
            } else {
                Status::cancelled(format!("reading the request: {e}"))
            }
        })?
        .to_bytes();
    if bytes.len() < crate::wire::GRPC_PREFIX {
        return Err(Status::invalid_argument("the request holds no message"));
    }
    if bytes[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not supported by this method",
        ));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if bytes.len() != crate::wire::GRPC_PREFIX + len {
        return Err(Status::invalid_argument(
            "the request holds other than one message",
        ));
    }
    Ok(bytes.slice(crate::wire::GRPC_PREFIX..))
}

/// Events that came ready together are written as one HTTP/2 data frame, up
/// to this many bytes (as tonic's encoder yields).
pub const BATCH_BYTES: usize = 32 * 1024;

/// A watch's events as batches of frames: what came ready together,
/// up to [`BATCH_BYTES`], then the status the watch ended with.
struct Batches<K> {
    stream: WatchStream<K>,
    /// The error or end seen while batching, said after the batch.
    end: Option<Option<Status>>,
}

/// The trailers a gRPC response ends with: `status`'s code, message and details.
fn trailers(status: &Status) -> http_body::Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    http_body::Frame::trailers(map)
}

/// Already framed gRPC messages (each item one or more whole frames, as
/// written by the server), ending with the status of the call.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// The response of a streaming call whose messages `frames` writes
/// itself: each item goes out as one HTTP/2 data frame, then the status.
pub fn frames_response(frames: FrameStream) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(FramesBody {
        frames,
        done: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The body of [`frames_response`].
struct FramesBody {
    frames: FrameStream,
    done: bool,
}

impl http_body::Body for FramesBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        use futures::StreamExt;
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(
            match futures::ready!(self.frames.poll_next_unpin(cx)) {
                Some(Ok(data)) => http_body::Frame::data(data),
                Some(Err(status)) => {
                    self.done = true;
                    trailers(&status)
                }
                None => {
                    self.done = true;
                    trailers(&Status::ok(""))
                }
            },
        )))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl<K: prost::Message + Default + Send + 'static> Stream for Batches<K> {
    type Item = Result<Bytes, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use futures::StreamExt;
        use std::task::Poll;
        if let Some(end) = self.end.take() {
            // Ended for good: the body asks no more after an error or the end.
            return Poll::Ready(end.map(Err));
        }
        let first = match futures::ready!(self.stream.poll_next_unpin(cx)) {
            Some(Ok(event)) => event.into_grpc_frame(),
            Some(Err(status)) => return Poll::Ready(Some(Err(status))),
            None => return Poll::Ready(None),
        };
        // Alone, the shared frame goes as it is; with more ready behind it,
        // they are copied into one frame (fewer, larger HTTP/2 writes).
        let mut batch: Option<bytes::BytesMut> = None;
        loop {
            let len = batch.as_ref().map_or(first.len(), |b| b.len());
            if len >= BATCH_BYTES {
                break;
            }
            match self.stream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    let next = event.into_grpc_frame();
                    // Sized for a few events, then once for a whole batch
                    // (not grown by doubling: each growth copies): a full
                    // batch's capacity for every stream that found two
                    // events ready was megabytes at a thousand streams.
                    let b = batch.get_or_insert_with(|| {
                        let mut b = bytes::BytesMut::with_capacity(4 * (first.len() + next.len()));
                        b.extend_from_slice(&first);
                        b
                    });
                    if b.capacity() - b.len() < next.len() {
                        b.reserve(BATCH_BYTES.saturating_sub(b.len()) + next.len());
                    }
                    b.extend_from_slice(&next);
                }
                Poll::Ready(Some(Err(status))) => {
                    self.end = Some(Some(status));
                    break;
                }
                Poll::Ready(None) => {
                    self.end = Some(None);
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(match batch {
            Some(b) => b.freeze(),
            None => first,
        })))
    }
}
