//! Forwarding of names outside the cluster zone to upstream resolvers (by
//! default the name servers of the host's `/etc/resolv.conf`), as
//! CoreDNS' `forward . /etc/resolv.conf` does: the query goes out as it
//! came, over UDP, again over TCP when the answer is truncated, to each
//! upstream in turn until one answers.
//!
//! Owns only the upstream sockets; never answers for the cluster zone.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream name server (none in /etc/resolv.conf; pass --upstream)")]
    NoUpstream,
    /// Every upstream failed; the last cause.
    #[error("no upstream answered: {0}")]
    Failed(String),
}

/// The name servers of a resolv.conf text (port 53).
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Sends queries on to upstream resolvers.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder to `upstreams`, each tried for at most `timeout`.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { upstreams, timeout }
    }

    /// The upstreams it uses.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Forwards the wire-format `query`; the upstream's answer.
    pub async fn forward(&self, query: &[u8]) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut last = String::new();
        for upstream in &self.upstreams {
            match tokio::time::timeout(self.timeout, Self::ask(*upstream, query)).await {
                Ok(Ok(m)) => return Ok(m),
                Ok(Err(e)) => last = format!("{upstream}: {e}"),
                Err(_) => last = format!("{upstream}: timed out"),
            }
        }
        Err(ForwardError::Failed(last))
    }

    async fn ask(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Message> {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(std::io::Error::other)?;
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; 4096];
        let n = socket.recv(&mut buf).await?;
        let answer =
            Message::from_vec(buf.get(..n).unwrap_or_default()).map_err(std::io::Error::other)?;
        if !answer.metadata.truncation {
            return Ok(answer);
        }
        // Too big for UDP: the same query over TCP, length-prefixed.
        let mut tcp = TcpStream::connect(upstream).await?;
        let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        tcp.write_all(&len.to_be_bytes()).await?;
        tcp.write_all(query).await?;
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut buf).await?;
        Message::from_vec(&buf).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_come_from_resolv_conf() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\n\
                    nameserver  ::1\noptions ndots:1\nnameserver bogus\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
