//! The client SDK: a [`Client`] connected from a config file or explicit
//! options, a typed [`Api`] per kind, one [`Error`] enum, and the dynamic
//! client that serves every kind from descriptors (for tools such as the
//! command line).

mod api;
mod config;
pub mod defined;
pub mod dynamic;
mod error;
mod failover;
mod multiplex;
mod transport;

pub use api::{Api, ExecStream, LogParams, LogStream, ObjectList, ServiceAccountToken};
pub use config::{Config, ConfigError};
pub use error::{Error, Result};
pub use multiplex::Multiplexer;
pub use transport::{
    ConnectError, Credentials, ResourceClient, TlsOptions, Transport, connect, connect_all,
    connect_with, missing_in_response,
};

use skiff_types::*;

/// Re-exported kinds used by convenience constructors.
mod skiff_types {
    pub use crate::api::apps::v1::{Deployment, ReplicaSet};
    pub use crate::api::coordination::v1::Lease;
    pub use crate::api::core::v1::{
        Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
    };
}

/// A connection to a Skiff API server.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    server: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .finish()
    }
}

impl Client {
    /// Connects as `config` says: to all of its servers, succeeding if one
    /// answers. Calls go to the servers that answer and move off one that
    /// stops, open watches included; it rejoins when it answers again.
    pub async fn connect(config: &Config) -> Result<Self> {
        let credentials = match &config.token {
            Some(t) => Credentials::bearer(t)?,
            None => Credentials::none(),
        };
        let tls = config.tls_options()?;
        let servers = config.servers();
        let Some(first) = servers.first().cloned() else {
            return Err(Error::Config(ConfigError::NoServer));
        };
        let transport = connect_all(&servers, credentials, tls.as_ref()).await?;
        Ok(Self {
            transport,
            server: first,
        })
    }

    /// Connects using `~/.skiff/config` (or the file `SKIFF_CONFIG` names).
    pub async fn from_default_config() -> Result<Self> {
        Self::connect(&Config::load_default()?).await
    }

    /// Connects to `server` ("127.0.0.1:6443") without credentials.
    pub async fn connect_to(server: &str) -> Result<Self> {
        Self::connect(&Config::for_server(server)).await
    }

    /// The first address configured.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Every server's address and whether calls go to it now.
    pub fn server_health(&self) -> Vec<(String, bool)> {
        self.transport.health()
    }

    /// The underlying transport, for generated clients.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// The API of kind `K` in `namespace` (empty: all namespaces, or a
    /// cluster-scoped kind).
    pub fn api<K: ResourceClient>(&self, namespace: &str) -> Api<K> {
        Api::new(self.transport.clone(), namespace)
    }

    /// The API of kind `K` across all namespaces (or cluster-scoped).
    pub fn all<K: ResourceClient>(&self) -> Api<K> {
        Api::new(self.transport.clone(), "")
    }

    /// Pods in a namespace.
    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        self.api(namespace)
    }

    /// Services in a namespace.
    pub fn services(&self, namespace: &str) -> Api<Service> {
        self.api(namespace)
    }

    /// Endpoints in a namespace.
    pub fn endpoints(&self, namespace: &str) -> Api<Endpoints> {
        self.api(namespace)
    }

    /// Replica sets in a namespace.
    pub fn replica_sets(&self, namespace: &str) -> Api<ReplicaSet> {
        self.api(namespace)
    }

    /// Deployments in a namespace.
    pub fn deployments(&self, namespace: &str) -> Api<Deployment> {
        self.api(namespace)
    }

    /// Events in a namespace.
    pub fn events(&self, namespace: &str) -> Api<Event> {
        self.api(namespace)
    }

    /// Leases in a namespace.
    pub fn leases(&self, namespace: &str) -> Api<Lease> {
        self.api(namespace)
    }

    /// Secrets in a namespace.
    pub fn secrets(&self, namespace: &str) -> Api<Secret> {
        self.api(namespace)
    }

    /// Service accounts in a namespace.
    pub fn service_accounts(&self, namespace: &str) -> Api<ServiceAccount> {
        self.api(namespace)
    }

    /// Nodes.
    pub fn nodes(&self) -> Api<Node> {
        self.all()
    }

    /// Namespaces.
    pub fn namespaces(&self) -> Api<Namespace> {
        self.all()
    }
}
