//! Typed calls of kinds defined at run time by a `ResourceDefinition`.
//!
//! A struct that prost generated from the user's .proto becomes a
//! [`Resource`] and a [`ResourceClient`] with
//! [`defined_resource!`](crate::defined_resource); then [`Api<K>`](super::Api),
//! the watcher, informers, reflectors and controllers serve it as they
//! serve the built-in kinds. The calls go to the service the API server
//! synthesizes (`<package>.<Kind>Service`), whose request and response
//! messages have the built-in kinds' fields and numbers: a namespaced kind's
//! requests are shaped as `Pod`'s, a cluster-scoped kind's as `Node`'s.

use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use tonic::Request;
use tonic_prost::ProstCodec;

pub use tonic::{Status, Streaming};

use super::transport::{Transport, missing_in_response};
use crate::api::core::v1::{
    DeleteNodeRequest, DeletePodRequest, GetNodeRequest, GetPodRequest, ListNodesRequest,
    ListPodsRequest, WatchNodesRequest, WatchPodsRequest,
};
use crate::params::{DeleteParams, GetParams, ListParams, WatchParams};
use crate::resource::{KindInfo, Resource};
use crate::wire::{ListResponse, WatchEvent};

/// A request or response carrying one object as field 1
/// (`CreateWidgetRequest.widget`, `GetWidgetResponse.widget`, …).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Carrier<K>(pub Option<K>);

