//! The Skiff service proxy. It watches Services and Endpoints; for every
//! service port with ready endpoints it listens on the cluster IP and port
//! (and, for NodePort services, on the node port of the node address) and
//! forwards each TCP connection — or each UDP client's datagrams — to a
//! ready endpoint, round-robin or pinned by client IP. A service port with
//! no ready endpoint is not listened on, so connections are refused at
//! once; listeners go with their service, and endpoint changes apply to new
//! connections without touching open ones.
//!
//! - [`balancer`]: round-robin and client-IP affinity.
//! - [`tcp`], [`udp`]: the data paths.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::string_slice
    )
)]

pub mod balancer;
pub mod tcp;
pub mod udp;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::api::core::v1::{Endpoints, Service};
use skiff::client::Client;
use skiff::runtime::{Event, WatcherConfig, watcher};
use tokio::sync::watch;

use crate::balancer::Balancer;

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The address NodePort services listen on (Kubernetes: every node address).
    pub node_address: IpAddr,
    /// How long a connection to an endpoint may take before the next is tried.
    pub connect_timeout: Duration,
    /// A UDP client's session ends after this long without traffic.
    pub udp_idle_timeout: Duration,
    /// How often listeners that could not be opened are retried.
    pub resync: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            node_address: IpAddr::from([127, 0, 0, 1]),
            connect_timeout: Duration::from_secs(2),
            udp_idle_timeout: Duration::from_secs(60),
            resync: Duration::from_secs(5),
        }
    }
}

/// Kubernetes' default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10800);

/// One port of one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PortKey {
    service: String,
    port_name: String,
    protocol: String,
}

/// What a service port should look like.
#[derive(Debug, Clone, PartialEq)]
struct PortSpec {
    addresses: Vec<SocketAddr>,
    endpoints: Vec<SocketAddr>,
    affinity: Option<Duration>,
}

/// A running listener.
struct Listener {
    stop: watch::Sender<bool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A service port being proxied.
struct PortProxy {
    spec: PortSpec,
    balancer: Arc<Balancer>,
    listeners: HashMap<SocketAddr, Listener>,
    /// Addresses it could not listen on (warned about once).
    refused: HashSet<SocketAddr>,
}

/// The proxy's view of the cluster and what it serves.
struct Proxier {
    config: ProxyConfig,
    services: HashMap<String, Arc<Service>>,
    endpoints: HashMap<String, Arc<Endpoints>>,
    ports: BTreeMap<PortKey, PortProxy>,
}

fn key_of<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace(), obj.name())
}

impl Proxier {
    /// The ports `key` should serve, from its Service and Endpoints.
    fn desired(&self, key: &str) -> BTreeMap<PortKey, PortSpec> {
        let mut out = BTreeMap::new();
        let Some(svc) = self.services.get(key) else {
            return out;
        };
        let Some(spec) = &svc.spec else { return out };
        let ip: Option<IpAddr> = spec.cluster_ip.parse().ok();
        let affinity = (spec.session_affinity == "ClientIP").then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(DEFAULT_AFFINITY)
        });
        let node_ports = matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer");
        for p in &spec.ports {
            let protocol = if p.protocol.is_empty() {
                "TCP".to_owned()
            } else {
                p.protocol.clone()
            };
            if protocol != "TCP" && protocol != "UDP" {
                continue;
            }
            let mut addresses = Vec::new();
            if let Some(ip) = ip {
                addresses.push(SocketAddr::new(ip, p.port as u16));
            }
            if node_ports && p.node_port > 0 {
                addresses.push(SocketAddr::new(
                    self.config.node_address,
                    p.node_port as u16,
                ));
            }
            for e in &spec.external_ips {
                if let Ok(ip) = e.parse::<IpAddr>() {
                    addresses.push(SocketAddr::new(ip, p.port as u16));
                }
            }
            let mut endpoints = Vec::new();
            if let Some(eps) = self.endpoints.get(key) {
                for subset in &eps.subsets {
                    let port = subset.ports.iter().find(|ep| {
                        ep.name == p.name && (ep.protocol.is_empty() || ep.protocol == protocol)
                    });
                    let Some(port) = port else { continue };
                    for a in &subset.addresses {
                        if let Ok(ip) = a.ip.parse::<IpAddr>() {
                            endpoints.push(SocketAddr::new(ip, port.port as u16));
                        }
                    }
                }
            }
            out.insert(
                PortKey {
                    service: key.to_owned(),
                    port_name: p.name.clone(),
                    protocol,
                },
                PortSpec {
                    addresses,
                    endpoints,
                    affinity,
                },
            );
        }
        out
    }

    /// Brings the ports of service `key` to what its objects say.
    async fn sync(&mut self, key: &str) {
        let desired = self.desired(key);
        let stale: Vec<PortKey> = self
            .ports
            .range(
                PortKey {
                    service: key.to_owned(),
                    port_name: String::new(),
                    protocol: String::new(),
                }..,
            )
            .take_while(|(k, _)| k.service == key)
            .filter(|(k, _)| !desired.contains_key(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            tracing::info!(service = %k.service, port = %k.port_name, "no longer proxying");
            self.ports.remove(&k);
        }
        for (k, spec) in desired {
            let port = self.ports.entry(k.clone()).or_insert_with(|| PortProxy {
                spec: spec.clone(),
                balancer: Arc::new(Balancer::new()),
                listeners: HashMap::new(),
                refused: HashSet::new(),
            });
            port.spec = spec;
            port.balancer.set_endpoints(port.spec.endpoints.clone());
            port.balancer.set_affinity(port.spec.affinity);
            Self::listen(&self.config, &k, port).await;
        }
    }

    /// Opens the listeners a port should have and closes the others: none
    /// while it has no ready endpoint, so that connections are refused.
    async fn listen(config: &ProxyConfig, key: &PortKey, port: &mut PortProxy) {
        let wanted: HashSet<SocketAddr> = if port.balancer.has_endpoints() {
            port.spec.addresses.iter().copied().collect()
        } else {
            HashSet::new()
        };
        port.listeners.retain(|addr, _| wanted.contains(addr));
        for addr in wanted {
            if port.listeners.contains_key(&addr) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let opened = if key.protocol == "UDP" {
                tokio::net::UdpSocket::bind(addr).await.map(|socket| {
                    tokio::spawn(udp::serve(
                        socket,
                        port.balancer.clone(),
                        config.udp_idle_timeout,
                        stopped,
                    ));
                })
            } else {
                bind_tcp(addr).map(|listener| {
                    tokio::spawn(tcp::serve(
                        listener,
                        port.balancer.clone(),
                        config.connect_timeout,
                        stopped,
                    ));
                })
            };
            match opened {
                Ok(()) => {
                    port.refused.remove(&addr);
                    tracing::info!(service = %key.service, port = %key.port_name, %addr, protocol = %key.protocol, "proxying");
                    port.listeners.insert(addr, Listener { stop });
                }
                Err(e) => {
                    // Said once (a port below 1024 without privileges would
                    // say it every resync); retried quietly after that.
                    if port.refused.insert(addr) {
                        let hint = if addr.port() < 1024
                            && e.kind() == std::io::ErrorKind::PermissionDenied
                        {
                            "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
                        } else {
                            ""
                        };
                        tracing::warn!(service = %key.service, %addr, error = %e, "cannot listen{hint}; retrying quietly");
                    } else {
                        tracing::debug!(service = %key.service, %addr, error = %e, "cannot listen yet");
                    }
                }
            }
        }
    }

    async fn resync(&mut self) {
        let config = self.config.clone();
        for (k, port) in self.ports.iter_mut() {
            let expected = if port.balancer.has_endpoints() {
                port.spec.addresses.len()
            } else {
                0
            };
            if port.listeners.len() != expected {
                Self::listen(&config, k, port).await;
            }
        }
    }
}

