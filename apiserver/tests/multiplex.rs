//! The multiplexed watch (`skiff.meta.v1.WatchService/Watch`) through a
//! real gRPC server: watches of several kinds on one stream, each response
//! tagged with its watch id; refusals by id that name the field while the
//! stream goes on; cancels; the per-user watch limit counting each watch;
//! and the SDK's informer factory holding one stream for all its kinds.

use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::{ConfigMap, Pod, Secret};
use skiff::api::meta::v1::watch_request::Request as Op;
use skiff::api::meta::v1::watch_service_client::WatchServiceClient;
use skiff::api::meta::v1::{
    EventType, ObjectMeta, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use skiff::client::{Client, ResourceClient, Transport};
use skiff::runtime::InformerFactory;
use skiff::runtime::store::ObjectKey;
use skiff::testing::eventually;
use skiff_apiserver::ServerConfig;
use skiff_apiserver::filters::LimitsConfig;
use skiff_apiserver::server::SecurityConfig;
use skiff_apiserver::testing::TestServer;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: "default".into(),
        ..Default::default()
    })
}

fn pod(name: &str) -> Pod {
    skiff::testing::pod("default", name)
}

fn secret(name: &str) -> Secret {
    Secret {
        metadata: meta(name),
        ..Default::default()
    }
}

/// A raw multiplexed stream, as any generated client would hold it.
struct Raw {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Raw {
    async fn open(t: Transport) -> Self {
        let (requests, rx) = mpsc::channel(16);
        let responses = WatchServiceClient::new(t)
            .watch(ReceiverStream::new(rx))
            .await
            .expect("the multiplexed watch opens")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn create(&self, create: WatchCreateRequest) {
        self.requests
            .send(WatchRequest {
                request: Some(Op::Create(create)),
            })
            .await
            .unwrap();
    }

    async fn cancel(&self, watch_id: i64) {
        self.requests
            .send(WatchRequest {
                request: Some(Op::Cancel(WatchCancelRequest { watch_id })),
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.next())
            .await
            .expect("a response within 10 s")
            .expect("the stream is open")
            .expect("no stream error")
    }

    /// The next response that is not a bookmark.
    async fn next_change(&mut self) -> WatchResponse {
        loop {
            let r = self.next().await;
            if r.r#type != EventType::Bookmark as i32 {
                return r;
            }
        }
    }
}

fn watch(id: i64, kind: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        watch_id: id,
        kind: kind.into(),
        namespace: "default".into(),
        ..Default::default()
    }
}

fn object_name(r: &WatchResponse) -> String {
    let any = r.object.as_ref().expect("an object");
    match any.message_name() {
        "skiff.core.v1.Pod" => any
            .unpack::<Pod>("skiff.core.v1.Pod")
            .unwrap()
            .name()
            .into(),
        "skiff.core.v1.Secret" => any
            .unpack::<Secret>("skiff.core.v1.Secret")
            .unwrap()
            .name()
            .into(),
        other => panic!("unexpected object type {other}"),
    }
}

fn refusal(r: &WatchResponse) -> (Code, String) {
    assert!(r.canceled && !r.created, "{r:?}");
    let e = r.error.as_ref().expect("an error");
    (Code::from(e.code), e.message.clone())
}

#[tokio::test]
async fn one_stream_carries_watches_of_several_kinds_each_tagged_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let t = server.transport().await;
    let mut raw = Raw::open(t.clone()).await;
    // By message name and by plural.
    raw.create(watch(1, "skiff.core.v1.Pod")).await;
    raw.create(watch(2, "secrets")).await;
    let mut created: Vec<i64> = vec![raw.next().await, raw.next().await]
        .into_iter()
        .map(|r| {
            assert!(r.created, "{r:?}");
            r.watch_id
        })
        .collect();
    created.sort();
    assert_eq!(created, [1, 2]);

