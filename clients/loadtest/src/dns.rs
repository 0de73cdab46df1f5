//! The cluster DNS server alone under load: a `skiff dns` process (pinned
//! with `--dns-cpus`) answering a mix of questions — Services by name,
//! headless endpoints, SRV records, names that do not exist — from many
//! concurrent UDP clients, each asking again as soon as it has an answer.
//! Reports queries per second, latency quantiles and the server's memory
//! and CPU.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args as ClapArgs;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use skiff::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::report::{Latency, Report};
use crate::server::{Sampler, ServerArgs, ServerUnderTest};

/// Flags of `skiff-loadtest dns`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff-loadtest dns --services 200 --clients 64 --duration 10s\n  \
    taskset -c 1 skiff-loadtest dns --dns-cpus 0 --server-cpus 0")]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Services to create (plus one headless Service with endpoints).
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Concurrent UDP clients, each with one question in flight.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long to ask.
    #[arg(long, default_value = "10s", value_parser = crate::parse_secs)]
    pub duration: Duration,
    /// Pin the DNS server to these CPUs (`taskset -c LIST`).
    #[arg(long)]
    pub dns_cpus: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

const NAMESPACE: &str = "loadtest-dns";

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: NAMESPACE.into(),
        ..Default::default()
    })
}

/// Creates the Services the questions are about.
async fn populate(client: &Client, services: usize) -> anyhow::Result<()> {
    crate::ensure_namespace(client, NAMESPACE).await?;
    let api = client.services(NAMESPACE);
    let bar = crate::progress(services as u64 + 1, "services");
    let port = || ServicePort {
        name: "http".into(),
        port: 8080,
        target_port: "8080".into(),
        ..Default::default()
    };
    for i in 0..services {
        let svc = Service {
            metadata: meta(&format!("svc-{i}")),
            spec: Some(ServiceSpec {
                ports: vec![port()],
                ..Default::default()
            }),
            ..Default::default()
        };
        match api.create(&svc).await {
            Ok(_) | Err(skiff::client::Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e).context("creating a Service"),
        }
        bar.inc(1);
    }
    let headless = Service {
        metadata: meta("headless"),
        spec: Some(ServiceSpec {
            cluster_ip: "None".into(),
            ports: vec![port()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let _ = api.create(&headless).await;
    let endpoints = Endpoints {
        metadata: meta("headless"),
        subsets: vec![EndpointSubset {
            addresses: (0..10)
                .map(|i| EndpointAddress {
                    ip: format!("127.200.0.{}", i + 1),
                    hostname: format!("pod-{i}"),
                    ..Default::default()
                })
                .collect(),
            not_ready_addresses: vec![],
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
        }],
    };
    let _ = client.endpoints(NAMESPACE).create(&endpoints).await;
    bar.inc(1);
    bar.finish_and_clear();
    Ok(())
}

/// Starts `skiff dns` against `server`; its process and address.
async fn start_dns(
    server: &str,
    cpus: Option<&str>,
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let bin = crate::server::skiff_bin();
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", cpus]).arg(&bin);
            c
        }
        None => tokio::process::Command::new(&bin),
    };
    // No upstream: the mix asks only for cluster names.
    let mut child = cmd
        .args([
            "dns",
            "--listen",
            "127.0.0.1:0",
            "--no-publish",
            "--upstream",
            "127.0.0.1:9",
        ])
        .args(["--server", server])
        .env("SKIFF_CONFIG", "/nonexistent/loadtest-config")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} dns", bin.display()))?;
    let stdout = child.stdout.take().context("dns stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(a) = line.strip_prefix("dns on ") {
                return Ok::<_, anyhow::Error>(a.trim().parse()?);
            }
        }
        bail!("skiff dns exited before serving")
    })
    .await
    .context("skiff dns did not start within 30 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

/// The questions of the mix, in wire format (ids patched per query).
fn questions(services: usize) -> Vec<(Vec<u8>, &'static str)> {
    let q = |name: &str, t: RecordType| -> Vec<u8> {
        let mut m = Message::new(0, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        if let Ok(n) = Name::from_ascii(name) {
            m.add_query(Query::query(n, t));
        }
        m.to_vec().unwrap_or_default()
    };
    let d = format!("{NAMESPACE}.svc.cluster.local.");
    let mut out = Vec::new();
    for i in 0..services.clamp(1, 50) {
        out.push((q(&format!("svc-{i}.{d}"), RecordType::A), "service A"));
    }
    for i in 0..10 {
        out.push((
            q(&format!("pod-{i}.headless.{d}"), RecordType::A),
            "endpoint A",
        ));
    }
    out.push((q(&format!("headless.{d}"), RecordType::A), "headless A"));
    out.push((q(&format!("_http._tcp.svc-0.{d}"), RecordType::SRV), "SRV"));
    for i in 0..10 {
        out.push((q(&format!("missing-{i}.{d}"), RecordType::A), "NXDOMAIN"));
    }
    out
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = ServerUnderTest::start(&args.server).await?;
    let client = Client::connect_to(&server.addr).await?;
    populate(&client, args.services).await?;
    let (dns, addr) = start_dns(&server.addr, args.dns_cpus.as_deref()).await?;
    let questions = Arc::new(questions(args.services));
    // Warm up: every question answered once (the server has synced).
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(addr).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (q, _) = &questions[0];
        socket.send(q).await?;
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
            .await
            .ok()
            .and_then(Result::ok);
        let ok = n
            .and_then(|n| Message::from_vec(buf.get(..n)?).ok())
            .is_some_and(|m| m.metadata.response_code == ResponseCode::NoError);
        if ok {
            break;
        }
        if Instant::now() > deadline {
            bail!("the DNS server did not answer for its Services within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sampler = Sampler::start(dns.id());
    let answered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let bar = crate::progress(args.duration.as_secs().max(1), "asking");
    let started = Instant::now();
    let end = started + args.duration;
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let (questions, answered, errors) = (questions.clone(), answered.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::new();
            let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
                return lat;
            };
            if socket.connect(addr).await.is_err() {
                return lat;
            }
            let mut buf = [0u8; 1500];
            let mut i = c;
            let mut id: u16 = (c as u16).wrapping_mul(7919);
            while Instant::now() < end {
                let (q, _) = &questions[i % questions.len()];
                i += 1;
                id = id.wrapping_add(1);
                let mut q = q.clone();
                if let Some(head) = q.get_mut(..2) {
                    head.copy_from_slice(&id.to_be_bytes());
                }
                let sent = Instant::now();
                if socket.send(&q).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
                    Ok(Ok(n)) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                        lat.record(sent.elapsed());
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        })
    };
    let mut latency = Latency::new();
    for t in tasks {
        latency.merge(&t.await?);
    }
    ticker.abort();
    bar.finish_and_clear();
    let took = started.elapsed().as_secs_f64();
    let (rss, peak, cpu) = sampler.finish();
    let n = answered.load(Ordering::Relaxed);
    let mut report = Report::default();
    report.set("scenario", "dns");
    report.set("services", args.services as u64);
    report.set("clients", args.clients as u64);
    report.set("questions_in_mix", questions.len() as u64);
    report.set("answered", n);
    report.set("unanswered", errors.load(Ordering::Relaxed));
    report.set("queries_per_second", (n as f64 / took).round());
    report.set("latency", latency.json());
    report.set("dns_rss_mb", rss.map(|b| b / 1_000_000));
    report.set("dns_peak_rss_mb", peak.map(|b| b / 1_000_000));
    report.set("dns_cpu_cores", cpu.map(|c| (c * 100.0).round() / 100.0));
    report.print(args.json);
    drop(dns);
    Ok(())
}
