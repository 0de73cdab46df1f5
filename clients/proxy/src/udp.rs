//! UDP forwarding: datagrams from each client go, through a socket of the
//! client's own, to the endpoint the balancer picked for it; replies come
//! back from the service address. A client's session ends after it has
//! been idle for the idle timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::balancer::Balancer;

struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds after `epoch` of the client's last datagram.
    last_sent: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Session>>>;

/// Relays datagrams arriving on `socket` until `stop`.
pub async fn serve(
    socket: UdpSocket,
    balancer: Arc<Balancer>,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let sessions: Sessions = Arc::new(Mutex::new(HashMap::new()));
    let epoch = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier sends surface here; keep serving.
                tracing::trace!(error = %e, "udp receive failed");
                continue;
            }
        };
        let existing = {
            let s = sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.get(&client)
                .map(|s| (s.upstream.clone(), s.last_sent.clone()))
        };
        let (upstream, last_sent) = match existing {
            Some(u) => u,
            None => match open(&socket, &sessions, client, &balancer, idle, epoch).await {
                Some(u) => u,
                None => continue,
            },
        };
        last_sent.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let _ = upstream.send(buf.get(..n).unwrap_or_default()).await;
    }
    for (_, s) in sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain()
    {
        s.task.abort();
    }
}

/// Opens a session for `client` to an endpoint the balancer picks.
async fn open(
    socket: &Arc<UdpSocket>,
    sessions: &Sessions,
    client: SocketAddr,
    balancer: &Balancer,
    idle: Duration,
    epoch: Instant,
) -> Option<(Arc<UdpSocket>, Arc<AtomicU64>)> {
    let endpoint = *balancer.pick(client.ip()).first()?;
    let bind = if endpoint.is_ipv4() {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let upstream = Arc::new(UdpSocket::bind(bind).await.ok()?);
    upstream.connect(endpoint).await.ok()?;
    let last_sent = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
    let (reply_to, from, all, sent) = (
        socket.clone(),
        upstream.clone(),
        sessions.clone(),
        last_sent.clone(),
    );
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut last_reply = Instant::now();
        loop {
            let last_client = epoch + Duration::from_millis(sent.load(Ordering::Relaxed));
            let deadline = last_reply.max(last_client) + idle;
            match tokio::time::timeout_at(deadline, from.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    last_reply = Instant::now();
                    let _ = reply_to
                        .send_to(buf.get(..n).unwrap_or_default(), client)
                        .await;
                }
                // The endpoint is unreachable: end the session.
                Ok(Err(_)) => break,
                // Idle both ways for the idle timeout: end the session.
                Err(_) => {
                    let last_client = epoch + Duration::from_millis(sent.load(Ordering::Relaxed));
                    if Instant::now() >= last_client + idle {
                        break;
                    }
                }
            }
        }
        all.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&client);
    });
    sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            client,
            Session {
                upstream: upstream.clone(),
                last_sent: last_sent.clone(),
                task: task.abort_handle(),
            },
        );
    Some((upstream, last_sent))
}
