//! Probes, as Kubernetes defines them: exec (exit code 0), TCP (a
//! connection opens), HTTP GET (a 2xx or 3xx status; HTTPS unverified, as
//! Kubernetes does) and gRPC (the health protocol answers SERVING), run every period
//! after an initial delay, each within its timeout; a result changes after
//! `successThreshold` / `failureThreshold` consecutive outcomes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff::api::core::v1::{ContainerPort, HttpGetAction, Probe};
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
            return exec_action(&exec.command, target).await.is_ok();
        }
        if let Some(tcp) = &probe.tcp_socket {
            return tcp_action(&tcp.host, &tcp.port, target).await.is_ok();
        }
        if let Some(http) = &probe.http_get {
            return http_action(http, target).await.is_ok();
        }
        if let Some(grpc) = &probe.grpc {
            return grpc_check(&target.ip, grpc.port, grpc.service.as_deref().unwrap_or(""))
                .await
                .is_ok();
        }
        false
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

/// Runs `command` in the container; Ok when it exits 0.
pub async fn exec_action(command: &[String], target: &Target) -> Result<(), String> {
    let stream = target
        .runtime
        .exec(&target.container_id, command)
        .await
        .map_err(|e| e.to_string())?;
    let out: Vec<ExecOutput> = stream.collect().await;
    match out.last() {
        Some(ExecOutput::Exit(0)) => Ok(()),
        Some(ExecOutput::Exit(code)) => {
            let text: String = out
                .iter()
                .filter_map(|o| match o {
                    ExecOutput::Stdout(b) | ExecOutput::Stderr(b) => {
                        Some(String::from_utf8_lossy(b).into_owned())
                    }
                    ExecOutput::Exit(_) => None,
                })
                .collect();
            Err(format!(
                "command {command:?} exited with {code}: {}",
                text.trim()
            ))
        }
        _ => Err(format!("command {command:?} did not finish")),
    }
}

/// Opens a TCP connection to `host:port` (default host: the pod IP).
pub async fn tcp_action(host: &str, port: &str, target: &Target) -> Result<(), String> {
    let host = if host.is_empty() { &target.ip } else { host };
    let port = port_of(port, &target.ports).ok_or_else(|| format!("unknown port {port:?}"))?;
    TcpStream::connect((host, port))
        .await
        .map(|_| ())
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
}

/// An HTTP GET as the action says; Ok on a 2xx or 3xx status.
pub async fn http_action(http: &HttpGetAction, target: &Target) -> Result<(), String> {
    let host = if http.host.is_empty() {
        target.ip.clone()
    } else {
        http.host.clone()
    };
    let port = port_of(&http.port, &target.ports)
        .ok_or_else(|| format!("unknown port {:?}", http.port))?;
    let path = if http.path.is_empty() {
        "/"
    } else {
        &http.path
    };
    let tls = http.scheme == "HTTPS";
    let scheme = if tls { "https" } else { "http" };
    let code = http_get(&host, port, path, &http.http_headers, tls)
        .await
        .map_err(|e| format!("Get \"{scheme}://{host}:{port}{path}\": {e}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// The gRPC health check (`grpc.health.v1.Health/Check`) of `service` at
/// `ip:port`; Ok when it answers SERVING.
pub async fn grpc_check(ip: &str, port: i32, service: &str) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{ip}:{port}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service \"{ip}:{port}\": {e}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|e| format!("health rpc failed: {}", e.message()))?
        .into_inner()
        .status();
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(format!("service unhealthy (responded with {status:?})"))
    }
}

/// Accepts any server certificate: Kubernetes' HTTPS probes do not verify.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A minimal HTTP/1.1 GET (over TLS when `tls`); the status code.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[skiff::api::core::v1::HttpHeader],
    tls: bool,
) -> Result<u16, String> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: skiff-probe/1.0\r\nConnection: close\r\n"
    );
    for h in headers {
        request.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    request.push_str("\r\n");
    let mut buf = [0u8; 64];
    let n = if tls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.read(&mut buf).await.map_err(|e| e.to_string())?
    } else {
        let mut s = stream;
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.read(&mut buf).await.map_err(|e| e.to_string())?
    };
    let line = std::str::from_utf8(buf.get(..n).unwrap_or_default()).map_err(|e| e.to_string())?;
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "malformed HTTP response".to_owned())
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
