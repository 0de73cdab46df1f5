//! The multiplexed watch, `skiff.meta.v1.WatchService/Watch`: many watches,
//! of any kinds, on one bidirectional stream (as etcd's watch stream and
//! xDS's ADS carry many). Each watch is its kind's own watch — authorized,
//! checked and served from the kind's watch cache by its
//! [`ResourceServer`](super::ResourceServer), and counted against the
//! caller's watch limit — and every response carries the client's watch id.
//! An event's object goes out as the cache's one encoding of it, packed into
//! an `Any` without a copy.
//!
//! Owns the stream's bookkeeping (ids, opening, cancelling, ending); must not
//! know any kind.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::task::{ArcWake, AtomicWaker};
use futures::{FutureExt, Stream, StreamExt};
use skiff::api::meta::v1::watch_request::Request as Op;
use skiff::api::meta::v1::watch_service_server::{WatchService, WatchServiceServer};
use skiff::api::meta::v1::{WatchCreateRequest, WatchRequest, WatchResponse};
use skiff::resource::KindInfo;
use skiff::wire::Any;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ApiError;
use crate::filters::{WatchSlot, another_watch};

/// One watch's events: each event's type and its object's encoding.
pub(crate) type KindEvents = Pin<Box<dyn Stream<Item = Result<(i32, Bytes), ApiError>> + Send>>;

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
    ) -> WatchServiceServer<MultiplexedWatch> {
        WatchServiceServer::new(MultiplexedWatch {
            kinds: Arc::new(self),
            shutdown,
        })
        .max_decoding_message_size(max_decoding)
        .max_encoding_message_size(usize::MAX)
    }
}

/// The `WatchService` implementation.
pub struct MultiplexedWatch {
    kinds: Arc<WatchableKinds>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

#[tonic::async_trait]
impl WatchService for MultiplexedWatch {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (_, extensions, requests) = request.into_parts();
        let mut shutdown = self.shutdown.clone();
        Ok(Response::new(Box::pin(Session {
            kinds: self.kinds.clone(),
            extensions: Arc::new(extensions),
            requests: Some(requests),
            opening: FuturesUnordered::new(),
            opening_ids: HashSet::new(),
            canceled_while_opening: HashSet::new(),
            watches: HashMap::new(),
            ready: Arc::new(ReadyQueue::default()),
            outbox: VecDeque::new(),
            shutdown: async move {
                let _ = shutdown.wait_for(|s| *s).await;
            }
            .boxed(),
        })))
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
                        tagged: Tagged {
                            id,
                            kind,
                            events,
                            _slot: slot,
                            done: false,
                        },
                        waker,
                        flag,
                    },
                );
                self.outbox.push_back(notice(id, true, None));
            }
            Err(e) => self.outbox.push_back(notice(id, false, Some(e.into()))),
        }
    }
}

fn invalid(field: &str, description: &str) -> Status {
    ApiError::invalid("WatchRequest", "", field, description).into()
}

impl Stream for Session {
    type Item = Result<WatchResponse, Status>;

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
        if let Some(notice) = this.outbox.pop_front() {
            return Poll::Ready(Some(Ok(notice)));
        }
        this.ready.session.register(cx.waker());
        while let Some(id) = this.ready.pop() {
            let Some(watch) = this.watches.get_mut(&id) else {
                // Cancelled since it was woken.
                continue;
            };
            // A wake-up during the poll queues it again.
            watch.flag.queued.store(false, Ordering::Release);
            let mut watch_cx = Context::from_waker(&watch.waker);
            match watch.tagged.poll_next_unpin(&mut watch_cx) {
                Poll::Ready(Some(response)) => {
                    if response.canceled {
                        this.watches.remove(&id);
                    } else {
                        // It may have more: after the others (fairness).
                        watch.waker.wake_by_ref();
                    }
                    return Poll::Ready(Some(Ok(response)));
                }
                Poll::Ready(None) => {
                    this.watches.remove(&id);
                }
                Poll::Pending => {}
            }
        }
        if this.requests.is_none() && this.watches.is_empty() && this.opening_ids.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// An open watch: its responses, and the waker that queues it to be polled.
struct Watch {
    tagged: Tagged,
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
    fn pop(&self) -> Option<i64> {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
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

/// One open watch's events as responses tagged with its id, then the
/// notice that it ended.
struct Tagged {
    id: i64,
    kind: Arc<Kind>,
    events: KindEvents,
    _slot: Option<WatchSlot>,
    done: bool,
}

impl Stream for Tagged {
    type Item = WatchResponse;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchResponse>> {
        if self.done {
            return Poll::Ready(None);
        }
        let id = self.id;
        Poll::Ready(Some(
            match futures::ready!(self.events.poll_next_unpin(cx)) {
                Some(Ok((event_type, object))) => WatchResponse {
                    watch_id: id,
                    r#type: event_type,
                    object: Some(Any {
                        type_url: std::borrow::Cow::Borrowed(self.kind.type_url),
                        value: object,
                    }),
                    ..Default::default()
                },
                Some(Err(e)) => {
                    self.done = true;
                    notice(id, false, Some(e.into()))
                }
                // Ended by the server.
                None => {
                    self.done = true;
                    notice(id, false, None)
                }
            },
        ))
    }
}