/// A listener with SO_REUSEADDR, so a restarted proxy binds at once.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

enum Change {
    Service(Event<Service>),
    Endpoints(Event<Endpoints>),
}

/// Runs the proxy until `shutdown`.
pub async fn run(
    client: Client,
    config: ProxyConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let services =
        watcher(client.all::<Service>(), WatcherConfig::default()).map(|e| e.map(Change::Service));
    let endpoints = watcher(client.all::<Endpoints>(), WatcherConfig::default())
        .map(|e| e.map(Change::Endpoints));
    let mut changes = std::pin::pin!(futures::stream::select(services, endpoints));
    let mut proxier = Proxier {
        config,
        services: HashMap::new(),
        endpoints: HashMap::new(),
        ports: BTreeMap::new(),
    };
    let mut listing_services: Option<HashSet<String>> = None;
    let mut listing_endpoints: Option<HashSet<String>> = None;
    let mut tick = tokio::time::interval(proxier.config.resync);
    tokio::pin!(shutdown);
    loop {
        let change = tokio::select! {
            c = changes.next() => c,
            _ = tick.tick() => { proxier.resync().await; continue; }
            _ = &mut shutdown => break,
        };
        let Some(change) = change else { break };
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying");
                continue;
            }
        };
        let touched: Vec<String> = match change {
            Change::Service(ev) => apply(&mut proxier.services, &mut listing_services, ev),
            Change::Endpoints(ev) => apply(&mut proxier.endpoints, &mut listing_endpoints, ev),
        };
        for key in touched {
            proxier.sync(&key).await;
        }
    }
    proxier.ports.clear();
}

/// Applies a watch event to `known`; returns the keys it changed.
fn apply<K: Resource>(
    known: &mut HashMap<String, Arc<K>>,
    listing: &mut Option<HashSet<String>>,
    event: Event<K>,
) -> Vec<String> {
    match event {
        Event::Init => {
            *listing = Some(HashSet::new());
            vec![]
        }
        Event::InitApply(obj) => {
            let key = key_of(&obj);
            if let Some(l) = listing.as_mut() {
                l.insert(key.clone());
            }
            known.insert(key.clone(), Arc::new(obj));
            vec![key]
        }
        Event::InitDone => {
            let seen = listing.take().unwrap_or_default();
            let gone: Vec<String> = known
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for k in &gone {
                known.remove(k);
            }
            gone
        }
        Event::Apply(obj) => {
            let key = key_of(&obj);
            known.insert(key.clone(), Arc::new(obj));
            vec![key]
        }
        Event::Delete(obj) => {
            let key = key_of(&obj);
            known.remove(&key);
            vec![key]
        }
    }
}
