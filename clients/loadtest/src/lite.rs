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

    /// The event's resource version, 0 if absent.
    pub fn resource_version(&self) -> u64 {
        self.object
            .as_ref()
            .and_then(|o| o.metadata.as_ref())
            .and_then(|m| m.resource_version.parse().ok())
            .unwrap_or(0)
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

/// Opens `WatchPods` and decodes events shallowly.
pub async fn watch_pods(
    transport: Transport,
    params: WatchParams,
) -> Result<impl Stream<Item = Result<LiteEvent, tonic::Status>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(transport).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
    let request = LiteWatchRequest {
        namespace: params.namespace,
        label_selector: params.label_selector,
        field_selector: params.field_selector,
        resource_version: params.resource_version,
        allow_bookmarks: params.allow_bookmarks,
    };
    let codec = tonic_prost::ProstCodec::<LiteWatchRequest, LiteEvent>::default();
    let path = PathAndQuery::from_static("/skiff.core.v1.PodService/WatchPods");
    let response = grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await?;
    Ok(response.into_inner())
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
    let mut grpc = tonic::client::Grpc::new(transport).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<LiteListRequest, LiteList>::default();
    let path = PathAndQuery::from_static("/skiff.core.v1.PodService/ListPods");
    Ok(grpc
        .unary(tonic::Request::new(request), path, codec)
        .await?
        .into_inner())
}

/// A response of the multiplexed watch (`WatchService.Watch`), decoded
/// shallowly: the packed object is read as a [`LiteObject`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteMuxResponse {
    /// The watch it is about.
    #[prost(int64, tag = "1")]
    pub watch_id: i64,
    /// Event type (0 for news about the watch).
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    /// The packed object.
    #[prost(message, optional, tag = "3")]
    pub object: Option<LiteAny>,
    /// The watch is established.
    #[prost(bool, tag = "4")]
    pub created: bool,
    /// The watch has ended.
    #[prost(bool, tag = "5")]
    pub canceled: bool,
    /// Why it ended, if the server ended it.
    #[prost(message, optional, tag = "6")]
    pub error: Option<LiteStatus>,
}

/// `google.protobuf.Any` whose value is read as an object's metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteAny {
    /// The packed object (Any's `value` bytes are its encoding).
    #[prost(message, optional, tag = "2")]
    pub value: Option<LiteObject>,
}

/// `google.rpc.Status`, code and message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteStatus {
    /// Status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Message.
    #[prost(string, tag = "2")]
    pub message: String,
}

impl LiteMuxResponse {
    /// The event's resource version, 0 if absent.
    pub fn resource_version(&self) -> u64 {
        self.object
            .as_ref()
            .and_then(|a| a.value.as_ref())
            .and_then(|o| o.metadata.as_ref())
            .and_then(|m| m.resource_version.parse().ok())
            .unwrap_or(0)
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
    let mut grpc = tonic::client::Grpc::new(transport).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
    // The creates, then nothing: the stream stays open.
    let requests = futures::stream::iter(creates.into_iter().map(|c| WatchRequest {
        request: Some(Op::Create(c)),
    }))
    .chain(futures::stream::pending());
    let codec = tonic_prost::ProstCodec::<WatchRequest, LiteMuxResponse>::default();
    let path = PathAndQuery::from_static("/skiff.meta.v1.WatchService/Watch");
    let response = grpc
        .streaming(tonic::Request::new(requests), path, codec)
        .await?;
    Ok(response.into_inner())
}
