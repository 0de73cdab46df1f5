//! The server's end of one client connection: a TCP stream whose writes
//! are gathered and sent once the tasks that were ready have had their
//! turn. An event fanned out to a thousand watches wakes a thousand
//! stream tasks; each hands HTTP/2 a frame and wakes the connection's
//! task, which would write after the first few of them. Here a flush
//! waits a turn of the scheduler (the task re-queues itself behind the
//! stream tasks already woken), and another while those turns keep adding
//! (a few at most), then writes everything they added in one system
//! call — on loopback each `sendto` also runs the receiver's TCP input
//! and the firewall hooks, so their number is most of the cost.
//! Writes are bounded: past [`MAX_BUFFERED`] the socket must take bytes
//! before more are accepted, so a slow client still pushes back on HTTP/2.
//! It must not touch what flows through it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes held before the socket must take some.
const MAX_BUFFERED: usize = 256 * 1024;

/// Capacity kept after a burst (larger buffers are given back).
const KEPT_CAPACITY: usize = 64 * 1024;

/// A write at least this large goes to the socket at once, with what was
/// gathered before it, rather than being copied into the buffer.
const WRITE_THROUGH_FROM: usize = 16 * 1024;

/// A flush of fewer bytes than this waits its turn; a larger one (a big
/// response) goes at once, a gathered write gaining nothing more.
const GATHER_BELOW: usize = 64 * 1024;

/// Turns a flush waits at most while the tasks that ran in the last one
/// added bytes: under load, fewer and larger system calls; when a turn
/// adds nothing, the flush goes at once.
const MAX_WAITS: u8 = 4;

/// An accepted TCP connection whose writes are gathered.
pub struct Connection {
    stream: TcpStream,
    /// Accepted bytes not yet given to the socket.
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    sent: usize,
    /// Turns the pending flush has waited.
    waits: u8,
    /// Bytes accepted in all, and when the flush last waited.
    accepted: u64,
    accepted_at_wait: u64,
}

impl Connection {
    /// Wraps an accepted stream.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            out: Vec::new(),
            sent: 0,
            waits: 0,
            accepted: 0,
            accepted_at_wait: 0,
        }
    }

    /// Gives the socket what it takes of `out`; ready when all is sent.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.out.get(self.sent..).filter(|r| !r.is_empty()) {
            match Pin::new(&mut self.stream).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.sent = 0;
        if self.out.capacity() > KEPT_CAPACITY {
            self.out.shrink_to(KEPT_CAPACITY);
        }
        Poll::Ready(Ok(()))
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() - this.sent >= MAX_BUFFERED {
            // Full: the socket must take some first (back-pressure).
            match this.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.out.len() - this.sent >= MAX_BUFFERED => {
                    return Poll::Pending;
                }
                Poll::Pending => {}
            }
        }
        this.accepted += buf.len() as u64;
        if buf.len() >= WRITE_THROUGH_FROM {
            // Sent with what is gathered before it, not copied (a batch of
            // multiplexed events is tens of kilobytes).
            let gathered = this.out.get(this.sent..).unwrap_or_default();
            let pending = gathered.len();
            let both = [io::IoSlice::new(gathered), io::IoSlice::new(buf)];
            match Pin::new(&mut this.stream).poll_write_vectored(cx, &both) {
                Poll::Ready(Ok(n)) if n > pending => {
                    this.out.clear();
                    this.sent = 0;
                    return Poll::Ready(Ok(n - pending));
                }
                Poll::Ready(Ok(n)) => this.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The socket is full: gathered, as any write.
                Poll::Pending => {}
            }
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.sent == this.out.len() {
            return Poll::Ready(Ok(()));
        }
        let adding = this.waits == 0 || this.accepted > this.accepted_at_wait;
        if adding && this.waits < MAX_WAITS && this.out.len() - this.sent < GATHER_BELOW {
            // Let the tasks already woken add their frames first.
            this.waits += 1;
            this.accepted_at_wait = this.accepted;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let drained = this.poll_drain(cx);
        if drained.is_ready() {
            this.waits = 0;
        }
        drained
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        futures::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        // h2 then copies small frames into its own buffer and writes it
        // whole; the bytes are gathered here either way.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Connection, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Connection::new(accepted.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn writes_reach_the_peer_in_order_once_flushed() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"hello ").await.unwrap();
        server.write_all(b"world").await.unwrap();
        server.flush().await.unwrap();
        let mut got = [0u8; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_pushes_back_within_the_bound() {
        let (mut server, mut client) = pair().await;
        let chunk = vec![7u8; 64 * 1024];
        let mut accepted = 0usize;
        // Write until a write would wait: the peer reads nothing, so the
        // socket's buffers and then ours fill.
        loop {
            let write = server.write(&chunk);
            match tokio::time::timeout(std::time::Duration::from_millis(200), write).await {
                Ok(n) => accepted += n.unwrap(),
                Err(_) => break,
            }
            assert!(accepted < 1 << 30, "writes never pushed back");
        }
        assert!(server.out.len() - server.sent <= MAX_BUFFERED + chunk.len());
        // Everything accepted arrives once the peer reads.
        let reader = tokio::spawn(async move {
            let mut n = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            while n < accepted {
                n += client.read(&mut buf).await.unwrap();
            }
            n
        });
        server.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), accepted);
    }

    #[tokio::test]
    async fn large_writes_go_through_after_the_gathered_ones_in_order() {
        let (mut server, mut client) = pair().await;
        let big: Vec<u8> = (0..WRITE_THROUGH_FROM * 3)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut expected = Vec::new();
        for round in 0..200u8 {
            expected.extend_from_slice(&[round; 9]);
            expected.extend_from_slice(&big);
        }
        expected.extend_from_slice(b"end");
        // Read as it comes (~10 MB: more than the socket holds, so some
        // writes go through only in part).
        let want = expected.clone();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; want.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == want, "the bytes arrive as written, in order");
        });
        for round in 0..200u8 {
            server.write_all(&[round; 9]).await.unwrap();
            server.write_all(&big).await.unwrap();
        }
        server.write_all(b"end").await.unwrap();
        server.flush().await.unwrap();
        reader.await.unwrap();
    }

    /// Polls `f` once with a waker that does nothing.
    fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        f(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    #[tokio::test]
    async fn a_flush_waits_while_writes_keep_coming_but_not_without_bound() {
        let (mut server, mut client) = pair().await;
        let mut s = Pin::new(&mut server);
        assert!(poll_once(|cx| s.as_mut().poll_write(cx, b"a")).is_ready());
        // Each turn that adds bytes earns another, up to the bound.
        for _ in 0..MAX_WAITS {
            assert!(poll_once(|cx| s.as_mut().poll_flush(cx)).is_pending());
            assert!(poll_once(|cx| s.as_mut().poll_write(cx, b"b")).is_ready());
        }
        assert!(poll_once(|cx| s.as_mut().poll_flush(cx)).is_ready());
        // A turn that adds nothing ends the wait.
        assert!(poll_once(|cx| s.as_mut().poll_write(cx, b"c")).is_ready());
        assert!(poll_once(|cx| s.as_mut().poll_flush(cx)).is_pending());
        assert!(poll_once(|cx| s.as_mut().poll_flush(cx)).is_ready());
        let expected = [b"a".as_slice(), &[b'b'; MAX_WAITS as usize], b"c"].concat();
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn shutdown_sends_what_was_written_first() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"last words").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }
}
