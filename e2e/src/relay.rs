//! A TCP relay on loopback that a test can cut, as a network partition
//! between two processes it started: while cut, connections stay open but
//! no byte crosses (new ones are accepted and hold), as a black hole; once
//! healed, the held connections are dropped and new ones pass again.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay from its own address to `target`; stops when dropped.
pub struct Relay {
    /// Where clients connect instead of the target.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays 127.0.0.1:<free port> to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a relay port");
        let addr = listener.local_addr().expect("relay address");
        let (cut, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let _ = inbound.set_nodelay(true);
                tokio::spawn(relay(inbound, target, watching.clone()));
            }
        });
        Self { addr, cut, task }
    }

    /// Cuts (`true`) or heals (`false`) the link.
    pub fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(inbound: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    // A connection made while cut holds until the link heals, then drops.
    if *cut.borrow() {
        until(&mut cut, false).await;
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let (mut ri, mut wi) = inbound.into_split();
    let (mut ro, mut wo) = outbound.into_split();
    let mut a = [0u8; 16 * 1024];
    let mut b = [0u8; 16 * 1024];
    loop {
        let cut_now = tokio::select! {
            n = ri.read(&mut a) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if wo.write_all(&a[..n]).await.is_err() {
                        return;
                    }
                    false
                }
            },
            n = ro.read(&mut b) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if wi.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                    false
                }
            },
            _ = until(&mut cut, true) => true,
        };
        if cut_now {
            // Black hole: hold both ends, pass nothing, until healed.
            until(&mut cut, false).await;
            return;
        }
    }
}

/// Returns once the link's state is `cut` (or the relay is gone).
async fn until(rx: &mut watch::Receiver<bool>, cut: bool) {
    loop {
        let now = *rx.borrow_and_update();
        if now == cut || rx.changed().await.is_err() {
            return;
        }
    }
}
