//! [`Multiplexer`]: many watches, of any kinds, over one
//! `skiff.meta.v1.WatchService/Watch` stream. Each watch is the same as its
//! kind's own watch call (the same events, resource versions and errors),
//! so a watcher can use either; a process watching fifteen kinds holds one
//! stream instead of fifteen. Against a server without the multiplexed
//! watch, watches go through the kinds' own calls.
//!
//! One task per stream reads the responses and hands each watch's to it
//! through a bounded queue; a watch read slowly holds up the others on the
//! stream (and, on the server, falls behind until it is closed with a
//! resumable error), as an HTTP/2 connection's watches share its window.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::{Api, Error, ResourceClient, Result, Transport};
use crate::api::meta::v1::watch_request::Request as Op;
use crate::api::meta::v1::watch_service_client::WatchServiceClient;
use crate::api::meta::v1::{WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::params::WatchParams;
use crate::wire::WatchEvent;

/// Responses one watch may have waiting before the stream's reader waits.
const WATCH_QUEUE: usize = 256;
/// Creates and cancels waiting to be sent on a stream.
const REQUEST_QUEUE: usize = 1024;

/// Watches over one multiplexed stream (opened on first use, and again
/// after it breaks). Cheap to clone; clones share the stream.
#[derive(Clone)]
pub struct Multiplexer {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    next_id: AtomicI64,
    stream: Mutex<Option<Arc<Connection>>>,
    /// The server has no multiplexed watch: use the kinds' own calls.
    unsupported: AtomicBool,
}

impl std::fmt::Debug for Multiplexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multiplexer")
            .field("watches", &self.open_watches())
            .finish()
    }
}

/// What the reader hands one watch.
enum Routed {
    Created,
    Event(WatchResponse),
    /// The watch ended; with the server's error, if it gave one.
    Ended(Option<Status>),
}

/// One open multiplexed stream.
struct Connection {
    requests: mpsc::Sender<WatchRequest>,
    routes: Mutex<HashMap<i64, mpsc::Sender<Routed>>>,
    /// Why the stream broke, once it has.
    broken: Mutex<Option<Status>>,
    /// The server ended the stream cleanly (it shuts down): its watches end
    /// as a watch call's stream would, without an error.
    ended_cleanly: AtomicBool,
}

impl Connection {
    fn is_broken(&self) -> bool {
        self.broken.lock().expect("broken lock").is_some()
    }

    fn route(&self, id: i64) -> Option<mpsc::Sender<Routed>> {
        self.routes.lock().expect("routes lock").get(&id).cloned()
    }

    /// Ends every watch on the stream: their queues close, and each reads
    /// `why` after what it already has.
    fn break_with(&self, why: Status) {
        *self.broken.lock().expect("broken lock") = Some(why);
        self.routes.lock().expect("routes lock").clear();
    }

    fn why_broken(&self) -> Status {
        self.broken
            .lock()
            .expect("broken lock")
            .clone()
            .unwrap_or_else(|| Status::unavailable("the multiplexed watch stream ended"))
    }
}

impl Multiplexer {
    /// A multiplexer over `transport`'s server(s).
    pub fn new(transport: Transport) -> Self {
        Self {
            inner: Arc::new(Inner {
                transport,
                next_id: AtomicI64::new(1),
                stream: Mutex::new(None),
                unsupported: AtomicBool::new(false),
            }),
        }
    }

    /// Watches open on the current stream.
    pub fn open_watches(&self) -> usize {
        self.inner
            .stream
            .lock()
            .expect("stream lock")
            .as_ref()
            .map_or(0, |c| c.routes.lock().expect("routes lock").len())
    }

    /// Whether watches go over one stream (false once the server was found
    /// to lack the multiplexed watch).
    pub fn is_multiplexing(&self) -> bool {
        !self.inner.unsupported.load(Ordering::Relaxed)
    }

