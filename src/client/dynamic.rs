//! The dynamic client: any kind's service called with `DynamicMessage`s
//! built from the API's descriptors, so tools (the command line) serve every
//! kind, present and future, with no per-kind code.

use std::pin::Pin;

use bytes::Buf;
use futures::{Stream, StreamExt};
use prost::Message;
use prost_reflect::{
    DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage, ServiceDescriptor, Value,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use super::error::{Error, Result};
use super::transport::Transport;
use crate::KindInfo;
use crate::api::meta::v1::{EventType, ListMeta};
use crate::params::{DeleteParams, ListParams, WatchParams};

/// Descriptors of one kind: its message and its service.
#[derive(Debug, Clone)]
pub struct DynamicKind {
    /// Static facts.
    pub info: &'static KindInfo,
    /// The kind's message.
    pub message: MessageDescriptor,
    /// The kind's service.
    pub service: ServiceDescriptor,
    /// Extra `skiff get` columns (heading, field path) of a kind defined
    /// at run time; empty for the API's own kinds.
    pub printer_columns: Vec<(String, String)>,
}

/// Kinds this process learnt from the server's resource definitions.
static DEFINED: std::sync::RwLock<Vec<DynamicKind>> = std::sync::RwLock::new(Vec::new());

/// The kinds learnt from resource definitions so far.
pub fn defined_kinds() -> Vec<DynamicKind> {
    DEFINED
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Learns the kinds `definitions` serve (from the descriptors in their
/// status, so only established ones), in place of those learnt before
/// under the same names; returns how many kinds are known from definitions.
/// Their facts live as long as the process.
pub fn learn_definitions(
    definitions: &[crate::api::apiextensions::v1::ResourceDefinition],
) -> usize {
    let mut learnt = Vec::new();
    for def in definitions {
        let (Some(spec), Some(status)) = (&def.spec, &def.status) else {
            continue;
        };
        if status.served_descriptor_set.is_empty() {
            continue;
        }
        let mut pool = crate::descriptor::pool().clone();
        if pool
            .decode_file_descriptor_set(&status.served_descriptor_set[..])
            .is_err()
        {
            continue;
        }
        for k in &spec.kinds {
            let Some(message) = pool.get_message_by_name(&k.message) else {
                continue;
            };
            let package = message.package_name().to_owned();
            let service_name = format!("{package}.{}Service", message.name());
            let Some(service) = pool.get_service_by_name(&service_name) else {
                continue;
            };
            let version = package.rsplit('.').next().unwrap_or_default().to_owned();
            let has_status = service
                .methods()
                .any(|m| m.name() == format!("Update{}Status", message.name()));
            let short: Vec<&'static str> = k.short_names.iter().cloned().map(leak).collect();
            let info: &'static KindInfo = Box::leak(Box::new(KindInfo {
                kind: leak(message.name().to_owned()),
                plural: leak(k.plural.clone()),
                group: leak(spec.group.clone()),
                version: leak(version.clone()),
                api_version: leak(format!("{}/{version}", spec.group)),
                namespaced: k.scope != "Cluster",
                has_status,
                short_names: Box::leak(short.into_boxed_slice()),
                message_name: leak(message.full_name().to_owned()),
                service_name: leak(service_name),
            }));
            learnt.push(DynamicKind {
                info,
                message,
                service,
                printer_columns: k
                    .printer_columns
                    .iter()
                    .map(|c| (c.name.clone(), c.path.clone()))
                    .collect(),
            });
        }
    }
    let mut known = DEFINED
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    known.retain(|k| {
        !learnt
            .iter()
            .any(|n| n.info.plural == k.info.plural && n.info.group == k.info.group)
    });
    known.extend(learnt);
    known.len()
}

impl DynamicKind {
    /// Looks a kind up by any of its names (`pods`, `po`, `Pod`; `widgets`
    /// or `widgets.acme.example.com` for a learnt kind): the API's own
    /// kinds first, then those learnt from definitions.
    pub fn find(name: &str) -> Option<Self> {
        let short = name.split('.').next().unwrap_or(name);
        if let Some(info) = KindInfo::find(short) {
            return Some(Self::of(info));
        }
        let defined = defined_kinds();
        defined
            .iter()
            .find(|k| {
                name.split_once('.')
                    .is_some_and(|(p, g)| k.info.plural == p && k.info.group == g)
            })
            .or_else(|| defined.iter().find(|k| k.info.matches(short)))
            .cloned()
    }

