//! The multiplexed watch, `skiff.meta.v1.WatchService/Watch`: many watches,
//! of any kinds, on one bidirectional stream (as etcd's watch stream and
//! xDS's ADS carry many). Each watch is its kind's own watch — authorized,
//! checked and served from the kind's watch cache by its
//! [`ResourceServer`](super::ResourceServer), and counted against the
//! caller's watch limit — and every response carries the client's watch id.
//! Responses are written as gRPC frames by the session itself: an event's
//! object is the cache's one encoding of it, copied once, into the batch
//! of frames that goes out.
//!
//! Owns the stream's bookkeeping (ids, opening, cancelling, ending); must not
//! know any kind.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::task::{ArcWake, AtomicWaker};
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use skiff::api::meta::v1::watch_request::Request as Op;
use skiff::api::meta::v1::{WatchCreateRequest, WatchRequest, WatchResponse};
use skiff::resource::KindInfo;
use skiff::server::BATCH_BYTES;
use skiff::wire::GRPC_PREFIX;
use tonic::{Status, Streaming};

use crate::error::ApiError;
use crate::filters::{WatchSlot, another_watch};

/// One watch's events, each as the gRPC frame of its `WatchEvent` (shared
/// by every watcher that receives it).
pub(crate) type KindEvents = crate::object_store::FrameStream;

/// What the multiplexed watch needs of a kind's service.
#[tonic::async_trait]
pub(crate) trait WatchableKind: Send + Sync + 'static {
    /// Authorizes and opens one watch, as the kind's own Watch call would.
    async fn open(
        &self,
        extensions: &http::Extensions,
        create: &WatchCreateRequest,
    ) -> Result<KindEvents, ApiError>;
}

/// A kind as the multiplexed watch serves it.
struct Kind {
    info: &'static KindInfo,
    type_url: &'static str,
    server: Arc<dyn WatchableKind>,
}

/// Kinds beyond those added at start-up (kinds defined at run time),
/// looked up when a watch names them.
pub(crate) trait MoreKinds: Send + Sync {
    /// The kind `name` means (message name, kind, plural or short name)
    /// and what serves its watches.
    fn find(&self, name: &str) -> Option<(&'static KindInfo, Arc<dyn WatchableKind>)>;
}

/// Every kind the multiplexed watch serves, found by message name, kind,
/// plural or short name.
#[derive(Default)]
pub struct WatchableKinds {
    kinds: Vec<Arc<Kind>>,
    more: Option<Arc<dyn MoreKinds>>,
}

impl WatchableKinds {
    /// Serves `info`'s watches through `server`.
    pub(crate) fn add(&mut self, info: &'static KindInfo, server: Arc<dyn WatchableKind>) {
        self.kinds.push(Arc::new(Kind {
            info,
            type_url: skiff::wire::type_url_of(info.message_name),
            server,
        }));
    }

    /// Looks kinds up in `more` too, after those added.
    pub(crate) fn with_more(&mut self, more: Arc<dyn MoreKinds>) {
        self.more = Some(more);
    }

    fn find(&self, name: &str) -> Option<Arc<Kind>> {
        self.kinds
            .iter()
            .find(|k| k.info.message_name == name)
            .or_else(|| self.kinds.iter().find(|k| k.info.matches(name)))
            .cloned()
            .or_else(|| {
                let (info, server) = self.more.as_ref()?.find(name)?;
                Some(Arc::new(Kind {
                    info,
                    type_url: skiff::wire::type_url_of(info.message_name),
                    server,
                }))
            })
    }

    /// The gRPC service over these kinds; its streams end when `shutdown` turns true.
    pub fn into_service(
        self,
        shutdown: tokio::sync::watch::Receiver<bool>,
        max_decoding: usize,
    ) -> MultiplexedWatch {
        MultiplexedWatch {
            kinds: Arc::new(self),
            shutdown,
            max_decoding,
        }
    }
}

/// The `skiff.meta.v1.WatchService` gRPC service. Its responses are
/// written as gRPC frames by the session itself (the event's shared
/// object bytes copied once, into the batch that goes out), not through
/// tonic's encoder; its requests are decoded by tonic.
#[derive(Clone)]
pub struct MultiplexedWatch {
    kinds: Arc<WatchableKinds>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    max_decoding: usize,
}

impl tonic::server::NamedService for MultiplexedWatch {
    const NAME: &'static str = "skiff.meta.v1.WatchService";
}

/// The one method of the service.
const WATCH_PATH: &str = "/skiff.meta.v1.WatchService/Watch";

type HttpResponse = http::Response<tonic::body::Body>;

impl tower::Service<http::Request<tonic::body::Body>> for MultiplexedWatch {
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<HttpResponse, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        std::future::ready(Ok(self.respond(request)))
    }
}