    Pod::create_in(t.clone(), pod("p1")).await.unwrap();
    Secret::create_in(t.clone(), secret("s1")).await.unwrap();
    let a = raw.next_change().await;
    let b = raw.next_change().await;
    assert_eq!(
        (a.watch_id, a.r#type, object_name(&a)),
        (1, EventType::Added as i32, "p1".into())
    );
    assert_eq!(
        a.object.as_ref().unwrap().type_url,
        "type.googleapis.com/skiff.core.v1.Pod"
    );
    assert_eq!(
        (b.watch_id, b.r#type, object_name(&b)),
        (2, EventType::Added as i32, "s1".into())
    );
}

#[tokio::test]
async fn bad_watches_are_refused_by_id_naming_the_field_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let t = server.transport().await;
    let mut raw = Raw::open(t.clone()).await;

    raw.create(watch(7, "Gizmo")).await;
    let (code, message) = refusal(&raw.next().await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        message.contains("create.kind") && message.contains("Gizmo"),
        "{message}"
    );

    raw.create(watch(0, "pods")).await;
    let (code, message) = refusal(&raw.next().await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("create.watch_id"), "{message}");

    // The kind's own checks, as its Watch call makes them.
    raw.create(WatchCreateRequest {
        label_selector: "app in (".into(),
        ..watch(8, "pods")
    })
    .await;
    let r = raw.next().await;
    assert_eq!(r.watch_id, 8);
    let (code, message) = refusal(&r);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("label_selector"), "{message}");

    raw.create(watch(9, "pods")).await;
    assert!(raw.next().await.created);
    raw.create(watch(9, "secrets")).await;
    let r = raw.next().await;
    assert_eq!(r.watch_id, 9);
    let (code, message) = refusal(&r);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("watch 9 is open"), "{message}");

    // The stream still serves watch 9.
    Pod::create_in(t.clone(), pod("still")).await.unwrap();
    let r = raw.next_change().await;
    assert_eq!((r.watch_id, object_name(&r)), (9, "still".into()));
}

#[tokio::test]
async fn a_canceled_watch_ends_with_a_notice_and_its_id_can_be_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let t = server.transport().await;
    let mut raw = Raw::open(t.clone()).await;
    raw.create(watch(1, "pods")).await;
    raw.create(watch(2, "pods")).await;
    assert!(raw.next().await.created);
    assert!(raw.next().await.created);
    raw.cancel(1).await;
    let r = raw.next().await;
    assert_eq!((r.watch_id, r.canceled, r.error), (1, true, None));

    Pod::create_in(t.clone(), pod("after")).await.unwrap();
    let r = raw.next_change().await;
    assert_eq!((r.watch_id, object_name(&r)), (2, "after".into()));

    // Id 1 is free again: a new watch from the current state.
    raw.create(WatchCreateRequest {
        send_initial_events: true,
        ..watch(1, "pods")
    })
    .await;
    assert_eq!(raw.next().await.watch_id, 1);
    let r = raw.next().await;
    assert_eq!((r.watch_id, object_name(&r)), (1, "after".into()));
}

#[tokio::test]
async fn each_multiplexed_watch_counts_against_the_users_watch_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        security: SecurityConfig {
            limits: Some(LimitsConfig {
                max_watches_per_user: 3,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let server = TestServer::embedded_with(dir.path(), config).await;
    let mut raw = Raw::open(server.transport().await).await;
    // The stream holds one slot, two watches the others.
    raw.create(watch(1, "pods")).await;
    raw.create(watch(2, "pods")).await;
    assert!(raw.next().await.created);
    assert!(raw.next().await.created);
    raw.create(watch(3, "pods")).await;
    let (code, message) = refusal(&raw.next().await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    // A canceled watch gives its slot back.
    raw.cancel(2).await;
    assert!(raw.next().await.canceled);
    raw.create(watch(3, "pods")).await;
    assert!(raw.next().await.created);
}

#[tokio::test]
async fn an_informer_factory_watches_every_kind_over_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let client = Client::connect_to(&format!("http://{}", server.addr))
        .await
        .unwrap();
    let factory = InformerFactory::new(client.clone());
    let pods = factory.all::<Pod>();
    let secrets = factory.all::<Secret>();
    let maps = factory.all::<ConfigMap>();
    eventually(
        "three watches on the stream",
        Duration::from_secs(10),
        async || (factory.multiplexer().open_watches() == 3).then_some(()),
    )
    .await;
    assert!(factory.multiplexer().is_multiplexing());
    client.pods("default").create(&pod("p")).await.unwrap();
    client
        .secrets("default")
        .create(&secret("s"))
        .await
        .unwrap();
    eventually(
        "both objects in the stores",
        Duration::from_secs(10),
        async || {
            (pods.store().get(&ObjectKey::new("default", "p")).is_some()
                && secrets
                    .store()
                    .get(&ObjectKey::new("default", "s"))
                    .is_some())
            .then_some(())
        },
    )
    .await;
    assert!(maps.store().list().is_empty());
}