    /// Looks a kind up by manifest `apiVersion` and `kind`.
    pub fn by_api_version(api_version: &str, kind: &str) -> Option<Self> {
        if let Some(info) = KindInfo::by_api_version(api_version, kind) {
            return Some(Self::of(info));
        }
        defined_kinds()
            .into_iter()
            .find(|k| k.info.api_version == api_version && k.info.kind == kind)
    }

    /// Descriptors of `info`'s kind.
    pub fn of(info: &'static KindInfo) -> Self {
        if let Some(k) = defined_kinds()
            .into_iter()
            .find(|k| std::ptr::eq(k.info, info))
        {
            return k;
        }
        let pool = crate::descriptor::pool();
        let message = pool
            .get_message_by_name(info.message_name)
            .expect("every kind's message is in the descriptor set");
        let service = pool
            .get_service_by_name(info.service_name)
            .expect("every kind's service is in the descriptor set");
        Self {
            info,
            message,
            service,
            printer_columns: Vec::new(),
        }
    }

    /// A method of the kind's service, e.g. `Create` + kind.
    pub fn method(&self, name: &str) -> Option<MethodDescriptor> {
        self.service.methods().find(|m| m.name() == name)
    }

    fn method_or_err(&self, name: &str) -> Result<MethodDescriptor> {
        self.method(name).ok_or_else(|| {
            Error::Other(tonic::Status::unimplemented(format!(
                "{} has no {name}",
                self.info.kind
            )))
        })
    }

    /// Name of the field that carries the object in requests and responses.
    pub fn object_field(&self) -> String {
        snake(self.info.kind)
    }

    fn plural_camel(&self) -> String {
        self.service
            .methods()
            .find_map(|m| m.name().strip_prefix("List").map(str::to_owned))
            .unwrap_or_else(|| format!("{}s", self.info.kind))
    }
}

fn snake(name: &str) -> String {
    let mut s = String::new();
    for (i, ch) in name.char_indices() {
        if i > 0 && ch.is_uppercase() {
            s.push('_');
        }
        s.push(ch.to_ascii_lowercase());
    }
    s
}

/// A codec of dynamic messages whose responses decode as `response`.
#[derive(Clone)]
struct DynamicCodec {
    response: MessageDescriptor,
}

struct DynamicEncoder;
struct DynamicDecoder(MessageDescriptor);

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let mut msg = DynamicMessage::new(self.0.clone());
        msg.merge(src.copy_to_bytes(src.remaining()))
            .map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))?;
        Ok(Some(msg))
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.response.clone())
    }
}

/// Calls any kind's service with dynamic messages.
#[derive(Clone)]
pub struct DynamicClient {
    transport: Transport,
}

/// A stream of (event type, object) from a dynamic watch.
pub type DynamicWatch = Pin<Box<dyn Stream<Item = Result<(EventType, DynamicMessage)>> + Send>>;

impl DynamicClient {
    /// A dynamic client over `transport`.
    pub fn new(transport: Transport) -> Self {
        Self { transport }
    }

    /// Learns the kinds the server's resource definitions serve (see
    /// [`learn_definitions`]); returns how many are known.
    pub async fn learn_defined_kinds(&self) -> Result<usize> {
        use crate::client::ResourceClient;
        let list = crate::api::apiextensions::v1::ResourceDefinition::list_in(
            self.transport.clone(),
            ListParams {
                resource_version: "0".into(),
                ..Default::default()
            },
        )
        .await?;
        Ok(learn_definitions(&list.items))
    }

    fn path(method: &MethodDescriptor) -> Result<PathAndQuery> {
        format!("/{}/{}", method.parent_service().full_name(), method.name())
            .parse()
            .map_err(|e| Error::Other(tonic::Status::internal(format!("bad method path: {e}"))))
    }

