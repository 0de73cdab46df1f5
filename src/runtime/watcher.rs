//! [`watcher`]: a plain `Stream` of events of one kind that lists (or uses
//! `send_initial_events`), then watches, resumes from the last resource
//! version after a disconnect, lists again when the server says the version
//! is too old, and backs off on errors. Errors are items; recovery happens on
//! the next poll. Each initial state is marked by `Init` … `InitDone`, so a
//! store can swap in the whole new state at once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::api::meta::v1::EventType;
use crate::client::{Api, Error, Multiplexer, ResourceClient, Result};
use crate::params::{ListParams, WatchParams};
use crate::wire::WatchEvent;

/// Annotation of the BOOKMARK ending an initial state.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// One step of a watched kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<K> {
    /// A new initial state begins; `InitApply`s follow, then `InitDone`.
    Init,
    /// An object of the initial state.
    InitApply(K),
    /// The initial state is complete: it replaces everything known before.
    InitDone,
    /// An object was added or changed.
    Apply(K),
    /// An object was deleted (its last state).
    Delete(K),
}

/// Exponential backoff with a cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 = first).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        self.initial.saturating_mul(1 << exp).min(self.max)
    }
}

/// What to watch and how.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// Label selector.
    pub label_selector: String,
    /// Field selector.
    pub field_selector: String,
    /// Page size of initial lists (0: one page).
    pub page_size: i32,
    /// Get the initial state through the watch (`send_initial_events`)
    /// instead of paged lists.
    pub watch_list: bool,
    /// Backoff after errors.
    pub backoff: Backoff,
    /// Watch over this shared stream instead of a call of the watch's own.
    pub multiplexer: Option<Multiplexer>,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            label_selector: String::new(),
            field_selector: String::new(),
            page_size: 500,
            watch_list: false,
            backoff: Backoff::default(),
            multiplexer: None,
        }
    }
}

impl WatcherConfig {
    /// Only objects matching this label selector.
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = selector.to_owned();
        self
    }

    /// Only objects matching this field selector.
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = selector.to_owned();
        self
    }

    /// Watch over `multiplexer`'s stream, shared with other watches.
    pub fn multiplexed(mut self, multiplexer: Multiplexer) -> Self {
        self.multiplexer = Some(multiplexer);
        self
    }
}

type EventStream<K> = Pin<Box<dyn Stream<Item = Result<WatchEvent<K>>> + Send>>;

enum Phase<K> {
    /// Nothing known: start an initial state.
    Empty,
    /// Listing: the next page token and the revision of the first page.
    Listing { token: String, revision: String },
    /// Watching from `revision`; `stream` is open unless reconnecting.
    Watching {
        revision: String,
        stream: Option<EventStream<K>>,
        initial: bool,
    },
}

struct State<K: ResourceClient> {
    api: Api<K>,
    config: WatcherConfig,
    phase: Phase<K>,
    pending: VecDeque<Result<Event<K>>>,
    failures: u32,
    /// How long the server asked to wait after the last failure.
    retry_after: Option<Duration>,
}

/// Watches kind `K` through `api` forever (see the module docs).
pub fn watcher<K: ResourceClient>(
    api: Api<K>,
    config: WatcherConfig,
) -> impl Stream<Item = Result<Event<K>>> + Send {
    let state = State {
        api,
        config,
        phase: Phase::Empty,
        pending: VecDeque::new(),
        failures: 0,
        retry_after: None,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.pending.pop_front() {
                return Some((item, s));
            }
            step(&mut s).await;
        }
    })
}