impl MultiplexedWatch {
    fn respond(&self, request: http::Request<tonic::body::Body>) -> HttpResponse {
        if request.uri().path() != WATCH_PATH {
            return Status::unimplemented(format!(
                "{} is not a method of skiff.meta.v1.WatchService (it has Watch)",
                request.uri().path()
            ))
            .into_http();
        }
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding != "identity"
        {
            return Status::unimplemented(format!(
                "requests compressed with {encoding:?} are not supported; send them uncompressed"
            ))
            .into_http();
        }
        let (parts, body) = request.into_parts();
        // The codec of every Skiff service: bytes that are not a request
        // are the sender's fault (INVALID_ARGUMENT).
        let decoder = tonic::codec::Codec::decoder(&mut skiff::wire::Codec::<
            WatchResponse,
            WatchRequest,
        >::default());
        let requests = Streaming::new_request(decoder, body, None, Some(self.max_decoding));
        let mut shutdown = self.shutdown.clone();
        skiff::server::frames_response(Box::pin(Session {
            kinds: self.kinds.clone(),
            extensions: Arc::new(parts.extensions),
            requests: Some(requests),
            opening: FuturesUnordered::new(),
            opening_ids: HashSet::new(),
            canceled_while_opening: HashSet::new(),
            watches: HashMap::new(),
            ready: Arc::new(ReadyQueue::default()),
            taken: VecDeque::new(),
            outbox: VecDeque::new(),
            shutdown: async move {
                let _ = shutdown.wait_for(|s| *s).await;
            }
            .boxed(),
        }))
    }
}

/// A watch being opened: its id, the opened events, its slot in the limits.
type Opening = BoxFuture<
    'static,
    (
        i64,
        Arc<Kind>,
        Result<(KindEvents, Option<WatchSlot>), ApiError>,
    ),
>;

/// One client's stream: its open watches and what is to be said.
struct Session {
    kinds: Arc<WatchableKinds>,
    extensions: Arc<http::Extensions>,
    /// `None` once the client has sent its last request.
    requests: Option<Streaming<WatchRequest>>,
    opening: FuturesUnordered<Opening>,
    /// Ids of the watches being opened.
    opening_ids: HashSet<i64>,
    canceled_while_opening: HashSet<i64>,
    /// The open watches. Each is polled only when its own waker says it
    /// has something (ids in `ready`), so an event wakes this one task
    /// once, and an idle watch costs its entry and its waker.
    watches: HashMap<i64, Watch>,
    ready: Arc<ReadyQueue>,
    /// Ids taken from `ready` in one go, polled in turn.
    taken: VecDeque<i64>,
    /// Notices (created, canceled, refused) waiting to go out.
    outbox: VecDeque<WatchResponse>,
    shutdown: BoxFuture<'static, ()>,
}

fn notice(watch_id: i64, created: bool, error: Option<Status>) -> WatchResponse {
    WatchResponse {
        watch_id,
        created,
        canceled: !created,
        error: error.map(|s| crate::error::rpc_status(&s)),
        ..Default::default()
    }
}

impl Session {
    fn handle(&mut self, request: WatchRequest) {
        match request.request {
            Some(Op::Create(create)) => self.create(create),
            Some(Op::Cancel(cancel)) => {
                let id = cancel.watch_id;
                if self.opening_ids.contains(&id) {
                    self.canceled_while_opening.insert(id);
                } else {
                    // Dropping it ends its cache watcher. Said even when
                    // it was not open, so the client knows the id is free.
                    self.watches.remove(&id);
                    self.outbox.push_back(notice(id, false, None));
                }
            }
            None => self.outbox.push_back(notice(
                0,
                false,
                Some(invalid("request", "either create or cancel is required")),
            )),
        }
    }

    fn create(&mut self, create: WatchCreateRequest) {
        let id = create.watch_id;
        if id <= 0 {
            let e = invalid("create.watch_id", "must be positive");
            return self.outbox.push_back(notice(id, false, Some(e)));
        }
        if self.opening_ids.contains(&id) || self.watches.contains_key(&id) {
            let e = invalid(
                "create.watch_id",
                &format!("watch {id} is open on this stream"),
            );
            return self.outbox.push_back(notice(id, false, Some(e)));
        }
        let Some(kind) = self.kinds.find(&create.kind) else {
            let e = invalid(
                "create.kind",
                &format!(
                    "{:?} is not a kind this server serves (e.g. \"skiff.core.v1.Pod\", \"Pod\" or \"pods\")",
                    create.kind
                ),
            );
            return self.outbox.push_back(notice(id, false, Some(e)));
        };
        self.opening_ids.insert(id);
        let extensions = self.extensions.clone();
        self.opening.push(Box::pin(async move {
            let opened = async {
                let slot = another_watch(&extensions)?;
                let events = kind.server.open(&extensions, &create).await?;
                Ok((events, slot))
            }
            .await;
            (id, kind, opened)
        }));
    }