    /// Watches `api`'s kind and namespace (unless `params` names one) as
    /// [`Api::watch`] does, over the shared stream; dropping the returned
    /// stream cancels the watch.
    pub async fn watch<K: ResourceClient>(
        &self,
        api: &Api<K>,
        params: &WatchParams,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<WatchEvent<K>>> + Send>>> {
        if !self.is_multiplexing() {
            return api.watch(params).await;
        }
        let connection = self.connection();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(WATCH_QUEUE);
        connection
            .routes
            .lock()
            .expect("routes lock")
            .insert(id, tx);
        let namespace = if params.namespace.is_empty() {
            api.namespace().to_owned()
        } else {
            params.namespace.clone()
        };
        let create = WatchRequest {
            request: Some(Op::Create(WatchCreateRequest {
                watch_id: id,
                kind: K::INFO.message_name.to_owned(),
                namespace,
                label_selector: params.label_selector.clone(),
                field_selector: params.field_selector.clone(),
                resource_version: params.resource_version.clone(),
                allow_bookmarks: params.allow_bookmarks,
                send_initial_events: params.send_initial_events,
            })),
        };
        let mut watch = WatchStream::<K> {
            id,
            rx: None,
            connection: connection.clone(),
            ended: false,
            _kind: std::marker::PhantomData,
        };
        if connection.requests.send(create).await.is_err() {
            return Err(connection.why_broken().into());
        }
        match rx.recv().await {
            Some(Routed::Created) => {
                watch.rx = Some(rx);
                Ok(Box::pin(watch))
            }
            Some(Routed::Ended(Some(status))) => {
                watch.ended = true;
                Err(status.into())
            }
            Some(Routed::Ended(None)) | Some(Routed::Event(_)) => {
                watch.ended = true;
                Err(Status::internal(format!("watch {id} was not created first")).into())
            }
            None => {
                watch.ended = true;
                let why = connection.why_broken();
                if why.code() == Code::Unimplemented {
                    // An older server: every watch goes through its kind's call.
                    self.inner.unsupported.store(true, Ordering::Relaxed);
                    return api.watch(params).await;
                }
                Err(why.into())
            }
        }
    }

    /// The open stream, or a new one.
    fn connection(&self) -> Arc<Connection> {
        let mut current = self.inner.stream.lock().expect("stream lock");
        if let Some(c) = current.as_ref().filter(|c| !c.is_broken()) {
            return c.clone();
        }
        let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
        let connection = Arc::new(Connection {
            requests,
            routes: Mutex::new(HashMap::new()),
            broken: Mutex::new(None),
            ended_cleanly: AtomicBool::new(false),
        });
        tokio::spawn(read(
            self.inner.transport.clone(),
            rx,
            Arc::downgrade(&connection),
        ));
        *current = Some(connection.clone());
        connection
    }
}

/// Opens the stream and hands each response to its watch until the
/// stream breaks or no watch holds the connection any more.
async fn read(
    transport: Transport,
    requests: mpsc::Receiver<WatchRequest>,
    connection: std::sync::Weak<Connection>,
) {
    let mut client = WatchServiceClient::new(transport).max_decoding_message_size(usize::MAX);
    let requests = tokio_stream::wrappers::ReceiverStream::new(requests);
    let why = match client.watch(requests).await {
        Err(status) => status,
        Ok(response) => {
            let mut responses = response.into_inner();
            loop {
                match responses.message().await {
                    Ok(Some(response)) => {
                        let Some(c) = connection.upgrade() else {
                            return;
                        };
                        let id = response.watch_id;
                        let Some(route) = c.route(id) else {
                            continue;
                        };
                        drop(c);
                        let routed = if response.created {
                            Routed::Created
                        } else if response.canceled {
                            Routed::Ended(response.error.map(status_of))
                        } else {
                            Routed::Event(response)
                        };
                        // A watch nobody reads any more was dropped: fine.
                        let _ = route.send(routed).await;
                    }
                    Ok(None) => {
                        if let Some(c) = connection.upgrade() {
                            c.ended_cleanly.store(true, Ordering::Relaxed);
                        }
                        break Status::unavailable("the multiplexed watch stream ended");
                    }
                    Err(status) => break status,
                }
            }
        }
    };
    if let Some(c) = connection.upgrade() {
        c.break_with(why);
    }
}

/// A `google.rpc.Status` as a tonic status, its details kept (RetryInfo…).
fn status_of(s: tonic_types::Status) -> Status {
    let code = Code::from(s.code);
    let message = s.message.clone();
    Status::with_details(code, message, prost::Message::encode_to_vec(&s).into())
}

/// One watch's events; dropping it cancels the watch on the server.
struct WatchStream<K> {
    id: i64,
    rx: Option<mpsc::Receiver<Routed>>,
    connection: Arc<Connection>,
    ended: bool,
    _kind: std::marker::PhantomData<fn() -> K>,
}

impl<K: ResourceClient> Stream for WatchStream<K> {
    type Item = Result<WatchEvent<K>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        let routed = futures::ready!(rx.poll_recv(cx));
        Poll::Ready(match routed {
            Some(Routed::Event(response)) => Some(decode::<K>(response)),
            Some(Routed::Created) => {
                self.ended = true;
                Some(Err(Status::internal(format!(
                    "watch {} created twice",
                    self.id
                ))
                .into()))
            }
            Some(Routed::Ended(None)) => {
                self.ended = true;
                None
            }
            Some(Routed::Ended(Some(status))) => {
                self.ended = true;
                Some(Err(status.into()))
            }
            None => {
                self.ended = true;
                if self.connection.ended_cleanly.load(Ordering::Relaxed) {
                    None
                } else {
                    Some(Err(self.connection.why_broken().into()))
                }
            }
        })
    }
}

fn decode<K: ResourceClient>(response: WatchResponse) -> Result<WatchEvent<K>> {
    let object = match &response.object {
        Some(any) => Some(any.unpack::<K>(K::INFO.message_name).map_err(|e| {
            Error::from(Status::internal(format!(
                "watch {}: cannot decode the object: {e}",
                response.watch_id
            )))
        })?),
        None => None,
    };
    Ok(WatchEvent::from_parts(response.r#type, object))
}

impl<K> Drop for WatchStream<K> {
    fn drop(&mut self) {
        let routed = self
            .connection
            .routes
            .lock()
            .expect("routes lock")
            .remove(&self.id)
            .is_some();
        if !routed || self.ended || self.connection.is_broken() {
            return;
        }
        let cancel = WatchRequest {
            request: Some(Op::Cancel(WatchCancelRequest { watch_id: self.id })),
        };
        if let Err(mpsc::error::TrySendError::Full(cancel)) =
            self.connection.requests.try_send(cancel)
        {
            let requests = self.connection.requests.clone();
            tokio::spawn(async move {
                let _ = requests.send(cancel).await;
            });
        }
    }
}
