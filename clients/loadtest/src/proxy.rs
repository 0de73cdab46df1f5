//! The proxy's data path against direct connections, in one run: bulk
//! throughput, request/response latency and new connections per second,
//! each measured straight to a backend and through a `skiff proxy` process
//! (a Service whose Endpoints name the backend), and reported as ratios.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use skiff::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::report::{Latency, Report};
use crate::server::{Component, Sampler, ServerArgs, ServerUnderTest};

/// Flags of `skiff-loadtest proxy`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Example:\n  skiff-loadtest proxy --connections 4 --duration 5s")]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Parallel connections of the throughput and latency phases.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Length of each phase (each runs direct, then through the proxy).
    #[arg(long, default_value = "5s", value_parser = crate::parse_secs)]
    pub duration: Duration,
    /// Bytes of each request and response in the latency phase.
    #[arg(long, default_value_t = 64)]
    pub message_bytes: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A backend: the first byte of a connection says what it wants — 'D' a
/// stream of bytes until it closes, 'E' its messages echoed, 'C' one byte
/// back and a close.
async fn backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                match mode[0] {
                    b'D' => {
                        let chunk = vec![7u8; 256 * 1024];
                        while s.write_all(&chunk).await.is_ok() {}
                    }
                    b'E' => {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    _ => {
                        let _ = s.write_all(b"k").await;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Bytes per second read from `connections` download streams for `duration`.
async fn throughput(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut s = TcpStream::connect(target).await?;
        s.set_nodelay(true)?;
        s.write_all(b"D").await?;
        let (total, stop) = (total.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Let the streams reach their pace, then measure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_bytes = total.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let bytes = total.load(Ordering::Relaxed) - start_bytes;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    Ok(bytes as f64 / secs)
}

/// Round trips of `size`-byte messages on `connections` connections for `duration`.
async fn latency(
    target: SocketAddr,
    connections: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<(Latency, u64)> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut s = TcpStream::connect(target).await?;
        s.set_nodelay(true)?;
        s.write_all(b"E").await?;
        tasks.push(tokio::spawn(async move {
            let mut hist = Latency::new();
            let message = vec![1u8; size];
            let mut reply = vec![0u8; size];
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if s.write_all(&message).await.is_err() || s.read_exact(&mut reply).await.is_err() {
                    break;
                }
                hist.record(t.elapsed());
                n += 1;
            }
            (hist, n)
        }));
    }
    let mut all = Latency::new();
    let mut count = 0;
    for t in tasks {
        let (h, n) = t.await?;
        all.merge(&h);
        count += n;
    }
    Ok((all, count))
}

/// New connections per second (connect, one byte each way, close) from `connections` loops.
async fn connection_rate(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + duration;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = [0u8; 1];
            while Instant::now() < deadline {
                let Ok(mut s) = TcpStream::connect(target).await else {
                    continue;
                };
                if s.write_all(b"C").await.is_ok() && s.read_exact(&mut b).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn create_service(client: &Client, backend: SocketAddr) -> anyhow::Result<SocketAddr> {
    let name = format!("proxy-bench-{}", std::process::id());
    let meta = Some(ObjectMeta {
        name: name.clone(),
        namespace: "default".into(),
        ..Default::default()
    });
    let svc = client
        .services("default")
        .create(&Service {
            metadata: meta.clone(),
            spec: Some(ServiceSpec {
                ports: vec![ServicePort {
                    name: "bench".into(),
                    port: 9000,
                    target_port: backend.port().to_string(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        })
        .await
        .context("creating the benchmark service")?;
    client
        .endpoints("default")
        .create(&Endpoints {
            metadata: meta,
            subsets: vec![EndpointSubset {
                addresses: vec![EndpointAddress {
                    ip: backend.ip().to_string(),
                    ..Default::default()
                }],
                not_ready_addresses: vec![],
                ports: vec![EndpointPort {
                    name: "bench".into(),
                    port: backend.port().into(),
                    protocol: "TCP".into(),
                }],
            }],
        })
        .await?;
    let ip = svc.spec.context("service spec")?.cluster_ip.parse()?;
    Ok(SocketAddr::new(ip, 9000))
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = ServerUnderTest::start(&args.server).await?;
    let client = Client::connect_to(&server.addr).await?;
    let backend = backend().await?;
    let service = create_service(&client, backend).await?;
    let proxy = Component::start(&server.addr, &["proxy"])?;
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(mut s) = TcpStream::connect(service).await {
                let mut b = [0u8; 1];
                if s.write_all(b"C").await.is_ok() && s.read_exact(&mut b).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    ready.context("the proxy did not serve the benchmark service within 30 s")?;
    let bar = crate::progress(6, "proxy");
    let d = args.duration;
    let n = args.connections;
    let direct_tp = throughput(backend, n, d).await?;
    bar.inc(1);
    let sampler = Sampler::start(proxy.pid());
    let proxied_tp = throughput(service, n, d).await?;
    let (_, _, proxy_cpu_tp) = sampler.finish();
    bar.inc(1);
    let (direct_lat, direct_rt) = latency(backend, n, args.message_bytes, d).await?;
    bar.inc(1);
    let (proxied_lat, proxied_rt) = latency(service, n, args.message_bytes, d).await?;
    bar.inc(1);
    let direct_conns = connection_rate(backend, n, d).await?;
    bar.inc(1);
    let sampler = Sampler::start(proxy.pid());
    let proxied_conns = connection_rate(service, n, d).await?;
    let (proxy_rss, proxy_peak, _) = sampler.finish();
    bar.finish_and_clear();

    let mut report = Report::default();
    let mib = |b: f64| b / (1024.0 * 1024.0);
    report.set("connections", n as u64);
    report.set("direct_throughput_mib_s", mib(direct_tp).round());
    report.set("proxied_throughput_mib_s", mib(proxied_tp).round());
    report.set(
        "throughput_ratio",
        (proxied_tp / direct_tp * 100.0).round() / 100.0,
    );
    report.set(
        "proxy_cpu_cores_during_throughput",
        proxy_cpu_tp.map(|c| (c * 100.0).round() / 100.0),
    );
    report.set(
        "direct_round_trips_s",
        (direct_rt as f64 / d.as_secs_f64()).round(),
    );
    report.set(
        "proxied_round_trips_s",
        (proxied_rt as f64 / d.as_secs_f64()).round(),
    );
    report.set("direct_latency", direct_lat.json());
    report.set("proxied_latency", proxied_lat.json());
    let p50 = |l: &Latency| l.quantile_us(0.5);
    let p99 = |l: &Latency| l.quantile_us(0.99);
    report.set(
        "added_latency_p50_us",
        p50(&proxied_lat).saturating_sub(p50(&direct_lat)),
    );
    report.set(
        "added_latency_p99_us",
        p99(&proxied_lat).saturating_sub(p99(&direct_lat)),
    );
    report.set("direct_connections_s", direct_conns.round());
    report.set("proxied_connections_s", proxied_conns.round());
    report.set(
        "connection_rate_ratio",
        (proxied_conns / direct_conns * 100.0).round() / 100.0,
    );
    report.set("proxy_rss_mb", proxy_rss.map(|b| b / 1_000_000));
    report.set("proxy_peak_rss_mb", proxy_peak.map(|b| b / 1_000_000));
    report.print(args.json);
    let _ = client
        .services("default")
        .delete(
            &format!("proxy-bench-{}", std::process::id()),
            &Default::default(),
        )
        .await;
    Ok(())
}
