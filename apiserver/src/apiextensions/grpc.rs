//! The gRPC methods of defined kinds: a layer in front of the API's own
//! routes that answers `/<package>.<Kind>Service/<Method>` for every kind
//! served now. Requests are decoded with the synthesized service's
//! descriptors (a request that is not the message is INVALID_ARGUMENT),
//! the object re-encoded in field order, and the call made on the kind's
//! generic service: the same code paths, errors and checks as a built-in
//! kind. Responses are the wire shape of the API's own (the object in
//! field 1; lists and watch events as [`skiff::wire`] writes them).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use skiff::api::meta::v1::Preconditions;
use skiff::dynamic_object::DynamicObject;
use skiff::params::{DeleteParams, GetParams, ListParams, WatchParams};
use skiff::server::{ResourceService, read_unary_message, streaming_response, unary_response};
use tonic::{Request, Status};
use tower::{Layer, Service};

use super::{DefinedKind, DefinedKinds};
use crate::registry::MAX_OBJECT_BYTES;

type HttpResponse = http::Response<tonic::body::Body>;

/// Serves defined kinds' methods in front of the routes it wraps.
#[derive(Clone)]
pub struct DefinedKindsLayer {
    kinds: Arc<DefinedKinds>,
}

impl DefinedKindsLayer {
    /// A layer serving `kinds`.
    pub fn new(kinds: Arc<DefinedKinds>) -> Self {
        Self { kinds }
    }
}

impl<S> Layer<S> for DefinedKindsLayer {
    type Service = DefinedKindsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DefinedKindsService {
            inner,
            kinds: self.kinds.clone(),
        }
    }
}

/// The service of [`DefinedKindsLayer`].
#[derive(Clone)]
pub struct DefinedKindsService<S> {
    inner: S,
    kinds: Arc<DefinedKinds>,
}

