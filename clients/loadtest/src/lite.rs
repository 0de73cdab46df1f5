//! A watch client that decodes only what the load test needs from each
//! event (its type and resource version), so that the load generator spends
//! its CPU on receiving, not on building objects it throws away. On the wire
//! it is the same `Watch<Kind>s` call any client makes.

use futures::Stream;
use skiff::client::Transport;
use skiff::params::WatchParams;
use tonic::codegen::http::uri::PathAndQuery;

/// An event, decoded shallowly.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteEvent {
    /// Event type.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// The object, metadata only.
    #[prost(message, optional, tag = "2")]
    pub object: Option<LiteObject>,
}

/// An object, metadata (and a pod's node) only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteObject {
    /// Its metadata.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<LiteMeta>,
    /// A pod's spec, node name only.
    #[prost(message, optional, tag = "2")]
    pub spec: Option<LitePodSpec>,
    /// A pod's status, phase only.
    #[prost(message, optional, tag = "3")]
    pub status: Option<LitePodStatus>,
}

/// The part of metadata the load test reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteMeta {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Resource version.
    #[prost(string, tag = "5")]
    pub resource_version: String,
}

/// The part of a pod spec the load test reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LitePodSpec {
    /// Node the pod is bound to.
    #[prost(string, tag = "8")]
    pub node_name: String,
}

/// The part of a pod status the load test reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LitePodStatus {
    /// Phase.
    #[prost(string, tag = "1")]
    pub phase: String,
}

impl LiteEvent {
    /// The object's name.
    pub fn name(&self) -> &str {
        self.object
            .as_ref()
            .and_then(|o| o.metadata.as_ref())
            .map(|m| m.name.as_str())
            .unwrap_or("")
    }

    /// A pod's node name.
    pub fn node_name(&self) -> &str {
        self.object
            .as_ref()
            .and_then(|o| o.spec.as_ref())
            .map(|s| s.node_name.as_str())
            .unwrap_or("")
    }
}

/// Same request message as `WatchPodsRequest`, in the fields the test sets.
#[derive(Clone, PartialEq, prost::Message)]
struct LiteWatchRequest {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    label_selector: String,
    #[prost(string, tag = "3")]
    field_selector: String,
    #[prost(string, tag = "4")]
    resource_version: String,
    #[prost(bool, tag = "5")]
    allow_bookmarks: bool,
}

impl From<WatchParams> for LiteWatchRequest {
    fn from(params: WatchParams) -> Self {
        LiteWatchRequest {
            namespace: params.namespace,
            label_selector: params.label_selector,
            field_selector: params.field_selector,
            resource_version: params.resource_version,
            allow_bookmarks: params.allow_bookmarks,
        }
    }
}

/// Opens `WatchPods` and decodes events shallowly.
pub async fn watch_pods(
    transport: Transport,
    params: WatchParams,
) -> Result<impl Stream<Item = Result<LiteEvent, tonic::Status>>, tonic::Status> {
    let mut grpc = ready_client(transport).await?;
    let request = LiteWatchRequest::from(params);
    let codec = tonic_prost::ProstCodec::<LiteWatchRequest, LiteEvent>::default();
    let path = PathAndQuery::from_static("/skiff.core.v1.PodService/WatchPods");
    let response = grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await?;
    Ok(response.into_inner())
}

/// An event of a `WatchPods` stream as the fan-out benchmark reads it:
/// its type and its object's resource version (0 if absent).
pub fn scan_event(msg: &[u8]) -> Result<(i32, u64), crate::scan::Malformed> {
    use crate::scan::{Value, each_field, object_resource_version};
    let (mut event_type, mut rv) = (0, 0);
    let mut object = None;
    each_field(msg, |tag, v| match (tag, v) {
        (1, Value::Varint(t)) => event_type = t as i32,
        (2, Value::Bytes(o)) => object = Some(o),
        _ => {}
    })?;
    if let Some(o) = object {
        rv = object_resource_version(o)?;
    }
    Ok((event_type, rv))
}

