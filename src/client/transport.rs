//! The client SDK: a connection, typed per-kind calls and (later) the
//! runtime of watchers, stores and controllers built on them.

use std::future::Future;

use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

pub use super::failover::Transport;

use crate::params::{DeleteParams, GetParams, ListParams, WatchParams};
use crate::resource::Resource;
use crate::wire::{ListResponse, WatchEvent};

/// Adds the bearer token, if any, to every request.
#[derive(Clone, Default)]
pub struct Credentials {
    bearer: Option<AsciiMetadataValue>,
}

impl Credentials {
    /// No credentials.
    pub fn none() -> Self {
        Self::default()
    }

    /// A bearer token sent as `authorization: Bearer <token>`.
    pub fn bearer(token: &str) -> Result<Self, Status> {
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Status::invalid_argument("token has characters not allowed in a header")
        })?;
        Ok(Self {
            bearer: Some(value),
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// Typed calls of one kind's service; implemented for every kind by `build.rs`.
pub trait ResourceClient: Resource {
    /// Calls `Create<Kind>`.
    fn create_in(
        transport: Transport,
        obj: Self,
    ) -> impl Future<Output = Result<Self, Status>> + Send;
    /// Calls `Get<Kind>`.
    fn get_in(
        transport: Transport,
        params: GetParams,
    ) -> impl Future<Output = Result<Self, Status>> + Send;
    /// Calls `List<Kind>s`.
    fn list_in(
        transport: Transport,
        params: ListParams,
    ) -> impl Future<Output = Result<ListResponse<Self>, Status>> + Send;
    /// Calls `Update<Kind>`.
    fn update_in(
        transport: Transport,
        obj: Self,
    ) -> impl Future<Output = Result<Self, Status>> + Send;
    /// Calls `Update<Kind>Status`.
    fn update_status_in(
        transport: Transport,
        obj: Self,
    ) -> impl Future<Output = Result<Self, Status>> + Send;
    /// Calls `Delete<Kind>`.
    fn delete_in(
        transport: Transport,
        params: DeleteParams,
    ) -> impl Future<Output = Result<Self, Status>> + Send;
    /// Calls `Watch<Kind>s`.
    fn watch_in(
        transport: Transport,
        params: WatchParams,
    ) -> impl Future<Output = Result<tonic::Streaming<WatchEvent<Self>>, Status>> + Send;
}

/// The error for a response that lacks its object.
pub fn missing_in_response(field: &str) -> Status {
    Status::internal(format!("server response lacks {field}"))
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not a valid URI.
    #[error("invalid server address {0:?}: expected host:port or http(s)://host:port")]
    InvalidAddress(String),
    /// No address was given.
    #[error("no API server address given: pass --server HOST:PORT[,HOST:PORT...]")]
    NoServer,
    /// The server did not accept the connection.
    #[error(
        "cannot connect to the API server at {address} (is it running? start one with `skiff up` or `skiff apiserver`)"
    )]
    Connect {
        /// The address tried.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// TLS settings of a connection.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM of the CA the server's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// PEM certificate and key to prove the client's identity (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Opens a connection to an API server at `endpoint` ("127.0.0.1:6443" or a URL).
pub async fn connect(endpoint: &str, credentials: Credentials) -> Result<Transport, ConnectError> {
    connect_with(endpoint, credentials, None).await
}

/// Opens a connection, over TLS when `tls` is given.
pub async fn connect_with(
    endpoint: &str,
    credentials: Credentials,
    tls: Option<&TlsOptions>,
) -> Result<Transport, ConnectError> {
    connect_all(&[endpoint.to_owned()], credentials, tls).await
}

/// How long opening one connection may take before that server counts as down.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens connections to every server in `endpoints` (one cluster's API
/// servers); succeeds if at least one answers. Calls then go to the ones
/// that answer and move off any that stops (see [`Transport`]).
pub async fn connect_all(
    endpoints: &[String],
    credentials: Credentials,
    tls: Option<&TlsOptions>,
) -> Result<Transport, ConnectError> {
    let built = endpoints
        .iter()
        .map(|e| endpoint(e, tls))
        .collect::<Result<Vec<_>, _>>()?;
    let attempts = built.iter().map(|(_, ep)| ep.connect());
    let results = futures::future::join_all(attempts).await;
    let mut connections = Vec::with_capacity(built.len());
    let mut first_error = None;
    for ((url, ep), result) in built.into_iter().zip(results) {
        let (channel, up) = match result {
            Ok(channel) => (channel, true),
            Err(source) => {
                first_error.get_or_insert(ConnectError::Connect {
                    address: url.clone(),
                    source,
                });
                (ep.connect_lazy(), false)
            }
        };
        connections.push((
            url,
            InterceptedService::new(channel, credentials.clone()),
            up,
        ));
    }
    if connections.iter().all(|(_, _, up)| !up) {
        return Err(first_error.unwrap_or(ConnectError::NoServer));
    }
    Ok(Transport::from_connections(connections))
}

/// The URL and channel settings of one server.
fn endpoint(address: &str, tls: Option<&TlsOptions>) -> Result<(String, Endpoint), ConnectError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("{scheme}://{address}")
    };
    let mut builder = Endpoint::from_shared(url.clone())
        .map_err(|_| ConnectError::InvalidAddress(address.to_owned()))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        // A server that vanishes without closing its connections (a cut
        // network) is noticed within ~20 s, and its watches move elsewhere.
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        builder = builder
            .tls_config(config)
            .map_err(|source| ConnectError::Connect {
                address: url.clone(),
                source,
            })?;
    }
    Ok((url, builder))
}