impl<S> Service<http::Request<tonic::body::Body>> for DefinedKindsService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = HttpResponse> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (service, method) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        // The API's own services (package skiff.*, which a definition may
        // not use) go straight on, with no lookup.
        if !service.starts_with("skiff.")
            && let Some(kind) = self.kinds.by_service(service)
        {
            let method = method.to_owned();
            return Box::pin(async move { Ok(serve(kind, &method, req).await) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// One call to a defined kind's method.
async fn serve(
    kind: Arc<DefinedKind>,
    method: &str,
    req: http::Request<tonic::body::Body>,
) -> HttpResponse {
    let (parts, body) = req.into_parts();
    let Some(desc) = kind.schema.service.methods().find(|m| m.name() == method) else {
        return Status::unimplemented(format!(
            "{} has no method {method}",
            kind.schema.service.full_name()
        ))
        .into_http();
    };
    let bytes = match read_unary_message(body, MAX_OBJECT_BYTES + 1024).await {
        Ok(b) => b,
        Err(status) => return status.into_http(),
    };
    let input = match DynamicMessage::decode(desc.input(), bytes) {
        Ok(m) => m,
        Err(e) => {
            return Status::invalid_argument(format!(
                "the request is not a {}: {e}",
                desc.input().full_name()
            ))
            .into_http();
        }
    };
    let request = |message| request_of(&parts, message);
    let s = &kind.schema;
    let server = &*kind.server;
    let result: Result<Bytes, Status> = if method == format!("Create{}", s.kind) {
        match object_of(&input, s, false) {
            Ok(obj) => server.create(request(obj)).await.map(|o| in_field_one(&o)),
            Err(e) => Err(e),
        }
    } else if method == format!("Update{}", s.kind) {
        match object_of(&input, s, false) {
            Ok(obj) => server.update(request(obj)).await.map(|o| in_field_one(&o)),
            Err(e) => Err(e),
        }
    } else if method == format!("Update{}Status", s.kind) {
        match object_of(&input, s, true) {
            Ok(obj) => server
                .update_status(request(obj))
                .await
                .map(|o| in_field_one(&o)),
            Err(e) => Err(e),
        }
    } else if method == format!("Get{}", s.kind) {
        let p = GetParams {
            namespace: text(&input, "namespace"),
            name: text(&input, "name"),
            resource_version: text(&input, "resource_version"),
        };
        server
            .get(request_of(&parts, p))
            .await
            .map(|o| in_field_one(&o))
    } else if method == format!("Delete{}", s.kind) {
        let p = DeleteParams {
            namespace: text(&input, "namespace"),
            name: text(&input, "name"),
            preconditions: message_field(&input, "preconditions")
                .and_then(|b| Preconditions::decode(b).ok()),
            propagation_policy: text(&input, "propagation_policy"),
            grace_period_seconds: input
                .get_field_by_name("grace_period_seconds")
                .filter(|_| input.has_field_by_name("grace_period_seconds"))
                .and_then(|v| v.as_i64()),
        };
        server
            .delete(request_of(&parts, p))
            .await
            .map(|o| in_field_one(&o))
    } else if method == format!("List{}", s.plural_camel) {
        let p = ListParams {
            namespace: text(&input, "namespace"),
            label_selector: text(&input, "label_selector"),
            field_selector: text(&input, "field_selector"),
            resource_version: text(&input, "resource_version"),
            page_size: input
                .get_field_by_name("page_size")
                .and_then(|v| v.as_i32())
                .unwrap_or(0),
            page_token: text(&input, "page_token"),
        };
        server
            .list(request_of(&parts, p))
            .await
            .map(|l| Bytes::from(l.encode_to_vec()))
    } else if method == format!("Watch{}", s.plural_camel) {
        let p = WatchParams {
            namespace: text(&input, "namespace"),
            label_selector: text(&input, "label_selector"),
            field_selector: text(&input, "field_selector"),
            resource_version: text(&input, "resource_version"),
            allow_bookmarks: flag(&input, "allow_bookmarks"),
            send_initial_events: flag(&input, "send_initial_events"),
            timeout_seconds: input
                .get_field_by_name("timeout_seconds")
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
        };
        return match server.watch(request_of(&parts, p)).await {
            Ok(stream) => streaming_response(Box::pin(stream.map(|r| r))),
            Err(status) => status.into_http(),
        };
    } else {
        Err(Status::unimplemented(format!(
            "{} has no method {method}",
            s.service.full_name()
        )))
    };
    match result {
        Ok(message) => unary_response(&message),
        Err(status) => status.into_http(),
    }
}

/// A request of `message` with the call's metadata and extensions.
fn request_of<T>(parts: &http::request::Parts, message: T) -> Request<T> {
    Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers.clone()),
        parts.extensions.clone(),
        message,
    )
}

/// The object a Create/Update request carries (field 1), its constraints
/// checked (only its status' for a status update), re-encoded in field
/// order with unknown fields dropped.
fn object_of(
    input: &DynamicMessage,
    schema: &super::schema::KindSchema,
    status_only: bool,
) -> Result<DynamicObject, Status> {
    let field = input
        .descriptor()
        .get_field(1)
        .ok_or_else(|| Status::internal("the request message has no field 1"))?;
    if !input.has_field(&field) {
        return Err(skiff::server::missing_field(field.name()));
    }
    let Value::Message(mut object) = input.get_field(&field).into_owned() else {
        return Err(Status::internal("field 1 of the request is not a message"));
    };
    drop_unknown(&mut object);
    let violations = if status_only {
        super::validate::validate_status(&object)
    } else {
        super::validate::validate(&object)
    };
    if !violations.is_empty() {
        let name = match object.get_field_by_name("metadata").as_deref() {
            Some(Value::Message(meta)) => meta
                .get_field_by_name("name")
                .and_then(|n| n.as_str().map(str::to_owned))
                .unwrap_or_default(),
            _ => String::new(),
        };
        return Err(crate::error::ApiError::Invalid {
            kind: schema.kind.clone(),
            name,
            violations,
        }
        .into());
    }
    DynamicObject::decode(Bytes::from(object.encode_to_vec()))
        .map_err(|e| Status::invalid_argument(format!("{}: {e}", field.name())))
}

/// Removes unknown fields at every level.
fn drop_unknown(message: &mut DynamicMessage) {
    let _ = message.take_unknown_fields();
    let desc: MessageDescriptor = message.descriptor();
    for field in desc.fields() {
        if !message.has_field(&field) {
            continue;
        }
        match message.get_field_mut(&field) {
            Value::Message(m) => drop_unknown(m),
            Value::List(items) => {
                for item in items {
                    if let Value::Message(m) = item {
                        drop_unknown(m);
                    }
                }
            }
            Value::Map(entries) => {
                for v in entries.values_mut() {
                    if let Value::Message(m) = v {
                        drop_unknown(m);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `message` as field 1 of a response.
fn in_field_one(object: &DynamicObject) -> Bytes {
    let mut out = Vec::with_capacity(object.encoded_len() + 6);
    prost::encoding::message::encode(1, object, &mut out);
    Bytes::from(out)
}

fn text(m: &DynamicMessage, name: &str) -> String {
    m.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn flag(m: &DynamicMessage, name: &str) -> bool {
    m.get_field_by_name(name)
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

fn message_field(m: &DynamicMessage, name: &str) -> Option<Bytes> {
    if !m.has_field_by_name(name) {
        return None;
    }
    match m.get_field_by_name(name)?.into_owned() {
        Value::Message(inner) => Some(Bytes::from(inner.encode_to_vec())),
        _ => None,
    }
}
