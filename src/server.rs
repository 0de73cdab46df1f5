//! The server-side contract: one generic [`ResourceService`] serves every
//! kind; the generated glue adapts each kind's gRPC service trait to it.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Status};

use crate::params::{DeleteParams, GetParams, ListParams, WatchParams};
use crate::resource::Resource;
use crate::wire::{ListResponse, WatchEvent};

/// Stream of watch events a server returns.
pub type WatchStream<K> = Pin<Box<dyn Stream<Item = Result<WatchEvent<K>, Status>> + Send>>;

/// The operations every kind's service offers, written once for all kinds.
#[tonic::async_trait]
pub trait ResourceService<K: Resource>: Send + Sync + 'static {
    /// Creates an object.
    async fn create(&self, request: Request<K>) -> Result<K, Status>;
    /// Reads an object.
    async fn get(&self, request: Request<GetParams>) -> Result<K, Status>;
    /// Lists objects.
    async fn list(&self, request: Request<ListParams>) -> Result<ListResponse<K>, Status>;
    /// Replaces an object's spec and metadata.
    async fn update(&self, request: Request<K>) -> Result<K, Status>;
    /// Replaces an object's status.
    async fn update_status(&self, request: Request<K>) -> Result<K, Status>;
    /// Deletes an object.
    async fn delete(&self, request: Request<DeleteParams>) -> Result<K, Status>;
    /// Streams changes.
    async fn watch(&self, request: Request<WatchParams>) -> Result<WatchStream<K>, Status>;
}

/// Adapter implementing each generated `<Kind>Service` trait over a [`ResourceService`].
pub struct KindServer<S>(pub Arc<S>);

/// Message size limits applied to every kind's service.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// Largest request the server decodes.
    pub max_decoding: usize,
    /// Largest response the server encodes.
    pub max_encoding: usize,
}

/// Registers a kind's gRPC service, served by `S`, on a router.
pub trait ServeWith<S>: Resource {
    /// Adds the kind's service to `routes`.
    fn add_service(
        routes: &mut tonic::service::RoutesBuilder,
        service: Arc<S>,
        limits: MessageLimits,
    );
}

/// Maps a request's message, keeping its metadata and extensions.
pub fn map_request<T, U>(
    request: Request<T>,
    f: impl FnOnce(T) -> Result<U, Status>,
) -> Result<Request<U>, Status> {
    let (metadata, extensions, message) = request.into_parts();
    Ok(Request::from_parts(metadata, extensions, f(message)?))
}

/// The error for a request that lacks its object.
pub fn missing_field(field: &str) -> Status {
    let details = tonic_types::ErrorDetails::with_bad_request_violation(
        field,
        format!("{field} is required"),
    );
    use tonic_types::StatusExt;
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field}: required field is missing"),
        details,
    )
}