    /// A unary call of `method` with `request`.
    pub async fn call(
        &self,
        method: &MethodDescriptor,
        request: DynamicMessage,
    ) -> Result<DynamicMessage> {
        let mut grpc =
            tonic::client::Grpc::new(self.transport.clone()).max_decoding_message_size(usize::MAX);
        grpc.ready().await.map_err(|e| Error::Unavailable {
            message: format!("connection not ready: {e}"),
            retry_after: None,
        })?;
        let codec = DynamicCodec {
            response: method.output(),
        };
        let r = grpc
            .unary(tonic::Request::new(request), Self::path(method)?, codec)
            .await?;
        Ok(r.into_inner())
    }

    fn request(method: &MethodDescriptor) -> DynamicMessage {
        DynamicMessage::new(method.input())
    }

    fn set(msg: &mut DynamicMessage, field: &str, value: Value) {
        if msg.descriptor().get_field_by_name(field).is_some() {
            msg.set_field_by_name(field, value);
        }
    }

    fn object_of(kind: &DynamicKind, response: DynamicMessage) -> Result<DynamicMessage> {
        match response.get_field_by_name(&kind.object_field()).as_deref() {
            Some(Value::Message(m)) => Ok(m.clone()),
            _ => Err(Error::Other(tonic::Status::internal(
                "the response has no object",
            ))),
        }
    }

    async fn with_object(
        &self,
        kind: &DynamicKind,
        verb: &str,
        obj: DynamicMessage,
    ) -> Result<DynamicMessage> {
        let method = kind.method_or_err(&format!("{verb}{}", kind.info.kind))?;
        let mut req = Self::request(&method);
        req.set_field_by_name(&kind.object_field(), Value::Message(obj));
        Self::object_of(kind, self.call(&method, req).await?)
    }

    /// Creates an object.
    pub async fn create(&self, kind: &DynamicKind, obj: DynamicMessage) -> Result<DynamicMessage> {
        self.with_object(kind, "Create", obj).await
    }

    /// Replaces an object's spec and metadata.
    pub async fn update(&self, kind: &DynamicKind, obj: DynamicMessage) -> Result<DynamicMessage> {
        self.with_object(kind, "Update", obj).await
    }

    /// Reads one object.
    pub async fn get(
        &self,
        kind: &DynamicKind,
        namespace: &str,
        name: &str,
    ) -> Result<DynamicMessage> {
        let method = kind.method_or_err(&format!("Get{}", kind.info.kind))?;
        let mut req = Self::request(&method);
        Self::set(&mut req, "namespace", Value::String(namespace.to_owned()));
        Self::set(&mut req, "name", Value::String(name.to_owned()));
        Self::object_of(kind, self.call(&method, req).await?)
    }

    /// Deletes an object.
    pub async fn delete(
        &self,
        kind: &DynamicKind,
        params: &DeleteParams,
    ) -> Result<DynamicMessage> {
        let method = kind.method_or_err(&format!("Delete{}", kind.info.kind))?;
        let mut req = Self::request(&method);
        Self::set(
            &mut req,
            "namespace",
            Value::String(params.namespace.clone()),
        );
        Self::set(&mut req, "name", Value::String(params.name.clone()));
        Self::set(
            &mut req,
            "propagation_policy",
            Value::String(params.propagation_policy.clone()),
        );
        if let Some(g) = params.grace_period_seconds {
            Self::set(&mut req, "grace_period_seconds", Value::I64(g));
        }
        Self::object_of(kind, self.call(&method, req).await?)
    }

    /// Lists one page of objects.
    pub async fn list(
        &self,
        kind: &DynamicKind,
        params: &ListParams,
    ) -> Result<(Vec<DynamicMessage>, ListMeta)> {
        let method = kind.method_or_err(&format!("List{}", kind.plural_camel()))?;
        let mut req = Self::request(&method);
        Self::set(
            &mut req,
            "namespace",
            Value::String(params.namespace.clone()),
        );
        Self::set(
            &mut req,
            "label_selector",
            Value::String(params.label_selector.clone()),
        );
        Self::set(
            &mut req,
            "field_selector",
            Value::String(params.field_selector.clone()),
        );
        Self::set(
            &mut req,
            "resource_version",
            Value::String(params.resource_version.clone()),
        );
        Self::set(&mut req, "page_size", Value::I32(params.page_size));
        Self::set(
            &mut req,
            "page_token",
            Value::String(params.page_token.clone()),
        );
        let resp = self.call(&method, req).await?;
        let meta = match resp.get_field_by_number(1).as_deref() {
            Some(Value::Message(m)) => m.transcode_to::<ListMeta>().unwrap_or_default(),
            _ => ListMeta::default(),
        };
        let items = match resp.get_field_by_number(2).as_deref() {
            Some(Value::List(l)) => l.iter().filter_map(|v| v.as_message().cloned()).collect(),
            _ => Vec::new(),
        };
        Ok((items, meta))
    }