    fn opened(
        &mut self,
        id: i64,
        kind: Arc<Kind>,
        opened: Result<(KindEvents, Option<WatchSlot>), ApiError>,
    ) {
        self.opening_ids.remove(&id);
        if self.canceled_while_opening.remove(&id) {
            return self.outbox.push_back(notice(id, false, None));
        }
        match opened {
            Ok((events, slot)) => {
                let flag = Arc::new(WatchWaker {
                    id,
                    queued: AtomicBool::new(false),
                    ready: self.ready.clone(),
                });
                let waker = futures::task::waker(flag.clone());
                // Polled once to start (and register its waker).
                waker.wake_by_ref();
                self.watches.insert(
                    id,
                    Watch {
                        kind,
                        events,
                        _slot: slot,
                        waker,
                        flag,
                    },
                );
                self.outbox.push_back(notice(id, true, None));
            }
            Err(e) => self.outbox.push_back(notice(id, false, Some(e.into()))),
        }
    }

    /// Writes what the ready watches have into `out`, up to a batch; a
    /// watch with more than its turn's share goes to the back of the line.
    fn deliver(&mut self, out: &mut BytesMut) {
        while out.len() < BATCH_BYTES {
            let Some(id) = self.taken.pop_front().or_else(|| {
                self.ready.take_all(&mut self.taken);
                self.taken.pop_front()
            }) else {
                return;
            };
            let Some(watch) = self.watches.get_mut(&id) else {
                // Cancelled since it was woken.
                continue;
            };
            // A wake-up from here on queues it again.
            watch.flag.queued.store(false, Ordering::Release);
            let mut watch_cx = Context::from_waker(&watch.waker);
            let mut turn = 0;
            let ended = loop {
                if turn == EVENTS_PER_TURN || out.len() >= BATCH_BYTES {
                    watch.waker.wake_by_ref();
                    break None;
                }
                match watch.events.poll_next_unpin(&mut watch_cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match event_parts(&frame) {
                            Ok((event_type, object)) => {
                                if out.capacity() == 0 {
                                    // Once per batch: growing by doubling copies.
                                    out.reserve(BATCH_BYTES + frame.len() + EVENT_OVERHEAD);
                                }
                                write_event(out, id, event_type, watch.kind.type_url, object);
                                turn += 1;
                            }
                            Err(e) => {
                                let kind = watch.kind.info.kind;
                                let e = ApiError::Internal(format!("a cached {kind} event: {e}"));
                                break Some(Some(e.into()));
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => break Some(Some(e.into())),
                    // Ended by the server.
                    Poll::Ready(None) => break Some(None),
                    Poll::Pending => break None,
                }
            };
            if let Some(error) = ended {
                self.watches.remove(&id);
                write_message(out, &notice(id, false, error));
            }
        }
    }
}

/// A framed watch event's type number and its object's encoding.
fn event_parts(frame: &[u8]) -> Result<(i32, &[u8]), String> {
    let message = frame.get(GRPC_PREFIX..).ok_or("no gRPC prefix")?;
    skiff::wire::watch_event_parts(message).map_err(|e| e.to_string())
}

/// How many events one watch writes before the others' turn.
const EVENTS_PER_TURN: usize = 16;

/// What a response adds to its event's frame, at most: the watch id, the
/// `Any` and its type URL.
const EVENT_OVERHEAD: usize = 256;

fn invalid(field: &str, description: &str) -> Status {
    ApiError::invalid("WatchRequest", "", field, description).into()
}

/// Appends `message` as a gRPC frame.
fn write_message(out: &mut BytesMut, message: &WatchResponse) {
    let len = message.encoded_len();
    out.reserve(GRPC_PREFIX + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    // BytesMut grows as needed: writing to it cannot fail.
    message.encode_raw(out);
}

/// Appends the gRPC frame of the `WatchResponse` of watch `id` carrying an
/// event: its type, and the object's encoding packed in an `Any` of
/// `type_url` — written field by field, so the object is copied once.
fn write_event(out: &mut BytesMut, id: i64, event_type: i32, type_url: &str, object: &[u8]) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let mut any_len = key_len(1) + encoded_len_varint(type_url.len() as u64) + type_url.len();
    if !object.is_empty() {
        any_len += key_len(2) + encoded_len_varint(object.len() as u64) + object.len();
    }
    let mut len = key_len(3) + encoded_len_varint(any_len as u64) + any_len;
    if id != 0 {
        len += key_len(1) + encoded_len_varint(id as u64);
    }
    if event_type != 0 {
        len += key_len(2) + encoded_len_varint(i64::from(event_type) as u64);
    }
    out.reserve(GRPC_PREFIX + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    if id != 0 {
        encode_key(1, WireType::Varint, out);
        encode_varint(id as u64, out);
    }
    if event_type != 0 {
        encode_key(2, WireType::Varint, out);
        encode_varint(i64::from(event_type) as u64, out);
    }
    encode_key(3, WireType::LengthDelimited, out);
    encode_varint(any_len as u64, out);
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint(type_url.len() as u64, out);
    out.put_slice(type_url.as_bytes());
    if !object.is_empty() {
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(object.len() as u64, out);
        out.put_slice(object);
    }
}

impl Stream for Session {
    /// One or more whole gRPC frames.
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.shutdown.poll_unpin(cx).is_ready() {
            // Clients resume their watches elsewhere, as after a watch call ends.
            return Poll::Ready(None);
        }
        while let Some(requests) = &mut this.requests {
            match requests.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(request))) => this.handle(request),
                // The client stopped sending: its open watches go on.
                Poll::Ready(None) => this.requests = None,
                // The client is gone (or sent garbage): the stream ends with it.
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status))),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some((id, kind, opened))) = this.opening.poll_next_unpin(cx) {
            this.opened(id, kind, opened);
        }
        let mut out = BytesMut::new();
        while let Some(notice) = this.outbox.pop_front() {
            write_message(&mut out, &notice);
        }
        this.ready.session.register(cx.waker());
        this.deliver(&mut out);
        if !out.is_empty() {
            return Poll::Ready(Some(Ok(out.freeze())));
        }
        if this.requests.is_none() && this.watches.is_empty() && this.opening_ids.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// An open watch: its events, and the waker that queues it to be polled.
