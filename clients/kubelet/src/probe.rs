//! Probes, as Kubernetes defines them: exec (exit code 0), TCP (a
//! connection opens) and HTTP GET (a 2xx or 3xx status), run every period
//! after an initial delay, each within its timeout; a result changes after
//! `successThreshold` / `failureThreshold` consecutive outcomes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff::api::core::v1::{ContainerPort, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::runtime::{ExecOutput, Runtime};

/// What a probe checks: where the pod is and which container.
#[derive(Clone)]
pub struct Target {
    /// The pod's IP.
    pub ip: String,
    /// The container's ports (named ports resolve against them).
    pub ports: Vec<ContainerPort>,
    /// The runtime, for exec probes.
    pub runtime: Arc<dyn Runtime>,
    /// The container's runtime id.
    pub container_id: String,
}

fn port_of(spec: &str, ports: &[ContainerPort]) -> Option<u16> {
    spec.parse::<u16>().ok().or_else(|| {
        ports
            .iter()
            .find(|p| p.name == spec)
            .map(|p| p.container_port as u16)
    })
}

/// Runs a probe once; true on success.
pub async fn check(probe: &Probe, target: &Target) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1) as u64);
    let attempt = async {
        if let Some(exec) = &probe.exec {
            let Ok(stream) = target
                .runtime
                .exec(&target.container_id, &exec.command)
                .await
            else {
                return false;
            };
            let out: Vec<ExecOutput> = stream.collect().await;
            return matches!(out.last(), Some(ExecOutput::Exit(0)));
        }
        if let Some(tcp) = &probe.tcp_socket {
            let host = if tcp.host.is_empty() {
                target.ip.clone()
            } else {
                tcp.host.clone()
            };
            let Some(port) = port_of(&tcp.port, &target.ports) else {
                return false;
            };
            return TcpStream::connect((host.as_str(), port)).await.is_ok();
        }
        if let Some(http) = &probe.http_get {
            let host = if http.host.is_empty() {
                target.ip.clone()
            } else {
                http.host.clone()
            };
            let Some(port) = port_of(&http.port, &target.ports) else {
                return false;
            };
            return http_get(
                &host,
                port,
                if http.path.is_empty() {
                    "/"
                } else {
                    &http.path
                },
                &http.http_headers,
            )
            .await
            .is_some_and(|code| (200..400).contains(&code));
        }
        false
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

/// A minimal HTTP/1.1 GET; the status code, if a response came.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[skiff::api::core::v1::HttpHeader],
) -> Option<u16> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: skiff-probe/1.0\r\nConnection: close\r\n"
    );
    for h in headers {
        request.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await.ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The state of a container's probes, shared with its pod worker.
#[derive(Debug, Default)]
pub struct ProbeState {
    /// Readiness (true when the container has no readiness probe).
    pub ready: std::sync::atomic::AtomicBool,
    /// Startup done (true when it has no startup probe).
    pub started: std::sync::atomic::AtomicBool,
    /// Liveness or startup failed: the container must be restarted.
    pub failed: std::sync::atomic::AtomicBool,
}

/// The probers of one container instance; stopped when dropped.
pub struct Probers {
    /// Shared results.
    pub state: Arc<ProbeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Probers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ms(secs: i32, default: u64) -> Duration {
    Duration::from_secs(if secs > 0 { secs as u64 } else { default })
}

/// Runs one probe until its verdict changes `on_fail`; resolves when the
/// probe (with its thresholds) has succeeded `success` times if `until_success`.
async fn drive(probe: &Probe, target: &Target, mut on_result: impl FnMut(bool) -> bool) {
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.max(0) as u64
    ))
    .await;
    // Kubernetes' defaults where the API left a field unset.
    let period = ms(probe.period_seconds, 10);
    let success_needed = if probe.success_threshold > 0 {
        probe.success_threshold as u32
    } else {
        1
    };
    let failure_needed = if probe.failure_threshold > 0 {
        probe.failure_threshold as u32
    } else {
        3
    };
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    loop {
        if check(probe, target).await {
            ok_run += 1;
            fail_run = 0;
            if ok_run >= success_needed && !on_result(true) {
                return;
            }
        } else {
            fail_run += 1;
            ok_run = 0;
            if fail_run >= failure_needed && !on_result(false) {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Starts the probes of a container; `changed` is notified when a result changes.
pub fn start(
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
    target: Target,
    changed: Arc<Notify>,
) -> Probers {
    let state = Arc::new(ProbeState::default());
    use std::sync::atomic::Ordering::SeqCst;
    state.ready.store(readiness.is_none(), SeqCst);
    state.started.store(startup.is_none(), SeqCst);
    let s = state.clone();
    let task = tokio::spawn(async move {
        if let Some(probe) = &startup {
            let (s2, c2) = (s.clone(), changed.clone());
            drive(probe, &target, move |ok| {
                if ok {
                    s2.started.store(true, SeqCst);
                } else {
                    s2.failed.store(true, SeqCst);
                }
                c2.notify_one();
                false
            })
            .await;
            if s.failed.load(SeqCst) {
                return;
            }
        }
        let live = liveness.map(|probe| {
            let (s2, c2, t2) = (s.clone(), changed.clone(), target.clone());
            async move {
                drive(&probe, &t2, move |ok| {
                    if !ok {
                        s2.failed.store(true, SeqCst);
                        c2.notify_one();
                        return false;
                    }
                    true
                })
                .await
            }
        });
        let ready = readiness.map(|probe| {
            let (s2, c2, t2) = (s.clone(), changed.clone(), target.clone());
            async move {
                drive(&probe, &t2, move |ok| {
                    if s2.ready.swap(ok, SeqCst) != ok {
                        c2.notify_one();
                    }
                    true
                })
                .await
            }
        });
        match (live, ready) {
            (Some(l), Some(r)) => {
                tokio::join!(l, r);
            }
            (Some(l), None) => l.await,
            (None, Some(r)) => r.await,
            (None, None) => {}
        }
    });
    Probers { state, task }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use skiff::api::core::v1::{HttpGetAction, TcpSocketAction};
    use tokio::net::TcpListener;

    use super::*;
    use crate::runtime::sim::SimRuntime;

    fn target(ports: Vec<ContainerPort>) -> Target {
        Target {
            ip: "127.0.0.1".into(),
            ports,
            runtime: Arc::new(SimRuntime::new()),
            container_id: "c".into(),
        }
    }

    fn tcp(port: &str) -> Probe {
        Probe {
            tcp_socket: Some(TcpSocketAction {
                port: port.into(),
                host: String::new(),
            }),
            timeout_seconds: 1,
            period_seconds: 1,
            ..Default::default()
        }
    }

    /// Serves one fixed HTTP status on every connection.
    async fn http_server(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn tcp_probe_succeeds_only_on_an_open_port_named_or_numbered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let named = vec![ContainerPort {
            name: "web".into(),
            container_port: port.into(),
            ..Default::default()
        }];
        assert!(check(&tcp(&port.to_string()), &target(vec![])).await);
        assert!(check(&tcp("web"), &target(named)).await);
        assert!(
            !check(&tcp("web"), &target(vec![])).await,
            "an unknown port name fails"
        );
        drop(listener);
        assert!(!check(&tcp(&port.to_string()), &target(vec![])).await);
    }

    #[tokio::test]
    async fn http_probe_accepts_2xx_and_3xx_only() {
        for (status, ok) in [
            ("200 OK", true),
            ("302 Found", true),
            ("500 Internal Server Error", false),
            ("404 Not Found", false),
        ] {
            let port = http_server(status).await;
            let probe = Probe {
                http_get: Some(HttpGetAction {
                    path: "/healthz".into(),
                    port: port.to_string(),
                    ..Default::default()
                }),
                timeout_seconds: 1,
                ..Default::default()
            };
            assert_eq!(check(&probe, &target(vec![])).await, ok, "{status}");
        }
    }

    #[tokio::test]
    async fn failing_startup_probe_marks_the_container_failed_and_holds_readiness() {
        let changed = Arc::new(Notify::new());
        // Nothing listens on a port just released.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ready_port = http_server("200 OK").await;
        let mut startup = tcp(&port.to_string());
        startup.failure_threshold = 1;
        let readiness = Probe {
            http_get: Some(HttpGetAction {
                port: ready_port.to_string(),
                ..Default::default()
            }),
            period_seconds: 1,
            ..Default::default()
        };
        let probers = start(
            Some(startup),
            None,
            Some(readiness),
            target(vec![]),
            changed.clone(),
        );
        tokio::time::timeout(Duration::from_secs(10), changed.notified())
            .await
            .unwrap();
        assert!(probers.state.failed.load(SeqCst));
        assert!(!probers.state.started.load(SeqCst));
        assert!(
            !probers.state.ready.load(SeqCst),
            "readiness waits for startup"
        );
    }

    #[tokio::test]
    async fn readiness_follows_the_probe_once_started() {
        let changed = Arc::new(Notify::new());
        let port = http_server("200 OK").await;
        let readiness = Probe {
            http_get: Some(HttpGetAction {
                port: port.to_string(),
                ..Default::default()
            }),
            period_seconds: 1,
            ..Default::default()
        };
        let probers = start(
            Some(tcp(&port.to_string())),
            None,
            Some(readiness),
            target(vec![]),
            changed.clone(),
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while !probers.state.ready.load(SeqCst) {
                changed.notified().await;
            }
        })
        .await
        .unwrap();
        assert!(probers.state.started.load(SeqCst) && !probers.state.failed.load(SeqCst));
    }
}