async fn step<K: ResourceClient>(s: &mut State<K>) {
    if s.failures > 0 {
        // The back-off, or longer if the server asked for longer.
        let delay = s.config.backoff.delay(s.failures);
        tokio::time::sleep(delay.max(s.retry_after.take().unwrap_or_default())).await;
    }
    let phase = std::mem::replace(&mut s.phase, Phase::Empty);
    s.phase = match phase {
        Phase::Empty => {
            s.pending.push_back(Ok(Event::Init));
            if s.config.watch_list {
                Phase::Watching {
                    revision: String::new(),
                    stream: None,
                    initial: true,
                }
            } else {
                Phase::Listing {
                    token: String::new(),
                    revision: String::new(),
                }
            }
        }
        Phase::Listing { token, revision } => {
            let params = ListParams {
                label_selector: s.config.label_selector.clone(),
                field_selector: s.config.field_selector.clone(),
                page_size: s.config.page_size,
                page_token: token.clone(),
                ..Default::default()
            };
            match s.api.list(&params).await {
                Ok(page) => {
                    s.failures = 0;
                    let revision = if revision.is_empty() {
                        page.metadata.resource_version.clone()
                    } else {
                        revision
                    };
                    s.pending
                        .extend(page.items.into_iter().map(|o| Ok(Event::InitApply(o))));
                    if page.metadata.next_page_token.is_empty() {
                        s.pending.push_back(Ok(Event::InitDone));
                        Phase::Watching {
                            revision,
                            stream: None,
                            initial: false,
                        }
                    } else {
                        Phase::Listing {
                            token: page.metadata.next_page_token,
                            revision,
                        }
                    }
                }
                Err(e) => {
                    s.failures += 1;
                    s.retry_after = e.retry_after();
                    // An expired page token means starting the list again.
                    let next = if e.is_expired() {
                        s.pending.push_back(Ok(Event::Init));
                        Phase::Listing {
                            token: String::new(),
                            revision: String::new(),
                        }
                    } else {
                        Phase::Listing { token, revision }
                    };
                    s.pending.push_back(Err(e));
                    next
                }
            }
        }
        Phase::Watching {
            revision,
            stream: None,
            initial,
        } => {
            let params = WatchParams {
                label_selector: s.config.label_selector.clone(),
                field_selector: s.config.field_selector.clone(),
                resource_version: revision.clone(),
                allow_bookmarks: true,
                send_initial_events: initial,
                ..Default::default()
            };
            let opened = match &s.config.multiplexer {
                Some(m) => m.watch(&s.api, &params).await,
                None => s.api.watch(&params).await,
            };
            match opened {
                Ok(stream) => Phase::Watching {
                    revision,
                    stream: Some(stream),
                    initial,
                },
                Err(e) => fail(s, e, revision, initial),
            }
        }
        Phase::Watching {
            revision,
            stream: Some(mut stream),
            initial,
        } => match stream.next().await {
            // The stream ended while the initial state was arriving: what
            // came so far may miss deletions, so a fresh one starts.
            None if initial => Phase::Empty,
            None => {
                // The server ended the watch (timeout, restart): resume.
                Phase::Watching {
                    revision,
                    stream: None,
                    initial,
                }
            }
            Some(Err(e)) => fail(s, e, revision, initial),
            Some(Ok(ev)) => {
                s.failures = 0;
                let t = ev.event_type();
                let Some(obj) = ev.object else {
                    return s.phase = Phase::Watching {
                        revision,
                        stream: Some(stream),
                        initial,
                    };
                };
                let revision = if obj.meta().resource_version.is_empty() {
                    revision
                } else {
                    obj.meta().resource_version.clone()
                };
                let mut initial = initial;
                match t {
                    EventType::Added | EventType::Modified => s.pending.push_back(Ok(if initial {
                        Event::InitApply(obj)
                    } else {
                        Event::Apply(obj)
                    })),
                    EventType::Deleted => s.pending.push_back(Ok(Event::Delete(obj))),
                    EventType::Bookmark => {
                        if initial && obj.meta().annotations.contains_key(INITIAL_EVENTS_END) {
                            s.pending.push_back(Ok(Event::InitDone));
                            initial = false;
                        }
                    }
                    EventType::Unspecified => {}
                }
                Phase::Watching {
                    revision,
                    stream: Some(stream),
                    initial,
                }
            }
        },
    };
}

