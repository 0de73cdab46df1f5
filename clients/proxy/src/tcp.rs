//! TCP forwarding: a listener on a service address; each connection goes
//! to an endpoint the balancer picks (the next one if it cannot be
//! reached), and bytes are copied both ways, unparsed, with half-closes
//! passed on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::balancer::Balancer;

/// Size of each direction's copy buffer.
const BUFFER: usize = 64 * 1024;

/// Accepts on `listener` until `stop`, forwarding through `balancer`.
pub async fn serve(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    connect_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((client, peer)) => {
                let balancer = balancer.clone();
                tokio::spawn(async move {
                    forward(client, peer, &balancer, connect_timeout).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Connects to the first endpoint that answers.
async fn connect(
    balancer: &Balancer,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<(TcpStream, SocketAddr)> {
    let candidates = balancer.pick(peer.ip());
    for (i, endpoint) in candidates.into_iter().take(4).enumerate() {
        match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(s)) => {
                if i > 0 {
                    balancer.used(peer.ip(), endpoint);
                }
                return Some((s, endpoint));
            }
            Ok(Err(e)) => {
                tracing::debug!(%endpoint, error = %e, "endpoint refused; trying the next")
            }
            Err(_) => tracing::debug!(%endpoint, "endpoint timed out; trying the next"),
        }
        balancer.failed(peer.ip(), endpoint);
    }
    None
}

/// Connection and byte counters.
struct Metrics {
    connections: Arc<skiff::metrics::CounterVec>,
    bytes: Arc<skiff::metrics::CounterVec>,
}

fn metrics() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let r = skiff::metrics::global();
        Metrics {
            connections: r.counter(
                "proxy_tcp_connections_total",
                "Connections accepted, by result (forwarded, no_endpoint).",
                &["result"],
            ),
            bytes: r.counter(
                "proxy_tcp_bytes_total",
                "Bytes forwarded, by direction (to_endpoint, to_client).",
                &["direction"],
            ),
        }
    })
}

async fn forward(mut client: TcpStream, peer: SocketAddr, balancer: &Balancer, timeout: Duration) {
    let Some((mut upstream, endpoint)) = connect(balancer, peer, timeout).await else {
        tracing::debug!(%peer, "no endpoint answered; closing the connection");
        metrics().connections.with(&["no_endpoint"]).inc();
        return;
    };
    metrics().connections.with(&["forwarded"]).inc();
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER).await
    {
        Ok((up, down)) => {
            metrics().bytes.with(&["to_endpoint"]).add(up);
            metrics().bytes.with(&["to_client"]).add(down);
            tracing::trace!(%peer, %endpoint, up, down, "connection closed")
        }
        Err(e) => tracing::trace!(%peer, %endpoint, error = %e, "connection ended"),
    }
}