/// Opens `WatchPods`; each event is read in place for its type and
/// resource version ([`scan_event`]).
pub async fn watch_pod_revisions(
    transport: Transport,
    params: WatchParams,
) -> Result<impl Stream<Item = Result<(i32, u64), tonic::Status>>, tonic::Status> {
    let mut grpc = ready_client(transport).await?;
    let codec = crate::scan::ScanCodec::<LiteWatchRequest, (i32, u64)>::new(scan_event);
    let path = PathAndQuery::from_static("/skiff.core.v1.PodService/WatchPods");
    let response = grpc
        .server_streaming(
            tonic::Request::new(LiteWatchRequest::from(params)),
            path,
            codec,
        )
        .await?;
    Ok(response.into_inner())
}

/// etcd's `WatchRequest` with a create request (the fields the benchmark sets).
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdWatchRequest {
    #[prost(message, optional, tag = "1")]
    create_request: Option<EtcdWatchCreateRequest>,
}

/// etcd's `WatchCreateRequest`: a range of keys.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdWatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    range_end: Vec<u8>,
}

/// An etcd `WatchResponse` as the benchmark reads it: whether the watch
/// was created or canceled (and why), and each event's mod revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdWatchScan {
    /// The watch is established.
    pub created: bool,
    /// The watch ended; why.
    pub canceled: Option<String>,
    /// The mod revision of each event's key-value, in order.
    pub revisions: Vec<u64>,
}

fn scan_etcd_response(msg: &[u8]) -> Result<EtcdWatchScan, crate::scan::Malformed> {
    use crate::scan::{Value, bytes_field, each_field};
    let mut r = EtcdWatchScan::default();
    let (mut canceled, mut reason) = (false, String::new());
    let mut events = Vec::new();
    each_field(msg, |tag, v| match (tag, v) {
        (3, Value::Varint(b)) => r.created = b != 0,
        (4, Value::Varint(b)) => canceled = b != 0,
        (6, Value::Bytes(why)) => reason = String::from_utf8_lossy(why).into_owned(),
        (11, Value::Bytes(event)) => events.push(event),
        _ => {}
    })?;
    for event in events {
        // mvccpb.Event: kv = 2; KeyValue: mod_revision = 3.
        let mut rev = 0;
        if let Some(kv) = bytes_field(event, 2)? {
            each_field(kv, |tag, v| {
                if let (3, Value::Varint(n)) = (tag, v) {
                    rev = n;
                }
            })?;
        }
        r.revisions.push(rev);
    }
    if canceled {
        r.canceled = Some(reason);
    }
    Ok(r)
}

/// Opens one etcd watch (its own `Watch` stream, as etcd's clients open)
/// on every key under `prefix`, responses read in place; the first
/// response (the watch created) is consumed here.
pub async fn etcd_watch_prefix(
    channel: tonic::transport::Channel,
    prefix: &str,
) -> Result<impl Stream<Item = Result<EtcdWatchScan, tonic::Status>> + use<>, tonic::Status> {
    use futures::StreamExt;
    let mut grpc = ready_client(channel).await?;
    let mut range_end = prefix.as_bytes().to_vec();
    // The end of a prefix: its last byte plus one (the prefix ends in '/').
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }
    let create = EtcdWatchRequest {
        create_request: Some(EtcdWatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end,
        }),
    };
    // The create, then nothing: the stream stays open.
    let requests = futures::stream::once(async move { create }).chain(futures::stream::pending());
    let codec = crate::scan::ScanCodec::<EtcdWatchRequest, EtcdWatchScan>::new(scan_etcd_response);
    let path = PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let mut stream = grpc
        .streaming(tonic::Request::new(requests), path, codec)
        .await?
        .into_inner();
    match stream.next().await {
        Some(Ok(r)) if r.created => Ok(stream),
        Some(Ok(r)) => Err(tonic::Status::internal(format!(
            "etcd did not create the watch: {r:?}"
        ))),
        Some(Err(e)) => Err(e),
        None => Err(tonic::Status::unavailable("etcd ended the watch stream")),
    }
}

/// `ListPods` request (same fields as the API's).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteListRequest {
    /// Namespace.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// Resource version ("" consistent, "0" any).
    #[prost(string, tag = "4")]
    pub resource_version: String,
    /// Page size (0: all).
    #[prost(int32, tag = "5")]
    pub page_size: i32,
    /// Token of the page to read.
    #[prost(string, tag = "6")]
    pub page_token: String,
}