struct Watch {
    kind: Arc<Kind>,
    events: KindEvents,
    _slot: Option<WatchSlot>,
    waker: std::task::Waker,
    flag: Arc<WatchWaker>,
}

/// Ids of the watches that have something to say, and the session's task.
#[derive(Default)]
struct ReadyQueue {
    ids: std::sync::Mutex<VecDeque<i64>>,
    session: AtomicWaker,
}

impl ReadyQueue {
    /// Moves every queued id to the back of `into`.
    fn take_all(&self, into: &mut VecDeque<i64>) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if into.is_empty() {
            std::mem::swap(&mut *ids, into);
        } else {
            into.extend(ids.drain(..));
        }
    }
}

/// One watch's waker: queues its id (once until it is polled) and wakes
/// the session.
struct WatchWaker {
    id: i64,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl ArcWake for WatchWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        if !arc_self.queued.swap(true, Ordering::AcqRel) {
            arc_self
                .ready
                .ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(arc_self.id);
            arc_self.ready.session.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::wire::Any;

    #[test]
    fn an_event_written_field_by_field_decodes_as_the_watch_response_prost_would_write() {
        let url = "type.googleapis.com/skiff.core.v1.Pod";
        for (id, event_type, object) in [
            (1_i64, 1_i32, vec![0x0a_u8, 3, b'a', b'b', b'c']),
            (i64::MAX, 3, vec![7; 300]),
            (200, 2, vec![]),
            (5, 4, vec![1; 70_000]),
        ] {
            let mut out = BytesMut::new();
            write_event(&mut out, id, event_type, url, &object);
            let expected = WatchResponse {
                watch_id: id,
                r#type: event_type,
                object: Some(Any {
                    type_url: std::borrow::Cow::Borrowed(url),
                    value: Bytes::from(object.clone()),
                }),
                ..Default::default()
            };
            assert_eq!(out[0], 0, "uncompressed");
            let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
            assert_eq!(len, out.len() - GRPC_PREFIX, "the prefix gives the length");
            assert_eq!(&out[GRPC_PREFIX..], &expected.encode_to_vec()[..]);
            let decoded = WatchResponse::decode(&out[GRPC_PREFIX..]).unwrap();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn frames_written_back_to_back_each_carry_their_own_length() {
        let mut out = BytesMut::new();
        write_message(&mut out, &notice(3, true, None));
        write_event(&mut out, 3, 1, "u", b"x");
        write_message(&mut out, &notice(3, false, None));
        let mut rest = &out[..];
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            decoded.push(WatchResponse::decode(&rest[GRPC_PREFIX..GRPC_PREFIX + len]).unwrap());
            rest = &rest[GRPC_PREFIX + len..];
        }
        assert_eq!(decoded.len(), 3);
        assert!(decoded[0].created && decoded[0].watch_id == 3);
        assert_eq!(decoded[1].r#type, 1);
        assert_eq!(decoded[1].object.as_ref().unwrap().value.as_ref(), b"x");
        assert!(decoded[2].canceled);
    }
}