    /// Lists every page.
    pub async fn list_all(
        &self,
        kind: &DynamicKind,
        params: &ListParams,
    ) -> Result<(Vec<DynamicMessage>, ListMeta)> {
        let mut params = params.clone();
        let mut all = Vec::new();
        loop {
            let (items, meta) = self.list(kind, &params).await?;
            all.extend(items);
            if meta.next_page_token.is_empty() {
                return Ok((all, meta));
            }
            // Later pages are read at the first page's revision, which
            // the token carries; the server refuses a version beside it.
            params.resource_version.clear();
            params.page_token = meta.next_page_token;
        }
    }

    /// Streams changes.
    pub async fn watch(&self, kind: &DynamicKind, params: &WatchParams) -> Result<DynamicWatch> {
        let method = kind.method_or_err(&format!("Watch{}", kind.plural_camel()))?;
        let mut req = Self::request(&method);
        Self::set(
            &mut req,
            "namespace",
            Value::String(params.namespace.clone()),
        );
        Self::set(
            &mut req,
            "label_selector",
            Value::String(params.label_selector.clone()),
        );
        Self::set(
            &mut req,
            "field_selector",
            Value::String(params.field_selector.clone()),
        );
        Self::set(
            &mut req,
            "resource_version",
            Value::String(params.resource_version.clone()),
        );
        Self::set(
            &mut req,
            "allow_bookmarks",
            Value::Bool(params.allow_bookmarks),
        );
        Self::set(
            &mut req,
            "send_initial_events",
            Value::Bool(params.send_initial_events),
        );
        Self::set(
            &mut req,
            "timeout_seconds",
            Value::I64(params.timeout_seconds),
        );
        let mut grpc =
            tonic::client::Grpc::new(self.transport.clone()).max_decoding_message_size(usize::MAX);
        grpc.ready().await.map_err(|e| Error::Unavailable {
            message: format!("connection not ready: {e}"),
            retry_after: None,
        })?;
        let codec = DynamicCodec {
            response: method.output(),
        };
        let stream = grpc
            .server_streaming(tonic::Request::new(req), Self::path(&method)?, codec)
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|item| {
            let msg = item?;
            let t = match msg.get_field_by_number(1).as_deref() {
                Some(Value::EnumNumber(n)) => {
                    EventType::try_from(*n).unwrap_or(EventType::Unspecified)
                }
                _ => EventType::Unspecified,
            };
            let obj = match msg.get_field_by_number(2).as_deref() {
                Some(Value::Message(m)) => m.clone(),
                _ => {
                    return Err(Error::Other(tonic::Status::internal(
                        "a watch event without an object",
                    )));
                }
            };
            Ok((t, obj))
        })))
    }

    /// Calls `Scale<Kind>` for kinds that have one.
    pub async fn scale(
        &self,
        kind: &DynamicKind,
        namespace: &str,
        name: &str,
        replicas: i32,
    ) -> Result<DynamicMessage> {
        let method = kind
            .method(&format!("Scale{}", kind.info.kind))
            .ok_or_else(|| Error::Invalid {
                message: format!("{} cannot be scaled", kind.info.plural),
                fields: vec![],
            })?;
        let mut req = Self::request(&method);
        Self::set(&mut req, "namespace", Value::String(namespace.to_owned()));
        Self::set(&mut req, "name", Value::String(name.to_owned()));
        Self::set(&mut req, "replicas", Value::I32(replicas));
        Self::object_of(kind, self.call(&method, req).await?)
    }
}