/// `ListPods` response with the items left encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteList {
    /// Paging.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<LiteListMeta>,
    /// The pods, still encoded.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub items: Vec<bytes::Bytes>,
}

/// List metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteListMeta {
    /// Revision.
    #[prost(string, tag = "1")]
    pub resource_version: String,
    /// Next page.
    #[prost(string, tag = "2")]
    pub next_page_token: String,
}

/// Calls `ListPods`, leaving the items encoded (the client measures the
/// server, not its own decoding).
pub async fn list_pods(
    transport: Transport,
    request: LiteListRequest,
) -> Result<LiteList, tonic::Status> {
    let mut grpc = ready_client(transport).await?;
    let codec = tonic_prost::ProstCodec::<LiteListRequest, LiteList>::default();
    let path = PathAndQuery::from_static("/skiff.core.v1.PodService/ListPods");
    Ok(grpc
        .unary(tonic::Request::new(request), path, codec)
        .await?
        .into_inner())
}

/// A response of the multiplexed watch (`WatchService.Watch`), read with
/// [`crate::scan`]: the fields the load test needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiteMuxResponse {
    /// The watch it is about.
    pub watch_id: i64,
    /// Event type (0 for news about the watch).
    pub r#type: i32,
    /// Whether it carries an object.
    pub has_object: bool,
    /// The object's resource version, 0 if absent.
    pub resource_version: u64,
    /// The watch is established.
    pub created: bool,
    /// The watch has ended.
    pub canceled: bool,
    /// Why it ended, if the server ended it.
    pub error: Option<String>,
}

impl LiteMuxResponse {
    fn scan(msg: &[u8]) -> Result<Self, crate::scan::Malformed> {
        use crate::scan::{Value, bytes_field, each_field, object_resource_version};
        let mut r = LiteMuxResponse::default();
        let mut object = None;
        let mut error = None;
        each_field(msg, |tag, v| match (tag, v) {
            (1, Value::Varint(id)) => r.watch_id = id as i64,
            (2, Value::Varint(t)) => r.r#type = t as i32,
            (3, Value::Bytes(any)) => object = Some(any),
            (4, Value::Varint(b)) => r.created = b != 0,
            (5, Value::Varint(b)) => r.canceled = b != 0,
            (6, Value::Bytes(status)) => error = Some(status),
            _ => {}
        })?;
        if let Some(any) = object {
            r.has_object = true;
            // Any: type_url = 1, value = 2.
            if let Some(value) = bytes_field(any, 2)? {
                r.resource_version = object_resource_version(value)?;
            }
        }
        if let Some(status) = error {
            // google.rpc.Status: message = 2.
            let message = bytes_field(status, 2)?.unwrap_or_default();
            r.error = Some(String::from_utf8_lossy(message).into_owned());
        }
        Ok(r)
    }

    /// The event's resource version, 0 if absent.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }
}

/// Opens one multiplexed watch stream carrying `creates`, responses decoded
/// shallowly (one reader for all its watches, as the SDK's multiplexer
/// has, without building the objects).
pub async fn watch_multiplexed(
    transport: Transport,
    creates: Vec<skiff::api::meta::v1::WatchCreateRequest>,
) -> Result<impl Stream<Item = Result<LiteMuxResponse, tonic::Status>>, tonic::Status> {
    use futures::StreamExt;
    use skiff::api::meta::v1::WatchRequest;
    use skiff::api::meta::v1::watch_request::Request as Op;
    let mut grpc = ready_client(transport).await?;
    // The creates, then nothing: the stream stays open.
    let requests = futures::stream::iter(creates.into_iter().map(|c| WatchRequest {
        request: Some(Op::Create(c)),
    }))
    .chain(futures::stream::pending());
    let codec = crate::scan::ScanCodec::<WatchRequest, LiteMuxResponse>::new(LiteMuxResponse::scan);
    let path = PathAndQuery::from_static("/skiff.meta.v1.WatchService/Watch");
    let response = grpc
        .streaming(tonic::Request::new(requests), path, codec)
        .await?;
    Ok(response.into_inner())
}

/// A gRPC client over `service` with no decoding limit, once the
/// connection is ready.
async fn ready_client<T>(service: T) -> Result<tonic::client::Grpc<T>, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut grpc = tonic::client::Grpc::new(service).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {}", e.into())))?;
    Ok(grpc)
}