impl<K: Message + Default> Message for Carrier<K> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(object) = &self.0 {
            prost::encoding::message::encode(1, object, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            prost::encoding::message::merge(
                wire_type,
                self.0.get_or_insert_with(K::default),
                buf,
                ctx,
            )
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |o| prost::encoding::message::encoded_len(1, o))
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

/// The gRPC path of `method` of `info`'s service.
fn path(info: &KindInfo, method: &str) -> Result<PathAndQuery, Status> {
    PathAndQuery::try_from(format!("/{}/{method}", info.service_name))
        .map_err(|e| Status::internal(format!("{}: no valid method path: {e}", info.kind)))
}

/// The plural as the kind's methods spell it (`ListWidgets`).
fn plural_method(info: &KindInfo) -> String {
    crate::names::plural_camel(info.kind, info.plural)
}

/// The field carrying the object (`widget`), for error messages.
fn object_field(info: &KindInfo) -> String {
    let mut out = String::new();
    for (i, c) in info.kind.char_indices() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

async fn ready(transport: Transport) -> Result<tonic::client::Grpc<Transport>, Status> {
    let mut grpc = tonic::client::Grpc::new(transport).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the connection is not ready: {e}")))?;
    Ok(grpc)
}

async fn unary<Req, Resp>(
    transport: Transport,
    path: PathAndQuery,
    request: Req,
) -> Result<Resp, Status>
where
    Req: Message + Send + Sync + 'static,
    Resp: Message + Default + Send + Sync + 'static,
{
    let mut grpc = ready(transport).await?;
    let codec = ProstCodec::<Req, Resp>::default();
    Ok(grpc
        .unary(Request::new(request), path, codec)
        .await?
        .into_inner())
}

/// Sends `object` to `method` and returns the object answered.
async fn carry<K: Resource>(transport: Transport, method: &str, object: K) -> Result<K, Status> {
    let path = path(&K::INFO, method)?;
    let answer: Carrier<K> = unary(transport, path, Carrier(Some(object))).await?;
    answer
        .0
        .ok_or_else(|| missing_in_response(&object_field(&K::INFO)))
}

/// Calls `Create<Kind>`.
pub async fn create<K: Resource>(transport: Transport, object: K) -> Result<K, Status> {
    carry(transport, &format!("Create{}", K::INFO.kind), object).await
}

/// Calls `Update<Kind>`.
pub async fn update<K: Resource>(transport: Transport, object: K) -> Result<K, Status> {
    carry(transport, &format!("Update{}", K::INFO.kind), object).await
}

/// Calls `Update<Kind>Status` (a kind without a status has no such method).
pub async fn update_status<K: Resource>(transport: Transport, object: K) -> Result<K, Status> {
    if !K::INFO.has_status {
        return Err(Status::unimplemented(format!(
            "{} has no status subresource",
            K::INFO.kind
        )));
    }
    carry(transport, &format!("Update{}Status", K::INFO.kind), object).await
}

/// Calls `Get<Kind>`.
pub async fn get<K: Resource>(transport: Transport, p: GetParams) -> Result<K, Status> {
    let info = &K::INFO;
    let path = path(info, &format!("Get{}", info.kind))?;
    let answer: Carrier<K> = if info.namespaced {
        let request = GetPodRequest {
            namespace: p.namespace,
            name: p.name,
            resource_version: p.resource_version,
        };
        unary(transport, path, request).await?
    } else {
        let request = GetNodeRequest {
            name: p.name,
            resource_version: p.resource_version,
        };
        unary(transport, path, request).await?
    };
    answer
        .0
        .ok_or_else(|| missing_in_response(&object_field(info)))
}

/// Calls `Delete<Kind>`.
pub async fn delete<K: Resource>(transport: Transport, p: DeleteParams) -> Result<K, Status> {
    let info = &K::INFO;
    let path = path(info, &format!("Delete{}", info.kind))?;
    let answer: Carrier<K> = if info.namespaced {
        let request = DeletePodRequest {
            namespace: p.namespace,
            name: p.name,
            preconditions: p.preconditions,
            propagation_policy: p.propagation_policy,
            grace_period_seconds: p.grace_period_seconds,
        };
        unary(transport, path, request).await?
    } else {
        let request = DeleteNodeRequest {
            name: p.name,
            preconditions: p.preconditions,
            propagation_policy: p.propagation_policy,
            grace_period_seconds: p.grace_period_seconds,
        };
        unary(transport, path, request).await?
    };
    answer
        .0
        .ok_or_else(|| missing_in_response(&object_field(info)))
}

/// Calls `List<Plural>`.
pub async fn list<K: Resource>(
    transport: Transport,
    p: ListParams,
) -> Result<ListResponse<K>, Status> {
    let info = &K::INFO;
    let path = path(info, &format!("List{}", plural_method(info)))?;
    if info.namespaced {
        let request = ListPodsRequest {
            namespace: p.namespace,
            label_selector: p.label_selector,
            field_selector: p.field_selector,
            resource_version: p.resource_version,
            page_size: p.page_size,
            page_token: p.page_token,
        };
        unary(transport, path, request).await
    } else {
        let request = ListNodesRequest {
            label_selector: p.label_selector,
            field_selector: p.field_selector,
            resource_version: p.resource_version,
            page_size: p.page_size,
            page_token: p.page_token,
        };
        unary(transport, path, request).await
    }
}

/// Calls `Watch<Plural>`.
pub async fn watch<K: Resource>(
    transport: Transport,
    p: WatchParams,
) -> Result<tonic::Streaming<WatchEvent<K>>, Status> {
    let info = &K::INFO;
    let path = path(info, &format!("Watch{}", plural_method(info)))?;
    let mut grpc = ready(transport).await?;
    if info.namespaced {
        let request = WatchPodsRequest {
            namespace: p.namespace,
            label_selector: p.label_selector,
            field_selector: p.field_selector,
            resource_version: p.resource_version,
            allow_bookmarks: p.allow_bookmarks,
            send_initial_events: p.send_initial_events,
            timeout_seconds: p.timeout_seconds,
        };
        let codec = ProstCodec::<WatchPodsRequest, WatchEvent<K>>::default();
        Ok(grpc
            .server_streaming(Request::new(request), path, codec)
            .await?
            .into_inner())
    } else {
        let request = WatchNodesRequest {
            label_selector: p.label_selector,
            field_selector: p.field_selector,
            resource_version: p.resource_version,
            allow_bookmarks: p.allow_bookmarks,
            send_initial_events: p.send_initial_events,
            timeout_seconds: p.timeout_seconds,
        };
        let codec = ProstCodec::<WatchNodesRequest, WatchEvent<K>>::default();
        Ok(grpc
            .server_streaming(Request::new(request), path, codec)
            .await?
            .into_inner())
    }
}

/// Makes a struct generated by prost from a `ResourceDefinition`'s .proto a
/// [`Resource`] and a [`ResourceClient`](crate::client::ResourceClient), so
/// that `client.api::<Widget>("default")`, `watcher`, `Informer` and
/// `Controller` work with it.
///
/// The struct must have `metadata: Option<skiff::api::meta::v1::ObjectMeta>`
/// (generate it with `extern_path(".skiff.meta.v1", "::skiff::api::meta::v1")`)
/// and, with `status: true`, a `status` field. `version` is the last part of
/// the .proto package, `message` the message's full name; the service is
/// `<message>Service`. `selectable_fields` lists the definition's selectable
/// fields, each with how to read it.
///
/// ```ignore
/// skiff::defined_resource!(Widget {
///     group: "acme.example.com",
///     version: "v1",
///     plural: "widgets",
///     message: "acme.v1.Widget",
///     namespaced: true,
///     status: true,
///     short_names: ["wd"],
///     selectable_fields: {
///         "spec.color" => |w: &Widget| w.spec.as_ref().map(|s| s.color.clone()).unwrap_or_default(),
///     },
/// });
/// ```
#[macro_export]
macro_rules! defined_resource {
    (
        $ty:ident {
            group: $group:literal,
            version: $version:literal,
            plural: $plural:literal,
            message: $message:literal,
            namespaced: $namespaced:literal,
            status: $status:tt,
            short_names: [$($short:literal),* $(,)?],
            selectable_fields: { $($path:literal => $getter:expr),* $(,)? } $(,)?
        }
    ) => {
        impl $crate::Resource for $ty {
            const INFO: $crate::KindInfo = $crate::KindInfo {
                kind: stringify!($ty),
                plural: $plural,
                group: $group,
                version: $version,
                api_version: concat!($group, "/", $version),
                namespaced: $namespaced,
                has_status: $status,
                short_names: &[$($short),*],
                message_name: $message,
                service_name: concat!($message, "Service"),
            };
            const SELECTABLE_FIELDS: &'static [&'static str] = &[$($path),*];

            fn meta(&self) -> &$crate::api::meta::v1::ObjectMeta {
                self.metadata
                    .as_ref()
                    .unwrap_or_else(|| $crate::resource::empty_meta())
            }

            fn meta_mut(&mut self) -> &mut $crate::api::meta::v1::ObjectMeta {
                self.metadata.get_or_insert_with(::core::default::Default::default)
            }

            fn spec_eq(&self, other: &Self) -> bool {
                let desired = |o: &Self| {
                    let mut o = o.clone();
                    o.metadata = None;
                    $crate::Resource::clear_status(&mut o);
                    o
                };
                desired(self) == desired(other)
            }

            $crate::defined_resource!(@status $status);

            fn field(&self, path: &str) -> ::core::option::Option<::std::borrow::Cow<'_, str>> {
                match path {
                    "metadata.name" => Some(::std::borrow::Cow::Borrowed(&self.meta().name)),
                    "metadata.namespace" => {
                        Some(::std::borrow::Cow::Borrowed(&self.meta().namespace))
                    }
                    $($path => {
                        let read: fn(&$ty) -> String = $getter;
                        Some(::std::borrow::Cow::Owned(read(self)))
                    })*
                    _ => None,
                }
            }
        }

        impl $crate::client::ResourceClient for $ty {
            fn create_in(
                transport: $crate::client::Transport,
                obj: Self,
            ) -> impl ::core::future::Future<Output = Result<Self, $crate::client::defined::Status>> + Send {
                $crate::client::defined::create(transport, obj)
            }
            fn get_in(
                transport: $crate::client::Transport,
                params: $crate::params::GetParams,
            ) -> impl ::core::future::Future<Output = Result<Self, $crate::client::defined::Status>> + Send {
                $crate::client::defined::get(transport, params)
            }
            fn list_in(
                transport: $crate::client::Transport,
                params: $crate::params::ListParams,
            ) -> impl ::core::future::Future<
                Output = Result<$crate::wire::ListResponse<Self>, $crate::client::defined::Status>,
            > + Send {
                $crate::client::defined::list(transport, params)
            }
            fn update_in(
                transport: $crate::client::Transport,
                obj: Self,
            ) -> impl ::core::future::Future<Output = Result<Self, $crate::client::defined::Status>> + Send {
                $crate::client::defined::update(transport, obj)
            }
            fn update_status_in(
                transport: $crate::client::Transport,
                obj: Self,
            ) -> impl ::core::future::Future<Output = Result<Self, $crate::client::defined::Status>> + Send {
                $crate::client::defined::update_status(transport, obj)
            }
            fn delete_in(
                transport: $crate::client::Transport,
                params: $crate::params::DeleteParams,
            ) -> impl ::core::future::Future<Output = Result<Self, $crate::client::defined::Status>> + Send {
                $crate::client::defined::delete(transport, params)
            }
            fn watch_in(
                transport: $crate::client::Transport,
                params: $crate::params::WatchParams,
            ) -> impl ::core::future::Future<
                Output = Result<
                    $crate::client::defined::Streaming<$crate::wire::WatchEvent<Self>>,
                    $crate::client::defined::Status,
                >,
            > + Send {
                $crate::client::defined::watch(transport, params)
            }
        }
    };
    (@status true) => {
        fn copy_status_from(&mut self, other: &Self) {
            self.status = other.status.clone();
        }
        fn clear_status(&mut self) {
            self.status = None;
        }
    };
    (@status false) => {
        fn copy_status_from(&mut self, _other: &Self) {}
        fn clear_status(&mut self) {}
    };
}
