//! Skiff's cluster DNS (`skiff dns`, also part of `skiff up`): a DNS
//! server built on hickory-server that answers the cluster zone
//! (`cluster.local`) from informers on Services and Endpoints and forwards
//! every other name to the host's resolvers. It publishes its own address
//! as the endpoints of `kube-system/kube-dns`, whose cluster IP (port 53)
//! the kubelet writes into pods' `resolv.conf` and the proxy forwards here.
//!
//! - [`records`]: which names exist and what they hold (pure).
//! - [`server`]: the request handler (responses, metrics).
//! - [`forward`]: upstream resolvers.
//! - [`publish`]: the Service's endpoints.
//!
//! Talks to the API server only through the SDK, and only reads besides
//! its own endpoints.

pub mod forward;
pub mod publish;
pub mod records;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skiff::api::core::v1::{Endpoints, Service};
use skiff::client::Client;
use skiff::runtime::{InformerFactory, ObjectKey, Store};

use crate::forward::Forwarder;
use crate::records::{ClusterView, Zone};
use crate::server::ClusterDns;

/// The cluster domain Kubernetes uses by default.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// Why the DNS server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr} (UDP and TCP): {source}; pick another --listen")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster domain is not a DNS name.
    #[error("{0:?} is not a valid cluster domain")]
    Domain(String),
    /// The endpoints of the DNS Service cannot be written.
    #[error("cannot publish the DNS server in kube-system/kube-dns: {0}")]
    Publish(#[source] skiff::client::Error),
}

/// How the DNS server runs.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP address (port 0: any free port).
    pub listen: SocketAddr,
    /// The cluster zone, e.g. `cluster.local`.
    pub domain: String,
    /// Where other names go; `None`: the name servers of `/etc/resolv.conf`.
    pub upstreams: Option<Vec<SocketAddr>>,
    /// Add this server to the endpoints of `kube-system/kube-dns`.
    pub publish: bool,
    /// The metrics port, published beside the DNS ports.
    pub metrics_port: Option<u16>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            domain: DEFAULT_DOMAIN.into(),
            upstreams: None,
            publish: true,
            metrics_port: None,
        }
    }
}

/// The cluster as informers see it.
struct StoreView {
    services: Store<Service>,
    endpoints: Store<Endpoints>,
}

impl ClusterView for StoreView {
    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectKey::new(ns, name))
    }

    fn endpoints(&self, ns: &str, name: &str) -> Option<Arc<Endpoints>> {
        self.endpoints.get(&ObjectKey::new(ns, name))
    }

    fn ready(&self) -> bool {
        self.services.is_ready() && self.endpoints.is_ready()
    }
}

/// A running DNS server.
pub struct Dns {
    addr: SocketAddr,
    client: Client,
    published: bool,
    server: hickory_server::Server<ClusterDns>,
    _informers: InformerFactory,
}

/// Binds UDP and TCP on one port (retrying a few ports when `addr` asks for any).
async fn bind(
    addr: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), DnsError> {
    let mut last = None;
    for _ in 0..10 {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Listen { addr, source })?;
        let port = udp
            .local_addr()
            .map_err(|source| DnsError::Listen { addr, source })?
            .port();
        match tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(source) => return Err(DnsError::Listen { addr, source }),
        }
    }
    Err(DnsError::Listen {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

impl Dns {
    /// Starts a DNS server for the cluster `client` reaches.
    pub async fn start(client: Client, config: DnsConfig) -> Result<Self, DnsError> {
        let zone =
            Zone::new(&config.domain).ok_or_else(|| DnsError::Domain(config.domain.clone()))?;
        let (udp, tcp) = bind(config.listen).await?;
        let addr = udp.local_addr().map_err(|source| DnsError::Listen {
            addr: config.listen,
            source,
        })?;
        let upstreams: Vec<SocketAddr> = config
            .upstreams
            .clone()
            .unwrap_or_else(|| {
                std::fs::read_to_string("/etc/resolv.conf")
                    .map(|t| forward::nameservers(&t))
                    .unwrap_or_default()
            })
            .into_iter()
            // Never forward to itself.
            .filter(|u| *u != addr)
            .collect();
        if upstreams.is_empty() {
            tracing::warn!("no upstream name server: names outside the cluster get SERVFAIL");
        }
        let informers = InformerFactory::new(client.clone());
        let view = StoreView {
            services: informers.all::<Service>().store(),
            endpoints: informers.all::<Endpoints>().store(),
        };
        let handler = ClusterDns::new(
            zone,
            Arc::new(view),
            Forwarder::new(upstreams, Duration::from_secs(2)),
        );
        let mut server = hickory_server::Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        let mut dns = Self {
            addr,
            client,
            published: false,
            server,
            _informers: informers,
        };
        if config.publish {
            publish::publish(
                &dns.client,
                &addr.ip().to_string(),
                addr.port(),
                config.metrics_port,
            )
            .await
            .map_err(DnsError::Publish)?;
            dns.published = true;
        }
        tracing::info!(%addr, domain = %config.domain, "serving cluster DNS");
        Ok(dns)
    }

    /// The UDP and TCP address it answers on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Withdraws its endpoint and stops serving.
    pub async fn stop(mut self) {
        if self.published
            && let Err(e) = publish::withdraw(&self.client, &self.addr.ip().to_string()).await
        {
            tracing::warn!(error = %e, "cannot withdraw the DNS server from kube-system/kube-dns");
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.server.shutdown_gracefully()).await;
    }

    /// Serves until `shutdown`, then stops.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }
}