/// After a watch error: list again if the version expired, else retry after backoff.
fn fail<K: ResourceClient>(
    s: &mut State<K>,
    e: Error,
    revision: String,
    initial: bool,
) -> Phase<K> {
    if e.is_expired() {
        // Not an error to report: the protocol says list again.
        return Phase::Empty;
    }
    s.failures += 1;
    s.retry_after = e.retry_after();
    s.pending.push_back(Err(e));
    if initial {
        // An interrupted initial state starts over.
        Phase::Empty
    } else {
        Phase::Watching {
            revision,
            stream: None,
            initial,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use tonic::{Request, Status};

    use super::*;
    use crate::Resource;
    use crate::api::core::v1::Secret;
    use crate::api::meta::v1::ObjectMeta;
    use crate::params::{DeleteParams, GetParams};
    use crate::server::{MessageLimits, ResourceService, ServeWith, WatchStream};
    use crate::wire::ListResponse;

    fn secret(name: &str, rv: u64) -> Secret {
        Secret {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: rv.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A server whose first watch ends in the middle of its initial state
    /// (a, b); by the second, b has been deleted.
    #[derive(Default)]
    struct EndsMidInitialState {
        watches: Mutex<Vec<WatchParams>>,
        /// When set, the first watch is refused as RESOURCE_EXHAUSTED with
        /// this RetryInfo (and not counted in `watches`).
        refuse_first: Option<Duration>,
        /// When each watch call arrived.
        calls: Mutex<Vec<std::time::Instant>>,
    }

    #[tonic::async_trait]
    impl ResourceService<Secret> for EndsMidInitialState {
        async fn create(&self, _: Request<Secret>) -> Result<Secret, Status> {
            Err(Status::unimplemented("create"))
        }
        async fn get(&self, _: Request<GetParams>) -> Result<Secret, Status> {
            Err(Status::unimplemented("get"))
        }
        async fn list(&self, _: Request<ListParams>) -> Result<ListResponse<Secret>, Status> {
            Err(Status::unimplemented("list"))
        }
        async fn update(&self, _: Request<Secret>) -> Result<Secret, Status> {
            Err(Status::unimplemented("update"))
        }
        async fn update_status(&self, _: Request<Secret>) -> Result<Secret, Status> {
            Err(Status::unimplemented("update_status"))
        }
        async fn delete(&self, _: Request<DeleteParams>) -> Result<Secret, Status> {
            Err(Status::unimplemented("delete"))
        }
        async fn watch(
            &self,
            request: Request<WatchParams>,
        ) -> Result<WatchStream<Secret>, Status> {
            let first_call = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(std::time::Instant::now());
                calls.len() == 1
            };
            if let (Some(delay), true) = (self.refuse_first, first_call) {
                use tonic_types::StatusExt;
                return Err(Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    "too many watches; retry later",
                    tonic_types::ErrorDetails::with_retry_info(Some(delay)),
                ));
            }
            let n = {
                let mut w = self.watches.lock().unwrap();
                w.push(request.into_inner());
                w.len()
            };
            let events: Vec<Result<WatchEvent<Secret>, Status>> = if n == 1 {
                vec![
                    Ok(WatchEvent::new(EventType::Added, secret("a", 3))),
                    Ok(WatchEvent::new(EventType::Added, secret("b", 7))),
                ]
            } else {
                let mut end = secret("", 9);
                end.meta_mut()
                    .annotations
                    .insert(INITIAL_EVENTS_END.into(), "true".into());
                end.meta_mut().name.clear();
                vec![
                    Ok(WatchEvent::new(EventType::Added, secret("a", 3))),
                    Ok(WatchEvent::new(EventType::Bookmark, end)),
                ]
            };
            let stream = futures::stream::iter(events).map(|r| r.map(Into::into));
            Ok(if n == 1 {
                Box::pin(stream)
            } else {
                Box::pin(stream.chain(futures::stream::pending()))
            })
        }
    }

    /// Serves `service` on a free port; a transport to it and the server task.
    async fn serve(
        service: Arc<EndsMidInitialState>,
    ) -> (crate::client::Transport, tokio::task::JoinHandle<()>) {
        let mut routes = tonic::service::RoutesBuilder::default();
        <Secret as ServeWith<EndsMidInitialState>>::add_service(
            &mut routes,
            service,
            MessageLimits {
                max_decoding: usize::MAX,
                max_encoding: usize::MAX,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(routes.routes())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        let transport =
            crate::client::connect(&addr.to_string(), crate::client::Credentials::none())
                .await
                .unwrap();
        (transport, server)
    }

    #[tokio::test]
    async fn a_refused_watch_waits_as_long_as_the_server_asks_not_just_its_backoff() {
        let asked = Duration::from_millis(400);
        let service = Arc::new(EndsMidInitialState {
            refuse_first: Some(asked),
            ..Default::default()
        });
        let (transport, server) = serve(service.clone()).await;
        let config = WatcherConfig {
            watch_list: true,
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(10),
            },
            ..Default::default()
        };
        let events = watcher(Api::<Secret>::new(transport, "default"), config);
        futures::pin_mut!(events);
        let mut refused = None;
        while service.calls.lock().unwrap().len() < 2 {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("the watcher keeps going")
                .expect("the stream never ends")
            {
                refused = Some(e);
            }
        }
        let refused = refused.expect("the first watch was refused");
        assert_eq!(refused.retry_after(), Some(asked), "{refused}");
        let calls = service.calls.lock().unwrap().clone();
        let waited = calls[1] - calls[0];
        assert!(
            waited >= asked,
            "retried after {waited:?}; the server asked for {asked:?} (backoff 1 ms)"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_watch_list_cut_short_starts_a_fresh_initial_state() {
        let service = Arc::new(EndsMidInitialState::default());
        let (transport, server) = serve(service.clone()).await;
        let config = WatcherConfig {
            watch_list: true,
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(10),
            },
            ..Default::default()
        };
        let events = watcher(Api::<Secret>::new(transport, "default"), config);
        futures::pin_mut!(events);
        // Fold the events as a store does: each Init starts a new state,
        // InitDone swaps it in.
        let mut building = BTreeSet::new();
        let committed = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("the watcher keeps going")
                .expect("the stream never ends")
            {
                Ok(Event::Init) => building.clear(),
                Ok(Event::InitApply(p)) => {
                    building.insert(p.meta().name.clone());
                }
                Ok(Event::InitDone) => break std::mem::take(&mut building),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {}
            }
        };
        assert_eq!(
            committed,
            BTreeSet::from(["a".to_string()]),
            "b was deleted while the first initial state was cut short"
        );
        let watches = service.watches.lock().unwrap().clone();
        assert_eq!(watches.len(), 2);
        assert!(watches[1].send_initial_events);
        assert_eq!(
            watches[1].resource_version, "",
            "the second attempt asks for a fresh state, not a resume"
        );
        server.abort();
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(100), Duration::from_secs(1));
    }
}
